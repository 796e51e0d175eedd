"""The params pytree: one table of shapes and logical axes (used by init, sharding and conversion), and THE table
of the seven projections that can carry LoRA adapters (used by LoRA, PEFT files, HF conversion and FLOP counts).

Layer weights are stacked on a leading L axis; HF [out, in] Linear weights are stored [in, out] with heads split
out (e.g. wq_DNH). Shape letters: see the legend in decoder.py.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from jaxfin.model.config import ModelConfig

Params = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Projection:
    """One projection of a decoder layer: its HF module name and block (model.layers.{i}.{block}.{name}), our
    param leaf, and the logical axes of its input and output features."""

    name: str
    block: str
    leaf: str
    in_axis: str
    out_axis: str


PROJECTIONS = (
    Projection("q_proj", "self_attn", "wq_DNH", "embed", "heads"),
    Projection("k_proj", "self_attn", "wk_DKH", "embed", "kv_heads"),
    Projection("v_proj", "self_attn", "wv_DKH", "embed", "kv_heads"),
    Projection("o_proj", "self_attn", "wo_NHD", "heads", "embed"),
    Projection("gate_proj", "mlp", "w_gate_DF", "embed", "mlp"),
    Projection("up_proj", "mlp", "w_up_DF", "embed", "mlp"),
    Projection("down_proj", "mlp", "w_down_FD", "mlp", "embed"),
)
PROJECTION = {p.name: p for p in PROJECTIONS}
LORA_TARGETS = tuple(p.name for p in PROJECTIONS)


def features(cfg: ModelConfig, axis: str) -> int:
    """Number of features along a projection's logical axis (heads count N * H: the flattened projection)."""
    return {"embed": cfg.hidden_size, "heads": cfg.num_heads * cfg.head_dim,
            "kv_heads": cfg.num_kv_heads * cfg.head_dim, "mlp": cfg.intermediate_size}[axis]




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
