"""`python -m jaxfin.transfer`: the task-transfer matrix (jaxfin/recipes/transfer.py): an adapter trained on each
task, the base and every adapter evaluated on every task, matrix.json / matrix.md / matrix.png in OUT.

    python -m jaxfin.transfer --config configs/smollm2_finllm.py --tasks fpb,fiqasa,headlines,finben_ner
                              [--out DIR] [--split valid|test] [--config.KEY=VALUE ...]
"""

from __future__ import annotations

import os
from typing import Sequence

from jaxfin import config_flags, errors
from jaxfin.errors import run_cli
from jaxfin.evaluation import suite
from jaxfin.recipes import transfer
from jaxfin.training import defaults

PROG = "python -m jaxfin.transfer"

def main(argv: Sequence[str]) -> int:
    if "--help" in argv or "-h" in argv:
        print(f"usage: {PROG} --config FILE --tasks NAME,NAME[,...] [--out DIR] [--split valid|test] "
              f"[--config.KEY=VALUE ...]\n\n{__doc__.split(chr(10) * 2)[0]}\n\n"
              "  --tasks      the tasks (one adapter each; the base and every adapter evaluated on all of them)\n"
              "  --out        output folder (default: the config's workdir)\n"
              "  --split      evaluation split (default valid)\n"
              "  --debug      show the traceback of an error")
        return 0
    config, rest = config_flags.parse_args(argv, defaults.tiny)
    parser = errors.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", required=True, help="comma-separated task names")
    parser.add_argument("--out", help="output folder (default: the config's workdir)")
    parser.add_argument("--split", default="valid", choices=suite.SPLITS, help="evaluation split (default valid)")
    args = parser.parse_args(rest)
    out = args.out or config.workdir
    transfer.run(config, suite.task_names(args.tasks), out, args.split)
    print(f"transfer matrix -> {os.path.join(out, 'matrix.md')}")
    return 0


if __name__ == "__main__":
    run_cli(main)
