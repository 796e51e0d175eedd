"""The train step (chunked loss, accumulation, frozen base, optimizer state, one compile) and the loop on the
self-made tiny assets (falling loss, outputs, resume continuing the loss curve), plus config errors."""

import functools
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxfin import config_flags
from jaxfin.data import batches
from jaxfin.errors import UserError
from jaxfin.io import store, workdir
from jaxfin.model import lora
from jaxfin.model import params as params_lib
from jaxfin.model.config import ModelConfig
from jaxfin.model.params import Params
from jaxfin.training import defaults, losses, session, sft, sharding
from jaxfin.training import step as step_lib


ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = os.path.join(ROOT, "configs", "tiny.py")
CFG = ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
                        num_kv_heads=2, head_dim=8)
LCFG = lora.LoraConfig(rank=4, alpha=8.0)


def _batch(seed: int, A: int = 1, B: int = 8, T: int = 20) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, CFG.vocab_size, (A, B, T)).astype(np.int32)
    seg = np.ones((A, B, T), np.int32)
    seg[..., T - 3:] = 0  # padding at the end of every row
    return {"tokens_BT": tokens, "targets_BT": np.roll(tokens, -1, -1), "segment_ids_BT": seg,
            "loss_mask_BT": (rng.random((A, B, T)) < 0.7).astype(np.float32) * (seg > 0),
            "positions_BT": np.broadcast_to(np.arange(T, dtype=np.int32), (A, B, T)).copy()}


def _base() -> Params:
    rng = np.random.default_rng(0)
    return jax.tree.map(lambda s: (0.2 * rng.standard_normal(s.shape)).astype(np.float32), params_lib.param_shapes(CFG))


def test_chunked_cross_entropy_matches_full_logits():
    rng = np.random.default_rng(0)
    h = jnp.asarray(rng.standard_normal((2, 20, 32)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((64, 32)) * 0.3, jnp.float32)
    t = jnp.asarray(rng.integers(0, 64, (2, 20)))
    m = jnp.asarray(rng.random((2, 20)) < 0.6, jnp.float32)
    full = lambda h: jnp.sum(optax.softmax_cross_entropy_with_integer_labels(h @ w.T, t) * m)  # noqa: E731
    chunked = lambda h: losses.chunked_cross_entropy(h, w, t, m, chunk=8)  # 20 = 8 + 8 + 4 (padded)  # noqa: E731
    np.testing.assert_allclose(chunked(h), full(h), rtol=1e-5)
    np.testing.assert_allclose(jax.grad(chunked)(h), jax.grad(full)(h), rtol=1e-5, atol=1e-6)


def _step_setup(mesh, total=10, **hp):
    tx, schedule = step_lib.make_optimizer(config_flags.load_config(TINY).optim, total)
    sh = sharding.train_shardings(CFG, LCFG, tx, mesh)
    adapters, opt_state = session.init_adapters(CFG, LCFG, tx, sh, seed=0)
    seed = hp.pop("seed", 0)
    loss_fn = functools.partial(losses.sft_loss, cfg=CFG, hp=losses.SftConfig(lora_scale=LCFG.scale, **hp))
    step = step_lib.jit_train_step(loss_fn, tx, schedule, seed, sh)
    return sh, adapters, opt_state, step


def test_step_freezes_base_state_is_adapters_only_and_compiles_once():
    mesh = sharding.make_mesh({"fsdp": -1})
    sh, adapters, opt_state, step = _step_setup(mesh, neftune_alpha=5.0)
    base_np = _base()
    base = jax.device_put(base_np, sh.base)
    lora_bytes = sum(x.nbytes for x in jax.tree.leaves(adapters))
    state_bytes = sum(x.nbytes for x in jax.tree.leaves(opt_state))
    # Adam's mu and nu mirror the adapters; the rest are step counters. No state for the 5x larger base.
    assert 2 * lora_bytes <= state_bytes <= 2 * lora_bytes + 64
    assert sum(x.nbytes for x in jax.tree.leaves(base_np)) > 4 * lora_bytes
    start = jax.tree.map(np.asarray, adapters)
    for i in range(3):
        batch = batches.put_batch(_batch(i), sh.batch, (1, 8, 20))
        adapters, opt_state, metrics = step(adapters, opt_state, base, batch, np.int32(i))
        assert np.isfinite(float(metrics["loss"])) and float(metrics["grad_norm"]) > 0
    assert step._cache_size() == 1  # one compile for all steps
    for got, want in zip(jax.tree.leaves(base), jax.tree.leaves(base_np)):
        np.testing.assert_array_equal(np.asarray(got), want)  # bit-identical
    moved = jax.tree.map(lambda a, b: not np.array_equal(np.asarray(a), b), adapters, start)
    assert all(jax.tree.leaves(moved))
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves((adapters, opt_state)) if x.ndim)


def test_gradient_accumulation_equals_one_big_batch():
    mesh = sharding.make_mesh({"fsdp": -1}, jax.devices()[:1])
    base = _base()
    results = []
    for A in (1, 2):
        sh, adapters, opt_state, step = _step_setup(mesh)
        flat = _batch(7, A=1, B=8)
        batch = batches.micro_batches({k: v[0] for k, v in flat.items()}, A)
        adapters, _, m = step(adapters, opt_state, jax.device_put(base, sh.base),
                              batches.put_batch(batch, sh.batch, (A, 8 // A, 20)), np.int32(0))
        results.append((float(m["loss"]), float(m["grad_norm"]), np.asarray(adapters["layers"]["o_proj"]["b"])))
    (l1, g1, b1), (l2, g2, b2) = results
    assert l1 == pytest.approx(l2, rel=1e-5) and g1 == pytest.approx(g2, rel=1e-5)
    # Adam's first update is about lr * sign(g): near-zero gradients make single elements wobble.
    np.testing.assert_allclose(b1, b2, rtol=1e-3, atol=1e-5)


# --------------------------------------------------------------------------------------------------------------
# The loop on the tiny assets.

N = 8  # steps before the "preemption"


def _config(assets, wd, steps, **eval_overrides):
    c = config_flags.load_config(TINY)
    c.workdir, c.model.path, c.data.train, c.data.eval = str(wd), assets.model, assets.train, assets.eval
    c.train.steps, c.train.seq_len, c.optim.decay_steps, c.optim.warmup_steps = steps, 256, 2 * N, 2
    c.checkpoint.every_steps = N
    c.eval.max_examples, c.eval.max_new_tokens, c.eval.batch_size = 0, 24, 2
    for k, v in eval_overrides.items():
        c.eval[k] = v
    return c


def _logged(wd) -> list[dict]:
    with open(os.path.join(wd, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def straight(assets, tmp_path_factory):
    wd = tmp_path_factory.mktemp("straight")
    out = sft.run(_config(assets, wd, 2 * N, max_examples=2, every_steps=N))
    return wd, out


def test_run_writes_workdir_and_loss_falls(assets, straight):
    wd, out = straight
    logged = _logged(wd)
    rows = [r for r in logged if "eval" not in r]
    assert [r["step"] for r in rows] == list(range(1, 2 * N + 1))
    # Evaluations are rows of their own ({"step", "eval"}), joined to their step's row by read_metrics.
    evals = [r for r in logged if "eval" in r]
    assert [r["step"] for r in evals] == [N, 2 * N] and set(evals[0]) == {"step", "eval"}
    assert {"micro_f1", "micro_f1_ci95", "seqeval_micro_f1", "parse_failure_rate"} <= set(evals[-1]["eval"])
    assert evals[-1]["eval"]["micro_f1"] == out["eval"]["micro_f1"]
    merged = workdir.read_metrics(str(wd))
    assert merged[N - 1]["loss"] == rows[N - 1]["loss"] and merged[N - 1]["eval"] == evals[0]["eval"]
    assert set(rows[0]) == {"step", "loss", "lr", "grad_norm", "tokens_per_sec", "nonfinite_steps"}
    losses = [r["loss"] for r in rows]
    assert np.mean(losses[-N // 2:]) < 0.7 * np.mean(losses[: N // 2])  # last vs first quarter
    assert workdir.latest_step(str(wd)) == 2 * N
    run_json = workdir.read_run(str(wd))
    assert run_json["base_model"] == os.path.abspath(assets.model)
    assert lora.LoraConfig.from_dict(run_json["lora_config"]).rank == 16
    for d in ("eval", os.path.join("eval", f"step_{N}")):
        assert {"metrics.json", "predictions.jsonl", "report.md"} <= set(os.listdir(os.path.join(wd, d)))
    assert out["eval"]["n_examples"] == 2
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(os.path.join(wd, "tb")))
    adapters, lcfg, base_path, step = workdir.restore_adapters(str(wd))
    assert step == 2 * N and lcfg.rank == 16 and base_path == run_json["base_model"]
    assert float(jnp.abs(adapters["layers"]["q_proj"]["b"]).max()) > 0
    loaded = store.load(str(wd))  # what generate / evaluate / convert do with a workdir
    assert loaded.lora_config == lcfg and np.array_equal(loaded.lora["layers"]["q_proj"]["b"],
                                                         adapters["layers"]["q_proj"]["b"])


def test_resume_continues_the_loss_curve(assets, straight, tmp_path):
    """N steps (checkpointed), then the same workdir run to 2N: the same losses as one straight 2N run."""
    sft.run(_config(assets, tmp_path, N))
    assert workdir.latest_step(str(tmp_path)) == N
    out = sft.run(_config(assets, tmp_path, 2 * N))
    assert [r["step"] for r in out["metrics"]] == list(range(N + 1, 2 * N + 1))
    resumed, want = _logged(tmp_path), [r for r in _logged(straight[0]) if "eval" not in r]  # training rows
    assert [r["step"] for r in resumed] == list(range(1, 2 * N + 1))  # appended, not rewritten
    np.testing.assert_allclose([r["loss"] for r in resumed], [r["loss"] for r in want], rtol=1e-6)


def test_config_overrides_and_errors():
    cfg, rest = config_flags.parse_args(
        ["--config", TINY, "--config.model.path=/m", "--config.lora.targets=q_proj,v_proj", "--config.lora.rslora",
         "true", "--config.optim.lr=1e-3", "--other"], defaults.tiny)
    assert (cfg.model.path, cfg.lora.targets, cfg.lora.rslora, cfg.optim.lr, rest) == \
        ("/m", ("q_proj", "v_proj"), True, 1e-3, ["--other"])
    with pytest.raises(UserError, match=r"unknown config key 'train.foo'"):
        config_flags.parse_args(["--config.train.foo=1"], defaults.tiny)
    with pytest.raises(UserError, match=r"unknown config key 'trian'; did you mean 'train'"):
        config_flags.parse_args(["--config.trian.steps=1"], defaults.tiny)
    with pytest.raises(UserError, match=r"--config.train.steps=many: expected a value of type int"):
        config_flags.parse_args(["--config.train.steps=many"], defaults.tiny)


def test_cli_unknown_key_is_one_line():
    proc = subprocess.run([sys.executable, "-m", "jaxfin.train", "--config", TINY, "--config.lora.rnak=8"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: unknown config key 'lora.rnak'; did you mean 'lora.rank'?"
