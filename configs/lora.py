"""The paper's setup without NEFTune (the ablation): DeepSeek-R1-Distill-Llama-8B, LoRA r=16 alpha=32 on all
seven projections, FIRE 7-type train / dev, lr 2e-4, 3 epochs, seq 512, bf16. Every key of every jaxfin.train
config is declared here; configs/lora_neftune.py and configs/tiny.py start from this one.

    python -m jaxfin.train --config configs/lora.py --config.model.path=/models/DeepSeek-R1-Distill-Llama-8B
"""

import os

from ml_collections import ConfigDict, config_dict

from jaxfin.model import LORA_TARGETS

# ../shared beside the repository holds the datasets (see ../shared/data/README.md).
FIRE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "data",
                    "fire_financial_ner")


def _path(value: str) -> config_dict.FieldReference:
    return config_dict.FieldReference(value, field_type=str)


def get_config() -> ConfigDict:
    c = ConfigDict()
    c.workdir = "runs/lora"
    c.seed = 0

    c.model = ConfigDict()
    # Paths are typed str fields so that None (configs/tiny.py: the self-made assets) and strings both override.
    c.model.path = _path("deepseek-ai/DeepSeek-R1-Distill-Llama-8B")  # HF hub id, HF dir, or jaxfin checkpoint
    c.model.dtype = "bfloat16"  # base weights and activations; adapters and optimizer state are always f32
    c.model.remat = "full"  # jax.checkpoint policy per layer: none | full | dots | dots_all
    # jax.nn.dot_product_attention implementation: unset = XLA picks; "xla"; "cudnn" (GPU flash attention)
    c.model.attention_impl = config_dict.placeholder(str)

    c.data = ConfigDict()
    # Cleanlab's FIRE 7-type train split (HF Cleanlab/fire-financial-ner-extraction) and FIRE dev in that schema.
    c.data.train = _path(os.path.normpath(os.path.join(FIRE, "cleanlab_fire_train_7types.jsonl")))
    c.data.eval = _path(os.path.normpath(os.path.join(FIRE, "fire_dev_7types.jsonl")))

    c.train = ConfigDict()
    c.train.steps = 0  # optimizer updates; 0 = train.epochs over the packed data
    c.train.epochs = 3
    c.train.batch_size = 16  # global packed rows per update, split over the data x fsdp devices
    c.train.grad_accum_steps = 1  # micro-batches per update (batch_size must divide by it)
    c.train.seq_len = 512
    c.train.loss_chunk = 128  # positions per cross-entropy chunk: [B, loss_chunk, V] f32 logits at a time
    c.train.log_every_steps = 1
    c.train.max_nonfinite_steps = 5  # stop after this many consecutive skipped (NaN/Inf) steps; 0 = never stop

    c.optim = ConfigDict()
    c.optim.lr = 2e-4
    c.optim.warmup_steps = 10
    c.optim.decay_steps = 0  # cosine length; 0 = the whole run
    c.optim.end_lr_ratio = 0.0
    c.optim.weight_decay = 0.0
    c.optim.clip_norm = 1.0
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999

    c.lora = ConfigDict()
    c.lora.rank = 16
    c.lora.alpha = 32.0
    c.lora.rslora = False
    c.lora.dropout = 0.05
    c.lora.targets = LORA_TARGETS

    c.neftune = ConfigDict()
    c.neftune.alpha = 0.0  # 0 = off
    c.neftune.length = "segment"  # segment: L = the example's real tokens (paper); padded: L = row length (TRL)

    c.checkpoint = ConfigDict()
    c.checkpoint.every_steps = 100
    c.checkpoint.max_to_keep = 3

    c.eval = ConfigDict()
    c.eval.every_steps = 0  # 0 = only at the end
    c.eval.max_examples = -1  # -1 all, 0 skip (data.eval is not read), K the first K
    c.eval.max_new_tokens = 256
    c.eval.batch_size = 32

    c.mesh = ConfigDict()  # sizes of the device mesh axes; -1 = the remaining devices
    c.mesh.data = 1
    c.mesh.fsdp = -1
    c.mesh.tensor = 1

    c.distributed = ConfigDict()  # several processes (hosts): jaxfin/distributed.py
    # All three together, the same on every process but process_id; none: auto_detect.
    c.distributed.coordinator = config_dict.placeholder(str)  # HOST:PORT that process 0 listens on
    c.distributed.num_processes = config_dict.placeholder(int)
    c.distributed.process_id = config_dict.placeholder(int)
    c.distributed.auto_detect = True  # let jax.distributed find a TPU pod / SLURM / Open MPI job; else one process
    return c
