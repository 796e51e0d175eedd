"""Every key of `python -m jaxfin.train`'s config checked before anything is read, written or loaded: one row of
RULES per key (its rule says what the value must be), a few checks across keys, and whether the run's outputs (the
workdir, its eval folder) can be written. `check(config)` is the first thing a training command does, so a typo in
the last key fails in a second rather than after the model loaded or after all of training.

A key the config does not have is skipped (another command's config may have fewer keys), and a key RULES does not
list is not checked here (ml_collections already refuses unknown override keys). A new key is one new row.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Collection, Mapping

import ml_collections

from jaxfin.data import mixture, subset
from jaxfin.errors import UserError
from jaxfin.evaluation import suite
from jaxfin.io.files import check_writable
from jaxfin.model import decoder, neftune
from jaxfin.model.config import ATTENTION_IMPLS, DTYPES, LORA_IMPLS
from jaxfin.model.params import LORA_TARGETS
from jaxfin.training import losses

Rule = Callable[[Any], "str | None"]  # the value -> what it must be (the message), or None when it is fine


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def integer(low: int, what: str, note: str = "") -> Rule:
    """An int >= low; `what` names the range in the message ("a positive integer")."""
    return lambda v: None if _is_int(v) and v >= low else f"must be {what}{note}"


POSITIVE_INT = integer(1, "a positive integer")
NON_NEGATIVE_INT = integer(0, "a non-negative integer")


def number(low: float, high: float | None = None, *, low_open: bool = False, high_open: bool = False) -> Rule:
    """A number in [low, high] (either end open when asked)."""
    lo, hi = "(" if low_open else "[", ")" if high_open else "]"
    where = f"a number >= {low:g}" if high is None else f"a number in {lo}{low:g}, {high:g}{hi}"

    def rule(v: Any) -> str | None:
        ok = _is_number(v) and (v > low if low_open else v >= low)
        ok = ok and (high is None or (v < high if high_open else v <= high))
        return None if ok else f"must be {where}"
    return rule


def one_of(choices: Collection[Any]) -> Rule:
    """A value of `choices` (a live collection: a policy another module adds to it is accepted too)."""
    def rule(v: Any) -> str | None:
        if v in choices:
            return None
        shown = ", ".join("unset" if c is None else str(c) for c in choices)
        return f"must be one of {shown}"
    return rule


def boolean(v: Any) -> str | None:
    return None if isinstance(v, bool) else "must be true or false"


def text(v: Any) -> str | None:
    return None if isinstance(v, str) and v.strip() else "must be a non-empty path"


def optional(rule: Rule) -> Rule:
    return lambda v: None if v is None else rule(v)


def mesh_axis(v: Any) -> str | None:
    return None if _is_int(v) and (v >= 1 or v == -1) else "must be a positive integer or -1 (the remaining devices)"


def subset_of(choices: Collection[str]) -> Rule:
    def rule(v: Any) -> str | None:
        items = list(v) if isinstance(v, (list, tuple)) else None
        if items and all(x in choices for x in items):
            return None
        return f"must be a non-empty list of {', '.join(choices)}"
    return rule


def parsed_by(parse: Callable[[Any], Any]) -> Rule:
    """A value `parse` accepts (its UserError's text, after the key it names, is the message)."""
    def rule(v: Any) -> str | None:
        try:
            parse(v)
        except UserError as e:
            return f"is not valid ({e})"
        return None
    return rule


RULES: dict[str, Rule] = {
    "workdir": text,
    "seed": NON_NEGATIVE_INT,
    "model.path": optional(text),
    "model.dtype": one_of(DTYPES),
    "model.remat": one_of(decoder.REMAT_POLICIES),
    "model.attention_impl": one_of(ATTENTION_IMPLS),
    "model.allow_base_change": boolean,
    "model.lora_impl": one_of(LORA_IMPLS),
    "train.loss_backward": one_of(losses.LOSS_BACKWARDS),
    "data.train": optional(text),
    "data.eval": optional(text),
    "data.tasks": parsed_by(suite.task_names),
    "data.mixture": parsed_by(mixture.parse_mixture),
    "data.schedule": one_of(mixture.SCHEDULES),
    "data.train_subset": parsed_by(subset.parse),
    "train.steps": integer(0, "a non-negative integer", " (0 = train.epochs over the data)"),
    "train.epochs": NON_NEGATIVE_INT,
    "train.batch_size": POSITIVE_INT,
    "train.grad_accum_steps": POSITIVE_INT,
    "train.seq_len": POSITIVE_INT,
    "train.loss_chunk": POSITIVE_INT,
    "train.log_every_steps": POSITIVE_INT,
    "train.max_nonfinite_steps": integer(0, "a non-negative integer", " (0 = never stop)"),
    "optim.lr": number(0.0),
    "optim.warmup_steps": NON_NEGATIVE_INT,
    "optim.decay_steps": integer(0, "a non-negative integer", " (0 = the whole run)"),
    "optim.end_lr_ratio": number(0.0, 1.0),
    "optim.weight_decay": number(0.0),
    "optim.clip_norm": number(0.0, low_open=True),
    "optim.b1": number(0.0, 1.0, high_open=True),
    "optim.b2": number(0.0, 1.0, high_open=True),
    "lora.rank": POSITIVE_INT,
    "lora.alpha": number(0.0, low_open=True),
    "lora.rslora": boolean,
    "lora.dropout": number(0.0, 1.0, high_open=True),
    "lora.targets": subset_of(LORA_TARGETS),
    "neftune.alpha": number(0.0),
    "neftune.length": one_of(neftune.LENGTHS),
    "checkpoint.every_steps": integer(0, "a non-negative integer", " (0 = only at the end)"),
    "checkpoint.max_to_keep": optional(POSITIVE_INT),
    "eval.every_steps": integer(0, "a non-negative integer", " (0 = only at the end)"),
    "eval.max_examples": integer(-1, "-1 (all), 0 (skip) or a positive integer"),
    "eval.max_new_tokens": POSITIVE_INT,
    "eval.batch_size": POSITIVE_INT,
    "eval.baseline": boolean,
    "mesh.data": mesh_axis,
    "mesh.fsdp": mesh_axis,
    "mesh.tensor": mesh_axis,
    "distributed.auto_detect": boolean,
}


def _nothing_to_train(c: Mapping[str, Any]) -> str | None:
    if c.get("train.steps") == 0 and c.get("train.epochs") == 0:
        return "train.steps and train.epochs are both 0: nothing to train"
    return None


def _accumulation(c: Mapping[str, Any]) -> str | None:
    B, A = c.get("train.batch_size"), c.get("train.grad_accum_steps")
    if B is not None and A is not None and B % A:
        return f"train.grad_accum_steps={A} must divide train.batch_size={B}"
    return None


# Checks across keys, after every key passed its own rule: flat config -> message or None.
CROSS: list[Callable[[Mapping[str, Any]], "str | None"]] = [_nothing_to_train, _accumulation]


def flatten(config: ml_collections.ConfigDict | Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"train.steps": 300, ...}: every leaf of the config under its dotted key."""
    out: dict[str, Any] = {}
    for k, v in (config.items() if hasattr(config, "items") else ()):
        if isinstance(v, (ml_collections.ConfigDict, dict)):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _show(v: Any) -> str:
    return repr(v) if isinstance(v, str) else str(v).lower() if isinstance(v, bool) else str(v)


def check(config: ml_collections.ConfigDict, *, workdir: bool = True) -> None:
    """Every key of `config` that RULES lists, the checks across keys, and (with `workdir`) that the workdir and
    its eval folder can be written; the first problem is one UserError line naming the key."""
    flat = flatten(config)
    for key, rule in RULES.items():
        if key in flat and (problem := rule(flat[key])):
            raise UserError(f"{key} {problem}, got {_show(flat[key])}")
    for cross in CROSS:
        if problem := cross(flat):
            raise UserError(problem)
    if workdir and "workdir" in flat:
        wd = flat["workdir"]
        # A run folder is created with its parents (runs/tiny on a fresh clone); whatever exists must be writable.
        check_writable(wd, folder=True, make_parents=True, name=f"workdir={wd}")
        check_writable(os.path.join(wd, "eval"), folder=True, make_parents=True, name=f"workdir={wd}")
