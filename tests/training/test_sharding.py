"""Mesh construction and errors, partition specs, and the train step giving the same losses on 1 device and on
8 simulated CPU devices (conftest sets --xla_force_host_platform_device_count=8)."""

import functools
import os

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from jaxfin import config_flags
from jaxfin.data import batches
from jaxfin.errors import UserError
from jaxfin.model import lora
from jaxfin.model import params as params_lib
from jaxfin.model.config import ModelConfig
from jaxfin.model.params import Params
from jaxfin.training import losses, session, sharding
from jaxfin.training import step as step_lib


CFG = ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
                        num_kv_heads=2, head_dim=8)
LCFG = lora.LoraConfig(rank=4, alpha=8.0, dropout=0.1)
TINY = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "configs", "tiny.py")


def test_mesh_shapes_and_errors():
    assert dict(sharding.make_mesh({"data": 1, "fsdp": -1, "tensor": 1}).shape) == {"data": 1, "fsdp": 8, "tensor": 1}
    assert dict(sharding.make_mesh({"data": 2, "fsdp": -1, "tensor": 2}).shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert sharding.make_mesh({"fsdp": -1}, jax.devices()[:1]).size == 1
    with pytest.raises(UserError, match=r"mesh.data=3"):
        sharding.make_mesh({"data": 3, "fsdp": -1, "tensor": 1})
    with pytest.raises(UserError, match=r"mesh.data: mesh .* has 4 devices, but there are 8"):
        sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 1})


def test_specs_follow_rules_and_divisibility():
    mesh = sharding.make_mesh({"data": 1, "fsdp": 2, "tensor": 4})
    specs = jax.tree.map(lambda s: s.spec, sharding.param_shardings(CFG, mesh))
    assert specs["layers"]["wq_DNH"] == P(None, "fsdp", "tensor", None)
    assert specs["layers"]["wk_DKH"] == P(None, "fsdp", None, None)  # 2 kv heads do not split 4 ways
    assert specs["layers"]["w_down_FD"] == P(None, "tensor", "fsdp")
    assert specs["embed_VD"] == P("tensor", "fsdp") and specs["final_norm_D"] == P(None)
    lspecs = jax.tree.map(lambda s: s.spec, sharding.lora_shardings(CFG, LCFG, mesh))
    assert lspecs["layers"]["q_proj"] == {"a": P(None, "fsdp", None), "b": P(None, None, "tensor")}
    assert sharding.batch_sharding(mesh).spec == P(None, ("data", "fsdp"), None)


def _batch(i: int) -> dict[str, np.ndarray]:
    """[A=2, B=8, T=16] packed rows: two segments per row, then padding."""
    rng = np.random.default_rng(i)
    seg = np.zeros((2, 8, 16), np.int32)
    seg[..., :6], seg[..., 6:13] = 1, 2
    tokens = rng.integers(0, CFG.vocab_size, seg.shape).astype(np.int32)
    pos = np.where(seg == 1, np.arange(16), np.arange(16) - 6) * (seg > 0)
    return {"tokens_BT": tokens, "targets_BT": np.roll(tokens, -1, -1), "loss_mask_BT": (seg > 0).astype(np.float32),
            "segment_ids_BT": seg, "positions_BT": pos.astype(np.int32)}


def _random_base() -> Params:
    """Random base params drawn with numpy (params_lib.init_params dispatches per leaf: seconds on a busy CPU)."""
    rng = np.random.default_rng(0)
    shapes = params_lib.param_shapes(CFG)
    return jax.tree.map(lambda s: (0.2 * rng.standard_normal(s.shape)).astype(np.float32), shapes)


def _losses(devices, mesh_shape) -> tuple[list[float], np.ndarray]:
    mesh = sharding.make_mesh(mesh_shape, devices)
    tx, schedule = step_lib.make_optimizer(config_flags.load_config(TINY).optim, total_steps=10)
    sh = sharding.train_shardings(CFG, LCFG, tx, mesh)
    base = jax.device_put(_random_base(), sh.base)
    adapters, opt_state = session.init_adapters(CFG, LCFG, tx, sh, seed=0)
    hp = losses.SftConfig(lora_scale=LCFG.scale, lora_dropout=LCFG.dropout, neftune_alpha=5.0, loss_chunk=5)
    step = step_lib.jit_train_step(functools.partial(losses.sft_loss, cfg=CFG, hp=hp), tx, schedule, 0, sh)
    curve = []
    for i in range(3):
        batch = batches.put_batch(_batch(i), sh.batch, (2, 8, 16))
        adapters, opt_state, metrics = step(adapters, opt_state, base, batch, np.int32(i))
        curve.append(float(metrics["loss"]))
    return curve, np.asarray(adapters["layers"]["q_proj"]["b"])


def test_one_device_equals_eight():
    """Same losses and adapters on 1 device, 8 on fsdp, and a 2 x 2 x 2 mesh (NEFTune and dropout on: the
    random bits do not depend on the sharding)."""
    ref_losses, ref_b = _losses(jax.devices()[:1], {"fsdp": -1})
    for shape in ({"data": 1, "fsdp": -1, "tensor": 1}, {"data": 2, "fsdp": -1, "tensor": 2}):
        losses, b = _losses(jax.devices(), shape)
        np.testing.assert_allclose(losses, ref_losses, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(b, ref_b, rtol=1e-4, atol=1e-6)
    assert np.abs(ref_b).max() > 0  # the adapters moved
