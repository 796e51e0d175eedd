"""The task registry: name -> factory of a jaxfin.tasks.base.Task (see base.py for the interface).

    from jaxfin import tasks
    task = tasks.get("fiqasa")
    task = tasks.get("fire", types=["Company", "Person"])
"""

from __future__ import annotations

from typing import Any, Callable

from jaxfin.tasks import finben_ner, finer_ord, fire, headlines, sentiment
from jaxfin.tasks.base import Task

REGISTRY: dict[str, Callable[..., Task]] = {
    "fire": fire.task,
    "fpb": sentiment.fpb,
    "fiqasa": sentiment.fiqasa,
    "headlines": headlines.headlines,
    "finben_ner": finben_ner.finben_ner,
    "finer_ord": finer_ord.finer_ord,
}


def get(name: str, **options: Any) -> Task:
    """The task registered as `name`; `options` go to its factory (e.g. fire's entity types)."""
    if name not in REGISTRY:
        raise ValueError(f"unknown task {name!r} (known: {', '.join(sorted(REGISTRY))})")
    return REGISTRY[name](**options)
