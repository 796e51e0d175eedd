"""Mixed-precision matmuls: operands in the compute dtype, f32 accumulation and result, and the backward pass in
the compute dtype too.

`jnp.einsum(..., preferred_element_type=f32)` on bf16 operands runs bf16 x bf16 -> f32 forward, but its autodiff
transpose multiplies the f32 cotangent by a bf16 operand, which XLA runs as an f32 (TF32 on GPUs, half rate)
matmul. `einsum` here casts the cotangent to the operand dtype first, so the backward matmuls are bf16 x bf16 too
(their results are cast to the bf16 operand dtype by autodiff anyway). In f32 it is exactly jnp.einsum: the
tiny configs compute the same bits whichever path is chosen.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


def einsum(eq: str, x: jax.Array, y: jax.Array, dtype: jnp.dtype) -> jax.Array:
    """einsum(eq, x, y) with both operands cast to `dtype`, f32 accumulation and an f32 result; the backward pass
    multiplies in `dtype` as well (the f32 cotangent cast to `dtype`)."""
    x, y = x.astype(dtype), y.astype(dtype)
    if jnp.dtype(dtype) == jnp.float32:
        return jnp.einsum(eq, x, y, preferred_element_type=jnp.float32)
    return _einsum_low_backward(eq, x, y)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _einsum_low_backward(eq: str, x: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.einsum(eq, x, y, preferred_element_type=jnp.float32)


def _fwd(eq: str, x: jax.Array, y: jax.Array) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    return _einsum_low_backward(eq, x, y), (x, y)


def _bwd(eq: str, res: tuple[jax.Array, jax.Array], g: jax.Array) -> tuple[jax.Array, jax.Array]:
    x, y = res
    # The einsum with an x.dtype result has the transposes we want: g (cast to x.dtype) x operand -> x.dtype
    # (GPU GEMMs accumulate in f32 internally whatever the output dtype).
    _, pullback = jax.vjp(lambda a, b: jnp.einsum(eq, a, b, preferred_element_type=a.dtype), x, y)
    return pullback(g.astype(x.dtype))


_einsum_low_backward.defvjp(_fwd, _bwd)
