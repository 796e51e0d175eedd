"""`python -m jaxfin.evaluate`: score a model (greedy generation with the jitted decoder) or a predictions file
on a task's data; writes metrics.json, predictions.jsonl, report.md (and the task's figures).

  python -m jaxfin.evaluate --model PATH --data GOLD.jsonl --out DIR [--max-new-tokens N] [--batch-size B]
                            [--max-examples K]
  python -m jaxfin.evaluate --predictions PRED.jsonl --data GOLD.jsonl --out DIR

A predictions line is {"id", "completion"} (parsed here) or the task's parsed form ({"id", "entities"} for NER),
with an optional "finish_reason"; lines are matched to the gold examples by id.
"""

from __future__ import annotations

import os
from typing import Sequence

from jaxfin import errors, tasks
from jaxfin.errors import out_of_memory, run_cli
from jaxfin.evaluation import predict, report
from jaxfin.io import store, workdir
from jaxfin.io.files import check_writable
from jaxfin.tasks import ner


def trained_types(model_path: str) -> list[str] | None:
    """The entity types a training workdir was trained on (run.json), None for any other model path."""
    if not workdir.is_workdir(model_path):
        return None
    return workdir.read_run(model_path).get("config", {}).get("entity_types") or None


def main(argv: Sequence[str]) -> int:
    parser = errors.ArgumentParser(prog="python -m jaxfin.evaluate", description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="HF model dir, jaxfin checkpoint or training workdir; generates greedily")
    source.add_argument("--predictions", help="JSONL of {id, completion} or {id, entities} made elsewhere")
    parser.add_argument("--data", required=True, help="gold examples (any format jaxfin.tasks.ner.load_examples reads)")
    parser.add_argument("--out", required=True, help="output directory (its parent folder must exist)")
    parser.add_argument("--max-new-tokens", type=errors.positive_int, default=256)
    parser.add_argument("--batch-size", type=errors.positive_int, default=8)
    parser.add_argument("--max-examples", type=int, default=None, help="score only the first K examples (--model)")
    args = parser.parse_args(argv)
    if args.max_examples is not None and (args.predictions or args.max_examples < 1):
        parser.error("--max-examples takes K >= 1 and only applies with --model")

    check_writable(args.out, folder=True, name=f"--out {args.out}")  # before any work
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
                           "--batch-size or --max-new-tokens"):
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


if __name__ == "__main__":
    run_cli(main)
