"""The `fire` task: financial NER as JSON (the first paper's setup, FIRE 7 types by default). Each example becomes
(instruction naming the types and the expected JSON, the sentence, a JSON object with every type as a key); a
completion is parsed to entities; scores are entity-level micro P/R/F1 (the paper's metric) with a bootstrap CI,
per-type scores and seqeval over IOB2 tags.

The entity types come from the training data (ner.entity_types) and are recorded in run.json, so the prompt a
model was trained with is rebuilt exactly at evaluation: `task(types)`.
"""

from __future__ import annotations

import collections
import json
import re
import warnings
from typing import Any, Mapping, Sequence

import numpy as np

from jaxfin.errors import UserError
from jaxfin.evaluation import figures
from jaxfin.evaluation.metrics import bootstrap_f1, prf
from jaxfin.tasks import ner
from jaxfin.tasks.base import Task, data_path, strip_think, user_turn

Entities = dict[str, list[str]]
Pair = tuple[str, str]  # (type, normalised mention)
TYPES = ("Company", "Date", "Location", "Money", "Person", "Product", "Quantity")  # FIRE 7-type (Cleanlab schema)
FILES = {"train": ("fire_financial_ner", "cleanlab_fire_train_7types.jsonl"),
         "valid": ("fire_financial_ner", "fire_dev_7types.jsonl")}
METRIC_KEYS = ("n_examples", "micro_precision", "micro_recall", "micro_f1", "micro_f1_ci95", "macro_f1", "per_type",
               "seqeval", "parse_failure_rate")
CHART = "per_type_f1.png"


def task(types: Sequence[str] = TYPES) -> Task:
    """The JSON NER task over `types` (the prompt lists them; a predicted type outside them is a false positive)."""
    types = tuple(types)
    return Task(
        name="fire", primary="micro_f1",
        files={split: data_path(*parts) for split, parts in FILES.items()} | {"test": data_path(*FILES["valid"])},
        read=ner.load_examples,
        messages=lambda ex: prompt_messages(*to_triple(ex, types)[:2]),
        target=lambda ex: to_triple(ex, types)[2],
        parse=parse_completion,
        score=lambda examples, preds: score(examples, preds, types),
        details=details, report=report, charts=lambda out, m: figures.save_in(chart(m), out, CHART),
        from_row=from_row, labels=types)


# --------------------------------------------------------------------------------------------------------------
# Prompt and target.


def to_triple(example: Mapping, types: Sequence[str]) -> tuple[str, str, str]:
    """(instruction, input, output). The output is compact-ish JSON with every type a key and a list as value:
    the unique mentions in data order, [] when there are none (never null: one value shape to learn)."""
    template = json.dumps({t: [] for t in types})
    instruction = (
        f"Extract the named entities of these types from the text: {', '.join(types)}.\n"
        "Answer with a JSON object only, with every type as a key and as its value the list of that type's "
        f"mentions, each copied exactly from the text and listed once ([] if there are none): {template}"
    )
    entities = example["entities"]
    output = {t: list(dict.fromkeys(entities.get(t) or ())) for t in types}
    return instruction, example["text"], json.dumps(output, ensure_ascii=False)


def prompt_messages(instruction: str, input: str) -> list[dict[str, str]]:
    """One user turn, no system prompt: DeepSeek-R1's model card asks for all instructions in the user prompt."""
    return user_turn(f"{instruction}\n\nText: {input}")


# --------------------------------------------------------------------------------------------------------------
# Parsing completions.

_FENCE = re.compile(r"```[A-Za-z]*[ \t]*\n?(.*?)(?:```|$)", re.S)
_DECODER = json.JSONDecoder()


def first_json_object(text: str) -> dict | None:
    """The first complete, strictly valid JSON object in `text` (tried from each '{'); text after it is ignored."""
    at = text.find("{")
    while at != -1:
        try:
            obj, _ = _DECODER.raw_decode(text, at)
        except json.JSONDecodeError:
            obj = None
        if isinstance(obj, dict):
            return obj
        at = text.find("{", at + 1)
    return None


def entities_from_json(obj: Mapping[str, Any]) -> Entities:
    """Shapes a predicted object to {type: [str, ...]}: a single string becomes [string], null becomes []; list
    items that are not strings, and values of any other shape, are dropped (no guessing)."""
    out: Entities = {}
    for t, v in obj.items():
        if isinstance(v, str):
            out[t] = [v]
        elif isinstance(v, list):
            out[t] = [m for m in v if isinstance(m, str)]
        else:
            out[t] = []
    return out


def parse_completion(text: str) -> Entities | None:
    """Predicted entities of a completion, or None (parse failure) when it holds no complete JSON object.
    Order: strip think blocks, prefer the first ``` fence's body, else the whole text. Never raises."""
    if not isinstance(text, str):
        return None
    text = strip_think(text)
    fence = _FENCE.search(text)
    for candidate in ([fence.group(1)] if fence else []) + [text]:
        obj = first_json_object(candidate)
        if obj is not None:
            return entities_from_json(obj)
    return None


# --------------------------------------------------------------------------------------------------------------
# Scoring.


def pairs(entities: Mapping[str, Any] | None) -> set[Pair]:
    """The set of (type, normalised mention) of a gold or predicted entity dict; empty mentions dropped."""
    out: set[Pair] = set()
    for t, mentions in (entities or {}).items():
        for m in [mentions] if isinstance(mentions, str) else mentions or ():
            if isinstance(m, str) and (key := ner.normalize_mention(m)):
                out.add((t, key))
    return out


_EDGES = re.compile(r"(\W*)(.*?)(\W*)", re.S)


def seqeval_tokens(text: str) -> list[str]:
    """The tokens seqeval places mentions on: whitespace tokens with the punctuation at their edges split off, one
    character each (`fiscal 2024.` -> fiscal, 2024, .), so a mention followed by a full stop or comma inside its
    whitespace token can be placed. Punctuation inside a token stays (U.S, 1.5, Apple's), and text that is already
    tokenised with punctuation apart (FIRE's) tokenises as before."""
    out: list[str] = []
    for word in ner.normalize_mention(text).split():
        lead, core, trail = _EDGES.fullmatch(word).groups()
        out += [*lead, *([core] if core else []), *trail]
    return out


def iob2_tags(tokens: Sequence[str], entity_pairs: set[Pair]) -> tuple[list[str], list[Pair]]:
    """IOB2 tags placing every occurrence of every mention (tokenised by seqeval_tokens) on the token sequence,
    longer mentions first, never over an already tagged token; returns (tags, mentions that found no free
    occurrence)."""
    tags = ["O"] * len(tokens)
    unplaced = []
    for t, m in sorted(entity_pairs, key=lambda p: (-len(seqeval_tokens(p[1])), -len(p[1]), p)):
        words, placed = seqeval_tokens(m), False
        k = len(words)
        for i in range(len(tokens) - k + 1):
            if tokens[i:i + k] == words and all(tag == "O" for tag in tags[i:i + k]):
                tags[i:i + k] = [f"B-{t}"] + [f"I-{t}"] * (k - 1)
                placed = True
        if not placed:
            unplaced.append((t, m))
    return tags, unplaced


def _seqeval(gold_examples: Sequence[Mapping], gold_sets: list[set[Pair]], pred_sets: list[set[Pair]]) -> dict:
    """seqeval (Nakayama 2018; conlleval's entity-level scoring) over the located mentions."""
    from seqeval.metrics import classification_report

    y_true, y_pred = [], []
    for ex, g, p in zip(gold_examples, gold_sets, pred_sets):
        tokens = seqeval_tokens(ex["text"])
        y_true.append(iob2_tags(tokens, g)[0])
        y_pred.append(iob2_tags(tokens, p)[0])
    with warnings.catch_warnings():  # numpy's "mean of empty slice" when no entity exists at all
        warnings.simplefilter("ignore", RuntimeWarning)
        report = classification_report(y_true, y_pred, output_dict=True, zero_division=0)
    clean = lambda v: 0.0 if np.isnan(v) else float(v)  # noqa: E731  (macro over no types is nan in seqeval)
    per_type = {t: {"precision": clean(r["precision"]), "recall": clean(r["recall"]), "f1": clean(r["f1-score"]),
                    "support": int(r["support"])} for t, r in report.items() if not t.endswith(" avg")}
    return {"micro_f1": clean(report["micro avg"]["f1-score"]), "macro_f1": clean(report["macro avg"]["f1-score"]),
            "per_type": per_type}


def score(gold_examples: Sequence[Mapping], predictions: Sequence[Entities | None],
          types: Sequence[str] | None = None) -> dict:
    """The task's metrics for predicted entities (None: a parse failure) aligned with gold examples. Predicted
    types outside the dataset's `types` (default: ner.entity_types(gold)) are false positives."""
    if len(gold_examples) != len(predictions):
        raise ValueError(f"{len(gold_examples)} gold examples but {len(predictions)} predictions")
    types = list(types) if types is not None else ner.entity_types(gold_examples)
    gold_sets = [pairs(ex["entities"]) for ex in gold_examples]
    pred_sets = [pairs(p) for p in predictions]
    tp_N = np.array([len(g & p) for g, p in zip(gold_sets, pred_sets)], np.int64)
    fp_N = np.array([len(p - g) for g, p in zip(gold_sets, pred_sets)], np.int64)
    fn_N = np.array([len(g - p) for g, p in zip(gold_sets, pred_sets)], np.int64)
    by_type = {t: collections.Counter() for t in types}
    for g, p in zip(gold_sets, pred_sets):
        for t, _ in g & p:
            by_type.setdefault(t, collections.Counter())["tp"] += 1
        for t, _ in p - g:
            by_type.setdefault(t, collections.Counter())["fp"] += 1
        for t, _ in g - p:
            by_type.setdefault(t, collections.Counter())["fn"] += 1
    per_type = {}
    for t in types:
        c = by_type[t]
        p, r, f = prf(c["tp"], c["fp"], c["fn"])
        per_type[t] = {"precision": p, "recall": r, "f1": f, "support": c["tp"] + c["fn"]}
    supported = [v["f1"] for v in per_type.values() if v["support"] > 0]
    micro_p, micro_r, micro_f = prf(tp_N.sum(), fp_N.sum(), fn_N.sum())
    n = len(gold_examples)
    return {
        "n_examples": n,
        "micro_precision": micro_p,
        "micro_recall": micro_r,
        "micro_f1": micro_f,
        "micro_f1_ci95": bootstrap_f1(tp_N, fp_N, fn_N),
        "macro_f1": float(np.mean(supported)) if supported else 0.0,
        "per_type": per_type,
        "seqeval": _seqeval(gold_examples, gold_sets, pred_sets),
        "parse_failure_rate": sum(p is None for p in predictions) / n if n else 0.0,
        "primary": "micro_f1",
    }


def details(example: Mapping, entities: Entities | None) -> dict[str, Any]:
    """predictions.jsonl fields of one example: the parsed entities (None = parse failure), fp / fn as sorted
    [type, mention] lists, and the gold / predicted mentions seqeval could not place in the text (no free
    occurrence on token boundaries)."""
    g, p = pairs(example["entities"]), pairs(entities)
    tokens = seqeval_tokens(example["text"])
    return {"entities": entities, "fp": sorted(map(list, p - g)), "fn": sorted(map(list, g - p)),
            "unplaced_gold": sorted(map(list, iob2_tags(tokens, g)[1])),
            "unplaced_pred": sorted(map(list, iob2_tags(tokens, p)[1]))}


def from_row(task: Task, row: Mapping[str, Any], where: str) -> Entities | None:
    """A predictions-file line: {"completion"} (parsed here) or {"entities"} already extracted elsewhere."""
    if isinstance(row.get("completion"), str):
        return task.parse(row["completion"])
    if "entities" not in row:
        raise UserError(f"{where}: needs 'completion' (a string) or 'entities'")
    entities = row["entities"]
    ok = entities is None or (isinstance(entities, dict) and all(
        v is None or isinstance(v, str) or (isinstance(v, list) and all(isinstance(m, str) for m in v))
        for v in entities.values()))
    if not ok:
        raise UserError(f"{where}: 'entities' must be null or {{type: [mention, ...] | mention | null}}")
    return None if entities is None else entities_from_json(entities)


def seqeval_f1(seq: Mapping, entity_type: str) -> float | None:
    """seqeval's F1 of a type, None when none of its gold mentions could be placed (nothing to score)."""
    r = seq["per_type"].get(entity_type)
    return None if not r or not r.get("support") else r["f1"]


def chart(metrics: Mapping) -> Any:
    """Horizontal bars of per-type F1, entity-level beside seqeval (a matplotlib Figure)."""
    types = list(metrics["per_type"])
    y = np.arange(len(types))
    fig = figures.figure(figsize=(7, 1.2 + 0.45 * max(len(types), 1)))
    ax = fig.add_subplot()
    ent = [metrics["per_type"][t]["f1"] for t in types]
    seq = [seqeval_f1(metrics["seqeval"], t) or 0.0 for t in types]
    ax.barh(y - 0.2, ent, height=0.4, label="entity F1", color="#3b6ea8")
    ax.barh(y + 0.2, seq, height=0.4, label="seqeval F1", color="#a8a8a8")
    for i, t in enumerate(types):
        ax.text(min(ent[i], 1.0) + 0.01, i - 0.2, f"{ent[i]:.3f} (n={metrics['per_type'][t]['support']})",
                va="center", fontsize=8)
    ax.set_yticks(y, types)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.25)
    ax.set_xticks(np.linspace(0, 1, 6))
    ax.set_xlabel("F1")
    lo, hi = metrics["micro_f1_ci95"]
    ax.set_title(f"micro F1 {metrics['micro_f1']:.3f} (95% CI {lo:.3f}-{hi:.3f}), n={metrics['n_examples']}")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.22), ncols=2, fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


def report(metrics: Mapping, rows: Sequence[Mapping]) -> list[str]:
    """The task's section of report.md: precision / recall, seqeval, parse failures, the per-type table and chart,
    and the most frequent false positives / negatives."""
    m, seq = metrics, metrics["seqeval"]
    n_fail = sum(r["entities"] is None for r in rows)
    lines = [
        f"- precision {m['micro_precision']:.4f}, recall {m['micro_recall']:.4f}; macro F1 {m['macro_f1']:.4f}",
        f"- seqeval: micro F1 {seq['micro_f1']:.4f}, macro F1 {seq['macro_f1']:.4f}",
        f"- parse failures: {n_fail} ({m['parse_failure_rate']:.2%})",
        "", f"![per-type F1]({CHART})", "",
        "| type | support | precision | recall | F1 | seqeval F1 |", "|---|---:|---:|---:|---:|---:|",
    ]
    for t, v in m["per_type"].items():
        sf = seqeval_f1(seq, t)
        lines.append(f"| {t} | {v['support']} | {v['precision']:.4f} | {v['recall']:.4f} | {v['f1']:.4f} | "
                     f"{'n/a' if sf is None else f'{sf:.4f}'} |")
    n_gold, n_pred = (sum(len(r[k]) for r in rows) for k in ("unplaced_gold", "unplaced_pred"))
    lines += ["", "Entity scores compare sets of (type, mention) per example, mentions NFKC-normalised with whitespace "
              "collapsed, case kept. seqeval scores IOB2 tags of the mentions placed on the tokens of the text "
              "(whitespace tokens with the punctuation at their edges split off); "
              f"{n_gold} gold and {n_pred} predicted mentions had no free occurrence there, so they count "
              "only in the entity scores (a predicted mention absent from the text is a FP there, unseen by seqeval); "
              "n/a: no gold mention of the type could be placed, so seqeval has nothing to score it on."]
    for name, key in (("false positives", "fp"), ("false negatives", "fn")):
        common = collections.Counter(tuple(e) for r in rows for e in r[key]).most_common(10)
        if common:
            lines += ["", f"Most frequent {name}:", "", "| type | mention | count |", "|---|---|---:|"]
            lines += [f"| {t} | {mention.replace('|', chr(92) + '|')} | {c} |" for (t, mention), c in common]
    return lines


