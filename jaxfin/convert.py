"""Hugging Face <-> jaxfin params: one mapping table used in both directions.

HF stores Linear weights as [out, in]; we store [in, out] with heads split out (e.g. wq_DNH), and stack layers on
a leading axis. Each table row names our leaf, the HF tensor (with `{i}` for the layer), and the two reshapes.
"""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np

from jaxfin.model import ModelConfig, Params


def _to_ours_linear(*out_shape: int) -> Callable[[np.ndarray], np.ndarray]:
    """[out, in] -> [in, *out_shape] (e.g. q_proj [N*H, D] -> [D, N, H])."""
    return lambda w: np.ascontiguousarray(w.T).reshape(w.shape[1], *out_shape)


def _to_hf_linear(w: np.ndarray) -> np.ndarray:
    """[in, *out] -> [out, in]."""
    return np.ascontiguousarray(w.reshape(w.shape[0], -1).T)


def _to_ours_o_proj(N: int, H: int) -> Callable[[np.ndarray], np.ndarray]:
    """o_proj [D, N*H] -> [N, H, D]."""
    return lambda w: np.ascontiguousarray(w.T).reshape(N, H, w.shape[0])


def _to_hf_o_proj(w: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(w.reshape(-1, w.shape[-1]).T)


def _identity(w: np.ndarray) -> np.ndarray:
    return w


def _reshape_to(*shape: int) -> Callable[[np.ndarray], np.ndarray]:
    return lambda w: w.reshape(shape)


def _flatten(w: np.ndarray) -> np.ndarray:
    return w.reshape(-1)


def mapping(cfg: ModelConfig) -> list[tuple[tuple[str, ...], str, Callable, Callable]]:
    """Rows (our path, HF name with `{i}`, hf->ours, ours->hf). Layer rows apply per layer i."""
    N, K, H = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    att, mlp = "model.layers.{i}.self_attn", "model.layers.{i}.mlp"
    rows = [
        (("embed_VD",), "model.embed_tokens.weight", _identity, _identity),
        (("final_norm_D",), "model.norm.weight", _identity, _identity),
        (("layers", "attn_norm_D"), "model.layers.{i}.input_layernorm.weight", _identity, _identity),
        (("layers", "wq_DNH"), f"{att}.q_proj.weight", _to_ours_linear(N, H), _to_hf_linear),
        (("layers", "wk_DKH"), f"{att}.k_proj.weight", _to_ours_linear(K, H), _to_hf_linear),
        (("layers", "wv_DKH"), f"{att}.v_proj.weight", _to_ours_linear(K, H), _to_hf_linear),
        (("layers", "wo_NHD"), f"{att}.o_proj.weight", _to_ours_o_proj(N, H), _to_hf_o_proj),
        (("layers", "mlp_norm_D"), "model.layers.{i}.post_attention_layernorm.weight", _identity, _identity),
        (("layers", "w_gate_DF"), f"{mlp}.gate_proj.weight", _to_ours_linear(cfg.intermediate_size), _to_hf_linear),
        (("layers", "w_up_DF"), f"{mlp}.up_proj.weight", _to_ours_linear(cfg.intermediate_size), _to_hf_linear),
        (("layers", "w_down_FD"), f"{mlp}.down_proj.weight", _to_ours_linear(cfg.hidden_size), _to_hf_linear),
    ]
    if cfg.attention_bias:
        rows += [
            (("layers", "bq_NH"), f"{att}.q_proj.bias", _reshape_to(N, H), _flatten),
            (("layers", "bk_KH"), f"{att}.k_proj.bias", _reshape_to(K, H), _flatten),
            (("layers", "bv_KH"), f"{att}.v_proj.bias", _reshape_to(K, H), _flatten),
        ]
    if cfg.qk_norm:
        rows += [
            (("layers", "q_norm_H"), f"{att}.q_norm.weight", _identity, _identity),
            (("layers", "k_norm_H"), f"{att}.k_norm.weight", _identity, _identity),
        ]
    if not cfg.tie_word_embeddings:
        rows.append((("lm_head_VD",), "lm_head.weight", _identity, _identity))
    return rows


def hf_names(cfg: ModelConfig) -> Iterator[tuple[tuple[str, ...], int | None, str]]:
    """(our path, layer index or None, HF tensor name) for every tensor of the model, in file order."""
    for path, name, _, _ in mapping(cfg):
        if "{i}" in name:
            for i in range(cfg.num_layers):
                yield path, i, name.format(i=i)
        else:
            yield path, None, name


def params_from_state_dict(state: dict[str, np.ndarray], cfg: ModelConfig) -> Params:
    """In-memory HF state dict (numpy) -> params (numpy). The streaming loader is `load_hf`."""
    params: Params = {"layers": {}}
    for path, name, to_ours, _ in mapping(cfg):
        if "{i}" in name:
            value = np.stack([to_ours(state[name.format(i=i)]) for i in range(cfg.num_layers)])
        else:
            value = to_ours(state[name])
        node = params
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = value
    return params


def state_dict_from_params(params: Params, cfg: ModelConfig) -> Iterator[tuple[str, np.ndarray]]:
    """params -> (HF name, numpy tensor), one tensor at a time."""
    for path, name, _, to_hf in mapping(cfg):
        node = params
        for p in path:
            node = node[p]
        if "{i}" in name:
            for i in range(cfg.num_layers):
                yield name.format(i=i), to_hf(np.asarray(node[i]))
        else:
            yield name, to_hf(np.asarray(node))
