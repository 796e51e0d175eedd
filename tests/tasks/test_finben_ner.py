"""finben_ner: PIXIU's process_text labelling with its quirks on hand-built sentences, seqeval entity F1, the gold
answers' known shortfall from 1.0, and the loaders against PROVENANCE.md."""

import collections
import json

import numpy as np
import pytest
from seqeval.metrics import f1_score as seqeval_f1
from seqeval.metrics.sequence_labeling import get_entities

from jaxfin import tasks
from jaxfin.tasks import finben_ner as ner


@pytest.fixture(scope="module")
def task():
    return tasks.get("finben_ner")


def labels(answer, text):
    return ner.leaderboard_labels(ner.parse_lines(answer), text)


def test_parse_lines():
    assert ner.parse_lines("Acme Corp, ORG\nJohn Smith, PER") == [["Acme Corp", "ORG"], ["John Smith", "PER"]]
    assert ner.parse_lines("Smith, Jones, PER") == [["Smith, Jones", "PER"]]  # split at the last ", "
    assert ner.parse_lines("Entities:\nnone found\n, ORG\n") == []  # no ", " or an empty name: nothing
    assert ner.parse_lines("") == []
    assert ner.parse_lines("Acme, ORG ") == [["Acme", "ORG "]]  # not stripped: "ORG " is another type
    assert ner.parse_lines("<think>Acme, ORG</think>\n\nBeta, ORG") == [["Beta", "ORG"]]


def test_every_occurrence_and_later_lines_overwrite():
    text = "The Bank of Ireland and the Bank lend ."
    # "Bank" also occurs inside the longer name: every occurrence is labelled
    assert labels("Bank of Ireland, ORG\nBank, ORG", text) == \
        ["O", "B-ORG", "I-ORG", "I-ORG", "O", "O", "B-ORG", "O", "O"]
    # a later line overwrites: Ireland becomes its own LOC, splitting the ORG
    got = labels("Bank of Ireland, ORG\nIreland, LOC", text)
    assert got == ["O", "B-ORG", "I-ORG", "B-LOC", "O", "O", "O", "O", "O"]
    assert get_entities(got) == [("ORG", 1, 2), ("LOC", 3, 3)]


def test_match_inside_a_word_labels_the_next_word():
    # case-sensitive str.find: "bank" matches inside "Interbank", so the label lands on the next word start
    assert labels("bank, ORG", "Interbank loans from Bank X .") == ["O", "B-ORG", "O", "O", "O", "O"]
    assert labels("Bank, ORG", "Interbank loans from Bank X .") == ["O", "O", "O", "B-ORG", "O", "O"]
    # word starts assume single spaces: with a double space the offsets drift and the label moves right
    assert labels("Corp, ORG", "Acme  Corp said so") == ["O", "O", "B-ORG", "O"]


def test_match_ending_in_last_word_labels_nothing():
    assert labels("Acme Corp, ORG", "Loan to Acme Corp") == ["O"] * 4
    assert labels("Acme, ORG", "Loan to Acme Corp") == ["O", "O", "B-ORG", "O"]
    assert labels("Lender, PER", "Lender") == ["O"]


def test_empty_and_think_completions(task):
    ex = {"text": "Acme Corp lends to John Smith .", "label": ["B-ORG", "I-ORG", "O", "O", "B-PER", "I-PER", "O"]}
    empty = task.score([ex], [task.parse("")])
    assert empty["entity_f1"] == 0.0 and empty["recall"] == 0.0
    m = task.score([ex], [task.parse("<think>John Smith, PER? maybe</think>\nAcme Corp, ORG")])
    assert (m["precision"], m["recall"]) == (1.0, 0.5)
    assert m["entity_f1"] == pytest.approx(2 / 3, abs=1e-12)
    assert m["per_type"] == {"ORG": {"tp": 1, "fp": 0, "fn": 0, "f1": 1.0},
                             "PER": {"tp": 0, "fp": 0, "fn": 1, "f1": 0.0}}
    d = task.details(ex, task.parse("Acme, ORG\nJohn Smith, PER"))
    assert d == {"false_positives": ["Acme, ORG"], "false_negatives": ["Acme Corp, ORG"]}


def test_counts_give_seqeval_f1(task):
    # per-example TP / FP / FN (what the bootstrap resamples) sum to seqeval's own micro F1
    examples = task.read(task.files["valid"])
    rng = np.random.default_rng(0)
    for _ in range(5):
        preds = []
        for ex in examples:
            lines = [ln for ln in ex["answer"].split("\n") if rng.random() < 0.7]
            lines += [f"{w}, {rng.choice(['PER', 'ORG', 'LOC'])}" for w in ex["text"].split() if rng.random() < 0.03]
            preds.append(ner.parse_lines("\n".join(lines)))
        golds = [ex["label"] for ex in examples]
        pred_labels = [ner.leaderboard_labels(p, ex["text"]) for p, ex in zip(preds, examples)]
        m = task.score(examples, preds)
        tp = sum(c["tp"] for c in m["per_type"].values())
        fp = sum(c["fp"] for c in m["per_type"].values())
        fn = sum(c["fn"] for c in m["per_type"].values())
        assert m["entity_f1"] == pytest.approx(seqeval_f1(golds, pred_labels), abs=1e-12)
        assert m["entity_f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn), abs=1e-12)
        lo, hi = m["entity_f1_ci95"]
        assert lo < m["entity_f1"] < hi


def test_gold_answers_fall_short_of_one(task):
    # The leaderboard's labelling loses a few gold mentions (e.g. "LENDER" inside "LENDERS", "Bing Yu" at a
    # sentence end, "Union" / "Bank" found alone): exactly these TP / FP / FN.
    expected = {"valid": (266, 1, 4), "test": (308, 9, 3), "train": (870, 24, 20)}
    for split, (tp, fp, fn) in expected.items():
        examples = task.read(task.files[split])
        m = task.score(examples, [task.parse(task.target(ex)) for ex in examples])
        counts = [sum(c[k] for c in m["per_type"].values()) for k in ("tp", "fp", "fn")]
        assert counts == [tp, fp, fn], split
        assert m["entity_f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn), abs=1e-12)
    # valid 532/537 = 0.990689, test 616/628 = 0.980892


def test_loader_counts(task):
    expected = {"train": (407, 21_540, {"PER": 528, "ORG": 230, "LOC": 132}),
                "valid": (103, 4_351, {"PER": 218, "ORG": 13, "LOC": 39}),
                "test": (98, 7_905, {"PER": 216, "ORG": 56, "LOC": 39})}
    for split, (n, n_tokens, entities) in expected.items():
        examples = task.read(task.files[split])
        assert len(examples) == n
        assert sum(len(ex["label"]) for ex in examples) == n_tokens
        assert collections.Counter(e[0] for ex in examples for e in get_entities(ex["label"])) == entities
    ex = task.read(task.files["test"])[0]
    assert task.messages(ex) == [{"role": "user", "content": ex["query"]}]
    assert ex["query"].endswith(f"Text: {ex['text']}\nAnswer:")
    assert task.target(ex) == ex["answer"] and ", ORG" in ex["answer"]
    text = "\n".join(task.report(task.score([ex], [task.parse(ex["answer"])]), []))
    assert "| ORG |" in text and "Entity F1" in text


def test_errors_name_file_and_line(tmp_path, task):
    row = {"id": "a", "text": "Acme lends", "tokens": ["Acme", "lends"], "label": ["B-ORG", "O"], "answer": "Acme, ORG",
           "query": "q"}
    path = tmp_path / "n.jsonl"
    path.write_text(json.dumps(row) + "\n" + json.dumps({**row, "id": "b", "label": ["B-ORG"]}) + "\n")
    with pytest.raises(ValueError, match=r"n\.jsonl:2: 1 labels for 2 words"):
        task.read(str(path))
    path.write_text(json.dumps({**row, "label": ["B-MISC", "O"]}) + "\n")
    with pytest.raises(ValueError, match=r"n\.jsonl:1: label 'B-MISC'"):
        task.read(str(path))
    path.write_text(json.dumps({**row, "label": "B-ORG O"}) + "\n")
    with pytest.raises(ValueError, match=r"n\.jsonl:1: 'label' should be list"):
        task.read(str(path))
    with pytest.raises(ValueError, match="1 examples but 0 predictions"):
        task.score([row], [])
