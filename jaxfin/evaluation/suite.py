"""Several tasks evaluated side by side, as the evaluation CLI, multi-task training, DPO and the transfer matrix
all do it: each task's examples, generated (or read) completions, scored by the task's own rules, written to
DIR/NAME/ (metrics.json, predictions.jsonl, report.md), and one leaderboard-style table over the tasks in
DIR/summary.json and DIR/summary.md (task, metric, value, 95 % CI).

    jobs = suite.load_jobs(["fpb", "headlines"], "test", max_examples=100)
    results = suite.evaluate_tasks(model, jobs, "out/", max_new_tokens=64, batch_size=16)   # {name: metrics}
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping, Sequence

import jax

from jaxfin import tasks
from jaxfin.errors import UserError, user_errors
from jaxfin.evaluation import predict, report
from jaxfin.io import store
from jaxfin.io.files import read_json, write_json, write_text
from jaxfin.model.params import Params
from jaxfin.tasks import ner
from jaxfin.tasks.base import Example, Task

SPLITS = ("valid", "test")
SUMMARY = ("summary.json", "summary.md")


@dataclasses.dataclass(frozen=True)
class Job:
    """One task's evaluation set: the task, its examples and where they came from (shown in the report)."""

    task: Task
    examples: list[Example]
    data: str


def task_names(spec: str | Sequence[str]) -> list[str]:
    """"fpb,headlines" (or a list) -> ["fpb", "headlines"], each a registered task, no repeats."""
    names = [n.strip() for n in spec.split(",")] if isinstance(spec, str) else list(spec)
    names = [n for n in names if n]
    if not names:
        raise UserError("no task named (e.g. fpb,fiqasa,headlines,finben_ner)")
    for n in names:
        if n not in tasks.REGISTRY:
            raise UserError(f"unknown task {n!r} (known: {', '.join(sorted(tasks.REGISTRY))})")
    if len(set(names)) != len(names):
        raise UserError(f"a task is named twice in {','.join(names)}")
    return names


def read_examples(task: Task, path: str) -> list[Example]:
    """task.read(path) with the reader's file:line errors as UserError."""
    with user_errors():
        examples = task.read(path)
    if not examples:
        raise UserError(f"{path}: no examples")
    return examples


def load_job(name: str, split: str, *, data: str | None = None, max_examples: int = -1,
             fire_types: Sequence[str] | None = None) -> Job:
    """A task's examples of `split` (valid / test; train too), or of `data` (a file in the task's own format);
    max_examples -1 all, K the first K. `fire`: its data read by jaxfin.tasks.ner.load_examples (any NER format)
    with the entity types `fire_types`, default those of the data (the whole file, so a prefix keeps them all)."""
    if name == "fire":
        path = data or tasks.get("fire").files[split if split != "test" else "valid"]
        with user_errors():
            examples = ner.load_examples(path)
        task = tasks.get("fire", types=list(fire_types) if fire_types else ner.entity_types(examples))
    else:
        task = tasks.get(name)
        if data is None and split not in task.files:
            raise UserError(f"task {name} has no {split!r} split (it has {', '.join(task.files)})")
        path = data or task.files[split]
        examples = read_examples(task, path)
    if max_examples >= 0:
        examples = examples[:max_examples]
    return Job(task, examples, path)


def load_jobs(names: Sequence[str], split: str, *, max_examples: int = -1, data: Mapping[str, str] | None = None,
              fire_types: Sequence[str] | None = None) -> list[Job]:
    """load_job for each task; `data`: files replacing some tasks' split file."""
    if split not in SPLITS:
        raise UserError(f"split {split!r}: choose {' or '.join(SPLITS)}")
    data = data or {}
    return [load_job(n, split, data=data.get(n), max_examples=max_examples, fire_types=fire_types) for n in names]


def _main() -> bool:
    return jax.process_index() == 0


def write_task(out_dir: str, job: Job, outputs: Sequence[Mapping[str, Any]], meta: Mapping[str, str],
               baseline: Mapping[str, Any] | None = None) -> dict:
    """Scores one task's outputs and writes OUT/{metrics.json, predictions.jsonl, report.md} (process 0)."""
    metrics, rows = predict.score(job.task, job.examples, outputs)
    if _main():
        report.write(out_dir, job.task, metrics, rows, meta={**meta, "data": job.data}, baseline=baseline)
    return metrics


def evaluate_tasks(model: store.Model, jobs: Sequence[Job], out_dir: str, *, max_new_tokens: int, batch_size: int,
                   adapters: Params | None = None, lora_config: Any = None, mesh: Any = None,
                   meta: Mapping[str, str] | None = None, baselines: Mapping[str, Mapping] | None = None,
                   verbose: bool = False) -> dict[str, dict]:
    """Greedy completions of `model` (with `adapters` / `lora_config` when given, else its own) for every job ->
    OUT/NAME/ per task and OUT/summary.{json,md}; returns {name: metrics}. `mesh`: decode rows split over its
    devices (every process runs this; process 0 writes). `baselines`: {name: metrics of the model before
    training}, shown beside each task's result. The entry point for training (SFT, DPO) and the transfer matrix."""
    if adapters is not None:
        model = dataclasses.replace(model, lora=adapters, lora_config=lora_config)
    meta = {**(meta or {}), "max_new_tokens": str(max_new_tokens)}
    results = {}
    for job in jobs:
        outputs = predict.generate(model, job.task, job.examples, max_new_tokens=max_new_tokens,
                                   batch_size=batch_size, verbose=verbose, mesh=mesh)
        base = (baselines or {}).get(job.task.name)
        results[job.task.name] = write_task(os.path.join(out_dir, job.task.name), job, outputs, meta, base)
        print(f"{report.summary_line(job.task.name, results[job.task.name])} -> {os.path.join(out_dir, job.task.name)}")
    write_summary(out_dir, results, baselines)
    return results


def score_files(jobs: Sequence[Job], predictions: Mapping[str, str], out_dir: str,
                meta: Mapping[str, str] | None = None) -> dict[str, dict]:
    """Predictions made elsewhere ({name: JSONL of {"id", "completion"}} matched by id) scored per task ->
    OUT/NAME/ and OUT/summary.{json,md}."""
    results = {}
    for job in jobs:
        outputs = predict.read_predictions(predictions[job.task.name], job.task, job.examples)
        job_meta = {**(meta or {}), "predictions": predictions[job.task.name]}
        results[job.task.name] = write_task(os.path.join(out_dir, job.task.name), job, outputs, job_meta)
    write_summary(out_dir, results)
    return results


def summary_rows(results: Mapping[str, Mapping[str, Any]],
                 baselines: Mapping[str, Mapping] | None = None) -> list[dict]:
    """One row per task: task, metric (the primary), value, ci95, n_examples, overlength_rate (+ baseline)."""
    rows = []
    for name, m in results.items():
        primary = m["primary"]
        row = {"task": name, "metric": primary, "value": m[primary], "ci95": m[f"{primary}_ci95"],
               "n_examples": m["n_examples"], "overlength_rate": m["overlength_rate"]}
        base = (baselines or {}).get(name)
        if base:
            row["baseline"] = {"value": base[primary], "ci95": base[f"{primary}_ci95"]}
        rows.append(row)
    return rows


def summary_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """The leaderboard-style table: task, metric, value, 95 % CI (and zero-shot beside it when known)."""
    with_base = any("baseline" in r for r in rows)
    head = "| task | metric | value | 95% CI |" + (" zero-shot | zero-shot 95% CI |" if with_base else "")
    head += " n | stopped at max_new_tokens |"
    lines = ["# Evaluation summary", "", head, "|---|---|---:|---|" + ("---:|---|" if with_base else "") + "---:|---:|"]
    for r in rows:
        lo, hi = r["ci95"]
        cells = [r["task"], report.metric_name(r["metric"]), f"{r['value']:.4f}", f"{lo:.4f}-{hi:.4f}"]
        if with_base:
            b = r.get("baseline")
            cells += [f"{b['value']:.4f}", f"{b['ci95'][0]:.4f}-{b['ci95'][1]:.4f}"] if b else ["", ""]
        cells += [str(r["n_examples"]), f"{r['overlength_rate']:.2%}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_summary(out_dir: str, results: Mapping[str, Mapping[str, Any]],
                  baselines: Mapping[str, Mapping] | None = None) -> None:
    """OUT/summary.json ({"tasks": [rows]}) and OUT/summary.md (process 0)."""
    if not _main():
        return
    rows = summary_rows(results, baselines)
    os.makedirs(out_dir, exist_ok=True)
    write_json(os.path.join(out_dir, SUMMARY[0]), {"tasks": rows})
    write_text(os.path.join(out_dir, SUMMARY[1]), summary_markdown(rows))


def read_results(out_dir: str, names: Sequence[str]) -> dict[str, dict] | None:
    """{name: OUT/NAME/metrics.json} when every task has one, else None (an evaluation not made or not finished)."""
    paths = {n: os.path.join(out_dir, n, "metrics.json") for n in names}
    if not all(os.path.isfile(p) for p in paths.values()):
        return None
    return {n: read_json(p) for n, p in paths.items()}
