"""The data scaling law of one fine-tuning setup: train on nested subsets of the training data, evaluate each, fit
(1 − F1) = A · d^−α (recipes/powerlaw.py).

    python -m jaxfin.scaling --config configs/smollm2_fire.py --fractions 0.125,0.25,0.5,1 --seeds 0 \\
        --config.train.steps=0 --config.train.epochs=1 --out runs/scaling_fire

Every (fraction, seed) point is one run of `python -m jaxfin.train` with the config as given except:
    workdir              OUT/points/f{fraction}_s{seed}
    seed                 the point's seed (adapter init, NEFTune noise, batch order)
    data.train_subset    "{fraction}:{seed}": the first round(fraction · n) examples of the permutation of the n
                         training examples drawn with that seed, so one seed's subsets are nested (data/subset.py)
    eval.baseline        off (the untrained model is not a point)
Steps are train.epochs over each subset (train.steps must be 0: a fixed step count would give small subsets more
epochs). The evaluation set (data.eval, the first eval.max_examples) is the same for every point, which makes the
bootstrap over its examples paired. A finished point (OUT/points/.../point.json) is reused on a rerun, an
unfinished one resumes from its checkpoints.

OUT/points.json holds every point: {"fraction", "seed", "n_examples" (d), "f1" (the task's primary metric),
"metric", "workdir", "counts", "average"} ("counts": per evaluation example statistics for the paired bootstrap:
(TP, FP, FN) per example for fire's micro-F1, per example and label for fiqasa / fpb's weighted F1; absent for
other tasks, whose bootstrap interval is then null). OUT/fit.json is powerlaw.fit of those points (alpha,
alpha_se, alpha_ci95, alpha_ci95_bootstrap, log_A, r2, points, ...), OUT/fit.png its log-log plot.
"""

from __future__ import annotations

import copy
import math
import os
from typing import Any, Callable, Mapping, Sequence

import ml_collections
import numpy as np

from jaxfin import tasks
from jaxfin.data import subset
from jaxfin.errors import UserError
from jaxfin.io.files import read_json, read_jsonl, write_json
from jaxfin.recipes import powerlaw
from jaxfin.tasks import fire, ner
from jaxfin.training import sft

Trainer = Callable[[ml_collections.ConfigDict], Any]  # sft.run: trains and evaluates one point
POINT, POINTS, FIT, PLOT = "point.json", "points.json", "fit.json", "fit.png"


def check_grid(fractions: Sequence[float], seeds: Sequence[int]) -> None:
    """UserError unless the grid can be fitted: fractions in (0, 1], distinct, at least two; seeds >= 0,
    distinct; at least 3 points."""
    if any(not 0 < f <= 1 for f in fractions) or len(set(fractions)) != len(fractions):
        raise UserError(f"--fractions {','.join(map(str, fractions))}: distinct numbers in (0, 1] expected")
    if len(fractions) < 2:
        raise UserError("--fractions: at least two fractions are needed to fit a slope")
    if not seeds or any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds {','.join(map(str, seeds))}: distinct integers >= 0 expected")
    if len(fractions) * len(seeds) < 3:
        raise UserError(f"{len(fractions)} fractions x {len(seeds)} seed(s) = {len(fractions) * len(seeds)} points; "
                        "the fit needs at least 3 (add a fraction or a seed)")


def point_dir(out: str, fraction: float, seed: int) -> str:
    return os.path.join(out, "points", f"f{fraction:g}_s{seed}")


def run(config: ml_collections.ConfigDict, *, fractions: Sequence[float], seeds: Sequence[int], out: str,
        task: str | None = None, train: Trainer = sft.run) -> dict[str, Any]:
    """Trains and evaluates every missing point, then fits all of them; returns the fit (see the module
    docstring). `train`: the trainer of one point (sft.run; tests wrap it)."""
    check_grid(fractions, seeds)
    if config.train.steps != 0:
        raise UserError(f"train.steps={config.train.steps} fixes the number of updates, so smaller subsets would see "
                        "more epochs; set --config.train.steps=0 and choose train.epochs")
    if config.eval.max_examples == 0:
        raise UserError("eval.max_examples=0: every point needs an evaluation (-1 all, or K > 0)")
    if subset.parse(config.data.train_subset) is not None:
        raise UserError(f"data.train_subset={config.data.train_subset!r}: scaling sets it per point; leave it ''")
    config = copy.deepcopy(config)
    name = _task_name(config, task)
    base = copy.deepcopy(config)
    base.workdir = out  # the self-made tiny assets (model.path / data unset) are written once, to OUT/assets
    model_path, train_path, eval_path = sft.assets(base)
    config.model.path, config.data.train, config.data.eval = model_path, train_path, eval_path
    n = _train_size(name, train_path)

    points = []
    for seed in seeds:
        for fraction in fractions:
            wd = point_dir(out, fraction, seed)
            spec = f"{fraction!r}:{seed}"
            d = subset.size(n, spec)
            path = os.path.join(wd, POINT)
            if os.path.isfile(path):
                point = read_json(path)
                if (point.get("fraction"), point.get("seed"), point.get("n_examples")) != (fraction, seed, d):
                    raise UserError(f"{path}: a point for fraction {point.get('fraction')}, seed {point.get('seed')}, "
                                    f"{point.get('n_examples')} examples, not {fraction}, {seed}, {d}; use a new --out")
                print(f"scaling: reusing {wd} (d={d}, {point['metric']} {point['f1']:.4f})")
            else:
                print(f"scaling: training fraction {fraction:g}, seed {seed}: d={d} of {n} examples -> {wd}",
                      flush=True)
                c = copy.deepcopy(config)
                c.workdir, c.seed, c.data.train_subset, c.eval.baseline = wd, seed, spec, False
                result = train(c)
                if isinstance(result, Mapping) and "stopped" in result:
                    raise KeyboardInterrupt  # stopped by a signal: the point's checkpoint is saved, rerun continues
                point = read_point(wd, name, fraction=fraction, seed=seed, n_examples=d)
                write_json(path, point)
            points.append(point)
    write_json(os.path.join(out, POINTS), points)
    return fit_and_plot(points, out)


def fit_and_plot(points: Sequence[Mapping[str, Any]], out: str) -> dict[str, Any]:
    """powerlaw.fit of the points -> OUT/fit.json and OUT/fit.png; returns the fit."""
    try:
        result = powerlaw.fit(points)
    except ValueError as e:
        raise UserError(str(e)) from None
    os.makedirs(out, exist_ok=True)
    write_json(os.path.join(out, FIT), result)
    powerlaw.plot(result, os.path.join(out, PLOT))
    return result


def read_points(path: str) -> list[dict]:
    """A --fit-only file: a JSON list of {"n_examples", "f1", ...} objects (fit.json's "points" shape)."""
    points = read_json(path)
    if not isinstance(points, list) or not all(isinstance(p, dict) for p in points):
        raise UserError(f"{path}: expected a JSON list of {{\"n_examples\", \"f1\"}} objects")
    return points


def summary(result: Mapping[str, Any]) -> str:
    lo, hi = result["alpha_ci95"]
    line = (f"alpha = {result['alpha']:.4f} ± {result['alpha_se']:.4f} (t 95% CI {lo:.4f}–{hi:.4f}"
            + ("" if result["alpha_ci95_bootstrap"] is None else
               "; bootstrap {:.4f}–{:.4f}".format(*result["alpha_ci95_bootstrap"]))
            + f"), log A = {result['log_A']:.4f}, R² = {result['r2']:.4f}, {result['n_points']} points")
    return line


# --------------------------------------------------------------------------------------------------------------
# One point's training set and evaluation.


def _task_name(config: ml_collections.ConfigDict, task: str | None) -> str:
    """The task trained and evaluated: --task (set as data.tasks when this jaxfin has that key), else fire."""
    has_tasks = "tasks" in config.data
    if task is not None:
        if task not in tasks.REGISTRY:
            raise UserError(f"--task {task}: unknown task (known: {', '.join(sorted(tasks.REGISTRY))})")
        if has_tasks:
            config.data.tasks = task
        elif task != "fire":
            raise UserError(f"--task {task}: this training reads fire data only (data.train); no data.tasks key")
        return task
    if has_tasks:
        names = [t.strip() for t in str(config.data.tasks).split(",") if t.strip()]
        if len(names) != 1:
            raise UserError(f"data.tasks={config.data.tasks!r}: a scaling law is of one task; pass --task NAME")
        return names[0]
    return "fire"


def _train_size(name: str, train_path: str) -> int:
    """n: the training examples data.train_subset draws from (fire: data.train; other tasks their train split)."""
    if name == "fire":
        return len(ner.load_examples(train_path))
    task = tasks.get(name)
    try:
        return len(task.read(task.files["train"]))
    except ValueError as e:
        raise UserError(str(e)) from None


def _eval_dir(wd: str, name: str) -> str:
    """WORKDIR/eval/NAME (multi-task training) or WORKDIR/eval (one fire task)."""
    per_task = os.path.join(wd, "eval", name)
    return per_task if os.path.isfile(os.path.join(per_task, "metrics.json")) else os.path.join(wd, "eval")


def read_point(wd: str, name: str, *, fraction: float, seed: int, n_examples: int) -> dict[str, Any]:
    """The point of a finished run: its primary metric and, where the task's metric allows, per-example counts."""
    where = _eval_dir(wd, name)
    metrics = read_json(os.path.join(where, "metrics.json"))
    primary = metrics["primary"]
    point = {"fraction": fraction, "seed": seed, "n_examples": n_examples, "f1": float(metrics[primary]),
             "metric": primary, "workdir": wd}
    rows = [row for _, row in read_jsonl(os.path.join(where, "predictions.jsonl"))]
    counts = example_counts(name, rows)
    if counts is not None:
        point["counts"], point["average"] = counts[0].tolist(), counts[1]
    return point


def example_counts(name: str, rows: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, str] | None:
    """(per-example counts, average) of a predictions.jsonl whose F1 powerlaw can recompute, else None:
    fire: (TP, FP, FN) per example, micro (entity micro-F1); fiqasa / fpb: per example and label, weighted
    (their weighted F1; a "missing" answer is only a FN, as in their scorer)."""
    if name == "fire":
        fp = [len(r["fp"]) for r in rows]
        fn = [len(r["fn"]) for r in rows]
        tp = [len(fire.pairs(r["entities"])) - f for r, f in zip(rows, fp)]  # |pred| = TP + FP
        return np.array([tp, fp, fn], np.int64).T.reshape(len(rows), 3), "micro"
    if name in ("fiqasa", "fpb"):
        labels = tasks.get(name).labels
        pred = [None if r["predicted"] == "missing" else r["predicted"] for r in rows]
        return powerlaw.counts_from_labels([r["gold"] for r in rows], pred, labels), "weighted"
    return None


def parse_list(text: str, kind: type, flag: str) -> list:
    """"0.125,0.25" -> [0.125, 0.25] (kind float) / "0,1" -> [0, 1] (kind int); UserError naming the flag."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    try:
        values = [kind(t) for t in items]
    except ValueError:
        raise UserError(f"{flag} {text}: expected a comma-separated list of {kind.__name__}s") from None
    if not values or (kind is float and not all(math.isfinite(v) for v in values)):
        raise UserError(f"{flag} {text}: expected a comma-separated list of {kind.__name__}s")
    return values
