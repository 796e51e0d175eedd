"""Hugging Face <-> jaxfin params: one mapping table used in both directions, and the streaming import/export.

HF stores Linear weights as [out, in]; we store [in, out] with heads split out (e.g. wq_DNH), and stack layers on
a leading axis. Each table row names our leaf, the HF tensor (with `{i}` for the layer), and the two reshapes.
The reshapes use only `.T` and `.reshape`, so they run on numpy arrays and, inside jit, on device arrays.

`load_hf` reads a transformers model directory (config.json + safetensors, single or sharded with an index)
tensor by tensor into (optionally sharded) device arrays; `save_hf` writes one back, shard by shard.
"""

from __future__ import annotations

import functools
import json
import math
import os
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from jaxfin.errors import UserError
from jaxfin.io.files import atomic_dir, read_json, write_files
from jaxfin.io.safetensors import TensorInfo, Writer, read_header, read_tensor
from jaxfin.model.config import ARCHITECTURES, ModelConfig
from jaxfin.model.params import PROJECTIONS, Params, param_specs

# Tokenizer files transformers may write or read beside a model (tokenization_utils_base, tf4 and tf5).
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "chat_template.jinja", "chat_template.json", "tokenizer.model", "vocab.json", "merges.txt", "vocab.txt",
)
# Tensors some checkpoints carry that transformers skips on load (buffers saved by old versions).
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def _axis_shape(cfg: ModelConfig, axis: str) -> tuple[int, ...]:
    """Our (unflattened) shape of a projection's feature axis: heads split out as (N, H) / (K, H)."""
    return {"embed": (cfg.hidden_size,), "heads": (cfg.num_heads, cfg.head_dim),
            "kv_heads": (cfg.num_kv_heads, cfg.head_dim), "mlp": (cfg.intermediate_size,)}[axis]


def _projection_to_ours(in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> Callable[[np.ndarray], np.ndarray]:
    """HF Linear [out, in] -> ours [*in, *out] (e.g. q_proj [N*H, D] -> [D, N, H], o_proj [D, N*H] -> [N, H, D])."""
    return lambda w: w.T.reshape(*in_shape, *out_shape)


def _projection_to_hf(in_ndim: int) -> Callable[[np.ndarray], np.ndarray]:
    """Ours [*in, *out] -> HF [out, in]."""
    return lambda w: w.reshape(math.prod(w.shape[:in_ndim]), -1).T


def _identity(w: np.ndarray) -> np.ndarray:
    return w


def _reshape_to(*shape: int) -> Callable[[np.ndarray], np.ndarray]:
    return lambda w: w.reshape(shape)


def _flatten(w: np.ndarray) -> np.ndarray:
    return w.reshape(-1)


def mapping(cfg: ModelConfig) -> list[tuple[tuple[str, ...], str, Callable, Callable]]:
    """Rows (our path, HF name with `{i}`, hf->ours, ours->hf). Layer rows apply per layer i; the seven
    projections come from the projection table (params.PROJECTIONS)."""
    N, K, H = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    att = "model.layers.{i}.self_attn"
    projection = {
        p.name: (("layers", p.leaf), f"model.layers.{{i}}.{p.block}.{p.name}.weight",
                 _projection_to_ours(_axis_shape(cfg, p.in_axis), _axis_shape(cfg, p.out_axis)),
                 _projection_to_hf(len(_axis_shape(cfg, p.in_axis))))
        for p in PROJECTIONS
    }
    rows = [
        (("embed_VD",), "model.embed_tokens.weight", _identity, _identity),
        (("final_norm_D",), "model.norm.weight", _identity, _identity),
        (("layers", "attn_norm_D"), "model.layers.{i}.input_layernorm.weight", _identity, _identity),
        *(projection[n] for n in ("q_proj", "k_proj", "v_proj", "o_proj")),
        (("layers", "mlp_norm_D"), "model.layers.{i}.post_attention_layernorm.weight", _identity, _identity),
        *(projection[n] for n in ("gate_proj", "up_proj", "down_proj")),
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


def _file_order(cfg: ModelConfig) -> list[tuple[tuple[str, ...], int | None, str, Callable, Callable]]:
    """(our path, layer or None, HF name, hf->ours, ours->hf) per tensor, in the order transformers writes them:
    embeddings, layer 0 .. L-1, final norm, lm_head (so a shard holds whole layers)."""
    rows = mapping(cfg)
    head = [(p, None, n, a, b) for p, n, a, b in rows if p[0] == "embed_VD"]
    tail = [(p, None, n, a, b) for p, n, a, b in rows if "{i}" not in n and p[0] != "embed_VD"]
    layers = [(p, i, n.format(i=i), a, b) for i in range(cfg.num_layers) for p, n, a, b in rows if "{i}" in n]
    return head + layers + tail


def _get(tree: Any, path: tuple[str, ...]) -> Any:
    for p in path:
        tree = tree[p]
    return tree


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
    """params -> (HF name, contiguous numpy tensor), one tensor at a time, in file order."""
    for path, i, name, _, to_hf in _file_order(cfg):
        leaf = _get(params, path)
        yield name, np.ascontiguousarray(to_hf(np.asarray(leaf if i is None else leaf[i])))


# --------------------------------------------------------------------------------------------------------------
# Reading a transformers model directory.


def read_hf_config(hf_dir: str | os.PathLike) -> tuple[dict, ModelConfig]:
    """(config.json as a dict, ModelConfig); unsupported architectures and missing keys are UserErrors."""
    path = Path(hf_dir) / "config.json"
    if not path.is_file():
        raise UserError(f"{hf_dir}: no config.json (expected a transformers model directory)")
    hf_config = read_json(path)
    try:
        return hf_config, ModelConfig.from_hf(hf_config)
    except ValueError as e:
        raise UserError(f"{path}: {e}") from None
    except KeyError as e:
        raise UserError(f"{path}: missing key {e.args[0]!r}") from None


def read_generation_config(model_dir: str | os.PathLike) -> dict | None:
    path = Path(model_dir) / "generation_config.json"
    return read_json(path) if path.is_file() else None


def has_tokenizer(model_dir: str | os.PathLike) -> bool:
    return any((Path(model_dir) / n).is_file() for n in TOKENIZER_FILES)


def tokenizer_files(model_dir: str | os.PathLike) -> dict[str, bytes]:
    """Every tokenizer file in `model_dir` (name relative to it -> bytes), incl. additional_chat_templates/."""
    d = Path(model_dir)
    names = [n for n in TOKENIZER_FILES if (d / n).is_file()]
    names += sorted(str(p.relative_to(d)) for p in d.glob("additional_chat_templates/*.jinja"))
    return {n: (d / n).read_bytes() for n in names}


def tensor_index(hf_dir: str | os.PathLike) -> tuple[dict[str, TensorInfo], str]:
    """All tensors of the checkpoint (name -> TensorInfo) and the file that lists them (for error messages).
    Reads `model.safetensors.index.json` + its shards, or a single `model.safetensors`."""
    d = Path(hf_dir)
    index_path, single = d / "model.safetensors.index.json", d / "model.safetensors"
    if index_path.is_file():
        weight_map = read_json(index_path).get("weight_map")
        if not isinstance(weight_map, dict):
            raise UserError(f"{index_path}: no weight_map")
        infos: dict[str, TensorInfo] = {}
        for fname in sorted(set(weight_map.values())):
            if not (d / fname).is_file():
                raise UserError(f"{index_path}: lists {fname}, which is missing from {d}")
            infos.update(read_header(d / fname))
        for name, fname in weight_map.items():
            if name not in infos:
                raise UserError(f"{d / fname}: missing tensor {name} (listed in {index_path.name})")
        return infos, str(index_path)
    if single.is_file():
        return read_header(single), str(single)
    if list(d.glob("*.bin")) or list(d.glob("*.pt")) or list(d.glob("*.pth")):
        raise UserError(
            f"{d}: only pickle (.bin) weights found; jaxfin reads safetensors only. Convert once with transformers: "
            f"AutoModelForCausalLM.from_pretrained(DIR).save_pretrained(OUT, safe_serialization=True)"
        )
    raise UserError(f"{d}: no model.safetensors or model.safetensors.index.json")


def _hf_shape(to_hf: Callable, shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(jax.eval_shape(to_hf, jax.ShapeDtypeStruct(shape, jnp.float32)).shape)


def check_tensors(infos: Mapping[str, TensorInfo], cfg: ModelConfig, listing: str) -> None:
    """Raises one UserError line for the first missing, unexpected or wrongly shaped tensor."""
    specs = jax.tree.map(lambda s: s[0], param_specs(cfg), is_leaf=lambda x: isinstance(x, tuple))
    expected = {}
    for path, i, name, _, to_hf in _file_order(cfg):
        shape = _get(specs, path)
        expected[name] = _hf_shape(to_hf, shape if i is None else shape[1:])
    missing = [n for n in expected if n not in infos]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise UserError(f"{listing}: missing tensor {missing[0]}{more}")
    skipped = {"lm_head.weight"} if cfg.tie_word_embeddings else set()  # transformers ties it to the embedding
    unexpected = [n for n in infos if n not in expected and n not in skipped and not n.endswith(_IGNORED_SUFFIXES)]
    if unexpected:
        more = f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
        raise UserError(f"{infos[unexpected[0]].path}: unexpected tensor {unexpected[0]}{more} for a "
                        f"{cfg.model_type} model")
    for name, shape in expected.items():
        if infos[name].shape != shape:
            raise UserError(f"{infos[name].path}: tensor {name} has shape {list(infos[name].shape)}, "
                            f"config.json implies {list(shape)}")


def _write_layer(leaf_LX: jax.Array, raw: jax.Array, i: jax.Array, *, to_ours: Callable) -> jax.Array:
    return jax.lax.dynamic_update_index_in_dim(leaf_LX, to_ours(raw).astype(leaf_LX.dtype), i, 0)


def _convert(raw: jax.Array, *, to_ours: Callable, dtype: Any) -> jax.Array:
    return to_ours(raw).astype(dtype)


def load_hf(
    hf_dir: str | os.PathLike, *, dtype: Any = None, shardings: Params | None = None, progress: bool = False
) -> tuple[Params, ModelConfig, dict]:
    """Reads a transformers model directory into params: (params, ModelConfig, config.json dict); see
    stream_params. Tied models ignore a stray lm_head.weight, as transformers does."""
    hf_config, cfg = read_hf_config(hf_dir)
    infos, listing = tensor_index(hf_dir)
    check_tensors(infos, cfg, listing)
    params = stream_params(cfg, infos, read_tensor, dtype=dtype, shardings=shardings, progress=progress)
    return params, cfg.replace(dtype=str(params["embed_VD"].dtype)), hf_config


def stream_params(cfg: ModelConfig, tensors: Mapping[str, Any], read: Callable[[Any], np.ndarray], *,
                  dtype: Any = None, shardings: Params | None = None, progress: bool = False) -> Params:
    """Params from HF-named tensors (`tensors[name]` has .shape and .dtype; `read(tensors[name])` gives the
    HF-layout numpy array), one tensor at a time: each is read into a fresh host buffer, sent to the device(s)
    and, for stacked layer leaves, written into a preallocated [L, ...] array by a jitted, donated
    dynamic_update (the transpose to our layout happens on device), so host memory beyond the params stays about
    one to two tensors. `dtype` (e.g. "bfloat16") defaults to the tensors' own; `shardings` is a pytree of
    jax.sharding.Sharding matching the params (default: jax's default device, uncommitted)."""
    params: Params = {"layers": {}}
    with tqdm(total=len(_file_order(cfg)), unit="tensor", desc="import", disable=not progress) as bar:
        for path, name, to_ours, _ in mapping(cfg):
            sharding = None if shardings is None else _get(shardings, path)
            placed = {} if sharding is None else {"out_shardings": sharding}  # None: jax's default device
            if "{i}" in name:
                first = tensors[name.format(i=0)]
                leaf_dtype = jnp.dtype(dtype or first.dtype)
                shape = (cfg.num_layers, *jax.eval_shape(to_ours, jax.ShapeDtypeStruct(first.shape, leaf_dtype)).shape)
                value = jnp.zeros(shape, leaf_dtype, device=sharding)
                write = jax.jit(functools.partial(_write_layer, to_ours=to_ours), donate_argnums=0, **placed)
                for i in range(cfg.num_layers):
                    value = write(value, read(tensors[name.format(i=i)]), i)
                    value.block_until_ready()  # one host buffer in flight at a time
                    bar.update()
            else:
                raw = read(tensors[name])
                leaf_dtype = jnp.dtype(dtype or raw.dtype)
                value = jax.device_put(raw, sharding)  # on CPU this may alias `raw` instead of copying
                del raw
                if not (to_ours is _identity and value.dtype == leaf_dtype):
                    value = jax.jit(functools.partial(_convert, to_ours=to_ours, dtype=leaf_dtype), **placed)(value)
                value.block_until_ready()
                bar.update()
            node = params
            for p in path[:-1]:
                node = node.setdefault(p, {})
            node[path[-1]] = value
    return params


# --------------------------------------------------------------------------------------------------------------
# Writing a transformers model directory.


def _default_generation_config(hf_config: Mapping[str, Any]) -> dict:
    """What transformers' GenerationConfig.from_model_config keeps: the special token ids."""
    keys = ("bos_token_id", "eos_token_id", "pad_token_id")
    return {k: hf_config[k] for k in keys if hf_config.get(k) is not None}


def save_hf(
    out_dir: str | os.PathLike,
    params: Params,
    cfg: ModelConfig,
    *,
    hf_config: Mapping[str, Any],
    generation_config: Mapping[str, Any] | None = None,
    tokenizer_files: Mapping[str, bytes] | None = None,
    dtype: Any = None,
    max_shard_bytes: float = 5e9,
    progress: bool = False,
) -> None:
    """Writes a transformers model directory: `model.safetensors` (or `model-0000k-of-0000n.safetensors` shards of
    at most `max_shard_bytes` plus `model.safetensors.index.json`), config.json (`hf_config` with its dtype
    updated), generation_config.json and the tokenizer files. `dtype` defaults to each param's own dtype.
    Written into a temp dir and renamed at the end (see atomic_dir)."""
    entries = []  # (name, fetch, hf shape, dtype) in file order
    for path, i, name, _, to_hf in _file_order(cfg):
        leaf = _get(params, path)
        out_dtype = np.dtype(jnp.dtype(dtype or leaf.dtype))
        shape = _hf_shape(to_hf, leaf.shape if i is None else leaf.shape[1:])
        entries.append((name, functools.partial(_fetch, leaf, i, to_hf, out_dtype), shape, out_dtype))
    shards: list[list] = [[]]
    size = 0
    for e in entries:
        nbytes = int(np.prod(e[2])) * e[3].itemsize
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(e)
        size += nbytes
    config = dict(hf_config)
    dtype_name = str(entries[0][3])
    config.update({k: dtype_name for k in ("torch_dtype", "dtype") if k in config} or
                  {"dtype" if "rope_parameters" in config else "torch_dtype": dtype_name})
    config.setdefault("architectures", [{v: k for k, v in ARCHITECTURES.items()}[cfg.model_type]])
    generation_config = dict(generation_config or _default_generation_config(hf_config))
    with atomic_dir(out_dir) as tmp, tqdm(total=len(entries), unit="tensor", desc="export",
                                          disable=not progress) as bar:
        weight_map = {}
        for k, shard in enumerate(shards):
            fname = "model.safetensors" if len(shards) == 1 else f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
            with Writer(tmp / fname, [(n, s, d) for n, _, s, d in shard]) as w:
                for name, fetch, _, _ in shard:
                    w.write(name, fetch())
                    weight_map[name] = fname
                    bar.update()
        if len(shards) > 1:
            total = sum(int(np.prod(s)) * d.itemsize for _, _, s, d in entries)
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        (tmp / "generation_config.json").write_text(json.dumps(generation_config, indent=2) + "\n")
        write_files(tmp, tokenizer_files or {})


def _fetch(leaf: Any, i: int | None, to_hf: Callable, dtype: np.dtype) -> np.ndarray:
    w = np.ascontiguousarray(to_hf(np.asarray(leaf if i is None else leaf[i])))
    return w if w.dtype == dtype else w.astype(dtype)
