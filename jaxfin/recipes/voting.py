"""Self-distillation's pure core (self-consistency, Wang et al. 2023, arXiv:2203.11171): extract the final answer
of each sampled chain of thought, majority-vote per question, pick DPO pairs from the samples, summarise.

    extracted = [extract_answer(c, labels=task.labels, fallback=task_parse_as_label) for c in completions]
    answer, agreement = vote(extracted, min_agreement=0.6)        # None: the question is dropped
    pair = classify_samples(samples, extracted, answer)           # pair["chosen"], pair["rejected"]: sample indices
    summary = stats([extracted, ...], [(answer, agreement), ...], gold=[...])

Answers are strings: a label of the task when `labels` are given, else the normalised text after "Answer:".
"""

from __future__ import annotations

import collections
import json
import math
import re
import unicodedata
from typing import Any, Callable, Mapping, Sequence

from jaxfin.tasks.base import strip_think

# "Answer: positive", "**Answer:** Positive.", "Final answer: $\boxed{positive}$": the word "answer" (any case,
# markdown emphasis around it allowed) then a colon, the value being the rest of THAT line.
ANSWER_REGEX = r"(?i)\banswer\b[ \t*_]*[:：][ \t]*(?P<answer>[^\n]*)"
_WRAPPERS = re.compile(r"\\(?:boxed|text|textbf|mathrm)\{([^{}]*)\}")
_STRIP = " \t\r\n*_`'\"“”‘’.,;:!?()[]{}<>$"  # removed from both ends of a value (markdown, quotes, brackets)


def normalise(value: str) -> str:
    r"""The comparable form of an answer: NFKC, LaTeX \boxed{x} / \text{x} / \textbf{x} / \mathrm{x} unwrapped,
    markdown, quotes, brackets, $ and punctuation (.,;:!?) stripped from both ends, inner whitespace runs made one
    space, case folded. "**Positive.**" -> "positive"; "$\boxed{Neutral}$" -> "neutral"."""
    text = unicodedata.normalize("NFKC", value)
    previous = None
    while previous != text:
        previous, text = text, _WRAPPERS.sub(r"\1", text)
    return " ".join(text.strip(_STRIP).split()).casefold()


def _label_lookup(labels: Sequence[str] | None) -> dict[str, str] | None:
    if labels is None:
        return None
    lookup: dict[str, str] = {}
    for label in labels:
        key = normalise(label)
        if not key:
            raise ValueError(f"extract_answer: label {label!r} is empty after normalisation")
        if key in lookup:
            raise ValueError(f"extract_answer: labels {lookup[key]!r} and {label!r} normalise alike ({key!r})")
        lookup[key] = label
    return lookup


def _accept(value: str, lookup: dict[str, str] | None) -> str | None:
    key = normalise(value)
    if not key:
        return None
    return key if lookup is None else lookup.get(key)


def extract_answer(text: str, *, regex: str | re.Pattern[str] = ANSWER_REGEX, labels: Sequence[str] | None = None,
                   fallback: Callable[[str], Any] | None = None) -> str | None:
    """The final answer of one completion, or None.

    1. The reasoning is dropped with base.strip_think (a leading unmatched "</think>" ends it, <think>...</think>
       blocks go, an unclosed <think> swallows the rest: cut-off reasoning has no answer).
    2. The LAST match of `regex` in what is left whose value counts wins; the value is the group named "answer"
       (else group 1, else the whole match), normalised (see `normalise`). It counts when it is non-empty and,
       with `labels`, when it normalises like one of them: the label is returned as spelled in `labels`
       ("Answer: **Positive.**" -> "positive" for labels ("negative", "neutral", "positive")); a value that is no
       label ("Answer: bullish") is skipped, and an earlier Answer line may still count.
    3. When no match counts, fallback(text) (the task's own parser, given the FULL completion: it strips the
       reasoning itself) if given: a str result is treated like a regex value; any other non-None JSON-able
       result becomes its canonical JSON (sorted keys, compact), not normalised, and counts only if non-empty
       and, with labels, if it is one of them.
    """
    pattern = re.compile(regex) if isinstance(regex, str) else regex
    lookup = _label_lookup(labels)
    group: int | str = "answer" if "answer" in pattern.groupindex else (1 if pattern.groups else 0)
    for match in reversed(list(pattern.finditer(strip_think(text)))):
        value = match.group(group)
        if value is not None and (answer := _accept(value, lookup)) is not None:
            return answer
    if fallback is None:
        return None
    value = fallback(text)
    if value is None:
        return None
    if isinstance(value, str):
        return _accept(value, lookup)
    canonical = json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    if lookup is not None:
        return canonical if canonical in lookup.values() else None
    return canonical


def vote(extracted: Sequence[str | None], *, min_agreement: float) -> tuple[str | None, float]:
    """Majority answer of one question's samples and its agreement = top count / number of samples.

    Unparsed samples (None) never win but DO count in the denominator: a sample without an answer is a draw in
    which the model did not commit, so 2 agreeing answers out of 8 samples is agreement 0.25, not 1.0, and a
    question the model mostly fails to answer is not kept as confidently labelled. Ties go to the answer whose
    first sample comes first (sample order is fixed by the sampling seed, so this is deterministic and, unlike
    alphabetical order, favours no label). Below `min_agreement` (agreement >= min_agreement keeps; 7/10 meets
    0.7 exactly) or with no answer at all the answer is None; the agreement is returned either way (0.0 when
    nothing parsed or there are no samples)."""
    if not 0 <= min_agreement <= 1:
        raise ValueError(f"vote: min_agreement={min_agreement!r}, must be in [0, 1]")
    counts = collections.Counter(e for e in extracted if e is not None)  # insertion order = first occurrence
    if not counts:
        return None, 0.0
    answer, top = max(counts.items(), key=lambda kv: kv[1])  # max keeps the first of equal counts
    agreement = top / len(extracted)
    return (answer if agreement >= min_agreement else None), agreement


# Rejected-sample preference, most wanted first (see classify_samples).
REJECT_ORDER = ("length", "unparseable", "minority")


def classify_samples(samples: Sequence[Mapping[str, Any]], extracted: Sequence[str | None],
                     answer: str | None) -> dict[str, Any]:
    """One question's DPO pair from its distillation samples.

    samples[i]: {"completion": str, "finish_reason": "stop" | "length" | ..., optional "n_tokens": int};
    extracted[i]: extract_answer of samples[i]; answer: the vote's answer (None: the question was dropped).
    Each sample gets a class, first rule that applies:
        "length"       finish_reason == "length" (stopped at max_new_tokens, whatever it says)
        "unparseable"  extracted is None
        "unvoted"      answer is None (no pair is built for a dropped question)
        "majority"     extracted == answer
        "minority"     any other answer
    chosen: the shortest "majority" sample (n_tokens when every sample has it, else characters of the
    completion), ties to the lowest index: the distilled behaviour is the agreed answer reached concisely.
    rejected: the lowest-index sample of the first non-empty class in REJECT_ORDER: over-long first (runaway
    reasoning, the failure distillation most wants to remove), then unparseable (format failure), then minority
    last (the vote itself may be wrong, so a minority answer is the least certain to be worse).
    Returns {"classes": [...], "chosen": int | None, "rejected": int | None, "rejected_reason": class | None};
    chosen and rejected are both None unless both exist."""
    if len(samples) != len(extracted):
        raise ValueError(f"classify_samples: {len(samples)} samples but {len(extracted)} extracted answers")
    classes = []
    for sample, value in zip(samples, extracted):
        if sample.get("finish_reason") == "length":
            classes.append("length")
        elif value is None:
            classes.append("unparseable")
        elif answer is None:
            classes.append("unvoted")
        else:
            classes.append("majority" if value == answer else "minority")
    use_tokens = bool(samples) and all("n_tokens" in s for s in samples)

    def size(i: int) -> int:
        return int(samples[i]["n_tokens"]) if use_tokens else len(samples[i]["completion"])

    majority = [i for i, c in enumerate(classes) if c == "majority"]
    chosen = min(majority, key=lambda i: (size(i), i)) if majority else None
    rejected = reason = None
    for cls in REJECT_ORDER:
        members = [i for i, c in enumerate(classes) if c == cls]
        if members:
            rejected, reason = members[0], cls
            break
    if chosen is None or rejected is None:
        chosen = rejected = reason = None
    return {"classes": classes, "chosen": chosen, "rejected": rejected, "rejected_reason": reason}


HISTOGRAM_BINS = 10


def stats(extracted: Sequence[Sequence[str | None]], votes: Sequence[tuple[str | None, float]], *,
          gold: Sequence[str] | None = None) -> dict[str, Any]:
    """Summary of a distillation round. extracted[q]: question q's extracted sample answers; votes[q]: its
    vote() result; gold[q] (optional): its true label.

        n_questions, n_samples, n_kept
        parse_rate             parsed samples / all samples
        mean_agreement         over questions
        agreement_histogram    {"edges": [0.0, 0.1, ..., 1.0], "counts": [10 question counts]}: bins
                               [k/10, (k+1)/10), the last one closed ([0.9, 1.0]); a value on an edge goes up
                               (3/10 is in [0.3, 0.4): 1e-9 absorbs the float error of k/n)
        kept_fraction          questions with a voted answer / questions
        label_distribution     {answer: fraction of the kept questions}, most frequent first (ties by answer)
        pseudo_label_accuracy  kept questions whose voted answer equals gold / kept questions (None without
                               gold or with nothing kept)
        sample_accuracy        samples whose answer equals gold / all samples (None without gold): single-sample
                               accuracy, against which the vote's gain is read
    Answers and gold are compared after `normalise` (so "Positive" equals "positive")."""
    if len(extracted) != len(votes):
        raise ValueError(f"stats: {len(extracted)} questions of extracted answers but {len(votes)} votes")
    if gold is not None and len(gold) != len(votes):
        raise ValueError(f"stats: {len(gold)} gold labels for {len(votes)} questions")
    n_q = len(votes)
    n_samples = sum(len(x) for x in extracted)
    parsed = sum(e is not None for x in extracted for e in x)
    counts = [0] * HISTOGRAM_BINS
    for q, (_, agreement) in enumerate(votes):
        if not 0 <= agreement <= 1:
            raise ValueError(f"stats: question {q} has agreement {agreement!r} outside [0, 1]")
        counts[min(math.floor(agreement * HISTOGRAM_BINS + 1e-9), HISTOGRAM_BINS - 1)] += 1
    kept = [a for a, _ in votes if a is not None]
    by_label = collections.Counter(kept)
    out: dict[str, Any] = {
        "n_questions": n_q,
        "n_samples": n_samples,
        "n_kept": len(kept),
        "parse_rate": parsed / n_samples if n_samples else 0.0,
        "mean_agreement": sum(a for _, a in votes) / n_q if n_q else 0.0,
        "agreement_histogram": {"edges": [k / HISTOGRAM_BINS for k in range(HISTOGRAM_BINS + 1)], "counts": counts},
        "kept_fraction": len(kept) / n_q if n_q else 0.0,
        "label_distribution": {a: c / len(kept) for a, c in sorted(by_label.items(), key=lambda kv: (-kv[1], kv[0]))},
        "pseudo_label_accuracy": None,
        "sample_accuracy": None,
    }
    if gold is not None:
        gold_norm = [normalise(g) for g in gold]
        hits = [normalise(a) == g for (a, _), g in zip(votes, gold_norm) if a is not None]
        out["pseudo_label_accuracy"] = sum(hits) / len(hits) if hits else None
        right = sum(e is not None and normalise(e) == g for x, g in zip(extracted, gold_norm) for e in x)
        out["sample_accuracy"] = right / n_samples if n_samples else None
    return out
