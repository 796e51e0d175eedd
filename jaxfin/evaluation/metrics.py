"""Task-independent statistics: precision / recall / F1 from counts, and percentile bootstrap intervals."""

from __future__ import annotations

from typing import Callable

import numpy as np


def prf(tp: float, fp: float, fn: float) -> tuple[float, float, float]:
    """Precision, recall, F1 = 2TP / (2TP + FP + FN); a ratio with a zero denominator is 0."""
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    f = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
    return float(p), float(r), float(f)


def bootstrap_ci(statistic: Callable[[np.ndarray], float], n: int, *, resamples: int = 1000, seed: int = 0,
                 level: float = 0.95) -> list[float]:
    """Percentile bootstrap interval (Efron & Tibshirani 1993, ch. 13) of `statistic(index_N)`, a metric
    recomputed on the examples at the resampled indices (drawn with replacement). Fixed seed: reproducible."""
    if n == 0:
        return [0.0, 0.0]
    rng = np.random.default_rng(seed)
    values = [statistic(rng.integers(0, n, n)) for _ in range(resamples)]
    lo, hi = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return [float(lo), float(hi)]


def bootstrap_f1(tp_N: np.ndarray, fp_N: np.ndarray, fn_N: np.ndarray, *, resamples: int = 1000,
                 seed: int = 0, level: float = 0.95) -> list[float]:
    """bootstrap_ci of micro-F1 from per-example TP / FP / FN counts, vectorised: resample the N examples,
    re-sum their counts, take the F1 quantiles."""
    n = len(tp_N)
    if n == 0:
        return [0.0, 0.0]
    counts_N3 = np.stack([tp_N, fp_N, fn_N], axis=1).astype(np.int64)
    rng = np.random.default_rng(seed)
    chunk = max(1, 2_000_000 // n)  # resamples per step: the gathered [S, N, 3] int64 counts stay under ~50 MB
    sums = [counts_N3[rng.integers(0, n, (min(chunk, resamples - s), n))].sum(axis=1)
            for s in range(0, resamples, chunk)]
    tp_S, fp_S, fn_S = np.concatenate(sums).T
    denom_S = 2 * tp_S + fp_S + fn_S
    f1_S = np.where(tp_S > 0, 2 * tp_S / np.maximum(denom_S, 1), 0.0)
    lo, hi = np.quantile(f1_S, [(1 - level) / 2, (1 + level) / 2])
    return [float(lo), float(hi)]
