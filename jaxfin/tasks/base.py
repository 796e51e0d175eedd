"""The task interface: how one dataset becomes chat prompts and training targets, and how the model's completions
are parsed and scored. A task is a table of functions (no class tree); training, evaluation, generation of
preference pairs and self-distillation reach a dataset only through it.

    task = tasks.get("fpb")                      # jaxfin.tasks: the registry
    examples = task.read(task.files["valid"])    # the task's own file format -> [{"id", ...}]
    task.messages(ex)                            # [{"role": "user", "content": prompt}]: chat template applied later
    task.target(ex)                              # "negative": the answer text the model is trained to produce
    pred = task.parse(completion)                # a JSON-able prediction (None: nothing parseable)
    metrics = task.score(examples, preds)        # {"primary": "f1", "f1": ..., "f1_ci95": [lo, hi], ...}
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Callable, Mapping, Sequence

from jaxfin.errors import UserError

Example = dict[str, Any]  # {"id": str unique within its file, ...the task's fields}
Messages = list[dict[str, str]]
Prediction = Any  # JSON-able; what `parse` returns and `score` consumes
Metrics = dict[str, Any]

# Where the datasets live: $JAXFIN_DATA, else ../shared/data beside the repository (the layout CI uses).
DATA_ENV = "JAXFIN_DATA"


def _from_completion(task: "Task", row: Mapping[str, Any], where: str) -> Prediction:
    if not isinstance(row.get("completion"), str):
        raise UserError(f"{where}: needs 'completion' (a string)")
    return task.parse(row["completion"])


@dataclasses.dataclass(frozen=True)
class Task:
    """One task. `score` returns the metrics dict written to metrics.json: it names its primary metric under
    "primary" and gives that metric's 95 % bootstrap interval under f"{primary}_ci95"; the evaluation runner adds
    the task-independent keys (n_examples, overlength_rate). `details` adds per-example fields to
    predictions.jsonl (e.g. false positives); `report` gives the task's section of report.md (default: a table of
    the scalar metrics) and `charts` writes figures beside it; `from_row` reads one line of a predictions file made elsewhere
    (default: its "completion", parsed)."""

    name: str
    primary: str
    files: Mapping[str, str]  # split name (train / valid / test) -> default file
    read: Callable[[str], list[Example]]
    messages: Callable[[Example], Messages]
    target: Callable[[Example], str]
    parse: Callable[[str], Prediction]
    score: Callable[[Sequence[Example], Sequence[Prediction]], Metrics]
    details: Callable[[Example, Prediction], dict[str, Any]] = lambda ex, pred: {"prediction": pred}
    report: Callable[[Metrics, Sequence[dict]], list[str]] | None = None  # (metrics, rows) -> markdown section
    charts: Callable[[str, Metrics], None] | None = None  # (out dir, metrics) -> figures written there
    from_row: Callable[["Task", Mapping[str, Any], str], Prediction] = _from_completion
    labels: tuple[str, ...] = ()  # the label set (classes, or entity types) where the task has one


def data_root() -> str:
    """The shared datasets folder: $JAXFIN_DATA, else the first of ../shared/data beside the source tree or the
    working directory that exists (an error names the variable to set when none does)."""
    if os.environ.get(DATA_ENV):
        return os.environ[DATA_ENV]
    here = os.path.dirname(os.path.abspath(__file__))
    candidates = [os.path.join(here, "..", "..", "..", "shared", "data"),
                  os.path.join(os.getcwd(), "..", "shared", "data"), os.path.join(os.getcwd(), "shared", "data")]
    for c in candidates:
        if os.path.isdir(c):
            return os.path.normpath(c)
    return os.path.normpath(candidates[0])


def data_path(*parts: str) -> str:
    """A file of the shared datasets, e.g. data_path("fiqa_sa_finben", "test.jsonl")."""
    return os.path.join(data_root(), *parts)


def strip_think(text: str) -> str:
    """Drops reasoning: everything up to a leading unmatched "</think>" (the generation prompt opened the block),
    every <think>...</think> block, and an unclosed <think> to the end (reasoning cut off, no answer)."""
    close, open_ = text.find("</think>"), text.find("<think>")
    if close != -1 and (open_ == -1 or close < open_):
        text = text[close + len("</think>"):]
    text = re.sub(r"<think>.*?</think>", "", text, flags=re.S)
    return re.sub(r"<think>.*", "", text, flags=re.S)


def user_turn(content: str) -> Messages:
    """One user turn, no system prompt: DeepSeek-R1's model card asks for all instructions in the user prompt."""
    return [{"role": "user", "content": content}]
