"""NEFTune (Jain et al. 2023, arXiv 2310.05914): uniform noise on the input embeddings, in training only."""

from __future__ import annotations

import jax
import jax.numpy as jnp

LENGTHS = ("segment", "padded")


def add_noise(x_BTD: jax.Array, segment_ids_BT: jax.Array, key: jax.Array, alpha: float,
              length: str = "segment") -> jax.Array:
    """x + U(-1, 1) * alpha / sqrt(L * D).

    length="segment": L is the number of real tokens of the example (of its segment in a packed row) and padding
    (segment 0) gets no noise, as in the paper's code. length="padded": L is the padded row length T and every
    position is noised, as transformers' `neftune_post_forward_hook` (used by TRL) does. alpha=0 is the identity.
    """
    if alpha == 0.0:
        return x_BTD
    B, T, D = x_BTD.shape
    u_BTD = jax.random.uniform(key, (B, T, D), jnp.float32, -1.0, 1.0)
    if length == "padded":
        return x_BTD + (u_BTD * (alpha / (T * D) ** 0.5)).astype(x_BTD.dtype)
    if length != "segment":
        raise ValueError(f"neftune.length must be one of {LENGTHS}, got {length!r}")
    # Tokens per segment id in each row ([B, T + 1]: ids are at most T), then each token's segment length.
    counts_BS = jax.vmap(lambda s: jnp.bincount(s, length=T + 1))(segment_ids_BT)
    length_BT = jnp.take_along_axis(counts_BS, segment_ids_BT, axis=1).astype(jnp.float32)
    scale_BT = jnp.where(segment_ids_BT > 0, alpha * jax.lax.rsqrt(jnp.maximum(length_BT, 1.0) * D), 0.0)
    return x_BTD + (u_BTD * scale_BT[:, :, None]).astype(x_BTD.dtype)
