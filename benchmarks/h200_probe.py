"""H200 probe for jaxfin: ceilings + one microbenchmark per bottleneck hypothesis, on jaxfin's own functions
where they exist (decoder.attend / attention_masking, matmul.einsum, losses.chunked_cross_entropy).

    python3 benchmarks/h200_probe.py            # writes $OUT/probe.json, prints one line per case
    PROBE_TINY=1 python3 benchmarks/h200_probe.py   # CPU smoke test at toy sizes (cuDNN cases then report errors)
    PROBE_CASES=H2,H4 ...                           # only the cases whose name starts with one of these

H1 attention (model.attention_impl: XLA mask vs the cudnn form is_causal + segment mask, plus cuDNN's ragged
packed layout, which only jax._src exposes), H2 LoRA projection (model.lora_impl f32 with / without dropout vs
compute vs fused), H3 scan over stacked weights at batch 1 (are per-layer weight slices copied?), H4 chunked-CE
backward (train.loss_backward f32 vs compute).
Every case is fwd+bwd where training needs it, random data (never zeros), median of timed runs after warm-up,
and a relative error against the reference path where the math should be equal.
"""
import json, os, statistics, time
import numpy as np
import jax, jax.numpy as jnp

from jaxfin.model import decoder, matmul
from jaxfin.model.config import ModelConfig
from jaxfin.training import losses

TINY = bool(os.environ.get("PROBE_TINY"))
CASES = tuple(c for c in os.environ.get("PROBE_CASES", "").split(",") if c)
OUT = os.environ.get("OUT", "/tmp")
RES: dict = {"jax": jax.__version__, "devices": [str(d) for d in jax.devices()]}
KEY = [jax.random.key(int(time.time()))]


def rnd(shape, dtype=jnp.bfloat16, scale=1.0):
    KEY[0], k = jax.random.split(KEY[0])
    return (scale * jax.random.normal(k, shape, jnp.float32)).astype(dtype)


def timed(f, *args, n=10, warm=2):
    for _ in range(warm):
        jax.block_until_ready(f(*args))
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        jax.block_until_ready(f(*args))
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def relerr(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def case(name, fn):
    if CASES and not name.startswith(CASES):
        return
    t = time.perf_counter()
    try:
        RES[name] = fn()
    except Exception as e:  # one failing case must not stop the others
        RES[name] = {"error": f"{type(e).__name__}: {str(e)[:400]}"}
    RES[name]["wall_s"] = round(time.perf_counter() - t, 1)
    print(name, json.dumps(RES[name]), flush=True)
    with open(os.path.join(OUT, "probe.json"), "w") as f:
        json.dump(RES, f, indent=1)


# ---- ceilings (METHOD.md: measure both once) ----
def ceilings():
    n = 512 if TINY else 8192
    a, b = rnd((n, n)), rnd((n, n))
    t = timed(jax.jit(lambda a, b: a @ b), a, b)
    x = rnd((1 << (20 if TINY else 29),), jnp.float32)  # 2 GiB f32
    tc = timed(jax.jit(lambda x: x * 1.0001 + 1), x)
    return {"bf16_matmul_tflops": 2 * n**3 / t / 1e12, "copy_gbps": 2 * x.nbytes / tc / 1e9}


# ---- H3: scan over stacked weights, batch-1 GEMV (decode's access pattern) ----
def scan_slices():
    L, D, F = (4, 256, 512) if TINY else (32, 4096, 14336)
    W = rnd((L, D, F), scale=0.02)
    ws = [W[i] for i in range(L)]
    h0 = rnd((1, D))
    jax.block_until_ready(ws)

    def body(h, w):  # the carry depends on every output column, so XLA cannot narrow the weight read
        y = h @ w
        return (h * (1 + 1e-3 * jnp.tanh(jnp.sum(y.astype(jnp.float32))))).astype(h.dtype), None

    out = {"weight_gb": W.nbytes / 1e9}
    for tag, opts in [("default", {}), ("ds_fusion", {"xla_gpu_enable_dynamic_slice_fusion": True}),
                      ("no_triton_gemm", {"xla_gpu_enable_triton_gemm": False})]:
        try:
            f = jax.jit(lambda W, h: jax.lax.scan(body, h, W)[0], compiler_options=opts or None)
            out[f"scan_{tag}_gbps"] = W.nbytes / timed(f, W, h0) / 1e9
        except Exception as e:
            out[f"scan_{tag}_error"] = str(e)[:200]

    def unrolled(ws, h):
        for w in ws:
            h = body(h, w)[0]
        return h

    out["unrolled_list_gbps"] = W.nbytes / timed(jax.jit(unrolled), ws, h0) / 1e9
    return out


# ---- H1: attention, one layer fwd+bwd, packed rows as jaxfin.profile.random_batch makes them ----
def segments(B, T, seed=0):
    rng = np.random.default_rng(seed)
    seg = np.zeros((B, T), np.int32)
    lens = []
    for b in range(B):
        s, start, row = 1, 0, []
        while start < T:
            n = min(T - start, int(rng.integers(max(T // 8, 1), max(T // 2, 1) + 1)))
            seg[b, start:start + n] = s
            row.append(n)
            start, s = start + n, s + 1
        lens.append(row)
    return seg, lens


def attention(B, T):
    N, K, H = (4, 2, 64) if TINY else (32, 8, 128)
    q, k, v, do = rnd((B, T, N, H)), rnd((B, T, K, H)), rnd((B, T, K, H)), rnd((B, T, N, H))
    seg_np, lens = segments(B, T)
    seg = jnp.asarray(seg_np)
    same = (seg[:, :, None] == seg[:, None, :])[:, None]
    full = same & jnp.tril(jnp.ones((T, T), bool))[None, None]  # what model.attention_mask builds
    M = max(len(r) for r in lens)
    seqlen = np.full((B, M), -1, np.int32)
    offs = np.full((B, M + 1), -1, np.int32)
    for b, r in enumerate(lens):
        seqlen[b, :len(r)] = r
        offs[b, :len(r) + 1] = np.concatenate([[0], np.cumsum(r)])
    aux = {"full": full, "same": same, "seqlen": jnp.asarray(seqlen), "offs": jnp.asarray(offs)}
    dpa = jax.nn.dot_product_attention

    def packed(q, k, v, a):
        from jax._src.cudnn import fused_attention_stablehlo as fa
        return fa.dot_product_attention(q, k, v, q_seqlen=a["seqlen"], kv_seqlen=a["seqlen"], q_offsets=a["offs"],
                                        kv_offsets=a["offs"], scale=H ** -0.5, mask_type=fa.MaskType.CAUSAL)

    cfg = ModelConfig(vocab_size=8, hidden_size=N * H, intermediate_size=8, num_layers=1, num_heads=N,
                      num_kv_heads=K, head_dim=H)
    pos = jnp.zeros((B, T), jnp.int32)
    # Only arrays travel as jit arguments (Attention's is_causal is a Python bool, rebuilt inside)
    aux["xla_mask"] = decoder.attention_masking(pos, seg, None, cfg.replace(attention_impl="xla")).mask
    aux["seg_mask"] = decoder.attention_masking(pos, seg, None, cfg.replace(attention_impl="cudnn")).mask
    impls = {  # every array is a jit argument: closed-over arrays would become HLO constants
        "xla_mask (attention_impl=xla, the reference)": lambda q, k, v, a: decoder.attend(
            q, k, v, decoder.Attention(a["xla_mask"], False), cfg.replace(attention_impl="xla")),
        "cudnn_mask (the cudnn option before issue 17: dense bias, NO_MASK)": lambda q, k, v, a: dpa(
            q, k, v, mask=a["full"], implementation="cudnn"),
        "cudnn causal+segmask (attention_impl=cudnn now)": lambda q, k, v, a: decoder.attend(
            q, k, v, decoder.Attention(a["seg_mask"], True), cfg.replace(attention_impl="cudnn")),
        "cudnn_packed_causal (ragged offsets, jax._src only)": packed,
        "cudnn_causal_only (ignores packing)": lambda q, k, v, a: dpa(q, k, v, is_causal=True, implementation="cudnn"),
    }
    ref = None
    out = {"shape": [B, T, N, K, H]}
    for name, f in impls.items():
        def loss(q, k, v, a, do, f=f):
            o = f(q, k, v, a)
            return jnp.sum(o.astype(jnp.float32) * do.astype(jnp.float32)), o
        g = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))
        try:
            (_, o), grads = g(q, k, v, aux, do)
            if ref is None:
                ref = (o, grads)
            out[name] = {"fwd_bwd_ms": 1e3 * timed(g, q, k, v, aux, do), "out_relerr": relerr(o, ref[0]),
                         "dq_relerr": relerr(grads[0], ref[1][0])}
        except Exception as e:
            out[name] = {"error": str(e)[:200]}
    return out


# ---- H2: one adapted projection (gate_proj shape, and the q/k/v group for fused), frozen W, grads for x, A, B ----
def lora():
    R, s, p = 16, 2.0, 0.05
    BT, Din, Dout = (1024, 256, 512) if TINY else (16384, 4096, 14336)
    x, W, g = rnd((BT, Din)), rnd((Din, Dout), scale=0.02), rnd((BT, Dout))
    A, Bm = rnd((Din, R), jnp.float32, 0.02), rnd((R, Dout), jnp.float32, 0.02)

    def path(impl):  # decoder._lora_a + _dense for one projection, 2-D
        def f(x, A, Bm, W, key, dropout):
            y = x @ W
            dt = jnp.float32 if impl == "f32" else x.dtype
            xin = x.astype(dt)
            if dropout:
                keep = jax.random.bernoulli(key, 1 - p, xin.shape)
                xin = jnp.where(keep, xin / (1 - p), 0.0)
            xa = matmul.einsum("TD,DR->TR", xin, A, dt)
            return y + (matmul.einsum("TR,RO->TO", xa, Bm, dt) * s).astype(y.dtype)
        return f

    def base(x, A, Bm, W, key, dropout):
        return x @ W

    out = {}
    for name, f, dropout, impl in [("base_only", base, False, None), ("f32_dropout0", path("f32"), False, None),
                                   ("f32_dropout_threefry", path("f32"), True, "threefry2x32"),
                                   ("f32_dropout_rbg", path("f32"), True, "unsafe_rbg"),
                                   ("compute_dropout0", path("compute"), False, None),
                                   ("compute_dropout_threefry", path("compute"), True, "threefry2x32")]:
        key = jax.random.key(1, impl=impl) if impl else jax.random.key(1)

        def loss(x, A, Bm, W, g, key, f=f, d=dropout):
            return jnp.sum(f(x, A, Bm, W, key, d).astype(jnp.float32) * g.astype(jnp.float32))
        h = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
        out[name] = {"fwd_bwd_ms": 1e3 * timed(h, x, A, Bm, W, g, key)}
    ref = jax.jit(path("f32"), static_argnums=5)(x, A, Bm, W, None, False)
    out["compute_vs_f32_relerr"] = relerr(jax.jit(path("compute"), static_argnums=5)(x, A, Bm, W, None, False), ref)

    # q/k/v: three A products of one input (separate, compute) vs one [D, 3R] product (fused), A grads included
    As = [rnd((Din, R), jnp.float32, 0.02) for _ in range(3)]
    gq = rnd((BT, 3 * R), jnp.float32)

    def separate(x, As):
        return jnp.concatenate([matmul.einsum("TD,DR->TR", x, a, x.dtype) for a in As], -1)

    def fused(x, As):
        return matmul.einsum("TD,DR->TR", x, jnp.concatenate(As, -1), x.dtype)

    for name, f in (("qkv_down_separate", separate), ("qkv_down_fused", fused)):
        h = jax.jit(jax.grad(lambda x, As, f=f: jnp.sum(f(x, As) * gq), argnums=(0, 1)))
        out[name] = {"fwd_bwd_ms": 1e3 * timed(h, x, As)}
    return out


# ---- H4: one cross-entropy chunk (losses.chunked_cross_entropy), grad w.r.t. h ----
def ce(chunk):
    B, D, V = (2, 256, 4096) if TINY else (16, 4096, 128256)
    h, w = rnd((B, chunk, D)), rnd((V, D), scale=0.02)
    t = jnp.asarray(np.random.default_rng(0).integers(0, V, (B, chunk)), jnp.int32)
    m = jnp.ones((B, chunk), jnp.float32)

    out = {"chunk": chunk}
    for backward in losses.LOSS_BACKWARDS:
        g = jax.jit(jax.value_and_grad(lambda h, w, t, m, b=backward: losses.chunked_cross_entropy(
            h, w, t, m, chunk, backward=b)))
        try:
            val, dh = g(h, w, t, m)
            out[f"loss_backward_{backward}"] = {"fwd_bwd_ms": 1e3 * timed(g, h, w, t, m), "loss": float(val)}
        except Exception as e:
            out[f"loss_backward_{backward}"] = {"error": str(e)[:200]}
    return out


if __name__ == "__main__":
    case("ceilings", ceilings)
    case("H3_scan_slices_batch1", scan_slices)
    case("H1_attention_B16_T1024", lambda: attention(*((2, 256) if TINY else (16, 1024))))
    case("H1_attention_B8_T2048", lambda: attention(*((1, 512) if TINY else (8, 2048))))
    case("H2_lora_gate_proj", lora)
    case("H4_ce_chunk128", lambda: ce(128))
    case("H4_ce_chunk512", lambda: ce(512))
