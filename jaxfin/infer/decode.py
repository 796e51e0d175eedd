"""Decoding, greedy or sampled: a jitted prefill over right-padded prompts, then an on-device `lax.while_loop` over
a KV cache.

The KV-cache layout follows decoder.decoder: every row writes its keys/values at its own absolute positions, and a
query at position p sees cache slots s <= p. So a batch of prompts of different lengths is right-padded, the
first new token of each row is read at its last real position, and row r's i-th new token is fed back at
position len_r + i. Padding slots beyond a row's position hold garbage that is masked until it is overwritten.

Shapes are bucketed to powers of two (prompt length >= 16, new tokens >= 16, batch <= batch_size, stop ids >= 8)
and prompts are sorted by length, so a run compiles once per (batch, prompt, new-token) bucket, not per batch.

Sampling (sampling.py) draws each token with a key derived from (seed, example id, sample index, decode step) only:
fold_in(fold_in(fold_in(key(seed), "SAMP"), example), sample), then fold_in(step) with step 0 for the first new
token. A row's place in a batch, the batch size, the sort and the buckets never enter, so a sample is reproducible
whatever the batching. temperature and top_p are traced scalars; top_k is static (one compile per value).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from typing import Literal, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from jaxfin.errors import UserError
from jaxfin.infer import sampling as sampling_lib
from jaxfin.infer.sampling import Sampling
from jaxfin.model import decoder as model
from jaxfin.model.config import ModelConfig
from jaxfin.model.params import Params
from jaxfin.training import sharding

PAD_ID = -1  # written after a row has finished; never a real token id


@dataclasses.dataclass(frozen=True)
class Completion:
    token_ids: list[int]  # the generated tokens, without the stop token
    finish_reason: Literal["stop", "length"]


def bucket(n: int, minimum: int) -> int:
    """The smallest power of two >= max(n, minimum)."""
    return 1 << (max(n, minimum) - 1).bit_length()


def _next_token(params: Params, h_B1D: jax.Array, cfg: ModelConfig, draw: Params | None, step: jax.Array | int,
                top_k: int) -> jax.Array:
    """The next token [B] int32 from the hidden states h [B, 1, D]: the argmax of the logits without `draw`, else
    sampling.sample with the row keys of (seed, example, sample) folded with the decode step `step` (0 = the first
    new token)."""
    logits_BV = model.logits(params, h_B1D, cfg)[:, 0]
    if draw is None:
        return sampling_lib.greedy(logits_BV)
    keys_B = sampling_lib.step_keys(sampling_lib.row_keys(draw["seed"], draw["example_B"], draw["sample_B"]), step)
    return sampling_lib.sample(logits_BV, keys_B, draw["temperature"], draw["top_p"], top_k=top_k)


def prefill(
    params: Params,
    lora: Params | None,
    lora_scale: jax.Array,
    tokens_BT: jax.Array,
    lengths_B: jax.Array,
    draw: Params | None = None,
    *,
    cfg: ModelConfig,
    cache_len: int,
    top_k: int = 0,
) -> tuple[jax.Array, Params]:
    """Runs the right-padded prompts through the decoder into a fresh cache of `cache_len` slots.
    Returns (the first new token of each row [B], the cache). `draw` (None: greedy) holds the traced sampling
    inputs: {"seed": uint32 [], "example_B", "sample_B": uint32 [B], "temperature", "top_p": f32 []}."""
    B, T = tokens_BT.shape
    positions_BT = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
    cache = model.init_cache(cfg, B, cache_len)
    h_BTD, cache = model.decoder(params, model.embed(params, tokens_BT, cfg), positions_BT, cfg, lora=lora,
                                 lora_scale=lora_scale, cache=cache)
    # Only the last real position of each row needs logits: [B, T, V] never exists.
    last_B1D = jnp.take_along_axis(h_BTD, (lengths_B - 1)[:, None, None], axis=1)
    return _next_token(params, last_B1D, cfg, draw, 0, top_k), cache


def decode_loop(
    params: Params,
    lora: Params | None,
    lora_scale: jax.Array,
    cache: Params,
    first_B: jax.Array,
    lengths_B: jax.Array,
    done_B: jax.Array,
    max_new: jax.Array,
    stop_ids: jax.Array,
    draw: Params | None = None,
    *,
    cfg: ModelConfig,
    n_bucket: int,
    top_k: int = 0,
) -> jax.Array:
    """Generates up to `max_new` (<= n_bucket) tokens per row after `first_B`, one per step for every row, until
    every row has produced a stop id. Rows already done (`done_B`: padding rows) or finished write PAD_ID.
    Returns the tokens [B, n_bucket], first_B and the stop tokens included."""
    B = first_B.shape[0]
    out_BN = jnp.full((B, n_bucket), PAD_ID, jnp.int32).at[:, 0].set(jnp.where(done_B, PAD_ID, first_B))
    done_B = done_B | jnp.isin(first_B, stop_ids)
    # Per-layer weights, adapters and caches, sliced once here: the loop body then reads the weights in place
    # and writes each new token's keys/values into its layer's cache in place (see decoder.decoder_step).
    L = cfg.num_layers
    layers = model.layer_list(params["layers"], L)
    adapters = model.layer_list(None if lora is None else lora["layers"], L)
    cache = model.layer_list(cache, L)

    def cond(state: tuple) -> jax.Array:
        i, _, done_B, _, _ = state
        return (i < max_new) & ~jnp.all(done_B)

    def body(state: tuple) -> tuple:
        i, tok_B, done_B, out_BN, cache = state
        positions_B1 = (lengths_B + i - 1)[:, None]
        h_B1D, cache = model.decoder_step(params, layers, model.embed(params, tok_B[:, None], cfg), positions_B1,
                                          cfg, cache, adapters=adapters, lora_scale=lora_scale)
        next_B = _next_token(params, h_B1D, cfg, draw, i, top_k)
        out_BN = jax.lax.dynamic_update_slice(out_BN, jnp.where(done_B, PAD_ID, next_B)[:, None], (0, i))
        done_B = done_B | jnp.isin(next_B, stop_ids)
        return i + 1, next_B, done_B, out_BN, cache

    state = (jnp.int32(1), first_B, done_B, out_BN, cache)
    return jax.lax.while_loop(cond, body, state)[3]


def _completion(row: np.ndarray, stop: set[int]) -> Completion:
    for j, t in enumerate(row.tolist()):
        if t in stop:
            return Completion(row[:j].tolist(), "stop")
    return Completion(row.tolist(), "length")


def _generated(c: Completion) -> int:
    """Tokens the model produced for `c`, its stop token included."""
    return len(c.token_ids) + (c.finish_reason == "stop")


def check_prompts(prompts: Sequence[Sequence[int]], cfg: ModelConfig, where: Sequence[str] | None = None) -> None:
    """UserError for the first prompt that is empty, longer than the model's positions, or has an id outside the
    vocabulary. `where` names each prompt's source ("file:line") for the CLIs; by default prompts are numbered."""
    for i, p in enumerate(prompts):
        at = None if where is None else where[i]
        if len(p) == 0:
            raise UserError(f"prompt {i} is empty" if at is None else f"{at}: the prompt has no tokens")
        if len(p) > cfg.max_position_embeddings:
            raise UserError(f"{f'prompt {i}' if at is None else f'{at}: the prompt'} has {len(p)} tokens, more than "
                            f"the model's max_position_embeddings ({cfg.max_position_embeddings})")
        bad = next((t for t in p if not 0 <= t < cfg.vocab_size), None)
        if bad is not None:
            raise UserError(f"prompt {i} has token id {bad} outside the vocabulary [0, {cfg.vocab_size})" if at is None
                            else f"{at}: token id {bad} is outside the model's vocabulary [0, {cfg.vocab_size})")


def _split_rows(mesh: jax.sharding.Mesh, *arrays: np.ndarray) -> list[jax.Array]:
    """Host arrays, the same on every process -> global arrays with their rows split over the mesh's data x fsdp
    devices (every process's), so each device decodes its share of a batch."""
    def put(a: np.ndarray) -> jax.Array:
        spec = jax.sharding.PartitionSpec(sharding.BATCH_AXES, *[None] * (a.ndim - 1))
        return jax.make_array_from_callback(a.shape, jax.sharding.NamedSharding(mesh, spec), lambda i: a[i])
    return [put(a) for a in arrays]


def _to_host(x: jax.Array) -> np.ndarray:
    """The whole of a (possibly multi-process) array on this host: an all-gather when rows live elsewhere."""
    if x.is_fully_addressable or x.is_fully_replicated:
        return np.asarray(x)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def generate(
    params: Params,
    cfg: ModelConfig,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    stop_ids: Sequence[int],
    batch_size: int = 8,
    lora: Params | None = None,
    lora_scale: float = 1.0,
    sampling: Sampling = Sampling(),
    num_samples: int = 1,
    seed: int = 0,
    example_ids: Sequence[int] | None = None,
    verbose: bool = False,
    mesh: jax.sharding.Mesh | None = None,
) -> list[list[Completion]]:
    """`num_samples` continuations of each of `prompts` (token id lists): a list per prompt in input order, its
    samples in sample order. Greedy (sampling.temperature 0, the default) gives transformers'
    `generate(do_sample=False)` one prompt at a time; otherwise each token is drawn from transformers'
    Temperature -> TopK -> TopP distribution (sampling.py) with a key from (seed, the prompt's example id, the
    sample's index, the decode step) only, so a sample is the same at any batch size, order or bucket.
    `example_ids` (default 0, 1, ...): each prompt's index in its input file, in [0, 2^32).
    A row stops at the first of `stop_ids` (excluded from its tokens, finish_reason "stop") or after
    `max_new_tokens` ("length"). temperature and top_p are traced (new values do not recompile), top_k is static.
    With `mesh` (the one the params are sharded on), each batch's rows are split over its data x fsdp devices,
    those of every process; each process then passes the same prompts and gets every completion."""
    if max_new_tokens < 1 or batch_size < 1 or num_samples < 1:
        raise UserError(f"max_new_tokens ({max_new_tokens}), batch_size ({batch_size}) and num_samples "
                        f"({num_samples}) must be >= 1")
    if not 0 <= seed < 2**32:
        raise UserError(f"the sampling seed must be in [0, 2**32), got {seed}")
    example_ids = list(range(len(prompts))) if example_ids is None else [int(e) for e in example_ids]
    if len(example_ids) != len(prompts) or not all(0 <= e < 2**32 for e in example_ids):
        raise UserError(f"example_ids must give one id in [0, 2**32) per prompt ({len(prompts)} prompts)")
    check_prompts(prompts, cfg)
    if not prompts:
        return []
    stop_set = set(stop_ids)
    stop = np.full(bucket(len(stop_set), 8), PAD_ID, np.int32)  # padded: any few stop ids share one compile
    stop[: len(stop_set)] = sorted(stop_set)
    n_bucket = bucket(max_new_tokens, 16)
    divisor = 1 if mesh is None else sharding.batch_divisor(mesh)
    scale = jnp.float32(lora_scale)
    top_k = 0 if sampling.greedy else int(sampling.top_k)
    prefill_fn = jax.jit(prefill, static_argnames=("cfg", "cache_len", "top_k"))
    loop_fn = jax.jit(decode_loop, static_argnames=("cfg", "n_bucket", "top_k"))
    knobs = {"seed": jnp.uint32(seed), "temperature": jnp.float32(sampling.temperature),
             "top_p": jnp.float32(sampling.top_p)}

    # Rows are (prompt, sample) pairs. Longest first: similar lengths share a batch (less padding), and running
    # out of memory happens at once. Keys never see this order.
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    rows = [(i, s) for i in order for s in range(num_samples)]
    results: list[list[Completion | None]] = [[None] * num_samples for _ in prompts]
    shapes: set[tuple[int, int]] = set()
    t_prefill, n_prompt, t_warm, n_warm, t0 = 0.0, 0, 0.0, 0, time.perf_counter()
    for start in tqdm(range(0, len(rows), batch_size), desc="decode", unit="batch", disable=not verbose,
                      file=sys.stderr):
        batch = rows[start: start + batch_size]
        B = -(-min(bucket(len(batch), 1), batch_size) // divisor) * divisor  # rows split evenly over the mesh
        T = bucket(max(len(prompts[i]) for i, _ in batch), 16)
        tokens_BT = np.zeros((B, T), np.int32)
        lengths_B = np.ones(B, np.int32)
        done_B = np.ones(B, bool)  # padding rows start done, so they never keep the loop running
        example_B, sample_B = np.zeros(B, np.uint32), np.zeros(B, np.uint32)
        for r, (i, s) in enumerate(batch):
            tokens_BT[r, : len(prompts[i])] = prompts[i]
            lengths_B[r], done_B[r], example_B[r], sample_B[r] = len(prompts[i]), False, example_ids[i], s
        warm = (B, T) in shapes  # this shape compiled earlier in the run
        shapes.add((B, T))
        t1 = time.perf_counter()
        host = (tokens_BT, lengths_B, done_B, example_B, sample_B)
        tokens, lengths, done, example, sample = host if mesh is None else _split_rows(mesh, *host)
        draw = None if sampling.greedy else {**knobs, "example_B": example, "sample_B": sample}
        first_B, cache = prefill_fn(params, lora, scale, tokens, lengths, draw, cfg=cfg, cache_len=T + n_bucket,
                                    top_k=top_k)
        if verbose:
            first_B.block_until_ready()
            t_prefill += time.perf_counter() - t1
            n_prompt += int(lengths_B[~done_B].sum())
        out_BN = loop_fn(params, lora, scale, cache, first_B, lengths, done, jnp.int32(max_new_tokens), stop, draw,
                         cfg=cfg, n_bucket=n_bucket, top_k=top_k)
        out_BN = _to_host(out_BN)[:, :max_new_tokens]
        for r, (i, s) in enumerate(batch):
            results[i][s] = _completion(out_BN[r], stop_set)
        if warm:
            t_warm += time.perf_counter() - t1
            n_warm += sum(_generated(results[i][s]) for i, s in batch)
    if verbose:
        dt = time.perf_counter() - t0
        n_new = sum(_generated(c) for cs in results for c in cs)
        msg = (f"decode: {len(prompts)} prompts x {num_samples} samples, {n_new} new tokens in {dt:.2f} s = "
               f"{n_new / dt:.1f} tokens/s (prefill of {n_prompt} prompt tokens {t_prefill:.2f} s; "
               f"{len(shapes)} batch shapes compiled")
        if n_warm:
            msg += f"; {n_warm / t_warm:.1f} tokens/s over the batches that did not compile"
        print(msg + ")", file=sys.stderr)
    return results  # type: ignore[return-value]


def greedy(
    params: Params,
    cfg: ModelConfig,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    stop_ids: Sequence[int],
    batch_size: int = 8,
    lora: Params | None = None,
    lora_scale: float = 1.0,
    verbose: bool = False,
    mesh: jax.sharding.Mesh | None = None,
) -> list[Completion]:
    """Greedy continuations of `prompts`, in input order, as transformers' `generate(do_sample=False)` computes
    them one prompt at a time: `generate` with its default sampling (temperature 0) and one sample per prompt."""
    out = generate(params, cfg, prompts, max_new_tokens=max_new_tokens, stop_ids=stop_ids, batch_size=batch_size,
                   lora=lora, lora_scale=lora_scale, verbose=verbose, mesh=mesh)
    return [samples[0] for samples in out]
