"""FLARE-NER (FinBen "NER", the Open FinLLM Leaderboard's NER task): PER / ORG / LOC in SEC loan agreements
(Alvarado et al. 2015), answered as "entity name, TYPE" lines.

Scoring follows PIXIU `src/tasks/flare.py`, class `NER` (github.com/The-FinAI/PIXIU, commit b92bc75) with
`process_text` of `src/tasks/utils.py` (last changed in commit 9d6cd7c): the answer's lines become BIO labels over
the example's whitespace-split text, and seqeval's `f1_score` (micro, default mode) compares them with the gold
labels. The labelling reproduces process_text's character-level quirks, which are part of the leaderboard's number:

- a line is split at its last ", ": the type is what follows, the name what precedes (a line without ", " has an
  empty name and labels nothing);
- every occurrence of the name in the text is found with a case-sensitive `str.find`, so a match may begin inside a
  word; its label then starts at the next word start (and a match inside one word labels the following word B-);
- word starts are computed as if the words were separated by single spaces;
- an occurrence whose last character lies in the text's last word labels nothing (no word start follows it);
- later lines overwrite the labels of earlier ones.

Gold answers scored this way give entity F1 0.98-0.99, not 1.0 (see tests/tasks/test_finben_ner.py).
"""

from __future__ import annotations

import collections
from typing import Sequence

import numpy as np
from seqeval.metrics import f1_score as seqeval_f1
from seqeval.metrics.sequence_labeling import get_entities

from jaxfin.evaluation.metrics import bootstrap_f1, prf
from jaxfin.io.files import read_jsonl
from jaxfin.tasks import records
from jaxfin.tasks.base import Example, Messages, Metrics, Prediction, Task, data_path, strip_think, user_turn

TYPES = ("PER", "ORG", "LOC")
DIR = "flare_ner_finben"


def parse_lines(completion: str) -> list[list[str]]:
    """[[name, type], ...] from the answer's lines as PIXIU splits them (at the last ", "), after dropping the
    `<think>` block; lines with an empty name are left out (PIXIU skips them)."""
    pairs = []
    for line in strip_think(completion).split("\n"):
        name, sep, etype = line.rpartition(", ")
        if not sep:  # PIXIU: no ", " -> name "" and type = the whole line
            continue
        if name:
            pairs.append([name, etype])
    return pairs


def leaderboard_labels(pairs: Sequence[Sequence[str]], text: str) -> list[str]:
    """BIO labels over text.split() that PIXIU's process_text gives the (name, type) lines (quirks in the module
    docstring)."""
    words = text.split()
    labels = ["O"] * len(words)
    starts = []  # character offset of each word, assuming single spaces between words (as process_text does)
    offset = 0
    for word in words:
        starts.append(offset)
        offset += len(word) + 1
    for name, etype in pairs:
        if not name:
            continue
        pos = text.find(name)
        while pos != -1:
            last_char = pos + len(name) - 1
            first_word = next((i for i, s in enumerate(starts) if s >= pos), None)
            end_word = next((i for i, s in enumerate(starts) if s > last_char), None)  # first word after the match
            if first_word is not None and end_word is not None:
                labels[first_word] = "B-" + etype
                for i in range(first_word + 1, end_word):
                    labels[i] = "I-" + etype
            pos = text.find(name, last_char + 1)
    return labels


def entity_counts(gold: Sequence[str], pred: Sequence[str]) -> tuple[set, set]:
    """The (type, start, end) entity sets seqeval extracts from one sentence's gold and predicted BIO labels; summed
    over sentences their intersections and sizes are seqeval's micro TP / predicted / true counts."""
    return set(get_entities(list(gold))), set(get_entities(list(pred)))


def entity_metrics(golds: Sequence[Sequence[str]], preds: Sequence[Sequence[str]]) -> Metrics:
    """seqeval entity F1 (micro, default mode) over BIO sequences: `entity_f1` (primary), its bootstrap interval
    from per-sentence TP / FP / FN, precision, recall, and per-type counts for the report."""
    if len(golds) != len(preds):
        raise ValueError(f"{len(golds)} gold sequences but {len(preds)} predicted ones")
    for i, (g, p) in enumerate(zip(golds, preds)):
        if len(g) != len(p):
            raise ValueError(f"example {i}: {len(g)} gold labels but {len(p)} predicted ones")
    n = len(golds)
    tp_N, fp_N, fn_N = np.zeros(n, np.int64), np.zeros(n, np.int64), np.zeros(n, np.int64)
    per_type: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0, 0])
    for i, (g, p) in enumerate(zip(golds, preds)):
        true, predicted = entity_counts(g, p)
        hit = true & predicted
        tp_N[i], fp_N[i], fn_N[i] = len(hit), len(predicted - hit), len(true - hit)
        for ent in hit:
            per_type[ent[0]][0] += 1
        for ent in predicted - hit:
            per_type[ent[0]][1] += 1
        for ent in true - hit:
            per_type[ent[0]][2] += 1
    precision, recall, _ = prf(tp_N.sum(), fp_N.sum(), fn_N.sum())
    # The leaderboard's number is seqeval's own; the counts above give the same F1 and drive the bootstrap.
    f1 = float(seqeval_f1([list(g) for g in golds], [list(p) for p in preds], zero_division=0)) if n else 0.0
    return {"primary": "entity_f1", "entity_f1": f1, "entity_f1_ci95": bootstrap_f1(tp_N, fp_N, fn_N),
            "precision": precision, "recall": recall,
            "per_type": {t: {"tp": c[0], "fp": c[1], "fn": c[2], "f1": prf(*c)[2]}
                         for t, c in sorted(per_type.items())}}


def entity_report(name: str):
    """A markdown section: entity F1 with its interval, precision, recall, and a per-type table."""
    def report(m: Metrics, rows: Sequence[dict]) -> list[str]:
        lo, hi = m["entity_f1_ci95"]
        lines = [f"### {name}", "",
                 f"Entity F1 (seqeval, micro) {m['entity_f1']:.4f} (95 % CI {lo:.4f}–{hi:.4f}), precision "
                 f"{m['precision']:.4f}, recall {m['recall']:.4f}.", "",
                 "| type | F1 | TP | FP | FN |", "|---|---|---|---|---|"]
        for etype, c in m["per_type"].items():
            lines.append(f"| {etype} | {c['f1']:.4f} | {c['tp']} | {c['fp']} | {c['fn']} |")
        return lines + [""]
    return report


def read(path: str) -> list[Example]:
    """FinBen NER examples {id, text, label, answer, query} (the files' `tokens`, and train's
    `fin5_sentence_index`, are kept too); the BIO labels must align with text.split()."""
    examples, seen = [], set()
    for lineno, row in read_jsonl(path):
        ex = dict(row)
        for key in ("id", "text", "answer", "query"):
            records.field(path, lineno, row, key)
        label = records.field(path, lineno, row, "label", list)
        if len(label) != len(row["text"].split()):
            raise ValueError(f"{path}:{lineno}: {len(label)} labels for {len(row['text'].split())} words of 'text'")
        bad = [t for t in label if not isinstance(t, str) or (t != "O" and t[2:] not in TYPES)
               or (t != "O" and t[:2] not in ("B-", "I-"))]
        if bad:
            raise ValueError(f"{path}:{lineno}: label {bad[0]!r} is not O or B-/I- of {', '.join(TYPES)}")
        if ex["id"] in seen:
            raise ValueError(f"{path}:{lineno}: duplicate id {ex['id']!r}")
        seen.add(ex["id"])
        examples.append(ex)
    return examples


def score(examples: Sequence[Example], preds: Sequence[Prediction]) -> Metrics:
    if len(examples) != len(preds):
        raise ValueError(f"finben_ner: {len(examples)} examples but {len(preds)} predictions")
    return entity_metrics([ex["label"] for ex in examples],
                          [leaderboard_labels(p or [], ex["text"]) for ex, p in zip(examples, preds)])


def entity_strings(words: Sequence[str], entities: set) -> list[str]:
    """"name, TYPE" for (type, start, end) entities over `words`, in order of position."""
    return [f"{' '.join(words[s:e + 1])}, {t}" for t, s, e in sorted(entities, key=lambda x: x[1])]


def details(ex: Example, pred: Prediction) -> dict:
    words = ex["text"].split()
    true, predicted = entity_counts(ex["label"], leaderboard_labels(pred or [], ex["text"]))
    return {"false_positives": entity_strings(words, predicted - true),
            "false_negatives": entity_strings(words, true - predicted)}


def _messages(ex: Example) -> Messages:
    return user_turn(ex["query"])


def _target(ex: Example) -> str:
    return ex["answer"]


def finben_ner() -> Task:
    """FLARE-NER: train = the FIN5 reconstruction (407), valid = FinBen valid (103), test = the leaderboard's 98."""
    files = {"train": data_path(DIR, "train_reconstructed_from_FIN5.jsonl"), "valid": data_path(DIR, "valid.jsonl"),
             "test": data_path(DIR, "test.jsonl")}
    return Task(name="finben_ner", primary="entity_f1", files=files, read=read, messages=_messages, target=_target,
                parse=parse_lines, score=score, details=details, report=entity_report("finben_ner"), labels=TYPES)
