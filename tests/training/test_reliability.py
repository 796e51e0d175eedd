"""Reliability (issue 6) on the tiny model: kill -9 (during a save) and resume with bitwise-equal losses, SIGTERM /
SIGINT save-and-stop, the NaN/Inf guard, adapters that come with model.path, and the catalogue of bad inputs
(one `error:` line naming the file / key / tensor, exit 2, nothing half-written) through the real CLIs."""

import dataclasses
import gc
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from jaxfin import config_flags, convert, generate, train
from jaxfin.data import batches
from jaxfin.errors import run_cli, UserError
from jaxfin.io import hf as hf_io
from jaxfin.io import store, workdir
from jaxfin.model import lora
from jaxfin.training import defaults, sft


ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = os.path.join(ROOT, "configs", "tiny.py")

STEPS, EVERY = 12, 4
# Subprocesses see what the tests see (conftest: 8 CPU devices) and share their compilation cache. Bitwise
# equality holds for one device configuration: the same run on a 1-device platform differs in the last bits.
ENV = dict(os.environ)
# `python -c DRIVER MODE ARGV...` runs the real CLI (run_cli(train.main)) with a test-only slowdown:
#   slowS   every batch takes S seconds more, so a signal lands mid-run (batches.batch_at is called per device
#           block of the batch: the first one sleeps);
#   hangN   orbax never finalises checkpoint N (its `N.orbax-checkpoint-tmp` dir stays), so a kill lands mid-save.
DRIVER = """
import sys, time
from jaxfin import errors, train
from jaxfin.data import batches
mode = sys.argv[1]
if mode.startswith("slow"):
    real_batch_at = batches.batch_at
    def batch_at(*args, **kwargs):
        time.sleep(float(mode[4:]) if kwargs.get("process_index", 0) == 0 else 0.0)
        return real_batch_at(*args, **kwargs)
    batches.batch_at = batch_at
if mode.startswith("hang"):
    from orbax.checkpoint._src.path import atomicity  # private: the rename that completes a checkpoint
    real_finalize = atomicity.AtomicRenameTemporaryPath.finalize
    async def finalize(self):
        if self._final_path.name == mode[4:]:
            time.sleep(3600)
        return await real_finalize(self)
    atomicity.AtomicRenameTemporaryPath.finalize = finalize
errors.run_cli(train.main, sys.argv[2:])
"""


def _argv(assets, wd, *extra: str) -> list[str]:
    """The one command every run of these tests shares (NEFTune on, LoRA dropout on: both must replay)."""
    return ["--config", TINY, f"--config.workdir={wd}", f"--config.model.path={assets.model}",
            f"--config.data.train={assets.train}", f"--config.data.eval={assets.eval}",
            f"--config.train.steps={STEPS}", "--config.train.seq_len=256",
            f"--config.checkpoint.every_steps={EVERY}", "--config.eval.max_examples=0", "--config.lora.dropout=0.1",
            *extra]


def _run(assets, wd, *extra: str) -> dict:
    config, _ = config_flags.parse_args(_argv(assets, wd, *extra), defaults.tiny)
    return sft.run(config)


def _losses(wd) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in workdir.read_metrics(str(wd))}


@pytest.fixture(scope="module")
def reference(assets, tmp_path_factory):
    """An uninterrupted run: its workdir and per-step losses."""
    wd = tmp_path_factory.mktemp("reference")
    _run(assets, wd)
    losses = _losses(wd)
    assert sorted(losses) == list(range(1, STEPS + 1))
    return wd, losses


def _spawn(assets, wd, mode: str, log) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", DRIVER, mode, *_argv(assets, wd)], cwd=ROOT, env=ENV,
                            stdout=log, stderr=subprocess.STDOUT)


def _poll(proc: subprocess.Popen, ready, what: str, limit: float = 300.0) -> None:
    t0 = time.monotonic()
    while not ready():
        assert proc.poll() is None, f"the training process exited ({proc.returncode}) before {what}"
        assert time.monotonic() - t0 < limit, f"gave up waiting for {what}"
        time.sleep(0.1)


def _rows(wd) -> int:
    return sum(1 for _ in open(wd / workdir.METRICS)) if (wd / workdir.METRICS).is_file() else 0


def test_kill_9_during_a_save_resumes_bitwise(assets, reference, tmp_path):
    """SIGKILL while checkpoint 8 is being written (and steps up to 12 are logged): the rerun resumes from 4, the
    complete one, and every step's loss equals the uninterrupted run's bitwise."""
    wd = tmp_path / "wd"
    with open(tmp_path / "log.txt", "w") as log:
        proc = _spawn(assets, wd, "hang8", log)
        try:
            _poll(proc, lambda: os.path.isdir(wd / "checkpoints" / "8.orbax-checkpoint-tmp") and _rows(wd) == STEPS,
                  "checkpoint 8 in flight and all steps logged")
        finally:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert workdir.latest_step(str(wd)) == 4  # the tmp dir of 8 is not a checkpoint
    with open(wd / workdir.METRICS, "a") as f:
        f.write('{"step": 13, "loss"')  # as if the kill had torn a line in half
    out = _run(assets, wd)
    assert [r["step"] for r in out["metrics"]] == list(range(5, STEPS + 1))
    assert sorted(os.listdir(wd / "checkpoints")) == ["12", "4", "8"]  # tmp dir cleaned up, 8 written again
    assert _rows(wd) == STEPS + 1 + (STEPS - 4)  # appended: 12 rows, the torn line, 8 re-logged rows
    assert _losses(wd) == reference[1]  # bitwise: the last row of each step wins


def test_sigterm_saves_the_current_step_and_the_rerun_continues(assets, reference, tmp_path):
    wd = tmp_path / "wd"
    with open(tmp_path / "log.txt", "w") as log:
        proc = _spawn(assets, wd, "slow1.0", log)
        try:
            _poll(proc, lambda: _rows(wd) >= 5, "five logged steps")
            t0 = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=120)
            print(f"SIGTERM to exit: {time.monotonic() - t0:.2f} s")
        finally:
            proc.kill()
            proc.wait()
    output = open(tmp_path / "log.txt").read()
    assert proc.returncode == 128 + signal.SIGTERM, output
    stopped = workdir.latest_step(str(wd))
    assert 5 <= stopped < STEPS and f"stopped at step {stopped}: checkpoint saved" in output
    assert sorted(_losses(wd)) == list(range(1, stopped + 1))  # every step up to the checkpoint is logged
    out = _run(assets, wd)
    assert out["metrics"][0]["step"] == stopped + 1
    assert _losses(wd) == reference[1]


def test_sigint_in_process_saves_restores_handlers_and_resumes(assets, reference, tmp_path, monkeypatch):
    real, sent = batches.batch_at, []

    def interrupted(packed, index, *args, **kwargs):
        if index == 2 and not sent:  # while preparing step 3, as Ctrl-C would (once: a second one exits at once)
            sent.append(os.kill(os.getpid(), signal.SIGINT))
        return real(packed, index, *args, **kwargs)

    monkeypatch.setattr(batches, "batch_at", interrupted)
    out = _run(assets, tmp_path)
    assert out["stopped"] == 128 + signal.SIGINT and out["step"] == 3 and workdir.latest_step(str(tmp_path)) == 3
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the loop's handler is gone
    monkeypatch.setattr(batches, "batch_at", real)
    assert _run(assets, tmp_path)["metrics"][0]["step"] == 4
    assert _losses(tmp_path) == reference[1]


def _state(wd, step: int) -> tuple[list[np.ndarray], dict]:
    with ocp.CheckpointManager(os.path.abspath(os.path.join(wd, "checkpoints"))) as mngr:
        out = mngr.restore(step, args=ocp.args.Composite(lora=ocp.args.StandardRestore(),
                                                         opt_state=ocp.args.StandardRestore(),
                                                         meta=ocp.args.JsonRestore()))
    return [np.asarray(x) for x in jax.tree.leaves((out.lora, out.opt_state))], out.meta


def test_nonfinite_steps_are_skipped_counted_and_stop_the_run(assets, reference, tmp_path, monkeypatch):
    """NaN loss masks poison the batches of steps 3 and 6, 7, 8: step 3 is skipped (state unchanged, counted) and
    training goes on; three in a row stop it at step 8 with one line, the checkpoints before it kept."""
    real = batches.batch_at

    def poisoned(packed, index, *args, **kwargs):
        batch = real(packed, index, *args, **kwargs)
        if index == 2 or index >= 5:
            batch["loss_mask_BT"] = batch["loss_mask_BT"] * np.float32(np.nan)
        return batch

    monkeypatch.setattr(batches, "batch_at", poisoned)
    with pytest.raises(UserError, match=r"^training stopped at step 8: 3 consecutive steps \(6-8\) had a non-finite "
                                        r"loss or gradients and were skipped \(adapters not updated\); checkpoint 7 "
                                        r"holds the last good state"):
        _run(assets, tmp_path, "--config.train.max_nonfinite_steps=3", "--config.checkpoint.every_steps=1",
             "--config.checkpoint.max_to_keep=20")
    rows = workdir.read_metrics(str(tmp_path))
    assert [r["step"] for r in rows] == list(range(1, 9))
    assert [r["nonfinite_steps"] for r in rows] == [0, 0, 1, 1, 1, 2, 3, 4]
    assert [r["loss"] is None for r in rows] == [False, False, True, False, False, True, True, True]
    assert [rows[0]["loss"], rows[1]["loss"]] == [reference[1][1], reference[1][2]]
    assert workdir.latest_step(str(tmp_path)) == 7  # nothing saved for the step that ended the run
    (s2, m2), (s3, m3), (s4, _), (s5, _), (s7, m7) = (_state(tmp_path, n) for n in (2, 3, 4, 5, 7))
    assert all(np.array_equal(a, b) for a, b in zip(s2, s3))  # adapters and Adam state (its count too) unchanged
    assert not all(np.array_equal(a, b) for a, b in zip(s3, s4))
    assert all(np.array_equal(a, b) for a, b in zip(s5, s7))
    assert (m2["nonfinite_steps"], m3["nonfinite_steps"], m7["nonfinite_steps"]) == (0, 1, 3)


# --------------------------------------------------------------------------------------------------------------
# Adapters that come with model.path (e.g. `convert_weights.py to-jax --peft-adapter`).


def test_training_starts_from_the_model_adapters(assets, tmp_path, capsys):
    params, cfg, hf_config = hf_io.load_hf(assets.model)
    lcfg = lora.LoraConfig(rank=4, alpha=8.0, targets=("q_proj", "v_proj"))
    rng = np.random.default_rng(0)
    adapters = jax.tree.map(lambda s: (0.1 * rng.standard_normal(s.shape)).astype(np.float32), lora.shapes(cfg, lcfg))
    ckpt = str(tmp_path / "ckpt")
    store.save_model(ckpt, params, cfg, hf_config=hf_config,
                          generation_config=hf_io.read_generation_config(assets.model),
                          tokenizer_files=hf_io.tokenizer_files(assets.model), lora=adapters, lora_config=lcfg)
    wd = tmp_path / "wd"
    # A config that disagrees with the adapters: one line naming the keys and the fix; nothing written.
    with pytest.raises(UserError, match=rf"^model.path={ckpt} has LoRA adapters with lora.rank=4, lora.alpha=8.0, "
                                        r"lora.targets=q_proj,v_proj but the config asks for lora.rank=16, "
                                        r"lora.alpha=32.0, lora.targets=q_proj,.*,down_proj; set --config.lora.rank=4 "
                                        r"--config.lora.alpha=8.0 --config.lora.targets=q_proj,v_proj to train them$"):
        _run(assets, wd, f"--config.model.path={ckpt}")
    assert not wd.exists()
    # lr 0: the run's adapters are exactly the model's (a fresh init would have b = 0).
    out = _run(assets, wd, f"--config.model.path={ckpt}", "--config.lora.rank=4", "--config.lora.alpha=8",
               "--config.lora.targets=q_proj,v_proj", "--config.optim.lr=0", "--config.train.steps=1")
    assert out["step"] == 1 and "starting from the LoRA adapters of" in capsys.readouterr().out
    trained, got_lcfg, base, _ = workdir.restore_adapters(str(wd))
    assert got_lcfg == dataclasses.replace(lcfg, dropout=0.1) and base == os.path.abspath(ckpt)  # dropout: config's
    for a, b in zip(jax.tree.leaves(trained), jax.tree.leaves(adapters)):
        np.testing.assert_array_equal(np.asarray(a), b)


# --------------------------------------------------------------------------------------------------------------
# The catalogue of bad inputs.


def _cli(main, argv: list[str], capsys) -> tuple[int, list[str]]:
    """Runs a CLI in-process as `python -m ...` would; (exit code, stderr lines)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        run_cli(main, argv)
    code = e.value.code
    del e
    gc.collect()  # finalises what a failed orbax read left pending now, not at interpreter exit
    return code, capsys.readouterr().err.splitlines()


def _write(path, text: str) -> str:
    with open(path, "w") as f:
        f.write(text)
    return str(path)


@pytest.fixture(scope="module")
def bad(assets, reference, tmp_path_factory):
    """Bad data files and model directories, by name."""
    d = tmp_path_factory.mktemp("bad")
    good = open(assets.train).read().splitlines(keepends=True)
    out = {"malformed": _write(d / "malformed.jsonl", "".join(good[:3] + ['{"id": "x", "text": "a"\n'] + good[3:6])),
           "no_text": _write(d / "no_text.jsonl", good[0] + '{"id": "x", "entities": {}}\n'),
           "entities": _write(d / "entities.jsonl", good[0] + '{"text": "Apple", "entities": ["Apple"]}\n'),
           "empty": _write(d / "empty.jsonl", ""), "missing": str(d / "no_such_dir"), "foreign": str(d / "foreign")}
    os.makedirs(out["foreign"])
    _write(d / "foreign" / "notes.txt", "not a model")
    for name in ("truncated", "gpt2", "pickle"):
        out[name] = shutil.copytree(assets.model, d / name)
    weights = d / "truncated" / "model.safetensors"
    os.truncate(weights, os.path.getsize(weights) // 2)
    hf = json.load(open(d / "gpt2" / "config.json"))
    _write(d / "gpt2" / "config.json", json.dumps({**hf, "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}))
    os.rename(d / "pickle" / "model.safetensors", d / "pickle" / "pytorch_model.bin")
    ckpt = str(d / "ckpt")
    params, cfg, hf = hf_io.load_hf(assets.model)
    store.save_model(ckpt, params, cfg, hf_config=hf, generation_config=None, tokenizer_files={})
    out["ckpt_no_params"] = shutil.copytree(ckpt, d / "ckpt_no_params")
    shutil.rmtree(d / "ckpt_no_params" / "params")
    out["ckpt_damaged"] = shutil.copytree(ckpt, d / "ckpt_damaged")
    out["ckpt_foreign"] = shutil.copytree(ckpt, d / "ckpt_foreign")
    record = json.load(open(d / "ckpt_foreign" / store.MODEL_JSON))
    _write(d / "ckpt_foreign" / store.MODEL_JSON, json.dumps({**record, "format": "another-model-format"}))
    out["workdir_damaged"] = shutil.copytree(reference[0], d / "workdir_damaged")
    for where in (d / "ckpt_damaged" / "params", d / "workdir_damaged" / "checkpoints" / str(STEPS) / "lora"):
        biggest = max(glob.glob(f"{where}/ocdbt.process_0/d/*"), key=os.path.getsize)
        os.truncate(biggest, os.path.getsize(biggest) // 2)
    return {k: str(v) for k, v in out.items()}


DATA_AND_CONFIG = [  # (case, --config overrides, the error line after "error: ")
    ("malformed JSON line", ["--config.data.train={malformed}"], r"{malformed}:4: malformed JSON \(Expecting ',' "
                                                                  r"delimiter at column 24\)"),
    ("row without text", ["--config.data.train={no_text}"], r"{no_text}:2: no 'text' field"),
    ("entities of the wrong type", ["--config.data.train={entities}"],
     r"{entities}:2: 'entities' must be an object \{{type: \[mention, ...\] \| null\}}, got list"),
    ("empty data file", ["--config.data.train={empty}"], r"{empty}: no examples \(empty file\)"),
    ("misspelled config key", ["--config.lora.rnak=8"], r"unknown config key 'lora.rnak'; did you mean 'lora.rank'\?"),
    ("lora.rank <= 0", ["--config.lora.rank=0"], r"lora.rank must be a positive integer, got 0"),
    ("seq_len too short for every example", ["--config.train.seq_len=16"],
     r"no example fits train.seq_len=16 \(shortest \d+ tokens, longest \d+\); raise train.seq_len"),
    ("mesh that does not divide the devices", ["--config.mesh.data=3"],
     r"mesh.fsdp=-1: mesh.data=3, mesh.tensor=1 do not divide the 8 devices"),
]
MODELS = [  # (case, model path, the error line after "error: ")
    ("missing model directory", "missing", r"{path}: no such model directory"),
    ("foreign directory", "foreign", r"{path}: not a model directory \(no config.json, jaxfin_model.json or "
                                     r"run.json\)"),
    ("truncated safetensors", "truncated", r"{path}/model.safetensors: truncated file: tensor \S+ needs bytes up to"),
    ("foreign architecture", "gpt2", r"{path}/config.json: unsupported architecture 'GPT2LMHeadModel'"),
    ("pickle weights only", "pickle", r"{path}: only pickle \(.bin\) weights found; jaxfin reads safetensors only. "
                                      r"Convert once with transformers: .*safe_serialization=True\)"),
    ("jaxfin checkpoint without params", "ckpt_no_params", r"{path}/params: missing \(incomplete jaxfin checkpoint\)"),
    ("foreign jaxfin_model.json", "ckpt_foreign", r"{path}/jaxfin_model.json: not a jaxfin model checkpoint of "
                                                  r"version <= 1"),
    ("damaged jaxfin checkpoint", "ckpt_damaged", r"{path}/params: damaged or incomplete orbax checkpoint "
                                                  r"\(OUT_OF_RANGE: Error reading \"\S+\" in OCDBT database"),
    ("workdir with a damaged checkpoint", "workdir_damaged",
     r"{path}/checkpoints/12: cannot restore this checkpoint, delete it to resume from the previous one "
     r"\(OUT_OF_RANGE: Error reading \"layers\.\S+\" in OCDBT database"),
]


def _one_error_line(code: int, lines: list[str], pattern: str) -> None:
    assert code == 2 and len(lines) == 1 and re.fullmatch("error: " + pattern + ".*", lines[0]), lines


@pytest.mark.parametrize("case,overrides,message", DATA_AND_CONFIG, ids=[c[0] for c in DATA_AND_CONFIG])
def test_bad_data_and_config_one_line(assets, bad, tmp_path, capsys, case, overrides, message):
    wd = tmp_path / "wd"
    argv = _argv(assets, wd, *(o.format(**bad) for o in overrides))
    _one_error_line(*_cli(train.main, argv, capsys), message.format(**{k: re.escape(v) for k, v in bad.items()}))
    assert not wd.exists()  # nothing written where the workdir would be
    with pytest.raises(UserError):  # --debug: the exception with its traceback
        run_cli(train.main, argv + ["--debug"])


@pytest.mark.parametrize("case,name,message", MODELS, ids=[c[0] for c in MODELS])
def test_bad_model_directories_one_line_in_every_cli(assets, bad, tmp_path, capsys, case, name, message):
    path = bad[name]
    pattern = message.format(path=re.escape(path))
    wd, out_jsonl, out_dir = tmp_path / "wd", str(tmp_path / "out.jsonl"), str(tmp_path / "hf")
    prompts = _write(tmp_path / "prompts.jsonl", '{"prompt": "Apple Inc. reported revenue."}\n')
    _one_error_line(*_cli(train.main, _argv(assets, wd, f"--config.model.path={path}"), capsys), pattern)
    _one_error_line(*_cli(generate.main, ["--model", path, "--prompts", prompts, "--out", out_jsonl], capsys), pattern)
    _one_error_line(*_cli(convert.main, ["to-hf", "--checkpoint", path, "--out", out_dir], capsys), pattern)
    assert sorted(os.listdir(tmp_path)) == ["prompts.jsonl"]  # no workdir, no output file, no temp dirs


def test_resume_from_a_damaged_checkpoint_and_converter_output_in_use(assets, bad, capsys):
    wd = bad["workdir_damaged"]
    before = sorted(os.listdir(wd))
    _one_error_line(*_cli(train.main, _argv(assets, wd), capsys),
                    rf"{wd}/checkpoints/12: cannot restore this checkpoint, delete it to resume from the previous one")
    assert sorted(os.listdir(wd)) == before
    out = bad["foreign"]
    _one_error_line(*_cli(convert.main, ["to-hf", "--checkpoint", assets.model, "--out", out], capsys),
                    rf"--out {out}: directory is not empty \(pass --overwrite to replace it\)")
    assert os.listdir(bad["foreign"]) == ["notes.txt"]


def test_data_warnings_are_one_line_with_a_count(assets, tmp_path, capsys):
    """Not errors: a gold mention missing from its text, and examples longer than train.seq_len."""
    rows = [json.loads(line) for line in open(assets.train)]
    rows[0]["entities"] = {**rows[0]["entities"], "Company": ["Nowhere Holdings"]}
    rows[1]["text"] = rows[1]["text"] + " and more" * 200  # far past seq_len 256
    train_path = _write(tmp_path / "train.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    argv = _argv(assets, tmp_path / "wd", f"--config.data.train={train_path}", "--config.train.steps=1")
    code, lines = _cli(train.main, argv, capsys)
    warnings = [line for line in lines if line.startswith("warning: ")]
    assert code == 0 and len(warnings) == 2, lines
    assert warnings[0].startswith(f"warning: {train_path}: 1 of ") and warnings[0].endswith(
        "gold mentions do not occur in their text (first: id tiny-train-0, Company 'Nowhere Holdings')")
    assert warnings[1] == f"warning: dropped 1 of {len(rows)} examples longer than train.seq_len=256"


def test_no_traceback_from_the_real_command(assets, bad, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "jaxfin.train", *_argv(assets, tmp_path / "wd"),
                           f"--config.data.train={bad['malformed']}"], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [f"error: {bad['malformed']}:4: malformed JSON (Expecting ',' delimiter at "
                                        f"column 24)"]
    assert not (tmp_path / "wd").exists()


def test_no_remote_code_and_nothing_unpickles():
    """Weights come through jaxfin.io.safetensors (and orbax for jaxfin checkpoints); pickle-only model dirs are
    refused above ("pickle weights only"), PEFT's adapter_model.bin in tests/io/test_peft.py."""
    sources = glob.glob(os.path.join(ROOT, "jaxfin", "**", "*.py"), recursive=True) + \
        glob.glob(os.path.join(ROOT, "tools", "*.py"))
    banned = ("trust_remote_code", "import pickle", "pickle.load", "torch.load", "weights_only")
    assert len(sources) > 10 and not [(p, b) for p in sources for b in banned if b in open(p).read()]
