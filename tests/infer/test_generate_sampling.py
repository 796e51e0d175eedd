"""decode.generate with sampling: samples independent of batching, no recompiles for new T / P, top_k=1 is greedy,
num_samples rows, and the CLI's sampling flags (one-line errors before any model is loaded)."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from jaxfin.infer import decode
from jaxfin.infer.sampling import Sampling
from jaxfin.model import params as params_lib
from jaxfin.model.config import ModelConfig

CFG = ModelConfig(vocab_size=96, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4, num_kv_heads=2,
                  head_dim=8, max_position_embeddings=256)
NEW = 12
HOT = Sampling(temperature=1.5, top_p=0.95)  # near-uniform draws: samples of one prompt differ
STOP = [5, 7, 11, 13, 17, 19, 23, 29]  # frequent enough that some samples stop, not all


@pytest.fixture(scope="module")
def params():
    """Random weights of std 0.3 (logits of size ~10, top-2 gaps well above rounding)."""
    base = params_lib.init_params(CFG, jax.random.key(0))
    return jax.tree.map(lambda a: a * 15.0 if a.ndim > 1 else a, base)


@pytest.fixture(scope="module")
def prompts() -> list[list[int]]:
    rs = np.random.RandomState(0)
    return [rs.randint(0, CFG.vocab_size, n).tolist() for n in (3, 20, 9)]  # buckets 16 and 32


def _tokens(out) -> list[list[list[int]]]:
    return [[c.token_ids for c in samples] for samples in out]


def test_batch_invariance_and_num_samples(params, prompts):
    """Same (seed, example id, sample index) -> same tokens at batch 1 and batch 32, with the prompts in another
    order (other sorting and buckets); sample 0 of three is the single sample."""
    run = functools.partial(decode.generate, params, CFG, max_new_tokens=NEW, stop_ids=STOP, sampling=HOT, seed=11)
    one = run(prompts, batch_size=1, num_samples=2)
    perm = [2, 0, 1]
    many = run([prompts[i] for i in perm], batch_size=32, num_samples=2, example_ids=perm)
    assert _tokens([many[perm.index(i)] for i in range(3)]) == _tokens(one)
    assert [len(s) for s in one] == [2] * 3
    assert all(len({tuple(t) for t in samples}) > 1 for samples in _tokens(one))  # samples differ
    for samples in one:
        for c in samples:
            assert c.finish_reason in ("stop", "length") and not set(STOP) & set(c.token_ids)
            assert len(c.token_ids) == NEW if c.finish_reason == "length" else len(c.token_ids) < NEW
    reasons = [c.finish_reason for s in one for c in s]
    assert "stop" in reasons and "length" in reasons
    single = run(prompts, batch_size=1, num_samples=1)
    assert [s[0].token_ids for s in single] == [s[0].token_ids for s in one]
    other_seed = decode.generate(params, CFG, prompts, max_new_tokens=NEW, stop_ids=STOP, sampling=HOT, seed=12,
                                 batch_size=1)
    assert _tokens(other_seed) != _tokens(single)


def test_new_temperature_and_top_p_compile_nothing(params, prompts, monkeypatch):
    traces = {"prefill": 0, "decode_loop": 0}

    def counted(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            traces[fn.__name__] += 1  # runs only while jax traces (= compiles) a new shape
            return fn(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(decode, "prefill", counted(decode.prefill))
    monkeypatch.setattr(decode, "decode_loop", counted(decode.decode_loop))
    outs = []
    for t, p in ((0.7, 0.9), (1.3, 0.5), (1.0, 1.0), (1.0, 0.01)):
        out = decode.generate(params, CFG, prompts, max_new_tokens=NEW, stop_ids=[], batch_size=8,
                              sampling=Sampling(temperature=t, top_k=20, top_p=p), num_samples=2)
        outs.append(_tokens(out))
    assert traces == {"prefill": 1, "decode_loop": 1}
    assert len({json.dumps(o) for o in outs}) == 4  # each setting draws other tokens
    # top_k = 1 (or a nucleus that keeps one token) is greedy, whatever the temperature.
    greedy = [[c.token_ids] * 2 for c in decode.greedy(params, CFG, prompts, max_new_tokens=NEW, stop_ids=[],
                                                        batch_size=8)]
    assert outs[3] == greedy
    top1 = decode.generate(params, CFG, prompts, max_new_tokens=NEW, stop_ids=[], batch_size=8,
                           sampling=Sampling(temperature=2.0, top_k=1), num_samples=2)
    assert _tokens(top1) == greedy


def test_bad_arguments(params):
    with pytest.raises(ValueError, match="num_samples"):
        decode.generate(params, CFG, [[1]], max_new_tokens=4, stop_ids=[], num_samples=0)
    with pytest.raises(ValueError, match="seed"):
        decode.generate(params, CFG, [[1]], max_new_tokens=4, stop_ids=[], seed=2**32)
    with pytest.raises(ValueError, match="example_ids"):
        decode.generate(params, CFG, [[1], [2]], max_new_tokens=4, stop_ids=[], example_ids=[0])


@pytest.mark.parametrize("flags, message", [
    (["--temperature", "-0.5"], "--temperature must be a finite number >= 0"),
    (["--top-p", "0"], "--top-p must be in (0, 1]"),
    (["--top-p", "1.5"], "--top-p must be in (0, 1]"),
    (["--top-k", "-1"], "--top-k must be >= 0"),
    (["--num-samples", "0"], "--num-samples must be >= 1"),
    (["--seed", "-1"], "--seed must be in [0, 2**32)"),
])
def test_cli_bad_sampling_flags(tmp_path, flags, message, capsys):
    """One error line, exit 2, before the model (which does not exist) or the prompts are read."""
    from jaxfin import generate
    from jaxfin.errors import run_cli

    args = ["--model", str(tmp_path / "no_model"), "--prompts", str(tmp_path / "no.jsonl"),
            "--out", str(tmp_path / "out.jsonl"), *flags]
    with pytest.raises(SystemExit) as exit_info:
        run_cli(generate.main, args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {message}"), err


def test_cli_bad_flag_subprocess(tmp_path):
    """The same as a real process: exit 2, one line, no traceback."""
    args = [sys.executable, "-m", "jaxfin.generate", "--model", str(tmp_path / "no_model"), "--prompts",
            str(tmp_path / "no.jsonl"), "--out", str(tmp_path / "o.jsonl"), "--temperature", "-1"]
    proc = subprocess.run(args, capture_output=True, text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["error: --temperature must be a finite number >= 0 (0 = greedy), "
                                                "got -1.0"], proc.stderr
