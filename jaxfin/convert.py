"""Convert model weights and LoRA adapters between Hugging Face transformers / PEFT / GGUF and jaxfin
(`python tools/convert_weights.py ...` or `python -m jaxfin.convert ...`).

  python tools/convert_weights.py to-jax  (--hf-dir HF_DIR | --gguf FILE) [--peft-adapter DIR] --out CKPT [--dtype D]
  python tools/convert_weights.py to-hf   --checkpoint PATH --out HF_DIR [--merge-lora] [--dtype D]
  python tools/convert_weights.py to-peft --checkpoint PATH --out ADAPTER_DIR
  python tools/convert_weights.py to-gguf --checkpoint PATH --out FILE.gguf [--merge-lora] [--dtype f32|f16|bf16|q8_0]

to-jax writes a jaxfin checkpoint (orbax params + model config + tokenizer files), with --peft-adapter also the
adapter (a PEFT LoRA adapter for HF_DIR) and its LoRA config. to-hf writes safetensors shards (<= 5 GB each) +
index, config.json, generation_config.json and the tokenizer files, loadable by
transformers.AutoModelForCausalLM.from_pretrained; with --merge-lora the adapters are folded in (W + scale * A B
in f32, rounded once to the output dtype), without it the base alone is written (with a note). to-peft writes
adapter_config.json + adapter_model.safetensors (f32) for peft.PeftModel.from_pretrained. to-gguf writes one GGUF
file that llama.cpp / Ollama run: tokenizer, special ids and chat template embedded, tensors in f32, f16, bf16 or
q8_0 (default: the source's float dtype). PATH may be an HF directory or GGUF file (to-hf / to-gguf), a jaxfin
checkpoint or a training workdir (its latest checkpoint). --dtype defaults to the dtype stored in the source.
Every command refuses a non-empty --out unless --overwrite. A thin layer over jaxfin.io (hf, gguf, store, peft) and
model.lora.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import jax

from jaxfin import errors
from jaxfin.errors import UserError, run_cli
from jaxfin.io import gguf_write, hf, peft, store
from jaxfin.io.files import check_writable
from jaxfin.model import lora

DTYPES = ("bfloat16", "float32", "float16")
GGUF_DTYPES = {"f32": "float32", "f16": "float16", "bf16": "bfloat16", "q8_0": None}


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = errors.ArgumentParser(prog="python tools/convert_weights.py", description=__doc__.split("\n")[0],
                                epilog="--debug shows the traceback of an error")
    sub = p.add_subparsers(dest="command", required=True, metavar="{to-jax,to-hf,to-peft,to-gguf}")
    jax_p = sub.add_parser("to-jax", help="HF model directory or GGUF file (+ PEFT LoRA adapter) -> jaxfin checkpoint")
    source = jax_p.add_mutually_exclusive_group(required=True)
    source.add_argument("--hf-dir", help="transformers model directory (config.json + safetensors)")
    source.add_argument("--gguf", help="GGUF file (llama / qwen2 / qwen3; F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, "
                                       "Q5_K, Q6_K tensors, dequantised)")
    jax_p.add_argument("--peft-adapter", default=None, help="PEFT LoRA adapter directory for the model to import too")
    hf_p = sub.add_parser("to-hf", help="jaxfin checkpoint / HF dir / training workdir -> HF model directory")
    hf_p.add_argument("--checkpoint", required=True, help="jaxfin checkpoint, HF model dir or training workdir")
    hf_p.add_argument("--merge-lora", action="store_true", help="fold the LoRA adapters into the weights")
    peft_p = sub.add_parser("to-peft", help="jaxfin checkpoint with adapters / training workdir -> PEFT adapter")
    peft_p.add_argument("--checkpoint", required=True, help="jaxfin checkpoint with adapters or training workdir")
    gguf_p = sub.add_parser("to-gguf", help="jaxfin checkpoint / HF dir / GGUF / training workdir -> GGUF file")
    gguf_p.add_argument("--checkpoint", required=True, help="jaxfin checkpoint, HF model dir, GGUF or training workdir")
    gguf_p.add_argument("--merge-lora", action="store_true", help="fold the LoRA adapters into the weights")
    gguf_p.add_argument("--dtype", choices=tuple(GGUF_DTYPES), default=None,
                        help="tensor type of the 2-D weights (default: the source's f32 / f16 / bf16)")
    for q in (jax_p, hf_p):
        q.add_argument("--dtype", choices=DTYPES, default=None, help="param dtype (default: as stored)")
    for q in (jax_p, hf_p, peft_p):
        q.add_argument("--out", required=True, help="output directory (must be empty or absent)")
        q.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    gguf_p.add_argument("--out", required=True, help="output .gguf file (must not exist)")
    gguf_p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    return p.parse_args(argv)


def check_out(out: str, overwrite: bool, inputs: Sequence[str | None] = (), file: bool = False) -> None:
    """Refuses an existing non-empty --out (or a file) unless --overwrite, and an --out that is or holds an input
    (replacing it would delete what is being read). `file`: --out names a file (to-gguf), not a directory."""
    path = Path(out)
    for src in filter(None, inputs):
        if path.resolve() == Path(src).resolve() or path.resolve() in Path(src).resolve().parents:
            raise UserError(f"--out {out}: would replace the input {src}; choose another "
                            f"{'file' if file else 'directory'}")
    if file:
        if not out.lower().endswith(".gguf"):
            raise UserError(f"--out {out}: a GGUF file name ends in .gguf")
        if path.is_dir():
            raise UserError(f"--out {out}: is a directory, expected a .gguf file name")
        if path.exists() and not overwrite:
            raise UserError(f"--out {out}: file exists (pass --overwrite to replace it)")
        check_writable(out, name=f"--out {out}")
        return
    if path.exists() and not path.is_dir():
        raise UserError(f"--out {out}: exists and is not a directory")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise UserError(f"--out {out}: directory is not empty (pass --overwrite to replace it)")
    check_writable(out, folder=True, name=f"--out {out}")


def to_jax(args: argparse.Namespace) -> None:
    if args.peft_adapter:
        peft.read_config(args.peft_adapter)  # refuse an unsupported adapter before reading the model
    if args.gguf:
        model = store.load(args.gguf, dtype=args.dtype, progress=True)
        params, cfg, hf_config, generation_config = model.params, model.cfg, model.hf_config, model.generation_config
        tokenizer_files = model.tokenizer_files()
    else:
        params, cfg, hf_config = hf.load_hf(args.hf_dir, dtype=args.dtype, progress=True)
        generation_config, tokenizer_files = hf.read_generation_config(args.hf_dir), hf.tokenizer_files(args.hf_dir)
    source = str(Path(args.hf_dir or args.gguf).absolute())
    adapters = lcfg = base_id = None
    if args.peft_adapter:
        adapters, lcfg, base_id = peft.load(args.peft_adapter, cfg)
        adapters = jax.device_put(adapters)
        print(f"LoRA adapter {args.peft_adapter}: rank {lcfg.rank}, alpha {lcfg.alpha:g}"
              f"{' (rsLoRA)' if lcfg.rslora else ''}, targets {','.join(lcfg.targets)}", file=sys.stderr)
    print(f"writing jaxfin checkpoint {args.out}", file=sys.stderr)
    # The adapter's own base id (usually a hub id) is what a later PEFT export should record.
    store.save_model(args.out, params, cfg, hf_config=hf_config, generation_config=generation_config,
                     tokenizer_files=tokenizer_files, lora=adapters, lora_config=lcfg,
                     source=source, base_model_name_or_path=base_id or source)


def _export_params(args: argparse.Namespace, rounds_later: bool) -> tuple[store.Model, dict]:
    """The model of --checkpoint and the params to export: the adapters merged with --merge-lora (computed in f32
    and rounded once: to the stored dtype, or, when the writer rounds later, loaded as f32 and rounded there)."""
    model = store.load(args.checkpoint, dtype="float32" if args.merge_lora and rounds_later else None, progress=True)
    params = model.params
    if args.merge_lora:
        if model.lora is None:
            raise UserError(f"{args.checkpoint}: --merge-lora given, but the model has no LoRA adapters")
        params = lora.merge_by_layer(params, model.lora, model.lora_config)
        print(f"merged LoRA adapters ({','.join(model.lora_config.targets)}, scale "
              f"{model.lora_config.scale:g}) into the {model.cfg.dtype} weights", file=sys.stderr)
    elif model.lora is not None:
        print(f"note: {args.checkpoint} has LoRA adapters, which are not merged; writing the base model alone "
              f"(use --merge-lora, or to-peft for the adapter)", file=sys.stderr)
    return model, params


def to_hf(args: argparse.Namespace) -> None:
    model, params = _export_params(args, rounds_later=args.dtype is not None)
    hf.save_hf(args.out, params, model.cfg, hf_config=model.hf_config,
               generation_config=model.generation_config or None, tokenizer_files=model.tokenizer_files(),
               dtype=args.dtype, progress=True)


def to_peft(args: argparse.Namespace) -> None:
    adapters, lcfg, _, base_id = store.load_adapters(args.checkpoint)
    peft.save(args.out, adapters, lcfg, base_model_name_or_path=base_id)
    print(f"LoRA adapter: rank {lcfg.rank}, alpha {lcfg.alpha:g}{' (rsLoRA)' if lcfg.rslora else ''}, targets "
          f"{','.join(lcfg.targets)}, base {base_id}", file=sys.stderr)


def to_gguf(args: argparse.Namespace) -> None:
    # The writer rounds to the GGUF tensor type, so a merge is computed in f32 and rounded once there.
    model, params = _export_params(args, rounds_later=True)
    dtype = args.dtype or {v: k for k, v in GGUF_DTYPES.items() if v}.get(str(params["embed_VD"].dtype), "f32")
    try:
        gguf_write.write_gguf(args.out, params, model.cfg, hf_config=model.hf_config,
                              tokenizer_files=model.tokenizer_files(), generation_config=model.generation_config,
                              dtype=dtype, progress=True)
    except ValueError as e:  # what GGUF cannot hold (a tokenizer that is not byte-level BPE, a RoPE kind)
        raise UserError(f"{args.checkpoint}: cannot write GGUF: {e}") from None


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    inputs = [getattr(args, k, None) for k in ("hf_dir", "gguf", "peft_adapter", "checkpoint")]
    check_out(args.out, args.overwrite, inputs, file=args.command == "to-gguf")
    {"to-jax": to_jax, "to-hf": to_hf, "to-peft": to_peft, "to-gguf": to_gguf}[args.command](args)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    run_cli(main)
