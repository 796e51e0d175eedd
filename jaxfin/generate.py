"""`python -m jaxfin.generate`: greedy continuations of JSONL prompts with any model jaxfin can load.

    python -m jaxfin.generate --model PATH --prompts IN.jsonl --out OUT.jsonl \
        [--max-new-tokens 256] [--batch-size 8] [--dtype bfloat16|float32] [--debug]

PATH: an HF model directory, a jaxfin checkpoint or a training workdir (see checkpoint.load_model). Each input
line is one of {"input_ids": [...]}, {"prompt": "..."} (tokenized with the tokenizer's default special tokens,
e.g. a BOS) or {"messages": [...]} (the tokenizer's chat template with the generation prompt); when a line has
several, the first of that order wins. Output lines keep every input field and add `completion_ids` (without the
stop token), `completion` (decoded with special tokens kept, when there is a tokenizer) and `finish_reason`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from typing import Any, Sequence

from jaxfin import checkpoint, decode
from jaxfin import errors
from jaxfin.errors import UserError, run_cli

FIELDS = ("input_ids", "messages", "prompt")


def read_prompts(path: str) -> list[tuple[int, dict[str, Any]]]:
    """(line number, JSON object) for each non-blank line; UserError naming path:line for anything else."""
    records = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{n}: not valid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(rec, dict) or not any(k in rec for k in FIELDS):
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
    import jinja2  # transformers renders chat templates with it (not one of its hard dependencies)

    try:
        # return_dict=True: the same BatchEncoding in transformers 4 and 5 (whose default became a dict).
        enc = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
    except (jinja2.TemplateError, ValueError, TypeError, KeyError) as e:
        raise UserError(f"{where}: the chat template failed on these messages: {e}") from None
    return list(enc["input_ids"])


def write_jsonl_atomic(path: str, records: Sequence[dict[str, Any]]) -> None:
    """Writes a temporary file beside `path`, then renames it: readers never see a half-written file."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=".tmp-", suffix=".jsonl")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for rec in records:
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _positive_int(s: str) -> int:
    if not s.isdigit() or int(s) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}")
    return int(s)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = errors.ArgumentParser(prog="python -m jaxfin.generate", description=__doc__.split("\n")[0],
                                epilog="--debug shows the traceback of an error")
    p.add_argument("--model", required=True, help="HF model dir, jaxfin checkpoint or training workdir")
    p.add_argument("--prompts", required=True, help="input JSONL: input_ids | prompt | messages per line")
    p.add_argument("--out", required=True, help="output JSONL (overwritten)")
    p.add_argument("--max-new-tokens", type=_positive_int, default=256)
    p.add_argument("--batch-size", type=_positive_int, default=8)
    p.add_argument("--dtype", choices=("bfloat16", "float32"), default=None,
                   help="params and compute dtype (default: the checkpoint's)")
    return p.parse_args(argv)


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    records = read_prompts(args.prompts)  # before loading the model: bad input fails in a second
    model = checkpoint.load_model(args.model, dtype=args.dtype, progress=True)
    tokenizer = model.tokenizer()
    cfg = model.cfg
    prompts = []
    for n, rec in records:
        where = f"{args.prompts}:{n}"
        ids = tokenize(rec, tokenizer, where)
        if not ids:
            raise UserError(f"{where}: the prompt has no tokens")
        if not all(0 <= t < cfg.vocab_size for t in ids):
            raise UserError(f"{where}: token id {next(t for t in ids if not 0 <= t < cfg.vocab_size)} is outside "
                            f"the model's vocabulary [0, {cfg.vocab_size})")
        if len(ids) > cfg.max_position_embeddings:
            raise UserError(f"{where}: the prompt has {len(ids)} tokens, more than the model's "
                            f"max_position_embeddings ({cfg.max_position_embeddings})")
        prompts.append(ids)

    lora_scale = model.lora_config.scale if model.lora is not None else 1.0
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
    write_jsonl_atomic(args.out, out)
    print(f"wrote {len(out)} completions to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    run_cli(main)
