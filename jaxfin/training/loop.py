"""The training loop, for any step and any data: resume state, metrics fetched one step late (the host never waits
for the device between steps), the NaN/Inf streak stop, checkpoint cadence, SIGTERM / SIGINT (save the current
step, then stop), and a periodic evaluation hook. SFT (sft.py) and DPO drive it with their own step and batches.

Step n means n optimizer updates done: metrics of step n, checkpoint n (the state after n updates); a rerun with
the same workdir resumes from the latest checkpoint and continues at n + 1.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import numpy as np
import orbax.checkpoint as ocp

from jaxfin.errors import UserError
from jaxfin.io import workdir
from jaxfin.model.params import Params
from jaxfin.training import preemption
from jaxfin.training.log import MetricsLog


@dataclasses.dataclass
class State:
    """What a checkpoint holds: the adapters, the optimizer state, steps done, batches drawn (the data position)
    and the steps the NaN/Inf guard skipped so far."""

    adapters: Params
    opt_state: Any
    step: int = 0
    position: int = 0
    nonfinite: int = 0


@dataclasses.dataclass(frozen=True)
class Plan:
    """When things happen: total steps, checkpoint / evaluation / log cadence (0 = only at the end), and how many
    consecutive skipped steps stop the run (0 = never)."""

    total: int
    checkpoint_every: int
    eval_every: int = 0
    log_every: int = 1
    max_nonfinite: int = 5


@dataclasses.dataclass
class Result:
    state: State
    rows: list[dict]  # the rows logged by this run
    stopped: int | None = None  # the exit code when a signal stopped the run early (after saving state.step)


def _logged(log: MetricsLog, n: int, metrics: dict[str, jax.Array], plan: Plan, saved: int | None) -> None:
    """Logs step n; stops the run after plan.max_nonfinite consecutive skipped (non-finite) steps."""
    max_bad = plan.max_nonfinite
    if not log.step(n, metrics) and max_bad and log.consecutive >= max_bad:
        kept = f"checkpoint {saved} holds the last good state" if saved else "no checkpoint was written"
        raise UserError(f"training stopped at step {n}: {max_bad} consecutive steps ({n - max_bad + 1}-{n}) had "
                        f"a non-finite loss or gradients and were skipped (adapters not updated); {kept}. Lower "
                        f"optim.lr or check the data (train.max_nonfinite_steps={max_bad})")


def run(state: State, *, step_fn: Callable, base: Params, batch_at: Callable[[int], dict[str, jax.Array]],
        wd: str, mngr: ocp.CheckpointManager, plan: Plan,
        evaluate: Callable[[int, Params], Any] | None = None) -> Result:
    """Steps state.step + 1 .. plan.total: step_fn(adapters, opt_state, base, batch_at(position), step) ->
    (adapters, opt_state, metrics). `evaluate(n, adapters)` runs every plan.eval_every steps (not at the end:
    the caller evaluates the final state). Closes `mngr` after the last save completed."""
    log = MetricsLog(wd, state.step, plan.total, plan.log_every, state.nonfinite)
    saved = state.step if state.step else None  # the newest checkpoint (written or being written)
    stop, stopped, pending = preemption.StopSignal(), None, None
    stop.install()
    try:
        for step in range(state.step, plan.total):
            batch = batch_at(state.position)
            state.position += 1
            state.adapters, state.opt_state, metrics = step_fn(state.adapters, state.opt_state, base, batch,
                                                               np.int32(step))
            if pending is not None:
                _logged(log, *pending, plan, saved)  # step n - 1, fetched while step n runs
            n, pending = step + 1, (step + 1, metrics)
            state.step = n
            stopping = stop.requested()
            if n == plan.total or stopping or (plan.checkpoint_every and n % plan.checkpoint_every == 0):
                # Step n's metrics first (the save waits for step n anyway): the checkpoint's count of skipped
                # steps is then exact, and a checkpoint is never written after the step that ends a run.
                _logged(log, *pending, plan, saved)
                pending = None
                workdir.save(mngr, n, state.adapters, state.opt_state, state.position, log.nonfinite)
                saved = n
            if stopping:
                stopped = stop.exit_code
                break
            if evaluate is not None and plan.eval_every and n % plan.eval_every == 0 and n != plan.total:
                evaluate(n, state.adapters)
    finally:
        stop.restore()
        log.close()
        mngr.wait_until_finished()  # a save in flight completes (or, if the process is killed, stays a tmp dir)
        mngr.close()
    state.nonfinite = log.nonfinite
    return Result(state, log.rows, stopped)
