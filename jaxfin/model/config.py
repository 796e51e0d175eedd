"""ModelConfig: the hyperparameters of one decoder, read from a transformers config.json or from what jaxfin
stored, split into architecture fields (what the weights mean) and runtime fields (how to run them)."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax.numpy as jnp

ARCHITECTURES = {"LlamaForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2", "Qwen3ForCausalLM": "qwen3"}
# Fields that choose how to run a model, not what its weights mean: free to differ between a checkpoint and the
# run that loads it (a bf16 run of an f32 checkpoint, remat on or off).
RUNTIME_FIELDS = ("dtype", "remat", "attention_impl", "lora_impl")
# jax.checkpoint policies, see decoder.REMAT_POLICIES
REMAT_NAMES = ("none", "full", "dots", "dots_all", "proj", "attn_proj")
ATTENTION_IMPLS = (None, "xla", "cudnn")
# How the LoRA path multiplies (decoder._lora_a): f32 operands | compute-dtype operands with f32 accumulation |
# compute, with the A matrices of projections sharing an input fused (q/k/v, gate/up). f32 and compute give the
# same bits in an f32 model; fused equals them to ~1e-7 there (its backward sums in another order).
LORA_IMPLS = ("f32", "compute", "fused")
DTYPES = ("float32", "bfloat16", "float16")


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
    remat: str = "none"  # one of REMAT_NAMES
    attention_impl: str | None = None  # None (XLA picks) | "xla" | "cudnn"
    lora_impl: str = "compute"  # one of LORA_IMPLS

    @property
    def architecture(self) -> dict[str, Any]:
        """The fields that define the weights (every field but RUNTIME_FIELDS): two configs with equal
        architectures run the same checkpoints."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in RUNTIME_FIELDS}

    @property
    def compute_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.dtype)

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, stored: Mapping[str, Any], **runtime: Any) -> "ModelConfig":
        """The config jaxfin stored (dataclasses.asdict, in a checkpoint or run.json) with `runtime` fields set;
        fields a newer jaxfin added take their defaults, and a key this version does not know is a ValueError
        (the file was written by a newer jaxfin)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(stored) - known)
        if unknown:
            raise ValueError(f"unknown model config key(s) {unknown} (written by a newer jaxfin?)")
        return cls(**{**stored, **runtime})

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


