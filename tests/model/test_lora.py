"""LoRA adapters against PEFT: init, scaling, the tree layout (logits of a PEFT-wrapped transformers model), merge,
and optimizer labels that keep frozen leaves fixed."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import peft
import pytest
import torch

from hf_models import forward, reference_logits, state_dict_numpy, tiny_model

from jaxfin.io import hf as hf_io
from jaxfin.model import lora
from jaxfin.model.config import ModelConfig
from jaxfin.model.params import LORA_TARGETS


@pytest.fixture(scope="module")
def llama():
    hf = tiny_model("llama", seed=3)
    cfg = ModelConfig.from_hf(hf.config.to_dict())
    params = jax.tree.map(jnp.asarray, hf_io.params_from_state_dict(state_dict_numpy(hf), cfg))
    return hf, cfg, params


def _random_adapters(cfg, lcfg, seed=0):
    """Adapters with B != 0 too, so the delta is not zero and a transposed or swapped leaf shows."""
    tree = lora.init(cfg, lcfg, jax.random.key(seed))
    k = jax.random.key(seed + 1)
    return jax.tree.map(lambda x: x + 0.1 * jax.random.normal(jax.random.fold_in(k, x.size), x.shape), tree)


@pytest.mark.parametrize("rslora", [False, True])
def test_matches_peft(llama, rslora):
    """Same shapes, scaling and init bounds as PEFT; our adapters copied into PEFT's lora_A/lora_B give its logits."""
    hf, cfg, params = llama
    lcfg = lora.LoraConfig(rank=4, alpha=8.0, rslora=rslora)
    assert lcfg.scale == (8.0 / 2.0 if rslora else 8.0 / 4.0)
    pm = peft.get_peft_model(tiny_model("llama", seed=3), peft.LoraConfig(
        r=4, lora_alpha=8, use_rslora=rslora, target_modules=list(LORA_TARGETS), lora_dropout=0.0))
    ours = _random_adapters(cfg, lcfg)
    with torch.no_grad():
        for name, module in pm.named_modules():
            hf_name = name.rsplit(".", 1)[-1]
            if hf_name not in LORA_TARGETS or not hasattr(module, "lora_A"):
                continue
            i = int(name.split(".layers.")[1].split(".")[0])
            a_peft, b_peft = module.lora_A["default"].weight, module.lora_B["default"].weight
            ad = ours["layers"][hf_name]
            assert module.scaling["default"] == pytest.approx(lcfg.scale)
            assert a_peft.shape == ad["a"][i].T.shape and b_peft.shape == ad["b"][i].T.shape
            bound = 1.0 / math.sqrt(a_peft.shape[1])  # kaiming_uniform(a=sqrt(5)) on [R, in]
            assert a_peft.abs().max() <= bound and np.all(b_peft.numpy() == 0)
            a_peft.copy_(torch.tensor(np.asarray(ad["a"][i]).T))
            b_peft.copy_(torch.tensor(np.asarray(ad["b"][i]).T))
    tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 12))
    positions = np.broadcast_to(np.arange(12), tokens.shape)
    want = reference_logits(pm.eval(), tokens, positions)
    got = forward(params, jnp.asarray(tokens), cfg, lora=ours, lora_scale=lcfg.scale)
    np.testing.assert_allclose(np.asarray(got), want, atol=2e-4, rtol=2e-4)


def test_init_statistics(llama):
    _, cfg, _ = llama
    lcfg = lora.LoraConfig(rank=8, targets=("q_proj", "down_proj"))
    tree = lora.init(cfg, lcfg, jax.random.key(0))
    assert set(tree["layers"]) == {"q_proj", "down_proj"}
    assert jax.tree.map(lambda x: (x.shape, x.dtype), tree) == \
        jax.tree.map(lambda s: (s.shape, s.dtype), lora.shapes(cfg, lcfg))
    for name, ad in tree["layers"].items():
        a = np.asarray(ad["a"])
        bound = 1.0 / math.sqrt(a.shape[1])
        assert np.abs(a).max() <= bound and np.abs(a).max() > 0.95 * bound
        assert abs(a.mean()) < 0.05 * bound and a.std() == pytest.approx(bound / math.sqrt(3), rel=0.1)
        assert not np.any(np.asarray(ad["b"]))


def test_merge_equals_adapted_forward(llama):
    _, cfg, params = llama
    lcfg = lora.LoraConfig(rank=4, alpha=16.0)
    ours = _random_adapters(cfg, lcfg, seed=5)
    tokens = jnp.asarray(np.random.default_rng(1).integers(0, cfg.vocab_size, (2, 10)))
    adapted = forward(params, tokens, cfg, lora=ours, lora_scale=lcfg.scale)
    merged = lora.merge(params, ours, lcfg)
    assert jax.tree.map(lambda x: x.dtype, merged) == jax.tree.map(lambda x: x.dtype, params)
    np.testing.assert_allclose(np.asarray(forward(merged, tokens, cfg)), np.asarray(adapted), atol=1e-4, rtol=1e-4)
    assert not np.allclose(np.asarray(forward(params, tokens, cfg)), np.asarray(adapted), atol=1e-2)


def test_optimizer_labels_freeze_base(llama):
    """One tree holding base and adapters: multi_transform with the labels moves only the adapters."""
    _, cfg, params = llama
    lcfg = lora.LoraConfig(rank=2)
    tree = {"base": params, "lora": lora.init(cfg, lcfg, jax.random.key(0))}
    labels = lora.optimizer_labels(tree)
    assert set(jax.tree.leaves(labels["base"])) == {"frozen"} and set(jax.tree.leaves(labels["lora"])) == {"lora"}
    tx = optax.multi_transform({"lora": optax.adam(0.1), "frozen": optax.set_to_zero()}, labels)
    grads = jax.tree.map(jnp.ones_like, tree)
    updates, _ = tx.update(grads, tx.init(tree), tree)
    new = optax.apply_updates(tree, updates)
    assert all(jax.tree.leaves(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), new["base"], params)))
    assert not jnp.array_equal(new["lora"]["layers"]["q_proj"]["b"], tree["lora"]["layers"]["q_proj"]["b"])


def test_config_round_trip_and_errors():
    lcfg = lora.LoraConfig(rank=8, alpha=16, rslora=True, dropout=0.1, targets=("q_proj", "v_proj"))
    assert lora.LoraConfig.from_dict(lcfg.to_dict()) == lcfg
    with pytest.raises(ValueError, match="lora.rank"):
        lora.LoraConfig(rank=0)
    with pytest.raises(ValueError, match="qkv_proj"):
        lora.LoraConfig(targets=("qkv_proj",))
    with pytest.raises(ValueError, match="unknown key"):
        lora.LoraConfig.from_dict({"r": 8})
