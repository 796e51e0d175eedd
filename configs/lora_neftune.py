"""The paper's setup: configs/lora.py plus NEFTune alpha=5 (Jain et al. 2023) on the input embeddings.

    python -m jaxfin.train --config configs/lora_neftune.py --config.model.path=/models/DeepSeek-R1-Distill-Llama-8B
"""

import os

from ml_collections import ConfigDict

from jaxfin.config_flags import load_config


def get_config() -> ConfigDict:
    c = load_config(os.path.join(os.path.dirname(os.path.abspath(__file__)), "lora.py"))
    c.workdir = "runs/lora_neftune"
    c.neftune.alpha = 5.0
    return c
