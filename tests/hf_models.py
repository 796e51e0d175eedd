"""Tiny random transformers models (torch CPU) for parity tests, with every tensor randomised.

Shapes: hidden 64, 2 layers, vocab 128, 4 query heads / 2 kv heads with head_dim 24 (!= hidden/heads, so a
wrong head_dim shows). Norm weights are 1 + noise and biases random, so a swapped or skipped tensor changes the
logits. Std is small enough that f32 logits agree with transformers to 1e-4.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
import torch
import transformers

from jaxfin.model import decoder


FAMILIES = ("llama", "qwen2", "qwen3")
COMMON = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, head_dim=24, max_position_embeddings=4096, rms_norm_eps=1e-6,
              bos_token_id=1, eos_token_id=2)
# llama3 scaling with a small original window, so test positions reach far beyond it.
LLAMA3 = dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
              original_max_position_embeddings=32)
# YaRN as DeepSeek-R1-0528-Qwen3 writes it: `attn_factor` (which transformers ignores; see README).
YARN = dict(rope_type="yarn", factor=4.0, original_max_position_embeddings=32, attn_factor=0.87)


def hf_config(family: str) -> transformers.PretrainedConfig:
    if family == "llama":
        return transformers.LlamaConfig(**COMMON, rope_theta=500000.0, rope_scaling=dict(LLAMA3))
    if family == "qwen2":
        return transformers.Qwen2Config(**COMMON, rope_theta=10000.0, tie_word_embeddings=True)
    if family == "qwen3":
        return transformers.Qwen3Config(**COMMON, rope_theta=1000000.0, rope_scaling=dict(YARN))
    raise ValueError(family)


def tiny_model(family: str, seed: int = 0, dtype: torch.dtype = torch.float32) -> transformers.PreTrainedModel:
    """A random `family` model in eval mode; every parameter drawn from a seeded normal."""
    model = transformers.AutoModelForCausalLM.from_config(hf_config(family))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            p.copy_(1.0 + 0.1 * noise if "norm" in name else 0.15 * noise)
    return model.to(dtype).eval()


def to_tf4_config(model_dir: Path) -> None:
    """Rewrites a saved config.json into the transformers-4 format the hub serves (rope_theta + rope_scaling)."""
    path = Path(model_dir) / "config.json"
    cfg = json.loads(path.read_text())
    rope = dict(cfg.pop("rope_parameters"))
    cfg["rope_theta"] = rope.pop("rope_theta")
    cfg["rope_scaling"] = None if rope.get("rope_type") == "default" else rope
    cfg["torch_dtype"] = cfg.pop("dtype")
    path.write_text(json.dumps(cfg, indent=2))


def state_dict_numpy(model: transformers.PreTrainedModel) -> dict[str, np.ndarray]:
    """The model's tensors as numpy (bf16 through ml_dtypes, bit for bit)."""
    import ml_dtypes

    out = {}
    for k, v in model.state_dict().items():
        if v.dtype == torch.bfloat16:
            out[k] = v.view(torch.uint16).numpy().view(ml_dtypes.bfloat16)
        else:
            out[k] = v.numpy()
    return out


# One jitted forward for every parity test (the jit cache is shared across test modules in a session).
forward = jax.jit(decoder.forward, static_argnums=2)


def reference_logits(model: transformers.PreTrainedModel, tokens_BT: np.ndarray,
                     positions_BT: np.ndarray) -> np.ndarray:
    """transformers' f32 logits [B, T, V] at explicit positions."""
    with torch.no_grad():
        return model(torch.tensor(tokens_BT), position_ids=torch.tensor(positions_BT)).logits.float().numpy()


def save_tokenizer(out_dir: Path) -> dict[str, bytes]:
    """Writes a tiny word-level tokenizer (tokenizer.json, tokenizer_config.json, chat_template.jinja, plus a
    special_tokens_map.json) into `out_dir`; returns the files written."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, 128)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                                unk_token="<unk>")
    fast.chat_template = "{% for m in messages %}{{ m['content'] }} {% endfor %}"
    fast.save_pretrained(out_dir)
    (Path(out_dir) / "special_tokens_map.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>"}))
    names = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json")
    return {n: (Path(out_dir) / n).read_bytes() for n in names}
