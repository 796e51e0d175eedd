"""Several tasks in one training run: how many examples of each task an epoch holds (the mixture), which ones, in
which order the tasks come (the schedule), and batch k of the run as a pure function of (seed, k).

    counts = epoch_counts([750, 4000], "temperature:2")      # exact: sum(counts) == 4750 examples per epoch
    stream = Stream(encoded, counts, seq_len=512, pad_id=0, seed=0, batch_size=16, schedule="joint")
    rows = stream.batch(k, process_index=p, process_count=P)   # like batches.batch_at, plus "task_ids_BT"

Mixtures (over tasks of n_i training examples, N = sum n_i examples per epoch):
  * proportional: n_i of task i (every example once per epoch, as one concatenated dataset would);
  * uniform: N / K of each of the K tasks;
  * temperature:T: N * n_i^(1/T) / sum_j n_j^(1/T) (Raffel et al. 2020, T5 section 3.5.2; T=1 is proportional,
    T -> infinity uniform).
Fractional quotas are rounded by largest remainder (ties to the earlier task), so the counts are integers summing
to N exactly. A task asked for c_i examples gets c_i // n_i copies of all of its examples plus c_i mod n_i of them
drawn without replacement, afresh each epoch (seeded by (seed, epoch, task)).

Schedules:
  * joint: every epoch mixes the tasks' selections; they are packed together (a row may hold several tasks; the
    packed "task_ids_BT" says whose each token is) and the rows shuffled per epoch;
  * sequential: the tasks one after another in the listed order, each alone for its share of the run (its epoch
    rows over all tasks' epoch rows, by largest remainder), each batch drawn from that task's epochs.

When every task's selection is all of its examples (proportional, or one task) the epoch's rows are packed once
and only their order changes, exactly as jaxfin.data.batches does for one dataset.
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import numpy as np

from jaxfin.data import batches, packing
from jaxfin.data.chat import Encoded
from jaxfin.errors import UserError

MIXTURES = ("proportional", "uniform", "temperature:T")
SCHEDULES = ("joint", "sequential")


def parse_mixture(spec: str) -> float:
    """The temperature a mixture spec means: proportional = 1, uniform = inf, temperature:T = T (> 0)."""
    if spec == "proportional":
        return 1.0
    if spec == "uniform":
        return math.inf
    name, _, value = spec.partition(":")
    try:
        t = float(value) if name == "temperature" else None
    except ValueError:
        t = None
    if t is None or not t > 0:
        raise UserError(f"data.mixture={spec!r}: choose proportional, uniform or temperature:T with T > 0")
    return t


def largest_remainder(quotas: Sequence[float], total: int) -> list[int]:
    """Integers summing to `total`, each the floor of its quota plus one for the largest remainders (ties: the
    earlier entry). The quotas must sum to `total` (up to rounding)."""
    floors = [math.floor(q + 1e-9) for q in quotas]
    left = total - sum(floors)
    order = sorted(range(len(quotas)), key=lambda i: (-(quotas[i] - floors[i]), i))
    for i in order[:left]:
        floors[i] += 1
    return floors


def epoch_counts(sizes: Sequence[int], mixture: str) -> list[int]:
    """Examples of each task per epoch (module docstring): integers summing to sum(sizes)."""
    if not sizes or min(sizes) < 1:
        raise UserError("every task needs at least one training example")
    t = parse_mixture(mixture)
    if t == 1.0:
        return list(sizes)
    total = sum(sizes)
    weights = [1.0] * len(sizes) if math.isinf(t) else [n ** (1.0 / t) for n in sizes]
    return largest_remainder([total * w / sum(weights) for w in weights], total)


def selection(size: int, count: int, seed: int, epoch: int, task: int) -> np.ndarray:
    """Indices of the `count` examples a task of `size` contributes to an epoch: count // size copies of all of
    them, then count mod size drawn without replacement (seeded by (seed, epoch, task))."""
    copies, rest = divmod(count, size)
    drawn = np.random.default_rng([seed, epoch, task, 1]).permutation(size)[:rest] if rest else []
    return np.concatenate([np.tile(np.arange(size), copies), np.sort(drawn)]).astype(np.int64)


def split_steps(rows: Sequence[int], total: int) -> list[int]:
    """The sequential schedule's steps per task: `total` split in proportion to each task's rows per epoch."""
    return largest_remainder([total * r / sum(rows) for r in rows], total)


class Stream:
    """Batch k of a multi-task run (module docstring). Packing is deterministic and cached, so batch k is a pure
    function of (seed, k) and a resumed run draws the same batches as an uninterrupted one."""

    def __init__(self, encoded: Sequence[Sequence[Encoded]], counts: Sequence[int], *, seq_len: int, pad_id: int,
                 seed: int, batch_size: int, schedule: str = "joint", total_steps: int | None = None,
                 epochs: int = 1):
        if schedule not in SCHEDULES:
            raise UserError(f"data.schedule={schedule!r}: choose one of {', '.join(SCHEDULES)}")
        if len(encoded) != len(counts):
            raise ValueError(f"{len(encoded)} tasks but {len(counts)} counts")
        self.encoded, self.counts = [list(e) for e in encoded], list(counts)
        self.seq_len, self.pad_id, self.seed, self.batch_size = seq_len, pad_id, seed, batch_size
        self.schedule = schedule
        self._steps_of: dict[tuple[int, int], int] = {}
        # Stages: the groups of tasks trained together, one after another (joint: one stage of all tasks).
        self.stages = [tuple(range(len(counts)))] if schedule == "joint" else [(i,) for i in range(len(counts))]
        first = [self._steps(s, 0) for s in range(len(self.stages))]
        # Steps of the first `epochs` epochs of each stage: the run's length when train.steps is 0.
        per_stage = [sum(self._steps(s, e) for e in range(epochs)) for s in range(len(self.stages))]
        self.total = total_steps or sum(per_stage)
        if schedule == "joint":
            self.budgets = [self.total]
        elif total_steps:
            self.budgets = split_steps([self.packed(s, 0).num_rows for s in range(len(self.stages))], self.total)
        else:
            self.budgets = per_stage
        self.steps_first_epoch = first

    def packed(self, stage: int, epoch: int) -> packing.Packed:
        """The packed rows of one epoch of a stage (static selections: the same rows every epoch)."""
        return self._pack(stage, 0 if self._static(stage) else epoch)

    @functools.lru_cache(maxsize=4)
    def _pack(self, stage: int, epoch: int) -> packing.Packed:
        tasks = self.stages[stage]
        examples, task_ids = [], []
        for t in tasks:
            n = len(self.encoded[t])
            for i in selection(n, self.counts[t], self.seed, epoch, t):
                examples.append(self.encoded[t][i])
                task_ids.append(t)
        return packing.pack(examples, self.seq_len, pad_id=self.pad_id, groups=task_ids)

    def _static(self, stage: int) -> bool:
        return all(self.counts[t] == len(self.encoded[t]) for t in self.stages[stage])

    def _steps(self, stage: int, epoch: int) -> int:
        """Batches in an epoch of a stage; remembered, so locating batch k packs only the epoch it lies in."""
        key = (stage, 0 if self._static(stage) else epoch)
        if key not in self._steps_of:
            self._steps_of[key] = batches.steps_per_epoch(self.packed(stage, epoch).num_rows, self.batch_size)
        return self._steps_of[key]

    def locate(self, index: int) -> tuple[int, int, int]:
        """(stage, epoch, batch within the epoch) of batch `index` of the run."""
        stage = 0
        while stage < len(self.stages) - 1 and index >= self.budgets[stage]:
            index -= self.budgets[stage]
            stage += 1
        if self._static(stage):
            epoch, k = divmod(index, self._steps(stage, 0))
            return stage, epoch, k
        epoch = 0
        while index >= self._steps(stage, epoch):
            index -= self._steps(stage, epoch)
            epoch += 1
        return stage, epoch, index

    def batch(self, index: int, *, process_index: int = 0, process_count: int = 1) -> packing.Batch:
        """Batch `index` of the run (or this process's rows of it), with "task_ids_BT"; see batches.batch_at."""
        stage, epoch, k = self.locate(index)
        # Row order: seeded by (seed, epoch) as batches.batch_at does, and the stage after the first.
        key = [self.seed, epoch] + ([stage] if stage else [])
        return batches.epoch_batch(self.packed(stage, epoch), key, k, self.batch_size,
                                   process_index=process_index, process_count=process_count)
