"""Bad keys, flags and outputs are refused before any work (issue 16): one `error:` line, exit 2, no traceback,
nothing written, and no model loaded (store.load / hf.load_hf / the profile fail the test if reached). In-process
through the real CLIs' main(); one subprocess checks the real command."""

import errno
import gc
import os
import re
import subprocess
import sys

import pytest

from jaxfin import convert, evaluate, generate, profile, train, validate
from jaxfin.errors import UserError, out_of_memory, run_cli
from jaxfin.io import files, hf, store
from jaxfin.perf import profile as perf_profile
from jaxfin.training import defaults

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "tiny.py")


@pytest.fixture
def no_loading(monkeypatch):
    """Any model load or profile run fails the test: the errors under test must come first."""
    def loaded(*args, **kwargs):
        raise AssertionError("a model was loaded before the error")
    monkeypatch.setattr(store, "load", loaded)
    monkeypatch.setattr(hf, "load_hf", loaded)
    monkeypatch.setattr(perf_profile, "run", loaded)


def _cli(main, argv, capsys) -> tuple[int, list[str]]:
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        run_cli(main, argv)
    code = e.value.code
    gc.collect()
    return code, capsys.readouterr().err.splitlines()


def _one_line(result: tuple[int, list[str]], pattern: str) -> None:
    code, lines = result
    assert code == 2 and len(lines) == 1 and re.fullmatch("error: " + pattern, lines[0]), lines


@pytest.mark.parametrize("make", [defaults.lora, defaults.lora_neftune, defaults.tiny])
def test_every_preset_passes_every_rule(make, tmp_path):
    c = make()
    c.workdir = str(tmp_path / "runs" / "x")  # parents are created for a workdir
    validate.check(c)
    keys = set(validate.flatten(c))
    assert set(validate.RULES) - keys == set()  # every rule names a real key


BAD_KEYS = [  # (override, the error line after "error: ")
    ("train.batch_size=0", r"train.batch_size must be a positive integer, got 0"),
    ("train.steps=-5", r"train.steps must be a non-negative integer \(0 = train.epochs over the data\), got -5"),
    ("eval.max_examples=-5", r"eval.max_examples must be -1 \(all\), 0 \(skip\) or a positive integer, got -5"),
    ("model.dtype=float64", r"model.dtype must be one of float32, bfloat16, float16, got 'float64'"),
    ("eval.max_new_tokens=0", r"eval.max_new_tokens must be a positive integer, got 0"),
    ("model.remat=sometimes", r"model.remat must be one of none, full, .*, got 'sometimes'"),
    ("optim.b2=1.0", r"optim.b2 must be a number in \[0, 1\), got 1.0"),
    ("lora.dropout=-0.1", r"lora.dropout must be a number in \[0, 1\), got -0.1"),
    ("mesh.data=0", r"mesh.data must be a positive integer or -1 \(the remaining devices\), got 0"),
    ("train.max_nonfinite_steps=-1", r"train.max_nonfinite_steps must be a non-negative integer \(0 = never stop\), "
                                     r"got -1"),
    ("train.epochs=0", r"train.steps and train.epochs are both 0: nothing to train"),
]


@pytest.mark.parametrize("override,message", BAD_KEYS, ids=[b[0] for b in BAD_KEYS])
def test_bad_key_is_one_line_before_anything(no_loading, tmp_path, capsys, override, message):
    wd = tmp_path / "wd"
    extra = ["--config.train.steps=0"] if override.startswith("train.epochs") else []
    argv = ["--config", TINY, f"--config.workdir={wd}", *extra, f"--config.{override}"]
    _one_line(_cli(train.main, argv, capsys), message)
    assert os.listdir(tmp_path) == []  # no workdir, no assets


def test_workdir_that_cannot_be_written(no_loading, tmp_path, capsys, monkeypatch):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    _one_line(_cli(train.main, ["--config", TINY, f"--config.workdir={a_file}"], capsys),
              rf"workdir={a_file}: is a file, expected a folder")
    ro = tmp_path / "ro"
    ro.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == str(ro) else real(p, mode))  # as EROFS
    _one_line(_cli(train.main, ["--config", TINY, f"--config.workdir={ro}/run"], capsys),
              rf"workdir={ro}/run: cannot write in {ro} \(read-only filesystem or no permission\)")
    assert sorted(os.listdir(tmp_path)) == ["file", "ro"] and os.listdir(ro) == []


def test_bad_data_with_the_tiny_default_leaves_no_assets(tmp_path, capsys):
    """The self-made assets are written first (model.path unset); the data file then fails: nothing stays."""
    bad = tmp_path / "train.jsonl"
    bad.write_text('[\n  {"id": "1", "text": "Acme", "entities": {}}\n]\n')
    wd = tmp_path / "runs" / "wd"
    _one_line(_cli(train.main, ["--config", TINY, f"--config.workdir={wd}", f"--config.data.train={bad}"], capsys),
              rf"{bad}:1: not JSON Lines: this looks like one pretty-printed JSON document; JSONL needs one JSON "
              r"object per line")
    assert os.listdir(tmp_path) == ["train.jsonl"]  # neither runs/ nor runs/wd/assets


def _outputs(tmp_path):
    d = tmp_path / "x"
    d.mkdir()
    (d / "file.json").write_text("{}")
    (d / "prompts.jsonl").write_text('{"prompt": "hi"}\n')
    (d / "gold.jsonl").write_text('{"id": "1", "text": "Acme Corp", "entities": {"Company": ["Acme Corp"]}}\n')
    return d


def test_outputs_checked_before_any_work(no_loading, tmp_path, capsys):
    d = _outputs(tmp_path)
    before = sorted(os.listdir(d))
    gen = ["--model", "some/model", "--prompts", str(d / "prompts.jsonl")]
    _one_line(_cli(generate.main, gen + ["--out", f"{d}/missing/out.jsonl"], capsys),
              rf"--out {d}/missing/out.jsonl: the folder {d}/missing does not exist \(create it first\)")
    _one_line(_cli(generate.main, gen + ["--out", str(d)], capsys), rf"--out {d}: is a folder, expected a file name")
    ev = ["--model", "some/model", "--data", str(d / "gold.jsonl")]
    _one_line(_cli(evaluate.main, ev + ["--out", str(d / "file.json")], capsys),
              rf"--out {d}/file.json: is a file, expected a folder")
    _one_line(_cli(evaluate.main, ev + ["--out", str(d / "a" / "b")], capsys),
              rf"--out {d}/a/b: the folder {d}/a does not exist \(create it first\)")
    _one_line(_cli(evaluate.main, ev + ["--out", str(d / "o"), "--max-new-tokens", "0"], capsys),
              r"argument --max-new-tokens: expected a positive integer, got '0' .*")
    _one_line(_cli(convert.main, ["to-hf", "--checkpoint", "some/model", "--out", f"{d}/a/b"], capsys),
              rf"--out {d}/a/b: the folder {d}/a does not exist \(create it first\)")
    prof = ["--config", TINY, "--random-weights", "--devices", "1"]
    _one_line(_cli(profile.main, prof + ["--out", f"{d}/a/result.json"], capsys),
              rf"--out {d}/a/result.json: the folder {d}/a does not exist \(create it first\)")
    # The README's `--out benchmarks/results/` onto a tracked result: kept unless --overwrite.
    (d / "cpu_tiny.json").write_text("{}")
    _one_line(_cli(profile.main, prof + ["--out", f"{d}/"], capsys),
              rf"--out {d}/cpu_tiny.json: the file exists \(pass --overwrite to replace it, or name another file\)")
    assert sorted(os.listdir(d)) == sorted(before + ["cpu_tiny.json"]) and (d / "cpu_tiny.json").read_text() == "{}"


def test_read_only_or_full_outputs_are_one_line(no_loading, tmp_path, capsys, monkeypatch):
    d = _outputs(tmp_path)
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == str(d) else real(p, mode))
    _one_line(_cli(generate.main, ["--model", "m/m", "--prompts", str(d / "prompts.jsonl"), "--out",
                                   str(d / "o.jsonl")], capsys),
              rf"--out {d}/o.jsonl: cannot write in {d} \(read-only filesystem or no permission\)")
    _one_line(_cli(evaluate.main, ["--model", "m/m", "--data", str(d / "gold.jsonl"), "--out", str(d)], capsys),
              rf"--out {d}: cannot write in {d} \(read-only filesystem or no permission\)")
    monkeypatch.setattr(os, "access", real)
    # Disk full while writing: the output's name, not the temporary file's.

    def full(tmp):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), tmp)
    with pytest.raises(UserError, match=rf"^{d}/out.json: cannot write: No space left on device$"):
        files.atomic_write(d / "out.json", full)
    assert not [f for f in os.listdir(d) if "tmp" in f]


def test_out_of_memory_is_one_line():
    class XlaRuntimeError(RuntimeError):
        pass
    text = "RESOURCE_EXHAUSTED: Out of memory while trying to allocate 44.00GiB.\n" + "details\n" * 40
    with pytest.raises(UserError, match=r"^out of device memory: the training step \(x\) did not fit \(XLA asked for "
                                        r"44.00GiB\); lower train.seq_len$"):
        with out_of_memory("the training step (x)", "train.seq_len"):
            raise XlaRuntimeError(text)
    with pytest.raises(ZeroDivisionError):  # anything else is untouched
        with out_of_memory("x", "y"):
            1 / 0


def test_out_of_memory_in_training_through_the_cli(assets, tmp_path, capsys, monkeypatch):
    from jaxfin.training import loop

    def oom(*args, **kwargs):
        raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 44.00GiB.")
    monkeypatch.setattr(loop, "run", oom)
    argv = ["--config", TINY, f"--config.workdir={tmp_path / 'wd'}", f"--config.model.path={assets.model}",
            f"--config.data.train={assets.train}", "--config.eval.max_examples=0", "--config.train.seq_len=256"]
    _one_line(_cli(train.main, argv, capsys),
              r"out of device memory: the training step \(train.batch_size=8 / train.grad_accum_steps=1 rows x "
              r"train.seq_len=256 tokens, model.remat=none, 8 devices\) did not fit \(XLA asked for 44.00GiB\); "
              r"lower train.batch_size or train.seq_len, raise train.grad_accum_steps, set model.remat=full, or "
              r"spread the model over more devices \(mesh.fsdp\)")


def test_end_of_training_line_carries_the_interval(monkeypatch, tmp_path, capsys):
    from jaxfin.training import sft
    metrics = {"primary": "micro_f1", "micro_f1": 0.5, "micro_f1_ci95": [0.25, 0.75], "overlength_rate": 0.0,
               "n_examples": 4}
    monkeypatch.setattr(sft, "run", lambda config: {"step": 3, "metrics": [{"step": 1, "loss": 2.0},
                                                                           {"step": 3, "loss": 1.0}],
                                                    "eval": metrics})
    assert train.main(["--config", TINY, f"--config.workdir={tmp_path}"]) == 0
    line = capsys.readouterr().out.strip()
    assert re.fullmatch(r"trained to step 3 in \S+ s: loss 2.0000 \(step 1\) -> 1.0000 \(step 3\); eval fire: micro "
                        r"F1 0.5000 \(95% CI 0.2500-0.7500\), stopped at max_new_tokens 0.00%, n=4; workdir .*",
                        line), line


def test_the_real_command_prints_one_line(tmp_path):
    out = tmp_path / "missing" / "out.jsonl"
    (tmp_path / "p.jsonl").write_text('{"prompt": "hi"}\n')
    proc = subprocess.run([sys.executable, "-m", "jaxfin.generate", "--model", "some/model", "--prompts",
                           str(tmp_path / "p.jsonl"), "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2 and proc.stderr.splitlines() == [
        f"error: --out {out}: the folder {out.parent} does not exist (create it first)"], proc.stderr

