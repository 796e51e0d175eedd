"""jaxfin.infer.sampling against transformers 5.24's warpers (TemperatureLogitsWarper -> TopKLogitsWarper ->
TopPLogitsWarper, applied as generate's _get_logits_processor applies them), plus draws, keys and compile counts.

Tolerance: the same support (set of finite scores) and softmax probabilities within 1e-6 absolute, on data without
ties; with ties, the same number of tokens kept and the rule "highest token ids first" at a top-p cut.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
import torch
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from jaxfin.infer import sampling
from jaxfin.infer.sampling import Sampling

PROB_TOL = 1e-6


def hf_filter(x_V: np.ndarray, t: float, k: int, p: float) -> np.ndarray:
    """transformers' warper chain on one row, each warper only when generate would add it."""
    s = torch.from_numpy(np.asarray(x_V, np.float32)[None])
    if t != 1.0:
        s = TemperatureLogitsWarper(float(t))(None, s)
    if k != 0:
        s = TopKLogitsWarper(int(k))(None, s)
    if p < 1.0:
        s = TopPLogitsWarper(float(p))(None, s)
    return s[0].numpy()


def softmax(x: np.ndarray) -> np.ndarray:
    return torch.softmax(torch.tensor(np.asarray(x, np.float32)), -1).numpy()


filter_jit = jax.jit(sampling.filter_logits, static_argnames="top_k")
sample_jit = jax.jit(sampling.sample, static_argnames="top_k")


def _rows(rng: np.random.Generator, n: int, V: int, regime: str) -> np.ndarray:
    """Tie-free f32 logits. "peaked": a few tokens far above the rest (nuclei inside the 64-token candidate
    list); "flat": unit normal (nuclei of hundreds of tokens: the bisection path)."""
    x = np.empty((n, V), np.float32)
    for r in range(n):
        while True:
            x[r] = rng.standard_normal(V)
            if regime == "peaked":
                x[r] *= 2
                x[r, rng.choice(V, 8, replace=False)] += rng.uniform(6, 14, 8).astype(np.float32)
            if len(np.unique(x[r])) == V:
                break
    return x


@pytest.mark.parametrize("top_k", [0, 1, 7, 50, 200, 1000, 1003])
def test_filter_matches_transformers(top_k):
    """>= 1,000 rows over all K (incl. K >= V) x both regimes x a grid of T and P (incl. P -> 0 and P = 1)."""
    rng = np.random.default_rng(top_k)
    V, n = 1000, 80
    temps = np.array([0.25, 0.6, 1.0, 1.3, 2.5], np.float32)
    tops = np.array([1e-9, 0.05, 0.3, 0.7, 0.9, 0.99, 1.0], np.float32)
    sizes = []
    for regime in ("peaked", "flat"):
        x = _rows(rng, n, V, regime)
        t_B = temps[rng.integers(len(temps), size=n)]
        p_B = tops[rng.integers(len(tops), size=n)]
        got = np.asarray(filter_jit(x, t_B, p_B, top_k=top_k))
        for r in range(n):
            ref = hf_filter(x[r], float(t_B[r]), top_k, float(p_B[r]))
            np.testing.assert_array_equal(np.isfinite(got[r]), np.isfinite(ref),
                                          err_msg=f"support, row {r} {regime} T={t_B[r]} K={top_k} P={p_B[r]}")
            np.testing.assert_array_equal(got[r][np.isfinite(ref)], ref[np.isfinite(ref)])  # x / T to the bit
            np.testing.assert_allclose(softmax(got[r]), softmax(ref), rtol=0, atol=PROB_TOL)
            kept = int(np.isfinite(ref).sum())
            sizes.append(kept)
            if p_B[r] < 1e-6 or top_k == 1:
                assert kept == 1 and np.isfinite(got[r, np.argmax(x[r])])
            if top_k in (0, 1000, 1003) and p_B[r] == 1.0:
                assert kept == V
    if top_k == 0:  # both top-p paths ran: the nucleus inside the candidate list and past it
        assert min(sizes) == 1 and max(s for s in sizes if s < V) > sampling.CANDIDATES


def test_top_p_one_keeps_zero_probability_tokens():
    """transformers skips TopP at P = 1, so tokens whose probability underflows stay; at P < 1 they go."""
    x = np.zeros((2, 8), np.float32)
    x[:, 0], x[:, 1], x[:, 5] = 50.0, 49.0, -200.0
    got = np.asarray(filter_jit(x, np.float32([1.0, 1.0]), np.float32([1.0, 0.999999]), top_k=0))
    for r, p in enumerate((1.0, 0.999999)):
        np.testing.assert_array_equal(np.isfinite(got[r]), np.isfinite(hf_filter(x[r], 1.0, 0, p)))
    assert np.isfinite(got[0]).all() and not np.isfinite(got[1, 5])


@pytest.mark.parametrize("V,top_k", [(4, 0), (4, 2), (256, 0), (256, 100)])
def test_top_p_cut_on_exact_masses(V, top_k):
    """Equal logits give exact masses (1/V each; 2 and 100 keep all ties), so a cut falls exactly on a
    cumulative sum: transformers removes cum <= 1 - P (keeps mass_before < P, strictly). V = 256 goes past the
    64-token candidate list (the bisection path)."""
    x = np.zeros((3, V), np.float32)
    p_B = np.float32([0.25, 0.5, 0.75])
    got = np.asarray(filter_jit(x, 1.0, p_B, top_k=top_k))
    for r in range(3):
        ref = hf_filter(x[r], 1.0, top_k, float(p_B[r]))
        assert np.isfinite(got[r]).sum() == np.isfinite(ref).sum() == p_B[r] * V


def test_bisection_cut_is_strict():
    """The bisection (nuclei past the candidate list) keeps a token iff the mass strictly before it is < P*Z, as
    the list path does; weights set by hand so that a mass before equals P*Z exactly."""
    x = jnp.float32([[3.0, 2.0, 1.0, 0.0, -1.0]])
    w = jnp.ones((1, 5), jnp.float32)
    for pz, cut in ((2.0, 2.0), (2.5, 1.0), (1.0, 3.0), (5.0, -1.0)):
        got, _ = sampling._cut_by_bisection(x, w, jnp.float32([3.0]), jnp.float32([pz]))
        assert float(got[0]) == cut, (pz, got)


def test_ties():
    """Top-k keeps every token tied with the k-th (as transformers). At a top-p cut inside a group of equal
    scores, as many are kept as transformers keeps (any sort order gives that count), the highest ids first (what
    a stable ascending sort gives; torch.sort's own order there is unspecified)."""
    rng = np.random.default_rng(7)
    V = 300
    x = rng.integers(-6, 6, size=(64, V)).astype(np.float32)  # lots of ties everywhere
    for k in (0, 5, 40):
        # P off simple fractions: 20 tied tokens of mass 0.05 and P = 0.6 would put the cut exactly on a
        # rounding (transformers keeps 13 of them, exact arithmetic 12)
        p_B = rng.choice(np.float32([0.137, 0.4213, 0.6619, 0.8734, 1.0]), size=64)
        got = np.asarray(filter_jit(x, 1.0, p_B, top_k=k))
        for r in range(64):
            ref = hf_filter(x[r], 1.0, k, float(p_B[r]))
            if p_B[r] == 1.0:
                np.testing.assert_array_equal(np.isfinite(got[r]), np.isfinite(ref))
                continue
            assert np.isfinite(got[r]).sum() == np.isfinite(ref).sum(), (k, r)
            # the stable-sort reading of TopPLogitsWarper, written out
            s = hf_filter(x[r], 1.0, k, 1.0)
            order = np.argsort(s, kind="stable")  # ascending, ties by id
            cum = np.cumsum(softmax(s[order]).astype(np.float64))
            remove = cum <= 1 - p_B[r]
            remove[-1] = False
            want = np.ones(V, bool)
            want[order[remove]] = False
            np.testing.assert_array_equal(np.isfinite(got[r]) & np.isfinite(s), want & np.isfinite(s))


def test_greedy_rows():
    """T = 0 is torch.argmax (the first maximum), alone or in a batch mixed with sampled rows; T -> 0 and
    top_k = 1 give the same token."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((6, 50)).astype(np.float32)
    x[:, [3, 17, 40]] = 9.0  # three tied maxima: the first is 3
    keys = sampling.row_keys(0, jnp.arange(6), jnp.zeros(6, jnp.int32))
    first = torch.argmax(torch.from_numpy(x), -1).numpy()
    assert (first == 3).all()
    for t_B in (np.zeros(6, np.float32), np.float32([0, 1, 0, 2, 0, 1])):
        tok = np.asarray(sample_jit(x, keys, t_B, 0.9, top_k=0))
        np.testing.assert_array_equal(tok[t_B == 0], 3)
    y = x.copy()
    y[:, 17] = 9.5  # a unique maximum
    for t, k in ((1e-4, 0), (1.0, 1), (3.0, 1)):
        for step in range(5):
            tok = np.asarray(sample_jit(y, sampling.step_keys(keys, step), t, 1.0, top_k=k))
            np.testing.assert_array_equal(tok, 17)
    z = np.random.default_rng(2).integers(-3, 3, size=(40, 33)).astype(np.float32)  # ties at the maximum
    z[0] = -np.inf
    z[1, [4, 9]] = np.nan
    z[2, -1] = 5.0
    np.testing.assert_array_equal(np.asarray(jax.jit(sampling.greedy)(z)), torch.argmax(torch.tensor(z), -1))
    np.testing.assert_array_equal(np.asarray(filter_jit(x, 0.0, 1.0, top_k=0)) > -np.inf,
                                  np.broadcast_to(np.arange(50) == 3, (6, 50)))


@pytest.mark.parametrize("V,t,k,p,scale", [(20, 0.8, 10, 0.9, 1.0),      # the top-k list decides top-p
                                           (1000, 1.0, 0, 0.3, 1.0),    # bisection; 1000 = padded blocks
                                           (1000, 1.5, 0, 1.0, 0.3)])   # no filter: the whole vocabulary
def test_draws_chi_square(V, t, k, p, scale):
    """10,000 draws from one fixed row (10,000 different keys) fit the filtered probabilities."""
    n = 10_000
    x = (np.random.default_rng(V).standard_normal(V) * scale).astype(np.float32)
    probs = softmax(hf_filter(x, t, k, p)).astype(np.float64)
    keys = sampling.step_keys(sampling.row_keys(3, jnp.arange(n), jnp.zeros(n, jnp.int32)), 0)
    tok = np.asarray(sample_jit(jnp.broadcast_to(x, (n, V)), keys, t, p, top_k=k))
    assert probs[tok].min() > 0, "a draw outside the support"
    observed = np.bincount(tok, minlength=V).astype(np.float64)
    support = probs > 0
    if (n * probs[support]).min() < 5:  # pool the tail into one bin, as chi-square wants
        small = support & (n * probs < 5)
        support &= ~small
        obs, exp = np.append(observed[support], observed[small].sum()), np.append(probs[support], probs[small].sum())
    else:
        obs, exp = observed[support], probs[support]
    assert len(obs) >= 5
    pvalue = scipy.stats.chisquare(obs, n * exp / exp.sum()).pvalue
    assert pvalue > 1e-3, pvalue


def test_keys_depend_on_example_sample_step_only():
    seed = 1234
    ex = np.array([5, 0, 17, 5, 2**31 + 3], np.uint32)
    smp = np.array([0, 0, 1, 1, 4], np.int32)

    def data(keys: jax.Array) -> np.ndarray:
        return np.asarray(jax.random.key_data(keys))

    base = data(sampling.step_keys(sampling.row_keys(seed, ex, smp), 9))
    perm = np.array([3, 1, 4, 0, 2])
    np.testing.assert_array_equal(data(sampling.step_keys(sampling.row_keys(seed, ex[perm], smp[perm]), 9)),
                                  base[perm])
    for r in range(5):  # one row alone, a per-row step
        alone = data(sampling.step_keys(sampling.row_keys(seed, ex[r:r + 1], smp[r:r + 1]), np.array([9])))
        np.testing.assert_array_equal(alone[0], base[r])
    assert len({tuple(k) for k in base}) == 5
    assert len({tuple(data(sampling.step_keys(sampling.row_keys(seed, ex[:1], smp[:1]), s))[0])
                for s in range(4)}) == 4
    assert not np.array_equal(data(sampling.step_keys(sampling.row_keys(seed + 1, ex, smp), 9)), base)
    with pytest.raises(ValueError, match="seed"):
        sampling.row_keys(2**32, ex, smp)  # jax.random.key would silently take it as seed 0
    # so a row draws the same token wherever it sits in a batch
    x = np.random.default_rng(0).standard_normal((5, 300)).astype(np.float32)
    keys = sampling.step_keys(sampling.row_keys(seed, ex, smp), 9)
    tok = np.asarray(sample_jit(x, keys, 1.0, 0.95, top_k=0))
    keys_p = sampling.step_keys(sampling.row_keys(seed, ex[perm], smp[perm]), 9)
    np.testing.assert_array_equal(np.asarray(sample_jit(x[perm], keys_p, 1.0, 0.95, top_k=0)), tok[perm])


def test_no_recompile_for_new_temperature_or_top_p():
    """temperature / top_p are traced: greedy, sampling and new values share one executable per top_k."""
    f = jax.jit(lambda x, keys, t, p: sampling.sample(x, keys, t, p, top_k=5))
    x = np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32)
    keys = sampling.row_keys(0, jnp.arange(4), jnp.zeros(4, jnp.int32))
    for t, p in ((0.0, 1.0), (1.0, 1.0), (0.7, 0.9), (2.0, 0.1), (0.0, 0.5)):
        f(x, keys, jnp.float32(t), jnp.float32(p)).block_until_ready()
    for t_B in (np.float32([0, 1, 2, 0.5]), np.float32([1, 1, 1, 1])):  # per-row values: one more shape
        f(x, keys, t_B, np.full(4, 0.8, np.float32)).block_until_ready()
    assert f._cache_size() == 2


def test_inside_while_loop():
    """The decode loop's use: step keys folded in a lax.while_loop give the tokens of step-by-step calls."""
    x = np.random.default_rng(0).standard_normal((3, 40)).astype(np.float32)
    base = sampling.row_keys(0, jnp.array([4, 1, 9]), jnp.array([0, 2, 0]))
    t_B, p_B = np.float32([1.0, 0.0, 0.8]), np.float32([0.9, 1.0, 1.0])

    @jax.jit
    def loop(x, base, t_B, p_B):
        def body(state):
            i, out = state
            tok = sampling.sample(x + i, sampling.step_keys(base, i), t_B, p_B, top_k=10)
            return i + 1, out.at[:, i].set(tok)
        return jax.lax.while_loop(lambda s: s[0] < 6, body, (0, jnp.zeros((3, 6), jnp.int32)))[1]

    want = np.stack([np.asarray(sample_jit(x + i, sampling.step_keys(base, i), t_B, p_B, top_k=10))
                     for i in range(6)], 1)
    np.testing.assert_array_equal(np.asarray(loop(x, base, t_B, p_B)), want)


@pytest.mark.parametrize("kwargs,field", [
    ({"temperature": -0.1}, "temperature"), ({"temperature": float("nan")}, "temperature"),
    ({"temperature": float("inf")}, "temperature"), ({"top_p": 0.0}, "top_p"), ({"top_p": 1.5}, "top_p"),
    ({"top_p": -1.0}, "top_p"), ({"top_p": float("nan")}, "top_p"), ({"top_k": -1}, "top_k"),
    ({"top_k": 2.5}, "top_k"), ({"top_k": True}, "top_k"),
])
def test_bad_values_raise(kwargs, field):
    with pytest.raises(ValueError, match=f"sampling.{field}"):
        Sampling(**kwargs)


def test_sampling_defaults():
    s = Sampling()
    assert (s.temperature, s.top_k, s.top_p, s.greedy) == (0.0, 0, 1.0, True)
    assert not Sampling(temperature=0.7, top_k=50, top_p=0.95).greedy
