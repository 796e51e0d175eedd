"""Preference pairs as fixed-length rows: each pair is two right-padded rows of `seq_len` tokens, prompt + chosen
and prompt + rejected, so that both completions of a pair go through the model in one pass (TRL's
DataCollatorForPreference lays a batch out the same way, chosen rows then rejected rows; here a pair's two rows
stay together, [P, 2, T], so a pair never straddles two devices).

Per row: tokens_P2T (prompt + completion, then padding), targets_P2T (the next token), loss_mask_P2T (1 where the
target is a completion token: the positions whose log-probs sum to log pi(completion | prompt)), segment_ids_P2T
(1 on real tokens, 0 on padding), positions_P2T; and, once the reference log-probs are precomputed
(training/reference.py), ref_logps_P2 (summed completion log-probs of the reference, [chosen, rejected]).

Pairs are batched like SFT rows (data/batches.py: batch k is a pure function of (seed, k), shuffled per epoch, the
last batch of an epoch filled with empty pairs, whose masks are 0 and which count for nothing).
"""

from __future__ import annotations

import dataclasses
import hashlib
import warnings
from typing import Any, Sequence

import jax
import numpy as np

from jaxfin.data import batches
from jaxfin.data.pairs import Pair, trl_token_ids
from jaxfin.errors import UserError
from jaxfin.training import sharding

Batch = dict[str, np.ndarray]
Ids = tuple[list[int], list[int], list[int]]  # (prompt_ids, chosen_ids, rejected_ids)
KEYS = ("tokens_P2T", "targets_P2T", "loss_mask_P2T", "segment_ids_P2T", "positions_P2T")
REF_KEY = "ref_logps_P2"


@dataclasses.dataclass(frozen=True)
class PairRows:
    """Every kept pair as [N, 2, T] arrays (module docstring), the ids of the pairs, and what was dropped."""

    tokens_N2T: np.ndarray
    targets_N2T: np.ndarray
    loss_mask_N2T: np.ndarray
    segment_ids_N2T: np.ndarray
    positions_N2T: np.ndarray
    ids: tuple[str, ...]
    num_dropped: int  # pairs whose prompt + longer answer exceeds seq_len
    ref_logps_N2: np.ndarray | None = None  # the reference's summed log-probs, once precomputed

    @property
    def num_rows(self) -> int:
        """Pairs (the unit data/batches.py shuffles and counts: train.batch_size counts pairs)."""
        return int(self.tokens_N2T.shape[0])

    def rows(self, index_R: np.ndarray) -> Batch:
        """The batch dict for these pair indices; index -1 gives an empty pair (all masks 0)."""
        valid = index_R >= 0
        take = np.maximum(index_R, 0)
        arrays = (self.tokens_N2T, self.targets_N2T, self.loss_mask_N2T, self.segment_ids_N2T, self.positions_N2T)
        out = {k: np.where(valid[:, None, None], a[take], 0).astype(a.dtype) for k, a in zip(KEYS, arrays)}
        if self.ref_logps_N2 is not None:
            out[REF_KEY] = np.where(valid[:, None], self.ref_logps_N2[take], 0).astype(np.float32)
        return out

    def fingerprint(self) -> str:
        """sha256 of the token ids and masks: what the reference log-probs depend on from the data side."""
        h = hashlib.sha256()
        for a in (self.tokens_N2T, self.loss_mask_N2T, self.segment_ids_N2T):
            h.update(np.ascontiguousarray(a).tobytes())
            h.update(str(a.shape).encode())
        return h.hexdigest()


def token_ids(pairs: Sequence[Pair], tokenizer: Any, where: str) -> list[Ids]:
    """(prompt, chosen, rejected) token ids of each pair as TRL makes them (data/pairs.trl_token_ids; verbatim
    chosen_ids / rejected_ids win); a pair that cannot be tokenised is one UserError naming it."""
    out = []
    for pair in pairs:
        try:
            prompt, chosen, rejected = trl_token_ids(pair, tokenizer)
        except ValueError as e:
            raise UserError(f"{where}: {e}") from None
        if not prompt:
            raise UserError(f"{where}: pair {pair['id']!r} has an empty prompt (its first completion token would "
                            "have no logit to score it)")
        if not chosen or not rejected:
            raise UserError(f"{where}: pair {pair['id']!r} has an empty {'chosen' if not chosen else 'rejected'} "
                            "answer")
        out.append((list(prompt), list(chosen), list(rejected)))
    return out


def encode(ids: Sequence[Ids], seq_len: int, *, pad_id: int = 0, names: Sequence[str] | None = None,
           vocab_size: int | None = None) -> PairRows:
    """Pairs of token ids -> PairRows of row length `seq_len`. A pair whose prompt + longer answer exceeds seq_len
    is dropped (one warning with the count; TRL would truncate it instead, so the rejected answer, the one that
    runs on, would lose exactly what makes it rejected); UserError if none fits."""
    if seq_len < 2:
        raise UserError(f"train.seq_len={seq_len}: must be at least 2")
    if not ids:
        raise UserError("no preference pairs")
    names = [str(i) for i in range(len(ids))] if names is None else list(names)
    lengths = [len(p) + max(len(c), len(r)) for p, c, r in ids]
    keep = [i for i, n in enumerate(lengths) if n <= seq_len]
    if not keep:
        raise UserError(f"no pair fits train.seq_len={seq_len} (prompt + longer answer: shortest {min(lengths)} "
                        f"tokens, longest {max(lengths)}); raise train.seq_len")
    dropped = len(ids) - len(keep)
    if dropped:
        warnings.warn(f"dropped {dropped} of {len(ids)} pairs longer than train.seq_len={seq_len} (prompt + longer "
                      "answer)")
    shape = (len(keep), 2, seq_len)
    tokens, targets = np.full(shape, pad_id, np.int32), np.full(shape, pad_id, np.int32)
    mask, segs, pos = np.zeros(shape, np.float32), np.zeros(shape, np.int32), np.zeros(shape, np.int32)
    for n, i in enumerate(keep):
        prompt = ids[i][0]
        for side in (0, 1):
            row = np.asarray(list(prompt) + list(ids[i][1 + side]), np.int64)
            if vocab_size is not None and (row.min() < 0 or row.max() >= vocab_size):
                bad = int(row[(row < 0) | (row >= vocab_size)][0])
                raise UserError(f"pair {names[i]!r}: token id {bad} is outside the model's vocabulary "
                                f"[0, {vocab_size})")
            L = len(row)
            tokens[n, side, :L] = row
            targets[n, side, : L - 1] = row[1:]
            mask[n, side, len(prompt) - 1: L - 1] = 1.0  # position t predicts token t + 1
            segs[n, side, :L] = 1
            pos[n, side, :L] = np.arange(L, dtype=np.int32)
    return PairRows(tokens, targets, mask, segs, pos, tuple(names[i] for i in keep), dropped)


def pair_shardings(mesh: jax.sharding.Mesh, with_ref: bool) -> dict[str, jax.sharding.NamedSharding]:
    """Shardings of a global [A, P/A, 2, T] batch (and [A, P/A, 2] reference log-probs): pairs split over the data
    x fsdp devices, the two rows of a pair on the same device."""
    P = jax.sharding.PartitionSpec
    out = {k: jax.sharding.NamedSharding(mesh, P(None, sharding.BATCH_AXES, None, None)) for k in KEYS}
    if with_ref:
        out[REF_KEY] = jax.sharding.NamedSharding(mesh, P(None, sharding.BATCH_AXES, None))
    return out


def pair_batch(position: int, *, rows: PairRows, batch_size: int, accum: int, seed: int,
               shardings: dict[str, jax.sharding.NamedSharding]) -> dict[str, jax.Array]:
    """Batch number `position` of the run as global [A, B/A, 2, T] arrays on the mesh (B pairs; this process's
    pairs only, as data/batches.local_batch picks them)."""
    T = rows.tokens_N2T.shape[-1]
    per_micro = batch_size // accum
    row_split = sharding.batch_sharding(shardings[KEYS[0]].mesh)  # [A, B/A, T]: which pairs this process holds
    local = batches.local_batch(rows, position, batch_size, seed, row_split, (accum, per_micro, T))
    local = batches.micro_batches(local, accum)
    return {k: jax.make_array_from_process_local_data(shardings[k], np.asarray(v), (accum, per_micro, *v.shape[2:]))
            for k, v in local.items()}
