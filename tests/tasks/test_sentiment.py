"""fpb and fiqasa: PIXIU's Classification parse and metrics on hand-built cases, baselines derived by hand, and
the loaders against the counts in the datasets' PROVENANCE.md."""

import collections
import json

import numpy as np
import pytest
from sklearn.metrics import f1_score

from jaxfin import tasks
from jaxfin.tasks import sentiment


@pytest.fixture(scope="module")
def fpb():
    return tasks.get("fpb")


@pytest.fixture(scope="module")
def fiqasa():
    return tasks.get("fiqasa")


def test_parse_first_choice_in_stored_order(fpb, fiqasa):
    # Two labels in one answer: the first of the dataset's choices wins, not the first in the text.
    assert fpb.parse("positive, or maybe negative") == "negative"  # fpb label order: negative, positive, neutral
    assert fpb.parse("neutral, not positive") == "positive"
    assert fiqasa.parse("Negative rather than Positive") == "positive"  # fiqasa: positive, negative, neutral
    assert fiqasa.parse("Neutral, or Negative") == "negative"
    assert fpb.parse("  The sentiment is NEUTRAL.\n") == "neutral"  # stripped, lower-cased, substring
    assert fiqasa.parse("Neutral") == "neutral"
    assert fpb.parse("") is None and fpb.parse("bullish") is None  # PIXIU's "missing"
    # reasoning is dropped first: a label inside <think> does not count
    assert fpb.parse("<think>positive? negative?</think>\nneutral") == "neutral"
    assert fpb.parse("weighing it up ... </think>\n\nnegative") == "negative"  # the template opened the block
    assert fpb.parse("<think>positive, cut off") is None


def test_metrics_hand_derived():
    # gold  pos pos neg neu ; predicted pos missing neu neu
    m = sentiment.classification_metrics(["positive", "positive", "negative", "neutral"],
                                         ["positive", None, "neutral", "neutral"], sentiment.FPB_CHOICES)
    # per label F1: positive 2/3 (P 1, R 1/2), negative 0, neutral 2/3 (P 1/2, R 1); supports 2, 1, 1
    assert m["primary"] == "f1"
    assert m["acc"] == pytest.approx(0.5, abs=1e-12)
    assert m["f1"] == pytest.approx((2 / 3 * 2 + 0 + 2 / 3 * 1) / 4, abs=1e-12)  # 0.5
    assert m["macro_f1"] == pytest.approx(4 / 9, abs=1e-12)
    assert m["missing_rate"] == pytest.approx(0.25, abs=1e-12)
    # MCC with "missing" as its own class: (c*s - sum p_k t_k) / sqrt((s^2 - sum p_k^2)(s^2 - sum t_k^2))
    # c = 2, s = 4, t = (pos 2, neg 1, neu 1), p = (pos 1, neu 2, missing 1): (8 - 4) / sqrt(10 * 10) = 0.4
    assert m["mcc"] == pytest.approx(0.4, abs=1e-12)
    assert m["confusion"]["rows"] == ["negative", "positive", "neutral"]
    assert m["confusion"]["counts"][1] == [0, 1, 0, 1]  # gold positive -> positive 1, missing 1
    assert m["per_label_f1"]["negative"] == 0.0


def test_missing_only_costs_recall():
    # "missing" is not in `labels`: it is never a false positive of any class, so precision stays 1 here
    m = sentiment.classification_metrics(["positive", "negative"], ["positive", None], sentiment.FPB_CHOICES)
    # positive F1 1, negative F1 0 (recall 0), weights 1/2 each
    assert m["f1"] == pytest.approx(0.5, abs=1e-12)
    assert m["macro_f1"] == pytest.approx(0.5, abs=1e-12)


def test_fast_f1_equals_sklearn():
    rng = np.random.default_rng(1)
    choices = sentiment.FPB_CHOICES
    for trial in range(50):
        n = int(rng.integers(1, 40))
        gold_N = rng.integers(0, 2 if trial % 3 == 0 else 3, n)  # some trials lack a gold label altogether
        pred_N = rng.integers(0, 4, n)  # 3 = missing
        golds = [choices[i] for i in gold_N]
        preds = [choices[i] if i < 3 else sentiment.MISSING for i in pred_N]
        labels = sorted(set(golds))
        weighted, macro = sentiment._f1_from_codes(gold_N, pred_N, 3)
        assert weighted == pytest.approx(f1_score(golds, preds, average="weighted", labels=labels), abs=1e-12)
        assert macro == pytest.approx(f1_score(golds, preds, average="macro", labels=labels), abs=1e-12)


def test_fpb_majority_baseline_by_hand(fpb):
    valid = fpb.read(fpb.files["valid"])
    m = fpb.score(valid, [fpb.parse("neutral")] * len(valid))
    # 452 neutral, 226 positive, 96 negative of 774; always "neutral": F1(neutral) = 2*452 / (774 + 452)
    f1_neutral = 904 / 1226
    assert m["acc"] == pytest.approx(452 / 774, abs=1e-12)
    assert m["f1"] == pytest.approx(f1_neutral * 452 / 774, abs=1e-12)  # 0.43060
    assert m["macro_f1"] == pytest.approx(f1_neutral / 3, abs=1e-12)  # 0.24579
    assert m["mcc"] == 0.0  # one predicted class: scikit-learn's zero-denominator value
    assert m["missing_rate"] == 0.0
    lo, hi = m["f1_ci95"]
    assert lo < m["f1"] < hi and hi - lo > 0.02
    assert fpb.score(valid, [fpb.parse("neutral")] * len(valid))["f1_ci95"] == [lo, hi]  # seed 0: reproducible


def test_fiqasa_majority_baseline_by_hand(fiqasa):
    test = fiqasa.read(fiqasa.files["test"])
    m = fiqasa.score(test, [fiqasa.parse("Positive")] * len(test))
    # 141 Positive, 76 Negative, 18 Neutral of 235: F1(positive) = 282 / 376 = 0.75
    assert m["acc"] == pytest.approx(141 / 235, abs=1e-12)
    assert m["f1"] == pytest.approx(0.75 * 141 / 235, abs=1e-12)  # 0.45
    assert m["macro_f1"] == pytest.approx(0.25, abs=1e-12)
    assert m["mcc"] == 0.0


@pytest.mark.parametrize("name", ["fpb", "fiqasa"])
def test_gold_answers_score_one(name):
    task = tasks.get(name)
    for split in ("valid", "test"):
        examples = task.read(task.files[split])
        m = task.score(examples, [task.parse(task.target(ex)) for ex in examples])
        assert (m["acc"], m["f1"], m["macro_f1"], m["mcc"], m["missing_rate"]) == (1.0, 1.0, 1.0, 1.0, 0.0)
        assert m["f1_ci95"] == [1.0, 1.0]
        assert task.details(examples[0], task.parse(task.target(examples[0])))["correct"] is True


def test_fpb_loader_counts_and_prompts(fpb):
    valid = fpb.read(fpb.files["valid"])
    assert fpb.files["test"] == fpb.files["valid"]
    assert len(valid) == 774
    assert collections.Counter(ex["label"] for ex in valid) == {"neutral": 452, "positive": 226, "negative": 96}
    full = fpb.read(fpb.files["train"].split("#")[0])
    assert len(full) == 4846
    assert collections.Counter(ex["label"] for ex in full) == {"neutral": 2879, "positive": 1363, "negative": 604}
    train = fpb.read(fpb.files["train"])
    # verbatim match of the csv's `sentence` with FinBen valid's `text`: all 774 are found, one of them twice
    valid_texts = {ex["text"] for ex in valid}
    assert valid_texts <= {ex["text"] for ex in full}
    assert len(train) == 4071 == 4846 - 775
    assert collections.Counter(ex["label"] for ex in train) == {"neutral": 2426, "positive": 1137, "negative": 508}
    assert not valid_texts & {ex["text"] for ex in train}
    assert len({ex["id"] for ex in train}) == len(train)
    # train prompts use FinBen's own template: every valid query is that template around its sentence
    assert all(ex["query"] == f"{sentiment.FPB_INSTRUCTION}\n{ex['text']}" for ex in valid + train)
    assert fpb.messages(valid[0]) == [{"role": "user", "content": valid[0]["query"]}]
    assert fpb.target(valid[0]) == valid[0]["label"] == "neutral"


def test_fiqasa_loader_counts(fiqasa):
    expected = {"train": (750, 457, 235, 58), "valid": (188, 121, 52, 15), "test": (235, 141, 76, 18)}
    for split, (n, pos, neg, neu) in expected.items():
        examples = fiqasa.read(fiqasa.files[split])
        assert len(examples) == n
        assert collections.Counter(ex["label"] for ex in examples) == {"Positive": pos, "Negative": neg, "Neutral": neu}
        assert all(ex["query"].endswith(f"\nText: {ex['text']}\nAnswer:") for ex in examples)
    ex = fiqasa.read(fiqasa.files["test"])[0]
    assert fiqasa.target(ex) in ("Positive", "Negative", "Neutral")  # FinBen's spelling
    assert fiqasa.messages(ex)[0]["content"] == ex["query"]


def test_report_shows_confusion(fpb):
    m = sentiment.classification_metrics(["positive", "negative"], ["positive", None], sentiment.FPB_CHOICES)
    text = "\n".join(fpb.report(m, []))
    assert "| gold \\ predicted | negative | positive | neutral | missing | F1 |" in text
    assert "| negative | 0 | 0 | 0 | 1 | 0.0000 |" in text


def _write(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def test_errors_name_file_and_line(tmp_path, fiqasa):
    good = json.dumps({"id": "a", "text": "t", "label": "Positive", "query": "q"})
    bullish = json.dumps({"id": "b", "text": "t", "label": "Bullish", "query": "q"})
    bad_label = _write(tmp_path / "l.jsonl", [good, bullish])
    with pytest.raises(ValueError, match=r"l\.jsonl:2: label 'Bullish'"):
        fiqasa.read(bad_label)
    bad_json = _write(tmp_path / "j.jsonl", [good, "", "{oops"])
    with pytest.raises(ValueError, match=r"j\.jsonl:3: malformed JSON"):
        fiqasa.read(bad_json)
    no_key = _write(tmp_path / "k.jsonl", [json.dumps({"id": "a", "text": "t", "label": "Positive"})])
    with pytest.raises(ValueError, match=r"k\.jsonl:1: missing key 'query'"):
        fiqasa.read(no_key)
    dup = _write(tmp_path / "d.jsonl", [good, good])
    with pytest.raises(ValueError, match=r"d\.jsonl:2: duplicate id 'a'"):
        fiqasa.read(dup)
    csv_file = _write(tmp_path / "s.csv", ["sentence,label", '"Profit rose , a lot",positive', "Flat,sideways"])
    with pytest.raises(ValueError, match=r"s\.csv:3: label 'sideways'"):
        sentiment.read_fpb(csv_file)
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        fiqasa.read(str(tmp_path / "missing.jsonl"))
    with pytest.raises(ValueError, match="2 examples but 1 predictions"):
        fiqasa.score([{"label": "Positive"}] * 2, ["positive"])
    with pytest.raises(ValueError, match="not one of"):
        fiqasa.score([{"label": "Positive"}], ["bullish"])


def test_registry():
    assert set(tasks.REGISTRY) >= {"fpb", "fiqasa", "headlines", "finben_ner", "finer_ord"}
    with pytest.raises(ValueError, match="unknown task 'fbp'"):
        tasks.get("fbp")
