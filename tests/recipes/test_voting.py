"""jaxfin.recipes.voting on scripted completions: answer extraction, majority vote, DPO pair selection, stats."""

import re

import pytest

from jaxfin.recipes import voting
from jaxfin.tasks.base import strip_think


LABELS = ("negative", "neutral", "positive")


def task_parse(text):  # a task parser stand-in: the first label word after the reasoning
    m = re.search(r"\b(negative|neutral|positive)\b", strip_think(text), re.I)
    return m.group(1) if m else None


@pytest.mark.parametrize("text, expected", [
    ("<think>Answer: negative</think>\nAnswer: positive", "positive"),       # the think block's answer is ignored
    ("the prompt opened the block... Answer: negative</think>\n\nAnswer: Neutral", "neutral"),  # leading </think>
    ("<think>long reasoning, Answer: negative ... cut off", None),           # unclosed: no answer
    ("Answer: negative\nsecond thoughts\nAnswer: positive", "positive"),      # several: the last
    ("**Answer:** **Positive.**", "positive"),                                # markdown and punctuation
    ("Final answer:   NEUTRAL  ", "neutral"),                                # case and whitespace
    ("answer: $\\boxed{\\text{Negative}}$", "negative"),                      # LaTeX wrappers
    ("Answer: ＰＯＳＩＴＩＶＥ", "positive"),                                  # NFKC (full-width letters)
    ("Answer: positive\nAnswer: bullish", "positive"),                        # unknown label skipped: earlier one
    ("Answer: bullish", None),                                                # unknown label, no fallback
    ("Answer:\npositive", None),                                              # the value is on the Answer line
    ("The sentiment is positive.", None),                                     # no Answer line, no fallback
])
def test_extract_with_labels(text, expected):
    assert voting.extract_answer(text, labels=LABELS) == expected


def test_extract_fallback_and_free_text():
    calls = []

    def fallback(text):
        calls.append(text)
        return task_parse(text)

    text = "<think>hmm</think>The sentiment is Negative overall."
    assert voting.extract_answer(text, labels=LABELS, fallback=fallback) == "negative"
    assert calls == [text]  # the full completion goes to the task's parser
    assert voting.extract_answer("Answer: positive", labels=LABELS, fallback=fallback) == "positive"
    assert len(calls) == 1  # the regex found it: no fallback
    assert voting.extract_answer("Answer: bullish. It is good", labels=LABELS, fallback=lambda t: "Bullish") is None
    assert voting.extract_answer("no answer", labels=["Positive"], fallback=lambda t: "positive!") == "Positive"
    assert voting.extract_answer("<think>never closed", fallback=task_parse) is None
    # without labels: any non-empty value, normalised
    assert voting.extract_answer("Answer:  Up   by 5%. ") == "up by 5%"
    assert voting.extract_answer("Answer: ** **") is None
    # a structured parse becomes canonical JSON, unnormalised
    assert voting.extract_answer("x", fallback=lambda t: {"b": ["Apple"], "a": []}) == '{"a":[],"b":["Apple"]}'
    assert voting.extract_answer("x", labels=LABELS, fallback=lambda t: {"a": 1}) is None


def test_extract_custom_regex():
    text = "Label => Positive\nLabel => negative"
    assert voting.extract_answer(text, regex=r"Label => (\w+)", labels=LABELS) == "negative"        # group 1
    assert voting.extract_answer(text, regex=r"=> (?P<answer>\w+)\n", labels=LABELS) == "positive"  # named group
    assert voting.extract_answer(text, regex=re.compile(r"(?m)(?P<x>L)abel => (?P<answer>\w+)$")) == "negative"
    assert voting.extract_answer("Positive", regex=r"positive|negative") is None  # case-sensitive as given
    assert voting.extract_answer("Positive", regex=r"(?i)positive|negative") == "positive"  # whole match
    with pytest.raises(ValueError, match="normalise alike"):
        voting.extract_answer("Answer: x", labels=["Positive", "positive."])


@pytest.mark.parametrize("extracted, min_agreement, expected", [
    (["a", "a", "b", None], 0.5, ("a", 0.5)),             # nulls count in the denominator; 2/4 meets 0.5
    (["a", "a", "b", None], 0.51, (None, 0.5)),           # just below
    (["b", "a", "a", "b"], 0.0, ("b", 0.5)),              # tie: the answer seen first wins
    (["a", "b", "b", "a"], 0.0, ("a", 0.5)),
    ([None, "b", "a"], 0.0, ("b", 1 / 3)),
    (["a"] * 7 + ["b"] * 3, 0.7, ("a", 0.7)),            # 7/10 meets 0.7 (no float slip: 0.7 * 10 > 7)
    (["a"] * 3 + ["b"] * 2, 0.6, ("a", 0.6)),
    (["a", "a", "b"], 2 / 3, ("a", 2 / 3)),
    (["a"] * 5, 1.0, ("a", 1.0)),
    (["a"] * 4 + [None], 1.0, (None, 0.8)),
    ([None, None], 0.0, (None, 0.0)),                     # nothing parsed
    ([], 0.0, (None, 0.0)),
])
def test_vote(extracted, min_agreement, expected):
    assert voting.vote(extracted, min_agreement=min_agreement) == expected


def test_vote_rejects_bad_threshold():
    with pytest.raises(ValueError, match="min_agreement"):
        voting.vote(["a"], min_agreement=1.5)


def sample(completion, finish="stop", **kw):
    return {"completion": completion, "finish_reason": finish, **kw}


def test_classify_samples_preference_order():
    samples = [
        sample("Answer: negative"),                                  # 0 minority
        sample("<think>" + "x" * 50, finish="length"),               # 1 length
        sample("<think>short</think>Answer: positive"),              # 2 majority, shortest
        sample("I am not sure."),                                    # 3 unparseable
        sample("<think>a bit longer</think>Answer: positive"),       # 4 majority
        sample("<think>other</think>Answer: positive"),              # 5 majority, as short: the tie goes to 2
        sample("Answer: positive", finish="length"),                 # 6 length even though it parses
    ]
    extracted = [voting.extract_answer(s["completion"], labels=LABELS) for s in samples]
    assert extracted == ["negative", None, "positive", None, "positive", "positive", "positive"]
    answer, agreement = voting.vote(extracted, min_agreement=0.5)
    assert (answer, agreement) == ("positive", 4 / 7)
    out = voting.classify_samples(samples, extracted, answer)
    assert out == {"classes": ["minority", "length", "majority", "unparseable", "majority", "majority", "length"],
                   "chosen": 2, "rejected": 1, "rejected_reason": "length"}
    # without over-long samples the unparseable one, then the minority one
    keep = [0, 2, 3, 4]
    out = voting.classify_samples([samples[i] for i in keep], [extracted[i] for i in keep], answer)
    assert (out["chosen"], out["rejected"], out["rejected_reason"]) == (1, 2, "unparseable")
    keep = [4, 0, 2]
    out = voting.classify_samples([samples[i] for i in keep], [extracted[i] for i in keep], answer)
    assert (out["chosen"], out["rejected"], out["rejected_reason"]) == (2, 1, "minority")


def test_classify_samples_token_lengths_and_no_pair():
    samples = [sample("Answer: positive", n_tokens=30), sample("<think>..</think>Answer: positive", n_tokens=12),
               sample("Answer: neutral", n_tokens=5)]
    extracted = ["positive", "positive", "neutral"]
    out = voting.classify_samples(samples, extracted, "positive")
    assert (out["chosen"], out["rejected"], out["rejected_reason"]) == (1, 2, "minority")  # tokens, not characters
    del samples[0]["n_tokens"]  # not every sample has n_tokens: characters
    assert voting.classify_samples(samples, extracted, "positive")["chosen"] == 0
    unanimous = voting.classify_samples(samples[:2], extracted[:2], "positive")  # nothing to reject
    assert unanimous == {"classes": ["majority", "majority"], "chosen": None, "rejected": None,
                         "rejected_reason": None}
    dropped = voting.classify_samples(samples + [sample("?")], extracted + [None], None)  # the vote dropped it
    assert dropped == {"classes": ["unvoted", "unvoted", "unvoted", "unparseable"], "chosen": None,
                       "rejected": None, "rejected_reason": None}
    assert voting.classify_samples([], [], None)["classes"] == []
    with pytest.raises(ValueError, match="2 samples but 1"):
        voting.classify_samples(samples[:2], extracted[:1], "positive")


def test_stats():
    extracted = [
        ["positive", "positive", "positive", None],    # 3/4 = 0.75 -> kept positive
        ["negative", "neutral", None, None],           # 1/4 = 0.25 (tie, negative first) -> dropped at 0.5
        ["neutral", "neutral", "positive", "neutral"],  # 0.75 -> neutral
        [None, None, None, None],                      # 0
        ["negative"] * 4,                              # 1.0 -> negative
    ]
    votes = [voting.vote(x, min_agreement=0.5) for x in extracted]
    assert votes == [("positive", 0.75), (None, 0.25), ("neutral", 0.75), (None, 0.0), ("negative", 1.0)]
    gold = ["Positive", "negative", "positive", "neutral", "negative"]
    s = voting.stats(extracted, votes, gold=gold)
    assert s == {
        "n_questions": 5, "n_samples": 20, "n_kept": 3,
        "parse_rate": 13 / 20,
        "mean_agreement": (0.75 + 0.25 + 0.75 + 0 + 1) / 5,
        "agreement_histogram": {"edges": [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0],
                                "counts": [1, 0, 1, 0, 0, 0, 0, 2, 0, 1]},
        "kept_fraction": 3 / 5,
        "label_distribution": {"negative": 1 / 3, "neutral": 1 / 3, "positive": 1 / 3},
        "pseudo_label_accuracy": 2 / 3,   # positive right, neutral wrong, negative right ("Positive" normalised)
        "sample_accuracy": 9 / 20,       # 3 + 1 + 1 + 0 + 4
    }
    plain = voting.stats(extracted, votes)
    assert plain["pseudo_label_accuracy"] is None and plain["sample_accuracy"] is None


def test_stats_histogram_edges_and_errors():
    votes = [(None, k / 10) for k in range(11)] + [("a", 1 / 3), ("a", 2 / 3)]
    s = voting.stats([[]] * len(votes), votes)
    # k/10 lands in [k/10, (k+1)/10) despite float error (0.3, 0.6, 0.7 ...); 1.0 in the last, closed bin
    assert s["agreement_histogram"]["counts"] == [1, 1, 1, 2, 1, 1, 2, 1, 1, 2]
    assert s["label_distribution"] == {"a": 1.0} and s["parse_rate"] == 0.0
    assert voting.stats([], [], gold=[])["pseudo_label_accuracy"] is None
    with pytest.raises(ValueError, match="outside"):
        voting.stats([[]], [(None, 1.2)])
    with pytest.raises(ValueError, match="2 gold labels for 1"):
        voting.stats([[]], [(None, 0.0)], gold=["a", "b"])
