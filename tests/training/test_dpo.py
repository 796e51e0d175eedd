"""`jaxfin.dpo` on a tiny random Llama with a word-level tokenizer (tests/hf_models.py): the "SFT model" is a
jaxfin checkpoint of it with random non-zero adapters. dpo.init=merge (zero adapter on the merged model: step-1
loss ln 2, rewards 0), the workdir and its exports (merged base), resume continuing the curve bit for bit,
precomputed reference log-probs equal to the in-step ones bit for bit, dpo.init=continue (reference = the base),
1 device with gradient accumulation vs 8 devices, the base untouched by training, and the config errors.

The loop, checkpoints, signals and the NaN guard are SFT's (training/loop.py), tested with kill -9 and SIGTERM in
test_reliability.py; here resume is checked in-process."""

from __future__ import annotations

import json
import math
import re
import os

import jax
import numpy as np
import pytest

import hf_models

from jaxfin import dpo as dpo_cli
from jaxfin import config_flags
from jaxfin.errors import run_cli
from jaxfin.io import hf, store, workdir
from jaxfin.model import lora
from jaxfin.training import defaults, dpo, loop, preference

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEPS = 4
TRL_NAMES = {"loss", *preference.METRICS}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(SFT checkpoint path, pairs path, the SFT adapters' LoraConfig)."""
    root = tmp_path_factory.mktemp("dpo_tiny")
    hf_models.tiny_model("llama", seed=5).save_pretrained(root / "model")
    hf_models.save_tokenizer(root / "model")
    params, cfg, hf_config = hf.load_hf(root / "model")
    lcfg = lora.LoraConfig(rank=4, alpha=8.0, targets=("q_proj", "v_proj"))
    rng = np.random.default_rng(0)
    adapters = jax.tree.map(lambda s: (0.05 * rng.standard_normal(s.shape)).astype(np.float32),
                            lora.shapes(cfg, lcfg))
    sft = str(root / "sft")
    store.save_model(sft, params, cfg, hf_config=hf_config, generation_config=None,
                     tokenizer_files=hf.tokenizer_files(root / "model"), lora=adapters, lora_config=lcfg)
    lines = []
    for i in range(16):  # conversational prompts; chosen as verbatim ids ending in EOS (2), rejected as text
        words = rng.integers(3, 128, 3 + i % 4)
        chosen = rng.integers(3, 128, 2 + i % 3).tolist()
        lines.append({"id": f"p{i}", "prompt": [{"role": "user", "content": " ".join(f"w{w}" for w in words)}],
                      "chosen": " ".join(f"w{w}" for w in chosen), "chosen_ids": chosen + [2],
                      "rejected": " ".join([f"w{words[0]}", f"w{words[1]}"] * 3)})
    lines.append({"id": "long", "prompt": "w3 " * 20, "chosen": "w4", "rejected": "w5"})  # > seq_len: dropped
    pairs = root / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return sft, str(pairs), lcfg


def _config(tiny, wd, *overrides: str):
    sft, pairs, _ = tiny
    argv = ["--config", os.path.join(ROOT, "configs", "dpo.py"), f"--config.workdir={wd}",
            f"--config.model.path={sft}", f"--config.data.pairs={pairs}", "--config.model.dtype=float32",
            "--config.model.remat=none", f"--config.train.steps={STEPS}", "--config.train.batch_size=8",
            "--config.train.seq_len=16", "--config.train.loss_chunk=8", "--config.checkpoint.every_steps=2",
            "--config.optim.lr=1e-2", "--config.optim.warmup_steps=1", f"--config.optim.decay_steps={STEPS}",
            "--config.eval.max_examples=0", *overrides]
    return config_flags.parse_args(argv, defaults.dpo)[0]


@pytest.fixture(scope="module")
def straight(tiny, tmp_path_factory):
    """The straight in-step run: its workdir, result, and the base (= the reference) before and after training."""
    wd = tmp_path_factory.mktemp("dpo_straight")
    seen, real = {}, loop.run

    def spy(state, *, base, **kwargs):
        seen["before"] = [np.array(x) for x in jax.tree.leaves(base)]
        result = real(state, base=base, **kwargs)
        seen["after"] = [np.asarray(x) for x in jax.tree.leaves(base)]
        return result

    with pytest.MonkeyPatch.context() as mp, \
            pytest.warns(UserWarning, match=r"dropped 1 of 17 pairs longer than train.seq_len=16"):
        mp.setattr(loop, "run", spy)
        out = dpo.run(_config(tiny, wd))
    return wd, out, seen


def test_merge_run_metrics_workdir_and_exports(tiny, straight):
    wd, out, seen = straight
    rows = workdir.read_metrics(str(wd))
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    assert set(rows[0]) == TRL_NAMES | {"step", "lr", "grad_norm", "tokens_per_sec", "nonfinite_steps"}
    # The new adapter starts at zero: policy = reference (the merged SFT model), so loss ln 2 and rewards 0.
    assert rows[0]["loss"] == pytest.approx(math.log(2.0), rel=1e-6)
    for k in ("rewards/chosen", "rewards/rejected", "rewards/margins"):
        assert abs(rows[0][k]) < 1e-5, k
    assert rows[-1]["loss"] < rows[0]["loss"] and rows[-1]["rewards/margins"] > 0
    assert rows[-1]["rewards/accuracies"] > 0.5

    sft, _, sft_lcfg = tiny
    run = workdir.read_run(str(wd))
    assert run[workdir.MERGED_BASE] is True and run["base_model"] == os.path.abspath(sft)
    assert lora.LoraConfig.from_dict(run["lora_config"]) == lora.LoraConfig(rank=16, alpha=32.0)
    # Loading the workdir (what generate / evaluate / convert do): the SFT adapters merged into the base, the DPO
    # adapter on top; the PEFT export states the SFT model as its base.
    loaded, sft_model = store.load(str(wd)), store.load(sft)
    merged = lora.merge_by_layer(sft_model.params, sft_model.lora, sft_lcfg)
    # The base DPO trained on is the merged SFT model (the reference), bit-identical before and after training.
    for a, b, before, after in zip(jax.tree.leaves(loaded.params), jax.tree.leaves(merged), seen["before"],
                                   seen["after"]):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        np.testing.assert_array_equal(before, np.asarray(b))
        np.testing.assert_array_equal(after, before)
    assert loaded.lora_config.rank == 16 and float(np.abs(loaded.lora["layers"]["q_proj"]["b"]).max()) > 0
    assert store.load_adapters(str(wd))[3] == os.path.abspath(sft)


def test_resume_and_precomputed_reference_are_bitwise(tiny, straight, tmp_path, capsys):
    """Half the steps, then a rerun to the end, with dpo.precompute_ref: the reference log-probs are computed once
    (the rerun reads them from the workdir) and every logged value equals the straight in-step run's bit for bit."""
    dpo.run(_config(tiny, tmp_path, "--config.dpo.precompute_ref=true", f"--config.train.steps={STEPS // 2}"))
    assert "precomputed ->" in capsys.readouterr().out
    assert len(os.listdir(tmp_path / "reference")) == 1
    out = dpo.run(_config(tiny, tmp_path, "--config.dpo.precompute_ref=true"))
    assert "read from" in capsys.readouterr().out
    assert [r["step"] for r in out["metrics"]] == list(range(STEPS // 2 + 1, STEPS + 1))
    got, want = workdir.read_metrics(str(tmp_path)), workdir.read_metrics(str(straight[0]))
    drop = ("tokens_per_sec",)
    assert [{k: v for k, v in r.items() if k not in drop} for r in got] == \
        [{k: v for k, v in r.items() if k not in drop} for r in want]


def test_continue_reference_is_the_base(tiny, straight, tmp_path):
    """dpo.init=continue: the SFT adapters are the policy's start and the reference is the base without them, so
    the first step already has non-zero rewards; the policy's log-probs are the merged model's of dpo.init=merge."""
    out = dpo.run(_config(tiny, tmp_path, "--config.dpo.init=continue", "--config.lora.rank=4",
                          "--config.lora.alpha=8", "--config.lora.targets=q_proj,v_proj", "--config.train.steps=1"))
    first, merge_first = out["metrics"][0], straight[1]["metrics"][0]
    assert abs(first["rewards/margins"]) > 1e-3 and first["loss"] != pytest.approx(math.log(2.0))
    for k in ("logps/chosen", "logps/rejected"):
        assert first[k] == pytest.approx(merge_first[k], rel=1e-5)
    assert workdir.MERGED_BASE not in workdir.read_run(str(tmp_path))


def test_one_device_with_accumulation_equals_eight(tiny, straight, tmp_path):
    out = dpo.run(_config(tiny, tmp_path, "--config.train.grad_accum_steps=2", "--config.train.steps=2"),
                  devices=jax.devices()[:1])
    want = straight[1]["metrics"]
    for got, ref in zip(out["metrics"], want[:2]):
        for k in TRL_NAMES | {"grad_norm"}:
            if k == "rewards/accuracies" and got["step"] == 1:
                continue  # step 1: every reward is 0 up to float noise (~1e-7), so "chosen > rejected" is noise
            assert got[k] == pytest.approx(ref[k], rel=1e-5, abs=1e-5), k  # abs: step 1 rewards are 0 +- 1e-6


@pytest.mark.parametrize("override,message", [
    ("--config.lora.dropout=0.1", r"lora.dropout=0.1: DPO needs 0 .*; set --config.lora.dropout=0"),
    ("--config.dpo.loss_type=kto", r"dpo.loss_type='kto': choose one of sigmoid, hinge, ipo, robust"),
    ("--config.dpo.label_smoothing=0.1", r"dpo.label_smoothing=0.1 has no effect on loss_type='sigmoid' .*"),
    ("--config.dpo.init=copy", r"dpo.init='copy': choose one of merge, continue"),
])
def test_config_errors_are_one_line(tiny, tmp_path, capsys, override, message):
    wd = tmp_path / "wd"
    argv = ["--config", os.path.join(ROOT, "configs", "dpo.py"), f"--config.workdir={wd}", override]
    with pytest.raises(SystemExit) as e:
        run_cli(dpo_cli.main, argv)
    err = capsys.readouterr().err.splitlines()
    assert e.value.code == 2 and len(err) == 1 and err[0].startswith("error: "), err

    assert re.fullmatch(message, err[0][len("error: "):]), err[0]
    assert not wd.exists()
