"""The embedded default (also what `python -m jaxfin.train` runs without --config): the whole path from nothing in
a few minutes on a 2-core CPU. With model.path and data unset, jaxfin.train writes the self-made assets
(jaxfin.synthetic: a tiny random Llama as an HF directory, a BPE tokenizer trained on the fly, a generated
financial NER set) to WORKDIR/assets, then trains LoRA + NEFTune, evaluates and checkpoints.

    python -m jaxfin.train --config configs/tiny.py
"""

from jaxfin.training import defaults


def get_config():
    return defaults.tiny()
