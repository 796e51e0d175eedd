"""jaxfin params -> GGUF (llama.cpp's one-file format) for Llama / Qwen2 / Qwen3: the architecture metadata, the
tokenizer (byte-level BPE) with its special ids and chat template, and the tensors under llama.cpp's names in f32,
f16, bf16 or q8_0, so llama.cpp / Ollama / LM Studio run a model fine-tuned here. The layout and names follow
llama.cpp's convert_hf_to_gguf.py (see gguf.py, the reading side, for the sources).
"""

from __future__ import annotations

import functools
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

import gguf
import ml_dtypes
import numpy as np
from tqdm.auto import tqdm

from jaxfin.io import hf
from jaxfin.io.files import atomic_write
from jaxfin.io.gguf import (
    _CHUNK_BYTES, _ROPE_FREQS, _SPLIT_PRE, ARCHITECTURES, WRITE_DTYPES, _gguf_name, _interleaved_rows, _Q,
    expected_shapes, llama3_rope_factors,
)
from jaxfin.model.config import ModelConfig


def _pre_tokenizer_name(pre: Any) -> str | None:
    """llama.cpp's `tokenizer.ggml.pre` for a tokenizer.json `pre_tokenizer`, for the splits we recognise."""
    if not isinstance(pre, dict):
        return None
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
        return "gpt-2"
    steps = pre.get("pretokenizers") if pre.get("type") == "Sequence" else None
    if not steps or len(steps) != 2 or steps[1].get("type") != "ByteLevel":
        return None
    first, byte_level = steps
    if first.get("type") == "Digits" and first.get("individual_digits") and byte_level.get("use_regex", True):
        return "smollm"
    if (first.get("type") == "Split" and not byte_level.get("use_regex", True) and not first.get("invert")
            and str(first.get("behavior", "")).lower() == "isolated"):
        return _SPLIT_PRE.get((first.get("pattern") or {}).get("Regex"))
    return None


def _ids(value: Any) -> list[int]:
    return [] if value is None else [int(v) for v in (value if isinstance(value, (list, tuple)) else [value])]


def _tokenizer_metadata(tokenizer_files: Mapping[str, bytes], hf_config: Mapping[str, Any], vocab_size: int,
                        generation_config: Mapping[str, Any] | None, pre: str | None) -> dict[str, Any]:
    """tokenizer.* keys for a byte-level BPE tokenizer as transformers loads it from `tokenizer_files` beside
    `hf_config` (convert_hf_to_gguf.py get_vocab_base: ids without a token become [PAD{i}] UNUSED, added special
    tokens CONTROL, other added tokens USER_DEFINED, both stored as their text)."""
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as d:
        for name, data in tokenizer_files.items():
            (Path(d) / name).parent.mkdir(parents=True, exist_ok=True)
            (Path(d) / name).write_bytes(data)
        (Path(d) / "config.json").write_text(json.dumps(dict(hf_config)))
        tok = AutoTokenizer.from_pretrained(d)
    backend = json.loads(tok.backend_tokenizer.to_str())
    model, decoder = backend.get("model") or {}, backend.get("decoder") or {}
    if model.get("type") != "BPE" or "ByteLevel" not in json.dumps([backend.get("pre_tokenizer"), decoder]):
        raise ValueError(f"tokenizer: only byte-level BPE tokenizers can be written to GGUF (tokenizer.ggml.model "
                         f"gpt2); this one is {model.get('type')} with decoder {decoder.get('type')}")
    pre = pre or _pre_tokenizer_name(backend.get("pre_tokenizer"))
    if pre is None:
        raise ValueError(f"tokenizer: pre-tokenizer {json.dumps(backend.get('pre_tokenizer'))[:300]} has no "
                         f"llama.cpp name jaxfin knows; pass tokenizer_pre= (a llama.cpp tokenizer.ggml.pre name)")
    # A tokenizer class may add its default specials (Qwen2Tokenizer: <|endoftext|>) as new ids past the model's
    # vocabulary when tokenizer.json lacks them; those are no tokens of this model. Ids the file itself has are.
    in_file = json.loads(tokenizer_files["tokenizer.json"]) if "tokenizer.json" in tokenizer_files else {}
    file_ids = set((in_file.get("model") or {}).get("vocab", {}).values() if isinstance(
        (in_file.get("model") or {}).get("vocab"), dict) else ())
    file_ids |= {t["id"] for t in in_file.get("added_tokens", [])}
    vocab = {t: i for t, i in tok.get_vocab().items() if i < vocab_size or i in file_ids or not file_ids}
    if max(vocab.values()) >= vocab_size:
        token = max(vocab, key=vocab.get)
        raise ValueError(f"tokenizer: token {token!r} has id {vocab[token]}, beyond the model's vocab_size "
                         f"{vocab_size}")
    tokens = [f"[PAD{i}]" for i in range(vocab_size)]
    types = [int(gguf.TokenType.UNUSED)] * vocab_size
    for token, i in vocab.items():
        tokens[i], types[i] = token, int(gguf.TokenType.NORMAL)
    for i, added in tok.added_tokens_decoder.items():
        if i < vocab_size:
            tokens[i] = added.content
            types[i] = int(gguf.TokenType.CONTROL if added.special else gguf.TokenType.USER_DEFINED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    out: dict[str, Any] = {"model": "gpt2", "pre": pre, "tokens": tokens, "types": types, "merges": merges}
    ids = {
        "bos": tok.bos_token_id if tok.bos_token_id is not None else hf_config.get("bos_token_id"),
        "eos": tok.eos_token_id if tok.eos_token_id is not None else (_ids(hf_config.get("eos_token_id")) or [None])[0],
        "pad": tok.pad_token_id, "unk": tok.unk_token_id,
    }
    extra = [i for i in _ids((generation_config or {}).get("eos_token_id", hf_config.get("eos_token_id")))
             if i != ids["eos"]]
    if len(extra) > 2:
        raise ValueError(f"generation_config: eos_token_id {extra} has more than two ids besides the tokenizer's eos "
                         f"{ids['eos']}; GGUF can name two more (tokenizer.ggml.eot_token_id, eom_token_id)")
    ids.update(zip(("eot", "eom"), extra))
    out["ids"] = {k: int(v) for k, v in ids.items() if v is not None and int(v) < vocab_size}
    plain = tok("a", add_special_tokens=False)["input_ids"]
    full = tok("a")["input_ids"]
    out["add_bos"] = len(full) > len(plain) and full[0] == ids["bos"]
    out["add_eos"] = len(full) > len(plain) and full[-1] == ids["eos"]
    template = tok.chat_template
    out["chat_template"] = template.get("default") if isinstance(template, dict) else template
    return out


def _tensor_type(name: str, shape: tuple[int, ...], dtype: str) -> _Q:
    """llama.cpp's choice (convert_hf_to_gguf.py prepare_tensors): 1-D tensors (norms, biases) stay F32; Q8_0
    needs rows that are a multiple of its 32-value block, else the tensor falls back to F16."""
    if len(shape) == 1 or dtype == "f32":
        return _Q.F32
    if dtype == "q8_0":
        return _Q.Q8_0 if shape[-1] % gguf.GGML_QUANT_SIZES[_Q.Q8_0][0] == 0 else _Q.F16
    return {"f16": _Q.F16, "bf16": _Q.BF16}[dtype]


def _encode(w: np.ndarray, qtype: _Q) -> np.ndarray:
    """HF tensor -> the bytes GGUF stores (row-major), quantising in row chunks."""
    if qtype == _Q.F32:
        return np.ascontiguousarray(w, np.float32)
    if qtype == _Q.F16:
        return np.ascontiguousarray(w, np.float16)
    if qtype == _Q.BF16:
        return np.ascontiguousarray(w.astype(ml_dtypes.bfloat16)).view(np.uint8)
    rows = w.reshape(-1, w.shape[-1])
    block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    out = np.empty((rows.shape[0], rows.shape[1] // block * type_size), np.uint8)
    step = max(1, _CHUNK_BYTES // (4 * rows.shape[1]))
    for a in range(0, rows.shape[0], step):
        out[a: a + step] = gguf.quants.quantize(np.asarray(rows[a: a + step], np.float32), qtype)
    return out


def _file_type(dtype: str) -> int:
    return int({"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                "bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[dtype])


def write_gguf(
    path: str | os.PathLike,
    params: Mapping[str, Any],
    cfg: ModelConfig,
    *,
    hf_config: Mapping[str, Any],
    tokenizer_files: Mapping[str, bytes],
    generation_config: Mapping[str, Any] | None = None,
    dtype: str = "f32",
    progress: bool = False,
    tokenizer_pre: str | None = None,
) -> None:
    """Writes jaxfin params (numpy or jax arrays, our layout) of a Llama / Qwen2 / Qwen3 `cfg` (a ModelConfig) as a
    GGUF that llama.cpp, Ollama and transformers load: the architecture metadata, tensors under llama.cpp names
    (Q/K rows interleaved for `llama`), llama3 RoPE scaling as a `rope_freqs` tensor, yarn as rope.scaling.*, and
    the byte-level BPE tokenizer with its chat template. `dtype`: f32 | f16 | bf16 | q8_0 for the 2-D weights
    (norms and biases stay F32; q8_0 falls back to F16 for rows not a multiple of 32). `tokenizer_pre` overrides
    the llama.cpp pre-tokenizer name derived from the tokenizer. Written to a temp file beside `path`, renamed at
    the end. Tensors are converted one at a time (hf.state_dict_from_params)."""
    if dtype not in WRITE_DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of {', '.join(WRITE_DTYPES)}")
    arch = cfg.model_type
    if arch not in ARCHITECTURES:
        raise ValueError(f"unsupported architecture {arch!r} for GGUF (supported: {', '.join(ARCHITECTURES)})")
    H = cfg.head_dim
    tok = _tokenizer_metadata(tokenizer_files, hf_config, cfg.vocab_size, generation_config, tokenizer_pre)
    rope_freqs = None
    if cfg.rope_type == "llama3":
        rope_freqs = llama3_rope_factors(cfg.rope_theta, H, cfg.rope_factor, cfg.rope_low_freq_factor,
                                         cfg.rope_high_freq_factor, cfg.rope_original_max_position)
    elif cfg.rope_type == "yarn" and (cfg.rope_attention_factor is not None or cfg.rope_mscale is not None
                                      or cfg.rope_mscale_all_dim is not None or not cfg.rope_truncate):
        raise ValueError("yarn RoPE with attention_factor / mscale / truncate=false has no GGUF metadata llama.cpp "
                         "reads the same way; not written")
    elif cfg.rope_type not in ("default", "yarn"):
        raise ValueError(f"RoPE type {cfg.rope_type!r} cannot be written to GGUF")
    shapes = expected_shapes({
        "model_type": arch, "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size, "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads, "num_key_value_heads": cfg.num_kv_heads, "head_dim": H,
        "attention_bias": cfg.attention_bias, "tie_word_embeddings": cfg.tie_word_embeddings})

    atomic_write(path, functools.partial(_write, params=params, cfg=cfg, hf_config=hf_config, dtype=dtype, tok=tok,
                                       shapes=shapes, rope_freqs=rope_freqs, progress=progress))


def _write(tmp: str, *, params: Any, cfg: ModelConfig, hf_config: Mapping[str, Any], dtype: str, tok: dict,
           shapes: dict[str, tuple[int, ...]], rope_freqs: np.ndarray | None, progress: bool) -> None:
    """The GGUF file at `tmp`: metadata, the tensor table (offsets follow from sizes), then each tensor written at
    its offset as state_dict_from_params yields it."""
    arch, H = cfg.model_type, cfg.head_dim
    w = gguf.GGUFWriter(tmp, arch)
    w.add_name(str(hf_config.get("_name_or_path") or f"jaxfin-{arch}").rstrip("/").split("/")[-1])
    w.add_vocab_size(cfg.vocab_size)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_block_count(cfg.num_layers)
    w.add_head_count(cfg.num_heads)
    w.add_head_count_kv(cfg.num_kv_heads)
    w.add_key_length(H)
    w.add_value_length(H)
    w.add_rope_dimension_count(H)
    w.add_rope_freq_base(float(cfg.rope_theta))
    w.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
    if cfg.rope_type == "yarn":
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(float(cfg.rope_factor))
        w.add_rope_scaling_orig_ctx_len(int(cfg.rope_original_max_position))
        if cfg.rope_beta_fast != 32.0:
            w.add_rope_scaling_yarn_beta_fast(float(cfg.rope_beta_fast))
        if cfg.rope_beta_slow != 1.0:
            w.add_rope_scaling_yarn_beta_slow(float(cfg.rope_beta_slow))
    w.add_file_type(_file_type(dtype))
    if dtype == "q8_0":
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_tokenizer_model(tok["model"])
    w.add_tokenizer_pre(tok["pre"])
    w.add_token_list(tok["tokens"])
    w.add_token_types(tok["types"])
    if tok["merges"]:
        w.add_token_merges(tok["merges"])
    adders = {"bos": w.add_bos_token_id, "eos": w.add_eos_token_id, "pad": w.add_pad_token_id,
              "unk": w.add_unk_token_id, "eot": w.add_eot_token_id, "eom": w.add_eom_token_id}
    for k, token_id in tok["ids"].items():
        adders[k](token_id)
    w.add_add_bos_token(bool(tok["add_bos"]))
    if tok["add_eos"]:  # llama.cpp's default is off; writing it only when on keeps an import -> export exact
        w.add_add_eos_token(True)
    if tok["chat_template"]:
        w.add_chat_template(tok["chat_template"])

    # Tensor table first (offsets follow from sizes), then the data, each tensor written at its offset as
    # state_dict_from_params yields it.
    plan: dict[str, tuple[str, _Q, tuple[int, ...]]] = {}
    if rope_freqs is not None:
        plan[_ROPE_FREQS] = (_ROPE_FREQS, _Q.F32, rope_freqs.shape)
    for name, shape in shapes.items():
        plan[name] = (_gguf_name(name), _tensor_type(name, shape, dtype), shape)
    offsets, offset = {}, 0
    for name, (gguf_name, qtype, shape) in plan.items():
        block, type_size = gguf.GGML_QUANT_SIZES[qtype]
        nbytes = math.prod(shape) // block * type_size
        if qtype in (_Q.F32, _Q.F16):
            w.add_tensor_info(gguf_name, shape, np.dtype(np.float32 if qtype == _Q.F32 else np.float16), nbytes)
        else:
            byte_shape = (*shape[:-1], shape[-1] // block * type_size)
            w.add_tensor_info(gguf_name, byte_shape, np.dtype(np.uint8), nbytes, raw_dtype=qtype)
        offsets[name] = (offset, nbytes)
        offset += -(-nbytes // w.data_alignment) * w.data_alignment
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    f = w.fout[0]
    data_start = -(-f.tell() // w.data_alignment) * w.data_alignment

    def put(name: str, value: np.ndarray) -> None:
        at, nbytes = offsets[name]
        data = _encode(value, plan[name][1])
        if data.nbytes != nbytes:
            raise ValueError(f"tensor {name}: {data.nbytes} bytes, expected {nbytes}")
        f.seek(data_start + at)
        f.write(data.reshape(-1).view(np.uint8).data)

    with tqdm(total=len(plan), unit="tensor", desc="gguf", disable=not progress) as bar:
        if rope_freqs is not None:
            put(_ROPE_FREQS, rope_freqs)
            bar.update()
        for name, value in hf.state_dict_from_params(params, cfg):
            if name not in plan:
                raise ValueError(f"tensor {name} is not part of a {arch} GGUF")
            if value.shape != plan[name][2]:
                raise ValueError(f"tensor {name} has shape {list(value.shape)}, cfg implies {list(plan[name][2])}")
            if arch == "llama" and (".q_proj." in name or ".k_proj." in name):
                value = value[_interleaved_rows(value.shape[0], cfg.num_heads if ".q_proj." in name
                                                else cfg.num_kv_heads)]
            put(name, value)
            bar.update()
    f.truncate(data_start + offset)
    f.flush()
    os.fsync(f.fileno())
    w.close()
