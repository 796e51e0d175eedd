"""Sentence sentiment as the Open FinLLM Leaderboard scores it: `fpb` (Financial PhraseBank, Malo et al. 2014) and
`fiqasa` (FiQA-SA, Maia et al. 2018), both in FinBen's packaging.

Scoring follows PIXIU `src/tasks/flare.py`, class `Classification` (github.com/The-FinAI/PIXIU, commit b92bc75,
the last change to that file; FPB and FIQASA subclass it unchanged): the completion is stripped and lower-cased, the
prediction is the first of the task's labels (in the order its prompt lists them) that occurs in it as a substring,
else "missing"; acc is the mean of exact matches, "F1" is scikit-learn's weighted F1 with `labels` = the set of gold labels
(so a "missing" answer costs recall but is never a false positive), macro F1 likewise, MCC over the labels mapped to
integers with "missing" as -1 (its own class). The `<think>` block is dropped first (base.strip_think).

The label order decides a completion that names two labels. PIXIU loops over the dataset's `choices` field, which
this project cannot read (it lives in the leaderboard's Hugging Face datasets); jaxfin uses the order each prompt
lists the labels in (fpb: negative, positive, neutral; fiqasa: positive, negative, neutral). Rows of
`ChanceFocus/en-fpb` and `flare-fiqasa` quoted on third-party pages suggest positive, neutral, negative and
negative, positive, neutral; FPB_CHOICES / FIQASA_CHOICES are the one place to change if the datasets confirm it.
"""

from __future__ import annotations

import collections
import os
from typing import Callable, Sequence

import numpy as np
from sklearn.metrics import f1_score, matthews_corrcoef

from jaxfin.evaluation.metrics import bootstrap_ci
from jaxfin.io.files import read_csv, read_jsonl
from jaxfin.tasks import records
from jaxfin.tasks.base import Example, Messages, Metrics, Prediction, Task, data_path, strip_think, user_turn

MISSING = "missing"

# The labels in the order the prompts list them, lower-cased: the tie-break order (see the module docstring).
FPB_CHOICES = ("negative", "positive", "neutral")
FIQASA_CHOICES = ("positive", "negative", "neutral")

# The first of PIXIU's ten FPB instruction templates (PIXIU data/FPB/preprocess.py at commit 7923146, `prompts[0]`);
# FinBen valid's `query` is this line, "\n", the sentence. Train sentences from the PhraseBank files get the same.
FPB_INSTRUCTION = ("Analyze the sentiment of this statement extracted from a financial news article. Provide your "
                   "answer as either negative, positive, or neutral. For instance, 'The company's stocks plummeted "
                   "following the scandal.' would be classified as negative.")

FPB_DIR = "financial_phrasebank"
FIQASA_DIR = "fiqa_sa_finben"


def first_choice(completion: str, choices: Sequence[str]) -> str | None:
    """PIXIU's parse: the first of `choices` (lower-case) occurring in the stripped, lower-cased answer; None when
    none does (PIXIU's "missing")."""
    answer = strip_think(completion).strip().lower()
    for choice in choices:
        if choice in answer:
            return choice
    return None


def _f1_from_codes(gold_N: np.ndarray, pred_N: np.ndarray, k: int) -> tuple[float, float]:
    """(weighted F1, macro F1) over the labels that occur in gold, for gold codes in [0, k) and predicted codes in
    [0, k] (k = missing): scikit-learn's f1_score(average=..., labels=set(gold)) from one confusion matrix, fast
    enough to recompute for every bootstrap resample."""
    cm_KK1 = np.bincount(gold_N * (k + 1) + pred_N, minlength=k * (k + 1)).reshape(k, k + 1)
    support_K = cm_KK1.sum(axis=1)
    predicted_K = cm_KK1[:, :k].sum(axis=0)
    tp_K = np.diagonal(cm_KK1[:, :k])
    denom_K = support_K + predicted_K
    f1_K = np.where(tp_K > 0, 2 * tp_K / np.maximum(denom_K, 1), 0.0)
    present = support_K > 0
    if not present.any():
        return 0.0, 0.0
    weighted = float((f1_K * support_K).sum() / support_K.sum())
    return weighted, float(f1_K[present].mean())


def classification_metrics(golds: Sequence[str], preds: Sequence[str | None], choices: Sequence[str]) -> Metrics:
    """PIXIU Classification's aggregation (acc, missing, weighted F1, macro F1, MCC) over lower-case gold labels and
    predictions (None = missing), plus the weighted F1's bootstrap interval, the confusion matrix and per-label F1."""
    if len(golds) != len(preds):
        raise ValueError(f"{len(golds)} gold labels but {len(preds)} predictions")
    result = [MISSING if p is None else p for p in preds]
    for p in result:
        if p != MISSING and p not in choices:
            raise ValueError(f"prediction {p!r} is not one of {', '.join(choices)} (or None)")
    for g in golds:
        if g not in choices:
            raise ValueError(f"gold label {g!r} is not one of {', '.join(choices)}")
    n = len(golds)
    metrics: Metrics = {"primary": "f1"}
    if n == 0:
        return {**metrics, "acc": 0.0, "f1": 0.0, "f1_ci95": [0.0, 0.0], "macro_f1": 0.0, "mcc": 0.0,
                "missing_rate": 0.0}
    gold_arr, pred_arr = np.array(golds), np.array(result)
    # PIXIU passes list(set(golds)); sorted gives the same values (the metrics do not depend on the order) and
    # makes the last bits reproducible across processes (str hashing is randomised).
    labels = sorted(set(golds))
    metrics["acc"] = float(np.mean(gold_arr == pred_arr))
    metrics["f1"] = float(f1_score(gold_arr, pred_arr, average="weighted", labels=labels))
    k = len(choices)
    code = {c: i for i, c in enumerate(choices)}
    gold_N = np.array([code[g] for g in golds])
    pred_N = np.array([code.get(p, k) for p in result])
    metrics["f1_ci95"] = bootstrap_ci(lambda idx: _f1_from_codes(gold_N[idx], pred_N[idx], k)[0], n)
    metrics["macro_f1"] = float(f1_score(gold_arr, pred_arr, average="macro", labels=labels))
    to_int = {label: i for i, label in enumerate(labels)}
    metrics["mcc"] = float(matthews_corrcoef([to_int.get(g, -1) for g in golds], [to_int.get(p, -1) for p in result]))
    metrics["missing_rate"] = float(np.mean(pred_arr == MISSING))
    counts = collections.Counter(zip(golds, result))
    columns = [*choices, MISSING]
    metrics["confusion"] = {"rows": list(choices), "columns": columns,
                            "counts": [[counts[(g, p)] for p in columns] for g in choices]}
    per_label = f1_score(gold_arr, pred_arr, average=None, labels=list(choices), zero_division=0)
    metrics["per_label_f1"] = {c: float(f) for c, f in zip(choices, per_label)}
    return metrics


def _report(name: str) -> Callable[[Metrics, Sequence[dict]], list[str]]:
    def report(m: Metrics, rows: Sequence[dict]) -> list[str]:
        lo, hi = m["f1_ci95"]
        lines = [f"### {name}", "",
                 f"Weighted F1 {m['f1']:.4f} (95 % CI {lo:.4f}–{hi:.4f}), accuracy {m['acc']:.4f}, "
                 f"macro F1 {m['macro_f1']:.4f}, MCC {m['mcc']:.4f}, missing {m['missing_rate']:.2%}.", ""]
        if "confusion" in m:
            conf = m["confusion"]
            lines += ["| gold \\ predicted | " + " | ".join(conf["columns"]) + " | F1 |",
                      "|---" * (len(conf["columns"]) + 2) + "|"]
            for label, row in zip(conf["rows"], conf["counts"]):
                lines.append(f"| {label} | " + " | ".join(str(c) for c in row)
                             + f" | {m['per_label_f1'][label]:.4f} |")
            lines.append("")
        return lines
    return report


def _details(ex: Example, pred: Prediction) -> dict:
    gold = ex["label"].lower()
    return {"gold": gold, "predicted": MISSING if pred is None else pred, "correct": pred == gold}


def _messages(ex: Example) -> Messages:
    return user_turn(ex["query"])


def _target(ex: Example) -> str:
    return ex["label"]


def _check_label(path: str, lineno: int, label: str, allowed: Sequence[str]) -> None:
    if label not in allowed:
        raise ValueError(f"{path}:{lineno}: label {label!r} is not one of {', '.join(allowed)}")


def _read_finben(path: str, allowed: Sequence[str]) -> list[Example]:
    """FinBen's deduplicated JSONL ({id, text, label, query}), one example per line."""
    examples, seen = [], set()
    for lineno, row in read_jsonl(path):
        ex = {k: records.field(path, lineno, row, k) for k in ("id", "text", "label", "query")}
        _check_label(path, lineno, ex["label"], allowed)
        if ex["id"] in seen:
            raise ValueError(f"{path}:{lineno}: duplicate id {ex['id']!r}")
        seen.add(ex["id"])
        examples.append(ex)
    return examples


def read_fpb(path: str) -> list[Example]:
    """FPB examples {id, text, label, query}: FinBen's valid JSONL as is, or a PhraseBank `utf8_csv` file
    (`sentence,label`); "file.csv#train" drops every row whose sentence is, verbatim, a FinBen valid sentence
    (finben_valid/valid.jsonl beside the csv folder), which leaves a training set disjoint from valid."""
    file, selector = records.split_selector(path)
    allowed = FPB_CHOICES
    if not file.endswith(".csv"):
        if selector is not None:
            raise ValueError(f"{path}: a selector applies to the PhraseBank csv files only")
        return _read_finben(file, allowed)
    if selector not in (None, "train"):
        raise ValueError(f"{path}: unknown selector {selector!r} (the csv files know '#train')")
    excluded: set[str] = set()
    if selector == "train":
        valid = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(file))), "finben_valid", "valid.jsonl")
        excluded = {ex["text"] for ex in _read_finben(valid, allowed)}
    stem = os.path.splitext(os.path.basename(file))[0]
    examples = []
    for lineno, row in read_csv(file, ("sentence", "label")):
        _check_label(file, lineno, row["label"], allowed)
        if row["sentence"] in excluded:
            continue
        examples.append({"id": f"{stem}-{lineno}", "text": row["sentence"], "label": row["label"],
                         "query": f"{FPB_INSTRUCTION}\n{row['sentence']}"})
    return examples


def read_fiqasa(path: str) -> list[Example]:
    """FiQA-SA examples {id, text, label, query} from FinBen's deduplicated JSONL (labels Positive / Negative /
    Neutral, capitalised as FinBen's answers are)."""
    return _read_finben(path, ("Positive", "Negative", "Neutral"))


def _task(name: str, choices: tuple[str, ...], files: dict[str, str], read: Callable[[str], list[Example]]) -> Task:
    def parse(completion: str) -> Prediction:
        return first_choice(completion, choices)

    def score(examples: Sequence[Example], preds: Sequence[Prediction]) -> Metrics:
        if len(examples) != len(preds):
            raise ValueError(f"{name}: {len(examples)} examples but {len(preds)} predictions")
        return classification_metrics([ex["label"].lower() for ex in examples], list(preds), choices)

    return Task(name=name, primary="f1", files=files, read=read, messages=_messages, target=_target, parse=parse,
                score=score, details=_details, report=_report(name), labels=choices)


def fpb() -> Task:
    """Financial PhraseBank: valid = test = FinBen's valid split (774); train = the 50Agree sentences not in it."""
    valid = data_path(FPB_DIR, "finben_valid", "valid.jsonl")
    train = data_path(FPB_DIR, "utf8_csv", "sentences_50agree.csv") + "#train"
    return _task("fpb", FPB_CHOICES, {"train": train, "valid": valid, "test": valid}, read_fpb)


def fiqasa() -> Task:
    """FiQA-SA, FinBen's splits: 750 / 188 / 235."""
    files = {split: data_path(FIQASA_DIR, f"{split}.jsonl") for split in ("train", "valid", "test")}
    return _task("fiqasa", FIQASA_CHOICES, files, read_fiqasa)
