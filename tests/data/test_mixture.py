"""The task mixture (data/mixture.py): exact per-epoch counts, the examples each epoch holds, the sequential
schedule's split, and batches that are a pure function of (seed, index)."""

import collections

import numpy as np
import pytest

from jaxfin.data import mixture
from jaxfin.errors import UserError


def test_epoch_counts_exact():
    sizes = [900, 90, 10]
    assert mixture.epoch_counts(sizes, "proportional") == sizes
    assert mixture.epoch_counts(sizes, "uniform") == [334, 333, 333]  # 1000 / 3: the first task takes the spare one
    # T=2: weights sqrt(n) = 30, 9.487, 3.162 (sum 42.649) -> quotas 703.4, 222.4, 74.1 -> 703 + 222 + 74 = 999,
    # the largest remainder (0.44, task 1) takes the last one
    assert mixture.epoch_counts(sizes, "temperature:2") == [703, 223, 74]
    assert mixture.epoch_counts(sizes, "temperature:1") == sizes
    for spec in ("uniform", "temperature:2", "temperature:0.5", "temperature:100"):
        assert sum(mixture.epoch_counts(sizes, spec)) == sum(sizes)
    for bad in ("temperature:0", "temperature:x", "mix"):
        with pytest.raises(UserError, match="data.mixture"):
            mixture.epoch_counts(sizes, bad)


def test_selection_copies_then_draws_without_repeats():
    sel = mixture.selection(4, 10, seed=0, epoch=0, task=1)
    assert sorted(collections.Counter(sel.tolist()).values()) == [2, 2, 3, 3]  # 2 copies of all + 2 more
    small = mixture.selection(10, 3, seed=0, epoch=0, task=0)
    assert len(set(small.tolist())) == 3
    assert not np.array_equal(small, mixture.selection(10, 3, seed=0, epoch=1, task=0))  # afresh each epoch


def _encoded(n, length, base):
    """n examples of `length` tokens whose ids name them: base + i."""
    return [([base + i] * length, [0] + [1] * (length - 1)) for i in range(n)]


def _epoch_examples(stream, steps):
    """Examples per task over the given batches: the first token of every segment, grouped by task id."""
    seen = collections.Counter()
    for k in steps:
        b = stream.batch(k)
        for r in range(b["tokens_BT"].shape[0]):
            for s in set(b["segment_ids_BT"][r].tolist()) - {0}:
                at = np.nonzero(b["segment_ids_BT"][r] == s)[0][0]
                seen[(int(b["task_ids_BT"][r, at]), int(b["tokens_BT"][r, at]))] += 1
    return seen


def test_stream_epochs_hold_the_mixture_counts():
    encoded = [_encoded(30, 8, 1000), _encoded(6, 8, 2000)]
    counts = mixture.epoch_counts([30, 6], "uniform")  # 18 + 18
    stream = mixture.Stream(encoded, counts, seq_len=32, pad_id=0, seed=3, batch_size=2)  # 4 examples a row
    per_epoch = stream.steps_first_epoch[0]
    assert per_epoch == 5 and stream.total == 5  # 36 examples / 4 per row = 9 rows -> 5 batches of 2
    for epoch in range(2):
        seen = _epoch_examples(stream, range(epoch * per_epoch, (epoch + 1) * per_epoch))
        by_task = collections.Counter()
        for (task, _), c in seen.items():
            by_task[task] += c
        assert by_task == {0: 18, 1: 18}
        assert all(c == 3 for (task, _), c in seen.items() if task == 1)  # 6 examples, 3 copies each
        assert all(c == 1 for (task, _), c in seen.items() if task == 0)  # 18 of 30, no repeats
    assert {k: v.tolist() for k, v in stream.batch(7).items()} == \
        {k: v.tolist() for k, v in mixture.Stream(encoded, counts, seq_len=32, pad_id=0, seed=3,
                                                   batch_size=2).batch(7).items()}


def test_sequential_schedule_one_task_after_another():
    encoded = [_encoded(12, 8, 1000), _encoded(4, 8, 2000)]
    stream = mixture.Stream(encoded, [12, 4], seq_len=32, pad_id=0, seed=0, batch_size=1, schedule="sequential",
                            total_steps=8)
    assert stream.budgets == [6, 2]  # rows per epoch 3 and 1 -> 8 steps split 6 / 2
    tasks_K = [set(stream.batch(k)["task_ids_BT"][stream.batch(k)["segment_ids_BT"] > 0].tolist()) for k in range(8)]
    assert tasks_K == [{0}] * 6 + [{1}] * 2
    with pytest.raises(UserError, match="data.schedule"):
        mixture.Stream(encoded, [12, 4], seq_len=32, pad_id=0, seed=0, batch_size=1, schedule="curriculum")
