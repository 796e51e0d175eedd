"""TRL 1.16's DPOTrainer on one batch, without an optimizer step: the reference for jaxfin's DPO step.

    result = run_dpo_batch(model_dir, adapter_dir, [(prompt_ids, chosen_ids, rejected_ids), ...], beta=1.0)
    result.loss, result.metrics["rewards/margins"]
    result.grads["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"]   # [R, in], PEFT's layout

What runs is TRL's own code from the collator on: a real `DPOTrainer` is built around the model (its __init__
wraps the model with PEFT, zeroes dropout, patches the fused LM head), `trainer.data_collator` (TRL's
DataCollatorForPreference) collates the given token ids, `trainer.compute_loss` computes the loss and logs the
metrics, and `loss.backward()` gives the adapter gradients. No `train()`, no optimizer, no scheduler; the output
directory is a temporary one, removed at the end (nothing is written there or in the working directory).

Token ids are fed VERBATIM: TRL's tokenisation of text (`DPOTrainer._prepare_dataset`, reproduced by
`trl_tokenize` below and by jaxfin.data.pairs.trl_token_ids) is not involved. What TRL feeds the model for one pair
(DataCollatorForPreference.torch_call):

    row i       = (prompt_ids + chosen_ids)[:max_length]        i = 0 .. P-1      (truncation_mode keep_start)
    row P + i   = (prompt_ids + rejected_ids)[:max_length]
    completion_mask = 0 on the prompt, 1 on the completion, 0 on padding; padding on the right with pad_token_id,
    attention_mask 1 on the real tokens; positions 0 .. len-1 per row (right padding leaves them as they are)
    labels      = input_ids where completion_mask else -100
    log-prob    = sum over t >= 1 with completion_mask[t] of log softmax(logits[t - 1])[input_ids[t]]

No EOS is added at this stage (for text datasets TRL appends the EOS *string* before tokenising; chat templates
emit their own end-of-turn tokens). A completion token at position 0 (empty prompt) is never scored.

The reference model (`reference`):
- "base": the adapter is trained from the checkpoint in `adapter_dir`, the reference is the base model with the
  adapters disabled. This is TRL's path for `DPOTrainer(base_model, peft_config=LoraConfig(...))`, i.e. a new
  adapter; here its weights are then replaced by the (non-zero) ones of `adapter_dir`, so that policy and
  reference differ.
- "adapter": TRL's path for `DPOTrainer(PeftModel)` with a pre-trained adapter (peft >= 0.20): TRL copies the
  adapter into a frozen adapter named "ref" and the reference is base + that copy, i.e. the policy at the start
  of training (so at this first batch every reward is 0 and the sigmoid loss is ln 2, with non-zero gradients).

Other TRL 1.16 semantics the jaxfin step has to match or knowingly differ from:
- Dropout: DPOConfig.disable_dropout=True (default) sets p=0 in every torch Dropout of the model, the LoRA dropout
  of the adapter config included, so TRL's DPO trains LoRA without dropout whatever lora_dropout says.
- precompute_ref_log_probs=True: the reference log-probs of every pair are computed once before training (same
  collator, so the same truncation; batch size precompute_ref_batch_size) and stored as dataset columns
  "ref_chosen_logps" / "ref_rejected_logps"; the loss then reads them instead of running the reference. With a
  frozen reference this only saves compute; padding never changes the values.
- Sequence log-probs come from a fused, chunked LM head (trl.trainer.utils.add_fused_lm_head, outputs
  log_probs/entropy/mean_logits/is_top1) that never builds [B, T, V] logits; there is no `use_logits_to_keep`,
  `rpo_alpha`, `reference_free` or `ref_adapter_name` in 1.16. `padding_free=True` only warns and falls back to
  padding. `max_length` (default 1024) truncates each prompt+completion row from the end, and pairs whose
  prompt alone has >= max_length tokens are dropped at dataset preparation.
- Loss normalisation: compute_loss returns the mean over the micro-batch's pairs; Trainer divides it by the
  gradient-accumulation steps (DPOTrainer.loss_is_scaled_for_ga = False) and DDP averages devices: the update's
  gradient is the mean over pairs when micro-batches are equally large, not otherwise (e.g. a short last batch).
- Defaults that differ from TrainingArguments: learning_rate 1e-6, bf16=True (autocast), gradient_checkpointing
  =True, logging_steps 10, beta 0.1, loss_type ["sigmoid"].

Determinism: float32 on CPU, dropout zeroed by TRL (`disable_dropout=True`, which also zeroes the LoRA dropout of
the adapter config), no gradient checkpointing; two calls give bit-identical results.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import types
from typing import Any, Mapping, Sequence

import numpy as np
import torch

REFERENCES = ("base", "adapter")
ADAPTER = "default"  # PEFT's name of the trained adapter


@dataclasses.dataclass
class TrlDpoResult:
    """One batch through TRL. Arrays are numpy; rows of the batch arrays are [chosen_0..P-1, rejected_0..P-1]."""

    loss: float  # the batch loss compute_loss returns (mean over the P pairs)
    metrics: dict[str, float]  # what DPOTrainer logs for this batch: rewards/*, logps/*, entropy, logits/*, ...
    grads: dict[str, np.ndarray]  # d loss / d adapter tensor, keyed by PEFT's saved names (adapter_model.safetensors)
    input_ids: np.ndarray  # [2P, T] as collated
    attention_mask: np.ndarray  # [2P, T]
    completion_mask: np.ndarray  # [2P, T]
    policy_logps: np.ndarray  # [2P] summed completion log-probs with the adapter
    ref_logps: np.ndarray  # [2P] the same under the reference (TRL's compute_ref_log_probs)


def stub_tokenizer(vocab_size: int, pad_id: int, eos_id: int) -> Any:
    """A word-level tokenizer over "t0".."t{V-1}" (id i = "ti"), for models saved without tokenizer files.

    With token ids fed verbatim the tokenizer only supplies the pad id (padding is masked out, so its value does
    not change any number) and tokenises the one-row placeholder dataset DPOTrainer.__init__ insists on."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({f"t{i}": i for i in range(vocab_size)}, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=f"t{pad_id}", eos_token=f"t{eos_id}",
                                   unk_token="t0")


def _dpo_trainer_class() -> type:
    from trl import DPOTrainer

    class Trainer(DPOTrainer):
        """DPOTrainer without the usage ping its base class sends from __init__ (no network in tests)."""

        def _send_telemetry(self) -> None:
            pass

    return Trainer


def _first_id(x: Any) -> int | None:
    return x[0] if isinstance(x, (list, tuple)) else x


def _peft_model(model_dir: str, adapter_dir: str, reference: str) -> tuple[Any, Any]:
    """(model for DPOTrainer, peft_config for DPOTrainer or None), per `reference` (module docstring)."""
    import peft
    import transformers

    base = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if reference == "adapter":
        return peft.PeftModel.from_pretrained(base, adapter_dir, is_trainable=True), None
    config = peft.LoraConfig.from_pretrained(adapter_dir)
    # A saved adapter_config.json says inference_mode=true; get_peft_model would then freeze the new adapter (and
    # PEFT would unfreeze it only when TRL's reference forward re-enables the adapters, after the policy forward).
    config.inference_mode = False
    return base, config


def _load_adapter_weights(model: Any, adapter_dir: str) -> None:
    """Replaces the freshly initialised adapter of `model` by the weights saved in `adapter_dir`, all of them."""
    import peft
    from safetensors.torch import load_file

    state = load_file(os.path.join(adapter_dir, "adapter_model.safetensors"))
    result = peft.set_peft_model_state_dict(model, state, adapter_name=ADAPTER)
    if result.unexpected_keys:
        raise ValueError(f"{adapter_dir}: tensors the model has no place for: {result.unexpected_keys[:3]}")
    loaded = {n: p for n, p in model.named_parameters() if f".{ADAPTER}." in n}
    if len(loaded) != len(state):
        raise ValueError(f"{adapter_dir}: {len(state)} tensors saved, the model has {len(loaded)} adapter tensors")
    for name, p in loaded.items():
        if not torch.equal(p.detach(), state[saved_name(name)].to(p.dtype)):
            raise ValueError(f"{adapter_dir}: {saved_name(name)} was not loaded")


def saved_name(param_name: str) -> str:
    """PEFT parameter name -> its name in adapter_model.safetensors (the adapter name dropped)."""
    return param_name.replace(f".{ADAPTER}.", ".")


def run_dpo_batch(model_dir: str, adapter_dir: str, pairs: Sequence[tuple[Sequence[int], Sequence[int], Sequence[int]]],
                  *, beta: float = 0.1, loss_type: str = "sigmoid", label_smoothing: float = 0.0,
                  reference: str = "base", max_length: int | None = 1024, tokenizer: Any = None) -> TrlDpoResult:
    """TRL's loss, logged metrics and adapter gradients for one batch of (prompt_ids, chosen_ids, rejected_ids).

    `model_dir`: an HF causal-LM directory; `adapter_dir`: a PEFT LoRA adapter for it; `max_length`: TRL's
    DPOConfig.max_length (1024 by default, None: no truncation); `tokenizer`: its pad id pads the batch (a stub
    when None). See the module docstring for what TRL feeds the model and which reference it uses."""
    import transformers
    from datasets import Dataset
    from trl import DPOConfig

    if reference not in REFERENCES:
        raise ValueError(f"reference={reference!r}: choose one of {', '.join(REFERENCES)}")
    if not pairs:
        raise ValueError("no pairs")
    if tokenizer is None:
        cfg = transformers.AutoConfig.from_pretrained(model_dir)
        eos = _first_id(cfg.eos_token_id)
        pad = _first_id(cfg.pad_token_id)
        tokenizer = stub_tokenizer(cfg.vocab_size, pad if pad is not None else eos or 0, eos or 0)
    examples = [{"prompt_ids": list(map(int, p)), "chosen_ids": list(map(int, c)), "rejected_ids": list(map(int, r))}
                for p, c, r in pairs]

    model, peft_config = _peft_model(model_dir, adapter_dir, reference)
    with tempfile.TemporaryDirectory(prefix="trl_dpo_") as out:
        args = DPOConfig(output_dir=out, report_to="none", bf16=False, gradient_checkpointing=False, use_cpu=True,
                         per_device_train_batch_size=len(pairs), beta=beta, loss_type=[loss_type],
                         label_smoothing=label_smoothing, max_length=max_length, save_strategy="no",
                         dataloader_num_workers=0)
        text = tokenizer.decode(examples[0]["prompt_ids"][:1]) or "x"  # DPOTrainer needs a (text) train_dataset
        placeholder = Dataset.from_dict({"prompt": [text], "chosen": [text], "rejected": [text]})
        trainer = _dpo_trainer_class()(model=model, args=args, train_dataset=placeholder, processing_class=tokenizer,
                                       peft_config=peft_config)
        if reference == "base":
            _load_adapter_weights(trainer.model, adapter_dir)
        elif "ref" not in trainer.model.peft_config:
            raise RuntimeError("TRL did not create its frozen 'ref' adapter copy (peft < 0.20 with target_parameters?)")

        inputs = trainer._prepare_inputs(trainer.data_collator(examples))
        trainer.model.train()  # as Trainer.training_step does; TRL zeroed every dropout probability
        with trainer.compute_loss_context_manager():
            loss = trainer.compute_loss(trainer.model, inputs)
        loss.backward()
        grads = {saved_name(n): p.grad.detach().numpy().copy() for n, p in trainer.model.named_parameters()
                 if p.grad is not None}
        metrics = {k: float(v[-1]) for k, v in trainer._metrics["train"].items()}
        policy, ref = _sequence_logps(trainer, inputs)
        if os.listdir(out):
            raise RuntimeError(f"TRL wrote {os.listdir(out)} to its output directory")
    return TrlDpoResult(loss=float(loss.detach()), metrics=metrics, grads=grads,
                        input_ids=inputs["input_ids"].numpy(), attention_mask=inputs["attention_mask"].numpy(),
                        completion_mask=inputs["completion_mask"].numpy(), policy_logps=policy, ref_logps=ref)


def _sequence_logps(trainer: Any, inputs: Mapping[str, torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
    """Per-row summed completion log-probs [2P] of the policy (the lines of DPOTrainer._compute_loss that compute
    them) and of the reference (TRL's own compute_ref_log_probs)."""
    kwargs = {k: v for k, v in inputs.items() if k not in ("completion_mask", "ref_chosen_logps", "ref_rejected_logps")}
    labels = inputs["input_ids"].masked_fill(inputs["completion_mask"] == 0, -100)
    with torch.no_grad():
        out = trainer.model(**kwargs, use_cache=False, labels=labels, fused_lm_head=True)
        policy = out.log_probs[:, -(labels.shape[1] - 1):].sum(dim=1)
        ref_chosen, ref_rejected = trainer.compute_ref_log_probs(trainer.model, inputs)
    return policy.numpy(), torch.cat([ref_chosen, ref_rejected]).numpy()


def trl_tokenize(rows: Sequence[Mapping[str, Any]], tokenizer: Any, *,
                 max_length: int | None = 1024) -> list[tuple[list[int], list[int], list[int]]]:
    """(prompt_ids, chosen_ids, rejected_ids) per row as TRL's DPOTrainer._prepare_dataset makes them from a
    standard or conversational, explicit- or implicit-prompt preference dataset (rows in TRL's own shapes, all of
    one shape: TRL decides the shape from the first row).

    Runs that method itself (unbound, on a stand-in that supplies the tokenizer it reads), so implicit-prompt
    extraction, the EOS string TRL appends to text completions, chat templating, the common-prefix split and
    the keep_start filter (rows whose prompt alone reaches max_length are dropped) are TRL's."""
    from datasets import Dataset
    from trl import DPOTrainer

    stand_in = types.SimpleNamespace(_tokenizer=tokenizer)
    args = types.SimpleNamespace(dataset_num_proc=None, max_length=max_length, truncation_mode="keep_start")
    dataset = Dataset.from_list([dict(r) for r in rows])
    out = DPOTrainer._prepare_dataset(stand_in, dataset, tokenizer, args, "reference")
    return [(r["prompt_ids"], r["chosen_ids"], r["rejected_ids"]) for r in out]
