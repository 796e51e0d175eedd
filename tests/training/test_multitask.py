"""Multi-task SFT (training/multitask.py) and the transfer matrix (recipes/transfer.py) on the tiny assets: a
fire-only run draws the batches and losses of the one-task path, a two-task run logs and evaluates both tasks, and
the matrix of two tasks is trained, evaluated and written."""

import dataclasses
import json
import os

import numpy as np
import pytest

from jaxfin import config_flags, tasks
from jaxfin.data import batches, chat, packing
from jaxfin.errors import UserError
from jaxfin.io import store
from jaxfin.recipes import transfer
from jaxfin.tasks import ner, sentiment
from jaxfin.training import multitask, sft, step as step_lib

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = os.path.join(ROOT, "configs", "tiny.py")


def _config(assets, wd, steps, **over):
    c = config_flags.load_config(TINY)
    c.workdir, c.model.path, c.data.train, c.data.eval = str(wd), assets.model, assets.train, assets.eval
    c.train.steps, c.train.seq_len, c.train.batch_size, c.optim.warmup_steps = steps, 256, 8, 1
    c.checkpoint.every_steps = steps
    c.eval.max_examples, c.eval.max_new_tokens, c.eval.batch_size = 0, 8, 2
    for k, v in over.items():
        node = c
        *path, last = k.split(".")
        for p in path:
            node = node[p]
        node[last] = v
    return c


def _logged(wd):
    with open(os.path.join(wd, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.fixture()
def mini(tmp_path, monkeypatch):
    """A second task for the tiny model: fiqasa's rules over a few short self-made sentences."""
    words = [("Sales rose", "Positive"), ("Costs fell", "Positive"), ("Loss widened", "Negative"),
             ("Shares slid", "Negative"), ("Board met", "Neutral"), ("Report filed", "Neutral")]
    files = {}
    for split, n in (("train", 12), ("valid", 3)):
        path = tmp_path / f"mini_{split}.jsonl"
        with open(path, "w") as f:
            for i in range(n):
                text, label = words[i % len(words)]
                f.write(json.dumps({"id": f"{split}{i}", "text": text, "label": label,
                                    "query": f"Sentiment: positive, negative or neutral?\n{text} ."}) + "\n")
        files[split] = str(path)
    monkeypatch.setitem(tasks.REGISTRY, "mini",
                        lambda: dataclasses.replace(sentiment.fiqasa(), name="mini", files=files))
    return files


def test_fire_only_run_is_the_one_task_path(assets, tmp_path, monkeypatch):
    """data.tasks=fire (the default) feeds the train step exactly the one-task batches (batches.batch_at over the
    packed examples, no task ids) through the plain SFT loss, so its losses are those of the runs before
    multi-task training (compared bit for bit against main on the 40-step tiny run: NOTES_13.md)."""
    steps = 2
    c = _config(assets, tmp_path / "run", steps)
    assert c.data.tasks == "fire"
    fed, jit_train_step = [], step_lib.jit_train_step

    def recording(loss_fn, *args):
        fed.append(loss_fn.keywords["hp"])
        step = jit_train_step(loss_fn, *args)
        return lambda adapters, opt, base, batch, n: (fed.append(batch), step(adapters, opt, base, batch, n))[1]

    monkeypatch.setattr(step_lib, "jit_train_step", recording)
    sft.run(c)
    assert set(_logged(tmp_path / "run")[0]) == {"step", "loss", "lr", "grad_norm", "tokens_per_sec",
                                                 "nonfinite_steps"}
    hp, got = fed[0], fed[1:]
    assert hp.task_names == () and len(got) == steps

    model = store.load(assets.model)
    tok = model.tokenizer()
    train = ner.load_examples(assets.train)
    task = tasks.get("fire", types=ner.entity_types(train))
    packed = packing.pack(chat.encode_task(task, train, tok, eos_ids=model.eos_ids), 256, pad_id=tok.pad_token_id or 0)
    for k, batch in enumerate(got):
        want = batches.micro_batches(batches.batch_at(packed, k, 8, c.seed), 1)
        assert set(batch) == set(want) == set(packing.BATCH_KEYS)
        for key in want:
            np.testing.assert_array_equal(np.asarray(batch[key]), want[key])


def test_two_tasks_log_both_losses_and_evaluate_both(assets, tmp_path, mini):
    wd = tmp_path / "mt"
    out = sft.run(_config(assets, wd, 3, **{"data.tasks": "fire,mini", "eval.max_examples": 2,
                                            "eval.every_steps": 2}))
    rows = _logged(wd)
    assert [r["step"] for r in rows] == [1, 2, 3]
    for r in rows:
        assert {"loss/fire", "loss/mini"} <= set(r)
        parts = [r[k] for k in ("loss/fire", "loss/mini") if r[k] is not None]
        assert parts and min(parts) <= r["loss"] + 1e-5 and r["loss"] <= max(parts) + 1e-5  # a weighted mean
    assert sorted(out["eval"]) == ["fire", "mini"]
    for d in ("eval", os.path.join("eval", "step_2")):
        for name in ("fire", "mini"):
            m = json.loads((wd / d / name / "metrics.json").read_text())
            assert m["n_examples"] == 2 and m["primary"] in m
        assert (wd / d / "summary.md").is_file()
    assert not (wd / "eval" / "metrics.json").exists()  # the one-task layout is fire-only's


def test_transfer_matrix_end_to_end(assets, tmp_path, mini):
    c = _config(assets, tmp_path / "unused", 1, **{"eval.max_examples": 2})
    out = tmp_path / "transfer"
    mat = transfer.run(c, ["fire", "mini"], str(out))
    assert mat["rows"] == ["base", "fire", "mini"] and mat["columns"] == ["fire", "mini"]
    assert mat["metric"] == {"fire": "micro_f1", "mini": "f1"}
    for r in mat["rows"]:
        for col in mat["columns"]:
            cell = mat["cells"][r][col]
            base = mat["cells"]["base"][col]["value"]
            assert cell["delta"] == pytest.approx(cell["value"] - base) and cell["n_examples"] == 2
    assert {"matrix.json", "matrix.md", "matrix.png"} <= set(os.listdir(out))
    assert store.load(str(out / "train" / "mini")).lora is not None
    md = (out / "matrix.md").read_text()
    assert "| mini |" in md and ("(+" in md or "(-" in md)
    # A rerun reuses the finished adapters and evaluations: the same matrix, nothing retrained.
    before = os.path.getmtime(out / "train" / "fire" / "metrics.jsonl")
    assert transfer.run(c, ["fire", "mini"], str(out)) == json.loads((out / "matrix.json").read_text())
    assert os.path.getmtime(out / "train" / "fire" / "metrics.jsonl") == before


def test_task_keys_are_checked_before_anything_loads():
    from jaxfin.errors import UserError
    from jaxfin.training import defaults, multitask

    c = defaults.tiny()
    assert multitask.task_names(c) == ["fire"]
    c.data.tasks = "fpb, headlines"
    assert multitask.task_names(c) == ["fpb", "headlines"]
    for key, value, message in (("tasks", "fpb,nope", "unknown task 'nope'"), ("tasks", "fpb,fpb", "named twice"),
                                ("mixture", "temperature:-1", "data.mixture"),
                                ("schedule", "random", "data.schedule")):
        bad = defaults.tiny()
        bad.data[key] = value
        with pytest.raises(UserError, match=message):
            multitask.task_names(bad)


def test_task_train_replaces_a_split_and_train_subset_keeps_a_nested_part(tmp_path):
    src = tasks.get("fiqasa").files["train"]
    mine = tmp_path / "sft.jsonl"
    mine.write_text("".join(open(src, encoding="utf-8").readlines()[:5]), encoding="utf-8")
    cfg = config_flags.load_config("configs/tiny.py")
    cfg.data.tasks, cfg.data.task_train = "fiqasa", f"fiqasa={mine}"
    [(task, every)], _ = multitask.train_sets(["fiqasa"], "", cfg.data)
    assert task.name == "fiqasa" and len(every) == 5
    cfg.data.train_subset = "0.4:0"
    [(_, part)], _ = multitask.train_sets(["fiqasa"], "", cfg.data)
    assert len(part) == 2 and all(ex in every for ex in part)
    cfg.data.task_train = "fire=x.jsonl"
    with pytest.raises(UserError, match="data.task_train"):
        multitask.train_sets(["fiqasa"], "", cfg.data)
