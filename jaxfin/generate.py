"""`python -m jaxfin.generate`: greedy continuations of JSONL prompts with any model jaxfin can load.

    python -m jaxfin.generate --model PATH --prompts IN.jsonl --out OUT.jsonl \
        [--max-new-tokens 256] [--batch-size 8] [--dtype bfloat16|float32] [--debug]

PATH: an HF model directory or hub id, a jaxfin checkpoint or a training workdir (see io/store.load). Each input
line is one of {"input_ids": [...]}, {"prompt": "..."} (tokenized with the tokenizer's default special tokens,
e.g. a BOS) or {"messages": [...]} (the tokenizer's chat template with the generation prompt); when a line has
several, the first of that order wins. Output lines keep every input field and add `completion_ids` (without the
stop token), `completion` (decoded with special tokens kept, when there is a tokenizer) and `finish_reason`.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Sequence

from jaxfin import errors
from jaxfin.data import chat
from jaxfin.errors import UserError, out_of_memory, run_cli
from jaxfin.infer import decode
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
    return p.parse_args(argv)


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
        completions = decode.greedy(model.params, cfg, prompts, max_new_tokens=args.max_new_tokens,
                                    stop_ids=model.eos_ids, batch_size=args.batch_size, lora=model.lora,
                                    lora_scale=lora_scale, verbose=True)
    out = []
    for (_, rec), c in zip(records, completions):
        rec = {**rec, "completion_ids": c.token_ids}
        if tokenizer is not None:
            # Special tokens kept: think tags and any end-of-turn marker that is not an EOS stay visible.
            rec["completion"] = tokenizer.decode(c.token_ids, skip_special_tokens=False)
        rec["finish_reason"] = c.finish_reason
        out.append(rec)
    write_jsonl(args.out, out)
    print(f"wrote {len(out)} completions to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    run_cli(main)
