"""The second paper's second stage: DPO with a rank-16 LoRA (alpha 32, beta 1) on top of the SFT model, whose
adapters are merged into the base (dpo.init=merge), on pairs whose rejected answers are the model's own over-long
outputs (python -m jaxfin.pairs). Every key is declared, with its meaning, in jaxfin/training/defaults.py (`dpo()`).

    python -m jaxfin.pairs --model runs/lora_neftune --task fire --out runs/pairs/pairs.jsonl
    python -m jaxfin.dpo --config configs/dpo.py
"""

from jaxfin.training import defaults


def get_config():
    c = defaults.dpo()
    c.dpo.beta = 1.0  # the paper's (TRL's default is 0.1)
    return c
