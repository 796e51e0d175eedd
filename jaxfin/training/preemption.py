"""Preemption: SIGTERM / SIGINT (a TPU or spot-VM preemption notice, Ctrl-C) turned into a flag the training loop
reads once per step, so that it saves a checkpoint of the current step and stops (jaxfin.train).

Python runs signal handlers in the main thread between bytecodes: a signal that arrives during a long call into
XLA (a compile, an evaluation's generation) is acted on when that call returns.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

import jax
import numpy as np


class StopSignal:
    """SIGTERM / SIGINT (a preemption notice, Ctrl-C) -> a flag the loop reads once per step; the loop then saves
    a checkpoint of the current step and returns. The handler only sets the flag: it can run between any two
    bytecodes of the main thread, e.g. inside an orbax call, where saving would not be safe. A second signal
    exits at once (the default action), for a user who does not want to wait for the save."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():  # Python allows handlers only there
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}

    def restore(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            os.write(2, f"\n{signal.Signals(signum).name} again: stopping at once without saving; a checkpoint being "
                        f"written is left incomplete and ignored, the run resumes from the last complete one\n".encode())
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.signum = signum
        # os.write, not print: the handler may interrupt a print to stderr (reentrant call).
        os.write(2, f"\n{signal.Signals(signum).name}: saving a checkpoint after this step, then stopping "
                    f"(send it again to stop at once)\n".encode())

    def requested(self) -> bool:
        """Whether to stop after this step. With several processes: whether any got a signal, agreed by all,
        so they save the same step together (orbax saves are collective). That all-gather waits for the device
        to finish the step in flight, which costs the host/device overlap of one step, on multi-process runs only."""
        local = self.signum is not None
        if jax.process_count() == 1:
            return local
        from jax.experimental import multihost_utils

        return bool(np.max(multihost_utils.process_allgather(np.int32(local))))

    @property
    def exit_code(self) -> int:
        """128 + the signal number, as a shell reports a process killed by it (143 SIGTERM, 130 SIGINT): the
        run did not finish, so a wrapper that reruns until success continues it."""
        return 128 + (self.signum or signal.SIGTERM)
