"""`python -m jaxfin.profile`: throughput of the real train step and decoder at a config's model shape, with
random weights: tokens/s, MFU, decode roofline fraction, and transformers + peft on the same device in the same run
(jaxfin/perf/profile.py).

    python -m jaxfin.profile --config configs/lora_neftune.py --random-weights --config.train.seq_len=1024 \
        --out benchmarks/results/ [--trace /tmp/trace]     # -> nvidia-h100-80gb-hbm3_deepseek-r1-distill-llama-8b.json
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any, Sequence

from jaxfin import config_flags, errors, validate
from jaxfin.errors import UserError, run_cli
from jaxfin.io.files import check_writable, write_text
from jaxfin.perf import profile
from jaxfin.training import defaults


def parse(argv: Sequence[str]) -> tuple[Any, argparse.Namespace]:
    """(config, options) of the command line, checked; the variants' keys and values too (profile.check_variants),
    so a mistake fails before anything runs."""
    config, rest = config_flags.parse_args(argv, defaults.tiny)
    p = errors.ArgumentParser(prog="python -m jaxfin.profile", description="Throughput, MFU and decode roofline "
                                "of the train step and decoder at the config's model shape, beside transformers.")
    p.add_argument("--random-weights", action="store_true", help="random base weights (required: nothing is read)")
    p.add_argument("--out", help="result JSON file, or a folder (ending in /) for FOLDER/<device>_<model>.json; "
                                 "an existing file is kept unless --overwrite")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file (e.g. a tracked result)")
    p.add_argument("--trace", help="write a jax.profiler trace of 3 train steps to this directory")
    p.add_argument("--steps", type=int, default=20, help="timed train steps (default 20)")
    p.add_argument("--warmup", type=int, default=2, help="untimed train steps after compilation (default 2)")
    p.add_argument("--decode-prompt-len", type=int, default=128)
    p.add_argument("--decode-new-tokens", type=int, default=128)
    p.add_argument("--decode-runs", type=int, default=3, help="timed decode runs per batch size (default 3)")
    p.add_argument("--devices", type=int, default=0, help="use the first N devices (default: all)")
    p.add_argument("--skip-peer", action="store_true", help="do not run transformers + peft")
    p.add_argument("--skip-decode", action="store_true", help="do not time the decoder (its section is null)")
    p.add_argument("--variant", dest="variants", action="append", default=[], metavar="KEY=VALUE[,KEY=VALUE...]",
                   help="also time the train step with these config overrides (repeatable; e.g. "
                        "model.remat=proj,model.lora_impl=fused): results under \"variants\"")
    opts = p.parse_args(rest)
    if not opts.random_weights:
        raise UserError("--random-weights is required: the profile times random weights at the config's shape "
                        "(speed does not depend on the values, and nothing is downloaded)")
    for flag in ("steps", "decode_prompt_len", "decode_new_tokens", "decode_runs"):
        if getattr(opts, flag) < 1:
            raise UserError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(opts, flag)}")
    if opts.warmup < 0 or opts.devices < 0:
        raise UserError("--warmup and --devices must be >= 0")
    validate.check(config, workdir=False)
    profile.model_config(config, profile.resolve_model(config.model.path)[1])
    profile.check_variants(config, opts.variants)
    return config, opts


def main(argv: Sequence[str]) -> int:
    config, opts = parse(argv)
    # Before JAX creates its GPU client: grow the pool on demand, so the peer can use the device first.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    path = None
    if opts.out:  # checked before the profile runs, not after it
        path = profile.output_path(config, opts)
        if os.path.isfile(path) and not opts.overwrite:
            raise UserError(f"--out {path}: the file exists (pass --overwrite to replace it, or name another file)")
        check_writable(path, name=f"--out {path}")
    written: list[str] = []

    def write(result: dict) -> None:  # after each measurement, so a run cut short keeps what it measured
        write_text(path, json.dumps(result, indent=2) + "\n")
        written[:] = [path]

    result = profile.run(config, opts, profile.config_string(argv), on_update=write if opts.out else None)
    print(profile.table(result))
    if written:
        print(f"wrote {written[0]}")
    return 0


if __name__ == "__main__":
    run_cli(main)
