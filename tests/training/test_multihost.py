"""Several processes, one run: the `distributed` config checks, which batch rows each process loads (under any
device order of the mesh), and two CPU processes of 2 devices each (gloo) training, evaluating, checkpointing
and resuming exactly like one process of 4 devices."""

import json
import os
import socket
import subprocess
import sys
import time

import jax
import ml_collections
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxfin import config_flags
from jaxfin.data import batches, packing
from jaxfin.errors import UserError
from jaxfin.io import workdir
from jaxfin.training import defaults, distributed, sft


ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = os.path.join(ROOT, "configs", "tiny.py")


def _dist(**values) -> ml_collections.ConfigDict:
    c = config_flags.load_config(TINY).distributed
    for k, v in values.items():
        c[k] = v
    return c


def test_distributed_settings_are_all_or_none():
    assert distributed.explicit_settings(_dist()) is None
    assert distributed.explicit_settings(_dist(coordinator="10.0.0.1:1234", num_processes=4, process_id=3)) == \
        ("10.0.0.1:1234", 4, 3)
    with pytest.raises(UserError, match=r"^distributed.num_processes is not set, but distributed.coordinator is"):
        distributed.explicit_settings(_dist(coordinator="h:1"))
    with pytest.raises(UserError, match=r"^distributed.coordinator is not set, but distributed.process_id is"):
        distributed.explicit_settings(_dist(process_id=0))
    with pytest.raises(UserError, match=r"distributed.coordinator='node0': expected HOST:PORT"):
        distributed.explicit_settings(_dist(coordinator="node0", num_processes=2, process_id=0))
    with pytest.raises(UserError, match=r"distributed.process_id=2: must be in \[0, 2\)"):
        distributed.explicit_settings(_dist(coordinator="h:1", num_processes=2, process_id=2))
    with pytest.raises(UserError, match=r"distributed.num_processes=0"):
        distributed.explicit_settings(_dist(coordinator="h:1", num_processes=0, process_id=0))
    # Overrides parse into the placeholders (str / int), like any other key.
    cfg, _ = config_flags.parse_args(["--config.distributed.num_processes=2", "--config.distributed.process_id=1",
                                      "--config.distributed.coordinator=127.0.0.1:5"], defaults.tiny)
    assert distributed.explicit_settings(cfg.distributed) == ("127.0.0.1:5", 2, 1)
    # In a program that already used JAX: one process stays fine, several is a clear error.
    jax.devices()
    distributed.initialize(_dist())
    assert jax.process_count() == 1
    with pytest.raises(UserError, match=r"JAX was already in use"):
        distributed.initialize(_dist(coordinator="h:1", num_processes=2, process_id=0))


class _Process:
    """The view of one pretend process (owning `devices`) of a sharding: what local_batch asks it."""

    def __init__(self, sharding: NamedSharding, devices: list):
        self.sharding, self.devices, self.spec = sharding, set(devices), sharding.spec

    def addressable_devices_indices_map(self, shape):
        return {d: i for d, i in self.sharding.devices_indices_map(shape).items() if d in self.devices}


@pytest.mark.parametrize("axes,accum", [((1, 8, 1), 2), ((1, 4, 2), 1), ((2, 2, 2), 2), ((1, 1, 8), 1)])
def test_local_batch_is_exactly_the_rows_of_each_process_devices(axes, accum):
    """4 pretend processes of 2 devices, the mesh in an order that interleaves them: each process's rows, once
    placed as make_array_from_process_local_data places them, are the rows of the one global batch."""
    rng = np.random.default_rng(0)
    examples = [(list(rng.integers(1, 1000, n)), [1] * n) for n in rng.integers(5, 30, 60)]
    packed = packing.pack(examples, 32)
    B, T = 16, 32
    devices = jax.devices()[:8]
    order = [devices[i] for i in (0, 2, 4, 6, 1, 3, 5, 7)]  # processes own (0, 1), (2, 3), ...: split rows
    mesh = Mesh(np.array(order).reshape(axes), ("data", "fsdp", "tensor"))
    sh = NamedSharding(mesh, P(None, ("data", "fsdp"), None))
    shape = (accum, B // accum, T)
    want = batches.micro_batches(batches.batch_at(packed, 3, B, seed=7), accum)
    for p in range(4):
        view = _Process(sh, devices[2 * p: 2 * p + 2])
        local = batches.micro_batches(batches.local_batch(packed, 3, B, 7, view, shape), accum)
        spans = sorted({i[1].indices(shape[1])[:2] for i in view.addressable_devices_indices_map(shape).values()})
        rows = np.concatenate([np.arange(s, e) for s, e in spans])
        for k in packing.BATCH_KEYS:
            np.testing.assert_array_equal(local[k], want[k][:, rows])


# --------------------------------------------------------------------------------------------------------------
# Two processes x 2 CPU devices against one process x 4 devices.

N, M = 4, 6  # steps of the first two-process run, then of the resumed one


def _overrides(assets, wd, steps) -> dict:
    return {"workdir": str(wd), "model.path": assets.model, "data.train": assets.train, "data.eval": assets.eval,
            "train.steps": steps, "train.seq_len": 256, "train.grad_accum_steps": 2,
            "optim.warmup_steps": 2, "optim.decay_steps": M,  # one lr schedule whatever train.steps is
            "optim.lr": 1e-3,  # low enough that greedy completions still differ between examples
            "checkpoint.every_steps": 2, "eval.every_steps": N, "eval.max_examples": 4, "eval.max_new_tokens": 8,
            "eval.batch_size": 4}


def _two_processes(assets, wd, steps, log, *, slurm: bool) -> list[str]:
    """The same command in two processes: with the distributed flags, or (slurm) with none, in the environment
    SLURM's srun gives its tasks, for jax's automatic detection."""
    with socket.socket() as s:  # a free port for the coordinator
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
           "TOKENIZERS_PARALLELISM": "false"}  # the compilation cache settings come from conftest
    args = [f"--config.{k}={v}" for k, v in _overrides(assets, wd, steps).items()]
    procs, logs = [], [str(log) + f".{i}" for i in range(2)]
    for i in range(2):
        if slurm:
            flags, extra = [], {"SLURM_JOB_ID": "1", "SLURM_STEP_NODELIST": "127.0.0.1", "SLURM_NTASKS": "2",
                                "SLURM_PROCID": str(i), "SLURM_LOCALID": str(i), "JAX_COORDINATOR_PORT": str(port)}
        else:
            flags, extra = [f"--config.distributed.coordinator=127.0.0.1:{port}",
                            "--config.distributed.num_processes=2", f"--config.distributed.process_id={i}"], {}
        with open(logs[i], "w") as f:
            procs.append(subprocess.Popen([sys.executable, "-m", "jaxfin.train", "--config", TINY, *args, *flags],
                                          cwd=ROOT, env={**env, **extra}, stdout=f, stderr=subprocess.STDOUT))
    deadline = time.monotonic() + 480
    try:  # until both exit, one fails (the other would wait for it) or the deadline passes
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            if any(p.poll() not in (None, 0) for p in procs):
                break
            time.sleep(0.2)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    codes = [p.returncode for p in procs]
    outs = [open(f).read() for f in logs]
    assert codes == [0, 0], "\n\n".join(o[-3000:] for o in outs)
    return outs


def _logged(wd) -> list[dict]:
    with open(os.path.join(wd, "metrics.jsonl")) as f:
        return [r for r in map(json.loads, f) if "loss" in r]  # training rows (evaluation rows carry "eval")


def _predictions(path) -> list[str]:
    with open(os.path.join(path, "predictions.jsonl")) as f:
        return [json.loads(line)["completion"] for line in f]


def test_two_processes_train_evaluate_and_resume_like_one(assets, tmp_path):
    # One process, 4 devices, straight to M (evaluating at N and at the end).
    ref = tmp_path / "one"
    c = config_flags.load_config(TINY)
    for k, v in _overrides(assets, ref, M).items():
        config_flags.override(c, k, str(v))
    sft.run(c, devices=jax.devices()[:4])

    # Two processes: N steps, then the same command with M steps resumes at N + 1 (this time set up by jax's
    # automatic detection, here of a SLURM job).
    wd = tmp_path / "two"
    outs = _two_processes(assets, wd, N, tmp_path / "first", slurm=False)
    assert all("jax.distributed: process" in o and "2 local of 4 devices" in o for o in outs)
    assert workdir.latest_step(str(wd)) == N
    first_eval = _predictions(wd / "eval")
    outs = _two_processes(assets, wd, M, tmp_path / "second", slurm=True)  # found by jax's SLURM detection
    assert all(f"resuming {wd} from step {N}" in o and "2 local of 4 devices" in o for o in outs)

    two, one = _logged(wd), _logged(ref)
    assert [r["step"] for r in two] == list(range(1, M + 1))  # written once (process 0), same numbering
    np.testing.assert_allclose([r["loss"] for r in two], [r["loss"] for r in one], rtol=1e-4)
    np.testing.assert_allclose([r["grad_norm"] for r in two], [r["grad_norm"] for r in one], rtol=1e-4)
    assert workdir.latest_step(str(wd)) == M and sorted(os.listdir(wd / "checkpoints")) == ["2", "4", "6"]
    # Generation split over both processes' devices gives one process's completions; one report per eval.
    assert first_eval == _predictions(ref / "eval" / f"step_{N}") and len(set(first_eval)) > 1
    assert _predictions(wd / "eval") == _predictions(ref / "eval")
    assert len([f for f in os.listdir(wd / "tb") if f.startswith("events.out.tfevents")]) == 2  # one per run
