"""Chat templating, tokenisation with a loss mask, packing into fixed-length rows, and deterministic batches.

Target policy (what the model learns to emit after the prompt), decided here once for every tokenizer:
  * The prompt is the tokenizer's chat template with the generation prompt, tokenised exactly as
    `apply_chat_template(..., add_generation_prompt=True)` does, so training sees the ids that decoding is fed.
  * If that prompt ends inside an opened `<think>` block (DeepSeek-R1 distill: "<｜Assistant｜><think>\\n"; its
    template also strips think content from assistant turns, so rendering the answer cannot reproduce the
    prompt), the target closes an empty think block: "</think>\\n\\n" + output + end-of-turn token.
  * Otherwise the target is whatever the template renders for the assistant turn after the generation prompt
    (Qwen2.5: "output<|im_end|>\\n"; Qwen3: "<think>\\n\\n</think>\\n\\noutput<|im_end|>\\n").
  * The target is cut right after its first stop token (one of `eos_ids`: the model's generation-config eos ids,
    default the tokenizer's eos), so the last supervised token is the one decoding stops on; text a template puts
    after it (Qwen's "\\n") is never trained. If the rendered turn has no stop token, `eos_ids[0]` is appended.
  The prompt and the target are tokenised separately (ids = prompt ids + target ids), because at inference the
  model continues from the prompt ids, never from a joint tokenisation across the boundary.

Packing: first-fit in the given order into rows of `seq_len` tokens; segment ids 1..n per row (0 = padding),
positions restart per example, targets are next tokens of the same example (Krell et al. 2021, "Efficient
sequence packing without cross-contamination"). Batches: rows are shuffled per epoch with a numpy Generator
seeded by (seed, epoch); batch k of the run is a pure function of (seed, k), so the data position saved in a
checkpoint is just the count of batches drawn. The last batch of an epoch is filled with empty rows (all
masks 0) rather than dropped, so every example is seen once per epoch.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from jaxfin import ner
from jaxfin.errors import UserError

Batch = dict[str, np.ndarray]
Example = tuple[list[int], list[int]]  # (token ids, loss mask 0/1 per token)
BATCH_KEYS = ("tokens_BT", "targets_BT", "loss_mask_BT", "segment_ids_BT", "positions_BT")
THINK_CLOSE = "</think>\n\n"


# --------------------------------------------------------------------------------------------------------------
# Chat template -> ids + loss mask.


def _name(tokenizer: Any) -> str:
    return getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__


def _render(tokenizer: Any, messages: Sequence[Mapping[str, str]], generation_prompt: bool) -> str:
    try:
        return tokenizer.apply_chat_template(list(messages), add_generation_prompt=generation_prompt, tokenize=False)
    except ValueError as e:  # transformers raises ValueError when the tokenizer has no chat template
        raise UserError(f"tokenizer {_name(tokenizer)}: cannot apply its chat template ({e})") from e


def prompt_ids(tokenizer: Any, messages: Sequence[Mapping[str, str]]) -> list[int]:
    """Token ids of the chat template with the generation prompt, as the model sees them before it answers."""
    try:
        out = tokenizer.apply_chat_template(
            list(messages), add_generation_prompt=True, tokenize=True, return_dict=False
        )
    except ValueError as e:
        raise UserError(f"tokenizer {_name(tokenizer)}: cannot apply its chat template ({e})") from e
    if isinstance(out, Mapping):  # transformers 5 returns a BatchEncoding unless return_dict=False is honoured
        out = out["input_ids"]
    return [int(i) for i in out]


def _stop_ids(tokenizer: Any, eos_ids: Sequence[int] | None) -> list[int]:
    ids = [int(i) for i in eos_ids] if eos_ids else []
    if not ids and tokenizer.eos_token_id is not None:
        ids = [int(tokenizer.eos_token_id)]
    if not ids:
        raise UserError(
            f"tokenizer {_name(tokenizer)}: no eos token, and no eos ids given (generation_config.eos_token_id)"
        )
    return ids


def target_text(tokenizer: Any, messages: Sequence[Mapping[str, str]], output: str) -> str:
    """The text after the generation prompt that the model is trained to produce (see the module docstring);
    it may extend past the stop token, which encode_example cuts off."""
    prompt = _render(tokenizer, messages, True)
    full = _render(tokenizer, [*messages, {"role": "assistant", "content": output}], False)
    if prompt.rstrip().endswith("<think>"):
        at = full.rfind(output)
        tail = full[at + len(output):] if at >= 0 and output else ""
        return THINK_CLOSE + output + tail
    if not full.startswith(prompt):
        raise UserError(
            f"tokenizer {_name(tokenizer)}: its chat template does not render the assistant turn as a continuation "
            "of the generation prompt, so the training target cannot be derived"
        )
    return full[len(prompt):]


def encode_example(
    tokenizer: Any,
    messages: Sequence[Mapping[str, str]],
    target: str,
    *,
    eos_ids: Sequence[int] | None = None,
) -> Example:
    """(prompt ids + target ids, loss mask 1 on the target ids only). `eos_ids`: the ids decoding stops on
    (Model.eos_ids); the target ends with the first of them it contains, else eos_ids[0] is appended."""
    stops = _stop_ids(tokenizer, eos_ids)
    prompt = prompt_ids(tokenizer, messages)
    answer = [int(i) for i in tokenizer.encode(target_text(tokenizer, messages, target), add_special_tokens=False)]
    stop_set = set(stops)
    cut = next((i for i, t in enumerate(answer) if t in stop_set), None)
    answer = answer[: cut + 1] if cut is not None else [*answer, stops[0]]
    return prompt + answer, [0] * len(prompt) + [1] * len(answer)


def encode_ner(
    examples: Sequence[Mapping[str, Any]],
    tokenizer: Any,
    types: Sequence[str],
    *,
    eos_ids: Sequence[int] | None = None,
) -> list[Example]:
    """Canonical NER examples -> (instruction, input, output) triples (jaxfin.ner) -> encoded examples."""
    encoded = []
    for ex in examples:
        instruction, text, output = ner.to_triple(ex, types)
        encoded.append(encode_example(tokenizer, ner.prompt_messages(instruction, text), output, eos_ids=eos_ids))
    return encoded


# --------------------------------------------------------------------------------------------------------------
# Packing.


@dataclasses.dataclass(frozen=True)
class Packed:
    """Packed rows ([R, T] each, R rows of T = seq_len tokens) and what packing dropped."""

    tokens_RT: np.ndarray
    targets_RT: np.ndarray
    loss_mask_RT: np.ndarray
    segment_ids_RT: np.ndarray
    positions_RT: np.ndarray
    num_examples: int  # examples packed
    num_dropped: int  # examples longer than seq_len

    @property
    def num_rows(self) -> int:
        return int(self.tokens_RT.shape[0])

    def rows(self, index_R: np.ndarray) -> Batch:
        """The batch dict for these row indices; index -1 gives an empty (all padding) row."""
        valid = (index_R >= 0)[:, None]
        take = np.maximum(index_R, 0)
        arrays = (self.tokens_RT, self.targets_RT, self.loss_mask_RT, self.segment_ids_RT, self.positions_RT)
        return {k: np.where(valid, a[take], 0).astype(a.dtype) for k, a in zip(BATCH_KEYS, arrays)}


def pack(examples: Sequence[Example], seq_len: int, *, pad_id: int = 0) -> Packed:
    """First-fit packing (in the given order) of (ids, loss_mask) examples into rows of `seq_len` tokens.

    At position t the target is token t+1 of the same example, and the loss mask is that token's mask, so the
    last token of each example (its stop token) is predicted but predicts nothing. Examples longer than
    `seq_len` are dropped with one warning giving the count; UserError if none fits."""
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
        fill_R[r] += n
    return Packed(tokens, targets, mask, segs, pos, num_examples=len(keep), num_dropped=dropped)


# --------------------------------------------------------------------------------------------------------------
# Batches.


def steps_per_epoch(num_rows: int, batch_size: int) -> int:
    """Batches per epoch: ceil(rows / batch_size); the last batch of an epoch is padded with empty rows."""
    if batch_size < 1:
        raise UserError(f"train.batch_size={batch_size}: must be at least 1")
    return math.ceil(num_rows / batch_size)


def _epoch_order(num_rows: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(num_rows)


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
    if batch_size % process_count:
        raise UserError(f"train.batch_size={batch_size} is not divisible by the {process_count} processes")
    per_epoch = steps_per_epoch(packed.num_rows, batch_size)
    epoch, k = divmod(index, per_epoch)
    order = _epoch_order(packed.num_rows, seed, epoch)
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
