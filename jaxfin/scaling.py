"""`python -m jaxfin.scaling`: the data scaling law (1 − F1) = A · d^−α of a fine-tuning config (recipes/scaling.py).

    python -m jaxfin.scaling --config CONFIG --fractions 0.125,0.25,0.5,1 [--seeds 0,1] [--task NAME] [--out DIR]
                             [--config.KEY=VALUE ...]
    python -m jaxfin.scaling --fit-only POINTS.json [--out DIR]

The first trains and evaluates one run per (fraction, seed) on nested subsets of the training data (finished
points reused on a rerun) and fits them all; the second fits given points (a JSON list of {"n_examples", "f1"}
objects, e.g. a points.json or fit.json's "points"). Both write OUT/fit.json and OUT/fit.png (--out default: the
config's workdir, or the folder of POINTS.json).
"""

from __future__ import annotations

import os
from typing import Sequence

from jaxfin import config_flags, errors
from jaxfin.errors import UserError, run_cli
from jaxfin.recipes import scaling


def _split(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """(the --config / --config.KEY arguments with their values, the rest)."""
    config, rest, args = [], [], list(argv)
    while args:
        arg = args.pop(0)
        if arg == "--config" or (arg.startswith("--config.") and "=" not in arg):
            config += [arg] + args[:1]
            args = args[1:]
        elif arg.startswith("--config=") or arg.startswith("--config."):
            config.append(arg)
        else:
            rest.append(arg)
    return config, rest


def parse_args(argv: Sequence[str]):
    p = errors.ArgumentParser(prog="python -m jaxfin.scaling", description=__doc__.split("\n")[0],
                              epilog="--config FILE and --config.KEY=VALUE as in python -m jaxfin.train; --debug "
                                     "shows the traceback of an error")
    p.add_argument("--fractions", help="comma list of training-set fractions in (0, 1], e.g. 0.125,0.25,0.5,1")
    p.add_argument("--seeds", default="0", help="comma list of seeds (each: a permutation and a training seed)")
    p.add_argument("--task", help="the task to train and evaluate (default: the config's; fire)")
    p.add_argument("--out", help="output folder (default: the config's workdir)")
    p.add_argument("--fit-only", metavar="POINTS.json", help="fit these points; no training, no config")
    return p.parse_args(argv)


def main(argv: Sequence[str]) -> int:
    if "--help" in argv or "-h" in argv:
        head, _, body = __doc__.partition("\n\n")
        print("usage: python -m jaxfin.scaling --config CONFIG --fractions F,F,... [--seeds S,...] [--task NAME] "
              "[--out DIR] [--config.KEY=VALUE ...]\n       python -m jaxfin.scaling --fit-only POINTS.json "
              f"[--out DIR]\n\n{head.split(': ', 1)[1]}\n\n{body.split(chr(10) + chr(10), 1)[1]}")
        return 0
    config_args, rest = _split(argv)
    args = parse_args(rest)
    if args.fit_only is not None:
        extra = [flag for flag, v in (("--config", config_args), ("--fractions", args.fractions),
                                      ("--task", args.task)) if v]
        if extra:
            raise UserError(f"--fit-only fits given points; {extra[0]} does not apply (see --help)")
        out = args.out or os.path.dirname(os.path.abspath(args.fit_only))
        result = scaling.fit_and_plot(scaling.read_points(args.fit_only), out)
    else:
        if not any(a == "--config" or a.startswith("--config=") for a in config_args):
            raise UserError("--config FILE is required (or --fit-only POINTS.json) (see python -m jaxfin.scaling "
                            "--help)")
        if args.fractions is None:
            raise UserError("--fractions is required, e.g. --fractions 0.125,0.25,0.5,1")
        fractions = scaling.parse_list(args.fractions, float, "--fractions")
        seeds = scaling.parse_list(args.seeds, int, "--seeds")
        scaling.check_grid(fractions, seeds)  # before the config is loaded: a typo fails at once
        config, _ = config_flags.parse_args(config_args, lambda: None)
        out = args.out or config.workdir
        result = scaling.run(config, fractions=fractions, seeds=seeds, out=out, task=args.task)
    print(f"scaling: {scaling.summary(result)} -> {os.path.join(out, scaling.FIT)}, {scaling.PLOT}")
    return 0


if __name__ == "__main__":
    run_cli(main)
