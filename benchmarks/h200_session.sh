#!/usr/bin/env bash
# One H200 run for jaxfin (under ten minutes), from the repository root, under a 590 s limit:
#     bash benchmarks/h200_session.sh            # results in $OUT (default /tmp/out)
# with the .whl folder beside the checkout if the image lacks ml_collections (ml_collections-1.1.0 wheel).
# Writes to $OUT (<= 8 files): log.txt env.txt profile.json kernels.csv hlo.tgz train.xplane.pb.gz probe.json
#
# 1. python -m jaxfin.profile at the issue's shape (DeepSeek-R1-Distill-Llama-8B, LoRA r=16 on 7 projections,
#    NEFTune 5, bf16, packed rows of 1024, batch 16): the config as it was before issue 17 (lora_impl=f32,
#    loss_backward=f32, remat full, XLA attention) with the transformers + peft peer, the decoder and a trace,
#    then the issue-17 variants of the train step (--variant; the JSON is rewritten after each, so a cut keeps
#    what ran). 2. per-kernel times of the trace and the optimised HLO. 3. the microbenchmarks (h200_probe.py).
#
# CPU smoke test (tests/perf/test_h200_scripts.py): SMOKE=1 runs the same steps on configs/tiny.py at toy sizes
# without the peer; DRY_RUN=1 prints the commands instead of running them.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
SMOKE=${SMOKE:-}; DRY_RUN=${DRY_RUN:-}
START=$(date +%s); DEADLINE=$((START + ${BUDGET_S:-565}))
left() { echo $((DEADLINE - $(date +%s))); }
run() { if [ -n "$DRY_RUN" ]; then printf '%q ' "$@"; echo; else "$@"; fi; }
exec > >(tee -a "$OUT/log.txt") 2>&1
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

if [ -n "$SMOKE" ]; then
  SHAPE=(--config configs/tiny.py --config.train.seq_len=64 --config.train.batch_size=2 --steps 2 --warmup 1
         --decode-prompt-len 8 --decode-new-tokens 4 --decode-runs 1 --skip-peer --devices 1)
  export PROBE_TINY=1
else
  SHAPE=(--config configs/lora_neftune.py --config.train.seq_len=1024 --config.train.batch_size=16
         --steps 6 --warmup 2 --decode-runs 2)
fi
# The path as it was before issue 17; each variant below changes it (the last two: everything at once).
BEFORE=(--config.model.lora_impl=f32 --config.train.loss_backward=f32 --config.model.remat=full)
FAST="model.lora_impl=fused,train.loss_backward=compute,model.attention_impl=cudnn,model.remat=proj"
FAST0="$FAST,lora.dropout=0"
VARIANTS=(--variant "$FAST0"                                 # all of issue 17, fused A products (dropout 0)
          --variant "$FAST"                                  # all of it at the configs' dropout 0.05
          --variant model.attention_impl=cudnn
          --variant model.remat=proj
          --variant model.remat=attn_proj
          --variant model.lora_impl=compute
          --variant "model.lora_impl=fused,lora.dropout=0"
          --variant lora.dropout=0                           # the dropout masks' cost alone
          --variant train.loss_backward=compute)

# 0. Dependencies and environment (fail fast on API drift)
if [ -z "$DRY_RUN" ] && ! python3 -c "import ml_collections" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "ml_collections wheel missing"; exit 1; }
  export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
if [ -z "$DRY_RUN" ]; then
  { [ -z "$SMOKE" ] && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem,power.limit --format=csv
    python3 - <<'PY'
import jax, optax, torch, transformers, peft
print("jax", jax.__version__, jax.devices())
print("optax", optax.__version__, "torch", torch.__version__, "transformers", transformers.__version__, "peft", peft.__version__)
import jaxfin.profile, jaxfin.train  # noqa: F401  (imports every module the profile needs)
PY
  } > "$OUT/env.txt" 2>&1
  cat "$OUT/env.txt"
  if [ -z "$SMOKE" ]; then
    nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,power.draw,utilization.gpu,memory.used --format=csv -l 10 \
      > /tmp/smi.csv 2>&1 & SMI=$!
  fi
fi

# 1. The profile: the pre-issue-17 path (peer, decoder, trace, HLO dump), then the variants. >= 100 s stay for 2-3.
XLA_FLAGS="${XLA_FLAGS:+$XLA_FLAGS }--xla_dump_to=/tmp/hlo --xla_dump_hlo_module_re=jit_(train_step|decode_loop)" \
  run timeout $(( $(left) > 200 ? $(left) - 100 : 100 )) python3 -m jaxfin.profile "${SHAPE[@]}" "${BEFORE[@]}" \
  --random-weights --out "$OUT/profile.json" --trace /tmp/trace "${VARIANTS[@]}"
echo "profile rc=$? after $(( $(date +%s) - START )) s"

# 2. Per-kernel device time of the 3 traced steps, and the optimised HLO (which GEMMs are f32/TF32, what is fused,
#    whether per-layer weight slices are copied)
[ -n "$DRY_RUN" ] || timeout 60 python3 - <<'PY' || true
import collections, glob, gzip, os, shutil
import jax
out = os.environ.get("OUT", "/tmp/out")
files = glob.glob("/tmp/trace/**/*.xplane.pb", recursive=True)
if files:
    f = max(files, key=os.path.getmtime)
    tot, cnt = collections.Counter(), collections.Counter()
    for plane in jax.profiler.ProfileData.from_file(f).planes:
        if "GPU" not in plane.name and not os.environ.get("SMOKE"):
            continue
        for line in plane.lines:
            for ev in line.events:
                tot[(line.name, ev.name)] += ev.duration_ns
                cnt[(line.name, ev.name)] += 1
    with open(os.path.join(out, "kernels.csv"), "w") as fo:
        fo.write("line,name,total_ms_3_steps,count\n")
        for (ln, nm), ns in tot.most_common(600):
            fo.write(f'"{ln}","{nm[:160]}",{ns / 1e6:.3f},{cnt[(ln, nm)]}\n')
    if os.path.getsize(f) < 80e6:
        with open(f, "rb") as a, gzip.open(os.path.join(out, "train.xplane.pb.gz"), "wb") as b:
            shutil.copyfileobj(a, b)
PY
[ -n "$DRY_RUN" ] || (cd /tmp/hlo 2>/dev/null && tar czf "$OUT/hlo.tgz" ./*after_optimizations.txt) || true

# 3. Microbenchmarks H1-H4 (attention forms, LoRA path, scan weight slices at batch 1, CE backward precision)
OUT="$OUT" run timeout $(( $(left) > 20 ? $(left) : 20 )) python3 benchmarks/h200_probe.py
echo "probe rc=$? after $(( $(date +%s) - START )) s"
[ -z "${SMI:-}" ] || { kill "$SMI" 2>/dev/null; cat /tmp/smi.csv; }
ls -la "$OUT"
sleep 1  # let tee flush log.txt
