"""The one place a global batch is built and placed: batch k of a run is a pure function of (seed, k), each process
materialises only the rows its own devices hold, and the rows become global jax Arrays on the mesh.

Rows are shuffled per epoch with a numpy Generator seeded by (seed, epoch), so the data position saved in a
checkpoint is just the count of batches drawn. The last batch of an epoch is filled with empty rows (all masks 0)
rather than dropped, so every example is seen once per epoch.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, Iterator, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import NamedSharding

from jaxfin.data.packing import Batch, Packed
from jaxfin.errors import UserError




def steps_per_epoch(num_rows: int, batch_size: int) -> int:
    """Batches per epoch: ceil(rows / batch_size); the last batch of an epoch is padded with empty rows."""
    if batch_size < 1:
        raise UserError(f"train.batch_size={batch_size}: must be at least 1")
    return math.ceil(num_rows / batch_size)


def batch_at(
    packed: Packed,
    index: int,
    batch_size: int,
    seed: int,
    *,
    process_index: int = 0,
    process_count: int = 1,
) -> Batch:
    """Batch number `index` (0-based, counted over the whole run) of the global batch of `batch_size` rows, or
    this process's slice of it: rows [p*B/P, (p+1)*B/P). A pure function of its arguments, so resuming at a
    saved index reproduces the data stream exactly."""
    per_epoch = steps_per_epoch(packed.num_rows, batch_size)
    epoch, k = divmod(index, per_epoch)
    return epoch_batch(packed, [seed, epoch], k, batch_size, process_index=process_index,
                       process_count=process_count)


def epoch_batch(packed: Packed, order_key: Sequence[int], k: int, batch_size: int, *, process_index: int = 0,
                process_count: int = 1) -> Batch:
    """Batch k of an epoch whose rows are shuffled by a numpy Generator seeded with `order_key` (batch_at: [seed,
    epoch]), or this process's slice of it; the epoch's last batch is filled with empty rows."""
    if batch_size % process_count:
        raise UserError(f"train.batch_size={batch_size} is not divisible by the {process_count} processes")
    order = np.random.default_rng(list(order_key)).permutation(packed.num_rows)
    local = batch_size // process_count
    start = k * batch_size + process_index * local
    index_R = np.full(local, -1, np.int64)
    chunk = order[start : start + local]
    index_R[: len(chunk)] = chunk
    return packed.rows(index_R)


def batches(
    packed: Packed,
    batch_size: int,
    seed: int,
    *,
    start: int = 0,
    stop: int | None = None,
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator[Batch]:
    """Batches start, start+1, ... (up to `stop`, exclusive; endless when None), epoch after epoch.
    Batch i holds int32 "tokens_BT", "targets_BT", "segment_ids_BT", "positions_BT" and float32 "loss_mask_BT"."""
    index = start
    while stop is None or index < stop:
        yield batch_at(packed, index, batch_size, seed, process_index=process_index, process_count=process_count)
        index += 1


def micro_batches(batch: Batch, accum: int) -> Batch:
    """[B, T] -> [A, B/A, T] with micro-batch a = rows a, a + A, ...: a process's contiguous slice of the global
    batch then stays contiguous in every micro-batch (see put_batch)."""
    return {k: v.reshape(v.shape[0] // accum, accum, *v.shape[1:]).swapaxes(0, 1) for k, v in batch.items()}


def local_batch(packed: Packed, index: int, batch_size: int, seed: int, sharding: NamedSharding,
                global_shape: tuple[int, int, int]) -> Batch:
    """Batch `index` (batch_at) as this process's rows of the global [B, T] batch, in global order, for
    train.micro_batches and then sharding.put_batch with `sharding` over `global_shape` = (A, B/A, T).

    The rows are those the process's devices hold (jax.make_array_from_process_local_data wants exactly them),
    whatever the device order of the mesh, so which process loads a row never changes the global batch; with
    the batch replicated over processes (e.g. a tensor axis across hosts) several processes load the same rows.
    Row r of micro-batch a is global row r*A + a, so a span [s, e) of micro-batch rows is the global block
    [s*A, e*A): block s/(e-s) of (B/A)/(e-s) equal blocks, which batch_at materialises alone."""
    return local_rows(functools.partial(batch_at, packed, index, batch_size, seed), sharding, global_shape)


def local_rows(draw: Callable[..., Batch], sharding: NamedSharding, global_shape: tuple[int, int, int]) -> Batch:
    """This process's rows of a global batch (local_batch), from `draw(process_index=, process_count=)`: the slice
    batch_at-style functions give for a process of `process_count`."""
    rows = global_shape[1]
    indices = sharding.addressable_devices_indices_map(global_shape).values()
    spans = sorted({sl[1].indices(rows)[:2] for sl in indices})
    width = spans[0][1] - spans[0][0]
    if any(e - s != width for s, e in spans) or rows % width:
        raise ValueError(f"batch sharding {sharding.spec} splits {rows} rows unevenly: {spans}")
    parts = [draw(process_index=s // width, process_count=rows // width) for s, _ in spans]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def put_batch(batch: Mapping[str, np.ndarray], sharding: NamedSharding,
              global_shape: tuple[int, ...]) -> dict[str, jax.Array]:
    """Host numpy arrays -> global jax Arrays of `global_shape`. Each process passes its own slice of the global
    batch, so the same call serves one process or many (jax.make_array_from_process_local_data)."""
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v), global_shape)
            for k, v in batch.items()}
