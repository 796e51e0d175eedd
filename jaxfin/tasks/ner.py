"""NER datasets in one canonical format: loaders for the shared datasets' formats and the entity types of a set
(the JSON NER task built on them is fire.py).

Canonical example (the format of ../shared/data/fire_financial_ner/*_7types.jsonl):
  {"id": str, "text": str, "entities": {type: [mention, ...] | None}, ...extra fields kept}
Loaders convert FIRE's span JSON (Hamad et al. 2024), FinBen/FLARE NER (Xie et al. 2023) and FiNER-ORD (Shah et al.
2023) to it: mentions are the tokens of a span joined by single spaces, unique per type in order of occurrence, an
empty type is None (as in the FIRE 7-type files); a dataset's types are the tags its data uses, sorted.

Line formats (JSONL, CSV) are read line by line so every error names file:line; `datasets` reads the one columnar
format (Cleanlab's parquet), where errors name the row.
"""

from __future__ import annotations

import ast
import json
import os
import unicodedata
import warnings
from typing import Any, Iterable, Iterator, Mapping, Sequence

from jaxfin.errors import UserError, user_errors
from jaxfin.io import hub
from jaxfin.io.files import open_text, read_jsonl, reading
from jaxfin.tasks import finer_ord

Example = dict[str, Any]
Entities = dict[str, list[str]]
FORMATS = ("auto", "canonical", "fire", "finben", "finer_ord", "cleanlab", "hub")


def normalize_mention(s: str) -> str:
    """The issue's comparison key: Unicode NFKC, whitespace runs collapsed to one space, stripped; case kept."""
    return " ".join(unicodedata.normalize("NFKC", s).split())


# --------------------------------------------------------------------------------------------------------------
# Loading.


def load_examples(path: str | os.PathLike, format: str = "auto") -> list[Example]:
    """Examples of one file in the canonical format. `format`: one of FORMATS; "auto" decides from the extension
    and the fields of the first record. Raises UserError naming file:line (or instance / row) on bad input."""
    path = os.fspath(path)
    if format not in FORMATS:
        raise UserError(f"{path}: unknown format {format!r} (choose from {', '.join(FORMATS)})")
    if format == "auto":
        format = "hub" if hub.is_hub_id(path) else _detect(path)
    readers = {"canonical": _read_canonical, "fire": _read_fire, "finben": _read_finben,
               "finer_ord": _read_finer_ord, "cleanlab": _read_cleanlab, "hub": _read_hub}
    located = list(readers[format](path))  # (where, example): where names file:line, instance or row
    if not located:
        raise UserError(f"{path}: no examples (empty file)")
    seen: set[str] = set()
    for where, ex in located:
        if ex["id"] in seen:
            raise UserError(f"{where}: duplicate id {ex['id']!r} (ids must be unique: predictions match by id)")
        seen.add(ex["id"])
    examples = [ex for _, ex in located]
    _warn_missing_mentions(path, examples)
    return examples


def _detect(path: str) -> str:
    ext = os.path.splitext(path)[1].lower()
    if ext == ".parquet":
        return "cleanlab"
    if ext == ".csv":
        return "finer_ord"
    if ext == ".json":
        return "fire"
    for lineno, row in read_jsonl(path):
        if row:
                if "ner_tags" in row:
                    return "finer_ord"
                if "label" in row and "tokens" in row:
                    return "finben"
                return "canonical"
    raise UserError(f"{path}: no examples (empty file)")


def _text(where: str, row: Mapping) -> str:
    text = row.get("text")
    if not isinstance(text, str):
        raise UserError(f"{where}: " + ("no 'text' field" if text is None else "'text' is not a string"))
    return text


def _check_entities(where: str, entities: Any) -> dict[str, list[str] | None]:
    if not isinstance(entities, dict):
        raise UserError(f"{where}: 'entities' must be an object {{type: [mention, ...] | null}}, "
                        f"got {type(entities).__name__}")
    for t, v in entities.items():
        if v is not None and not (isinstance(v, list) and all(isinstance(m, str) for m in v)):
            raise UserError(f"{where}: entities[{t!r}] must be a list of strings or null, got {json.dumps(v)[:80]}")
    return entities


def _read_canonical(path: str) -> Iterator[tuple[str, Example]]:
    for i, (lineno, row) in enumerate(read_jsonl(path)):
        where = f"{path}:{lineno}"
        text = _text(where, row)
        if "entities" not in row:
            raise UserError(f"{where}: no 'entities' field")
        entities = _check_entities(where, row["entities"])
        yield where, {**row, "id": str(row.get("id", i)), "text": text, "entities": entities}


def _from_spans(ex_id: str, tokens: Sequence[str], spans: Iterable[tuple[str, int, int]],
                types: Sequence[str]) -> Example:
    """Canonical example from token spans [start, end): unique mentions per type, in order of occurrence."""
    entities: dict[str, list[str]] = {t: [] for t in types}
    for t, start, end in sorted(spans, key=lambda s: (s[1], s[2])):
        mention = " ".join(tokens[start:end])
        if mention not in entities[t]:
            entities[t].append(mention)
    return {"id": ex_id, "text": " ".join(tokens), "entities": {t: v or None for t, v in entities.items()}}


def bio_spans(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """(type, start, end) spans of a BIO sequence; an I- tag not continuing its type opens a span (as conlleval)."""
    spans: list[tuple[str, int, int]] = []
    for i, tag in enumerate(tags):
        prefix, _, t = tag.partition("-")
        if prefix == "I" and spans and spans[-1][0] == t and spans[-1][2] == i:
            spans[-1] = (t, spans[-1][1], i + 1)
        elif prefix in ("B", "I"):
            spans.append((t, i, i + 1))
    return spans


def _bio_examples(rows: list[tuple[str, str, list[str], list[str]]]) -> Iterator[tuple[str, Example]]:
    """rows: (where, id, tokens, tags) -> canonical examples over the types used anywhere in the file."""
    for where, _, tokens, tags in rows:
        if len(tokens) != len(tags):
            raise UserError(f"{where}: {len(tokens)} tokens but {len(tags)} tags")
        bad = [t for t in tags if t != "O" and (t[:2] not in ("B-", "I-") or len(t) < 3)]
        if bad:
            raise UserError(f"{where}: tag {bad[0]!r} is not O, B-TYPE or I-TYPE")
    types = sorted({t[2:] for *_, tags in rows for t in tags if t != "O"})
    for where, ex_id, tokens, tags in rows:
        yield where, _from_spans(ex_id, tokens, bio_spans(tags), types)


def _read_finben(path: str) -> Iterator[tuple[str, Example]]:
    rows = []
    for i, (lineno, row) in enumerate(read_jsonl(path)):
        where = f"{path}:{lineno}"
        tokens = row["tokens"] if "tokens" in row else _text(where, row).split(" ")
        if not isinstance(row.get("label"), list) or not isinstance(tokens, list):
            raise UserError(f"{where}: a FinBen NER row needs 'label' (list of BIO tags) and 'tokens' or 'text'")
        rows.append((where, str(row.get("id", i)), [str(t) for t in tokens], [str(t) for t in row["label"]]))
    return _bio_examples(rows)


def _read_finer_ord(path: str) -> Iterator[tuple[str, Example]]:
    """FiNER-ORD's token CSV or derived sentence JSONL, read by the finer_ord task (its one reader of the format)."""
    with user_errors():
        sentences = finer_ord.read_numbered(path)
    return _bio_examples([(f"{path}:{lineno}", ex["id"], ex["tokens"], ex["label"]) for lineno, ex in sentences])


def _read_fire(path: str) -> Iterator[tuple[str, Example]]:
    """FIRE span JSON: a list of {tokens, entities: [{type, start, end (exclusive)}], relations, orig_id}."""
    with open_text(path) as f, reading(path):
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{e.lineno}: malformed JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(data, list):
        raise UserError(f"{path}: expected a JSON list of FIRE instances, got {type(data).__name__}")
    spans_of = []
    for i, inst in enumerate(data):
        where = f"{path}: instance {i}"
        if not isinstance(inst, dict) or not isinstance(inst.get("tokens"), list):
            raise UserError(f"{where}: a FIRE instance needs a 'tokens' list")
        ents = inst.get("entities")
        if not isinstance(ents, list):
            raise UserError(f"{where}: 'entities' must be a list of {{type, start, end}}")
        spans = []
        for e in ents:
            ok = isinstance(e, dict) and isinstance(e.get("type"), str) and isinstance(e.get("start"), int) \
                and isinstance(e.get("end"), int) and 0 <= e["start"] < e["end"] <= len(inst["tokens"])
            if not ok:
                raise UserError(f"{where}: bad entity {json.dumps(e)[:80]} (needs type, 0 <= start < end <= tokens)")
            spans.append((e["type"], e["start"], e["end"]))
        spans_of.append(spans)
    types = sorted({s[0] for spans in spans_of for s in spans})
    for i, (inst, spans) in enumerate(zip(data, spans_of)):
        ex = _from_spans(str(i), [str(t) for t in inst["tokens"]], spans, types)
        yield f"{path}: instance {i}", {**ex, **({"orig_id": inst["orig_id"]} if "orig_id" in inst else {})}


def _read_cleanlab(path: str) -> Iterator[tuple[str, Example]]:
    """Cleanlab's fire-financial-ner-extraction parquet: `text` + `ground_truth` (a Python-literal dict)."""
    yield from _cleanlab_rows(path, hub.load_dataset_split(path, "parquet", data_files=path))


def _read_hub(repo_id: str) -> Iterator[tuple[str, Example]]:
    """A Hugging Face hub dataset id (its train split) in Cleanlab's schema, e.g.
    `Cleanlab/fire-financial-ner-extraction`. Needs network access (or the datasets cache)."""
    yield from _cleanlab_rows(repo_id, hub.load_dataset_split(repo_id, repo_id))


def _cleanlab_rows(path: str, ds: Any) -> Iterator[tuple[str, Example]]:
    if not {"text", "ground_truth"} <= set(ds.column_names):
        raise UserError(f"{path}: expected columns text, ground_truth; found {', '.join(ds.column_names)}")
    for i, row in enumerate(ds):
        where = f"{path}: row {i}"
        try:
            entities = ast.literal_eval(row["ground_truth"])
        except (ValueError, SyntaxError):
            raise UserError(f"{where}: ground_truth is not a Python literal dict") from None
        yield where, {"id": str(i), "text": _text(where, row), "entities": _check_entities(where, entities)}


def _warn_missing_mentions(path: str, examples: list[Example]) -> None:
    """Gold mentions that are not substrings of their text (after normalisation) cannot be predicted verbatim."""
    total, missing = 0, []
    for ex in examples:
        text = normalize_mention(ex["text"])
        for t, mentions in ex["entities"].items():
            for m in mentions or ():
                total += 1
                if normalize_mention(m) not in text:
                    missing.append((ex["id"], t, m))
    if missing:
        ex_id, t, m = missing[0]
        warnings.warn(f"{path}: {len(missing)} of {total} gold mentions do not occur in their text "
                      f"(first: id {ex_id}, {t} {m!r})", stacklevel=3)


def entity_types(examples: Iterable[Mapping]) -> list[str]:
    """The dataset's types: every key of every `entities` dict (null-valued too), in order of first appearance."""
    seen: dict[str, None] = {}
    for ex in examples:
        for t in ex["entities"]:
            seen.setdefault(t, None)
    return list(seen)


def warn_type_mismatch(trained: Sequence[str], examples: Sequence[Mapping], where: str) -> None:
    """One warning line when evaluation data name other entity types than the model was trained on: its mentions
    of an untrained type are never asked for (they count only as misses), and a trained type it lacks scores
    nothing. Counts of types and gold mentions; silent when the types agree."""
    have = entity_types(examples)
    extra = [t for t in have if t not in trained]
    absent = [t for t in trained if t not in have]
    if not extra and not absent:
        return
    mentions = sum(len(ex["entities"].get(t) or ()) for ex in examples for t in extra)
    total = sum(len(v or ()) for ex in examples for v in ex["entities"].values())
    parts = []
    if extra:
        parts.append(f"{len(extra)} of its {len(have)} entity types are not among the {len(trained)} the model was "
                     f"trained on ({', '.join(extra)}: {mentions} of {total} gold mentions, never asked for, count "
                     f"as misses)")
    if absent:
        parts.append(f"{len(absent)} trained types do not occur in it ({', '.join(absent)})")
    warnings.warn(f"{where}: " + "; ".join(parts), stacklevel=2)
