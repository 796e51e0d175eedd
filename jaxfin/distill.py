"""`python -m jaxfin.distill`: one round of self-distillation (jaxfin/recipes/distill.py) from a config file.

    python -m jaxfin.distill --config configs/distill.py --config.distill.max_examples=100

Writes WORKDIR/samples.jsonl, sft.jsonl, pairs.jsonl and stats.json; rerunning with the same workdir continues
the sampling where it stopped. Keys: jaxfin/training/defaults.py (`distill()`).
"""

from __future__ import annotations

from typing import Sequence

from jaxfin import config_flags
from jaxfin.errors import UserError, run_cli
from jaxfin.recipes import distill
from jaxfin.training import defaults


def main(argv: Sequence[str]) -> int:
    if "--help" in argv or "-h" in argv:
        print(config_flags.usage("python -m jaxfin.distill", __doc__.split("\n")[0].split(": ", 1)[1],
                                 "jaxfin/training/defaults.py distill(), which needs --config.model.path"))
        return 0
    config, rest = config_flags.parse_args(argv, defaults.distill)
    if rest:
        raise UserError(f"unexpected argument {rest[0]!r} (usage: --config FILE --config.KEY=VALUE ...)")
    s = distill.run(config)
    print(f"distill: {s['n_kept']}/{s['n_questions']} prompts kept (parse rate {s['parse_rate']:.2%}, mean "
          f"agreement {s['mean_agreement']:.2f}), {s['n_pairs']} pairs -> {config.workdir}")
    if s["pseudo_label_accuracy"] is not None:
        print(f"distill: pseudo-label accuracy {s['pseudo_label_accuracy']:.2%} against the file's labels "
              f"(single-sample accuracy {s['sample_accuracy']:.2%})")
    return 0


if __name__ == "__main__":
    run_cli(main)
