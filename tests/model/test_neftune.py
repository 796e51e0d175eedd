"""NEFTune noise: zero on padding, U(-1, 1) * alpha / sqrt(L * d) per packed segment, reproducible from its key,
the transformers/TRL magnitude with length="padded", and absent from evaluation."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from transformers.integrations.neftune import neftune_post_forward_hook

from jaxfin.model import decoder, lora, neftune
from jaxfin.model import params as params_lib
from jaxfin.model.config import ModelConfig
from jaxfin.training import losses


B, T, D, ALPHA = 3, 64, 32, 5.0
# Row 0: segments of 10 and 30 tokens, then padding; row 1: one 64-token segment; row 2: 20 tokens then padding.
SEGMENTS = np.zeros((B, T), np.int32)
SEGMENTS[0, :10], SEGMENTS[0, 10:40], SEGMENTS[1, :], SEGMENTS[2, :20] = 1, 2, 1, 1
LENGTHS = {(0, 1): 10, (0, 2): 30, (1, 1): 64, (2, 1): 20}


def _noise(key, length="segment", alpha=ALPHA, dtype=jnp.float32):
    x = jnp.zeros((B, T, D), dtype)
    return np.asarray(neftune.add_noise(x, jnp.asarray(SEGMENTS), key, alpha, length), np.float32)


def test_segment_noise_zero_on_padding_bounded_and_centred():
    noise = _noise(jax.random.key(0))
    assert not np.any(noise[SEGMENTS == 0])
    unit = []
    for (row, seg), L in LENGTHS.items():
        bound = ALPHA / math.sqrt(L * D)
        part = noise[row][SEGMENTS[row] == seg]
        assert np.abs(part).max() <= bound * (1 + 1e-6) and np.abs(part).max() > 0.95 * bound
        unit.append(part.ravel() / bound)
    unit = np.concatenate(unit)  # should be U(-1, 1): mean 0, std 1/sqrt(3)
    assert abs(unit.mean()) < 0.03 and unit.std() == pytest.approx(1 / math.sqrt(3), rel=0.03)


def test_same_key_same_noise_and_alpha_zero_is_identity():
    np.testing.assert_array_equal(_noise(jax.random.key(1)), _noise(jax.random.key(1)))
    assert not np.allclose(_noise(jax.random.key(1)), _noise(jax.random.key(2)))
    x = jnp.ones((B, T, D))
    assert neftune.add_noise(x, jnp.asarray(SEGMENTS), jax.random.key(0), 0.0) is x
    assert _noise(jax.random.key(0), dtype=jnp.bfloat16).dtype == np.float32  # computed, then cast back


def test_padded_matches_transformers_hook():
    """length="padded": L = T and every position noised, with the magnitude of transformers' NEFTune hook."""
    noise = _noise(jax.random.key(0), "padded")
    emb = torch.nn.Embedding(10, D).train()
    emb.neftune_noise_alpha = ALPHA
    x = torch.zeros(B, T, D)
    ref = (neftune_post_forward_hook(emb, None, x) - x).numpy()
    bound = ALPHA / math.sqrt(T * D)
    for n in (noise, ref):
        assert np.abs(n).max() <= bound * (1 + 1e-6) and np.abs(n).max() > 0.99 * bound
    assert np.all(noise[SEGMENTS == 0] != 0)


def test_noise_only_in_training():
    """The training loss changes with NEFTune; evaluation (decoder.forward, as decoding uses it) has no noise:
    its cross-entropy equals the training loss with alpha = 0."""
    cfg = ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=1, num_heads=2,
                            num_kv_heads=1, head_dim=16)
    base = params_lib.init_params(cfg, jax.random.key(0))
    lcfg = lora.LoraConfig(rank=2)
    adapters = lora.init(cfg, lcfg, jax.random.key(1))
    tokens = jax.random.randint(jax.random.key(2), (2, 16), 0, 64)
    batch = {"tokens_BT": tokens, "targets_BT": jnp.roll(tokens, -1, axis=1), "loss_mask_BT": jnp.ones((2, 16)),
             "segment_ids_BT": jnp.ones((2, 16), jnp.int32), "positions_BT": jnp.broadcast_to(jnp.arange(16), (2, 16))}

    def loss(alpha, seed):
        hp = losses.SftConfig(lora_scale=lcfg.scale, neftune_alpha=alpha)
        return float(losses.sft_loss(adapters, base, batch, jax.random.key(seed), cfg=cfg, hp=hp)[0]) / 32

    logits = decoder.forward(base, tokens, cfg, lora=adapters, lora_scale=lcfg.scale)
    eval_loss = float(optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets_BT"]).mean())
    assert loss(0.0, 0) == pytest.approx(eval_loss, rel=1e-5)
    assert abs(loss(50.0, 0) - eval_loss) > 1e-3
    assert loss(50.0, 0) != loss(50.0, 1) and loss(50.0, 0) == loss(50.0, 0)
