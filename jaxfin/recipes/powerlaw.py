"""The data scaling law (1 − F1) = A · d^−α: an OLS fit in log-log space, a paired bootstrap of α over the
evaluation examples, its plot, and the nested training subsets the points are trained on.

    subsets = nested_subsets(len(train), [0.125, 0.25, 0.5, 1.0], seed=0)  # train on train[s] for each s
    result = fit([{"n_examples": len(s), "f1": f1, "seed": 0, "counts": counts_N3} for ...])
    plot(result, "runs/scaling/powerlaw.png")

A point is a dict with
    "n_examples"  d, the number of training examples (> 0)
    "f1"          the point's F1 on the evaluation set, 0 <= F1 < 1
    "counts"      optional, per evaluation example statistics for the paired bootstrap (below)
    "average"     optional, how F1 is formed from 3-d "counts" (below)
and any further fields (seed, run directory, ...), which are kept in the result as they are.

The "counts" field. Every point that carries it carries it for the SAME evaluation examples in the same order
(example i is the same question at every d and seed: that is what makes the bootstrap paired):
    shape [N, 3]     per example (TP, FP, FN); F1 = micro-F1 = 2ΣTP / (2ΣTP + ΣFP + ΣFN) (entity F1 of the NER
                     tasks, from their per-example counts). Per-example correctness c_i ∈ {0, 1} of single-label
                     classification is the row (c, 1 − c, 1 − c), whose micro-F1 is accuracy
                     (`counts_from_correct`).
    shape [N, C, 3]  per example per class (TP, FP, FN); F1 = "macro" (the default: mean over the C classes of the
                     per-class F1, a class with no gold and no prediction in a resample scoring 0, as in
                     `metrics.prf` and sklearn's f1_score with labels given) or "weighted" (per-class F1 weighted
                     by gold support TP + FN), chosen by the point's "average" field (`counts_from_labels`).
The F1 recomputed from a point's counts must match its "f1" within 1e-4 (a metrics.json rounded to 4 decimals
passes; a different averaging does not), so the bootstrap measures the same statistic the fit uses.
Either every point has counts or none has: with none (e.g. `--fit-only` from n_examples and f1 alone)
"alpha_ci95_bootstrap" and "bootstrap" are None.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from jaxfin.io.files import atomic_write

COUNTS = "counts"
AVERAGES = ("micro", "macro", "weighted")
F1_TOLERANCE = 1e-4  # |F1 from counts − the point's "f1"| allowed (rounding in metrics.json)


def fit(points: Sequence[Mapping[str, Any]], *, resamples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """OLS of log(1 − F1) = log A − α log d (natural logs; every point, every seed, one observation).

    Returns
        alpha, alpha_se          the slope's negative and its OLS standard error s / sqrt(Sxx)
        alpha_ci95               alpha ± t_{0.975, n−2} · alpha_se (Student t, n − 2 degrees of freedom)
        log_A, log_A_se, r2      intercept, its standard error, R² (0 when all F1 are equal, as linregress)
        n_points, dof, residual_se, log_d_mean, log_d_sxx   what the plot needs for the fitted line's band
        points                   the input points, every field kept (arrays as lists: the result is JSON-able)
        alpha_ci95_bootstrap     percentile interval of α over `resamples` paired bootstrap replicates: each
                                 replicate resamples the N evaluation examples once (with replacement, numpy
                                 default_rng(seed)), recomputes every point's F1 from its counts at those same
                                 indices and refits α. None when the points carry no counts.
        bootstrap                {resamples, seed, n_eval_examples, invalid_resamples} or None; a replicate in
                                 which some point's F1 reaches 1 (log 0) is left out and counted as invalid.
    Only evaluation noise is in the bootstrap interval; the t interval also sees the scatter between training
    runs (seeds, subsets) through the residuals. Source: the OLS slope and its t interval, e.g. Weisberg,
    Applied Linear Regression (4th ed.) §2.6; the paired percentile bootstrap, Efron & Tibshirani (1993) ch. 13."""
    from scipy import stats as scipy_stats

    d_P, f1_P = _validate(points)
    x_P, y_P = np.log(d_P), np.log1p(-f1_P)
    n = len(x_P)
    x_mean, y_mean = float(x_P.mean()), float(y_P.mean())
    sxx = float(((x_P - x_mean) ** 2).sum())
    sxy = float(((x_P - x_mean) * (y_P - y_mean)).sum())
    syy = float(((y_P - y_mean) ** 2).sum())
    slope = sxy / sxx
    intercept = y_mean - slope * x_mean
    dof = n - 2
    sse = float(((y_P - intercept - slope * x_P) ** 2).sum())
    residual_se = math.sqrt(sse / dof)
    alpha_se = residual_se / math.sqrt(sxx)
    t_crit = float(scipy_stats.t.ppf(0.975, dof))
    alpha = -slope
    boot = _paired_bootstrap(points, x_P, f1_P, resamples=resamples, seed=seed)
    return {
        "alpha": alpha,
        "alpha_se": alpha_se,
        "alpha_ci95": [alpha - t_crit * alpha_se, alpha + t_crit * alpha_se],
        "log_A": intercept,
        "log_A_se": residual_se * math.sqrt(1 / n + x_mean ** 2 / sxx),
        "r2": sxy * sxy / (sxx * syy) if syy > 0 else 0.0,
        "n_points": n,
        "dof": dof,
        "residual_se": residual_se,
        "log_d_mean": x_mean,
        "log_d_sxx": sxx,
        "points": [{k: _jsonable(v) for k, v in p.items()} for p in points],
        "alpha_ci95_bootstrap": None if boot is None else boot.pop("interval"),
        "bootstrap": boot,
    }


def _validate(points: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    if len(points) < 3:
        raise ValueError(f"power-law fit: {len(points)} point(s); at least 3 are needed (2 parameters, and one "
                         "degree of freedom for the slope's standard error)")
    d, f1 = [], []
    for i, p in enumerate(points):
        for key in ("n_examples", "f1"):
            if key not in p:
                raise ValueError(f"power-law fit: point {i} has no {key!r} (keys: {sorted(p)})")
        di, fi = float(p["n_examples"]), float(p["f1"])
        if not (math.isfinite(di) and di > 0):
            raise ValueError(f"power-law fit: point {i}: n_examples={p['n_examples']!r}, must be a positive number")
        if not math.isfinite(fi) or fi < 0:
            raise ValueError(f"power-law fit: point {i} (n_examples={p['n_examples']}): f1={p['f1']!r}, must be in "
                             "[0, 1)")
        if fi >= 1:
            raise ValueError(f"power-law fit: point {i} (n_examples={p['n_examples']}): f1={p['f1']!r}; "
                             "log(1 − F1) is undefined at F1 = 1 (drop the point or evaluate on more examples)")
        d.append(di)
        f1.append(fi)
    if len(set(d)) < 2:
        raise ValueError(f"power-law fit: every point has n_examples={d[0]:g}; the slope needs at least two "
                         "distinct training-set sizes")
    return np.asarray(d), np.asarray(f1)


def f1_from_sums(sums: np.ndarray, average: str = "micro") -> np.ndarray:
    """F1 of summed (TP, FP, FN): sums [..., 3] -> micro-F1 [...]; sums [..., C, 3] -> the "macro" or
    "weighted" average over C [...]. A class with 2TP + FP + FN = 0 scores 0 (metrics.prf's convention)."""
    tp, fp, fn = sums[..., 0], sums[..., 1], sums[..., 2]
    denom = 2 * tp + fp + fn
    f1 = np.where(denom > 0, 2 * tp / np.where(denom > 0, denom, 1), 0.0)
    if average == "micro":
        return f1
    if average == "macro":
        return f1.mean(axis=-1)
    support = tp + fn
    total = support.sum(axis=-1)
    return np.where(total > 0, (support * f1).sum(axis=-1) / np.where(total > 0, total, 1), 0.0)


def counts_from_correct(correct_N: Sequence[bool] | np.ndarray) -> np.ndarray:
    """Per-example correctness -> [N, 3] counts (c, 1 − c, 1 − c): micro-F1 of these is accuracy."""
    c = np.asarray(correct_N, dtype=np.int64)
    return np.stack([c, 1 - c, 1 - c], axis=-1)


def counts_from_labels(gold: Sequence[str], pred: Sequence[str | None], labels: Sequence[str]) -> np.ndarray:
    """Single-label classification -> [N, C, 3] counts over `labels`: a right answer is a TP of its class, a
    wrong one a FP of the predicted class and a FN of the gold class; an unparsed (None) or out-of-set
    prediction is only a FN (so it lowers recall, as sklearn's f1_score with labels= given counts it)."""
    if len(gold) != len(pred):
        raise ValueError(f"counts_from_labels: {len(gold)} gold labels but {len(pred)} predictions")
    index = {lab: c for c, lab in enumerate(labels)}
    counts = np.zeros((len(gold), len(labels), 3), dtype=np.int64)
    for i, (g, p) in enumerate(zip(gold, pred)):
        if g not in index:
            raise ValueError(f"counts_from_labels: gold label {g!r} of example {i} is not in {list(labels)}")
        if p == g:
            counts[i, index[g], 0] = 1
            continue
        counts[i, index[g], 2] = 1
        if p in index:
            counts[i, index[p], 1] = 1
    return counts


def _paired_bootstrap(points: Sequence[Mapping[str, Any]], x_P: np.ndarray, f1_P: np.ndarray, *, resamples: int,
                      seed: int) -> dict[str, Any] | None:
    has = [COUNTS in p and p[COUNTS] is not None for p in points]
    if not any(has):
        return None
    if not all(has):
        missing = [i for i, h in enumerate(has) if not h]
        raise ValueError(f"power-law fit: points {missing} have no {COUNTS!r} while others have; the paired "
                         "bootstrap needs per-example statistics on every point (or on none)")
    counts, averages = [], []
    for i, p in enumerate(points):
        c = np.asarray(p[COUNTS], dtype=np.float64)
        if c.ndim not in (2, 3) or c.shape[-1] != 3 or c.shape[0] == 0:
            raise ValueError(f"power-law fit: point {i} {COUNTS!r} has shape {c.shape}; expected [N, 3] "
                             "(TP, FP, FN per example) or [N, C, 3] (per example and class), N >= 1")
        if c.shape != np.shape(counts[0] if counts else c):
            raise ValueError(f"power-law fit: point {i} {COUNTS!r} has shape {c.shape} but point 0 has "
                             f"{counts[0].shape}; every point must be scored on the same evaluation examples")
        average = p.get("average", "micro" if c.ndim == 2 else "macro")
        if average not in AVERAGES or (c.ndim == 2 and average != "micro"):
            raise ValueError(f"power-law fit: point {i} average={average!r}; [N, 3] counts take 'micro', "
                             f"[N, C, 3] counts take 'macro' or 'weighted'")
        recomputed = float(f1_from_sums(c.sum(axis=0), average))
        if abs(recomputed - f1_P[i]) > F1_TOLERANCE:
            raise ValueError(f"power-law fit: point {i} (n_examples={p['n_examples']}): f1={f1_P[i]:.6f} but its "
                             f"{COUNTS!r} give {average} F1 {recomputed:.6f}; the counts must be of the same scores")
        counts.append(c)
        averages.append(average)
    n = counts[0].shape[0]
    flat_PNk = [c.reshape(n, -1) for c in counts]
    xc_P = x_P - x_P.mean()
    sxx = float(xc_P @ xc_P)
    rng = np.random.default_rng(seed)
    chunk = max(1, 4_000_000 // n)  # replicates per step: the [R, N] f64 weights stay under ~32 MB
    alphas = []
    for start in range(0, resamples, chunk):
        r = min(chunk, resamples - start)
        idx_RN = rng.integers(0, n, (r, n))
        # Multiplicities of each example in each replicate: summing counts[idx] is weights @ counts.
        w_RN = np.bincount((idx_RN + n * np.arange(r)[:, None]).ravel(), minlength=r * n).reshape(r, n)
        f1_RP = np.stack([f1_from_sums((w_RN @ c).reshape(r, *counts[0].shape[1:]), avg)
                          for c, avg in zip(flat_PNk, averages)], axis=1)
        valid_R = (f1_RP < 1).all(axis=1)
        y_RP = np.log1p(-f1_RP[valid_R])
        alphas.append(-(y_RP @ xc_P) / sxx)  # OLS slope: Σ (x − x̄) y / Sxx
    alpha_S = np.concatenate(alphas)
    interval = None
    if len(alpha_S):
        lo, hi = np.quantile(alpha_S, [0.025, 0.975])
        interval = [float(lo), float(hi)]
    return {"interval": interval, "resamples": resamples, "seed": seed, "n_eval_examples": n,
            "invalid_resamples": int(resamples - len(alpha_S))}


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def plot(fit_result: Mapping[str, Any], path: str) -> None:
    """Log-log PNG of the (d, 1 − F1) points, the fitted line A·d^−α and its 95 % confidence band
    (exp of ŷ ± t_{0.975, n−2} · s · sqrt(1/n + (x − x̄)² / Sxx), x = log d), written atomically; Agg canvas,
    no pyplot global state. Works from a fit result reloaded from JSON."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from scipy import stats as scipy_stats

    d = np.array([float(p["n_examples"]) for p in fit_result["points"]])
    err = 1 - np.array([float(p["f1"]) for p in fit_result["points"]])
    alpha, log_a = fit_result["alpha"], fit_result["log_A"]
    pad = 0.1 * (np.log(d.max()) - np.log(d.min()))
    x = np.linspace(np.log(d.min()) - pad, np.log(d.max()) + pad, 200)
    y = log_a - alpha * x
    t_crit = scipy_stats.t.ppf(0.975, fit_result["dof"])
    half = t_crit * fit_result["residual_se"] * np.sqrt(1 / fit_result["n_points"] +
                                                        (x - fit_result["log_d_mean"]) ** 2 / fit_result["log_d_sxx"])
    fig = Figure(figsize=(6, 4.2))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.fill_between(np.exp(x), np.exp(y - half), np.exp(y + half), color="#3b6ea8", alpha=0.2, linewidth=0,
                    label="95% band of the fit")
    ax.plot(np.exp(x), np.exp(y), color="#3b6ea8", label=f"{math.exp(log_a):.3g} · d^(−{alpha:.3f})")
    ax.scatter(d, err, color="#222222", s=18, zorder=3, label="runs")
    ax.set_xlabel("training examples d")
    ax.set_ylabel("1 − F1")
    lo, hi = fit_result["alpha_ci95"]
    title = f"α = {alpha:.3f} (t 95% CI {lo:.3f}–{hi:.3f}"
    if fit_result.get("alpha_ci95_bootstrap"):
        blo, bhi = fit_result["alpha_ci95_bootstrap"]
        title += f"; bootstrap {blo:.3f}–{bhi:.3f}"
    ax.set_title(title + f"), R² {fit_result['r2']:.3f}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))


def nested_subsets(n: int, fractions: Sequence[float], seed: int) -> list[np.ndarray]:
    """Training subsets for the scaling points: prefixes of one permutation of range(n) drawn with
    numpy default_rng(seed), of sizes max(1, round(f · n)) (Python's round, halves to even), in the order of
    `fractions`. Any two are nested (the smaller a prefix of the larger), and the same (n, fractions, seed)
    gives the same subsets; the indices are in permutation order (copies, safe to modify)."""
    if int(n) != n or n < 1:
        raise ValueError(f"nested_subsets: n={n!r}, must be a positive integer")
    for f in fractions:
        if not (0 < f <= 1):
            raise ValueError(f"nested_subsets: fraction {f!r} is outside (0, 1]")
    perm = np.random.default_rng(seed).permutation(int(n))
    return [perm[:max(1, round(f * n))].copy() for f in fractions]
