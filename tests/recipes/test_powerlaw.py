"""jaxfin.recipes.powerlaw: the OLS fit against scipy.stats.linregress, the paired bootstrap against a by-hand
replicate loop and against simulated data with a known α (coverage), F1 averaging against sklearn, the subsets,
the plot."""

import json
import math
import os

import numpy as np
import pytest
from scipy import stats as scipy_stats
from sklearn.metrics import f1_score

from jaxfin.recipes import powerlaw


DS = [100, 200, 400, 800, 1600]


def exact_points(alpha=0.28, log_a=math.log(1.5)):
    return [{"n_examples": d, "f1": 1 - math.exp(log_a) * d ** -alpha, "run": f"runs/d{d}"} for d in DS]


def noisy_points(seed=1):
    rng = np.random.default_rng(seed)
    pts = []
    for d in DS:
        for s in range(3):  # three seeds per size: each one observation
            pts.append({"n_examples": d, "f1": 1 - 1.5 * d ** -0.28 * math.exp(rng.normal(0, 0.05)), "seed": s})
    return pts


def test_exact_power_law():
    r = powerlaw.fit(exact_points())
    assert r["alpha"] == pytest.approx(0.28, abs=1e-9)
    assert r["log_A"] == pytest.approx(math.log(1.5), abs=1e-9)
    assert r["alpha_se"] < 1e-9 and r["r2"] == pytest.approx(1.0, abs=1e-12)
    assert r["alpha_ci95"][0] == pytest.approx(0.28, abs=1e-8) and r["alpha_ci95"][1] == pytest.approx(0.28, abs=1e-8)
    assert r["alpha_ci95_bootstrap"] is None and r["bootstrap"] is None  # no per-example statistics
    assert [p["run"] for p in r["points"]] == [f"runs/d{d}" for d in DS]  # extra fields kept
    json.dumps(r)


def test_matches_linregress_and_t_interval():
    pts = noisy_points()
    r = powerlaw.fit(pts)
    x = np.log([p["n_examples"] for p in pts])
    y = np.log([1 - p["f1"] for p in pts])
    ref = scipy_stats.linregress(x, y)
    assert r["alpha"] == pytest.approx(-ref.slope, rel=1e-12)
    assert r["alpha_se"] == pytest.approx(ref.stderr, rel=1e-10)
    assert r["log_A"] == pytest.approx(ref.intercept, rel=1e-12)
    assert r["log_A_se"] == pytest.approx(ref.intercept_stderr, rel=1e-10)
    assert r["r2"] == pytest.approx(ref.rvalue ** 2, rel=1e-12)
    t = scipy_stats.t.ppf(0.975, len(pts) - 2)  # 13 degrees of freedom
    assert r["dof"] == 13
    assert r["alpha_ci95"] == pytest.approx([-ref.slope - t * ref.stderr, -ref.slope + t * ref.stderr], rel=1e-10)
    assert 0.2 < r["alpha"] < 0.36


@pytest.mark.parametrize("points, message", [
    ([{"n_examples": 100, "f1": 0.5}, {"n_examples": 200, "f1": 0.6}], "at least 3"),
    ([{"n_examples": d, "f1": f} for d, f in [(100, 0.5), (200, 0.7), (400, 1.0)]], "F1 = 1"),
    ([{"n_examples": 100, "f1": f} for f in (0.5, 0.6, 0.7)], "two distinct"),
    ([{"n_examples": 100, "f1": 0.5}, {"n_examples": 200}, {"n_examples": 400, "f1": 0.7}], "point 1 has no 'f1'"),
    ([{"n_examples": d, "f1": f} for d, f in [(0, 0.5), (200, 0.7), (400, 0.8)]], "positive"),
    ([{"n_examples": d, "f1": f} for d, f in [(100, -0.1), (200, 0.7), (400, 0.8)]], r"\[0, 1\)"),
    ([{"n_examples": d, "f1": f} for d, f in [(100, float("nan")), (200, 0.7), (400, 0.8)]], r"\[0, 1\)"),
])
def test_degenerate_inputs(points, message):
    with pytest.raises(ValueError, match=message):
        powerlaw.fit(points)


def test_counts_errors():
    c = powerlaw.counts_from_correct([1, 0, 1, 1])  # accuracy 0.75
    ok = {"n_examples": 100, "f1": 0.75, "counts": c}
    with pytest.raises(ValueError, match="points \\[2\\] have no 'counts'"):
        powerlaw.fit([ok, {**ok, "n_examples": 200}, {"n_examples": 400, "f1": 0.8}])
    with pytest.raises(ValueError, match="same evaluation examples"):
        powerlaw.fit([ok, {**ok, "n_examples": 200}, {"n_examples": 400, "f1": 2 / 3, "counts": c[:3]}])
    with pytest.raises(ValueError, match="give micro F1 0.750000"):
        powerlaw.fit([ok, {**ok, "n_examples": 200}, {**ok, "n_examples": 400, "f1": 0.7}])
    with pytest.raises(ValueError, match="shape"):
        powerlaw.fit([{**ok, "counts": [[1, 2]]}, {**ok, "n_examples": 200}, {**ok, "n_examples": 400}])
    with pytest.raises(ValueError, match="average='macro'"):
        powerlaw.fit([{**ok, "average": "macro"}, {**ok, "n_examples": 200}, {**ok, "n_examples": 400}])


def test_f1_averages_match_sklearn():
    rng = np.random.default_rng(3)
    labels = ["negative", "neutral", "positive"]
    gold = list(rng.choice(labels, 60))
    pred = [g if rng.random() < 0.6 else (None if rng.random() < 0.2 else str(rng.choice(labels))) for g in gold]
    counts = powerlaw.counts_from_labels(gold, pred, labels)
    pred_sk = [p if p is not None else "<none>" for p in pred]
    for average in ("macro", "weighted", "micro"):
        ref = f1_score(gold, pred_sk, labels=labels, average=average, zero_division=0)
        sums = counts.sum(axis=0) if average != "micro" else counts.sum(axis=(0, 1))
        assert powerlaw.f1_from_sums(sums, average) == pytest.approx(ref, abs=1e-12)
    correct = [g == p for g, p in zip(gold, pred)]
    acc = powerlaw.f1_from_sums(powerlaw.counts_from_correct(correct).sum(axis=0))
    assert acc == pytest.approx(np.mean(correct), abs=1e-12)


def test_paired_bootstrap_equals_replicate_loop():
    """Each replicate: ONE draw of evaluation indices shared by every point, F1s recomputed, α refitted by OLS."""
    rng = np.random.default_rng(5)
    n, labels = 40, ["a", "b", "c"]
    gold = list(rng.choice(labels, n))
    points, preds = [], []
    for d, p_right in zip(DS, [0.5, 0.6, 0.7, 0.75, 0.85]):
        preds.append([g if rng.random() < p_right else str(rng.choice(labels)) for g in gold])
        c = powerlaw.counts_from_labels(gold, preds[-1], labels)
        points.append({"n_examples": d, "f1": float(powerlaw.f1_from_sums(c.sum(0), "weighted")), "counts": c,
                       "average": "weighted"})
    r = powerlaw.fit(points, resamples=200, seed=7)
    draw = np.random.default_rng(7).integers(0, n, (200, n))
    x = np.log(DS)
    alphas = []
    for idx in draw:
        f1s = [f1_score([gold[i] for i in idx], [pred[i] for i in idx], labels=labels, average="weighted",
                        zero_division=0) for pred in preds]
        if max(f1s) < 1:  # a replicate with a perfect point has no log(1 − F1): left out, counted
            alphas.append(-scipy_stats.linregress(x, np.log1p(-np.array(f1s))).slope)
    assert 0 < 200 - len(alphas) < 50  # 40 examples at 85 % right: some replicates are perfect at d = 1600
    assert r["alpha_ci95_bootstrap"] == pytest.approx(list(np.quantile(alphas, [0.025, 0.975])), abs=1e-10)
    assert r["bootstrap"] == {"resamples": 200, "seed": 7, "n_eval_examples": n,
                              "invalid_resamples": 200 - len(alphas)}
    assert isinstance(r["points"][0]["counts"], list)
    json.dumps(r)


def test_bootstrap_is_paired():
    """Points with the same per-example counts have equal F1 in every paired replicate: α = 0 in all of them
    (an unpaired resampling would scatter α around 0)."""
    c = powerlaw.counts_from_correct(np.random.default_rng(2).random(50) < 0.6)
    f1 = float(c[:, 0].mean())
    r = powerlaw.fit([{"n_examples": d, "f1": f1, "counts": c} for d in DS])
    assert r["alpha"] == pytest.approx(0, abs=1e-12)
    assert r["alpha_ci95_bootstrap"] == pytest.approx([0.0, 0.0], abs=1e-12)


def simulated_points(rng, alpha, log_a, n_eval=500, rho=0.9):
    """Evaluation examples with a difficulty u_i; at size d example i is right iff v < acc(d) = 1 − A d^−α, with
    v = u_i (prob. rho) or a fresh uniform: P(right) = acc(d) exactly, correctness correlated across d."""
    u = rng.random(n_eval)
    points = []
    for d in DS:
        v = np.where(rng.random(n_eval) < rho, u, rng.random(n_eval))
        correct = v < 1 - math.exp(log_a) * d ** -alpha
        points.append({"n_examples": d, "f1": float(correct.mean()), "counts": powerlaw.counts_from_correct(correct)})
    return points


def test_bootstrap_coverage():
    """The paired bootstrap interval covers the true α in ~95 % of simulated data sets (200 sets: the count must
    lie in the binomial(200, 0.95) central 99.9 % range)."""
    alpha, log_a, n_sets = 0.28, math.log(1.5), 200
    rng = np.random.default_rng(0)
    covered, widths = 0, []
    for _ in range(n_sets):
        r = powerlaw.fit(simulated_points(rng, alpha, log_a))
        lo, hi = r["alpha_ci95_bootstrap"]
        covered += lo <= alpha <= hi
        widths.append(hi - lo)
    lo_ok, hi_ok = scipy_stats.binom.interval(0.999, n_sets, 0.95)
    assert lo_ok <= covered <= hi_ok, (covered, lo_ok, hi_ok)
    assert 0.02 < np.mean(widths) < 0.3  # informative, not degenerate


def test_nested_subsets():
    fractions = [0.1, 0.25, 0.5, 1.0, 0.001]
    a = powerlaw.nested_subsets(1000, fractions, seed=3)
    b = powerlaw.nested_subsets(1000, fractions, seed=3)
    assert [len(s) for s in a] == [100, 250, 500, 1000, 1]  # round(f n), at least 1
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)  # deterministic
    by_size = sorted(a, key=len)
    for small, large in zip(by_size, by_size[1:]):
        np.testing.assert_array_equal(large[:len(small)], small)  # prefixes: nested
        assert set(small) <= set(large)
    assert sorted(a[3]) == list(range(1000))  # the full fraction is a permutation
    c = powerlaw.nested_subsets(1000, fractions, seed=4)
    assert not np.array_equal(a[0], c[0])
    a[0][:] = -1  # copies: the other subsets are untouched
    assert (a[1] >= 0).all()
    assert [len(s) for s in powerlaw.nested_subsets(10, [0.25, 0.35], 0)] == [2, 4]  # Python round: 2.5 -> 2
    with pytest.raises(ValueError, match="outside"):
        powerlaw.nested_subsets(10, [0.0], 0)
    with pytest.raises(ValueError, match="positive integer"):
        powerlaw.nested_subsets(0, [0.5], 0)


def test_plot_written(tmp_path):
    rng = np.random.default_rng(1)
    r = powerlaw.fit(simulated_points(rng, 0.28, math.log(1.5)))
    (tmp_path / "sub").mkdir()  # an output's folder must exist (io/files.atomic_write does not make it)
    for name, result in [("boot.png", r), ("plain.png", powerlaw.fit(noisy_points())),
                         ("reloaded.png", json.loads(json.dumps(r)))]:
        path = tmp_path / "sub" / name
        powerlaw.plot(result, str(path))
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    assert sorted(os.listdir(tmp_path / "sub")) == ["boot.png", "plain.png", "reloaded.png"]  # no temp files left
