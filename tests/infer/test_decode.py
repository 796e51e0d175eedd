"""Greedy decoder vs transformers `generate(do_sample=False)`, stop ids, bucketing/compile counts, LoRA."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from jaxfin.errors import UserError
from jaxfin.infer import decode
from jaxfin.io.hf import params_from_state_dict
from jaxfin.model.config import ModelConfig
from jaxfin.model.decoder import forward


NEW = 48
LENGTHS = [1, 64, 5, 33, 17, 2, 48, 9]  # one batch mixing prompt lengths 1..64
COMMON = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, head_dim=24, max_position_embeddings=4096)


def _hf_model(kind: str) -> transformers.PreTrainedModel:
    """Tiny random model; every tensor random (norms around 1). Weight std 0.3 gives logits of size ~10 whose
    top-2 gap stays > 1e-3 over all steps below (asserted; measured 1.6e-3 to 5.9e-3), 20-80x the f32 logit
    difference to transformers along these sequences (measured 3.6e-5 to 7.6e-5)."""
    if kind == "llama":
        rope = dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                    original_max_position_embeddings=64)  # decode runs to position 111: past the original 64
        m = transformers.LlamaForCausalLM(transformers.LlamaConfig(**COMMON, rope_theta=500000.0, rope_scaling=rope))
    elif kind == "qwen2":
        m = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**COMMON, tie_word_embeddings=True))
    else:
        rope = dict(rope_type="yarn", factor=4.0, original_max_position_embeddings=64)
        m = transformers.Qwen3ForCausalLM(transformers.Qwen3Config(**COMMON, rope_scaling=rope))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in m.named_parameters():
            is_norm = "norm" in name
            p.copy_(torch.randn(p.shape, generator=g) * (0.2 if is_norm else 0.3) + (1.0 if is_norm else 0.0))
    m.generation_config.eos_token_id = None
    return m.eval()


def _hf_generate(m, prompt: list[int], eos: list[int] | None = None) -> tuple[list[int], float]:
    """transformers greedy continuation of one unbatched prompt, and the smallest top-2 logit gap on the way."""
    with torch.no_grad():
        out = m.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                         max_new_tokens=NEW, do_sample=False, eos_token_id=eos, pad_token_id=0,
                         output_scores=True, return_dict_in_generate=True)
    top2 = torch.stack(out.scores)[:, 0].topk(2, dim=-1).values
    return out.sequences[0, len(prompt):].tolist(), float((top2[:, 0] - top2[:, 1]).min())


@pytest.fixture(scope="module")
def prompts() -> list[list[int]]:
    rs = np.random.RandomState(1)
    return [rs.randint(0, 128, n).tolist() for n in LENGTHS]


@pytest.fixture(scope="module")
def family(prompts):
    """kind -> (hf model, cfg, params, transformers' greedy tokens per prompt, smallest top-2 logit gap); lazy."""
    built = {}

    def get(kind: str) -> tuple:
        if kind not in built:
            m = _hf_model(kind)
            cfg = ModelConfig.from_hf(m.config.to_dict())
            state = {k: v.numpy() for k, v in m.state_dict().items()}
            params = jax.tree.map(jnp.asarray, params_from_state_dict(state, cfg))
            refs, gaps = zip(*(_hf_generate(m, p) for p in prompts))
            built[kind] = m, cfg, params, list(refs), min(gaps)
        return built[kind]

    return get


@pytest.mark.parametrize("kind", ["llama", "qwen2", "qwen3"])
def test_greedy_matches_transformers(kind, prompts, family):
    m, cfg, params, refs, gap = family(kind)
    assert gap > 1e-3, f"fixture has near-tied logits (gap {gap}): greedy comparison would be flaky"
    out = decode.greedy(params, cfg, prompts, max_new_tokens=NEW, stop_ids=[], batch_size=8)
    assert [c.token_ids for c in out] == refs
    assert all(c.finish_reason == "length" and len(c.token_ids) == NEW for c in out)

    # Two stop ids: the first token of row 0 (an empty completion) and one that ends some, not all, other rows.
    a = refs[0][0]
    ends_before_a = lambda t: sum(t in r and a not in r[: r.index(t)] for r in refs)  # noqa: E731
    b = next(t for t in range(cfg.vocab_size) if t != a and 0 < ends_before_a(t) < 5)
    out = decode.greedy(params, cfg, prompts, max_new_tokens=NEW, stop_ids=[a, b], batch_size=8)
    for p, c in zip(prompts, out):
        expected, _ = _hf_generate(m, p, eos=[a, b])
        if expected[-1] in (a, b):
            assert (c.token_ids, c.finish_reason) == (expected[:-1], "stop")
        else:
            assert (c.token_ids, c.finish_reason) == (expected, "length")
    reasons = [c.finish_reason for c in out]
    assert out[0].token_ids == [] and "length" in reasons and reasons.count("stop") >= 2


def test_batches_buckets_and_compile_count(prompts, family, monkeypatch):
    _, cfg, params, refs, _ = family("llama")
    traces = {"prefill": 0, "decode_loop": 0}

    def counted(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            traces[fn.__name__] += 1  # runs only while jax traces (= compiles) a new shape
            return fn(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(decode, "prefill", counted(decode.prefill))
    monkeypatch.setattr(decode, "decode_loop", counted(decode.decode_loop))

    def run(idx, new, batch_size):
        out = decode.greedy(params, cfg, [prompts[i] for i in idx], max_new_tokens=new, stop_ids=[],
                            batch_size=batch_size)
        assert [c.token_ids for c in out] == [refs[i][:new] for i in idx]

    # Batch sizes 3 and 4, prompt lengths <= 16, 10 and 16 new tokens: all in the (4, 16, 16) bucket.
    run([2, 7, 5], new=10, batch_size=4)
    run([0, 7, 2, 5], new=16, batch_size=4)
    assert traces == {"prefill": 1, "decode_loop": 1}
    # All eight prompts in batches of 4, longest first: a (4, 64) batch (new) and a (4, 16) batch (reused);
    # results come back in input order.
    run(range(8), new=10, batch_size=4)
    assert traces == {"prefill": 2, "decode_loop": 2}


def test_lora_changes_tokens_consistently_with_forward(prompts, family):
    """With adapters, each greedy token is the argmax of the uncached forward pass over prompt + completion."""
    _, cfg, params, refs, _ = family("qwen3")
    L, D, R = cfg.num_layers, cfg.hidden_size, 4
    rs = np.random.RandomState(3)
    dims = {"q_proj": (D, cfg.num_heads * cfg.head_dim), "down_proj": (cfg.intermediate_size, D)}
    lora = {"layers": {name: {"a": jnp.asarray(rs.randn(L, i, R) * 0.3, jnp.float32),
                              "b": jnp.asarray(rs.randn(L, R, o) * 0.3, jnp.float32)} for name, (i, o) in dims.items()}}
    sub, new = prompts[:4], 12
    out = decode.greedy(params, cfg, sub, max_new_tokens=new, stop_ids=[], lora=lora, lora_scale=2.0)
    assert [c.token_ids for c in out] != [r[:new] for r in refs[:4]]
    seqs = [p + c.token_ids for p, c in zip(sub, out)]
    tokens = np.zeros((len(seqs), max(map(len, seqs))), np.int32)
    for r, s in enumerate(seqs):
        tokens[r, : len(s)] = s
    argmax = np.asarray(jnp.argmax(forward(params, jnp.asarray(tokens), cfg, lora=lora, lora_scale=2.0), -1))
    for r, (p, c) in enumerate(zip(sub, out)):
        assert argmax[r, len(p) - 1: len(p) - 1 + new].tolist() == c.token_ids


def test_edge_cases(family):
    _, cfg, params, _, _ = family("qwen2")
    assert decode.greedy(params, cfg, [], max_new_tokens=4, stop_ids=[1]) == []
    with pytest.raises(UserError, match="prompt 1 has 4097 tokens"):
        decode.greedy(params, cfg, [[1], [1] * 4097], max_new_tokens=4, stop_ids=[])
    with pytest.raises(UserError, match="prompt 0 has token id 128 outside"):
        decode.greedy(params, cfg, [[1, 128]], max_new_tokens=4, stop_ids=[])
    with pytest.raises(UserError, match="prompt 0 is empty"):
        decode.greedy(params, cfg, [[]], max_new_tokens=4, stop_ids=[])
