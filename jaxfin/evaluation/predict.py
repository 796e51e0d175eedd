"""A task's predictions: completions from a model (the jitted decoder over the task's chat prompts) or from a file
made elsewhere, parsed and scored through the task interface."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from jaxfin.data import chat
from jaxfin.errors import UserError
from jaxfin.infer import decode
from jaxfin.io.files import read_jsonl
from jaxfin.io.store import Model
from jaxfin.tasks.base import Example, Task


def prompts(task: Task, examples: Sequence[Example], tokenizer: Any) -> list[list[int]]:
    """Prompt token ids of each example: the task's messages through the tokenizer's chat template."""
    return [chat.prompt_ids(tokenizer, task.messages(ex)) for ex in examples]


def generate(model: Model, task: Task, examples: Sequence[Example], *, max_new_tokens: int, batch_size: int,
             verbose: bool = False, mesh: Any = None) -> list[dict]:
    """Greedy completions of `model` (with its adapters) for the examples' prompts ->
    [{"completion", "finish_reason"}] in example order. `mesh`: see decode.greedy (rows split over the devices
    of every process)."""
    tokenizer = model.tokenizer()
    if tokenizer is None:
        raise UserError(f"{model.source}: the model has no tokenizer files, so prompts cannot be built")
    completions = decode.greedy(
        model.params, model.cfg, prompts(task, examples, tokenizer), max_new_tokens=max_new_tokens,
        stop_ids=model.eos_ids, batch_size=batch_size, lora=model.lora,
        lora_scale=model.lora_config.scale if model.lora is not None else 1.0, verbose=verbose, mesh=mesh)
    # Special tokens kept: think tags stay visible to the parser.
    return [{"completion": tokenizer.decode(c.token_ids, skip_special_tokens=False), "finish_reason": c.finish_reason}
            for c in completions]


def score(task: Task, examples: Sequence[Example], outputs: Sequence[Mapping[str, Any]]) -> tuple[dict, list[dict]]:
    """(metrics, predictions.jsonl rows) for outputs {"completion", "finish_reason", "prediction"?} aligned with
    the examples; "prediction" (already parsed, e.g. from a file) wins over parsing the completion."""
    preds = [o["prediction"] if "prediction" in o else task.parse(o["completion"]) for o in outputs]
    metrics = dict(task.score(examples, preds))
    n = len(examples)
    metrics.setdefault("n_examples", n)
    metrics["overlength_rate"] = sum(o.get("finish_reason") == "length" for o in outputs) / n if n else 0.0
    rows = [{"id": ex["id"], "completion": o.get("completion"), "finish_reason": o.get("finish_reason"),
             **task.details(ex, p)} for ex, o, p in zip(examples, outputs, preds)]
    return metrics, rows


def read_predictions(path: str, task: Task, examples: Sequence[Example]) -> list[dict]:
    """A predictions file made elsewhere: lines {"id", "completion" | the task's parsed form, "finish_reason"?}
    matched to the examples by id; every example id needs exactly one line."""
    by_id: dict[str, dict] = {}
    for lineno, row in read_jsonl(path):
        where = f"{path}:{lineno}"
        if "id" not in row:
            raise UserError(f"{where}: no 'id' field")
        ex_id = str(row["id"])
        if ex_id in by_id:
            raise UserError(f"{where}: duplicate id {ex_id!r}")
        by_id[ex_id] = {"completion": row.get("completion"), "finish_reason": row.get("finish_reason"),
                        "prediction": task.from_row(task, row, where)}
    if not by_id:
        raise UserError(f"{path}: no predictions (empty file)")
    gold_ids = [ex["id"] for ex in examples]
    unknown = sorted(set(by_id) - set(gold_ids))
    missing = [i for i in gold_ids if i not in by_id]
    if unknown or missing:
        raise UserError(f"{path}: ids do not match the gold data: {len(unknown)} not in the gold data"
                        + (f" (first {unknown[0]!r})" if unknown else "") + f", {len(missing)} gold ids without "
                        "a prediction" + (f" (first {missing[0]!r})" if missing else ""))
    return [by_id[i] for i in gold_ids]
