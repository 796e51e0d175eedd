"""The second paper's multi-task SFT preset: DeepSeek-R1-Distill-Qwen-1.5B, LoRA r=128 alpha=256 on all seven
projections, lr 5e-5, batches of ~64 examples (8 packed rows of 640 tokens: see `finllm_sft()` in
jaxfin/training/defaults.py for the mapping), trained jointly on fpb, fiqasa, headlines and finben_ner and
evaluated per task (zero-shot beside fine-tuned) in WORKDIR/eval/NAME/ and WORKDIR/eval/summary.md.

    python -m jaxfin.train --config configs/finllm_sft.py [--config.model.path=/models/DeepSeek-R1-Distill-Qwen-1.5B]
"""

from jaxfin.training import defaults


def get_config():
    return defaults.finllm_sft()
