"""The embedded default: the whole path from nothing in a few minutes on a 2-core CPU. With model.path and data
unset, jaxfin.train writes the self-made assets (jaxfin.synthetic: a tiny random Llama as an HF directory, a BPE
tokenizer trained on the fly, a generated financial NER set) to WORKDIR/assets, then converts, trains LoRA +
NEFTune, evaluates and checkpoints.

    python -m jaxfin.train --config configs/tiny.py
"""

import os

from ml_collections import ConfigDict

from jaxfin.config_flags import load_config


def get_config() -> ConfigDict:
    c = load_config(os.path.join(os.path.dirname(os.path.abspath(__file__)), "lora.py"))
    c.workdir = "runs/tiny"
    c.model.path = None  # None: the tiny self-made model (and tokenizer) in WORKDIR/assets
    c.model.dtype = "float32"
    c.model.remat = "none"
    c.data.train = None  # None: the self-made NER sets in WORKDIR/assets
    c.data.eval = None

    c.train.steps = 300
    c.train.batch_size = 8
    c.train.seq_len = 512  # ~3 examples of ~166 tokens per row
    c.optim.lr = 1e-2
    c.optim.warmup_steps = 20
    c.optim.end_lr_ratio = 0.1
    c.lora.dropout = 0.0
    c.neftune.alpha = 5.0
    c.checkpoint.every_steps = 100
    c.eval.max_new_tokens = 128
    c.eval.batch_size = 16
    return c
