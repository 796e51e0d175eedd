"""The first paper's setup without NEFTune (the ablation): DeepSeek-R1-Distill-Llama-8B, LoRA r=16 alpha=32 on all
seven projections, FIRE 7-type train / dev, lr 2e-4, 3 epochs, seq 512, bf16. Every key is declared, with its
meaning, in jaxfin/training/defaults.py (`lora()`).

    python -m jaxfin.train --config configs/lora.py --config.model.path=/models/DeepSeek-R1-Distill-Llama-8B
"""

from jaxfin.training import defaults


def get_config():
    return defaults.lora()
