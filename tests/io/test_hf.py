"""HF directory <-> params: streaming import parity, bit-identical export, and one-line errors for bad input."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file

from hf_models import FAMILIES, forward, reference_logits, save_tokenizer, state_dict_numpy, tiny_model, to_tf4_config

from jaxfin import convert
from jaxfin.errors import run_cli
from jaxfin.io import hf as hf_io
from jaxfin.training import sharding


REPO = Path(__file__).resolve().parents[2]

# How each family is stored: the hub's transformers-4 config for llama/qwen3, transformers-5 for qwen2;
# sharded files (with an index) for llama/qwen3, one model.safetensors for qwen2.
LAYOUT = {"llama": ("tf4", "30KB"), "qwen2": ("tf5", "10MB"), "qwen3": ("tf4", "30KB")}


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    """family -> (transformers model, HF directory with weights, configs and tokenizer files)."""
    out = {}
    for family in FAMILIES:
        model = tiny_model(family)
        d = tmp_path_factory.mktemp(family)
        model.save_pretrained(d, max_shard_size=LAYOUT[family][1])
        if LAYOUT[family][0] == "tf4":
            to_tf4_config(d)
        save_tokenizer(d)
        out[family] = (model, d)
    return out


@pytest.fixture(scope="module")
def loaded(hf_dirs):
    return {family: hf_io.load_hf(d) for family, (_, d) in hf_dirs.items()}


def test_layouts_are_what_we_test(hf_dirs):
    assert (hf_dirs["llama"][1] / "model.safetensors.index.json").is_file()
    assert "rope_scaling" in json.loads((hf_dirs["llama"][1] / "config.json").read_text())
    qwen2 = hf_dirs["qwen2"][1]
    assert (qwen2 / "model.safetensors").is_file()
    assert "rope_parameters" in json.loads((qwen2 / "config.json").read_text())
    assert "lm_head.weight" not in load_file(qwen2 / "model.safetensors")  # tied: no lm_head in the file


@pytest.mark.parametrize("family", FAMILIES)
def test_load_hf_logits_match(hf_dirs, loaded, family):
    model = hf_dirs[family][0]
    params, cfg, hf_config = loaded[family]
    assert hf_config["model_type"] == family
    for offset in (0, 1000):  # 1000: far past original_max_position_embeddings = 32
        tokens = np.random.RandomState(offset).randint(0, cfg.vocab_size, (2, 7))
        positions = np.broadcast_to(np.arange(7) + offset, tokens.shape)
        out = np.asarray(forward(params, jnp.asarray(tokens), cfg, positions_BT=jnp.asarray(positions)))
        assert np.abs(out - reference_logits(model, tokens, positions)).max() < 1e-4


def test_tf4_and_tf5_configs_read_the_same(hf_dirs, tmp_path):
    model, d = hf_dirs["llama"]
    model.save_pretrained(tmp_path)  # transformers 5 writes rope_parameters
    assert "rope_parameters" in json.loads((tmp_path / "config.json").read_text())
    cfg4, cfg5 = hf_io.read_hf_config(d)[1], hf_io.read_hf_config(tmp_path)[1]
    assert cfg4 == cfg5 and cfg4.rope_type == "llama3"


@pytest.mark.parametrize("family", FAMILIES)
def test_export_round_trip_bit_identical(hf_dirs, loaded, tmp_path, family):
    model, d = hf_dirs[family]
    params, cfg, hf_config = loaded[family]
    out = tmp_path / "out"
    hf_io.save_hf(out, params, cfg, hf_config=hf_config, generation_config=hf_io.read_generation_config(d),
                    tokenizer_files=hf_io.tokenizer_files(d), max_shard_bytes=40_000)
    assert (out / "model.safetensors.index.json").is_file() and len(list(out.glob("model-*.safetensors"))) > 1
    assert not list(tmp_path.glob(".out.*"))  # the temp dir was renamed into place
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json",
                 "generation_config.json"):
        assert (out / name).read_bytes() == (d / name).read_bytes(), name
    reloaded, info = transformers.AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert info == {"missing_keys": set(), "unexpected_keys": set(), "mismatched_keys": set(), "error_msgs": []}
    want, got = state_dict_numpy(model), state_dict_numpy(reloaded)
    assert want.keys() == got.keys()
    for name in want:
        assert want[name].dtype == got[name].dtype and np.array_equal(want[name], got[name]), name
    text = "w5 w9 w100"
    assert (transformers.AutoTokenizer.from_pretrained(out)(text).input_ids
            == transformers.AutoTokenizer.from_pretrained(d)(text).input_ids)


def test_bf16_source_round_trips_through_f32(tmp_path):
    """bf16 files: default import keeps bf16; an f32 import exported as bf16 gives the same bits back."""
    model = tiny_model("qwen3", seed=3, dtype=torch.bfloat16)
    model.save_pretrained(tmp_path / "src")
    params, cfg, hf_config = hf_io.load_hf(tmp_path / "src")
    assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.bfloat16)}
    params32, _, _ = hf_io.load_hf(tmp_path / "src", dtype="float32")
    assert {x.dtype for x in jax.tree.leaves(params32)} == {jnp.dtype(jnp.float32)}
    hf_io.save_hf(tmp_path / "out", params32, cfg, hf_config=hf_config, dtype="bfloat16")
    assert json.loads((tmp_path / "out" / "config.json").read_text())["dtype"] == "bfloat16"
    want, got = load_file(tmp_path / "src" / "model.safetensors"), load_file(tmp_path / "out" / "model.safetensors")
    assert want.keys() == got.keys()
    for name in want:
        assert got[name].dtype == ml_dtypes.bfloat16 and np.array_equal(want[name], got[name]), name


def test_sharded_import_matches(hf_dirs, loaded):
    """Streaming into arrays sharded over 8 devices (fsdp x tensor) gives the same values, placed as asked."""
    params, cfg, _ = loaded["llama"]
    shardings = sharding.param_shardings(cfg, sharding.make_mesh({"fsdp": 2, "tensor": 4}, jax.devices()[:8]))
    sharded, _, _ = hf_io.load_hf(hf_dirs["llama"][1], shardings=shardings, dtype="bfloat16")
    specs = {tuple(leaf.sharding.spec) for leaf in jax.tree.leaves(sharded)}
    assert {("tensor", "fsdp"), (None, "tensor", "fsdp")} <= specs  # embed_VD, w_down_FD really split
    for leaf, want, placed in zip(jax.tree.leaves(sharded), jax.tree.leaves(params), jax.tree.leaves(shardings),
                                  strict=True):
        assert leaf.sharding == placed
        np.testing.assert_array_equal(np.asarray(leaf), np.asarray(want).astype(ml_dtypes.bfloat16))


# --------------------------------------------------------------------------------------------------------------
# Errors: one line naming the file and tensor, exit code 2, no traceback.


def _run(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        run_cli(convert.main, argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def _copy(hf_dirs, family, dst) -> Path:
    shutil.copytree(hf_dirs[family][1], dst)
    return dst


def _rewrite(path: Path, edit) -> None:
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


def test_error_missing_tensor(hf_dirs, tmp_path, capsys):
    d = _copy(hf_dirs, "qwen2", tmp_path / "m")
    _rewrite(d / "model.safetensors", lambda t: t.pop("model.layers.1.self_attn.k_proj.bias"))
    msg = _run(["to-jax", "--hf-dir", str(d), "--out", str(tmp_path / "o")], capsys)
    assert "model.safetensors" in msg and "missing tensor model.layers.1.self_attn.k_proj.bias" in msg
    assert not (tmp_path / "o").exists()


def test_tied_model_ignores_a_stray_lm_head(hf_dirs, loaded, tmp_path):
    """Some tied checkpoints still carry lm_head.weight; transformers ties it to the embedding, and so do we."""
    d = _copy(hf_dirs, "qwen2", tmp_path / "m")
    _rewrite(d / "model.safetensors", lambda t: t.update({"lm_head.weight": np.ones((128, 64), np.float32)}))
    params, cfg, _ = hf_io.load_hf(d)
    assert cfg.tie_word_embeddings and "lm_head_VD" not in params
    np.testing.assert_array_equal(np.asarray(params["embed_VD"]), np.asarray(loaded["qwen2"][0]["embed_VD"]))


def test_error_unexpected_tensor(hf_dirs, tmp_path, capsys):
    d = _copy(hf_dirs, "qwen2", tmp_path / "m")
    extra = {"model.layers.0.mlp.experts.0.weight": np.zeros(3, np.float32)}
    _rewrite(d / "model.safetensors", lambda t: t.update(extra))
    msg = _run(["to-jax", "--hf-dir", str(d), "--out", str(tmp_path / "o")], capsys)
    assert "model.safetensors" in msg and "unexpected tensor model.layers.0.mlp.experts.0.weight" in msg


def test_error_wrong_shape(hf_dirs, tmp_path, capsys):
    d = _copy(hf_dirs, "llama", tmp_path / "m")
    config = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**config, "intermediate_size": 80}))
    msg = _run(["to-jax", "--hf-dir", str(d), "--out", str(tmp_path / "o")], capsys)
    assert "mlp.gate_proj.weight has shape [96, 64]" in msg and "[80, 64]" in msg and ".safetensors" in msg


def test_error_truncated_file(hf_dirs, tmp_path, capsys):
    d = _copy(hf_dirs, "qwen2", tmp_path / "m")
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[:-100])
    msg = _run(["to-jax", "--hf-dir", str(d), "--out", str(tmp_path / "o")], capsys)
    assert "model.safetensors: truncated file: tensor" in msg
    (d / "model.safetensors").write_bytes(data[:20])  # cut inside the header
    assert "safetensors header" in _run(["to-jax", "--hf-dir", str(d), "--out", str(tmp_path / "o")], capsys)


def test_error_missing_shard(hf_dirs, tmp_path, capsys):
    d = _copy(hf_dirs, "llama", tmp_path / "m")
    shard = sorted(d.glob("model-*.safetensors"))[1]
    shard.unlink()
    msg = _run(["to-jax", "--hf-dir", str(d), "--out", str(tmp_path / "o")], capsys)
    assert f"lists {shard.name}, which is missing" in msg


def test_error_unsupported_architecture(tmp_path, capsys):
    """A DeepSeek-V3 MoE config (its architectures entry) is refused before any weight is read."""
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(json.dumps({
        "architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3", "hidden_size": 7168,
        "n_routed_experts": 256, "num_hidden_layers": 61, "num_attention_heads": 128, "vocab_size": 129280}))
    msg = _run(["to-jax", "--hf-dir", str(tmp_path / "m"), "--out", str(tmp_path / "o")], capsys)
    assert "config.json" in msg and "DeepseekV3ForCausalLM" in msg


def test_error_pickle_only_and_missing_config(hf_dirs, tmp_path, capsys):
    d = tmp_path / "m"
    d.mkdir()
    shutil.copy(hf_dirs["llama"][1] / "config.json", d)
    (d / "pytorch_model.bin").write_bytes(b"not read")
    msg = _run(["to-jax", "--hf-dir", str(d), "--out", str(tmp_path / "o")], capsys)
    assert "pickle" in msg and "save_pretrained" in msg and "safe_serialization=True" in msg
    (d / "config.json").unlink()
    assert "no config.json" in _run(["to-jax", "--hf-dir", str(d), "--out", str(tmp_path / "o")], capsys)


def test_subprocess_exit_code_and_no_traceback(hf_dirs, tmp_path):
    d = _copy(hf_dirs, "qwen2", tmp_path / "m")
    (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:-8])
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "convert_weights.py"), "to-jax", "--hf-dir", str(d),
                           "--out", str(tmp_path / "o")], capture_output=True, text=True,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "truncated file" in proc.stderr
