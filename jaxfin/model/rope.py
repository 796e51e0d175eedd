"""Rotary position embeddings in the Hugging Face rotate-half layout, with llama3 and YaRN scaling.

Frequencies follow transformers' `modeling_rope_utils` (the reference our parity tests use):
RoFormer (arXiv 2104.09864) for the base, Llama 3.1's piecewise scaling, and YaRN (arXiv 2309.00071).
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np


def inv_frequencies(cfg) -> tuple[np.ndarray, float]:
    """Returns (inv_freq [H/2] float32, attention_scaling) for `cfg` (a ModelConfig)."""
    dim = cfg.head_dim
    base = cfg.rope_theta
    inv_freq = 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
    kind = cfg.rope_type
    if kind == "default":
        return inv_freq.astype(np.float32), 1.0
    if kind == "llama3":
        return _llama3(inv_freq, cfg).astype(np.float32), 1.0
    if kind == "yarn":
        return _yarn(dim, base, cfg)
    raise ValueError(f"unsupported rope type {kind!r}")


def _llama3(inv_freq: np.ndarray, cfg) -> np.ndarray:
    orig = cfg.rope_original_max_position
    low_wavelen = orig / cfg.rope_low_freq_factor
    high_wavelen = orig / cfg.rope_high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = np.where(wavelen > low_wavelen, inv_freq / cfg.rope_factor, inv_freq)
    smooth = (orig / wavelen - cfg.rope_low_freq_factor) / (cfg.rope_high_freq_factor - cfg.rope_low_freq_factor)
    smoothed = (1 - smooth) * scaled / cfg.rope_factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return np.where(medium, smoothed, scaled)


def _yarn(dim: int, base: float, cfg) -> tuple[np.ndarray, float]:
    factor = cfg.rope_factor
    orig = cfg.rope_original_max_position

    def mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    # transformers reads `attention_factor` only; the `attn_factor` some configs carry is ignored (see README).
    attention = cfg.rope_attention_factor
    if attention is None:
        if cfg.rope_mscale and cfg.rope_mscale_all_dim:
            attention = mscale(factor, cfg.rope_mscale) / mscale(factor, cfg.rope_mscale_all_dim)
        else:
            attention = mscale(factor)

    def correction_dim(rotations: float) -> float:
        return (dim * math.log(orig / (rotations * 2 * math.pi))) / (2 * math.log(base))

    low, high = correction_dim(cfg.rope_beta_fast), correction_dim(cfg.rope_beta_slow)
    if cfg.rope_truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = np.clip((np.arange(dim // 2, dtype=np.float32) - low) / (high - low), 0, 1)
    extrapolation = 1 - ramp
    pos_freqs = base ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    inv = (1.0 / (factor * pos_freqs)) * (1 - extrapolation) + (1.0 / pos_freqs) * extrapolation
    return inv.astype(np.float32), float(attention)


def cos_sin(positions_BT: jnp.ndarray, cfg, dtype) -> tuple[jnp.ndarray, jnp.ndarray]:
    """cos, sin of shape [B, T, H] in `dtype`, as transformers builds them (angles in f32)."""
    inv_freq, scaling = inv_frequencies(cfg)
    angles = positions_BT.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)
    angles = jnp.concatenate([angles, angles], axis=-1)
    return (jnp.cos(angles) * scaling).astype(dtype), (jnp.sin(angles) * scaling).astype(dtype)


def apply(x_BTNH: jnp.ndarray, cos_BTH: jnp.ndarray, sin_BTH: jnp.ndarray) -> jnp.ndarray:
    """x·cos + rotate_half(x)·sin, where rotate_half(x) = [-x2, x1]."""
    x1, x2 = jnp.split(x_BTNH, 2, axis=-1)
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    return x_BTNH * cos_BTH[:, :, None, :] + rotated * sin_BTH[:, :, None, :]
