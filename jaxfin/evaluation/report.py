"""One task's evaluation written to a folder: metrics.json, predictions.jsonl, report.md and the task's figures,
each file written atomically (a reader never sees half of one)."""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

from jaxfin.io.files import write_json, write_jsonl, write_text
from jaxfin.tasks.base import Task


def metric_name(name: str) -> str:
    """How a metric reads in a sentence: micro_f1 -> micro F1."""
    return name.replace("_", " ").replace("f1", "F1")


def summary_line(task_name: str, metrics: Mapping[str, Any]) -> str:
    """One line: the primary metric with its interval, the over-length rate and the number of examples."""
    primary = metrics["primary"]
    lo, hi = metrics[f"{primary}_ci95"]
    return (f"{task_name}: {metric_name(primary)} {metrics[primary]:.4f} (95% CI {lo:.4f}-{hi:.4f}), stopped at "
            f"max_new_tokens {metrics['overlength_rate']:.2%}, n={metrics['n_examples']}")


def _scalars(metrics: Mapping[str, Any]) -> list[tuple[str, float]]:
    return [(k, v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]


def page(task: Task, metrics: Mapping[str, Any], rows: Sequence[Mapping], meta: Mapping[str, str]) -> str:
    """report.md: the run's facts, the primary metric with its interval, the over-length rate, then the task's own
    section (default: a table of every scalar metric)."""
    primary = metrics["primary"]
    lo, hi = metrics.get(f"{primary}_ci95", (float("nan"),) * 2)
    lines = [f"# {task.name} evaluation", ""]
    lines += [f"- {k}: `{v}`" for k, v in meta.items()]
    lines += [f"- examples: {metrics['n_examples']}",
              f"- **{metric_name(primary)} {metrics[primary]:.4f}** (95% bootstrap CI {lo:.4f}-{hi:.4f})",
              f"- stopped at max_new_tokens: {metrics['overlength_rate']:.2%}"]
    if task.report is not None:
        lines += task.report(metrics, rows)
    else:
        lines += ["", "| metric | value |", "|---|---:|"]
        lines += [f"| {k} | {v:.4f} |" for k, v in _scalars(metrics) if k != "n_examples"]
    return "\n".join(lines) + "\n"


def write(out_dir: str, task: Task, metrics: Mapping[str, Any], rows: Sequence[Mapping], *,
          meta: Mapping[str, str] | None = None) -> None:
    """DIR/metrics.json, DIR/predictions.jsonl, DIR/report.md (+ the task's figures)."""
    meta = meta or {}
    os.makedirs(out_dir, exist_ok=True)
    write_json(os.path.join(out_dir, "metrics.json"), dict(metrics))
    write_jsonl(os.path.join(out_dir, "predictions.jsonl"), rows)
    if task.charts is not None:
        task.charts(out_dir, metrics)
    write_text(os.path.join(out_dir, "report.md"), page(task, metrics, rows, meta))
