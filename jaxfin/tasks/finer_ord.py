"""FiNER-ORD (Shah et al. 2023): PER / LOC / ORG in financial news, one example per sentence, in the same
"entity name, TYPE" answer format as finben_ner (one line per mention, in order; "None" when a sentence has none).

The leaderboard scores FiNER-ORD as token:label lines (PIXIU `src/tasks/flare.py`, `SequentialLabeling`); this task
asks for entity lines instead, so that one answer format serves both NER tasks. Its parser maps the lines back onto
the tokens (not characters: PIXIU's process_text quirks are finben_ner's only), and the score is seqeval's entity F1
(micro, default mode) against the gold BIO tags, as for every FinBen NER task.
"""

from __future__ import annotations

import os
from typing import Sequence

from seqeval.metrics.sequence_labeling import get_entities

from jaxfin.io.files import read_csv, read_jsonl
from jaxfin.tasks import records
from jaxfin.tasks.base import Example, Messages, Metrics, Prediction, Task, data_path, strip_think, user_turn
from jaxfin.tasks.finben_ner import entity_counts, entity_metrics, entity_report, entity_strings

TYPES = ("PER", "LOC", "ORG")
TAGS = ("O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG")  # the csv's integer labels (FiNER-ORD README)
NONE = "None"  # the answer for a sentence without entities
DIR = "finer_ord"

# FLARE-NER's instruction (flare_ner_finben query template) with the source and the "None" answer adapted.
INSTRUCTION = ("In the sentences extracted from financial news articles, identify the named entities that represent "
               "a person ('PER'), an organization ('ORG'), or a location ('LOC'). The required answer format is: "
               "'entity name, entity type', one entity per line in the order they appear; answer 'None' if there is "
               "no entity. For instance, in \"Elon Musk, CEO of SpaceX, announced the launch from Cape Canaveral.\", "
               "the entities would be: 'Elon Musk, PER\nSpaceX, ORG\nCape Canaveral, LOC'")


def answer(tokens: Sequence[str], tags: Sequence[str]) -> str:
    """The gold answer: one "name, TYPE" line per entity seqeval finds in the tags (an orphan I- starts one), in
    order of appearance; "None" for a sentence without entities."""
    lines = [f"{' '.join(tokens[s:e + 1])}, {t}" for t, s, e in get_entities(list(tags))]
    return "\n".join(lines) if lines else NONE


def parse(completion: str) -> Prediction:
    """[[name, type], ...]: each line split at its last ", " (whitespace around both parts dropped), after removing
    the `<think>` block; lines without ", " (e.g. "None") or with an empty part are skipped."""
    pairs = []
    for line in strip_think(completion).split("\n"):
        name, sep, etype = line.rpartition(", ")
        name, etype = name.strip(), etype.strip()
        if sep and name and etype:
            pairs.append([name, etype])
    return pairs


def tag_tokens(pairs: Sequence[Sequence[str]], tokens: Sequence[str]) -> list[str]:
    """BIO tags for the (name, type) lines: each line takes one occurrence of its whitespace-split name as a token
    run, the first after the previous line's match whose tokens are still free, else the first free one anywhere
    (so lines in order of appearance, duplicates included, land on their own mentions); a line with no free
    occurrence tags nothing. Any type string is kept: a type outside PER / LOC / ORG can only be a false positive."""
    tags = ["O"] * len(tokens)
    cursor = 0
    for name, etype in pairs:
        words = name.split()
        m = len(words)
        free = [i for i in range(len(tokens) - m + 1)
                if list(tokens[i:i + m]) == words and all(t == "O" for t in tags[i:i + m])]
        if not free:
            continue
        start = next((i for i in free if i >= cursor), free[0])
        tags[start] = "B-" + etype
        for i in range(start + 1, start + m):
            tags[i] = "I-" + etype
        cursor = start + m
    return tags


def _example(path: str, lineno: int, doc: int, sent: int, tokens: list[str], tags: list[str]) -> Example:
    for tag in tags:
        if tag not in TAGS:
            raise ValueError(f"{path}:{lineno}: tag {tag!r} is not one of {', '.join(TAGS)}")
    for tok in tokens:
        if not tok or tok != tok.strip() or len(tok.split()) != 1:
            raise ValueError(f"{path}:{lineno}: token {tok!r} is empty or holds whitespace")
    return {"id": f"{doc}-{sent}", "doc_idx": doc, "sent_idx": sent, "tokens": tokens, "label": tags,
            "text": " ".join(tokens), "answer": answer(tokens, tags)}


def _read_sentences(path: str) -> list[tuple[int, Example]]:
    examples = []
    for lineno, row in read_jsonl(path):
        doc = records.field(path, lineno, row, "doc_idx", int)
        sent = records.field(path, lineno, row, "sent_idx", int)
        tokens = records.field(path, lineno, row, "tokens", list)
        tags = records.field(path, lineno, row, "ner_tags", list)
        if len(tokens) != len(tags) or not tokens:
            raise ValueError(f"{path}:{lineno}: {len(tokens)} tokens but {len(tags)} tags")
        if not all(isinstance(t, str) for t in tokens + tags):
            raise ValueError(f"{path}:{lineno}: tokens and ner_tags should be strings")
        examples.append((lineno, _example(path, lineno, doc, sent, tokens, tags)))
    return examples


def _read_csv(path: str) -> list[tuple[int, Example]]:
    """The original token CSV (gold_label,gold_token,doc_idx,sent_idx): a sentence is a run of rows sharing
    (doc_idx, sent_idx)."""
    examples: list[tuple[int, Example]] = []
    key, first_line, tokens, tags = None, 0, [], []
    for lineno, row in read_csv(path, ("gold_label", "gold_token", "doc_idx", "sent_idx")):
        try:
            doc, sent = int(row["doc_idx"]), int(row["sent_idx"])
        except ValueError:
            raise ValueError(f"{path}:{lineno}: doc_idx and sent_idx should be integers") from None
        label = row["gold_label"]
        if not (label.isdigit() and int(label) < len(TAGS)):
            raise ValueError(f"{path}:{lineno}: gold_label {label!r} is not an integer 0-{len(TAGS) - 1}")
        label = int(label)
        if (doc, sent) != key:
            if key is not None:
                examples.append((first_line, _example(path, first_line, *key, tokens, tags)))
            key, first_line, tokens, tags = (doc, sent), lineno, [], []
        tokens.append(row["gold_token"])
        tags.append(TAGS[label])
    if key is not None:
        examples.append((first_line, _example(path, first_line, *key, tokens, tags)))
    return examples


def read(path: str) -> list[Example]:
    """FiNER-ORD sentences {id "doc-sent", doc_idx, sent_idx, tokens, label (BIO), text, answer} from the derived
    `*_sentences.jsonl` or the original token `.csv`; a (doc_idx, sent_idx) may occur once."""
    return [ex for _, ex in read_numbered(path)]


def read_numbered(path: str) -> list[tuple[int, Example]]:
    """read(), each sentence with the line it starts on (the one reader of the format: ner.load_examples uses it)."""
    numbered = _read_csv(path) if os.path.splitext(path)[1].lower() == ".csv" else _read_sentences(path)
    seen = set()
    for lineno, ex in numbered:
        if ex["id"] in seen:
            raise ValueError(f"{path}:{lineno}: sentence (doc_idx, sent_idx) = ({ex['doc_idx']}, {ex['sent_idx']}) "
                             "occurs twice")
        seen.add(ex["id"])
    return numbered


def score(examples: Sequence[Example], preds: Sequence[Prediction]) -> Metrics:
    if len(examples) != len(preds):
        raise ValueError(f"finer_ord: {len(examples)} examples but {len(preds)} predictions")
    return entity_metrics([ex["label"] for ex in examples],
                          [tag_tokens(p or [], ex["tokens"]) for ex, p in zip(examples, preds)])


def details(ex: Example, pred: Prediction) -> dict:
    true, predicted = entity_counts(ex["label"], tag_tokens(pred or [], ex["tokens"]))
    return {"false_positives": entity_strings(ex["tokens"], predicted - true),
            "false_negatives": entity_strings(ex["tokens"], true - predicted)}


def _messages(ex: Example) -> Messages:
    return user_turn(f"{INSTRUCTION}\nText: {ex['text']}\nAnswer:")


def _target(ex: Example) -> str:
    return ex["answer"]


def finer_ord() -> Task:
    """FiNER-ORD as shipped: train 3,262 / val 402 (as valid) / test 1,075 sentences."""
    files = {"train": data_path(DIR, "train_sentences.jsonl"), "valid": data_path(DIR, "val_sentences.jsonl"),
             "test": data_path(DIR, "test_sentences.jsonl")}
    return Task(name="finer_ord", primary="entity_f1", files=files, read=read, messages=_messages, target=_target,
                parse=parse, score=score, details=details, report=entity_report("finer_ord"), labels=TYPES)
