"""One decoder for the Llama-3, Qwen2 and Qwen3 families, as pure functions over a param pytree.

Matches transformers' LlamaForCausalLM / Qwen2ForCausalLM / Qwen3ForCausalLM for the same weights: RMSNorm in
f32 (Zhang & Sennrich 2019), rotary embeddings in the rotate-half layout (see rope.py), grouped-query attention
(Ainslie et al. 2023), SwiGLU MLP (Shazeer 2020), optional q/k/v bias (Qwen2) and per-head q/k RMSNorm (Qwen3).

Shape legend used in every name of the package:
  B batch, T query length, S key length, D model, N query heads, K kv heads, H head dim, F mlp,
  V vocab, L layers, R LoRA rank.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp

from jaxfin import rope

Params = dict[str, Any]

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ARCHITECTURES = {"LlamaForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2", "Qwen3ForCausalLM": "qwen3"}
REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "dots_all": jax.checkpoint_policies.dots_saveable,
}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture hyperparameters (hashable: safe as a static argument to jit)."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    model_type: str = "llama"  # llama | qwen2 | qwen3
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_type: str = "default"  # default | llama3 | yarn
    rope_factor: float = 1.0
    rope_original_max_position: int = 8192
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_attention_factor: float | None = None
    rope_beta_fast: float = 32.0
    rope_beta_slow: float = 1.0
    rope_mscale: float | None = None
    rope_mscale_all_dim: float | None = None
    rope_truncate: bool = True
    max_position_embeddings: int = 8192
    attention_bias: bool = False
    qk_norm: bool = False
    tie_word_embeddings: bool = False
    dtype: str = "float32"  # activation / compute dtype
    remat: str = "none"  # key of REMAT_POLICIES
    attention_impl: str | None = None  # None (XLA picks) | "xla" | "cudnn"

    @property
    def compute_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.dtype)

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_hf(cls, hf: Mapping[str, Any], **overrides: Any) -> "ModelConfig":
        """Reads a transformers `config.json` dict, in the transformers-4 (`rope_theta`, `rope_scaling`) or the
        transformers-5 (`rope_parameters`) format. Raises ValueError naming the key for what we cannot run."""
        archs = hf.get("architectures") or []
        arch = archs[0] if archs else None
        model_type = ARCHITECTURES.get(arch) if arch else hf.get("model_type")
        if model_type not in ("llama", "qwen2", "qwen3"):
            raise ValueError(
                f"unsupported architecture {arch or hf.get('model_type')!r} "
                f"(supported: {', '.join(sorted(ARCHITECTURES))})"
            )
        if hf.get("hidden_act", "silu") != "silu":
            raise ValueError(f"unsupported hidden_act {hf['hidden_act']!r} (only silu)")
        if hf.get("use_sliding_window"):
            raise ValueError("unsupported use_sliding_window=true (sliding-window attention is not implemented)")
        rope_params = dict(hf.get("rope_parameters") or {})
        if "rope_theta" not in rope_params:
            scaling = hf.get("rope_scaling") or {}
            rope_params = {**scaling, "rope_theta": hf.get("rope_theta", 10000.0)}
        rope_type = rope_params.get("rope_type", rope_params.get("type", "default")) or "default"
        if rope_type not in ("default", "llama3", "yarn"):
            raise ValueError(f"unsupported rope type {rope_type!r} in rope_scaling/rope_parameters")
        heads = hf["num_attention_heads"]
        head_dim = hf.get("head_dim") or hf["hidden_size"] // heads
        max_pos = hf.get("max_position_embeddings", 8192)
        fields = dict(
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            intermediate_size=hf["intermediate_size"],
            num_layers=hf["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=hf.get("num_key_value_heads") or heads,
            head_dim=head_dim,
            model_type=model_type,
            rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
            rope_theta=float(rope_params["rope_theta"]),
            rope_type=rope_type,
            rope_factor=float(rope_params.get("factor") or 1.0),
            rope_original_max_position=int(rope_params.get("original_max_position_embeddings") or max_pos),
            rope_low_freq_factor=float(rope_params.get("low_freq_factor", 1.0)),
            rope_high_freq_factor=float(rope_params.get("high_freq_factor", 4.0)),
            rope_attention_factor=rope_params.get("attention_factor"),
            rope_beta_fast=float(rope_params.get("beta_fast") or 32.0),
            rope_beta_slow=float(rope_params.get("beta_slow") or 1.0),
            rope_mscale=rope_params.get("mscale"),
            rope_mscale_all_dim=rope_params.get("mscale_all_dim"),
            rope_truncate=bool(rope_params.get("truncate", True)),
            max_position_embeddings=max_pos,
            attention_bias=bool(hf.get("attention_bias", model_type == "qwen2")),
            qk_norm=model_type == "qwen3",
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        )
        fields.update(overrides)
        return cls(**fields)


# --------------------------------------------------------------------------------------------------------------
# Parameters: one table of shapes and logical axes, used by init, sharding and conversion.


def param_specs(cfg: ModelConfig) -> Params:
    """Pytree of (shape, logical axes) in the layout of the params. Layer weights are stacked on a leading L."""
    D, F, N, K, H, V, L = (
        cfg.hidden_size, cfg.intermediate_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.vocab_size,
        cfg.num_layers,
    )
    layers = {
        "attn_norm_D": ((L, D), ("layers", None)),
        "wq_DNH": ((L, D, N, H), ("layers", "embed", "heads", None)),
        "wk_DKH": ((L, D, K, H), ("layers", "embed", "kv_heads", None)),
        "wv_DKH": ((L, D, K, H), ("layers", "embed", "kv_heads", None)),
        "wo_NHD": ((L, N, H, D), ("layers", "heads", None, "embed")),
        "mlp_norm_D": ((L, D), ("layers", None)),
        "w_gate_DF": ((L, D, F), ("layers", "embed", "mlp")),
        "w_up_DF": ((L, D, F), ("layers", "embed", "mlp")),
        "w_down_FD": ((L, F, D), ("layers", "mlp", "embed")),
    }
    if cfg.attention_bias:
        layers["bq_NH"] = ((L, N, H), ("layers", "heads", None))
        layers["bk_KH"] = ((L, K, H), ("layers", "kv_heads", None))
        layers["bv_KH"] = ((L, K, H), ("layers", "kv_heads", None))
    if cfg.qk_norm:
        layers["q_norm_H"] = ((L, H), ("layers", None))
        layers["k_norm_H"] = ((L, H), ("layers", None))
    specs: Params = {
        "embed_VD": ((V, D), ("vocab", "embed")),
        "layers": layers,
        "final_norm_D": ((D,), (None,)),
    }
    if not cfg.tie_word_embeddings:
        specs["lm_head_VD"] = ((V, D), ("vocab", "embed"))
    return specs


def _is_spec(x: Any) -> bool:
    return isinstance(x, tuple) and len(x) == 2 and isinstance(x[0], tuple)


def param_shapes(cfg: ModelConfig, dtype: Any = jnp.float32) -> Params:
    """ShapeDtypeStructs of the params, e.g. for jax.eval_shape-free sharding plans."""
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s[0], dtype), param_specs(cfg), is_leaf=_is_spec)


def logical_axes(cfg: ModelConfig) -> Params:
    return jax.tree.map(lambda s: s[1], param_specs(cfg), is_leaf=_is_spec)


def init_params(cfg: ModelConfig, key: jax.Array, dtype: Any = jnp.float32) -> Params:
    """Random params (normal, std 0.02; norms around 1) for tests and benchmarks."""
    specs = param_specs(cfg)
    flat, treedef = jax.tree.flatten_with_path(specs, is_leaf=_is_spec)
    keys = jax.random.split(key, len(flat))
    leaves = []
    for (path, (shape, _)), k in zip(flat, keys):
        name = jax.tree_util.keystr(path)
        if "norm" in name:
            leaves.append((1.0 + 0.1 * jax.random.normal(k, shape)).astype(dtype))
        else:
            leaves.append((0.02 * jax.random.normal(k, shape)).astype(dtype))
    return jax.tree.unflatten(treedef, leaves)


# --------------------------------------------------------------------------------------------------------------
# Forward.


def rms_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
    """weight * (x / rms(x)), the statistic in f32, cast back before the weight (as transformers does)."""
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return weight * normed.astype(x.dtype)


def _lora(x: jax.Array, adapter: Params | None, scale: float, rng: jax.Array | None, dropout: float) -> jax.Array | None:
    """PEFT's `lora_B(lora_A(dropout(x))) * scaling` on the flattened input features, in f32; None without one."""
    if adapter is None:
        return None
    x32 = x.astype(jnp.float32)
    if rng is not None and dropout > 0.0:
        keep = jax.random.bernoulli(rng, 1.0 - dropout, x32.shape)
        x32 = jnp.where(keep, x32 / (1.0 - dropout), 0.0)
    return (x32 @ adapter["a"]) @ adapter["b"] * scale


def _dense(x: jax.Array, eq: str, w: jax.Array, adapter: Params | None, lora_args: tuple, out_shape: tuple) -> jax.Array:
    """einsum(eq, x, w) plus the LoRA delta when this projection has an adapter."""
    y = jnp.einsum(eq, x, w.astype(x.dtype))
    in_x = x.reshape(*x.shape[:2], -1)
    delta = _lora(in_x, adapter, *lora_args)
    if delta is not None:
        y = y + delta.reshape(*x.shape[:2], *out_shape).astype(y.dtype)
    return y


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


def _write_cache(cache_BSKH: jax.Array, new_BTKH: jax.Array, start_B: jax.Array) -> jax.Array:
    return jax.vmap(lambda c, n, s: jax.lax.dynamic_update_slice(c, n.astype(c.dtype), (s, 0, 0)))(
        cache_BSKH, new_BTKH, start_B
    )


def _layer(x_BTD, layer, adapters, cos_sin, mask, cache, cache_start_B, rng, cfg: ModelConfig, lora_cfg):
    N, K, H, D = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.hidden_size
    scale, dropout = lora_cfg
    rngs = list(jax.random.split(rng, 7)) if rng is not None else [None] * 7
    ad = adapters or {}
    args = lambda i: (scale, rngs[i], dropout)  # noqa: E731

    h = rms_norm(x_BTD, layer["attn_norm_D"], cfg.rms_norm_eps)
    q_BTNH = _dense(h, "BTD,DNH->BTNH", layer["wq_DNH"], ad.get("q_proj"), args(0), (N, H))
    k_BTKH = _dense(h, "BTD,DKH->BTKH", layer["wk_DKH"], ad.get("k_proj"), args(1), (K, H))
    v_BTKH = _dense(h, "BTD,DKH->BTKH", layer["wv_DKH"], ad.get("v_proj"), args(2), (K, H))
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
    attn_BTNH = jax.nn.dot_product_attention(
        q_BTNH, k_BSKH, v_BSKH, mask=mask, scale=1.0 / math.sqrt(H), implementation=cfg.attention_impl
    )
    x_BTD = x_BTD + _dense(attn_BTNH, "BTNH,NHD->BTD", layer["wo_NHD"], ad.get("o_proj"), args(3), (D,))

    h = rms_norm(x_BTD, layer["mlp_norm_D"], cfg.rms_norm_eps)
    gate_BTF = _dense(h, "BTD,DF->BTF", layer["w_gate_DF"], ad.get("gate_proj"), args(4), (cfg.intermediate_size,))
    up_BTF = _dense(h, "BTD,DF->BTF", layer["w_up_DF"], ad.get("up_proj"), args(5), (cfg.intermediate_size,))
    act_BTF = jax.nn.silu(gate_BTF) * up_BTF
    x_BTD = x_BTD + _dense(act_BTF, "BTF,FD->BTD", layer["w_down_FD"], ad.get("down_proj"), args(6), (D,))
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
    mask = attention_mask(positions_BT, segment_ids_BT, kv_len)
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
