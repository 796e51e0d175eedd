"""Model presets: the config.json of each reference model, embedded so configs can name a model without its files
(defined in jaxfin.model.presets; re-exported here for configs).

    cfg = preset("deepseek-r1-distill-llama-8b")          # a jaxfin ModelConfig
    cfg = preset("qwen3-8b", dtype="bfloat16", remat="full")
"""

from jaxfin.model.presets import HUB_IDS, PRESETS, hf_config, preset  # noqa: F401
