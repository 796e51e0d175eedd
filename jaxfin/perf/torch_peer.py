"""The peer that `python -m jaxfin.profile` compares against: the same LoRA (+ NEFTune) training step with
transformers + peft, and transformers `generate`, on the same device, at the same shapes.

    python -m jaxfin.perf.torch_peer SPEC.json OUT.json      (run by jaxfin.profile, one child process per run)

It runs in its own process, which never imports JAX (and jaxfin.profile never imports torch): torch and XLA each
keep a GPU memory pool that they do not give back while the process lives, and each loads its own CUDA
libraries. jaxfin.profile starts the child before JAX allocates anything, so each side has the device in turn.
torch, transformers and peft are test extras, imported only inside the child's functions.

The step mirrors jaxfin.training.step.train_step with losses.sft_loss: peft LoRA (same rank, alpha, rsLoRA,
dropout, targets; adapters in f32 as peft's `autocast_adapter_dtype` keeps them), NEFTune noise on the input
embeddings in training, the packed rows given as `position_ids` (transformers then masks attention per segment,
with sdpa), gradient accumulation over the same micro-batches, gradient clipping and AdamW; gradient checkpointing
when jaxfin remats. """

from __future__ import annotations

import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable

import numpy as np


def launch(spec: dict, batch_np: dict[str, np.ndarray], platform: str) -> tuple[dict | None, str | None]:
    """Runs this module in a child process on the device JAX uses. Returns (its result or None, a note)."""
    if platform not in ("gpu", "cpu"):
        return None, f"peer null: transformers + peft run on CUDA GPUs or CPUs here, not on {platform}"
    missing = [m for m in ("torch", "peft", "transformers") if importlib.util.find_spec(m) is None]
    if missing:
        return None, f"peer null: {', '.join(missing)} not installed (pip install -e '.[test]')"
    with tempfile.TemporaryDirectory(prefix="jaxfin_peer_") as tmp:
        spec = {**spec, "device": "cuda" if platform == "gpu" else "cpu", "batch_npz": os.path.join(tmp, "b.npz")}
        np.savez(spec["batch_npz"], **batch_np)
        spec_path, out_path = os.path.join(tmp, "spec.json"), os.path.join(tmp, "out.json")
        with open(spec_path, "w") as f:
            json.dump(spec, f)
        print("peer: transformers + peft in a child process", file=sys.stderr)
        proc = subprocess.run([sys.executable, "-m", "jaxfin.perf.torch_peer", spec_path, out_path],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            return None, f"peer null: the transformers run failed (exit {proc.returncode}): {last}"
        with open(out_path) as f:
            return json.load(f), None


# --------------------------------------------------------------------------------------------------------------
# The child process.


def _timed(fn: Callable[[], Any], device: Any, warmup: int, runs: int) -> list[float]:
    """Wall times of `runs` calls of fn after `warmup` untimed ones, the device drained around each."""
    import torch

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = []
    for i in range(warmup + runs):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times


def build_model(hf_config: dict, dtype: Any, device: Any, seed: int) -> Any:
    """A randomly initialised transformers causal LM from a config.json dict, sdpa attention, on `device`."""
    import torch
    import transformers

    fields = {k: v for k, v in hf_config.items() if k not in ("torch_dtype", "dtype", "transformers_version")}
    config = transformers.AutoConfig.for_model(fields.pop("model_type"), **fields)
    torch.manual_seed(seed)
    with torch.device(device):  # initialise in place: an 8B model never passes through host memory
        return transformers.AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa")


def neftune_hook(alpha: float) -> Callable:
    """Forward hook on the input embedding: + U(-1, 1) * alpha / sqrt(T * D) in training (Jain et al. 2023, as
    transformers' neftune_post_forward_hook computes it)."""
    import torch

    def hook(module: Any, args: Any, output: Any) -> Any:
        if not module.training:
            return output
        mag = alpha / (output.shape[1] * output.shape[2]) ** 0.5
        return output + torch.zeros_like(output).uniform_(-mag, mag)

    return hook


def time_generate(model: Any, vocab: int, batch: int, prompt_len: int, new_tokens: int, runs: int,
                  device: Any) -> float:
    """Median tokens/s of greedy `generate` (prefill included) producing exactly `new_tokens` per row."""
    import torch

    g = torch.Generator().manual_seed(batch)
    ids = torch.randint(0, vocab, (batch, prompt_len), generator=g).to(device)
    mask = torch.ones_like(ids)

    def run() -> None:
        with torch.inference_mode():
            model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=new_tokens,
                           min_new_tokens=new_tokens, pad_token_id=0)

    return batch * new_tokens / statistics.median(_timed(run, device, 1, runs))


def time_train(model: Any, spec: dict, device: Any) -> tuple[float, float, float]:
    """(median step seconds, tokens/s, last micro-batch loss) of the LoRA step on the spec's packed batch."""
    import peft
    import torch

    lo, o, A = spec["lora"], spec["optim"], spec["grad_accum"]
    if spec["gradient_checkpointing"]:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = peft.get_peft_model(model, peft.LoraConfig(
        r=lo["rank"], lora_alpha=lo["alpha"], use_rslora=lo["rslora"], lora_dropout=lo["dropout"],
        target_modules=list(lo["targets"]), bias="none", task_type="CAUSAL_LM"))
    if spec["neftune_alpha"] > 0:
        model.get_input_embeddings().register_forward_hook(neftune_hook(spec["neftune_alpha"]))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=o["lr"], betas=(o["b1"], o["b2"]), weight_decay=o["weight_decay"])
    data = np.load(spec["batch_npz"])
    tokens = torch.from_numpy(data["tokens_BT"].astype(np.int64)).to(device)
    positions = torch.from_numpy(data["positions_BT"].astype(np.int64)).to(device)
    losses = []

    def step() -> None:
        for a in range(A):  # micro-batch a = rows a, a + A, ..., as jaxfin.train.micro_batches splits them
            ids, pos = tokens[a::A], positions[a::A]
            loss = model(input_ids=ids, position_ids=pos, labels=ids).loss
            (loss / A).backward()
            losses.append(float(loss.detach()))
        torch.nn.utils.clip_grad_norm_(params, o["clip_norm"])
        opt.step()
        opt.zero_grad(set_to_none=True)

    dt = statistics.median(_timed(step, device, spec["warmup"], spec["steps"]))
    return dt, tokens.numel() / dt, losses[-1]


def run(spec: dict) -> dict:
    """Decoding with the base model first (generate at each batch size), then the LoRA train step."""
    import torch

    device = torch.device(spec["device"])
    model = build_model(spec["hf_config"], getattr(torch, spec["dtype"]), device, spec["seed"])
    out: dict[str, Any] = {"device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                           "torch": torch.__version__}
    model.eval()
    model.generation_config.eos_token_id = None  # random weights: never stop early
    d = spec["decode"]
    for b in d["batches"]:
        out[f"decode_batch_{b}_tokens_per_sec"] = time_generate(
            model, spec["hf_config"]["vocab_size"], b, d["prompt_len"], d["new_tokens"], d["runs"], device)
    step_s, tps, loss = time_train(model, spec, device)
    out.update(train_step_time_s=step_s, train_tokens_per_sec=tps, train_loss=loss)
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m jaxfin.perf.torch_peer SPEC.json OUT.json", file=sys.stderr)
        return 2
    with open(argv[0]) as f:
        spec = json.load(f)
    result = run(spec)
    with open(argv[1], "w") as f:
        json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
