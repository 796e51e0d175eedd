"""The training log: metrics.jsonl (appended, never rewritten; see io/workdir.read_metrics), TensorBoard scalars
and the tqdm bar, with the count of steps the NaN/Inf guard skipped; evaluation scores go to both as well
(log_eval: a row {"step", "eval": {...}} and scalars eval/<metric>)."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any

import jax
from tensorboardX import SummaryWriter
from tqdm import tqdm

from jaxfin.io import workdir
from jaxfin.io.files import writing


class MetricsLog:
    """metrics.jsonl, TensorBoard scalars and the tqdm bar; files on process 0 only. Counts the steps skipped by
    the NaN/Inf guard: `nonfinite_steps` in every row is the run's total so far (kept across resumes in the
    checkpoints), and `consecutive` the current streak."""

    def __init__(self, wd: str, first: int, total: int, every: int, nonfinite: int = 0):
        self.every, self.total, self.rows = max(every, 1), total, []
        self.nonfinite, self.consecutive = nonfinite, 0
        self.main = jax.process_index() == 0
        self.bar = tqdm(total=total, initial=first, desc="train", unit="step", dynamic_ncols=True)
        self.jsonl = workdir.open_metrics(wd) if self.main else None
        if self.main:
            # A resumed run re-logs the steps after its checkpoint: TensorBoard hides the older events from
            # step first + 1 on, so the curve has no doubled stretch.
            self.tb = SummaryWriter(os.path.join(wd, "tb"), purge_step=first + 1 if first else None)
        self.tokens, self.t0 = 0, time.perf_counter()

    def step(self, n: int, metrics: dict[str, Any]) -> bool:
        """Step n's metrics (fetched from the device only now, after step n + 1 was dispatched); False if the
        step was skipped for a non-finite loss or gradient."""
        m = {k: float(v) for k, v in jax.device_get(metrics).items()}
        self.tokens += int(m.pop("tokens"))
        skipped = bool(m.pop("nonfinite"))
        self.nonfinite += skipped
        self.consecutive = self.consecutive + 1 if skipped else 0
        self.bar.update(1)
        if skipped:
            self.bar.write(f"step {n}: non-finite loss or gradients (loss {m['loss']}, grad_norm {m['grad_norm']}); "
                           f"update skipped ({self.consecutive} in a row)", file=sys.stderr)
        if n != 1 and n % self.every and n != self.total and not skipped:
            return not skipped
        now = time.perf_counter()
        # JSON has no NaN/Infinity: non-finite values are written as null.
        m = {k: v if math.isfinite(v) else None for k, v in m.items()}
        row = {"step": n, **m, "tokens_per_sec": self.tokens / max(now - self.t0, 1e-9),
               "nonfinite_steps": self.nonfinite}
        self.tokens, self.t0 = 0, now
        self.rows.append(row)
        self.bar.set_postfix(loss="nan" if row["loss"] is None else f"{row['loss']:.4f}",
                             tok_s=f"{row['tokens_per_sec']:.0f}")
        if self.main:
            with writing(self.jsonl.name):
                self.jsonl.write(json.dumps(row) + "\n")
                self.jsonl.flush()
            for k, v in row.items():
                if k != "step" and v is not None:
                    self.tb.add_scalar(f"train/{k}", v, n)
        return not skipped

    def close(self) -> None:
        self.bar.close()
        if self.main:
            self.jsonl.close()
            self.tb.close()


def eval_scalars(metrics: dict[str, Any]) -> dict[str, Any]:
    """The scores of an evaluation worth a curve: every top-level number, intervals ([lo, hi] under *_ci95), and
    the numbers one level down (seqeval's micro / macro F1 as seqeval_micro_f1, ...)."""
    out: dict[str, Any] = {}
    for k, v in metrics.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out[k] = v
        elif k.endswith("_ci95") and isinstance(v, (list, tuple)) and len(v) == 2:
            out[k] = [float(x) for x in v]
        elif isinstance(v, dict) and k != "baseline":
            out.update({f"{k}_{kk}": vv for kk, vv in v.items()
                        if isinstance(vv, (int, float)) and not isinstance(vv, bool)})
    return out


def log_eval(wd: str, step: int, metrics: dict[str, Any]) -> None:
    """An evaluation at `step` (0: before training) into metrics.jsonl, as {"step", "eval": scores}, and into
    TensorBoard as eval/<metric> (the interval as eval/<metric>_lo and _hi) under WORKDIR/tb/eval, beside the
    training events in WORKDIR/tb (one event file per evaluation there). Process 0 only."""
    if jax.process_index() != 0:
        return
    scores = eval_scalars(metrics)
    with workdir.open_metrics(wd) as f, writing(f.name):
        f.write(json.dumps({"step": step, "eval": scores}) + "\n")
    tb = SummaryWriter(os.path.join(wd, "tb", "eval"))
    for k, v in scores.items():
        if isinstance(v, list):
            tb.add_scalar(f"eval/{k}_lo", v[0], step)
            tb.add_scalar(f"eval/{k}_hi", v[1], step)
        elif math.isfinite(v):
            tb.add_scalar(f"eval/{k}", v, step)
    tb.close()
