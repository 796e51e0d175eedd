"""A second SIGINT / SIGTERM (the user does not want to wait for the save) exits at once, with one line saying so
(issue 16). A subprocess: the point is the process's own exit."""

import os
import signal
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = """
import os, signal, time
from jaxfin.training import preemption
stop = preemption.StopSignal()
stop.install()
os.kill(os.getpid(), signal.SIGINT)   # the first: save after this step
time.sleep(0.2)
assert stop.requested()
os.kill(os.getpid(), signal.SIGINT)   # the second, as during a save: at once
time.sleep(30)
"""


def test_second_signal_exits_at_once_with_one_line():
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGINT, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line]
    assert lines == ["SIGINT: saving a checkpoint after this step, then stopping (send it again to stop at once)",
                     "SIGINT again: stopping at once without saving; a checkpoint being written is left incomplete and "
                     "ignored, the run resumes from the last complete one"], proc.stderr
