"""The base model's identity in run.json (issue 16): resuming a workdir on other weights of the same shape is one
line before any model is loaded (model.allow_base_change allows it); moving a model keeps its fingerprint; an
extended finished run says once that its learning-rate schedule changes."""

import gc
import os
import re
import shutil

import numpy as np
import pytest

from jaxfin import config_flags, train
from jaxfin.errors import run_cli
from jaxfin.io import fingerprint, store, workdir
from jaxfin.model.lora import LoraConfig
from jaxfin.training import defaults, session

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = os.path.join(ROOT, "configs", "tiny.py")


@pytest.fixture(scope="module")
def models(assets, tmp_path_factory):
    """The tiny model, a moved copy (same weights) and another model of the same shape (other bytes)."""
    d = tmp_path_factory.mktemp("models")
    moved = shutil.copytree(assets.model, d / "moved")
    other = shutil.copytree(assets.model, d / "other")
    weights = other / "model.safetensors"
    data = bytearray(weights.read_bytes())
    header = int.from_bytes(data[:8], "little") + 8
    data[header:header + 64] = bytes(255 - b for b in data[header:header + 64])  # the first tensor's bytes
    weights.write_bytes(bytes(data))
    return {"model": assets.model, "moved": str(moved), "other": str(other)}


@pytest.fixture(scope="module")
def resumable(models, tmp_path_factory):
    """A workdir trained on the tiny model: run.json with its fingerprint and 10 planned steps, a checkpoint."""
    wd = str(tmp_path_factory.mktemp("wd"))
    cfg = store.describe(models["model"])[0]
    workdir.write_run(wd, base_model=models["model"], base_model_name_or_path=models["model"], model_config=cfg,
                      lora_config=LoraConfig(rank=4, alpha=8.0), config=defaults.tiny().to_dict(),
                      base_fingerprint=fingerprint.of(models["model"]), total_steps=10)
    with workdir.checkpoint_manager(wd) as mngr:
        tree = {"a": np.zeros(3, np.float32)}
        workdir.save(mngr, 10, tree, tree, 10)
        mngr.wait_until_finished()
    return wd


def test_fingerprint_follows_the_weights_not_the_path(models):
    fp = fingerprint.of(models["model"])
    assert fingerprint.of(models["moved"]) == fp and fingerprint.of(models["other"]) != fp


def test_resume_on_another_base_is_one_line_before_loading(models, resumable, capsys, monkeypatch):
    def loaded(*args, **kwargs):
        raise AssertionError("a model was loaded before the error")
    monkeypatch.setattr(store, "load", loaded)
    other = models["other"]
    argv = ["--config", TINY, f"--config.workdir={resumable}", f"--config.model.path={other}",
            "--config.eval.max_examples=0"]
    before = sorted(os.listdir(resumable))
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        run_cli(train.main, argv)
    gc.collect()
    lines = capsys.readouterr().err.splitlines()
    fp_old, fp_new = fingerprint.of(models["model"])[:12], fingerprint.of(other)[:12]
    assert e.value.code == 2 and lines == [
        f"error: {resumable}: its adapters were trained on {models['model']} (fingerprint {fp_old}), but "
        f"model.path={other} holds other weights (fingerprint {fp_new}); use a new workdir, or set "
        f"--config.model.allow_base_change=true to continue these adapters on the new base"], lines
    assert sorted(os.listdir(resumable)) == before and workdir.read_run(resumable)["base_model"] == models["model"]


def test_same_weights_pass_and_the_key_allows_a_change(models, resumable, capsys):
    config = defaults.tiny()
    assert session.check_base(resumable, models["moved"], config) == fingerprint.of(models["model"])
    config.model.allow_base_change = True
    assert session.check_base(resumable, models["other"], config) == fingerprint.of(models["other"])
    assert re.match(r"note: .*holds other weights .*; continuing on the new base \(model.allow_base_change\)",
                    capsys.readouterr().out)


def test_extending_a_finished_run_notes_the_schedule_change(resumable, capsys):
    config, _ = config_flags.parse_args(["--config.train.steps=20"], defaults.tiny)
    session.note_schedule_change(resumable, config, 20)
    assert capsys.readouterr().out.strip() == (
        "note: the learning-rate schedule changes from step 11 on: the run was planned for 10 steps and now goes "
        "to 20, and optim.decay_steps=0 makes the cosine decay span the whole run (20 steps instead of 10); set "
        "--config.optim.decay_steps=10 to keep the original schedule")
    config, _ = config_flags.parse_args(["--config.train.steps=20", "--config.optim.decay_steps=10"], defaults.tiny)
    session.note_schedule_change(resumable, config, 20)  # the schedule is kept: nothing to say
    assert capsys.readouterr().out == ""
