"""The paper's setup: configs/lora.py plus NEFTune alpha=5 (Jain et al. 2023) on the input embeddings.

    python -m jaxfin.train --config configs/lora_neftune.py --config.model.path=/models/DeepSeek-R1-Distill-Llama-8B
"""

from jaxfin.training import defaults


def get_config():
    return defaults.lora_neftune()
