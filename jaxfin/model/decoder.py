"""One decoder for the Llama-3, Qwen2 and Qwen3 families, as pure functions over a param pytree.

Matches transformers' LlamaForCausalLM / Qwen2ForCausalLM / Qwen3ForCausalLM for the same weights: RMSNorm in
f32 (Zhang & Sennrich 2019), rotary embeddings in the rotate-half layout (see rope.py), grouped-query attention
(Ainslie et al. 2023), SwiGLU MLP (Shazeer 2020), optional q/k/v bias (Qwen2) and per-head q/k RMSNorm (Qwen3).

Shape legend used in every name of the package:
  B batch, T query length, S key length, D model, N query heads, K kv heads, H head dim, F mlp,
  V vocab, L layers, R LoRA rank, A gradient-accumulation micro-batches.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.ad_checkpoint import checkpoint_name

from jaxfin.model import matmul, rope
from jaxfin.model.config import ModelConfig
from jaxfin.model.params import Params

# Projection outputs named for the remat policies that keep them (jax.ad_checkpoint.checkpoint_name in _dense).
ATTN_PROJ = ("q_proj", "k_proj", "v_proj", "o_proj")
PROJ = ATTN_PROJ + ("gate_proj", "up_proj", "down_proj")
REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "dots_all": jax.checkpoint_policies.dots_saveable,
    # The seven projection outputs (LoRA delta included) are kept, everything else (norms, RoPE, attention,
    # SiLU, the LoRA rank-R products) is recomputed: at the Llama-8B shape 43k bf16 values per token per layer.
    "proj": jax.checkpoint_policies.save_only_these_names(*PROJ),
    # Only q/k/v/o are kept (14k values per token per layer); the MLP forward is recomputed.
    "attn_proj": jax.checkpoint_policies.save_only_these_names(*ATTN_PROJ),
}
# Adapted projections that read one input: their LoRA A products run as one matmul with lora_impl=fused.
FUSED_GROUPS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


def rms_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
    """weight * (x / rms(x)), the statistic in f32, cast back before the weight (as transformers does)."""
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return weight * normed.astype(x.dtype)


def _lora_dtype(x: jax.Array, impl: str) -> jnp.dtype:
    return jnp.dtype(jnp.float32) if impl == "f32" else x.dtype


def _lora_a(x: jax.Array, adapter: Params, rng: jax.Array | None, dropout: float, impl: str) -> jax.Array:
    """PEFT's `lora_A(dropout(x))` [B, T, R] in f32, on x's features flattened. impl f32: x cast to f32; compute
    (and fused): operands in x's dtype with f32 accumulation, the backward in x's dtype too (matmul.py)."""
    x = x.reshape(*x.shape[:2], -1)
    dtype = _lora_dtype(x, impl)
    x = x.astype(dtype)
    if rng is not None and dropout > 0.0:
        keep = jax.random.bernoulli(rng, 1.0 - dropout, x.shape)
        x = jnp.where(keep, x / (1.0 - dropout), 0.0)
    return matmul.einsum("BTX,XR->BTR", x, adapter["a"], dtype)


def _lora_a_fused(x: jax.Array, names: tuple[str, ...], adapters: Params, rngs: dict, dropout: float,
                     impl: str) -> dict[str, jax.Array]:
    """With impl=fused, _lora_a of the adapted projections among `names` (which share the input x) as one
    matmul over their concatenated A matrices; {} otherwise, and when dropout is active (PEFT draws one mask per
    projection, so each needs its own product) or fewer than two projections are adapted. In f32 the sums of
    the fused matmul's backward run in another order than separate ones: equal to ~1e-7, not bitwise."""
    names = tuple(n for n in names if n in adapters)
    if impl != "fused" or len(names) < 2 or (dropout > 0.0 and rngs[names[0]] is not None):
        return {}
    x = x.reshape(*x.shape[:2], -1)
    a_XR = jnp.concatenate([adapters[n]["a"] for n in names], axis=-1)
    xa = matmul.einsum("BTX,XR->BTR", x, a_XR, x.dtype)
    ends = np.cumsum([adapters[n]["a"].shape[-1] for n in names])[:-1]
    return dict(zip(names, jnp.split(xa, ends, axis=-1)))


def _dense(x: jax.Array, eq: str, w: jax.Array, name: str, xa: dict[str, jax.Array], adapters: Params,
           rngs: dict, dropout: float, scale: float, impl: str, out_shape: tuple) -> jax.Array:
    """einsum(eq, x, w) plus, when projection `name` has an adapter, PEFT's `lora_B(lora_A(dropout(x))) * scaling`
    (lora_A's product taken from `xa` when _lora_a_fused made it); the result is named `name` for the remat
    policies. The order of the operations is today's f32 path's, so that f32 runs keep their bits."""
    y = jnp.einsum(eq, x, w.astype(x.dtype))
    if name in adapters:
        xa_BTR = xa[name] if name in xa else _lora_a(x, adapters[name], rngs[name], dropout, impl)
        delta = matmul.einsum("BTR,RO->BTO", xa_BTR, adapters[name]["b"], _lora_dtype(x, impl)) * scale
        y = y + delta.reshape(*x.shape[:2], *out_shape).astype(y.dtype)
    return checkpoint_name(y, name)


def attention_mask(
    positions_BT: jax.Array, segment_ids_BT: jax.Array | None, kv_len: int | None = None
) -> jax.Array:
    """Boolean [B, 1, T, S] mask. Without a cache: causal within each segment (packed rows never attend across
    examples). With a cache of length `kv_len`: key slot s is visible to a query at absolute position p iff s <= p."""
    if kv_len is None:
        T = positions_BT.shape[1]
        causal = jnp.tril(jnp.ones((T, T), dtype=bool))[None]
        if segment_ids_BT is not None:
            causal = causal & (segment_ids_BT[:, :, None] == segment_ids_BT[:, None, :])
        return causal[:, None]
    return (jnp.arange(kv_len)[None, None, :] <= positions_BT[:, :, None])[:, None]


class Attention(NamedTuple):
    """The masking of one decoder call: a boolean [B, 1, T, S] `mask` (or None), and whether the kernel applies the
    causal mask itself (`is_causal`: the mask then only separates the segments of packed rows)."""

    mask: jax.Array | None
    is_causal: bool


def attention_masking(positions_BT: jax.Array, segment_ids_BT: jax.Array | None, kv_len: int | None,
                      cfg: ModelConfig) -> Attention:
    """attention_impl=cudnn without a cache: is_causal=True, which cuDNN runs as its CAUSAL mask type and so skips
    the blocks above the diagonal, plus a same-segment mask for packed rows (JAX's public dot_product_attention
    has no segment ids: the mask becomes an additive bias; cuDNN's ragged layout is only in jax._src). Otherwise,
    and with a cache (incremental decoding), the one boolean mask of attention_mask. Both mean the same."""
    if cfg.attention_impl == "cudnn" and kv_len is None:
        if segment_ids_BT is None:
            return Attention(None, True)
        return Attention((segment_ids_BT[:, :, None] == segment_ids_BT[:, None, :])[:, None], True)
    return Attention(attention_mask(positions_BT, segment_ids_BT, kv_len), False)


def attend(q_BTNH: jax.Array, k_BSKH: jax.Array, v_BSKH: jax.Array, attn: Attention, cfg: ModelConfig) -> jax.Array:
    """jax.nn.dot_product_attention with cfg.attention_impl, where it can run: cuDNN flash attention needs an NVIDIA
    GPU and bf16 / f16, so attention_impl=cudnn runs XLA (same masking) on a CPU / TPU, in f32, and in decoding
    steps with a cache."""
    impl = cfg.attention_impl
    if impl == "cudnn" and (jax.default_backend() != "gpu" or q_BTNH.dtype not in (jnp.bfloat16, jnp.float16)
                            or not attn.is_causal):
        impl = "xla"
    return jax.nn.dot_product_attention(q_BTNH, k_BSKH, v_BSKH, mask=attn.mask, is_causal=attn.is_causal,
                                        scale=1.0 / math.sqrt(q_BTNH.shape[-1]), implementation=impl)


def _write_cache(cache_BSKH: jax.Array, new_BTKH: jax.Array, start_B: jax.Array) -> jax.Array:
    return jax.vmap(lambda c, n, s: jax.lax.dynamic_update_slice(c, n.astype(c.dtype), (s, 0, 0)))(
        cache_BSKH, new_BTKH, start_B
    )


def _layer(x_BTD, layer, adapters, cos_sin, mask, cache, cache_start_B, rng, cfg: ModelConfig, lora_cfg):
    N, K, H, D = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.hidden_size
    scale, dropout = lora_cfg
    rngs = dict(zip(PROJ, jax.random.split(rng, 7) if rng is not None else [None] * 7))
    ad = adapters or {}
    down = lambda x, group: _lora_a_fused(x, group, ad, rngs, dropout, cfg.lora_impl)  # noqa: E731
    dense = lambda x, eq, w, name, xa, out: _dense(x, eq, w, name, xa, ad, rngs, dropout, scale,  # noqa: E731
                                                   cfg.lora_impl, out)

    h = rms_norm(x_BTD, layer["attn_norm_D"], cfg.rms_norm_eps)
    xa = down(h, FUSED_GROUPS[0])
    q_BTNH = dense(h, "BTD,DNH->BTNH", layer["wq_DNH"], "q_proj", xa, (N, H))
    k_BTKH = dense(h, "BTD,DKH->BTKH", layer["wk_DKH"], "k_proj", xa, (K, H))
    v_BTKH = dense(h, "BTD,DKH->BTKH", layer["wv_DKH"], "v_proj", xa, (K, H))
    if cfg.attention_bias:
        q_BTNH = q_BTNH + layer["bq_NH"].astype(q_BTNH.dtype)
        k_BTKH = k_BTKH + layer["bk_KH"].astype(k_BTKH.dtype)
        v_BTKH = v_BTKH + layer["bv_KH"].astype(v_BTKH.dtype)
    if cfg.qk_norm:
        q_BTNH = rms_norm(q_BTNH, layer["q_norm_H"], cfg.rms_norm_eps)
        k_BTKH = rms_norm(k_BTKH, layer["k_norm_H"], cfg.rms_norm_eps)
    cos, sin = cos_sin
    q_BTNH, k_BTKH = rope.apply(q_BTNH, cos, sin), rope.apply(k_BTKH, cos, sin)

    if cache is not None:
        cache = {
            "k": _write_cache(cache["k"], k_BTKH, cache_start_B),
            "v": _write_cache(cache["v"], v_BTKH, cache_start_B),
        }
        k_BSKH, v_BSKH = cache["k"].astype(q_BTNH.dtype), cache["v"].astype(q_BTNH.dtype)
    else:
        k_BSKH, v_BSKH = k_BTKH, v_BTKH
    attn_BTNH = attend(q_BTNH, k_BSKH, v_BSKH, mask, cfg)
    x_BTD = x_BTD + dense(attn_BTNH, "BTNH,NHD->BTD", layer["wo_NHD"], "o_proj", {}, (D,))

    h = rms_norm(x_BTD, layer["mlp_norm_D"], cfg.rms_norm_eps)
    xa = down(h, FUSED_GROUPS[1])
    gate_BTF = dense(h, "BTD,DF->BTF", layer["w_gate_DF"], "gate_proj", xa, (cfg.intermediate_size,))
    up_BTF = dense(h, "BTD,DF->BTF", layer["w_up_DF"], "up_proj", xa, (cfg.intermediate_size,))
    act_BTF = jax.nn.silu(gate_BTF) * up_BTF
    x_BTD = x_BTD + dense(act_BTF, "BTF,FD->BTD", layer["w_down_FD"], "down_proj", {}, (D,))
    return x_BTD, cache


def embed(params: Params, tokens_BT: jax.Array, cfg: ModelConfig) -> jax.Array:
    return params["embed_VD"].astype(cfg.compute_dtype)[tokens_BT]


def decoder(
    params: Params,
    x_BTD: jax.Array,
    positions_BT: jax.Array,
    cfg: ModelConfig,
    *,
    segment_ids_BT: jax.Array | None = None,
    lora: Params | None = None,
    lora_scale: float = 1.0,
    lora_dropout: float = 0.0,
    rng: jax.Array | None = None,
    cache: Params | None = None,
) -> tuple[jax.Array, Params | None]:
    """Runs the stacked layers with `lax.scan` and the final norm on embeddings `x_BTD`.

    `lora` holds {"layers": {hf_name: {"a": [L, in, R], "b": [L, R, out]}}} for the adapted projections.
    `rng` (with lora_dropout > 0) enables LoRA dropout. `cache` ({"k", "v"}: [L, B, S, K, H]) switches to
    incremental decoding: the new keys/values are written at `positions_BT[:, 0]` onwards in each row.
    Returns (hidden [B, T, D], updated cache or None).
    """
    x_BTD = x_BTD.astype(cfg.compute_dtype)
    cos_sin = rope.cos_sin(positions_BT, cfg, cfg.compute_dtype)
    kv_len = None if cache is None else cache["k"].shape[2]
    mask = attention_masking(positions_BT, segment_ids_BT, kv_len, cfg)
    start_B = positions_BT[:, 0]
    adapters = None if lora is None else lora["layers"]
    layer_rngs = None if rng is None else jax.random.split(rng, cfg.num_layers)

    def body(x, xs):
        layer, ad, layer_cache, layer_rng = xs
        x, new_cache = _layer(x, layer, ad, cos_sin, mask, layer_cache, start_B, layer_rng, cfg,
                              (lora_scale, lora_dropout))
        return x, new_cache

    policy = REMAT_POLICIES[cfg.remat]
    if cfg.remat != "none":
        body = jax.checkpoint(body, policy=policy, prevent_cse=False)
    x_BTD, new_cache = jax.lax.scan(body, x_BTD, (params["layers"], adapters, cache, layer_rngs))
    return rms_norm(x_BTD, params["final_norm_D"], cfg.rms_norm_eps), new_cache


def layer_list(tree: Params | None, num_layers: int) -> list[Params | None]:
    """The per-layer slices of a stacked [L, ...] pytree (params["layers"], lora["layers"], a cache), as L
    separate pytrees; [None] * L for None. Sliced once outside a decode loop, they are ordinary buffers the loop
    reads in place, where a scan over the stacked arrays would copy each layer's slice out every token."""
    if tree is None:
        return [None] * num_layers
    return [jax.tree.map(lambda a, l=l: a[l], tree) for l in range(num_layers)]


def decoder_step(
    params: Params,
    layers: list[Params],
    x_BTD: jax.Array,
    positions_BT: jax.Array,
    cfg: ModelConfig,
    cache: list[Params],
    *,
    adapters: list[Params | None] | None = None,
    lora_scale: float = 1.0,
) -> tuple[jax.Array, list[Params]]:
    """`decoder` with a cache, for the decode loop: the layers unrolled over per-layer weights and per-layer
    caches (`layer_list` of params["layers"], lora["layers"] and the cache), so each layer writes only the new
    tokens' slots of its own cache in place and nothing is sliced or re-stacked per token. The same arithmetic
    as `decoder` (each layer is `_layer`). Returns (hidden [B, T, D], the updated per-layer caches)."""
    x_BTD = x_BTD.astype(cfg.compute_dtype)
    cos_sin = rope.cos_sin(positions_BT, cfg, cfg.compute_dtype)
    mask = attention_masking(positions_BT, None, cache[0]["k"].shape[1], cfg)
    start_B = positions_BT[:, 0]
    adapters = adapters or [None] * len(layers)
    new_cache = []
    for layer, ad, layer_cache in zip(layers, adapters, cache):
        x_BTD, layer_cache = _layer(x_BTD, layer, ad, cos_sin, mask, layer_cache, start_B, None, cfg,
                                    (lora_scale, 0.0))
        new_cache.append(layer_cache)
    return rms_norm(x_BTD, params["final_norm_D"], cfg.rms_norm_eps), new_cache


def output_embedding(params: Params, cfg: ModelConfig) -> jax.Array:
    """The [V, D] output projection (the input embedding when tied)."""
    return params["embed_VD"] if cfg.tie_word_embeddings else params["lm_head_VD"]


def logits(params: Params, h_BTD: jax.Array, cfg: ModelConfig) -> jax.Array:
    """f32 logits [B, T, V]; use only for short T (training uses the chunked loss instead)."""
    w_VD = output_embedding(params, cfg).astype(h_BTD.dtype)
    return jnp.einsum("BTD,VD->BTV", h_BTD, w_VD, preferred_element_type=jnp.float32)


def forward(
    params: Params,
    tokens_BT: jax.Array,
    cfg: ModelConfig,
    *,
    positions_BT: jax.Array | None = None,
    segment_ids_BT: jax.Array | None = None,
    lora: Params | None = None,
    lora_scale: float = 1.0,
) -> jax.Array:
    """Logits [B, T, V] (f32) for whole sequences: the reference path the parity tests check."""
    if positions_BT is None:
        positions_BT = jnp.broadcast_to(jnp.arange(tokens_BT.shape[1]), tokens_BT.shape)
    h_BTD, _ = decoder(params, embed(params, tokens_BT, cfg), positions_BT, cfg, segment_ids_BT=segment_ids_BT,
                       lora=lora, lora_scale=lora_scale)
    return logits(params, h_BTD, cfg)


def init_cache(cfg: ModelConfig, batch: int, length: int, dtype: Any | None = None) -> Params:
    shape = (cfg.num_layers, batch, length, cfg.num_kv_heads, cfg.head_dim)
    dtype = dtype or cfg.compute_dtype
    return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}
