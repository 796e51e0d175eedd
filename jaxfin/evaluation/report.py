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


def headline(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The figures a comparison shows: primary metric, its interval, over-length rate, examples."""
    primary = metrics["primary"]
    return {"primary": primary, primary: metrics[primary], f"{primary}_ci95": metrics[f"{primary}_ci95"],
            "overlength_rate": metrics["overlength_rate"], "n_examples": metrics["n_examples"]}


def comparison(named: Sequence[tuple[str, Mapping[str, Any]]]) -> list[str]:
    """A markdown table comparing evaluations of one task on the same examples (e.g. zero-shot vs fine-tuned):
    the primary metric with its 95 % bootstrap interval and the over-length rate."""
    primary = named[0][1]["primary"]
    lines = [f"| model | {metric_name(primary)} | 95% CI | stopped at max_new_tokens | n |", "|---|---:|---|---:|---:|"]
    for name, m in named:
        lo, hi = m[f"{primary}_ci95"]
        lines.append(f"| {name} | {m[primary]:.4f} | {lo:.4f}-{hi:.4f} | {m['overlength_rate']:.2%} | "
                     f"{m['n_examples']} |")
    return lines


def _scalars(metrics: Mapping[str, Any]) -> list[tuple[str, float]]:
    return [(k, v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]


def page(task: Task, metrics: Mapping[str, Any], rows: Sequence[Mapping], meta: Mapping[str, str]) -> str:
    """report.md: the run's facts, the primary metric with its interval, the over-length rate, the comparison with
    the model before training (metrics["baseline"], when there is one), then the task's own section (default: a
    table of every scalar metric)."""
    primary = metrics["primary"]
    lo, hi = metrics.get(f"{primary}_ci95", (float("nan"),) * 2)
    lines = [f"# {task.name} evaluation", ""]
    lines += [f"- {k}: `{v}`" for k, v in meta.items()]
    lines += [f"- examples: {metrics['n_examples']}",
              f"- **{metric_name(primary)} {metrics[primary]:.4f}** (95% bootstrap CI {lo:.4f}-{hi:.4f})",
              f"- stopped at max_new_tokens: {metrics['overlength_rate']:.2%}"]
    if metrics.get("baseline"):
        lines += ["", "Before training (zero-shot) and after, on the same examples:", "",
                  *comparison([("before training", metrics["baseline"]), ("after training", metrics)]), ""]
    if task.report is not None:
        lines += task.report(metrics, rows)
    else:
        lines += ["", "| metric | value |", "|---|---:|"]
        lines += [f"| {k} | {v:.4f} |" for k, v in _scalars(metrics) if k != "n_examples"]
    return "\n".join(lines) + "\n"


def write(out_dir: str, task: Task, metrics: Mapping[str, Any], rows: Sequence[Mapping], *,
          meta: Mapping[str, str] | None = None, baseline: Mapping[str, Any] | None = None) -> None:
    """DIR/metrics.json, DIR/predictions.jsonl, DIR/report.md (+ the task's figures). `baseline`: the metrics of the
    model before training on the same examples, recorded under metrics.json's "baseline" and compared in report.md."""
    meta = meta or {}
    metrics = dict(metrics) | ({"baseline": headline(baseline)} if baseline else {})
    os.makedirs(out_dir, exist_ok=True)
    write_json(os.path.join(out_dir, "metrics.json"), metrics)
    write_jsonl(os.path.join(out_dir, "predictions.jsonl"), rows)
    if task.charts is not None:
        task.charts(out_dir, metrics)
    write_text(os.path.join(out_dir, "report.md"), page(task, metrics, rows, meta))
