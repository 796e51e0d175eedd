"""`python -m jaxfin.generate`: greedy or sampled continuations of JSONL prompts with any model jaxfin can load.

    python -m jaxfin.generate --model PATH --prompts IN.jsonl --out OUT.jsonl \
        [--max-new-tokens 256] [--batch-size 8] [--dtype bfloat16|float32] \
        [--temperature 0] [--top-k 0] [--top-p 1.0] [--num-samples 1] [--seed 0] [--debug]

PATH: an HF model directory or hub id, a jaxfin checkpoint or a training workdir (see io/store.load). Each input
line is one of {"input_ids": [...]}, {"prompt": "..."} (tokenized with the tokenizer's default special tokens,
e.g. a BOS) or {"messages": [...]} (the tokenizer's chat template with the generation prompt); when a line has
several, the first of that order wins. Output lines keep every input field and add `completion_ids` (without the
stop token), `completion` (decoded with special tokens kept, when there is a tokenizer) and `finish_reason`.

--temperature 0 (the default) is greedy. Otherwise each token is drawn from transformers' Temperature -> TopK ->
TopP distribution (--top-k 0 and --top-p 1 are off; note transformers' own default is top_k 50). With
--num-samples N > 1 each output line gets `samples`: [{"completion", "completion_ids", "finish_reason"}, ...] in
sample order instead of the three fields. A sample depends only on (--seed, the line's index among the input's
non-blank lines, the sample's index): the same whatever --batch-size.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Sequence

from jaxfin import errors
from jaxfin.data import chat
from jaxfin.errors import UserError, out_of_memory, run_cli
from jaxfin.infer import decode
from jaxfin.infer.sampling import Sampling
from jaxfin.io import store
from jaxfin.io.files import check_writable, read_jsonl, write_jsonl

FIELDS = ("input_ids", "messages", "prompt")


def read_prompts(path: str) -> list[tuple[int, dict[str, Any]]]:
    """(line number, JSON object) for each non-blank line; UserError naming path:line for anything else."""
    records = []
    for n, rec in read_jsonl(path, invalid="not valid JSON"):
        if not any(k in rec for k in FIELDS):
            raise UserError(f"{path}:{n}: expected a JSON object with one of the keys {', '.join(FIELDS)}")
        records.append((n, rec))
    return records


def _is_token_list(x: Any) -> bool:
    return isinstance(x, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in x)


def tokenize(rec: dict[str, Any], tokenizer: Any, where: str) -> list[int]:
    """The prompt token ids of one input record; `where` ("file:line") prefixes every error."""
    if "input_ids" in rec:
        if not _is_token_list(rec["input_ids"]):
            raise UserError(f"{where}: input_ids must be a list of integers")
        return rec["input_ids"]
    key = "messages" if "messages" in rec else "prompt"
    if tokenizer is None:
        raise UserError(f"{where}: {key!r} needs a tokenizer, and the model has none (give input_ids instead)")
    if key == "prompt":
        if not isinstance(rec["prompt"], str):
            raise UserError(f"{where}: prompt must be a string")
        return list(tokenizer(rec["prompt"])["input_ids"])
    messages = rec["messages"]
    if not (isinstance(messages, list) and messages and all(isinstance(m, dict) for m in messages)):
        raise UserError(f"{where}: messages must be a non-empty list of {{\"role\", \"content\"}} objects")
    try:
        return chat.prompt_ids(tokenizer, messages)
    except UserError as e:
        raise UserError(f"{where}: the chat template failed on these messages: {e}") from None


def _number(s: str) -> float:
    try:
        return float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {s!r}") from None


def _int(s: str) -> int:
    try:
        return int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {s!r}") from None


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = errors.ArgumentParser(prog="python -m jaxfin.generate", description=__doc__.split("\n")[0],
                                epilog="--debug shows the traceback of an error")
    p.add_argument("--model", required=True, help="HF model dir, jaxfin checkpoint or training workdir")
    p.add_argument("--prompts", required=True, help="input JSONL: input_ids | prompt | messages per line")
    p.add_argument("--out", required=True, help="output JSONL (overwritten; its folder must exist)")
    p.add_argument("--max-new-tokens", type=errors.positive_int, default=256)
    p.add_argument("--batch-size", type=errors.positive_int, default=8)
    p.add_argument("--dtype", choices=("bfloat16", "float32"), default=None,
                   help="params and compute dtype (default: the checkpoint's)")
    p.add_argument("--temperature", type=_number, default=0.0, help="0 (default) = greedy")
    p.add_argument("--top-k", type=_int, default=0, help="keep the K most likely tokens; 0 (default) = off")
    p.add_argument("--top-p", type=_number, default=1.0, help="nucleus mass in (0, 1]; 1 (default) = off")
    p.add_argument("--num-samples", type=_int, default=1, help="samples per prompt (default 1)")
    p.add_argument("--seed", type=_int, default=0, help="sampling seed in [0, 2^32) (default 0)")
    args = p.parse_args(argv)
    t, k, top_p, n, seed = args.temperature, args.top_k, args.top_p, args.num_samples, args.seed
    checks = [(not 0 <= t < float("inf"), f"--temperature must be a finite number >= 0 (0 = greedy), got {t}"),
              (k < 0, f"--top-k must be >= 0 (0 = off), got {k}"),
              (not 0 < top_p <= 1, f"--top-p must be in (0, 1] (1 = off), got {top_p}"),
              (n < 1, f"--num-samples must be >= 1, got {n}"),
              (not 0 <= seed < 2**32, f"--seed must be in [0, 2**32), got {seed}")]
    for failed, message in checks:
        if failed:
            raise UserError(message)
    args.sampling = Sampling(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
    return args


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    check_writable(args.out, name=f"--out {args.out}")  # before any work: not after all the decoding
    records = read_prompts(args.prompts)  # before loading the model: bad input fails in a second
    model = store.load(args.model, dtype=args.dtype, progress=True)
    tokenizer = model.tokenizer()
    cfg = model.cfg
    where = [f"{args.prompts}:{n}" for n, _ in records]
    prompts = [tokenize(rec, tokenizer, w) for (_, rec), w in zip(records, where)]
    decode.check_prompts(prompts, cfg, where)

    lora_scale = model.lora_config.scale if model.lora is not None else 1.0
    with out_of_memory(f"decoding (--batch-size {args.batch_size}, --max-new-tokens {args.max_new_tokens})",
                       "--batch-size or --max-new-tokens"):
        completions = decode.generate(model.params, cfg, prompts, max_new_tokens=args.max_new_tokens,
                                      stop_ids=model.eos_ids, batch_size=args.batch_size, lora=model.lora,
                                      lora_scale=lora_scale, sampling=args.sampling,
                                      num_samples=args.num_samples, seed=args.seed, verbose=True)

    def fields(c: decode.Completion) -> dict[str, Any]:
        out = {"completion_ids": c.token_ids}
        if tokenizer is not None:
            # Special tokens kept: think tags and any end-of-turn marker that is not an EOS stay visible.
            out["completion"] = tokenizer.decode(c.token_ids, skip_special_tokens=False)
        out["finish_reason"] = c.finish_reason
        return out

    out = []
    for (_, rec), samples in zip(records, completions):
        if args.num_samples == 1:
            out.append({**rec, **fields(samples[0])})
        else:
            out.append({**rec, "samples": [fields(c) for c in samples]})
    write_jsonl(args.out, out)
    print(f"wrote {len(out)} completions to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    run_cli(main)
