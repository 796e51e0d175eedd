"""Pairs from a model's own over-long outputs, then DPO, lower the over-length rate (the paper's point, in small).

The model rambles: a tiny random Llama (tests/hf_models.py, word-level tokenizer) that practically never emits its
EOS, so every greedy answer runs into max_new_tokens. The task ("echo", registered for this test) asks for one word
and its end-of-turn token. `python -m jaxfin.pairs` samples the model on the task's prompts (rejected: its own
cut-off samples; chosen: the gold answer with EOS), and a short `jaxfin.dpo` run on those pairs (dpo.init=merge on
a model without adapters: the base as it is) evaluates the task before and after: the over-length rate falls."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import hf_models

from jaxfin import config_flags, tasks
from jaxfin import pairs as pairs_cli
from jaxfin.errors import run_cli
from jaxfin.infer import decode
from jaxfin.io.files import read_json, read_jsonl
from jaxfin.tasks.base import Task
from jaxfin.training import defaults, dpo

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
needs_generate = pytest.mark.skipif(not hasattr(decode, "generate"),
                                    reason="needs jaxfin.infer.decode.generate (sampling with num_samples)")
MAX_NEW = 8


def _echo_task(path: str) -> Task:
    def read(p: str) -> list[dict]:
        return [row for _, row in read_jsonl(p)]

    def score(examples, preds):
        hits = [p.strip() == "w7" for p in preds]
        acc = float(np.mean(hits)) if hits else 0.0
        return {"primary": "accuracy", "accuracy": acc, "accuracy_ci95": [acc, acc]}

    return Task(name="echo", primary="accuracy", files={"train": path, "valid": path}, read=read,
                messages=lambda ex: [{"role": "user", "content": ex["text"]}], target=lambda ex: "w7",
                parse=lambda s: s, score=score)


@pytest.fixture(scope="module")
def ramble(tmp_path_factory):
    root = tmp_path_factory.mktemp("ramble")
    hf_models.tiny_model("llama", seed=11).save_pretrained(root / "model")
    hf_models.save_tokenizer(root / "model")
    rng = np.random.default_rng(0)
    data = root / "echo.jsonl"
    data.write_text("".join(json.dumps({"id": f"e{i}", "text": " ".join(f"w{w}" for w in rng.integers(8, 128, 4))})
                            + "\n" for i in range(16)))
    task = _echo_task(str(data))
    mp = pytest.MonkeyPatch()
    mp.setitem(tasks.REGISTRY, "echo", lambda: task)
    yield str(root / "model"), root
    mp.undo()


@needs_generate
def test_pairs_then_dpo_lower_the_overlength_rate(ramble, capsys):
    model, root = ramble
    out = str(root / "pairs.jsonl")
    with pytest.raises(SystemExit) as e:
        run_cli(pairs_cli.main, ["--model", model, "--task", "echo", "--num-samples", "2", "--max-new-tokens",
                                 str(MAX_NEW), "--temperature", "1.0", "--out", out])
    assert e.value.code == 0, capsys.readouterr().err
    stats = read_json(str(root / "pairs.stats.json"))
    assert stats["samples_drawn"] == 32 and stats["overlength_rate"] > 0.9
    assert stats["pairs_written"] == stats["prompts"] - stats["prompts_without_pair"] > 10
    lines = [row for _, row in read_jsonl(out)]
    assert len(lines) == stats["pairs_written"]
    for row in lines:
        assert row["chosen_ids"] == [7, 2]  # the gold answer and its EOS (the template adds none)
        if row["rejected_reason"] == "length":
            assert len(row["rejected_ids"]) == MAX_NEW and 2 not in row["rejected_ids"]  # no EOS added

    argv = ["--config", os.path.join(ROOT, "configs", "dpo.py"), f"--config.workdir={root / 'wd'}",
            f"--config.model.path={model}", f"--config.data.pairs={out}", "--config.model.dtype=float32",
            "--config.model.remat=none", "--config.train.steps=12", "--config.train.batch_size=8",
            "--config.train.seq_len=16", "--config.train.loss_chunk=16", "--config.checkpoint.every_steps=12",
            "--config.optim.lr=2e-2", "--config.optim.warmup_steps=1", "--config.eval.tasks=echo",
            f"--config.eval.max_new_tokens={MAX_NEW}", "--config.eval.batch_size=16", "--config.dpo.beta=0.1"]
    result = dpo.run(config_flags.parse_args(argv, defaults.dpo)[0])
    before, after = result["baseline"]["echo"], result["eval"]["echo"]
    assert before["overlength_rate"] == 1.0
    assert after["overlength_rate"] < 0.5
    report = open(root / "wd" / "eval" / "echo" / "report.md").read()
    assert "Before training (zero-shot) and after" in report
