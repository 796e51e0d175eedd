"""Self-distillation, one round (self-consistency, Wang et al. 2023, arXiv:2203.11171; the second paper's recipe
for tasks without training labels): the model answers each prompt of a task several times with its reasoning,
the final answers are extracted and majority-voted, and the voted answers become training data.

    python -m jaxfin.distill --config configs/distill.py     # -> WORKDIR/{samples,sft,pairs}.jsonl, stats.json

For each prompt (the task's train split or `distill.prompts`, the first `distill.max_examples`; the file's labels
are never shown to the model and only scored in stats.json) the task's chat prompt with `distill.cot_instruction`
appended is sampled `distill.num_samples` times (jaxfin.infer.decode.generate; keys from (seed, the prompt's
index in its file, the sample's index), so batching and resuming never change a sample). Each sample's answer is
voting.extract_answer (the last `distill.answer_regex` match after the think block that is one of the task's
labels, else the task's own parser); voting.vote keeps the majority answer when it has at least
`distill.min_agreement` of all the prompt's samples. Files written to the workdir:

    distill.json   the settings that fix the samples (model, task, prompts, seed, sampling, instruction): a rerun
                   with different ones is refused
    samples.jsonl  one line per sample, prompts in file order: {"id", "sample", "text", "extracted",
                   "finish_reason", "n_tokens", "token_ids"}; appended (and fsync'd) after every few prompts, so a
                   rerun continues where sampling stopped
    sft.jsonl      one line per kept prompt: the prompt's example in the task's own file format with "label" set to
                   the voted answer (FinBen JSONL {"id", "text", "label", "query"} for fiqasa and fpb), so the
                   task's reader, and training on that task, read it like the shipped train split (headlines rows
                   keep its example fields, which its reader of the raw conversations file does not take)
    pairs.jsonl    DPO pairs (jaxfin.data.pairs format) on the task's plain prompt: chosen = the voted answer in the
                   task's target format (what SFT trains), rejected = one sample exactly as generated
                   ("rejected_ids", its EOS included when it stopped): the first over-long one, else unparseable,
                   else minority (voting.classify_samples)
    stats.json     voting.stats (parse_rate, agreement_histogram, kept_fraction, label_distribution and, from the
                   file's hidden labels, pseudo_label_accuracy and sample_accuracy) plus n_pairs and
                   rejected_reasons

The extraction and the vote are recomputed from the stored texts on every run, so changing answer_regex or
min_agreement and rerunning rewrites the outputs without sampling again. No prompt reaching agreement leaves
sft.jsonl and pairs.jsonl empty with a one-line warning.
"""

from __future__ import annotations

import collections
import json
import os
import re
import warnings
from typing import Any, Callable, Mapping, Sequence

import ml_collections

from jaxfin import tasks
from jaxfin.data import chat
from jaxfin.errors import UserError
from jaxfin.infer import decode, sampling
from jaxfin.infer.decode import Completion
from jaxfin.io import store
from jaxfin.io.files import read_json, write_json, write_jsonl
from jaxfin.recipes import voting
from jaxfin.tasks.base import Example, Messages, Task

# (prompt token ids, the prompts' indices in their file) -> num_samples completions per prompt, in prompt order.
Sampler = Callable[[list[list[int]], list[int]], list[list[Completion]]]

# Tasks whose answer is one of their labels (an example's "label"): the ones a vote can decide.
SINGLE_LABEL = ("fiqasa", "fpb", "headlines")
SAMPLES, SFT, PAIRS, STATS, SETTINGS = "samples.jsonl", "sft.jsonl", "pairs.jsonl", "stats.json", "distill.json"


# --------------------------------------------------------------------------------------------------------------
# Config, prompts, sampler.


def check(config: ml_collections.ConfigDict) -> sampling.Sampling:
    """Every config error as one UserError naming its key, before anything is read or loaded."""
    d, s = config.distill, config.sampling
    if not config.model.path:
        raise UserError("model.path is not set: the model whose answers are distilled (e.g. --config.model.path="
                        "DIR, or configs/distill.py)")
    if d.task not in tasks.REGISTRY:
        raise UserError(f"distill.task={d.task!r}: unknown task (known: {', '.join(sorted(tasks.REGISTRY))})")
    if d.task not in SINGLE_LABEL:
        raise UserError(f"distill.task={d.task}: self-distillation votes on one label per prompt, and "
                        f"{d.task}'s answers are not single labels (choose {', '.join(SINGLE_LABEL)})")
    if d.num_samples < 1:
        raise UserError(f"distill.num_samples={d.num_samples}: must be >= 1")
    if d.max_examples == 0 or d.max_examples < -1:
        raise UserError(f"distill.max_examples={d.max_examples}: -1 (all) or a positive count")
    if not 0 <= d.min_agreement <= 1:
        raise UserError(f"distill.min_agreement={d.min_agreement}: must be in [0, 1]")
    try:
        re.compile(d.answer_regex)
    except re.error as e:
        raise UserError(f"distill.answer_regex: not a regular expression ({e})") from None
    if s.max_new_tokens < 1 or s.batch_size < 1:
        raise UserError(f"sampling.max_new_tokens={s.max_new_tokens} and sampling.batch_size={s.batch_size}: "
                        "must be >= 1")
    if not 0 <= config.seed < 2**32:
        raise UserError(f"seed={config.seed}: must be in [0, 2**32)")
    try:
        return sampling.Sampling(temperature=float(s.temperature), top_k=int(s.top_k), top_p=float(s.top_p))
    except ValueError as e:
        raise UserError(str(e)) from None


def read_prompts(task: Task, path: str, max_examples: int) -> tuple[list[Example], dict[str, str]]:
    """(the first max_examples examples of `path` (default: the task's train split), {normalised label: its
    spelling in the task's files}). Only single-label tasks can be voted on."""
    path = path or task.files["train"]
    try:
        examples = task.read(path)
    except ValueError as e:
        raise UserError(str(e)) from None
    if not examples:
        raise UserError(f"{path}: no examples")
    if not task.labels or not all("label" in ex for ex in examples):
        raise UserError(f"{path}: examples without a 'label' field; distill.task={task.name} needs one-label "
                        "examples (the label is only scored, never shown)")
    spelling = {voting.normalise(label): label for label in task.labels}
    spelling.update({voting.normalise(ex["label"]): ex["label"] for ex in examples})  # e.g. fiqasa's "Positive"
    return (examples if max_examples < 0 else examples[:max_examples]), spelling


def cot_messages(task: Task, example: Example, instruction: str) -> Messages:
    """The task's messages with the instruction ("{labels}" filled in) appended to the last user turn."""
    messages = [dict(m) for m in task.messages(example)]
    text = instruction.replace("{labels}", ", ".join(task.labels))
    messages[-1]["content"] = f"{messages[-1]['content']}\n\n{text}" if text else messages[-1]["content"]
    return messages


def model_sampler(model: store.Model, config: ml_collections.ConfigDict, how: sampling.Sampling) -> Sampler:
    """The real sampler: decode.generate over the model (with its adapters, if any)."""
    s = config.sampling

    def sample(prompts: list[list[int]], example_ids: list[int]) -> list[list[Completion]]:
        return decode.generate(
            model.params, model.cfg, prompts, max_new_tokens=s.max_new_tokens, stop_ids=model.eos_ids,
            batch_size=s.batch_size, lora=model.lora,
            lora_scale=model.lora_config.scale if model.lora is not None else 1.0, sampling=how,
            num_samples=config.distill.num_samples, seed=config.seed, example_ids=example_ids)
    return sample


def settings(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """What fixes the samples: a workdir's samples are only continued under the same settings."""
    s = config.sampling
    return {"model": config.model.path, "dtype": config.model.dtype, "task": config.distill.task,
            "prompts": config.distill.prompts, "seed": config.seed, "num_samples": config.distill.num_samples,
            "cot_instruction": config.distill.cot_instruction, "temperature": s.temperature, "top_k": s.top_k,
            "top_p": s.top_p, "max_new_tokens": s.max_new_tokens}


def _check_settings(wd: str, want: dict[str, Any]) -> None:
    path = os.path.join(wd, SETTINGS)
    if os.path.isfile(path):
        have = read_json(path)
        diff = [k for k in want if have.get(k) != want[k]]
        if diff:
            shown = ", ".join(f"{k}={have.get(k)!r} (now {want[k]!r})" for k in diff)
            raise UserError(f"{wd} holds samples made with other settings: {shown}; use a new workdir, or the "
                            "same settings to continue")
    elif os.path.isfile(os.path.join(wd, SAMPLES)):
        raise UserError(f"{wd} has {SAMPLES} but no {SETTINGS}; use a new workdir")
    else:
        write_json(path, want)


# --------------------------------------------------------------------------------------------------------------
# samples.jsonl: appended per group of prompts, read back on a rerun.


def read_samples(path: str, num_samples: int) -> tuple[dict[str, list[dict]], bool]:
    """({id: its num_samples rows in sample order} for every prompt sampled completely, whether the file holds
    anything else: a line cut by a crash (only the last line may be), or a prompt with some samples missing)."""
    by_id: dict[str, list[dict]] = collections.defaultdict(list)
    dirty = False
    if not os.path.isfile(path):
        return {}, False
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if any(rest.strip() for rest in lines[lineno:]):
                raise UserError(f"{path}:{lineno}: malformed JSON inside the file (only a last line cut short by "
                                "a crash is dropped); use a new workdir") from None
            dirty = True
            continue
        by_id[str(row["id"])].append(row)
    done = {}
    for ex_id, rows in by_id.items():
        rows.sort(key=lambda r: r["sample"])
        if [r["sample"] for r in rows] == list(range(num_samples)):
            done[ex_id] = rows
        else:
            dirty = True
    return done, dirty


def _append(path: str, rows: Sequence[Mapping[str, Any]]) -> None:
    """Whole lines appended and flushed to disk: a crash loses at most the group being written."""
    with open(path, "a", encoding="utf-8") as f:
        f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        f.flush()
        os.fsync(f.fileno())


# --------------------------------------------------------------------------------------------------------------
# The round.


def run(config: ml_collections.ConfigDict, sampler: Sampler | None = None,
        model: store.Model | None = None) -> dict[str, Any]:
    """Samples what the workdir does not hold yet, then (re)writes sft.jsonl, pairs.jsonl, stats.json and
    samples.jsonl from all samples. `sampler`: replaces decode.generate (tests script completions with it);
    `model`: model.path already loaded. Returns the stats."""
    how = check(config)
    d = config.distill
    task = tasks.get(d.task)
    examples, spelling = read_prompts(task, d.prompts, d.max_examples)
    model = model or store.load(config.model.path, dtype=config.model.dtype)
    tokenizer = model.tokenizer()
    if tokenizer is None:
        raise UserError(f"model.path={config.model.path}: the model has no tokenizer files")
    sampler = sampler or model_sampler(model, config, how)
    extract = _extractor(task, d.answer_regex)

    wd = config.workdir
    os.makedirs(wd, exist_ok=True)
    _check_settings(wd, settings(config))
    path = os.path.join(wd, SAMPLES)
    done, dirty = read_samples(path, d.num_samples)
    if dirty:  # a crash left part of a group: keep the complete prompts only, then continue
        write_jsonl(path, [r for rows in done.values() for r in rows])
    todo = [i for i, ex in enumerate(examples) if ex["id"] not in done]
    if done and todo:
        print(f"distill: {len(examples) - len(todo)} of {len(examples)} prompts already sampled in {path}; "
              "continuing")
    per_call = max(1, config.sampling.batch_size // d.num_samples)
    stop = model.eos_ids[0] if model.eos_ids else None
    for start in range(0, len(todo), per_call):
        idx = todo[start: start + per_call]
        prompts = [chat.prompt_ids(tokenizer, cot_messages(task, examples[i], d.cot_instruction)) for i in idx]
        out = sampler(prompts, idx)
        if len(out) != len(idx) or any(len(c) != d.num_samples for c in out):
            raise ValueError(f"sampler returned {[len(c) for c in out]} completions for {len(idx)} prompts x "
                             f"{d.num_samples} samples")
        rows = []
        for i, completions in zip(idx, out):
            for k, c in enumerate(completions):
                text = tokenizer.decode(c.token_ids, skip_special_tokens=False)
                ids = list(c.token_ids) + ([stop] if c.finish_reason == "stop" and stop is not None else [])
                rows.append({"id": examples[i]["id"], "sample": k, "text": text, "extracted": extract(text),
                             "finish_reason": c.finish_reason, "n_tokens": len(c.token_ids), "token_ids": ids})
            done[examples[i]["id"]] = rows[-d.num_samples:]
        _append(path, rows)
        print(f"distill: sampled {min(start + per_call, len(todo))}/{len(todo)} prompts", flush=True)
    return finish(wd, task, examples, done, spelling, extract=extract, min_agreement=d.min_agreement)


def _extractor(task: Task, regex: str) -> Callable[[str], str | None]:
    pattern = re.compile(regex)
    return lambda text: voting.extract_answer(text, regex=pattern, labels=task.labels, fallback=task.parse)


def finish(wd: str, task: Task, examples: Sequence[Example], samples: Mapping[str, list[dict]],
           spelling: Mapping[str, str], *, extract: Callable[[str], str | None],
           min_agreement: float) -> dict[str, Any]:
    """Extraction, vote, pairs and stats over every prompt's samples -> the four output files."""
    sample_rows, sft_rows, pair_rows, extracted_all, votes = [], [], [], [], []
    reasons: collections.Counter = collections.Counter()
    for ex in examples:
        rows = [{**r, "extracted": extract(r["text"])} for r in samples[ex["id"]]]
        sample_rows += rows
        extracted = [r["extracted"] for r in rows]
        answer, agreement = voting.vote(extracted, min_agreement=min_agreement)
        extracted_all.append(extracted)
        votes.append((answer, agreement))
        if answer is None:
            continue
        labelled = {**ex, "label": spelling[voting.normalise(answer)]}
        sft_rows.append(labelled)
        pick = voting.classify_samples([{"completion": r["text"], "finish_reason": r["finish_reason"],
                                         "n_tokens": r["n_tokens"]} for r in rows], extracted, answer)
        if pick["rejected"] is None:
            continue
        rejected = rows[pick["rejected"]]
        pair = {"id": ex["id"], "prompt": task.messages(labelled), "chosen": task.target(labelled),
                "rejected": rejected["text"], "rejected_reason": pick["rejected_reason"],
                "rejected_sample": pick["rejected"]}
        if rejected["token_ids"]:
            pair["rejected_ids"] = rejected["token_ids"]
        pair_rows.append(pair)
        reasons[pick["rejected_reason"]] += 1
    current = {ex["id"] for ex in examples}
    sample_rows += [r for ex_id, rows in samples.items() if ex_id not in current for r in rows]  # kept, not used
    gold = [ex["label"] for ex in examples]
    summary = voting.stats(extracted_all, votes, gold=gold)
    summary.update({"task": task.name, "n_pairs": len(pair_rows),
                    "rejected_reasons": {r: reasons[r] for r in voting.REJECT_ORDER}})
    write_jsonl(os.path.join(wd, SAMPLES), sample_rows)
    write_jsonl(os.path.join(wd, SFT), sft_rows)
    write_jsonl(os.path.join(wd, PAIRS), pair_rows)
    write_json(os.path.join(wd, STATS), summary)
    if not sft_rows:
        warnings.warn(f"distill: no prompt reached distill.min_agreement={min_agreement} ({len(examples)} prompts, "
                      f"parse rate {summary['parse_rate']:.2%}); {SFT} and {PAIRS} are empty")
    return summary
