"""`python -m jaxfin.evaluate`: score a model (greedy generation with the jitted decoder) or predictions made
elsewhere on one or more tasks, by each task's own (leaderboard) rules.

  python -m jaxfin.evaluate --task fpb,fiqasa,headlines,finben_ner [--split valid|test] --model PATH --out DIR
                            [--max-new-tokens N] [--batch-size B] [--max-examples K]
  python -m jaxfin.evaluate --task fpb --predictions PRED.jsonl [--data FILE] --out DIR
  python -m jaxfin.evaluate --task fpb,headlines --predictions PRED_DIR --out DIR      # PRED_DIR/NAME.jsonl
  python -m jaxfin.evaluate --model PATH --data GOLD.jsonl --out DIR                   # no --task: fire, as before

With --task it writes DIR/NAME/{metrics.json, predictions.jsonl, report.md} per task and DIR/summary.json /
summary.md (task, metric, value, 95 % CI). Without --task the data is NER gold (any format jaxfin.tasks.ner reads)
scored as the `fire` task into DIR/ itself. A predictions line is {"id", "completion"} (parsed here) or the task's
parsed form ({"id", "entities"} for fire), with an optional "finish_reason"; lines are matched to the gold
examples by id.
"""

from __future__ import annotations

import os
from typing import Sequence

from jaxfin import errors, tasks
from jaxfin.errors import UserError, out_of_memory, run_cli
from jaxfin.evaluation import predict, report, suite
from jaxfin.io import store, workdir
from jaxfin.io.files import check_writable
from jaxfin.tasks import ner

OOM_KEYS = "--batch-size or --max-new-tokens"


def trained_types(model_path: str) -> list[str] | None:
    """The entity types a training workdir was trained on (run.json), None for any other model path."""
    if not workdir.is_workdir(model_path):
        return None
    return workdir.read_run(model_path).get("config", {}).get("entity_types") or None


def _fire_file(args) -> int:
    """Today's path without --task: NER gold scored as `fire` into DIR/."""
    gold = ner.load_examples(args.data)
    types = ner.entity_types(gold)  # types from the whole file: a prefix keeps every type
    trained = trained_types(args.model) if args.model else None
    if trained:  # a training workdir: prompt with the types it was trained on, and say if the data differ
        ner.warn_type_mismatch(trained, gold, f"--data {args.data}")
        types = trained
    task = tasks.get("fire", types=types)
    if args.model:
        gold = gold[: args.max_examples]
        model = store.load(args.model)
        with out_of_memory(f"decoding (--batch-size {args.batch_size}, --max-new-tokens {args.max_new_tokens})",
                           OOM_KEYS):
            outputs = predict.generate(model, task, gold, max_new_tokens=args.max_new_tokens,
                                       batch_size=args.batch_size, verbose=True)
        meta = {"model": args.model, "data": args.data, "max_new_tokens": str(args.max_new_tokens)}
    else:
        outputs = predict.read_predictions(args.predictions, task, gold)
        meta = {"predictions": args.predictions, "data": args.data}
    metrics, rows = predict.score(task, gold, outputs)
    report.write(args.out, task, metrics, rows, meta=meta)
    print(f"{report.summary_line(task.name, metrics)} -> {os.path.join(args.out, 'report.md')}")
    return 0


def _prediction_files(path: str, names: Sequence[str]) -> dict[str, str]:
    """--predictions: a file (one task) or a directory holding NAME.jsonl per task."""
    if len(names) == 1 and not os.path.isdir(path):
        return {names[0]: path}
    if not os.path.isdir(path):
        raise UserError(f"--predictions {path}: with several tasks, give a directory holding NAME.jsonl per task")
    files = {n: os.path.join(path, f"{n}.jsonl") for n in names}
    missing = [f for f in files.values() if not os.path.isfile(f)]
    if missing:
        raise UserError(f"--predictions {path}: no {os.path.basename(missing[0])} for that task")
    return files


def main(argv: Sequence[str]) -> int:
    parser = errors.ArgumentParser(prog="python -m jaxfin.evaluate", description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="HF model dir, jaxfin checkpoint or training workdir; generates greedily")
    source.add_argument("--predictions", help="JSONL of {id, completion} made elsewhere (a directory of NAME.jsonl "
                        "for several tasks)")
    parser.add_argument("--task", help=f"task name(s), comma-separated: {', '.join(sorted(tasks.REGISTRY))}")
    parser.add_argument("--split", default="test", choices=suite.SPLITS, help="with --task (default test)")
    parser.add_argument("--data", help="a file replacing the split's, in the task's own format (one task); without "
                        "--task: NER gold scored as fire")
    parser.add_argument("--out", required=True, help="output directory (its parent folder must exist)")
    parser.add_argument("--max-new-tokens", type=errors.positive_int, default=256)
    parser.add_argument("--batch-size", type=errors.positive_int, default=8)
    parser.add_argument("--max-examples", type=int, default=None, help="score only the first K examples of each "
                        "task (--model)")
    args = parser.parse_args(argv)
    if args.max_examples is not None and (args.predictions or args.max_examples < 1):
        parser.error("--max-examples takes K >= 1 and only applies with --model")
    check_writable(args.out, folder=True, name=f"--out {args.out}")  # before any work
    if args.task is None:
        if args.data is None:
            parser.error("give --task NAME[,NAME...] (or --data GOLD.jsonl for the fire task)")
        return _fire_file(args)

    names = suite.task_names(args.task)
    if args.data and len(names) > 1:
        parser.error("--data replaces the data of one task; name only that one with --task")
    max_examples = -1 if args.max_examples is None else args.max_examples
    jobs = suite.load_jobs(names, args.split, max_examples=max_examples,
                           data={names[0]: args.data} if args.data else None)
    if args.model:
        model = store.load(args.model)
        with out_of_memory(f"decoding (--batch-size {args.batch_size}, --max-new-tokens {args.max_new_tokens})",
                           OOM_KEYS):
            results = suite.evaluate_tasks(model, jobs, args.out, max_new_tokens=args.max_new_tokens,
                                           batch_size=args.batch_size,
                                           meta={"model": args.model, "split": args.split}, verbose=True)
    else:
        results = suite.score_files(jobs, _prediction_files(args.predictions, names), args.out,
                                    meta={"split": args.split})
        for name, m in results.items():
            print(report.summary_line(name, m))
    print(f"summary -> {os.path.join(args.out, suite.SUMMARY[1])}")
    return 0 if results else 1


if __name__ == "__main__":
    run_cli(main)
