"""Gold-news headlines (Sinha & Khandait 2021) as the Open FinLLM Leaderboard scores them: nine yes/no questions per
headline, one example per question.

Scoring follows PIXIU `src/tasks/flare.py`, class `Headlines` (github.com/The-FinAI/PIXIU, commit b92bc75): a
completion is "yes" only if, stripped, it equals "Yes" exactly (so "Yes." and "yes" are "no"); per question type,
scikit-learn's weighted F1 with labels [0, 1] (0 = Yes, 1 = No, the order of the dataset's choices); the metric is
the mean over the types present, `avg_f1`. The `<think>` block is dropped first (base.strip_think).

Only FinBen's valid file is available (1,140 headlines x 9 questions), so train and test are an 80/20 split of its
headlines with a fixed seed. The unit of the split is the headline string: the nine questions of a headline stay
together, and the 16 headlines that occur twice are never on both sides.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from sklearn.metrics import f1_score

from jaxfin.evaluation.metrics import bootstrap_ci
from jaxfin.io.files import read_jsonl
from jaxfin.tasks import records
from jaxfin.tasks.base import Example, Messages, Metrics, Prediction, Task, data_path, strip_think, user_turn

# The nine dimensions in the order each block of the FinBen file lists them ("Comparision" as the source spells it).
QUESTION_TYPES = ("Price or Not", "Direction Up", "Direction Down", "Direction Constant", "PastPrice", "FuturePrice",
                  "PastNews", "FutureNews", "Asset Comparision")
SPLIT_SEED = 0
TEST_FRACTION = 0.2
FILE = ("headlines_finben", "raw", "headlines_valid.jsonl.gz")


def parse(completion: str) -> Prediction:
    """PIXIU: "Yes" iff the stripped answer is exactly "Yes"; everything else (including nothing) is "No"."""
    return "Yes" if strip_think(completion).strip() == "Yes" else "No"


def _headline(path: str, lineno: int, question: str) -> str:
    _, sep, rest = question.partition("\nText: ")
    if not sep or not rest.endswith("\nAnswer:"):
        raise ValueError(f"{path}:{lineno}: question does not end in '\\nText: <headline>\\nAnswer:'")
    return rest[: -len("\nAnswer:")]


def split_headlines(headlines: Sequence[str], seed: int = SPLIT_SEED,
                    test_fraction: float = TEST_FRACTION) -> set[str]:
    """The test headlines: round(test_fraction x distinct headlines) of the distinct (stripped) headline strings,
    drawn by a seeded permutation of their sorted list, so the split depends on nothing but the strings and the
    seed."""
    distinct = sorted({h.strip() for h in headlines})
    order = np.random.default_rng(seed).permutation(len(distinct))
    n_test = round(test_fraction * len(distinct))
    return {distinct[i] for i in order[:n_test]}


def read(path: str) -> list[Example]:
    """One example {id, headline, question_type, query, label} per line of FinBen's headlines file (PIXIU's
    `{"id", "conversations": [human question, agent Yes/No]}`), checked to come in blocks of nine questions on one
    headline in QUESTION_TYPES order; "file#train" / "file#test" keep the headlines of that side of the split."""
    file, selector = records.split_selector(path)
    if selector not in (None, "train", "test"):
        raise ValueError(f"{path}: unknown selector {selector!r} (known: train, test)")
    rows = []
    for lineno, row in read_jsonl(file):
        conv = records.field(file, lineno, row, "conversations", list)
        if len(conv) != 2 or not all(isinstance(t, dict) and isinstance(t.get("value"), str) for t in conv):
            raise ValueError(f"{file}:{lineno}: 'conversations' should be [question, answer] turns with 'value'")
        question, answer = conv[0]["value"], conv[1]["value"]
        if answer not in ("Yes", "No"):
            raise ValueError(f"{file}:{lineno}: answer {answer!r} is not Yes or No")
        qtype = QUESTION_TYPES[len(rows) % len(QUESTION_TYPES)]
        if qtype not in question:
            raise ValueError(f"{file}:{lineno}: question does not name {qtype!r}, the next type of its block of 9")
        headline = _headline(file, lineno, question)
        if len(rows) % len(QUESTION_TYPES) and headline != rows[-1]["headline"]:
            raise ValueError(f"{file}:{lineno}: headline differs from the previous question's in its block of 9")
        rows.append({"id": records.field(file, lineno, row, "id"), "headline": headline, "question_type": qtype,
                     "query": question, "label": answer})
    if len(rows) % len(QUESTION_TYPES):
        raise ValueError(f"{file}: {len(rows)} questions is not a whole number of blocks of 9")
    if selector is None:
        return rows
    test = split_headlines([r["headline"] for r in rows])
    return [r for r in rows if (r["headline"].strip() in test) == (selector == "test")]


def _codes(labels: Sequence[str]) -> np.ndarray:
    return np.array([0 if label == "Yes" else 1 for label in labels])


def _avg_f1_fast(type_N: np.ndarray, gold_N: np.ndarray, pred_N: np.ndarray, n_types: int) -> float:
    """avg_f1 from one (type, gold, pred) count table: per type the weighted binary F1 (labels [0, 1]), mean over
    the types present; equal to the scikit-learn computation, fast enough for every bootstrap resample."""
    cm_T22 = np.bincount(type_N * 4 + gold_N * 2 + pred_N, minlength=n_types * 4).reshape(n_types, 2, 2)
    support_T2 = cm_T22.sum(axis=2)
    predicted_T2 = cm_T22.sum(axis=1)
    tp_T2 = np.stack([cm_T22[:, 0, 0], cm_T22[:, 1, 1]], axis=1)
    f1_T2 = np.where(tp_T2 > 0, 2 * tp_T2 / np.maximum(support_T2 + predicted_T2, 1), 0.0)
    n_T = support_T2.sum(axis=1)
    present = n_T > 0
    weighted_T = (f1_T2 * support_T2).sum(axis=1)[present] / n_T[present]
    return float(weighted_T.mean()) if present.any() else 0.0


def score(examples: Sequence[Example], preds: Sequence[Prediction]) -> Metrics:
    """PIXIU Headlines.label_avg: avg_f1 (primary) with its bootstrap interval over questions, per-type weighted
    F1, and accuracy."""
    if len(examples) != len(preds):
        raise ValueError(f"headlines: {len(examples)} examples but {len(preds)} predictions")
    for p in preds:
        if p not in ("Yes", "No"):
            raise ValueError(f"headlines: prediction {p!r} is not Yes or No")
    n = len(examples)
    if n == 0:
        return {"primary": "avg_f1", "avg_f1": 0.0, "avg_f1_ci95": [0.0, 0.0], "acc": 0.0, "per_type_f1": {}}
    types = [ex["question_type"] for ex in examples]
    gold_N, pred_N = _codes([ex["label"] for ex in examples]), _codes(list(preds))
    type_arr = np.array(types)
    per_type = {}
    present = set(types)
    for qtype in [t for t in QUESTION_TYPES if t in present] + sorted(present - set(QUESTION_TYPES)):
        mask = type_arr == qtype
        per_type[qtype] = float(f1_score(gold_N[mask], pred_N[mask], average="weighted", labels=[0, 1],
                                         zero_division=0))
    type_index = {t: i for i, t in enumerate(per_type)}
    type_N = np.array([type_index[t] for t in types])
    # [gold Yes, predicted Yes, questions] per type, for the report
    yes = {t: [int((gold_N[type_N == i] == 0).sum()), int((pred_N[type_N == i] == 0).sum()), int((type_N == i).sum())]
           for t, i in type_index.items()}
    return {"primary": "avg_f1", "avg_f1": float(np.mean(list(per_type.values()))),
            "avg_f1_ci95": bootstrap_ci(lambda idx: _avg_f1_fast(type_N[idx], gold_N[idx], pred_N[idx],
                                                                 len(type_index)), n),
            "acc": float(np.mean(gold_N == pred_N)), "per_type_f1": per_type, "per_type_yes": yes}


def report(m: Metrics, rows: Sequence[dict]) -> list[str]:
    lo, hi = m["avg_f1_ci95"]
    lines = ["### headlines", "",
             f"Average of the per-question weighted F1: {m['avg_f1']:.4f} (95 % CI {lo:.4f}–{hi:.4f}), "
             f"accuracy {m['acc']:.4f}.", "",
             "| question | weighted F1 | gold Yes | predicted Yes | questions |", "|---|---|---|---|---|"]
    for qtype, f1 in m["per_type_f1"].items():
        gold_yes, pred_yes, total = m["per_type_yes"][qtype]
        lines.append(f"| {qtype} | {f1:.4f} | {gold_yes} | {pred_yes} | {total} |")
    return lines + [""]


def _messages(ex: Example) -> Messages:
    return user_turn(ex["query"])


def _target(ex: Example) -> str:
    return ex["label"]


def _details(ex: Example, pred: Prediction) -> dict:
    return {"question_type": ex["question_type"], "gold": ex["label"], "correct": pred == ex["label"]}


def headlines() -> Task:
    """FinBen headlines: train / test = 80 / 20 of the valid file's headlines (valid = test)."""
    file = data_path(*FILE)
    return Task(name="headlines", primary="avg_f1",
                files={"train": file + "#train", "valid": file + "#test", "test": file + "#test"},
                read=read, messages=_messages, target=_target, parse=parse, score=score, details=_details,
                report=report, labels=("Yes", "No"))
