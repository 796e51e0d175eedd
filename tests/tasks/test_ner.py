"""jaxfin.ner: loaders on the real shared files (read in place, never copied), error lines, prompt, parser."""

import collections
import json
import os
import warnings

import pytest

from jaxfin.errors import UserError
from jaxfin.tasks import fire, ner
from jaxfin.tasks.base import data_root


DATA = data_root()
FIRE = os.path.join(DATA, "fire_financial_ner")
SEVEN = ["Company", "Date", "Location", "Money", "Person", "Product", "Quantity"]


def load_quiet(path, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ner.load_examples(path, **kw)


def mention_count(examples):
    return sum(len(v or ()) for ex in examples for v in ex["entities"].values())


def test_canonical_fire_dev_7types():
    dev = ner.load_examples(os.path.join(FIRE, "fire_dev_7types.jsonl"))
    assert len(dev) == 454 and ner.entity_types(dev) == SEVEN
    assert mention_count(dev) == 1400  # PROVENANCE.md: 1,400 unique mentions
    assert sum(all(v is None for v in ex["entities"].values()) for ex in dev) == 8
    assert dev[0]["id"] == "dev0" and dev[0]["orig_id"] == 1188  # extra fields are kept
    assert dev[0]["entities"]["Date"] == ["April 2 , 2012"] and dev[0]["entities"]["Money"] is None


def test_cleanlab_train_jsonl_and_parquet_agree_and_warn_about_the_missing_mention():
    with pytest.warns(UserWarning, match=r"1 of 6699 gold mentions do not occur.*Genuine Parts \(GPC\)"):
        train = ner.load_examples(os.path.join(FIRE, "cleanlab_fire_train_7types.jsonl"))
    assert len(train) == 2117 and ner.entity_types(train) == SEVEN and mention_count(train) == 6699
    parquet = load_quiet(os.path.join(FIRE, "cleanlab_fire_train_7types.parquet"))  # through `datasets`
    assert [(e["text"], e["entities"]) for e in parquet] == [(e["text"], e["entities"]) for e in train]


def test_fire_spans_projected_to_seven_types_equal_the_derived_dev_file():
    raw = ner.load_examples(os.path.join(FIRE, "fire_dev.json"))
    derived = ner.load_examples(os.path.join(FIRE, "fire_dev_7types.jsonl"))
    assert len(raw) == 454 and len(ner.entity_types(raw)) == 13 and "GeopoliticalEntity" in ner.entity_types(raw)
    to7 = {t: t for t in SEVEN} | {"GeopoliticalEntity": "Location"}
    for r, d in zip(raw, derived):
        assert (r["text"], r["orig_id"]) == (d["text"], d["orig_id"])
        projected = collections.defaultdict(set)
        for t, mentions in r["entities"].items():
            if t in to7:
                projected[to7[t]].update(mentions or ())
        assert {t: projected[t] for t in SEVEN} == {t: set(d["entities"][t] or ()) for t in SEVEN}, r["id"]


@pytest.mark.parametrize("split,n", [("test", 98), ("valid", 103)])
def test_finben_ner_matches_the_official_answers(split, n):
    path = os.path.join(DATA, "flare_ner_finben", f"{split}.jsonl")
    examples = ner.load_examples(path)
    assert len(examples) == n and ner.entity_types(examples) == ["LOC", "ORG", "PER"]
    with open(path) as f:
        raw = [json.loads(line) for line in f]
    for ex, row in zip(examples, raw):  # the gold "name, TYPE" lines, deduplicated, are exactly our entities
        answer = {tuple(line.rsplit(", ", 1)) for line in row["answer"].split("\n") if line}
        ours = {(m, t) for t, ms in ex["entities"].items() for m in ms or ()}
        assert (ex["id"], ex["text"], ours) == (row["id"], row["text"], answer)


def test_finer_ord_csv_equals_sentence_jsonl():
    csv_ex = ner.load_examples(os.path.join(DATA, "finer_ord", "val.csv"))
    jsonl_ex = ner.load_examples(os.path.join(DATA, "finer_ord", "val_sentences.jsonl"))
    assert csv_ex == jsonl_ex and len(csv_ex) == 402 and ner.entity_types(csv_ex) == ["LOC", "ORG", "PER"]
    with open(os.path.join(DATA, "finer_ord", "val_sentences.jsonl")) as f:  # PROVENANCE.md: B- tags + orphan I-
        spans = collections.Counter(s[0] for line in f for s in ner.bio_spans(json.loads(line)["ner_tags"]))
    assert spans == {"PER": 138, "LOC": 193, "ORG": 278}
    first = {ex["id"]: ex for ex in csv_ex}["9-2"]  # "Tue , Oct 20 , 2015 , 03:57 BST - UK" with UK as B-ORG
    assert first["entities"] == {"LOC": None, "ORG": ["UK"], "PER": None}


def test_bio_spans_orphans_adjacent_and_type_switch():
    tags = ["I-ORG", "I-ORG", "O", "B-PER", "B-PER", "I-PER", "I-LOC", "B-LOC", "I-ORG"]
    assert ner.bio_spans(tags) == [("ORG", 0, 2), ("PER", 3, 4), ("PER", 4, 6), ("LOC", 6, 7), ("LOC", 7, 8),
                                   ("ORG", 8, 9)]


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


GOOD = '{"id": "a", "text": "Apple sued Google", "entities": {"Company": ["Apple", "Google"], "Date": null}}\n'


@pytest.mark.parametrize("name,text,message", [
    ("bad.jsonl", GOOD + "\n" + '{"id": "b", "text": oops}\n', r"bad.jsonl:3: malformed JSON"),
    ("notext.jsonl", GOOD + '{"id": "b", "entities": {}}\n', r"notext.jsonl:2: no 'text' field"),
    ("list.jsonl", GOOD + '{"id": "b", "text": "x", "entities": ["Apple"]}\n', r"list.jsonl:2: 'entities' must be"),
    ("value.jsonl", '{"id": "b", "text": "x", "entities": {"Company": "Apple"}}\n',
     r"value.jsonl:1: entities\['Company'\]"),
    ("noent.jsonl", '{"id": "b", "text": "x"}\n', r"noent.jsonl:1: no 'entities' field"),
    ("dup.jsonl", GOOD + GOOD, r"dup.jsonl:2: duplicate id 'a'"),
    ("empty.jsonl", "", r"empty.jsonl: no examples"),
    ("blank.jsonl", "\n  \n", r"blank.jsonl: no examples"),
    ("array.jsonl", "[1, 2]\n", r"array.jsonl:1: expected a JSON object"),
    ("finben.jsonl", '{"id": "t", "text": "a b", "tokens": ["a", "b"], "label": ["B-PER"]}\n',
     r"finben.jsonl:1: 2 tokens but 1 tags"),
    ("finben2.jsonl", '{"id": "t", "text": "a", "tokens": ["a"], "label": ["PER"]}\n', r"finben2.jsonl:1: tag 'PER'"),
    ("finer.csv", "gold_label,gold_token,doc_idx,sent_idx\n0,Hi,1,0\n9,there,1,0\n", r"finer.csv:3: gold_label '9'"),
    ("fire.json", '[{"tokens": ["a"], "entities": [{"type": "X", "start": 0, "end": 2}]}]',
     r"fire.json: instance 0: bad entity"),
    ("fire2.json", '[{"tokens": ["a"],\n "entities": [}]', r"fire2.json:2: malformed JSON"),
])
def test_load_errors_name_file_and_line(tmp_path, name, text, message):
    with pytest.raises(UserError, match=message):
        ner.load_examples(write(tmp_path, name, text))


def test_unknown_format_and_explicit_format(tmp_path):
    path = write(tmp_path, "x.txt", GOOD)
    with pytest.raises(UserError, match="unknown format 'conll'"):
        ner.load_examples(path, format="conll")
    assert ner.load_examples(path, format="canonical")[0]["entities"]["Company"] == ["Apple", "Google"]


def test_missing_mentions_warn_with_a_count_not_an_error(tmp_path):
    rows = [{"id": str(i), "text": "Apple  sued\u00a0Google", "entities": {"Company": ["Apple sued Google", m]}}
            for i, m in enumerate(["Microsoft", "Apple", "IBM"])]
    path = write(tmp_path, "w.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    with pytest.warns(UserWarning, match=r"2 of 6 gold mentions do not occur in their text \(first: id 0, Company "
                                         r"'Microsoft'\)"):
        assert len(ner.load_examples(path)) == 3


def test_entity_types_come_from_the_data_in_first_seen_order():
    examples = [{"entities": {"Money": None, "Date": ["x"]}}, {"entities": {"Company": [], "Date": None}}]
    assert ner.entity_types(examples) == ["Money", "Date", "Company"]


def test_triple_and_prompt():
    ex = {"id": "1", "text": "Apple and Apple Inc. paid $5",
          "entities": {"Company": ["Apple", "Apple Inc.", "Apple"], "Money": ["$5"], "Date": None}}
    instruction, text, output = fire.to_triple(ex, ["Company", "Date", "Money", "Person"])
    assert text == ex["text"]
    assert all(t in instruction for t in ["Company", "Date", "Money", "Person", "JSON"])
    assert output == '{"Company": ["Apple", "Apple Inc."], "Date": [], "Money": ["$5"], "Person": []}'
    assert fire.parse_completion(output) == json.loads(output)
    messages = fire.prompt_messages(instruction, text)
    assert [m["role"] for m in messages] == ["user"]
    assert messages[0]["content"].startswith(instruction) and messages[0]["content"].endswith(text)


ANSWER = '{"Company": ["Apple"], "Date": null, "Money": "$5"}'
PARSED = {"Company": ["Apple"], "Date": [], "Money": ["$5"]}


@pytest.mark.parametrize("completion,expected", [
    (ANSWER, PARSED),
    ("<think>maybe {\"Company\": [\"X\"]}</think>\n\n" + ANSWER, PARSED),  # closed think block with a draft inside
    ("\nreasoning {\"Company\": [\"X\"]} ...</think>\n\n" + ANSWER, PARSED),  # leading unmatched (prompt opened it)
    ("</think>\n\n" + ANSWER + "<think>more</think>", PARSED),
    ("<think>never closed " + ANSWER, None),  # reasoning cut off: no answer
    ("Here you go:\n```json\n" + ANSWER + "\n```\nDone.", PARSED),
    ("```\n" + ANSWER + "\n```", PARSED),
    ("```json\n" + ANSWER, PARSED),  # unclosed fence
    ("```json\nnot json\n```\n" + ANSWER, PARSED),  # empty fence: fall back to the whole text
    (ANSWER + ' and also {"Company": ["Y"]}', PARSED),  # first object wins, trailing text ignored
    ('Format {type: [...]} then ' + ANSWER, PARSED),  # invalid brace text is skipped
    ('{"Company": ["Apple", "Goo', None),  # truncated
    ("{'Company': ['Apple']}", None),  # Python literal: strict JSON only, no repair
    ('{"Company": ["Apple", 3, null, {"x": 1}], "Date": 7}', {"Company": ["Apple"], "Date": []}),
    ("", None),
    ("no json here", None),
    (None, None),
])
def test_parse_completion(completion, expected):
    assert fire.parse_completion(completion) == expected
