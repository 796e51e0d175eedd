"""The task-transfer matrix: one adapter trained per task, each (and the untrained base) evaluated on every task;
a cell is the column task's primary metric for the row's model and its change from the base row.

    python -m jaxfin.transfer --config configs/smollm2_finllm.py --tasks fpb,fiqasa,headlines,finben_ner

OUT (default: the config's workdir) holds
    train/NAME/            the workdir of the adapter trained on NAME alone (the config with data.tasks=NAME);
                           a finished one (train/NAME/transfer_done.json) is reused, an unfinished one resumed
    eval/ROW/              the evaluation of ROW (base or NAME) on every task: eval/ROW/TASK/metrics.json, summary.md
                           (complete ones are reused)
    matrix.json, matrix.md, matrix.png
Training takes every key of the config but data.tasks and the eval block (the recipe evaluates itself, on the
first eval.max_examples examples of each task's `split`, with eval.max_new_tokens / eval.batch_size).
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import ml_collections
import numpy as np

from jaxfin.evaluation import figures, suite
from jaxfin.io import store, workdir
from jaxfin.io.files import read_json, write_json, write_text
from jaxfin.tasks import ner
from jaxfin.training import multitask, sft

BASE = "base"
DONE = "transfer_done.json"


def _task_config(config: ml_collections.ConfigDict, name: str, wd: str, paths: tuple[str, str, str]
                 ) -> ml_collections.ConfigDict:
    c = config.copy_and_resolve_references()
    c.workdir = wd
    c.model.path, c.data.train, c.data.eval = paths
    c.data.tasks = name
    c.eval.max_examples, c.eval.every_steps, c.eval.baseline = 0, 0, False
    return c


def train_all(config: ml_collections.ConfigDict, names: Sequence[str], out: str,
              paths: tuple[str, str, str]) -> dict[str, str]:
    """{name: workdir of its adapter}, training (or resuming) the ones not finished yet."""
    wds = {}
    for name in names:
        wd = os.path.join(out, "train", name)
        wds[name] = wd
        if os.path.isfile(os.path.join(wd, DONE)):
            print(f"transfer: {name}: reusing the finished adapter in {wd}")
            continue
        print(f"transfer: training on {name} -> {wd}")
        result = sft.run(_task_config(config, name, wd, paths))
        if "stopped" in result:
            raise SystemExit(result["stopped"])
        write_json(os.path.join(wd, DONE), {"step": result["step"]})
    return wds


def evaluate_all(config: ml_collections.ConfigDict, names: Sequence[str], out: str, wds: Mapping[str, str],
                 paths: tuple[str, str, str], split: str) -> dict[str, dict[str, dict]]:
    """{row: {task: metrics}} for the base and every adapter, each evaluated on every task (reused when done)."""
    model_path, fire_train, fire_eval = paths
    types = ner.entity_types(ner.load_examples(fire_train)) if "fire" in names else []
    max_examples = config.eval.max_examples
    data = {"fire": fire_eval}  # fire has one evaluation file (data.eval), whatever the split
    jobs = suite.load_jobs(names, split, max_examples=max_examples, data=data, fire_types=types)
    model = None
    results = {}
    for row in [BASE, *names]:
        row_dir = os.path.join(out, "eval", row)
        done = suite.read_results(row_dir, names)
        if done is not None:
            results[row] = done
            continue
        model = model or store.load(model_path, dtype=config.model.dtype)
        adapters, lcfg = None, None
        if row != BASE:
            adapters, lcfg, _, _ = workdir.restore_adapters(wds[row])
        print(f"transfer: evaluating {row} on {', '.join(names)}")
        results[row] = suite.evaluate_tasks(model, jobs, row_dir, max_new_tokens=config.eval.max_new_tokens,
                                            batch_size=config.eval.batch_size, adapters=adapters, lora_config=lcfg,
                                            meta={"model": model_path if row == BASE else wds[row],
                                                  "split": split})
    return results


def matrix(results: Mapping[str, Mapping[str, Mapping[str, Any]]], names: Sequence[str]) -> dict:
    """matrix.json's content: rows (base first), columns, each column's metric, and per cell the value, its 95 %
    interval and its change from the base row."""
    rows = [BASE, *[n for n in names if n in results and n != BASE]]
    metric = {c: results[BASE][c]["primary"] for c in names}
    cells = {}
    for r in rows:
        cells[r] = {}
        for c in names:
            m = results[r][c]
            value = m[metric[c]]
            cells[r][c] = {"value": value, "ci95": m[f"{metric[c]}_ci95"],
                           "delta": value - results[BASE][c][metric[c]], "n_examples": m["n_examples"]}
    return {"rows": rows, "columns": list(names), "metric": metric, "cells": cells}


def markdown(mat: Mapping[str, Any]) -> str:
    """matrix.md: rows trained on, columns evaluated on, cells "value (change from base)"."""
    cols = mat["columns"]
    lines = ["# Task-transfer matrix", "",
             "Rows: the task the adapter was trained on (base: no adapter). Columns: the task evaluated, by its "
             "primary metric. Cells: value (change from the base row).", "",
             "| trained on \\ evaluated on | " + " | ".join(f"{c} ({mat['metric'][c]})" for c in cols) + " |",
             "|---|" + "---:|" * len(cols)]
    for r in mat["rows"]:
        cells = []
        for c in cols:
            cell = mat["cells"][r][c]
            cells.append(f"{cell['value']:.4f}" if r == BASE else f"{cell['value']:.4f} ({cell['delta']:+.4f})")
        lines.append(f"| {r} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def heatmap(mat: Mapping[str, Any], path: str) -> None:
    """matrix.png: the change from the base as colour (red worse, blue better), value and change in each cell."""
    rows, cols = mat["rows"], mat["columns"]
    delta_RC = np.array([[mat["cells"][r][c]["delta"] for c in cols] for r in rows])
    span = max(float(np.abs(delta_RC).max()), 1e-6)
    fig = figures.figure(figsize=(1.6 + 1.5 * len(cols), 1.0 + 0.6 * len(rows)))
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(delta_RC, cmap="RdBu", vmin=-span, vmax=span, aspect="auto")
    ax.set_xticks(range(len(cols)), [f"{c}\n{mat['metric'][c]}" for c in cols], fontsize=8)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    ax.set_xlabel("evaluated on")
    ax.set_ylabel("trained on")
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            cell = mat["cells"][r][c]
            text = f"{cell['value']:.3f}" + ("" if r == BASE else f"\n{cell['delta']:+.3f}")
            dark = abs(cell["delta"]) > 0.6 * span  # white text on the saturated cells
            ax.text(j, i, text, ha="center", va="center", fontsize=7, color="white" if dark else "black")
    fig.colorbar(im, ax=ax, label="change from base")
    fig.tight_layout()
    figures.save(fig, path)


def write(out: str, mat: Mapping[str, Any]) -> None:
    write_json(os.path.join(out, "matrix.json"), mat)
    write_text(os.path.join(out, "matrix.md"), markdown(mat))
    heatmap(mat, os.path.join(out, "matrix.png"))


def run(config: ml_collections.ConfigDict, names: Sequence[str], out: str | None = None,
        split: str = "valid") -> dict:
    """Trains an adapter per task, evaluates the base and each adapter on every task, writes the matrix into OUT
    (default config.workdir); returns matrix.json's content."""
    names = suite.task_names(names)
    out = out or config.workdir
    if split not in suite.SPLITS:
        raise ValueError(f"split {split!r}: choose {' or '.join(suite.SPLITS)}")
    multitask.task_names(config)  # the mixture / schedule keys are checked once, before anything runs
    c = config.copy_and_resolve_references()
    c.workdir = out
    paths = sft.assets(c)  # the self-made tiny assets in OUT/assets when the config leaves them unset
    wds = train_all(config, names, out, paths)
    results = evaluate_all(config, names, out, wds, paths, split)
    mat = matrix(results, names)
    write(out, mat)
    return mat


def read(out: str) -> dict:
    return read_json(os.path.join(out, "matrix.json"))
