"""`data.train_subset`: train on a seeded part of the training examples (what jaxfin.scaling's points train on).

    "" or "1"        every example, in file order
    "0.25:0"         the first round(0.25 n) (at least 1) examples of a permutation of the n drawn with seed 0
                     (recipes/powerlaw.nested_subsets), so the subsets of one seed are nested across fractions
"""

from __future__ import annotations

from typing import Sequence, TypeVar

from jaxfin.errors import UserError
from jaxfin.recipes.powerlaw import nested_subsets

T = TypeVar("T")
KEY = "data.train_subset"


def parse(spec: str) -> tuple[float, int] | None:
    """(fraction, seed) of a spec, None for "every example"; UserError naming the key for anything else."""
    spec = (spec or "").strip()
    if spec in ("", "1", "1.0"):
        return None
    fraction, sep, seed = spec.partition(":")
    try:
        f, s = float(fraction), int(seed)
    except ValueError:
        f, s = float("nan"), -1
    if not sep or not 0 < f <= 1 or s < 0:
        raise UserError(f"{KEY}={spec!r}: expected FRACTION:SEED with 0 < FRACTION <= 1 and SEED >= 0 (e.g. "
                        f"'0.25:0'), or '' for every example")
    return f, s


def select(examples: Sequence[T], spec: str) -> list[T]:
    """The examples `spec` keeps, in permutation order (see the module docstring)."""
    parsed = parse(spec)
    if parsed is None:
        return list(examples)
    fraction, seed = parsed
    return [examples[i] for i in nested_subsets(len(examples), [fraction], seed)[0]]


def size(n: int, spec: str) -> int:
    """How many of n examples `spec` keeps."""
    parsed = parse(spec)
    return n if parsed is None else len(nested_subsets(n, [parsed[0]], parsed[1])[0])
