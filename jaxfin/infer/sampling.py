"""Exact, reproducible token sampling: transformers' Temperature -> TopK -> TopP warpers, then a categorical draw.

Source: transformers 5.24 generation/logits_process.py (TemperatureLogitsWarper, TopKLogitsWarper,
TopPLogitsWarper, min_tokens_to_keep=1, filter value -inf) and generation/utils.py (_get_logits_processor: that
order, each skipped when T == 1, K == 0, P >= 1; _sample: softmax of the f32 scores, then torch.multinomial).

The rules, per row of scaled scores x = logits / T (f32, rounded as torch divides):
- top-k keeps x >= (the k-th largest x, duplicates counted): every token tied with the k-th is kept; K >= V keeps all.
- top-p orders the survivors by x descending, ties by token id descending (what a stable ascending sort gives),
  and keeps a token iff the probability mass strictly before it is < P (transformers: removes the ascending
  cumulative sum <= 1 - P), and always the most probable. transformers sorts with an unstable torch.sort, so which
  of several tokens tied at the cut it keeps is unspecified; how many it keeps is not, and that we match.
Temperature 0 is greedy: the first maximum of the raw logits, as torch.argmax.

Nothing here sorts the vocabulary: written with a full sort, as transformers does, sampling costs 60-80x an argmax
on CPU at V = 49,152. Top-p is decided on the `lax.top_k` list of the K (or CANDIDATES) best tokens when the
nucleus ends inside it, and otherwise by a bisection on the float bits of the cut (32 masked sums). The draw is an
inverse CDF in token-id order over blocks, two uniforms per row, so its random numbers depend neither on the
vocabulary size nor on how rows are split.

Keys come from (seed, the example's index in its input file, the sample's index, the decode step) only, never from
a row's place in a batch: `row_keys` once per batch, `step_keys` inside the decode loop (one fold_in per row).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

CANDIDATES = 64  # top-p with K == 0 first looks for its cut among this many best tokens (lax.top_k is cheap)
_STREAM = 0x53414D50  # "SAMP": sampling keys never coincide with keys the same seed gives elsewhere (data, noise)
_ALL = np.iinfo(np.int32).max  # "keep every token tied at the cut"


@dataclasses.dataclass(frozen=True)
class Sampling:
    """How to pick each next token. temperature 0 = greedy (the other fields are then ignored); top_k 0 = off;
    top_p 1 = off. Note transformers' GenerationConfig defaults to top_k=50 when sampling; here 0 means off."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Raises ValueError naming the first bad field."""
        t, k, p = self.temperature, self.top_k, self.top_p
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t < 0:
            raise ValueError(f"sampling.temperature must be a finite number >= 0 (0 = greedy), got {t!r}")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
            raise ValueError(f"sampling.top_k must be an integer >= 0 (0 = off), got {k!r}")
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p <= 1:  # NaN fails too
            raise ValueError(f"sampling.top_p must be in (0, 1] (1 = off), got {p!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def row_keys(seed: int | jax.Array, example_B: jax.Array, sample_B: jax.Array) -> jax.Array:
    """Typed PRNG keys [B] of rows that continue example `example_B` (its index in the input file) as sample
    `sample_B` (0, 1, ... for several samples of one example). Fold them with `step_keys` per decode step.
    A Python int seed must lie in [0, 2^32): jax.random.key keeps only its low 32 bits, so 2^32 would repeat 0."""
    if isinstance(seed, (int, np.integer)) and not 0 <= seed < 2**32:
        raise ValueError(f"sampling seed must be in [0, 2**32), got {seed}")
    base = jax.random.fold_in(jax.random.key(seed), _STREAM)
    fold = jax.vmap(lambda e, s: jax.random.fold_in(jax.random.fold_in(base, e), s))
    return fold(jnp.asarray(example_B, jnp.uint32), jnp.asarray(sample_B, jnp.uint32))


def step_keys(keys_B: jax.Array, step: int | jax.Array) -> jax.Array:
    """The keys [B] for decode step `step` (scalar or [B]): one fold_in per row, cheap inside a while_loop."""
    step_B = jnp.broadcast_to(jnp.asarray(step, jnp.uint32), keys_B.shape)
    return jax.vmap(jax.random.fold_in)(keys_B, step_B)


def _rows(x: float | jax.Array, B: int) -> jax.Array:
    return jnp.broadcast_to(jnp.asarray(x, jnp.float32), (B,))


def _scale(x_BV: jax.Array, t_B: jax.Array) -> jax.Array:
    """x / T per row, rounded as torch's division (greedy rows T == 0 divide by 1). XLA turns a division by a
    broadcast into a multiplication by the reciprocal, which differs in the last bit for 1/3 of the scores; the
    barrier hides the broadcast."""
    t_BV = jax.lax.optimization_barrier(jnp.broadcast_to(jnp.where(t_B == 0, 1.0, t_B)[:, None], x_BV.shape))
    return x_BV / t_BV


def _ordered_bits(x: jax.Array) -> jax.Array:
    """uint32 keys ordered as the floats x (no NaN); -0.0 maps to +0.0's key, since the two compare equal."""
    bits = jax.lax.bitcast_convert_type(jnp.where(x == 0, 0.0, x), jnp.uint32)
    return jnp.where(bits >> 31 == 1, ~bits, bits | jnp.uint32(1 << 31))


def _from_ordered_bits(key: jax.Array) -> jax.Array:
    bits = jnp.where(key >> 31 == 1, key & jnp.uint32(0x7FFFFFFF), ~key)
    return jax.lax.bitcast_convert_type(bits, jnp.float32)


def _best(x_BV: jax.Array, k: int) -> jax.Array:
    """The k largest scores per row, descending. The barrier keeps XLA from turning lax.top_k followed by a slice
    into a full sort (seen on CPU: 600 ms instead of 5 ms at B=32, V=49,152)."""
    return jax.lax.optimization_barrier(jax.lax.top_k(x_BV, k)[0])


def _cut_in_list(list_Bm: jax.Array, vmax_B1: jax.Array, pz_B: jax.Array, listed_all_B: jax.Array
                 ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Top-p on the descending list of the m best scores: (the cut value, ties kept at it, decided). Undecided
    rows are those whose nucleus may go on past the list."""
    m = list_Bm.shape[1]
    q_Bm = jnp.exp(list_Bm - vmax_B1)
    cum_Bm = jnp.cumsum(q_Bm, axis=1)
    before_Bm = jnp.concatenate([jnp.zeros_like(cum_Bm[:, :1]), cum_Bm[:, :-1]], axis=1)
    first_m = jnp.arange(m) == 0
    n_B = jnp.sum(first_m | (before_Bm < pz_B[:, None]), axis=1)  # a prefix: `before` never decreases
    cut_B = jnp.take_along_axis(list_Bm, (n_B - 1)[:, None], axis=1)[:, 0]
    ties_B = jnp.sum((list_Bm == cut_B[:, None]) & (jnp.arange(m) < n_B[:, None]), axis=1)
    decided_B = (n_B < m) | (cum_Bm[:, -1] >= pz_B) | listed_all_B
    return cut_B, ties_B, decided_B


def _cut_by_bisection(x_BV: jax.Array, w_BV: jax.Array, vmax_B: jax.Array, pz_B: jax.Array
                      ) -> tuple[jax.Array, jax.Array]:
    """Top-p without a sort: the smallest float c whose mass strictly above is < P (so c is a token's score),
    found over c's ordered bits (32 masked sums), then how many tokens tied at c fit under P."""
    key_BV = _ordered_bits(x_BV)

    def above(c_B: jax.Array) -> jax.Array:
        return jnp.sum(jnp.where(key_BV > c_B[:, None], w_BV, 0.0), axis=1)

    def body(_: int, state: tuple) -> tuple:
        lo_B, hi_B = state  # invariant: above(lo) >= P*Z > above(hi); a converged row (hi = lo + 1) stays put
        mid_B = lo_B + (hi_B - lo_B) // 2
        ok_B = above(mid_B) < pz_B
        return jnp.where(ok_B, lo_B, mid_B), jnp.where(ok_B, mid_B, hi_B)

    # 32 halvings close any uint32 interval; a fixed trip count also spares a GPU the per-step predicate copy.
    lo_B, hi_B = jnp.zeros_like(vmax_B, jnp.uint32), _ordered_bits(vmax_B)
    _, hi_B = jax.lax.fori_loop(0, 32, body, (lo_B, hi_B))
    cut_B = _from_ordered_bits(hi_B)
    q_B = jnp.exp(cut_B - vmax_B)  # each tied token's mass; the j-th tie (j = 0, 1, ..) has above(cut) + j*q before it
    ties_B = jnp.ceil((pz_B - above(hi_B)) / q_B)
    return cut_B, jnp.clip(ties_B, 1, _ALL).astype(jnp.int32)


def _support(x_BV: jax.Array, top_p_B: jax.Array, greedy_B: jax.Array, top_k: int) -> tuple[jax.Array, jax.Array]:
    """The top-k then top-p survivors of the scaled scores x: (keep mask [B, V], exp(x - max) [B, V]). Greedy
    rows keep their maxima (e = 1 there), so a mixed batch needs no argmax pass."""
    B, V = x_BV.shape
    vmax_B = jnp.max(x_BV, axis=1)
    top_p_B = jnp.where(greedy_B, 1.0, top_p_B)
    e_BV = jnp.exp(x_BV - vmax_B[:, None])
    if 0 < top_k < V:
        best_Bk = _best(x_BV, top_k)
        kcut_B = best_Bk[:, -1]
        w_BV = jnp.where(x_BV >= kcut_B[:, None], e_BV, 0.0)
    else:
        best_Bk = None
        kcut_B = jnp.full((B,), -jnp.inf)
        w_BV = e_BV

    def top_p() -> tuple[jax.Array, jax.Array]:
        pz_B = top_p_B * jnp.sum(w_BV, axis=1)  # compare unnormalised masses with P * Z
        list_Bm = best_Bk if best_Bk is not None else _best(x_BV, min(CANDIDATES, V))
        if best_Bk is None:
            listed_all_B = jnp.full((B,), V <= list_Bm.shape[1])
        else:  # ties with the k-th token can make the top-k survivors outnumber the list
            listed_all_B = jnp.sum(x_BV >= kcut_B[:, None], axis=1) <= list_Bm.shape[1]
        cut_B, ties_B, decided_B = _cut_in_list(list_Bm, vmax_B[:, None], pz_B, listed_all_B)
        cut_B, ties_B = jax.lax.cond(jnp.all(decided_B | (top_p_B >= 1)), lambda: (cut_B, ties_B),
                                     lambda: _cut_by_bisection(x_BV, w_BV, vmax_B, pz_B))
        off_B = top_p_B >= 1  # transformers skips the warper at P == 1 (it would drop tokens of probability 0)
        return jnp.where(off_B, kcut_B, cut_B), jnp.where(off_B, _ALL, ties_B)

    cut_B, ties_B = jax.lax.cond(jnp.all(top_p_B >= 1), lambda: (kcut_B, jnp.full((B,), _ALL, jnp.int32)), top_p)
    cut_B = jnp.where(greedy_B, vmax_B, cut_B)
    tie_BV = x_BV == cut_B[:, None]
    ties_B = jnp.where(ties_B >= jnp.sum(tie_BV, axis=1), _ALL, ties_B)

    def some_ties() -> jax.Array:  # the cut splits a group of equal scores: keep its highest token ids
        later_BV = jnp.sum(tie_BV, axis=1, keepdims=True) - jnp.cumsum(tie_BV, axis=1)
        return (x_BV > cut_B[:, None]) | (tie_BV & (later_BV < ties_B[:, None]))

    keep_BV = jax.lax.cond(jnp.all(ties_B == _ALL), lambda: x_BV >= cut_B[:, None], some_ties)
    return keep_BV, e_BV


def _pick(w_BN: jax.Array, u_B: jax.Array) -> jax.Array:
    """Inverse CDF: the first n with cumsum(w)[n] > u * sum(w); a rounding past the end falls on the last n of
    positive weight. u = 0 gives the first positive weight."""
    c_BN = jnp.cumsum(w_BN, axis=1)
    n_B = jnp.sum(c_BN <= (u_B * c_BN[:, -1])[:, None], axis=1)
    last_B = w_BN.shape[1] - 1 - jnp.argmax(w_BN[:, ::-1] > 0, axis=1)
    return jnp.minimum(n_B, last_B)


def _draw(w_BV: jax.Array, u_B2: jax.Array) -> jax.Array:
    """A token with probability w / sum(w) per row: a block of token ids by its mass (u[:, 0]), then a token
    inside it (u[:, 1]). Two levels: only [B, V / block] and [B, block] cumsums, and each uniform's 2^-23
    granularity is relative to a block's mass, not the total."""
    B, V = w_BV.shape
    block = 1 << max(0, math.ceil(math.log2(math.sqrt(V))))
    n_blocks = -(-V // block)
    w_BNb = jnp.pad(w_BV, ((0, 0), (0, n_blocks * block - V))).reshape(B, n_blocks, block)
    b_B = _pick(jnp.sum(w_BNb, axis=2), u_B2[:, 0])
    inner_Bb = jnp.take_along_axis(w_BNb, b_B[:, None, None], axis=1)[:, 0]
    return (b_B * block + _pick(inner_Bb, u_B2[:, 1])).astype(jnp.int32)


def greedy(logits_BV: jax.Array) -> jax.Array:
    """The first maximum of each row [B] int32, as torch.argmax (a NaN counts as the maximum). Two plain
    reductions: on CPU jnp.argmax's pair reduction costs 4-5x this at V = 49,152."""
    V = logits_BV.shape[1]
    top_B1 = jnp.max(logits_BV, axis=1, keepdims=True)
    at_top_BV = (logits_BV == top_B1) | jnp.isnan(logits_BV)
    return jnp.min(jnp.where(at_top_BV, jnp.arange(V, dtype=jnp.int32), V - 1), axis=1)


def filter_logits(logits_BV: jax.Array, temperature: float | jax.Array, top_p: float | jax.Array, *,
                  top_k: int = 0) -> jax.Array:
    """transformers' Temperature -> TopK -> TopP warper chain: f32 scores logits / T with -inf where filtered
    (their softmax is the distribution `sample` draws from). temperature / top_p: scalars or [B]. Rows with
    T == 0 keep only the greedy token (at its raw logit)."""
    x_BV = logits_BV.astype(jnp.float32)
    B, V = x_BV.shape
    t_B, p_B = _rows(temperature, B), _rows(top_p, B)
    scaled_BV = _scale(x_BV, t_B)
    keep_BV, _ = _support(scaled_BV, p_B, t_B == 0, top_k)
    first_BV = jnp.arange(V) == greedy(x_BV)[:, None]
    return jnp.where(t_B[:, None] == 0, jnp.where(first_BV, x_BV, -jnp.inf), jnp.where(keep_BV, scaled_BV, -jnp.inf))


def sample(logits_BV: jax.Array, keys_B: jax.Array, temperature: float | jax.Array, top_p: float | jax.Array, *,
           top_k: int = 0) -> jax.Array:
    """The next token [B] int32 of each row: a draw from softmax(filter_logits(...)) with the row's key, or the
    first maximum of the logits where T == 0. temperature / top_p are traced (scalars or [B]): new values do not
    recompile; top_k is static. When every row is greedy only `greedy` runs."""
    x_BV = logits_BV.astype(jnp.float32)  # transformers samples from f32 scores too
    B = x_BV.shape[0]
    t_B, p_B = _rows(temperature, B), _rows(top_p, B)

    def draw() -> jax.Array:
        keep_BV, e_BV = _support(_scale(x_BV, t_B), p_B, t_B == 0, top_k)
        u_B2 = jax.vmap(lambda k: jax.random.uniform(k, (2,)))(keys_B)
        # Greedy rows of a mixed batch: equal weights on their maxima, and u = 0 picks the first.
        return _draw(jnp.where(keep_BV, e_BV, 0.0), jnp.where(t_B[:, None] == 0, 0.0, u_B2))

    return jax.lax.cond(jnp.all(t_B == 0), lambda: greedy(x_BV), draw)
