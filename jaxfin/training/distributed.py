"""One training command on one process or many: jax.distributed start-up from the config (which rows of the
global batch a process loads: data/batches.py).

    # every process (host) runs the same command, differing only in process_id:
    python -m jaxfin.train --config configs/lora.py --config.distributed.coordinator=10.0.0.1:1234 \
        --config.distributed.num_processes=4 --config.distributed.process_id=I

With none of the three keys set, `jax.distributed.initialize()` fills them from the environment (Cloud TPU VM
pods, SLURM, Open MPI); where it finds no cluster it raises ValueError before doing anything, and the run is a
single process. After start-up the mesh spans the devices of every process (sharding.make_mesh over
jax.devices()), and each process materialises only the rows of a batch that its own devices hold.
"""

from __future__ import annotations

import os
from typing import Callable, TypeVar

import jax
import ml_collections

from jaxfin.errors import UserError

KEYS = ("coordinator", "num_processes", "process_id")
T = TypeVar("T")


def explicit_settings(dist: ml_collections.ConfigDict) -> tuple[str, int, int] | None:
    """(coordinator, num_processes, process_id) from the config's `distributed` block, or None when none is
    set; UserError naming the key when only some are set or a value is out of range."""
    values = {k: dist[k] for k in KEYS}
    given = [k for k, v in values.items() if v is not None]
    if not given:
        return None
    if len(given) < len(KEYS):
        missing = next(k for k in KEYS if values[k] is None)
        raise UserError(f"distributed.{missing} is not set, but distributed.{given[0]} is: set "
                        f"distributed.coordinator, num_processes and process_id together (or none of them)")
    coordinator, n, i = values["coordinator"], values["num_processes"], values["process_id"]
    host, _, port = coordinator.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UserError(f"distributed.coordinator={coordinator!r}: expected HOST:PORT (e.g. 10.0.0.1:1234)")
    if n < 1:
        raise UserError(f"distributed.num_processes={n}: must be at least 1")
    if not 0 <= i < n:
        raise UserError(f"distributed.process_id={i}: must be in [0, {n}) for distributed.num_processes={n}")
    return coordinator, n, i


_TOO_LATE = "must be called before"  # jax.distributed.initialize's RuntimeError once a backend exists


def initialize(dist: ml_collections.ConfigDict) -> None:
    """Starts jax.distributed per the `distributed` config block. Must run before anything touches a device.

    Explicit settings: exactly those. None set: jax's own cluster detection (`auto_detect`), else one process.
    A library caller that has used JAX already (tests, notebooks) stays a single process, unless the config asks
    for several processes, which is then an error. (No public query tells whether a backend exists yet;
    jax.distributed.initialize checks it first and raises RuntimeError, which is what decides here.)"""
    settings = explicit_settings(dist)
    if jax.distributed.is_initialized():  # e.g. train.run called twice in one program
        return
    # jax's CPU client needs a cross-process collectives library; gloo ships with jaxlib (mpi would need an MPI
    # install). An explicit JAX_CPU_COLLECTIVES_IMPLEMENTATION in the environment wins.
    if "JAX_CPU_COLLECTIVES_IMPLEMENTATION" not in os.environ:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        if settings is not None:
            coordinator, n, i = settings
            # A process that cannot reach the others is aborted by jax (not an exception) after 300 s: say what
            # it waits for first, so the log explains a hang.
            print(f"jax.distributed: process {i} of {n} connecting to {coordinator} (waits up to 300 s for all "
                  f"{n} processes)", flush=True)
            jax.distributed.initialize(coordinator, num_processes=n, process_id=i)
        elif dist.auto_detect:
            try:
                jax.distributed.initialize()
            except ValueError:  # no cluster environment: coordinator / process count unknown, nothing started
                return
        else:
            return
    except RuntimeError as e:
        if _TOO_LATE not in str(e):
            raise
        if settings is not None and settings[1] > 1:
            raise UserError("distributed.coordinator is set, but JAX was already in use in this program: start "
                            "jax.distributed before any JAX call (python -m jaxfin.train does)") from None
        return
    print(f"jax.distributed: process {jax.process_index()} of {jax.process_count()}, "
          f"{jax.local_device_count()} local of {jax.device_count()} devices", flush=True)


def main_first(name: str, fn: Callable[[], T]) -> T:
    """fn() on process 0, then on the other processes, never at the same time: e.g. files that every process
    needs, written by process 0 to a shared disk and again (same bytes) where a host's disk is its own."""
    if jax.process_count() == 1:
        return fn()
    from jax.experimental import multihost_utils

    out = fn() if jax.process_index() == 0 else None
    multihost_utils.sync_global_devices(f"{name}: process 0 done")
    if jax.process_index() != 0:
        out = fn()
    multihost_utils.sync_global_devices(f"{name}: all done")
    return out
