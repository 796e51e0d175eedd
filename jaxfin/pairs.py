"""`python -m jaxfin.pairs`: DPO preference pairs from a model's own outputs on a task's prompts.

    python -m jaxfin.pairs --model PATH --task NAME[,NAME...] [--split train] [--num-samples K] [--temperature T]
        [--top-p P] [--max-new-tokens N] [--max-examples M] [--batch-size B] [--seed S] --out pairs.jsonl

For each prompt of the task(s), K samples are drawn from the model (jaxfin.infer.decode.generate). chosen = the gold
answer in the task's target format with its end-of-turn token (data/chat.encode: the ids SFT trains on); rejected =
the first sample that hit max_new_tokens or repeats itself (data/pairs.pick_rejected: share of repeated 4-grams,
whitespace tokens ignored, >= pairs.REPEAT_THRESHOLD), kept as the model's own token ids: no re-tokenisation, no end
token added to a cut-off answer (a repeating answer that stopped keeps the end-of-turn token it stopped on).
Prompts with no such sample get no pair. Lines: {"id", "task", "prompt": chat messages, "chosen", "rejected" (text),
"chosen_ids", "rejected_ids", "rejected_reason": "length" | "repeats"}. Beside OUT, OUT's stem + ".stats.json":
samples drawn, their over-length and repetitive rates (the before-DPO figures), pairs written, per task.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Sequence

from jaxfin import errors, tasks
from jaxfin.data import chat, pairs
from jaxfin.errors import UserError, run_cli
from jaxfin.infer import decode
from jaxfin.infer.sampling import Sampling
from jaxfin.io import store
from jaxfin.io.files import write_json, write_jsonl


def _positive_int(s: str) -> int:
    if not s.lstrip("-").isdigit() or int(s) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}")
    return int(s)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = errors.ArgumentParser(prog="python -m jaxfin.pairs", description=__doc__.split("\n")[0].split(": ", 1)[1],
                              epilog="--debug shows the traceback of an error")
    p.add_argument("--model", required=True, help="HF model dir / hub id, GGUF, jaxfin checkpoint or workdir")
    p.add_argument("--task", required=True, help="task name(s) from jaxfin/tasks, comma-separated")
    p.add_argument("--split", default="train", help="which of the task's files (default train)")
    p.add_argument("--num-samples", type=_positive_int, default=4, help="samples per prompt (default 4)")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default 1; 0 = greedy)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (default 1 = off)")
    p.add_argument("--max-new-tokens", type=_positive_int, default=256)
    p.add_argument("--max-examples", type=int, default=-1, help="first M prompts of each task (-1 = all)")
    p.add_argument("--batch-size", type=_positive_int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=("bfloat16", "float32"), default=None, help="default: the checkpoint's")
    p.add_argument("--out", required=True, help="output JSONL (stats beside it: OUT stem + .stats.json)")
    return p.parse_args(argv)


def stats_path(out: str) -> str:
    return os.path.splitext(out)[0] + ".stats.json"


def task_pairs(model: store.Model, tokenizer: Any, task: Any, examples: Sequence[dict], args: argparse.Namespace,
               ignore: frozenset[int]) -> tuple[list[dict], dict[str, Any]]:
    """(pair lines, stats) of one task."""
    messages = [task.messages(ex) for ex in examples]
    prompt_ids = [chat.prompt_ids(tokenizer, m) for m in messages]
    samples = decode.generate(
        model.params, model.cfg, prompt_ids, max_new_tokens=args.max_new_tokens, stop_ids=model.eos_ids,
        batch_size=args.batch_size, lora=model.lora,
        lora_scale=model.lora_config.scale if model.lora is not None else 1.0,
        sampling=Sampling(temperature=args.temperature, top_p=args.top_p), num_samples=args.num_samples,
        seed=args.seed, example_ids=list(range(len(examples))), verbose=True)
    lines, drawn, length, repeats = [], 0, 0, 0
    for ex, msgs, prompt, row in zip(examples, messages, prompt_ids, samples):
        ids, _ = chat.encode(tokenizer, msgs, task.target(ex), eos_ids=model.eos_ids)
        chosen_ids = ids[len(prompt):]
        row = [{"token_ids": list(c.token_ids), "finish_reason": c.finish_reason} for c in row]
        drawn += len(row)
        length += sum(s["finish_reason"] == "length" for s in row)
        repeats += sum(pairs.repetition_rate(s["token_ids"], ignore=ignore) >= pairs.REPEAT_THRESHOLD for s in row)
        i = pairs.pick_rejected(row, max_new_tokens=args.max_new_tokens, ignore=ignore)
        if i is None:
            continue
        rejected = row[i]
        rejected_ids = rejected["token_ids"]
        if rejected["finish_reason"] == "stop":  # the stop token it emitted (decode leaves it out of token_ids)
            rejected_ids = rejected_ids + [chosen_ids[-1] if chosen_ids[-1] in model.eos_ids else model.eos_ids[0]]
        lines.append({"id": f"{task.name}:{ex['id']}", "task": task.name, "prompt": msgs, "chosen": task.target(ex),
                      "rejected": tokenizer.decode(rejected["token_ids"], skip_special_tokens=False),
                      "chosen_ids": chosen_ids, "rejected_ids": rejected_ids,
                      "rejected_reason": pairs.rejection_reason(rejected, max_new_tokens=args.max_new_tokens,
                                                                ignore=ignore)})
    stats = {"prompts": len(examples), "samples_drawn": drawn, "overlength_rate": length / drawn if drawn else 0.0,
             "repetitive_rate": repeats / drawn if drawn else 0.0, "pairs_written": len(lines),
             "prompts_without_pair": len(examples) - len(lines)}
    return lines, stats


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    try:
        sampling = Sampling(temperature=args.temperature, top_p=args.top_p)
    except ValueError as e:
        raise UserError(str(e).replace("sampling.", "--").replace("top_p", "top-p")) from None
    del sampling
    names = [n.strip() for n in args.task.split(",") if n.strip()]
    chosen_tasks = []
    for name in names:  # data first: a bad task name or file fails before the model is loaded
        try:
            task = tasks.get(name)
        except ValueError as e:
            raise UserError(f"--task: {e}") from None
        if args.split not in task.files:
            raise UserError(f"--split {args.split}: task {name} has {', '.join(sorted(task.files))}")
        examples = task.read(task.files[args.split])
        chosen_tasks.append((task, examples[: args.max_examples] if args.max_examples >= 0 else examples))
    model = store.load(args.model, dtype=args.dtype, progress=True)
    tokenizer = model.tokenizer()
    if tokenizer is None:
        raise UserError(f"{args.model}: the model has no tokenizer files, so prompts cannot be built")
    if not model.eos_ids:
        raise UserError(f"{args.model}: the model has no eos token id (generation_config.json / config.json)")
    ignore = pairs.whitespace_ids(tokenizer)
    lines, per_task = [], {}
    for task, examples in chosen_tasks:
        task_lines, per_task[task.name] = task_pairs(model, tokenizer, task, examples, args, ignore)
        lines += task_lines
    drawn = sum(s["samples_drawn"] for s in per_task.values())
    total = {k: sum(s[k] for s in per_task.values()) for k in ("prompts", "samples_drawn", "pairs_written",
                                                                 "prompts_without_pair")}
    for rate in ("overlength_rate", "repetitive_rate"):
        total[rate] = sum(s[rate] * s["samples_drawn"] for s in per_task.values()) / drawn if drawn else 0.0
    stats = {**total, "per_task": per_task, "model": args.model, "split": args.split,
             "sampling": {"num_samples": args.num_samples, "temperature": args.temperature, "top_p": args.top_p,
                          "max_new_tokens": args.max_new_tokens, "seed": args.seed},
             "repeat_threshold": pairs.REPEAT_THRESHOLD, "repeat_n": pairs.REPEAT_N}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    write_jsonl(args.out, lines)
    write_json(stats_path(args.out), stats)
    print(f"{total['samples_drawn']} samples: {total['overlength_rate']:.1%} hit max_new_tokens, "
          f"{total['repetitive_rate']:.1%} repetitive; wrote {len(lines)} pairs to {args.out} "
          f"(stats: {stats_path(args.out)})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    run_cli(main)
