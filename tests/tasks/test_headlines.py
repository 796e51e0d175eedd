"""headlines: PIXIU's exact-"Yes" parse, the per-question-type weighted F1 average on hand-built cases, and the
headline-level 80/20 split of FinBen's valid file."""

import collections
import json

import numpy as np
import pytest
from sklearn.metrics import f1_score

from jaxfin import tasks
from jaxfin.tasks import headlines as hl


@pytest.fixture(scope="module")
def task():
    return tasks.get("headlines")


@pytest.fixture(scope="module")
def full(task):
    return task.read(task.files["train"].split("#")[0])


def test_parse_is_exact_yes(task):
    assert task.parse("Yes") == "Yes"
    assert task.parse("  Yes\n") == "Yes"  # stripped
    assert task.parse("Yes.") == "No"  # PIXIU: anything but exactly "Yes" is no
    assert task.parse("yes") == "No"
    assert task.parse("Yes, it does.") == "No"
    assert task.parse("") == "No"
    assert task.parse("<think>No, wait.</think>\nYes") == "Yes"
    assert task.parse("hmm...</think>\n\nYes") == "Yes"
    assert task.parse("<think>Yes") == "No"  # reasoning cut off: no answer


def _ex(qtype, label):
    return {"question_type": qtype, "label": label}


def test_avg_f1_hand_derived(task):
    # type A: gold Y Y N N, predicted Y N N N -> F1(Yes) = 2/3 (support 2), F1(No) = 4/5 (support 2) -> 11/15
    # type B: gold N N, predicted Y N -> F1(Yes) = 0 with support 0, F1(No) = 2/3 (support 2) -> 2/3
    examples = [_ex("A", "Yes"), _ex("A", "Yes"), _ex("A", "No"), _ex("A", "No"), _ex("B", "No"), _ex("B", "No")]
    preds = ["Yes", "No", "No", "No", "Yes", "No"]
    m = task.score(examples, preds)
    assert m["primary"] == "avg_f1"
    assert m["per_type_f1"] == pytest.approx({"A": 11 / 15, "B": 2 / 3}, abs=1e-12)
    assert m["avg_f1"] == pytest.approx(0.7, abs=1e-12)  # (11/15 + 10/15) / 2
    assert m["acc"] == pytest.approx(4 / 6, abs=1e-12)
    assert m["per_type_yes"] == {"A": [2, 1, 4], "B": [0, 1, 2]}


def test_fast_avg_f1_equals_sklearn():
    rng = np.random.default_rng(0)
    for _ in range(50):
        n = int(rng.integers(1, 60))
        type_N = rng.integers(0, 4, n)
        gold_N, pred_N = rng.integers(0, 2, n), rng.integers(0, 2, n)
        present = sorted(set(type_N.tolist()))
        want = np.mean([f1_score(gold_N[type_N == t], pred_N[type_N == t], average="weighted", labels=[0, 1],
                                 zero_division=0) for t in present])
        assert hl._avg_f1_fast(type_N, gold_N, pred_N, 4) == pytest.approx(want, abs=1e-12)


def test_loader_counts(full):
    assert len(full) == 10_260 and len({ex["id"] for ex in full}) == 10_260
    assert len(full) // 9 == 1_140
    yes = collections.Counter(ex["question_type"] for ex in full if ex["label"] == "Yes")
    assert yes == {"Price or Not": 980, "Direction Up": 463, "Direction Down": 445, "Direction Constant": 57,
                   "PastPrice": 945, "FuturePrice": 35, "PastNews": 155, "FutureNews": 7, "Asset Comparision": 241}
    assert len({ex["headline"] for ex in full}) == 1_124
    for i in range(0, len(full), 9):  # nine questions, one per type, on one headline
        block = full[i:i + 9]
        assert [ex["question_type"] for ex in block] == list(hl.QUESTION_TYPES)
        assert len({ex["headline"] for ex in block}) == 1


def test_split_by_headline(task, full):
    train, test = task.read(task.files["train"]), task.read(task.files["test"])
    assert task.files["valid"] == task.files["test"]
    assert (len(train), len(test)) == (8_235, 2_025)  # 915 and 225 blocks of nine
    assert sorted(ex["id"] for ex in train + test) == sorted(ex["id"] for ex in full)
    train_heads, test_heads = {ex["headline"].strip() for ex in train}, {ex["headline"].strip() for ex in test}
    assert not train_heads & test_heads  # duplicated headlines never straddle the split
    assert len(test_heads) == round(0.2 * 1_124) == 225
    assert all(n == 9 for n in collections.Counter(ex["headline"] for ex in test).values())
    assert [ex["id"] for ex in task.read(task.files["test"])] == [ex["id"] for ex in test]  # fixed seed
    # the unit is the stripped headline string: "a " and "a" are one headline, so 4 distinct -> round(0.8) = 1
    picked = hl.split_headlines(["a ", "a", "b", "c", "d"])
    assert len(picked) == 1 and picked <= {"a", "b", "c", "d"}
    assert picked == hl.split_headlines(["d", "c", "b", "a"])  # independent of the file's order
    ex = test[0]
    assert task.messages(ex) == [{"role": "user", "content": ex["query"]}]
    assert ex["query"].endswith(f"\nText: {ex['headline']}\nAnswer:") and ex["question_type"] in ex["query"]
    assert task.target(ex) in ("Yes", "No")


def test_gold_and_majority_baseline(task):
    test = task.read(task.files["test"])
    gold = task.score(test, [task.parse(task.target(ex)) for ex in test])
    assert gold["avg_f1"] == 1.0 and gold["avg_f1_ci95"] == [1.0, 1.0] and gold["acc"] == 1.0
    m = task.score(test, ["No"] * len(test))
    # always "No": per type only F1(No) = 2(n - y) / (2n - y) counts, weighted by (n - y) / n
    per_type = {}
    for qtype in hl.QUESTION_TYPES:
        n = sum(ex["question_type"] == qtype for ex in test)
        y = sum(ex["question_type"] == qtype and ex["label"] == "Yes" for ex in test)
        per_type[qtype] = (n - y) / n * 2 * (n - y) / (2 * n - y)
    assert m["per_type_f1"] == pytest.approx(per_type, abs=1e-12)
    assert m["avg_f1"] == pytest.approx(sum(per_type.values()) / 9, abs=1e-12)
    lo, hi = m["avg_f1_ci95"]
    assert lo < m["avg_f1"] < hi
    text = "\n".join(task.report(m, []))
    assert "| Asset Comparision |" in text and "avg" not in text.split("\n")[0]


def _block(headline, answers=("No",) * 9, types=hl.QUESTION_TYPES):
    return [json.dumps({"id": f"h{i}", "conversations": [
        {"from": "human", "value": f"Is there a {t} about gold?\nText: {headline}\nAnswer:"},
        {"from": "agent", "value": a}]}) for i, (t, a) in enumerate(zip(types, answers))]


def test_errors_name_file_and_line(tmp_path, task):
    path = tmp_path / "h.jsonl"
    path.write_text("\n".join(_block("gold up")) + "\n")
    assert len(task.read(str(path))) == 9
    swapped = list(hl.QUESTION_TYPES)
    swapped[2], swapped[3] = swapped[3], swapped[2]
    path.write_text("\n".join(_block("gold up", types=swapped)) + "\n")
    with pytest.raises(ValueError, match=r"h\.jsonl:3: question does not name 'Direction Down'"):
        task.read(str(path))
    path.write_text("\n".join(_block("gold up", answers=("No",) * 4 + ("Maybe",) + ("No",) * 4)) + "\n")
    with pytest.raises(ValueError, match=r"h\.jsonl:5: answer 'Maybe'"):
        task.read(str(path))
    path.write_text("\n".join(_block("gold up")[:8]) + "\n")
    with pytest.raises(ValueError, match="not a whole number of blocks"):
        task.read(str(path))
    lines = _block("gold up")
    lines[6] = lines[6].replace("gold up", "gold down")
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"h\.jsonl:7: headline differs"):
        task.read(str(path))
    with pytest.raises(ValueError, match="unknown selector 'dev'"):
        task.read(str(path) + "#dev")
    with pytest.raises(ValueError, match="not Yes or No"):
        task.score([_ex("A", "Yes")], ["yes"])
