"""Convert model weights between Hugging Face transformers directories and jaxfin checkpoints.

  python tools/convert_weights.py to-jax --hf-dir HF_DIR --out CKPT_DIR [--dtype bfloat16|float32] [--overwrite]
  python tools/convert_weights.py to-hf --checkpoint PATH --out HF_DIR [--dtype bfloat16|float32] [--overwrite]

to-jax writes a jaxfin checkpoint (orbax params + model config + tokenizer files); to-hf writes safetensors shards
(<= 5 GB each) + index, config.json, generation_config.json and the tokenizer files, loadable by
transformers.AutoModelForCausalLM.from_pretrained. PATH may be an HF directory, a jaxfin checkpoint or a training
workdir. --dtype defaults to the dtype stored in the source. A thin layer over jaxfin.convert / jaxfin.checkpoint.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from jaxfin import checkpoint, convert
from jaxfin.errors import UserError, run_cli

DTYPES = ("bfloat16", "float32", "float16")


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python tools/convert_weights.py", description=__doc__.split("\n")[0],
                                epilog="--debug shows the traceback of an error")
    sub = p.add_subparsers(dest="command", required=True, metavar="{to-jax,to-hf}")
    jax_p = sub.add_parser("to-jax", help="HF model directory -> jaxfin checkpoint")
    jax_p.add_argument("--hf-dir", required=True, help="transformers model directory (config.json + safetensors)")
    hf_p = sub.add_parser("to-hf", help="jaxfin checkpoint / HF dir / training workdir -> HF model directory")
    hf_p.add_argument("--checkpoint", required=True, help="jaxfin checkpoint, HF model dir or training workdir")
    for q in (jax_p, hf_p):
        q.add_argument("--out", required=True, help="output directory (must be empty or absent)")
        q.add_argument("--dtype", choices=DTYPES, default=None, help="param dtype (default: as stored)")
        q.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    return p.parse_args(argv)


def check_out(out: str, overwrite: bool) -> None:
    """Refuses an existing non-empty --out (or a file) unless --overwrite."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise UserError(f"--out {out}: exists and is not a directory")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise UserError(f"--out {out}: directory is not empty (pass --overwrite to replace it)")


def to_jax(args: argparse.Namespace) -> None:
    params, cfg, hf_config = convert.load_hf(args.hf_dir, dtype=args.dtype, progress=True)
    print(f"writing jaxfin checkpoint {args.out}", file=sys.stderr)
    checkpoint.save_model(args.out, params, cfg, hf_config=hf_config,
                          generation_config=convert.read_generation_config(args.hf_dir),
                          tokenizer_files=convert.tokenizer_files(args.hf_dir),
                          source=str(Path(args.hf_dir).absolute()))


def to_hf(args: argparse.Namespace) -> None:
    model = checkpoint.load_model(args.checkpoint, dtype=args.dtype, progress=True)
    if model.lora is not None:
        raise UserError(f"{args.checkpoint}: has LoRA adapters; exporting them (merged or as a PEFT adapter) is "
                        f"not supported yet, and writing the base alone would drop them")
    convert.save_hf(args.out, model.params, model.cfg, hf_config=model.hf_config,
                    generation_config=model.generation_config or None, tokenizer_files=model.tokenizer_files(),
                    progress=True)


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    check_out(args.out, args.overwrite)
    {"to-jax": to_jax, "to-hf": to_hf}[args.command](args)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    run_cli(main)
