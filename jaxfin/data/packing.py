"""Packing encoded examples into fixed-length rows: first-fit in the given order into rows of `seq_len` tokens;
segment ids 1..n per row (0 = padding), positions restart per example, targets are next tokens of the same example
(Krell et al. 2021, "Efficient sequence packing without cross-contamination").
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Sequence

import numpy as np

from jaxfin.data.chat import Encoded
from jaxfin.errors import UserError

Batch = dict[str, np.ndarray]
BATCH_KEYS = ("tokens_BT", "targets_BT", "loss_mask_BT", "segment_ids_BT", "positions_BT")




@dataclasses.dataclass(frozen=True)
class Packed:
    """Packed rows ([R, T] each: R rows of T = seq_len tokens) and what packing dropped."""

    tokens_RT: np.ndarray
    targets_RT: np.ndarray
    loss_mask_RT: np.ndarray
    segment_ids_RT: np.ndarray
    positions_RT: np.ndarray
    num_examples: int  # examples packed
    num_dropped: int  # examples longer than seq_len
    task_ids_RT: np.ndarray | None = None  # pack(groups=...): each token's group (task index), 0 on padding

    @property
    def num_rows(self) -> int:
        return int(self.tokens_RT.shape[0])

    def rows(self, index_R: np.ndarray) -> Batch:
        """The batch dict for these row indices; index -1 gives an empty (all padding) row."""
        valid = (index_R >= 0)[:, None]
        take = np.maximum(index_R, 0)
        arrays = (self.tokens_RT, self.targets_RT, self.loss_mask_RT, self.segment_ids_RT, self.positions_RT)
        keys = BATCH_KEYS
        if self.task_ids_RT is not None:  # only then: a one-task batch keeps exactly the keys it always had
            arrays, keys = (*arrays, self.task_ids_RT), (*keys, "task_ids_BT")
        return {k: np.where(valid, a[take], 0).astype(a.dtype) for k, a in zip(keys, arrays)}


def pack(examples: Sequence[Encoded], seq_len: int, *, pad_id: int = 0,
         groups: Sequence[int] | None = None) -> Packed:
    """First-fit packing (in the given order) of (ids, loss_mask) examples into rows of `seq_len` tokens.

    At position t the target is token t+1 of the same example, and the loss mask is that token's mask, so the
    last token of each example (its stop token) is predicted but predicts nothing. Examples longer than
    `seq_len` are dropped with one warning giving the count; UserError if none fits. `groups`: an int per example
    (its task), recorded per token in task_ids_RT."""
    if seq_len < 2:
        raise UserError(f"train.seq_len={seq_len}: must be at least 2")
    if not examples:
        raise UserError("no training examples to pack")
    lengths = [len(ids) for ids, _ in examples]
    keep = [i for i, n in enumerate(lengths) if n <= seq_len]
    dropped = len(examples) - len(keep)
    if not keep:
        raise UserError(
            f"no example fits train.seq_len={seq_len} (shortest {min(lengths)} tokens, longest {max(lengths)}); "
            "raise train.seq_len"
        )
    if dropped:
        warnings.warn(f"dropped {dropped} of {len(examples)} examples longer than train.seq_len={seq_len}")

    # First fit: each example goes into the first row with room (a vectorised argmax over the free space).
    free_R = np.zeros(len(keep), np.int64)
    row_of, num_rows = [], 0
    for i in keep:
        fits = np.nonzero(free_R[:num_rows] >= lengths[i])[0]
        r = int(fits[0]) if len(fits) else num_rows
        if r == num_rows:
            free_R[r] = seq_len
            num_rows += 1
        free_R[r] -= lengths[i]
        row_of.append(r)

    shape = (num_rows, seq_len)
    tokens, targets = np.full(shape, pad_id, np.int32), np.full(shape, pad_id, np.int32)
    mask, segs, pos = np.zeros(shape, np.float32), np.zeros(shape, np.int32), np.zeros(shape, np.int32)
    group = np.zeros(shape, np.int32) if groups is not None else None
    fill_R, seg_R = np.zeros(num_rows, np.int64), np.zeros(num_rows, np.int32)
    for i, r in zip(keep, row_of):
        ids, lm = np.asarray(examples[i][0], np.int32), np.asarray(examples[i][1], np.float32)
        if len(lm) != len(ids):
            raise UserError(f"example {i}: {len(ids)} token ids but a loss mask of {len(lm)}")
        n, s = len(ids), int(fill_R[r])
        seg_R[r] += 1
        tokens[r, s : s + n] = ids
        targets[r, s : s + n - 1] = ids[1:]
        mask[r, s : s + n - 1] = lm[1:]
        segs[r, s : s + n] = seg_R[r]
        pos[r, s : s + n] = np.arange(n, dtype=np.int32)
        if group is not None:
            group[r, s : s + n] = groups[i]
        fill_R[r] += n
    return Packed(tokens, targets, mask, segs, pos, num_examples=len(keep), num_dropped=dropped, task_ids_RT=group)


