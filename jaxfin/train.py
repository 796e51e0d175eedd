"""`python -m jaxfin.train`: LoRA + NEFTune instruction fine-tuning (training/sft.py) from a config file.

    python -m jaxfin.train --config configs/lora_neftune.py --config.lora.rank=32

Without --config it runs the embedded tiny default (configs/tiny.py). Rerunning with the same workdir resumes.
"""

from __future__ import annotations

import sys
import time
from typing import Sequence

from jaxfin import config_flags
from jaxfin.errors import UserError, run_cli
from jaxfin.evaluation import report
from jaxfin.training import defaults, sft


def main(argv: Sequence[str]) -> int:
    if "--help" in argv or "-h" in argv:
        print(config_flags.usage("python -m jaxfin.train", __doc__.split("\n")[0].split(": ", 1)[1],
                                 "configs/tiny.py, the embedded tiny run"))
        return 0
    config, rest = config_flags.parse_args(argv, defaults.tiny)
    if rest:
        raise UserError(f"unexpected argument {rest[0]!r} (usage: --config FILE --config.KEY=VALUE ...)")
    t0 = time.perf_counter()
    out = sft.run(config)
    if "stopped" in out:
        print(f"stopped at step {out['step']}: checkpoint saved in {config.workdir}; run the same command to "
              f"continue", file=sys.stderr)
        return out["stopped"]
    rows = out["metrics"]
    scores = f"; eval {report.summary_line('fire', out['eval'])}" if out.get("eval") else ""
    if rows:
        loss = lambda r: "nan" if r["loss"] is None else f"{r['loss']:.4f}"  # noqa: E731
        print(f"trained to step {out['step']} in {time.perf_counter() - t0:.1f} s: loss {loss(rows[0])} "
              f"(step {rows[0]['step']}) -> {loss(rows[-1])} (step {rows[-1]['step']}){scores}; workdir "
              f"{config.workdir}")
    elif scores:
        print(f"already trained to step {out['step']}{scores}; workdir {config.workdir}")
    return 0


if __name__ == "__main__":
    run_cli(main)
