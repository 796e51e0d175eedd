"""finer_ord: the "name, TYPE" answer format, its token-level parser on hand-built sentences, seqeval entity F1, and
the loaders (derived sentence JSONL = original token CSV) against PROVENANCE.md."""

import collections
import json

import pytest
from seqeval.metrics.sequence_labeling import get_entities

from jaxfin import tasks
from jaxfin.tasks import finer_ord as fo


@pytest.fixture(scope="module")
def task():
    return tasks.get("finer_ord")


def test_answer_format():
    tokens = ["Apple", "Inc", "hired", "Tim", "in", "New", "York", "."]
    assert fo.answer(tokens, ["B-ORG", "I-ORG", "O", "B-PER", "O", "B-LOC", "I-LOC", "O"]) == \
        "Apple Inc, ORG\nTim, PER\nNew York, LOC"
    assert fo.answer(tokens, ["O"] * 8) == "None"
    assert fo.answer(tokens, ["I-ORG", "I-ORG"] + ["O"] * 6) == "Apple Inc, ORG"  # an orphan I- starts an entity


def test_parse():
    assert fo.parse("Apple Inc, ORG\n Tim , PER \nNone\n") == [["Apple Inc", "ORG"], ["Tim", "PER"]]
    assert fo.parse("Washington , D.C., LOC") == [["Washington , D.C.", "LOC"]]  # split at the last ", "
    assert fo.parse("") == [] and fo.parse("None") == []
    assert fo.parse("<think>Apple, ORG</think>\nTim, PER") == [["Tim", "PER"]]


def test_tag_tokens_order_duplicates_and_nesting():
    tokens = "Bank of America and the Bank said Bank".split()
    # lines in order of appearance: the short name takes the next free "Bank", not the one inside the longer name
    assert fo.tag_tokens([["Bank of America", "ORG"], ["Bank", "ORG"], ["Bank", "ORG"]], tokens) == \
        ["B-ORG", "I-ORG", "I-ORG", "O", "O", "B-ORG", "O", "B-ORG"]
    # out of order: "Bank" takes token 0 first, and the longer name then finds no free occurrence
    assert fo.tag_tokens([["Bank", "ORG"], ["Bank of America", "ORG"]], tokens) == ["B-ORG"] + ["O"] * 7
    # a line for a mention before the cursor still finds its free occurrence
    assert fo.tag_tokens([["said", "X"], ["the", "Y"]], tokens) == ["O"] * 4 + ["B-Y", "O", "B-X", "O"]
    assert fo.tag_tokens([["America and the", "ORG"], ["Nope", "PER"]], tokens) == \
        ["O", "O", "B-ORG", "I-ORG", "I-ORG", "O", "O", "O"]
    assert fo.tag_tokens([], tokens) == ["O"] * 8


def test_score_hand_derived(task):
    ex = {"tokens": "Apple hired Tim in Paris".split(), "label": ["B-ORG", "O", "B-PER", "O", "B-LOC"]}
    # Apple right, Tim typed wrong (FP + FN), Paris missed, an invented type (FP): TP 1, FP 2, FN 2
    m = task.score([ex], [task.parse("Apple, ORG\nTim, LOC\nhired, MONEY")])
    assert (m["precision"], m["recall"]) == pytest.approx((1 / 3, 1 / 3), abs=1e-12)
    assert m["entity_f1"] == pytest.approx(2 / 6, abs=1e-12)
    assert m["per_type"]["MONEY"] == {"tp": 0, "fp": 1, "fn": 0, "f1": 0.0}
    assert task.score([ex], [task.parse("")])["entity_f1"] == 0.0
    assert task.details(ex, task.parse("Apple, ORG\nTim, LOC")) == \
        {"false_positives": ["Tim, LOC"], "false_negatives": ["Tim, PER", "Paris, LOC"]}


def test_gold_answers(task):
    # A name that occurs both tagged and untagged in a sentence can land on the untagged one: 1 such mention in
    # train ("Rocket Fuel"), 2 in test ("Bahrain" x 8, one untagged), none in valid.
    expected = {"train": (3_830, 1, 1), "valid": (609, 0, 0), "test": (1_137, 2, 2)}
    for split, (tp, fp, fn) in expected.items():
        examples = task.read(task.files[split])
        m = task.score(examples, [task.parse(task.target(ex)) for ex in examples])
        assert [sum(c[k] for c in m["per_type"].values()) for k in ("tp", "fp", "fn")] == [tp, fp, fn], split
        assert m["entity_f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn), abs=1e-12)


def test_loader_counts_and_csv_agreement(task):
    expected = {"train": (3_262, 135, 80_531, {"PER": 826, "LOC": 966, "ORG": 2_039}),
                "valid": (402, 24, 10_233, {"PER": 138, "LOC": 193, "ORG": 278}),
                "test": (1_075, 42, 25_957, {"PER": 286, "LOC": 300, "ORG": 553})}
    for split, (n, docs, n_tokens, entities) in expected.items():
        examples = task.read(task.files[split])
        assert len(examples) == n and len({ex["doc_idx"] for ex in examples}) == docs
        assert sum(len(ex["tokens"]) for ex in examples) == n_tokens
        assert collections.Counter(e[0] for ex in examples for e in get_entities(ex["label"])) == entities
        assert task.read(task.files[split].replace("_sentences.jsonl", ".csv")) == examples
    ex = task.read(task.files["valid"])[2]
    assert ex["tokens"][-1] == "UK" and task.target(ex) == "UK, ORG"
    prompt = task.messages(ex)[0]["content"]
    assert prompt.startswith(fo.INSTRUCTION) and prompt.endswith(f"\nText: {ex['text']}\nAnswer:")
    assert "| ORG |" in "\n".join(task.report(task.score([ex], [task.parse("UK, ORG")]), []))


def test_errors_name_file_and_line(tmp_path, task):
    csv_path = tmp_path / "t.csv"
    csv_path.write_text("gold_label,gold_token,doc_idx,sent_idx\n0,Hello,1,0\n9,there,1,0\n")
    with pytest.raises(ValueError, match=r"t\.csv:3: gold_label '9' is not an integer 0-6"):
        task.read(str(csv_path))
    csv_path.write_text("gold_label,gold_token,doc_idx,sent_idx\n0,Hello,1,0\nB,there,1,0\n")
    with pytest.raises(ValueError, match=r"t\.csv:3: gold_label 'B' is not an integer 0-6"):
        task.read(str(csv_path))
    csv_path.write_text("gold_label,gold_token,doc_idx,sent_idx\n0,Hello,1,0\n0,there,x,0\n")
    with pytest.raises(ValueError, match=r"t\.csv:3: doc_idx and sent_idx should be integers"):
        task.read(str(csv_path))
    csv_path.write_text("gold_label,gold_token,doc_idx\n0,Hello,1\n")
    with pytest.raises(ValueError, match=r"t\.csv:1: header lacks column\(s\) sent_idx"):
        task.read(str(csv_path))
    row = {"doc_idx": 1, "sent_idx": 0, "tokens": ["Hi", "UK"], "ner_tags": ["O", "B-ORG"]}
    path = tmp_path / "s.jsonl"
    path.write_text(json.dumps(row) + "\n" + json.dumps({**row, "ner_tags": ["O", "B-MISC"]}) + "\n")
    with pytest.raises(ValueError, match=r"s\.jsonl:2: tag 'B-MISC'"):
        task.read(str(path))
    path.write_text(json.dumps(row) + "\n" + json.dumps({**row, "tokens": ["Hi"]}) + "\n")
    with pytest.raises(ValueError, match=r"s\.jsonl:2: 1 tokens but 2 tags"):
        task.read(str(path))
    path.write_text(json.dumps(row) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(ValueError, match=r"s\.jsonl:2: sentence \(doc_idx, sent_idx\) = \(1, 0\) occurs twice"):
        task.read(str(path))
