"""Throughput of the real train step and decoder at a config's model shape, with random weights: tokens/s, MFU,
decode roofline fraction, and transformers + peft on the same device in the same run (`python -m jaxfin.profile`).

Order of a run: the peer (perf/torch_peer.py, a child process, started before JAX allocates anything), then the
train step (training/step.jit_train_step with losses.sft_loss: LoRA + NEFTune per the config, compiled once,
warm-up, then --steps timed steps, median), the decoder (decode.prefill + decode.decode_loop at batch 1 and 32),
and last the memory bandwidth (a large on-device elementwise copy). GPU memory preallocation is off
(XLA_PYTHON_CLIENT_PREALLOCATE=false unless set) so that the peer can run first on an empty device; JAX then grows
its pool on demand.
"""

from __future__ import annotations

import copy
import datetime
import functools
import os
import re
import statistics
import sys
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxfin import config_flags, synthetic
from jaxfin.data import batches
from jaxfin.errors import UserError
from jaxfin.infer import decode
from jaxfin.io import store
from jaxfin.model import params as params_lib, presets
from jaxfin.model.config import ModelConfig
from jaxfin.perf import flops, torch_peer
from jaxfin.training import losses, session, sft, sharding
from jaxfin.training import step as step_lib
TINY_VOCAB = 1024  # len() of the tokenizer jaxfin.synthetic trains (1022 BPE tokens + <think>, </think>)
DECODE_BATCHES = (1, 32)

# --------------------------------------------------------------------------------------------------------------
# The model shape and the data.


def resolve_model(path: str | None) -> tuple[str, dict]:
    """(model name, config.json dict) for config.model.path: None (the tiny synthetic model), any model path
    (io/store.describe; a workdir answers for its base model), or a preset name / hub id of model/presets.py."""
    known = {"tiny": synthetic.hf_config(TINY_VOCAB, bos_id=0, eos_id=1), **presets.PRESETS}
    if path is None:
        return "tiny", known["tiny"]
    if os.path.isdir(path) or store.is_gguf(path):
        shape, hf = store.describe(path)
        same = [k for k, v in known.items() if ModelConfig.from_hf(v).architecture == shape.architecture]
        name = os.path.basename(os.path.normpath(path)).lower().removesuffix(".gguf")
        return (same[0] if same else name), hf
    try:
        hf = presets.hf_config(path)
    except ValueError:
        raise UserError(f"model.path={path!r}: not a directory, nor a preset name or hub id in configs/models.py "
                        f"({', '.join(presets.PRESETS)})") from None
    key = {v.lower(): k for k, v in presets.HUB_IDS.items()}.get(path.lower(), path.lower())
    return key, hf


def random_batch(rng: np.random.Generator, B: int, T: int, vocab: int) -> dict[str, np.ndarray]:
    """Packed rows as jaxfin.data.batches yields them, full: segments of T/8..T/2 tokens (the last takes the rest),
    random ids, loss on every position."""
    seg, pos = np.zeros((B, T), np.int32), np.zeros((B, T), np.int32)
    for b in range(B):
        start, s = 0, 1
        while start < T:
            n = min(T - start, int(rng.integers(max(T // 8, 1), max(T // 2, 1) + 1)))
            seg[b, start:start + n], pos[b, start:start + n] = s, np.arange(n)
            start, s = start + n, s + 1
    return {"tokens_BT": rng.integers(0, vocab, (B, T), dtype=np.int32),
            "targets_BT": rng.integers(0, vocab, (B, T), dtype=np.int32),
            "loss_mask_BT": np.ones((B, T), np.float32), "segment_ids_BT": seg, "positions_BT": pos}


# --------------------------------------------------------------------------------------------------------------
# Measurements.


def _timed(fn: Callable[[], Any], warmup: int, runs: int) -> list[float]:
    """Wall times of `runs` calls of fn (which blocks on its results) after `warmup` untimed calls."""
    times = []
    for i in range(warmup + runs):
        t0 = time.perf_counter()
        fn()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times


def time_train(config: Any, cfg: ModelConfig, batch_np: dict[str, np.ndarray], mesh: Any, opts: Any,
               base: Any = None, trace: str | None = None, static_peak: bool = False) -> dict:
    """The real jitted train step on random base weights (`base`, or new ones): compile time, median step time
    over opts.steps steps after opts.warmup, peak memory (the allocator's peak since the process started, or with
    `static_peak` / on CPU XLA's plan of the step); a jax.profiler trace of 3 more steps into `trace`."""
    B, A, T = config.train.batch_size, config.train.grad_accum_steps, config.train.seq_len
    lcfg = session.lora_config(config)
    tx, schedule = step_lib.make_optimizer(config.optim, opts.warmup + opts.steps + 3)
    sh = sharding.train_shardings(cfg, lcfg, tx, mesh)
    if base is None:
        base = jax.jit(params_lib.init_params, static_argnums=(0, 2), out_shardings=sh.base)(
            cfg, jax.random.key(config.seed), cfg.dtype)
    lora, opt_state = session.init_adapters(cfg, lcfg, tx, sh, config.seed)
    batch = batches.put_batch(batches.micro_batches(batch_np, A), sh.batch, (A, B // A, T))
    loss_fn = functools.partial(losses.sft_loss, cfg=cfg, hp=sft.sft_config(config, lcfg))
    step_fn = step_lib.jit_train_step(loss_fn, tx, schedule, config.seed, sh)
    t0 = time.perf_counter()
    compiled = step_fn.lower(lora, opt_state, base, batch, np.int32(0)).compile()
    compile_s = time.perf_counter() - t0
    state = {"lora": lora, "opt": opt_state, "n": 0, "metrics": None}

    def step() -> None:
        state["lora"], state["opt"], state["metrics"] = compiled(state["lora"], state["opt"], base, batch,
                                                                 np.int32(state["n"]))
        state["n"] += 1
        jax.block_until_ready((state["lora"], state["opt"], state["metrics"]))

    times = _timed(step, opts.warmup, opts.steps)
    if trace:
        with jax.profiler.trace(trace):
            _timed(step, 0, 3)
    stats = [d.memory_stats() or {} for d in mesh.devices.flat]
    if not static_peak and all("peak_bytes_in_use" in s for s in stats):  # since the process started
        peak = max(s["peak_bytes_in_use"] for s in stats)
        peak_source = "measured: memory_stats() peak_bytes_in_use, max over devices"
    else:  # CPU (no allocator statistics) or a variant (the process peak covers earlier runs): XLA's plan
        m = compiled.memory_analysis()
        peak = m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes
        peak_source = "estimate: XLA memory_analysis of the step (arguments + outputs - aliased + temporaries)"
    dt = statistics.median(times)
    return {"step_time_s": dt, "tokens_per_sec": B * T / dt, "compile_s": compile_s, "peak_bytes": int(peak),
            "peak_bytes_source": peak_source, "loss": float(state["metrics"]["loss"]), "base": base,
            "step_times_s": times}


def time_decode(base: Any, cfg: ModelConfig, batch: int, prompt_len: int, new_tokens: int, runs: int) -> dict:
    """decode.prefill + decode.decode_loop (what decode.greedy runs per batch) producing exactly `new_tokens` per
    row (no stop ids): tokens/s with the prefill, and the per-step rate of the loop alone; medians."""
    T, n_bucket = decode.bucket(prompt_len, 16), decode.bucket(new_tokens, 16)
    rng = np.random.default_rng(batch)
    tokens = np.zeros((batch, T), np.int32)
    tokens[:, :prompt_len] = rng.integers(0, cfg.vocab_size, (batch, prompt_len))
    lengths, done = np.full(batch, prompt_len, np.int32), np.zeros(batch, bool)
    stop = np.full(8, decode.PAD_ID, np.int32)  # no stop id: every row runs the full length
    prefill = jax.jit(decode.prefill, static_argnames=("cfg", "cache_len"))
    loop = jax.jit(decode.decode_loop, static_argnames=("cfg", "n_bucket"))
    scale = jnp.float32(1.0)
    parts: list[tuple[float, float]] = []
    for i in range(runs + 1):  # the first run compiles
        t0 = time.perf_counter()
        first, cache = prefill(base, None, scale, tokens, lengths, cfg=cfg, cache_len=T + n_bucket)
        first.block_until_ready()
        t1 = time.perf_counter()
        loop(base, None, scale, cache, first, lengths, done, jnp.int32(new_tokens), stop, cfg=cfg,
             n_bucket=n_bucket).block_until_ready()
        if i:
            parts.append((t1 - t0, time.perf_counter() - t1))
    total = statistics.median(p + q for p, q in parts)
    loop_s = statistics.median(q for _, q in parts)
    return {"tokens_per_sec": batch * new_tokens / total,
            "step_tokens_per_sec": batch * (new_tokens - 1) / loop_s if new_tokens > 1 else None}


def measure_bandwidth(device: Any, nbytes: int, runs: int = 10) -> float:
    """Bytes/s of x + 1 over a float32 array of `nbytes` on `device` (reads and writes nbytes each), median."""
    x = jax.device_put(np.zeros(nbytes // 4, np.float32), device)
    add = jax.jit(lambda a: a + 1)  # not a bare copy: XLA would alias or elide it
    return 2 * x.nbytes / statistics.median(_timed(lambda: add(x).block_until_ready(), 2, runs))


# --------------------------------------------------------------------------------------------------------------
# The run.


def config_string(argv: Sequence[str]) -> str:
    """The --config FILE and --config.key=value arguments, as given."""
    out, args = [], list(argv)
    while args:
        a = args.pop(0)
        if a == "--config" or (a.startswith("--config.") and "=" not in a):
            out += [a, args.pop(0)] if args else [a]
        elif a.startswith("--config"):
            out.append(a)
    return " ".join(out)


def result_path(out: str, device: str, model: str) -> str:
    """--out as given, or OUT/<device>_<model>.json when it names a folder (ends with / or exists)."""
    if not (out.endswith(("/", os.sep)) or os.path.isdir(out)):
        return out
    return os.path.join(out, f"{re.sub(r'[^a-z0-9.]+', '-', device.lower()).strip('-')}_{model}.json")


def output_path(config: Any, opts: Any) -> str:
    """The file --out names for this config and device (result_path), known before anything is timed."""
    devices = jax.devices()[: opts.devices or None]
    return result_path(opts.out, devices[0].device_kind, resolve_model(config.model.path)[0])


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def peer_spec(config: Any, cfg: ModelConfig, lcfg: Any, opts: Any) -> dict:
    """What jaxfin.torch_peer needs to run the same step and decoding (the batch travels beside it)."""
    return {"dtype": cfg.dtype, "seed": config.seed, "lora": lcfg.to_dict(),
            "neftune_alpha": float(config.neftune.alpha), "gradient_checkpointing": cfg.remat != "none",
            "optim": {k: float(config.optim[k]) for k in ("lr", "b1", "b2", "weight_decay", "clip_norm")},
            "grad_accum": config.train.grad_accum_steps, "warmup": opts.warmup, "steps": opts.steps,
            "decode": {"prompt_len": opts.decode_prompt_len, "new_tokens": opts.decode_new_tokens,
                       "runs": opts.decode_runs, "batches": list(DECODE_BATCHES)}}


def parse_variant(text: str) -> list[tuple[str, str]]:
    """--variant "model.remat=proj,train.loss_backward=f32" -> [(key, value), ...]: config keys as after --config.
    (the prefix may be given); a comma starts a new pair only where KEY= follows, so values may hold commas."""
    pairs = []
    for part in re.split(r",(?=\s*[A-Za-z_][\w.]*=)", text):
        key, eq, value = part.partition("=")
        key = key.strip().removeprefix("--").removeprefix("config.")
        if not eq or not key:
            raise UserError(f"--variant {text!r}: expected KEY=VALUE[,KEY=VALUE...] (config keys, e.g. model.remat=proj)")
        pairs.append((key, value.strip()))
    return pairs


def variant_config(config: Any, pairs: list[tuple[str, str]]) -> Any:
    """A copy of `config` with the variant's overrides applied (unknown keys and bad values are UserErrors)."""
    out = copy.deepcopy(config)  # keeps the field types (placeholders) that the overrides parse by
    for key, value in pairs:
        config_flags.override(out, key, value)
    return out


def check_variants(config: Any, variants: Sequence[str]) -> list[tuple[str, Any, ModelConfig]]:
    """(text, config, ModelConfig) per --variant, after every check: unknown keys and bad values are UserErrors."""
    out = []
    for text in variants:
        vconfig = variant_config(config, parse_variant(text))
        out.append((text, vconfig, model_config(vconfig, resolve_model(vconfig.model.path)[1])))
    return out


def model_config(config: Any, hf: dict) -> ModelConfig:
    """The ModelConfig of the config.json `hf` with the config's runtime fields, after the same checks as training."""
    session.check_model_keys(config)
    sft.sft_config(config, session.lora_config(config))  # the loss keys (train.loss_backward, neftune.length)
    return ModelConfig.from_hf(hf, dtype=config.model.dtype, remat=config.model.remat,
                               attention_impl=config.model.attention_impl, lora_impl=config.model.lora_impl)


def measure_train(config: Any, cfg: ModelConfig, mesh: Any, opts: Any, platform: str, kind: str, base: Any = None,
                  trace: str | None = None, static_peak: bool = False) -> tuple[dict, dict, Any]:
    """(the issue's train section, its details, the base params) for one config; time_train does the work."""
    B, A, T = config.train.batch_size, config.train.grad_accum_steps, config.train.seq_len
    lcfg = session.lora_config(config)
    if A < 1 or B % A or (B // A) % sharding.batch_divisor(mesh):
        raise UserError(f"train.batch_size={B}, train.grad_accum_steps={A}: micro-batches must split evenly "
                        f"over the {sharding.batch_divisor(mesh)} data x fsdp devices")
    batch_np = random_batch(np.random.default_rng(config.seed), B, T, cfg.vocab_size)
    print(f"train step: batch {B} x seq {T} (grad accum {A}), LoRA r={lcfg.rank} on {len(lcfg.targets)} "
          f"projections ({cfg.lora_impl}), dropout {lcfg.dropout}, NEFTune alpha {config.neftune.alpha}, {cfg.dtype}, "
          f"remat {cfg.remat}, attention {cfg.attention_impl or 'xla'}, loss backward {config.train.loss_backward}, "
          f"{mesh.devices.size} x {kind}", file=sys.stderr)
    tr = time_train(config, cfg, batch_np, mesh, opts, base=base, trace=trace, static_peak=static_peak)
    base = tr.pop("base")
    fpt, formula = flops.flops_per_token(cfg, lcfg.targets, lcfg.rank, T)
    peak = flops.peak_flops(kind) if platform != "cpu" else None
    mfu = fpt * tr["tokens_per_sec"] / (peak * mesh.devices.size) if peak else None
    train = {"tokens_per_sec": tr["tokens_per_sec"], "mfu": mfu, "step_time_s": tr["step_time_s"],
             "peak_bytes": tr["peak_bytes"], "compile_s": tr["compile_s"]}
    details = {"flops_per_token": fpt, "flops_formula": formula, "peak_flops_per_device": peak,
               "train": {"peak_bytes_source": tr["peak_bytes_source"], "loss": tr["loss"], "steps": opts.steps,
                         "warmup": opts.warmup, "batch_size": B, "grad_accum_steps": A, "seq_len": T,
                         "lora": lcfg.to_dict(), "neftune_alpha": float(config.neftune.alpha), "dtype": cfg.dtype,
                         "remat": cfg.remat, "attention_impl": cfg.attention_impl, "lora_impl": cfg.lora_impl,
                         "loss_backward": config.train.loss_backward, "loss_chunk": config.train.loss_chunk,
                         "step_times_s": tr["step_times_s"]}}
    return train, details, base


def _attention_note(cfg: ModelConfig, platform: str) -> list[str]:
    if cfg.attention_impl == "cudnn" and platform != "gpu":
        return [f"model.attention_impl=cudnn on {platform}: XLA ran, with the same masking (cuDNN needs an NVIDIA "
                f"GPU)"]
    return []


def run(config: Any, opts: Any, config_string: str, on_update: Callable[[dict], None] | None = None) -> dict:
    """Everything `main` prints and writes, as the --out JSON dict: the issue's schema plus "details", "notes" and
    "variants" (one entry per opts.variants: the train step with those overrides, beside the config's).
    `on_update(result)` is called after the config's measurements and after each variant."""
    name, hf = resolve_model(config.model.path)
    cfg = model_config(config, hf)
    variants = check_variants(config, opts.variants)
    if opts.devices > len(jax.devices()):
        raise UserError(f"--devices {opts.devices}: only {len(jax.devices())} devices are visible")
    devices = jax.devices()[: opts.devices or None]
    kind, platform = devices[0].device_kind, devices[0].platform
    mesh = sharding.make_mesh(config.mesh.to_dict(), devices)
    lcfg = session.lora_config(config)
    B, T = config.train.batch_size, config.train.seq_len
    batch_np = random_batch(np.random.default_rng(config.seed), B, T, cfg.vocab_size)
    notes: list[str] = _attention_note(cfg, platform)

    peer, peer_detail = None, None
    if opts.skip_peer:
        notes.append("peer skipped (--skip-peer)")
    else:
        spec = {**peer_spec(config, cfg, lcfg, opts), "hf_config": hf}
        peer_detail, note = torch_peer.launch(spec, batch_np, platform)
        notes += [note] if note else []
        if peer_detail:
            keys = ["train_tokens_per_sec"] + [f"decode_batch_{b}_tokens_per_sec" for b in DECODE_BATCHES]
            peer = {k: peer_detail[k] for k in keys}
            if len(devices) > 1:
                notes.append(f"the peer ran on one device, jaxfin on {len(devices)}: ratios are not per device")

    print(f"model {name}", file=sys.stderr)
    train, details, base = measure_train(config, cfg, mesh, opts, platform, kind, trace=opts.trace)
    loss = details["train"]["loss"]
    notes += [] if np.isfinite(loss) else [f"train loss {loss}: not finite (random weights too large?)"]
    if platform == "cpu":
        notes.append("mfu null: a CPU has no meaningful bf16 matmul peak")
    elif details["peak_flops_per_device"] is None:
        notes.append(f"mfu null: no bf16 peak known for device kind {kind!r} (add it to jaxfin/flops.py)")

    decode_keys = ["batch_1_tokens_per_sec", "batch_32_tokens_per_sec", "batch_1_roofline_fraction"]
    if opts.skip_decode:
        notes.append("decoding skipped (--skip-decode)")
        decode_section, decode_detail = dict.fromkeys(decode_keys), None
        dec: dict = {}
    else:
        print("decoding at batch " + ", ".join(map(str, DECODE_BATCHES)), file=sys.stderr)
        dec = {b: time_decode(base, cfg, b, opts.decode_prompt_len, opts.decode_new_tokens, opts.decode_runs)
               for b in DECODE_BATCHES}
        wbytes = flops.weight_bytes_per_token(base, cfg)
        bw = measure_bandwidth(devices[0], (64 if platform == "cpu" else 2048) << 20)
        step1 = dec[1]["step_tokens_per_sec"]
        roofline = step1 * wbytes / (bw * len(devices)) if step1 else None
        if roofline and roofline > 1:
            notes.append(f"roofline fraction > 1: the {wbytes / 2**20:.1f} MiB of weights stay in cache between "
                         f"decode steps, so memory bandwidth does not bound this decoder")
        decode_section = dict(zip(decode_keys, (dec[1]["tokens_per_sec"], dec[32]["tokens_per_sec"], roofline)))
        decode_detail = {
            "prompt_len": opts.decode_prompt_len, "new_tokens": opts.decode_new_tokens, "runs": opts.decode_runs,
            "weights": "base only (= merged adapters)",
            **{f"batch_{b}_step_tokens_per_sec": dec[b]["step_tokens_per_sec"] for b in DECODE_BATCHES},
            "weight_bytes_per_token": wbytes, "bandwidth_bytes_per_sec": bw,
            "roofline_formula": "batch-1 decode-loop tokens/s x weight bytes per token / (measured bandwidth x "
                                "devices); bandwidth = 2 x bytes / time of jit(x + 1)"}
    result = {
        "device": kind, "model": name, "config": config_string,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "train": train, "decode": decode_section, "peer": peer,
        "details": {
            "devices": len(devices), "platform": platform, "jax": jax.__version__, **details,
            "decode": decode_detail, "peer": peer_detail,
            "ratios": {"train": _ratio(train["tokens_per_sec"], (peer or {}).get("train_tokens_per_sec")),
                       **{f"decode_batch_{b}": _ratio(dec[b]["tokens_per_sec"] if dec else None,
                                                      (peer or {}).get(f"decode_batch_{b}_tokens_per_sec"))
                          for b in DECODE_BATCHES}},
        },
        "notes": notes,
        "variants": [],
    }
    if on_update:
        on_update(result)

    for text, vconfig, vcfg in variants:
        print(f"variant {text}", file=sys.stderr)
        same_base = vcfg.architecture == cfg.architecture and vcfg.dtype == cfg.dtype
        entry: dict = {"variant": text, "overrides": dict(parse_variant(text))}
        try:
            vtrain, vdetails, _ = measure_train(vconfig, vcfg, mesh, opts, platform, kind,
                                                base=base if same_base else None, static_peak=True)
            entry.update({"train": vtrain, "speedup": _ratio(vtrain["tokens_per_sec"], train["tokens_per_sec"]),
                          "details": vdetails["train"], "notes": _attention_note(vcfg, platform)})
        except UserError:
            raise
        except Exception as e:  # one failing variant (out of memory, an unsupported kernel) must not stop the rest
            entry["error"] = f"{type(e).__name__}: {str(e)[:500]}"
            print(f"variant {text} failed: {entry['error']}", file=sys.stderr)
        result["variants"].append(entry)
        if on_update:
            on_update(result)
    return result


def _fmt(x: float | None, spec: str = ",.1f") -> str:
    return "-" if x is None else format(x, spec)


def table(r: dict) -> str:
    """The human-readable summary of a result dict."""
    d, peer, ratios = r["details"], r["peer"] or {}, r["details"]["ratios"]
    rows = [("train tokens/s", r["train"]["tokens_per_sec"], peer.get("train_tokens_per_sec"), ratios["train"])]
    rows += [(f"decode batch {b} tokens/s", r["decode"][f"batch_{b}_tokens_per_sec"],
              peer.get(f"decode_batch_{b}_tokens_per_sec"), ratios[f"decode_batch_{b}"]) for b in DECODE_BATCHES]
    lines = [f"{r['model']} on {d['devices']} x {r['device']}  ({r['config']})",
             f"{'':28}{'jaxfin':>14}{'transformers+peft':>20}{'ratio':>9}"]
    lines += [f"{name:28}{_fmt(a):>14}{_fmt(b):>20}{_fmt(c, '.2f') + ('x' if c else ''):>9}"
              for name, a, b, c in rows]
    t, dec = r["train"], d["decode"]
    peak = d["peak_flops_per_device"]
    mfu = "null" if t["mfu"] is None else f"{t['mfu']:.1%} of {peak / 1e12:.1f} TFLOP/s dense bf16 per device"
    lines += [
        f"train step {t['step_time_s'] * 1e3:.2f} ms (median of {d['train']['steps']}), compile {t['compile_s']:.1f} s,"
        f" peak {t['peak_bytes'] / 2**30:.3f} GiB [{d['train']['peak_bytes_source']}], loss {d['train']['loss']:.3f}",
        f"MFU {mfu}",
        f"  useful FLOPs/token = {d['flops_formula']}",
    ]
    if dec:
        lines += [
            f"decode: prompt {dec['prompt_len']}, {dec['new_tokens']} new tokens, median of {dec['runs']} runs "
            f"(prefill included); batch-1 loop {_fmt(dec['batch_1_step_tokens_per_sec'])} tokens/s",
            f"batch-1 roofline fraction {_fmt(r['decode']['batch_1_roofline_fraction'], '.3f')} = "
            f"{_fmt(dec['batch_1_step_tokens_per_sec'])} tokens/s x {dec['weight_bytes_per_token']:,} weight bytes / "
            f"{dec['bandwidth_bytes_per_sec'] / 1e9:,.1f} GB/s measured ({dec['roofline_formula']})",
        ]
    for v in r.get("variants", []):
        if "error" in v:
            lines.append(f"variant {v['variant']}: {v['error']}")
            continue
        vt = v["train"]
        vmfu = "" if vt["mfu"] is None else f", MFU {vt['mfu']:.1%}"
        lines.append(f"variant {v['variant']}: {_fmt(vt['tokens_per_sec'])} tokens/s ({_fmt(v['speedup'], '.3f')}x "
                     f"the config's){vmfu}, step {vt['step_time_s'] * 1e3:.2f} ms, compile {vt['compile_s']:.1f} s, "
                     f"planned peak {vt['peak_bytes'] / 2**30:.3f} GiB, loss {v['details']['loss']:.3f}")
        lines += [f"  note: {n}" for n in v["notes"]]
    return "\n".join(lines + [f"note: {n}" for n in r["notes"]])
