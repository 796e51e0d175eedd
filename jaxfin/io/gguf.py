"""GGUF (llama.cpp's one-file model format) in and out for Llama / Qwen2 / Qwen3, in Hugging Face names and layouts.

`open_gguf(path)` parses the metadata and the tensor table only and returns a `GgufModel`: a transformers
config.json dict rebuilt from the metadata, a generation config, the tokenizer as transformers files, and one lazy
`GgufTensor` per HF tensor whose `read()` reads and dequantises that one tensor, in row chunks, so a streaming
loader holds about one tensor on the host. The tensors carry HF names and HF layouts ([out, in] Linear weights),
so they plug into `hf.mapping` / `hf.stream_params` like a safetensors checkpoint. `gguf_write.write_gguf` goes
the other way, from jaxfin params.

Sources: the file layout is https://github.com/ggml-org/ggml/blob/master/docs/gguf.md; tensor names, the per-head
Q/K row interleave of `llama`, the llama3 `rope_freqs` factors, the tensor types and the tokenizer keys follow
llama.cpp's convert_hf_to_gguf.py; the tokenizer is converted by transformers' own GGUF code
(transformers.integrations.gguf.gguf_tokenizer_mapping), so it encodes as `AutoTokenizer(..., gguf_file=...)`,
except where that conversion is wrong: added tokens outside the byte-level alphabet (DeepSeek-R1's
<｜begin▁of▁sentence｜>) stay at their ids, and no tokens are appended beyond the file's vocabulary.
"""

from __future__ import annotations

import dataclasses
import json
import math
import mmap
import os
import re
import struct
import tempfile
from pathlib import Path
from typing import Any, Mapping

import gguf
import ml_dtypes
import numpy as np


ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}
_Q = gguf.GGMLQuantizationType
READABLE_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q4_K", "Q5_K", "Q6_K")
WRITE_DTYPES = ("f32", "f16", "bf16", "q8_0")
_PLAIN = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype(ml_dtypes.bfloat16)}
_CHUNK_BYTES = 2 << 20  # raw bytes read and dequantised per step of GgufTensor.read / quantised per write step
_ROPE_FREQS = "rope_freqs.weight"
_ROPE_RTOL = 1e-6  # llama.cpp computes the factors in f32; a consistent llama3 parameter set matches to ~1e-7

# GGUF name -> HF name ({i}: the layer). One table for both directions.
_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
    "blk.{i}.attn_norm.weight": "model.layers.{i}.input_layernorm.weight",
    "blk.{i}.attn_q.weight": "model.layers.{i}.self_attn.q_proj.weight",
    "blk.{i}.attn_k.weight": "model.layers.{i}.self_attn.k_proj.weight",
    "blk.{i}.attn_v.weight": "model.layers.{i}.self_attn.v_proj.weight",
    "blk.{i}.attn_q.bias": "model.layers.{i}.self_attn.q_proj.bias",
    "blk.{i}.attn_k.bias": "model.layers.{i}.self_attn.k_proj.bias",
    "blk.{i}.attn_v.bias": "model.layers.{i}.self_attn.v_proj.bias",
    "blk.{i}.attn_output.weight": "model.layers.{i}.self_attn.o_proj.weight",
    "blk.{i}.attn_q_norm.weight": "model.layers.{i}.self_attn.q_norm.weight",
    "blk.{i}.attn_k_norm.weight": "model.layers.{i}.self_attn.k_norm.weight",
    "blk.{i}.ffn_norm.weight": "model.layers.{i}.post_attention_layernorm.weight",
    "blk.{i}.ffn_gate.weight": "model.layers.{i}.mlp.gate_proj.weight",
    "blk.{i}.ffn_up.weight": "model.layers.{i}.mlp.up_proj.weight",
    "blk.{i}.ffn_down.weight": "model.layers.{i}.mlp.down_proj.weight",
}
_HF_NAMES = {hf: g for g, hf in _NAMES.items()}
_LAYER = re.compile(r"^(blk|model\.layers)\.(\d+)\.(.*)$")

# Pre-tokenizer regexes of the byte-level BPE tokenizers jaxfin's models use, by llama.cpp's `tokenizer.ggml.pre`
# name (llama-vocab.cpp selects its splitting regex by this name). Values are tokenizer.json `Split` patterns.
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_SPLIT_PRE = {_LLAMA3_SPLIT: "llama-bpe", _QWEN2_SPLIT: "qwen2"}


@dataclasses.dataclass(frozen=True)
class GgufTensor:
    """One tensor of a GGUF file, under its HF name and in its HF layout; `read()` loads it on demand."""

    name: str  # HF name, e.g. model.layers.0.self_attn.q_proj.weight
    gguf_name: str  # e.g. blk.0.attn_q.weight
    shape: tuple[int, ...]  # HF layout (row-major), e.g. q_proj [out, in]
    type_name: str  # GGUF type, e.g. Q4_K
    path: str
    offset: int  # absolute byte offset of the data in the file
    nbytes: int
    heads: int | None = None  # llama attn_q / attn_k: undo llama.cpp's row interleave within each of `heads` heads

    @property
    def dtype(self) -> np.dtype:
        """What `read()` returns: float16 / bfloat16 when stored so, float32 otherwise."""
        return _PLAIN.get(self.type_name, np.dtype(np.float32)).newbyteorder("=")

    def read(self) -> np.ndarray:
        """Reads and dequantises this tensor alone (in chunks of rows, so intermediates stay small)."""
        qtype = _Q[self.type_name]
        block, type_size = gguf.GGML_QUANT_SIZES[qtype]
        row_len = self.shape[-1]
        rows = math.prod(self.shape[:-1])
        row_bytes = row_len // block * type_size
        # A 1-D q/k bias is permuted along its only axis: read it as [n, 1] so the row scatter below applies.
        if self.heads is not None and len(self.shape) == 1:
            rows, row_len, row_bytes = row_len, 1, row_bytes // row_len
        out = np.empty((rows, row_len), self.dtype)
        dest = None if self.heads is None else _interleaved_rows(rows, self.heads)
        step = max(1, _CHUNK_BYTES // max(row_bytes, 1))
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            for a in range(0, rows, step):
                b = min(rows, a + step)
                raw = np.empty((b - a, row_bytes), np.uint8)
                if f.readinto(raw) != raw.nbytes:
                    raise ValueError(f"{self.path}: tensor {self.gguf_name} is truncated (file ends inside its data)")
                if self.type_name in _PLAIN:
                    values = raw.view(_PLAIN[self.type_name]).reshape(b - a, row_len)
                else:
                    values = gguf.quants.dequantize(raw, qtype)
                if dest is None:
                    out[a:b] = values
                else:
                    out[dest[a:b]] = values
        return out.reshape(self.shape)


@dataclasses.dataclass
class GgufModel:
    """What `open_gguf` returns. `tensors` is keyed by HF name, in file order."""

    path: str
    architecture: str  # llama | qwen2 | qwen3
    hf_config: dict  # transformers config.json
    generation_config: dict  # generation_config.json
    tokenizer_files: dict[str, bytes]  # tokenizer.json, tokenizer_config.json
    tensors: dict[str, GgufTensor]
    metadata: dict[str, Any]  # the GGUF key/values (token lists included)


# --------------------------------------------------------------------------------------------------------------
# Reading.

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


def _read_header(path: str) -> tuple[dict[str, Any], list[tuple[str, tuple[int, ...], int, int]], int]:
    """(metadata, [(name, ggml dims (fastest first), ggml type, offset in the data section)], data start).
    Parses the file header with struct from an mmap, touching only the header pages."""
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        try:
            if buf[:4] != b"GGUF":
                raise ValueError(f"{path}: not a GGUF file (no GGUF magic)")
            version, n_tensors, n_kv = struct.unpack_from("<IQQ", buf, 4)
            if version not in (2, 3):
                raise ValueError(f"{path}: GGUF version {version} is not supported (2 or 3)")
            pos = 24

            def string(pos: int) -> tuple[str, int]:
                (n,) = struct.unpack_from("<Q", buf, pos)
                return buf[pos + 8: pos + 8 + n].decode("utf-8", errors="replace"), pos + 8 + n

            def value(pos: int, vtype: int) -> tuple[Any, int]:
                if vtype in _SCALARS:
                    fmt = _SCALARS[vtype]
                    return struct.unpack_from(fmt, buf, pos)[0], pos + struct.calcsize(fmt)
                if vtype == 8:
                    return string(pos)
                if vtype == 9:
                    etype, count = struct.unpack_from("<IQ", buf, pos)
                    pos += 12
                    if etype in _SCALARS:
                        dt = np.dtype(_SCALARS[etype].replace("?", "b1"))
                        return np.frombuffer(buf, dt, count, pos).tolist(), pos + count * dt.itemsize
                    items = []
                    for _ in range(count):
                        item, pos = value(pos, etype)
                        items.append(item)
                    return items, pos
                raise ValueError(f"{path}: unknown GGUF metadata value type {vtype}")

            metadata: dict[str, Any] = {}
            for _ in range(n_kv):
                key, pos = string(pos)
                (vtype,) = struct.unpack_from("<I", buf, pos)
                metadata[key], pos = value(pos + 4, vtype)
            infos = []
            for _ in range(n_tensors):
                name, pos = string(pos)
                (n_dims,) = struct.unpack_from("<I", buf, pos)
                dims = struct.unpack_from(f"<{n_dims}Q", buf, pos + 4)
                ggml_type, offset = struct.unpack_from("<IQ", buf, pos + 4 + 8 * n_dims)
                pos += 4 + 8 * n_dims + 12
                infos.append((name, tuple(int(d) for d in dims), int(ggml_type), int(offset)))
        except (struct.error, IndexError, OverflowError) as e:
            raise ValueError(f"{path}: truncated or corrupt GGUF header ({e})") from None
        alignment = int(metadata.get("general.alignment", gguf.GGUF_DEFAULT_ALIGNMENT))
        return metadata, infos, -(-pos // alignment) * alignment


def _f32(x: float) -> float:
    """The shortest decimal that is the same float32 (1e-05, not 9.999999747378752e-06): metadata floats are f32."""
    return float(np.format_float_positional(np.float32(x), unique=True, trim="-"))


def _interleaved_rows(rows: int, heads: int) -> np.ndarray:
    """For GGUF row g of a llama attn_q / attn_k, the HF row it holds. llama.cpp stores each head's rows as
    interleaved (x0, x_half, x1, x_half+1, ...) pairs for its rotate-pairs RoPE: gguf = hf[idx]."""
    return np.arange(rows).reshape(heads, 2, rows // heads // 2).swapaxes(1, 2).reshape(-1)


def _hf_name(gguf_name: str) -> str | None:
    m = _LAYER.match(gguf_name)
    return _NAMES.get(gguf_name) if m is None else (
        None if f"blk.{{i}}.{m[3]}" not in _NAMES else _NAMES[f"blk.{{i}}.{m[3]}"].format(i=m[2]))


def _gguf_name(hf_name: str) -> str:
    m = _LAYER.match(hf_name)
    return _HF_NAMES[hf_name] if m is None else _HF_NAMES[f"model.layers.{{i}}.{m[3]}"].format(i=m[2])


def expected_shapes(hf_config: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """HF name -> HF shape of every tensor a Llama / Qwen2 / Qwen3 `hf_config` implies."""
    V, D, F, L = (hf_config[k] for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers"))
    N = hf_config["num_attention_heads"]
    K = hf_config.get("num_key_value_heads") or N
    H = hf_config.get("head_dim") or D // N
    qwen2 = hf_config.get("model_type") == "qwen2" or "Qwen2ForCausalLM" in (hf_config.get("architectures") or ())
    out: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (V, D)}
    for i in range(L):
        p = f"model.layers.{i}."
        out.update({p + "input_layernorm.weight": (D,), p + "self_attn.q_proj.weight": (N * H, D),
                    p + "self_attn.k_proj.weight": (K * H, D), p + "self_attn.v_proj.weight": (K * H, D)})
        if hf_config.get("attention_bias", qwen2):
            out.update({p + "self_attn.q_proj.bias": (N * H,), p + "self_attn.k_proj.bias": (K * H,),
                        p + "self_attn.v_proj.bias": (K * H,)})
        out[p + "self_attn.o_proj.weight"] = (D, N * H)
        if hf_config.get("model_type") == "qwen3":
            out.update({p + "self_attn.q_norm.weight": (H,), p + "self_attn.k_norm.weight": (H,)})
        out.update({p + "post_attention_layernorm.weight": (D,), p + "mlp.gate_proj.weight": (F, D),
                    p + "mlp.up_proj.weight": (F, D), p + "mlp.down_proj.weight": (D, F)})
    out["model.norm.weight"] = (D,)
    if not hf_config.get("tie_word_embeddings", False):
        out["lm_head.weight"] = (V, D)
    return out


def llama3_rope_factors(theta: float, head_dim: int, factor: float, low_freq_factor: float,
                        high_freq_factor: float, original_max_position: int) -> np.ndarray:
    """llama.cpp's `rope_freqs` for llama3 scaling [head_dim/2] (float64): what each base frequency is divided by.
    Same piecewise rule as transformers' `_compute_llama3_parameters` (convert_hf_to_gguf.py, LlamaModel)."""
    inv_freq = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    wavelen = 2 * math.pi / inv_freq
    smooth = (original_max_position / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    medium = 1.0 / ((1 - smooth) / factor + smooth)
    high = wavelen < original_max_position / high_freq_factor
    low = wavelen > original_max_position / low_freq_factor
    return np.where(high, 1.0, np.where(low, factor, medium))


def _llama3_scaling(factors: np.ndarray, theta: float, head_dim: int, where: str) -> dict | None:
    """Recovers llama3 `rope_scaling` from llama.cpp's factor vector, then checks that the formula reproduces it.

    1/factor_i = 1/f + (1 - 1/f) * clip(a * x_i + b, 0, 1) with x_i = 1/wavelength_i, f = factor, a = orig/(hi-lo),
    b = -lo/(hi-lo): the vector depends on (f, a, b) only, so lo is fixed to 1 (Llama 3.x's value) and hi, orig
    follow from a line fit through the ramp points. With one ramp point hi is also fixed (to 4, Llama 3.x's);
    with none, orig is put at the last scaled frequency. Returns None for an all-ones vector (no scaling)."""
    f = np.asarray(factors, np.float64)
    if len(f) != head_dim // 2:
        raise ValueError(f"{where}: has {len(f)} values, head_dim {head_dim} needs {head_dim // 2}")
    factor = float(f.max())
    if not np.all(np.isfinite(f)) or f.min() < 1 - _ROPE_RTOL:
        raise ValueError(f"{where}: values must be finite and >= 1 for llama3 RoPE scaling, got min {f.min()}")
    if factor <= 1 + _ROPE_RTOL:
        return None
    x = 1.0 / (2 * math.pi / (1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)))
    s = (1 / f - 1 / factor) / (1 - 1 / factor)  # the clipped ramp, in [0, 1]
    ramp = (s > 1e-5) & (s < 1 - 1e-5)
    lo, hi = 1.0, 4.0
    if ramp.sum() >= 2:
        a, b = np.polyfit(x[ramp], s[ramp], 1)
        if b >= 0:
            raise ValueError(f"{where}: no llama3 RoPE scaling reproduces these factors (they fall with the "
                             f"wavelength where llama3 has them rise)")
        hi, orig = 1 - 1 / b, -a / b
    elif ramp.sum() == 1:
        orig = ((hi - lo) * s[ramp][0] + lo) / x[ramp][0]
    else:
        scaled = s <= 0.5
        orig = lo / x[scaled].max() if scaled.any() else hi / x.min()
    orig = int(round(orig))
    hi = round(float(hi), 6)
    factor = _f32(factor)
    rebuilt = llama3_rope_factors(theta, head_dim, factor, lo, hi, orig)
    err = float(np.max(np.abs(rebuilt - f) / f))
    if err > _ROPE_RTOL:
        raise ValueError(f"{where}: no llama3 RoPE scaling reproduces these factors (best fit factor={factor}, "
                         f"low_freq_factor={lo}, high_freq_factor={hi}, original_max_position_embeddings={orig} "
                         f"is off by {err:.2e} relative)")
    return {"rope_type": "llama3", "factor": factor, "low_freq_factor": lo, "high_freq_factor": hi,
            "original_max_position_embeddings": orig}


def _config(meta: dict, arch: str, tables: dict[str, tuple], path: str, rope_freqs: np.ndarray | None) -> dict:
    """transformers config.json from the metadata (llama.cpp's keys, convert_hf_to_gguf.py's inverse)."""

    def key(name: str, default: Any = KeyError) -> Any:
        full = f"{arch}.{name}"
        if full not in meta:
            if default is KeyError:
                raise ValueError(f"{path}: missing metadata key {full}")
            return default
        value = meta[full]
        if isinstance(value, list):  # per-layer values (some architectures): jaxfin needs them all equal
            if len(set(value)) != 1:
                raise ValueError(f"{path}: {full} differs between layers ({value}); not supported")
            value = value[0]
        return value

    N = int(key("attention.head_count"))
    D = int(key("embedding_length"))
    H = int(key("attention.key_length", key("rope.dimension_count", D // N) if arch == "llama" else D // N))
    if int(key("attention.value_length", H)) != H:
        raise ValueError(f"{path}: {arch}.attention.value_length != key_length is not supported")
    if int(key("rope.dimension_count", H)) != H:
        raise ValueError(f"{path}: {arch}.rope.dimension_count {key('rope.dimension_count')} != head_dim {H} "
                         f"(partial rotary embeddings are not supported)")
    tokens = meta.get("tokenizer.ggml.tokens")
    embed = tables.get("token_embd.weight")
    vocab = int(key("vocab_size", len(tokens) if tokens else embed[1][0] if embed else 0))
    hf: dict[str, Any] = {
        "architectures": [ARCHITECTURES[arch]], "model_type": arch, "vocab_size": vocab, "hidden_size": D,
        "intermediate_size": int(key("feed_forward_length")), "num_hidden_layers": int(key("block_count")),
        "num_attention_heads": N, "num_key_value_heads": int(key("attention.head_count_kv", N)), "head_dim": H,
        "hidden_act": "silu", "max_position_embeddings": int(key("context_length", 8192)),
        "rms_norm_eps": _f32(key("attention.layer_norm_rms_epsilon", 1e-6)),
        "rope_theta": _f32(key("rope.freq_base", 10000.0)), "rope_scaling": None,
        "attention_bias": "blk.0.attn_q.bias" in tables,
        "tie_word_embeddings": "output.weight" not in tables,
    }
    if arch == "llama":
        hf["mlp_bias"] = False
    else:
        hf["use_sliding_window"] = False
    for hf_key, gguf_key in (("bos_token_id", "bos_token_id"), ("eos_token_id", "eos_token_id"),
                             ("pad_token_id", "padding_token_id")):
        if f"tokenizer.ggml.{gguf_key}" in meta:
            hf[hf_key] = int(meta[f"tokenizer.ggml.{gguf_key}"])
    scaling = key("rope.scaling.type", "none")
    if scaling == "yarn":
        unsupported = [k for k in meta if k.startswith(f"{arch}.rope.scaling.")
                       and k.rsplit(".", 1)[1] not in ("type", "factor", "original_context_length",
                                                       "yarn_beta_fast", "yarn_beta_slow", "finetuned")]
        if unsupported:
            raise ValueError(f"{path}: yarn RoPE metadata {unsupported[0]} is not supported")
        hf["rope_scaling"] = {"rope_type": "yarn", "factor": _f32(key("rope.scaling.factor")),
                              "original_max_position_embeddings": int(key("rope.scaling.original_context_length"))}
        for name in ("beta_fast", "beta_slow"):
            if f"{arch}.rope.scaling.yarn_{name}" in meta:
                hf["rope_scaling"][name] = _f32(key(f"rope.scaling.yarn_{name}"))
    elif scaling != "none":
        raise ValueError(f"{path}: RoPE scaling {scaling!r} ({arch}.rope.scaling.type) is not supported "
                         f"(none, yarn, or llama3 through rope_freqs)")
    if rope_freqs is not None:
        if hf["rope_scaling"] is not None:
            raise ValueError(f"{path}: has both {_ROPE_FREQS} and {arch}.rope.scaling.type={scaling}")
        hf["rope_scaling"] = _llama3_scaling(rope_freqs, hf["rope_theta"], H, f"{path}: {_ROPE_FREQS}")
    return hf


def _generation_config(meta: dict) -> dict:
    """bos / eos / pad ids. eos is a list when the file also names an end-of-turn / end-of-message token
    (tokenizer.ggml.eot_token_id / eom_token_id), as Llama-3.1's generation_config.json lists <|eot_id|> and
    <|eom_id|>; llama.cpp stops on those too (plus tokens it recognises by their text, which we do not guess)."""
    out = {}
    if "tokenizer.ggml.bos_token_id" in meta:
        out["bos_token_id"] = int(meta["tokenizer.ggml.bos_token_id"])
    eos = [int(meta[f"tokenizer.ggml.{k}_token_id"]) for k in ("eos", "eot", "eom")
           if f"tokenizer.ggml.{k}_token_id" in meta]
    eos = list(dict.fromkeys(eos))
    if eos:
        out["eos_token_id"] = eos[0] if len(eos) == 1 else eos
    if "tokenizer.ggml.padding_token_id" in meta:
        out["pad_token_id"] = int(meta["tokenizer.ggml.padding_token_id"])
    return out


def _tokenizer_class(arch: str) -> type:
    """The class AutoTokenizer picks for a GGUF of `arch` (tokenization_auto: by config model_type)."""
    from transformers import TokenizersBackend
    from transformers.models.auto.tokenization_auto import TOKENIZER_MAPPING_NAMES, tokenizer_class_from_name

    name = TOKENIZER_MAPPING_NAMES.get(arch)
    return (tokenizer_class_from_name(name) if name else None) or TokenizersBackend


def _keep_added_tokens_whole(backend: Any, tokenizer: dict) -> tuple[Any, list, list]:
    """Undoes one step of transformers' byte-level conversion (gguf_tokenizer_mapping.byte_level_tokenizer): llama.cpp
    stores added tokens (CONTROL / USER_DEFINED) as their text, so one with characters outside the byte-level
    alphabet, e.g. DeepSeek-R1's <｜begin▁of▁sentence｜>, is not a byte-spelled vocabulary entry. transformers
    re-spells it and skips it as a special token, and the bos/eos token text then gets appended as a new id beyond
    the model's vocabulary. Here the vocabulary entry at that id gets its text back; returns (backend, the CONTROL
    and the USER_DEFINED tokens so restored, as AddedTokens to register)."""
    from tokenizers import AddedToken, Tokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    if tokenizer.get("tokenizer_type") != "gpt2":
        return backend, [], []
    spelling = bytes_to_unicode()
    alphabet = set(spelling.values())
    types = tokenizer.get("token_type") or ()
    restore = [(i, t, ty) for i, (t, ty) in enumerate(zip(tokenizer["tokens"], types))
               if ty in (int(gguf.TokenType.CONTROL), int(gguf.TokenType.USER_DEFINED)) and not set(t) <= alphabet]
    if not restore:
        return backend, [], []
    data = json.loads(backend.to_str())
    vocab = data["model"]["vocab"]
    for i, text, _ in restore:
        spelled = "".join(spelling[b] for b in text.encode("utf-8"))
        if vocab.get(spelled) == i:
            del vocab[spelled]
        vocab[text] = i
    control = [AddedToken(t, special=True, normalized=False) for _, t, ty in restore if ty == gguf.TokenType.CONTROL]
    user = [AddedToken(t, special=False, normalized=False) for _, t, ty in restore if ty != gguf.TokenType.CONTROL]
    return Tokenizer.from_str(json.dumps(data)), control, user


def _tokenizer_files(meta: dict, arch: str, path: str) -> dict[str, bytes]:
    """tokenizer.json + tokenizer_config.json, built as `AutoTokenizer.from_pretrained(dir, gguf_file=...)` builds
    the tokenizer (transformers' get_gguf_tokenizer + convert_gguf_tokenizer, then the model type's class), except
    for added tokens outside the byte-level alphabet (see _keep_added_tokens_whole). Saved with tokenizer_class
    TokenizersBackend, so a directory of these files loads this exact tokenizer (a Qwen2Tokenizer would rebuild
    its own pre-tokenizer and NFC normaliser from scratch)."""
    try:
        from transformers.integrations.gguf.gguf_tokenizer_mapping import (
            GGUF_TOKENIZER_MAPPING, convert_gguf_tokenizer)
    except ImportError as e:  # the module layout of transformers 5.2x; 4.x kept this in integrations/ggml.py
        raise ImportError(f"reading a GGUF tokenizer needs transformers >= 5.24 ({e})") from None

    if "tokenizer.ggml.tokens" not in meta:
        raise ValueError(f"{path}: no tokenizer in the file (tokenizer.ggml.tokens is missing)")
    groups = {group: {name: meta[f"tokenizer.{k}"] for k, name in renames.items() if f"tokenizer.{k}" in meta}
              for group, renames in GGUF_TOKENIZER_MAPPING.items()}
    tokenizer, config = groups["tokenizer"], groups["tokenizer_config"]
    if tokenizer.get("tokenizer_type") == "llama":
        config.setdefault("add_bos_token", True)  # sentencepiece files without the flag: llama.cpp adds BOS
    tokens = tokenizer["tokens"]
    for name, k in (("bos_token", "bos"), ("eos_token", "eos"), ("unk_token", "unknown"), ("pad_token", "padding")):
        token_id = meta.get(f"tokenizer.ggml.{k}_token_id")
        if token_id is not None and not 0 <= token_id < len(tokens):
            raise ValueError(f"{path}: tokenizer.ggml.{k}_token_id {token_id} is not a token id (the file has "
                             f"{len(tokens)} tokens)")
        config[name] = tokens[token_id] if token_id is not None else None
    try:
        backend, extra = convert_gguf_tokenizer(arch, tokenizer)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    backend, control, user = _keep_added_tokens_whole(backend, tokenizer)
    tok = _tokenizer_class(arch)(tokenizer_object=backend, **config, **extra)
    if control:
        tok.add_special_tokens({"additional_special_tokens": control}, replace_extra_special_tokens=False)
    if user:
        tok.add_tokens(user)
    with tempfile.TemporaryDirectory() as d:
        tok.save_pretrained(d)
        backend_json = json.loads((Path(d) / "tokenizer.json").read_text())
        saved = json.loads((Path(d) / "tokenizer_config.json").read_text())
    # transformers' GPT2Tokenizer brings its default <|endoftext|> along when the file has no such token: ids beyond
    # the file's token list are not the model's (an embedding lookup would be out of range), so they go.
    beyond = {t["content"] for t in backend_json.get("added_tokens", []) if t["id"] >= len(tokens)}
    backend_json["added_tokens"] = [t for t in backend_json.get("added_tokens", []) if t["id"] < len(tokens)]
    vocab = backend_json["model"].get("vocab")
    if isinstance(vocab, dict):
        backend_json["model"]["vocab"] = {t: i for t, i in vocab.items() if i < len(tokens)}
    files = {"tokenizer.json": (json.dumps(backend_json, indent=2, ensure_ascii=False) + "\n").encode()}
    for k in ("is_local", "local_files_only", "name_or_path", "_commit_hash"):
        saved.pop(k, None)
    for k, v in list(saved.items()):
        if isinstance(v, str) and v in beyond:
            saved[k] = None
        elif isinstance(v, list):
            saved[k] = [x for x in v if x not in beyond]
    saved["tokenizer_class"] = "TokenizersBackend"
    saved.update({k: config[k] for k in ("add_bos_token", "add_eos_token") if k in config})
    if config.get("chat_template"):
        saved["chat_template"] = config["chat_template"]
    files["tokenizer_config.json"] = (json.dumps(saved, indent=2, ensure_ascii=False) + "\n").encode()
    return files


def open_gguf(path: str | os.PathLike) -> GgufModel:
    """Opens a Llama / Qwen2 / Qwen3 GGUF: metadata, config, tokenizer and lazy tensors (no weights are read).

    Raises ValueError naming the file and the key / tensor for: another architecture, a tensor type outside
    READABLE_TYPES, missing / unexpected / misshapen tensors, RoPE scaling jaxfin cannot run, split files."""
    path = str(path)
    meta, infos, data_start = _read_header(path)
    arch = meta.get("general.architecture")
    if arch not in ARCHITECTURES:
        raise ValueError(f"{path}: unsupported GGUF architecture {arch!r} (supported: {', '.join(ARCHITECTURES)})")
    if int(meta.get("split.count", 1)) > 1:
        raise ValueError(f"{path}: split GGUF files are not supported (merge them with llama-gguf-split --merge)")
    file_size = os.path.getsize(path)
    tables: dict[str, tuple] = {}
    for name, dims, ggml_type, offset in infos:
        try:
            type_name = _Q(ggml_type).name
        except ValueError:
            type_name = f"unknown type {ggml_type}"
        if type_name not in READABLE_TYPES:
            raise ValueError(f"{path}: tensor {name} has type {type_name}, which jaxfin cannot read "
                             f"(supported: {', '.join(READABLE_TYPES)})")
        block, type_size = gguf.GGML_QUANT_SIZES[_Q(ggml_type)]
        if dims[0] % block:
            raise ValueError(f"{path}: tensor {name} has rows of {dims[0]} values, not a multiple of the "
                             f"{type_name} block of {block}")
        nbytes = math.prod(dims) // block * type_size
        if data_start + offset + nbytes > file_size:
            raise ValueError(f"{path}: tensor {name} is truncated (file ends inside its data)")
        tables[name] = (type_name, tuple(reversed(dims)), data_start + offset, nbytes)
    rope_freqs = None
    if _ROPE_FREQS in tables:
        type_name, shape, offset, nbytes = tables[_ROPE_FREQS]
        rope_freqs = GgufTensor("rope_freqs", _ROPE_FREQS, shape, type_name, path, offset, nbytes).read()
    hf_config = _config(meta, arch, tables, path, rope_freqs)
    expected = expected_shapes(hf_config)
    tensors: dict[str, GgufTensor] = {}
    for gguf_name, (type_name, shape, offset, nbytes) in tables.items():
        if gguf_name == _ROPE_FREQS:
            continue
        name = _hf_name(gguf_name)
        if name not in expected:
            raise ValueError(f"{path}: unexpected tensor {gguf_name} for a {arch} model with this metadata")
        if shape != expected[name]:
            raise ValueError(f"{path}: tensor {gguf_name} has shape {list(shape)} ({name}), the metadata implies "
                             f"{list(expected[name])}")
        heads = None
        if arch == "llama" and (".attn_q." in gguf_name or ".attn_k." in gguf_name):
            heads = hf_config["num_attention_heads"] if ".attn_q." in gguf_name else hf_config["num_key_value_heads"]
        tensors[name] = GgufTensor(name, gguf_name, shape, type_name, path, offset, nbytes, heads)
    missing = [n for n in expected if n not in tensors]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ValueError(f"{path}: missing tensor {_gguf_name(missing[0])} ({missing[0]}){more}")
    return GgufModel(path, arch, hf_config, _generation_config(meta), _tokenizer_files(meta, arch, path), tensors,
                     meta)


# --------------------------------------------------------------------------------------------------------------
# Writing.
