"""`python -m jaxfin.dpo`: DPO with a small LoRA on preference pairs (training/dpo.py) from a config file.

    python -m jaxfin.dpo --config configs/dpo.py --config.model.path=runs/lora_neftune --config.data.pairs=pairs.jsonl

Without --config it runs jaxfin/training/defaults.py dpo() (configs/dpo.py uses the paper's beta 1.0). Rerunning
with the same workdir resumes.
"""

from __future__ import annotations

import sys
import time
from typing import Sequence

from jaxfin import config_flags
from jaxfin.errors import UserError, run_cli
from jaxfin.evaluation import report
from jaxfin.training import defaults, dpo


def main(argv: Sequence[str]) -> int:
    if "--help" in argv or "-h" in argv:
        print(config_flags.usage("python -m jaxfin.dpo", __doc__.split("\n")[0].split(": ", 1)[1],
                                 "jaxfin/training/defaults.py dpo()"))
        return 0
    config, rest = config_flags.parse_args(argv, defaults.dpo)
    if rest:
        raise UserError(f"unexpected argument {rest[0]!r} (usage: --config FILE --config.KEY=VALUE ...)")
    t0 = time.perf_counter()
    out = dpo.run(config)
    if "stopped" in out:
        print(f"stopped at step {out['step']}: checkpoint saved in {config.workdir}; run the same command to "
              f"continue", file=sys.stderr)
        return out["stopped"]
    rows = out["metrics"]
    if rows:
        show = lambda r, k: "nan" if r.get(k) is None else f"{r[k]:.4f}"  # noqa: E731
        print(f"trained to step {out['step']} in {time.perf_counter() - t0:.1f} s: loss {show(rows[0], 'loss')} -> "
              f"{show(rows[-1], 'loss')}, rewards/margins {show(rows[0], 'rewards/margins')} -> "
              f"{show(rows[-1], 'rewards/margins')}; workdir {config.workdir}")
    for name, after in (out.get("eval") or {}).items():
        before = (out.get("baseline") or {}).get(name)
        if before:
            print("\n".join(report.comparison([("before DPO", before), ("after DPO", after)])))
    return 0


if __name__ == "__main__":
    run_cli(main)
