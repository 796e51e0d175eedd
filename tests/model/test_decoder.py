"""Decoder parity with transformers (Llama-3 llama3 RoPE, Qwen2 bias + tied, Qwen3 q/k norm + YaRN) and behaviour."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hf_models import FAMILIES, forward, reference_logits, tiny_model

from jaxfin.io import hf as hf_io
from jaxfin.model.config import ModelConfig
from jaxfin.model.params import init_params, logical_axes, param_shapes


TOL = 1e-4  # f32 logits, max abs difference


@pytest.fixture(scope="module")
def models():
    """family -> (transformers model, ModelConfig, params) built from the in-memory state dict."""
    out = {}
    for family in FAMILIES:
        hf = tiny_model(family)
        cfg = ModelConfig.from_hf(hf.config.to_dict())
        state = {k: v.numpy() for k, v in hf.state_dict().items()}
        out[family] = (hf, cfg, hf_io.params_from_state_dict(state, cfg))
    return out


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("length,offset", [(1, 0), (7, 0), (40, 0), (7, 1000)])
def test_logits_match_transformers(models, family, length, offset):
    """Several lengths; offset 1000 puts positions 30x past original_max_position_embeddings (32) of the llama3 /
    YaRN scaling, where the scaled low frequencies matter."""
    hf, cfg, params = models[family]
    tokens = np.random.RandomState(length + offset).randint(0, cfg.vocab_size, (2, length))
    positions = np.broadcast_to(np.arange(length) + offset, tokens.shape)
    ref = reference_logits(hf, tokens, positions)
    out = np.asarray(forward(params, jnp.asarray(tokens), cfg, positions_BT=jnp.asarray(positions)))
    assert np.abs(out - ref).max() < TOL, np.abs(out - ref).max()


def test_config_reads_families(models):
    llama, qwen2, qwen3 = (models[f][1] for f in FAMILIES)
    assert (llama.rope_type, llama.rope_original_max_position, llama.attention_bias) == ("llama3", 32, False)
    assert (qwen2.attention_bias, qwen2.tie_word_embeddings, qwen2.qk_norm) == (True, True, False)
    assert (qwen3.rope_type, qwen3.qk_norm, qwen3.head_dim) == ("yarn", True, 24)


def test_causal(models):
    """Changing later tokens leaves earlier logits unchanged."""
    _, cfg, params = models["llama"]
    a = np.random.RandomState(0).randint(0, cfg.vocab_size, (2, 7))
    b = a.copy()
    b[:, 4:] = (b[:, 4:] + 1) % cfg.vocab_size
    la, lb = (np.asarray(forward(params, jnp.asarray(t), cfg)) for t in (a, b))
    np.testing.assert_array_equal(la[:, :4], lb[:, :4])
    assert np.abs(la[:, 4:] - lb[:, 4:]).max() > 1e-3


def test_packed_segments_equal_separate_rows(models):
    """Two sequences packed in one row (segment ids, positions restarting) give each sequence's own logits."""
    _, cfg, params = models["qwen3"]
    rng = np.random.RandomState(1)
    x, y = rng.randint(0, cfg.vocab_size, (1, 3)), rng.randint(0, cfg.vocab_size, (1, 4))
    packed = np.concatenate([x, y], 1)
    seg = np.array([[1, 1, 1, 2, 2, 2, 2]])
    pos = np.array([[0, 1, 2, 0, 1, 2, 3]])
    out = np.asarray(forward(params, jnp.asarray(packed), cfg, positions_BT=jnp.asarray(pos),
                             segment_ids_BT=jnp.asarray(seg)))
    # The same compiled shape, for the reference: each sequence alone, right-padded to 7.
    for part, cols in ((x, slice(0, 3)), (y, slice(3, 7))):
        alone = np.zeros((1, 7), np.int64)
        alone[:, : part.shape[1]] = part
        ref = np.asarray(forward(params, jnp.asarray(alone), cfg))[:, : part.shape[1]]
        assert np.abs(out[:, cols] - ref).max() < TOL


def test_param_tables_agree():
    """init_params, param_shapes and logical_axes describe the same tree, with one axis name per dimension."""
    cfg = ModelConfig(vocab_size=32, hidden_size=16, intermediate_size=24, num_layers=2, num_heads=4, num_kv_heads=2,
                      head_dim=8, model_type="qwen3", attention_bias=True, qk_norm=True, tie_word_embeddings=True)
    params = init_params(cfg, jax.random.key(0))
    shapes = jax.tree.map(lambda s: s.shape, param_shapes(cfg))
    axes = logical_axes(cfg)
    assert jax.tree.map(lambda p: p.shape, params) == shapes
    assert "lm_head_VD" not in params and {"bq_NH", "q_norm_H"} <= set(params["layers"])
    assert [len(a) for a in jax.tree.leaves(axes, is_leaf=_is_tuple)] == [
        len(s) for s in jax.tree.leaves(shapes, is_leaf=_is_tuple)]


def _is_tuple(x) -> bool:
    return isinstance(x, tuple)
