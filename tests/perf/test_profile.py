"""jaxfin.profile: the FLOP count on a hand-computed case, the peak table, model resolution, and the whole CLI on
the tiny config (CPU, small shapes; the transformers + peft peer included)."""

import datetime
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxfin import profile as profile_cli
from jaxfin.errors import run_cli, UserError
from jaxfin.model import params as params_lib
from jaxfin.model import presets
from jaxfin.model.config import ModelConfig
from jaxfin.perf import flops, profile


REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCHEMA = {
    "train": {"tokens_per_sec", "mfu", "step_time_s", "peak_bytes", "compile_s"},
    "decode": {"batch_1_tokens_per_sec", "batch_32_tokens_per_sec", "batch_1_roofline_fraction"},
    "peer": {"train_tokens_per_sec", "decode_batch_1_tokens_per_sec", "decode_batch_32_tokens_per_sec"},
}


def small_cfg(**overrides) -> ModelConfig:
    fields = dict(vocab_size=32, hidden_size=8, intermediate_size=16, num_layers=3, num_heads=2, num_kv_heads=1,
                  head_dim=4)
    return ModelConfig(**{**fields, **overrides})


def test_flops_per_token_hand_computed():
    # Per layer: q 8*2*4=64, k 8*1*4=32, v 32, o 64, gate/up/down 8*16=128 each -> 576; 3 layers + lm_head 32*8.
    cfg = small_cfg()
    assert flops.matmul_params(cfg) == 3 * 576 + 256 == 1984
    # LoRA r=2 on q (8 -> 8) and down (16 -> 8): 2*(8+8) + 2*(16+8) = 80 per layer.
    assert flops.lora_params(cfg, ("q_proj", "down_proj"), 2) == 240
    total, formula = flops.flops_per_token(cfg, ("q_proj", "down_proj"), 2, seq_len=10)
    # 4N = 7936; 6 N_lora = 1440; attention 6 * L * T * n_q * H = 6*3*10*2*4 = 1440.
    assert total == 7936 + 1440 + 1440 == 10816
    assert "4·1,984 + 6·240 + 6·3·10·2·4 = 10,816" in formula
    # Tied embeddings: the output projection is still a matmul over V x D; the input lookup still is not.
    assert flops.matmul_params(small_cfg(tie_word_embeddings=True)) == 1984


def test_flops_8b_shape():
    cfg = ModelConfig.from_hf(presets.hf_config("deepseek-r1-distill-llama-8b"))
    n = flops.matmul_params(cfg)
    assert n == 32 * (4096 * 4096 * 2 + 2 * 4096 * 1024 + 3 * 4096 * 14336) + 128256 * 4096  # 7.50e9
    total, _ = flops.flops_per_token(cfg, ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                           "down_proj"), 16, 1024)
    assert 4 * n < total < 4.2 * n


def test_weight_bytes_per_token():
    for tied in (False, True):
        cfg = small_cfg(tie_word_embeddings=tied)
        params = params_lib.init_params(cfg, jax.random.key(0), jnp.bfloat16)
        n = sum(x.size for x in jax.tree.leaves(params))
        # Untied: the input table contributes one row (V - 1 rows unread); tied: it is the output projection.
        assert flops.weight_bytes_per_token(params, cfg) == 2 * (n if tied else n - (32 - 1) * 8)


def test_result_path(tmp_path):
    assert profile.result_path("x.json", "cpu", "tiny") == "x.json"
    assert profile.result_path("res/", "NVIDIA H100 80GB HBM3", "deepseek-r1-distill-llama-8b") == \
        os.path.join("res/", "nvidia-h100-80gb-hbm3_deepseek-r1-distill-llama-8b.json")
    assert profile.result_path(str(tmp_path), "TPU v5 lite", "qwen2.5-1.5b-instruct") == \
        os.path.join(str(tmp_path), "tpu-v5-lite_qwen2.5-1.5b-instruct.json")


@pytest.mark.parametrize("kind,peak", [
    ("NVIDIA H100 80GB HBM3", 989.4e12), ("NVIDIA H100 PCIe", 756e12), ("NVIDIA H200", 989.4e12),
    ("NVIDIA A100-SXM4-80GB", 312e12), ("TPU v4", 275e12), ("TPU v5 lite", 197e12), ("TPU v5", 459e12),
    ("TPU v5p", 459e12), ("TPU v6 lite", 918e12), ("NVIDIA H100 NVL", None), ("cpu", None),
])
def test_peak_flops(kind, peak):
    assert flops.peak_flops(kind) == peak


def test_resolve_model(tmp_path):
    assert profile.resolve_model(None)[0] == "tiny"
    name, hf = profile.resolve_model("deepseek-ai/DeepSeek-R1-Distill-Llama-8B")
    assert name == "deepseek-r1-distill-llama-8b" and hf["hidden_size"] == 4096
    assert profile.resolve_model("qwen3-8b")[0] == "qwen3-8b"
    # An HF directory with a preset's config.json is named after the preset; another shape after its folder.
    for folder, hidden, expected in (("r1", 1536, "deepseek-r1-distill-qwen-1.5b"), ("Mine", 1024, "mine")):
        d = tmp_path / folder
        d.mkdir()
        hf = {**presets.hf_config("deepseek-r1-distill-qwen-1.5b"), "hidden_size": hidden}
        (d / "config.json").write_text(json.dumps(hf))
        assert profile.resolve_model(str(d)) == (expected, hf)
    with pytest.raises(UserError, match="not a directory, nor a preset name"):
        profile.resolve_model("no-such-model")


def test_random_batch_is_packed():
    b = profile.random_batch(np.random.default_rng(0), 3, 40, 50)
    assert set(b) == {"tokens_BT", "targets_BT", "loss_mask_BT", "segment_ids_BT", "positions_BT"}
    seg, pos = b["segment_ids_BT"], b["positions_BT"]
    assert (seg > 0).all() and (np.diff(seg, axis=1) >= 0).all() and seg.max() > 1
    starts = np.concatenate([np.ones((3, 1), bool), np.diff(seg, axis=1) > 0], axis=1)
    assert ((pos == 0) == starts).all()  # positions restart at every segment
    assert b["tokens_BT"].max() < 50 and b["tokens_BT"].dtype == np.int32


def test_cli_end_to_end_on_tiny(tmp_path, capsys):
    out = tmp_path / "results" / "cpu_tiny.json"  # --out FOLDER/ names the file <device>_<model>.json
    out.parent.mkdir()  # an output's folder must exist (it is not created for you)
    argv = ["--config", os.path.join(REPO, "configs", "tiny.py"), "--random-weights",
            "--config.train.batch_size=2", "--config.train.seq_len=64", "--steps", "2", "--warmup", "1",
            "--decode-prompt-len", "8", "--decode-new-tokens", "4", "--decode-runs", "1", "--devices", "1",
            "--out", f"{tmp_path / 'results'}/"]
    assert profile_cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "MFU null" in printed and "4·N + 6·N_lora" in printed and "transformers+peft" in printed
    r = json.loads(out.read_text())
    assert {"device", "model", "config", "date", "train", "decode", "peer"} <= set(r)
    for section, keys in SCHEMA.items():
        assert set(r[section]) == keys, section
    assert r["device"] == "cpu" and r["model"] == "tiny"
    assert r["config"].endswith("--config.train.batch_size=2 --config.train.seq_len=64")
    assert datetime.datetime.fromisoformat(r["date"]).tzinfo is not None
    assert r["train"]["mfu"] is None and any("mfu null" in n for n in r["notes"])
    numbers = [v for k, v in r["train"].items() if k != "mfu"] + list(r["decode"].values()) + list(r["peer"].values())
    assert all(isinstance(v, (int, float)) and v > 0 for v in numbers), numbers
    d = r["details"]
    assert r["train"]["tokens_per_sec"] == pytest.approx(2 * 64 / r["train"]["step_time_s"])
    cfg = ModelConfig.from_hf(profile.resolve_model(None)[1])
    assert d["flops_per_token"] == flops.flops_per_token(cfg, d["train"]["lora"]["targets"], 16, 64)[0]
    # The real step ran: cross-entropy of random targets near ln(V) = ln(1024).
    assert abs(d["train"]["loss"] - math.log(1024)) < 1.0
    assert d["ratios"]["train"] == pytest.approx(r["train"]["tokens_per_sec"] / r["peer"]["train_tokens_per_sec"])


def test_cli_requires_random_weights(capsys):
    with pytest.raises(SystemExit) as e:
        run_cli(profile_cli.main, ["--config", os.path.join(REPO, "configs", "tiny.py")])
    assert e.value.code == 2
    assert "error: --random-weights is required" in capsys.readouterr().err


def test_parse_variant():
    assert profile.parse_variant("model.remat=proj,train.loss_backward=f32") == [
        ("model.remat", "proj"), ("train.loss_backward", "f32")]
    # A comma starts a new pair only before KEY=: values may hold commas; the --config. prefix may be given.
    assert profile.parse_variant("--config.lora.targets=q_proj,v_proj,lora.rank=8") == [
        ("lora.targets", "q_proj,v_proj"), ("lora.rank", "8")]
    with pytest.raises(UserError, match="expected KEY=VALUE"):
        profile.parse_variant("model.remat")


def test_cli_variants_without_peer_and_decoder(tmp_path, capsys):
    """--skip-peer --skip-decode --variant: the config's train step and a variant's (every fast path at once; in
    f32 the same loss), decode and peer null."""
    out = tmp_path / "r.json"
    fast = "model.lora_impl=fused,train.loss_backward=compute,model.attention_impl=cudnn,model.remat=proj"
    argv = ["--config", os.path.join(REPO, "configs", "tiny.py"), "--random-weights", "--config.train.batch_size=2",
            "--config.train.seq_len=32", "--config.model.lora_impl=f32", "--config.train.loss_backward=f32",
            "--steps", "1", "--warmup", "0", "--devices", "1", "--skip-peer", "--skip-decode", "--variant", fast,
            "--out", str(out)]
    assert profile_cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert f"variant {fast}:" in printed
    r = json.loads(out.read_text())
    assert r["peer"] is None and set(r["decode"]) == SCHEMA["decode"] and not any(r["decode"].values())
    assert "decoding skipped (--skip-decode)" in r["notes"] and "peer skipped (--skip-peer)" in r["notes"]
    (v,) = r["variants"]
    assert "error" not in v, v
    assert v["overrides"] == {"model.lora_impl": "fused", "train.loss_backward": "compute",
                              "model.attention_impl": "cudnn", "model.remat": "proj"}
    assert set(v["train"]) == SCHEMA["train"] and v["train"]["tokens_per_sec"] > 0
    assert (v["details"]["lora_impl"], v["details"]["remat"], r["details"]["train"]["lora_impl"]) == (
        "fused", "proj", "f32")
    assert v["details"]["loss"] == pytest.approx(r["details"]["train"]["loss"], rel=1e-5)
    assert any("XLA ran, with the same masking" in n for n in v["notes"])
    assert v["speedup"] == pytest.approx(v["train"]["tokens_per_sec"] / r["train"]["tokens_per_sec"])


def test_cli_bad_variant_fails_before_running(capsys):
    with pytest.raises(SystemExit) as e:
        run_cli(profile_cli.main, ["--config", os.path.join(REPO, "configs", "tiny.py"), "--random-weights",
                                   "--skip-peer", "--variant", "model.lora_impl=bf16"])
    assert e.value.code == 2
    assert "error: model.lora_impl='bf16': choose one of f32, compute, fused" in capsys.readouterr().err
