"""Adapters out to PyTorch and back: to-peft (PeftModel loads it, no warnings), to-hf --merge-lora, and to-jax
--peft-adapter for adapters PEFT made itself. Parity = same greedy tokens for 32+ steps and logits within 1e-4
(f32 base) across jaxfin with adapters, the PEFT-wrapped transformers model and the merged transformers model."""

import functools
import io
import json
import logging
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import peft
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file

from hf_models import forward, save_tokenizer, tiny_model

from jaxfin import config_flags, convert
from jaxfin.data import batches
from jaxfin.errors import UserError
from jaxfin.infer import decode
from jaxfin.io import peft as peft_io
from jaxfin.io import store, workdir
from jaxfin.model import lora
from jaxfin.model.config import ModelConfig
from jaxfin.model.params import LORA_TARGETS
from jaxfin.training import losses, session, sharding, step


ROOT = Path(__file__).resolve().parents[2]

NEW = 32  # greedy tokens compared
LCFG = lora.LoraConfig(rank=8, alpha=16.0, rslora=False, dropout=0.05)  # all seven projections


def _prompts(seed: int, n: int = 2, length: int = 8) -> np.ndarray:
    return np.random.default_rng(seed).integers(3, 128, (n, length)).astype(np.int32)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("base")
    tiny_model("llama", seed=11).save_pretrained(d)
    save_tokenizer(d)
    return d


def _train_batch(seed: int, B: int = 8, T: int = 24) -> dict[str, np.ndarray]:
    """A fixed cycle of tokens to learn (rotated per row), so the adapters move the greedy path."""
    cycle = np.random.default_rng(99).integers(3, 128, 12)
    starts = np.random.default_rng(seed).integers(0, 12, B)
    tokens = np.stack([np.roll(np.tile(cycle, 3), -s)[:T] for s in starts]).astype(np.int32)
    return {"tokens_BT": tokens[None], "targets_BT": np.roll(tokens, -1, -1)[None],
            "segment_ids_BT": np.ones((1, B, T), np.int32), "loss_mask_BT": np.ones((1, B, T), np.float32),
            "positions_BT": np.broadcast_to(np.arange(T, dtype=np.int32), (1, B, T)).copy()}


@pytest.fixture(scope="module")
def trained(base_dir, tmp_path_factory):
    """A training workdir after 6 real AdamW steps (jaxfin.train's jitted step, lr 2e-2) on the f32 base."""
    base = store.load(base_dir)
    mesh = sharding.make_mesh({"fsdp": -1}, jax.devices()[:1])
    optim = config_flags.load_config(str(ROOT / "configs" / "tiny.py")).optim
    optim.lr, optim.warmup_steps = 2e-2, 1
    steps = 6
    tx, schedule = step.make_optimizer(optim, steps)
    sh = sharding.train_shardings(base.cfg, LCFG, tx, mesh)
    adapters, opt_state = session.init_adapters(base.cfg, LCFG, tx, sh, seed=0)
    hp = losses.SftConfig(lora_scale=LCFG.scale, lora_dropout=LCFG.dropout)
    step_fn = step.jit_train_step(functools.partial(losses.sft_loss, cfg=base.cfg, hp=hp), tx, schedule, 0, sh)
    params = jax.device_put(base.params, sh.base)
    curve = []
    for i in range(steps):
        batch = batches.put_batch(_train_batch(i), sh.batch, (1, 8, 24))
        adapters, opt_state, metrics = step_fn(adapters, opt_state, params, batch, np.int32(i))
        curve.append(float(metrics["loss"]))
    wd = tmp_path_factory.mktemp("workdir")
    workdir.write_run(str(wd), base_model=str(base_dir), base_model_name_or_path="org/tiny-llama",
                      model_config=base.cfg, lora_config=LCFG, config={})
    with workdir.checkpoint_manager(str(wd)) as mngr:
        workdir.save(mngr, steps, adapters, opt_state, steps)
        mngr.wait_until_finished()
    return wd, curve


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    wd, _ = trained
    out = tmp_path_factory.mktemp("out")
    convert.main(["to-peft", "--checkpoint", str(wd), "--out", str(out / "peft")])
    convert.main(["to-hf", "--checkpoint", str(wd), "--out", str(out / "merged"), "--merge-lora"])
    return out / "peft", out / "merged"


class _Captured:
    """Python warnings plus the log records of transformers / peft (transformers' loggers do not propagate)."""

    def __enter__(self) -> "_Captured":
        self.stream = io.StringIO()
        self.handler = logging.StreamHandler(self.stream)
        self.loggers = [logging.getLogger(n) for n in ("transformers", "peft")]
        for lg in self.loggers:
            lg.addHandler(self.handler)
        self.warn_ctx = warnings.catch_warnings(record=True)
        self.records = self.warn_ctx.__enter__()
        warnings.simplefilter("always")
        return self

    def __exit__(self, *exc) -> None:
        self.warn_ctx.__exit__(*exc)
        for lg in self.loggers:
            lg.removeHandler(self.handler)

    def messages(self) -> list[str]:
        # PeftModel.__init__ reads model.is_gradient_checkpointing, which transformers 5 deprecates: a warning
        # between the two libraries' versions that any adapter gets, PEFT's own included.
        out = [str(w.message) for w in self.records if "is_gradient_checkpointing" not in str(w.message)]
        return out + [line for line in self.stream.getvalue().splitlines() if line.strip()]


def _torch_greedy(m: torch.nn.Module, prompts: np.ndarray, n: int) -> np.ndarray:
    """argmax continuation of `n` tokens, full forward per step (no cache, no stopping)."""
    tokens = torch.tensor(prompts, dtype=torch.long)
    with torch.no_grad():
        for _ in range(n):
            nxt = m(tokens).logits[:, -1].argmax(-1, keepdim=True)
            tokens = torch.cat([tokens, nxt], dim=1)
    return tokens[:, prompts.shape[1]:].numpy()


def _torch_logits(m: torch.nn.Module, tokens: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return m(torch.tensor(tokens, dtype=torch.long)).logits.float().numpy()


def _check_parity(model_, torch_models: dict, prompts: np.ndarray, atol: float = 1e-4) -> dict[str, float]:
    """jaxfin greedy (decode.greedy, KV cache) == each torch model's greedy for NEW tokens, with every step's top-2
    logit gap far above the tolerance (no near-ties), and teacher-forced logits within `atol`."""
    scale = model_.lora_config.scale
    ours = decode.greedy(model_.params, model_.cfg, prompts.tolist(), max_new_tokens=NEW, stop_ids=(),
                         lora=model_.lora, lora_scale=scale)
    ours_BN = np.array([c.token_ids for c in ours])
    assert ours_BN.shape == (len(prompts), NEW)
    seq = np.concatenate([prompts, ours_BN], axis=1)
    logits = np.asarray(forward(model_.params, jnp.asarray(seq), model_.cfg, lora=model_.lora, lora_scale=scale))
    path = logits[:, prompts.shape[1] - 1:-1]  # the logits each greedy token was chosen from
    top2 = np.sort(path, axis=-1)[..., -2:]
    gap = float((top2[..., 1] - top2[..., 0]).min())
    assert gap > 20 * atol, f"near-tie on the greedy path (top-2 gap {gap:.2e}); pick other prompts"
    np.testing.assert_array_equal(path.argmax(-1), ours_BN)
    diffs = {"min_top2_gap": gap}
    for name, m in torch_models.items():
        np.testing.assert_array_equal(_torch_greedy(m, prompts, NEW), ours_BN, err_msg=name)
        diffs[name] = float(np.abs(_torch_logits(m, seq) - logits).max())
        assert diffs[name] < atol, (name, diffs[name])
    return diffs


def test_workdir_exports_match_jaxfin(base_dir, trained, exported, tmp_path):
    wd, losses = trained
    peft_dir, merged_dir = exported
    assert losses[-1] < 0.8 * losses[0]  # the adapters learned something
    config = json.loads((peft_dir / peft_io.CONFIG_NAME).read_text())
    assert {k: config[k] for k in ("peft_type", "task_type", "r", "lora_alpha", "lora_dropout", "use_rslora",
                                   "bias", "target_modules", "base_model_name_or_path")} == {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 8, "lora_alpha": 16, "lora_dropout": 0.05,
        "use_rslora": False, "bias": "none", "target_modules": list(LORA_TARGETS),
        "base_model_name_or_path": "org/tiny-llama"}
    tensors = load_file(peft_dir / peft_io.WEIGHTS_NAME)
    assert len(tensors) == 2 * 7 * 2 and all(t.dtype == np.float32 for t in tensors.values())
    assert tensors["base_model.model.model.layers.1.self_attn.k_proj.lora_A.weight"].shape == (8, 64)
    assert tensors["base_model.model.model.layers.1.self_attn.k_proj.lora_B.weight"].shape == (2 * 24, 8)
    assert tensors["base_model.model.model.layers.0.mlp.down_proj.lora_A.weight"].shape == (8, 96)

    with _Captured() as cap:
        peft_model = peft.PeftModel.from_pretrained(
            transformers.AutoModelForCausalLM.from_pretrained(base_dir), str(peft_dir)).eval()
        merged = transformers.AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    assert cap.messages() == []
    # The capture sees what PEFT says about a faulty adapter: the same files less one tensor.
    faulty = tmp_path / "faulty"
    shutil.copytree(peft_dir, faulty)
    save_file({k: v for k, v in tensors.items() if ".0.mlp.up_proj.lora_B" not in k},
              faulty / peft_io.WEIGHTS_NAME, metadata={"format": "pt"})
    with _Captured() as cap:
        peft.PeftModel.from_pretrained(transformers.AutoModelForCausalLM.from_pretrained(base_dir), str(faulty))
    assert any("missing adapter keys" in msg and "0.mlp.up_proj.lora_B" in msg for msg in cap.messages())
    assert peft_model.peft_config["default"].lora_dropout == 0.05
    assert merged.dtype == torch.float32

    ours = store.load(wd)
    assert ours.lora_config == LCFG and ours.base_model_name_or_path == "org/tiny-llama"
    prompts = _prompts(3)
    diffs = _check_parity(ours, {"peft": peft_model, "merged": merged}, prompts)
    base_path = decode.greedy(ours.params, ours.cfg, prompts.tolist(), max_new_tokens=NEW, stop_ids=())
    adapted = decode.greedy(ours.params, ours.cfg, prompts.tolist(), max_new_tokens=NEW, stop_ids=(),
                            lora=ours.lora, lora_scale=LCFG.scale)
    assert [c.token_ids for c in base_path] != [c.token_ids for c in adapted]  # the adapters change the output
    print(f"f32 base: max |logit diff| vs jaxfin: {diffs}")


def test_bf16_base_merged_export(trained, base_dir, tmp_path):
    """A bf16 base: merging rounds W + delta to bf16 once, so the merged model is a few 1e-2 (on this tiny model's
    logits of up to ~4) from the exact sum: less than storing the base in bf16 costs in the first place."""
    wd, _ = trained
    m = store.load(wd, dtype="bfloat16")
    ckpt = tmp_path / "ckpt"
    store.save_model(ckpt, m.params, m.cfg, hf_config=m.hf_config, generation_config=m.generation_config,
                          tokenizer_files=m.tokenizer_files(), lora=m.lora, lora_config=m.lora_config,
                          base_model_name_or_path=m.base_model_name_or_path)
    convert.main(["to-hf", "--checkpoint", str(ckpt), "--out", str(tmp_path / "merged"), "--merge-lora"])
    config = json.loads((tmp_path / "merged" / "config.json").read_text())
    assert config.get("dtype", config.get("torch_dtype")) == "bfloat16"
    merged = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    assert merged.dtype == torch.bfloat16
    # Compare in f32 so that only the rounding of the merged weights differs: jaxfin runs the bf16 base (as f32)
    # with the f32 adapters unmerged.
    ref = store.load(ckpt, dtype="float32")
    seq = np.concatenate([_prompts(3), _prompts(4)], axis=1)
    ours = np.asarray(forward(ref.params, jnp.asarray(seq), ref.cfg, lora=ref.lora, lora_scale=LCFG.scale))
    err = np.abs(_torch_logits(merged.float(), seq) - ours)
    diff, mean = float(err.max()), float(err.mean())
    # The yardstick: what storing the base in bf16 at all changes (the f32 base -> bf16, same adapters unmerged).
    f32 = store.load(base_dir)
    rounding = float(np.abs(np.asarray(forward(f32.params, jnp.asarray(seq), f32.cfg, lora=ref.lora,
                                               lora_scale=LCFG.scale)) - ours).max())
    assert 1e-4 < diff < min(rounding, 5e-2)
    print(f"bf16 base: merged export max |logit diff| {diff:.2e}, mean {mean:.1e} (logits up to "
          f"{np.abs(ours).max():.1f}); the bf16 base itself vs the f32 base: {rounding:.2e}")


def test_to_hf_without_merge_writes_the_base(trained, base_dir, tmp_path, capsys):
    wd, _ = trained
    convert.main(["to-hf", "--checkpoint", str(wd), "--out", str(tmp_path / "hf")])
    assert "adapters, which are not merged" in capsys.readouterr().err
    got, want = load_file(tmp_path / "hf" / "model.safetensors"), load_file(base_dir / "model.safetensors")
    assert got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in want)
    with pytest.raises(UserError, match="has no LoRA adapters"):
        convert.main(["to-hf", "--checkpoint", str(base_dir), "--out", str(tmp_path / "x"), "--merge-lora"])
    with pytest.raises(UserError, match="has no jaxfin LoRA adapters"):
        convert.main(["to-peft", "--checkpoint", str(base_dir), "--out", str(tmp_path / "y")])
    with pytest.raises(UserError, match="not empty"):
        convert.main(["to-peft", "--checkpoint", str(wd), "--out", str(tmp_path / "hf")])
    convert.main(["to-peft", "--checkpoint", str(wd), "--out", str(tmp_path / "hf"), "--overwrite"])
    with pytest.raises(UserError, match="would replace the input"):
        convert.main(["to-peft", "--checkpoint", str(wd / "checkpoints"), "--out", str(wd), "--overwrite"])
    assert sorted(os.listdir(tmp_path / "hf")) == [peft_io.CONFIG_NAME, peft_io.WEIGHTS_NAME]


# --------------------------------------------------------------------------------------------------------------
# Adapters made by PEFT itself.


def _peft_adapter(base_dir, out: Path, seed: int, **config) -> peft.PeftModel:
    """get_peft_model on the base with random non-zero lora_A and lora_B, saved with save_pretrained."""
    pm = peft.get_peft_model(transformers.AutoModelForCausalLM.from_pretrained(base_dir),
                             peft.LoraConfig(task_type="CAUSAL_LM", **config))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_" in name:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
    pm.save_pretrained(out)
    return pm.eval()


def test_peft_made_adapter_imports_and_round_trips(base_dir, tmp_path):
    targets = ["k_proj", "o_proj", "up_proj"]
    pm = _peft_adapter(base_dir, tmp_path / "adapter", seed=1, r=6, lora_alpha=12, use_rslora=True,
                       lora_dropout=0.1, target_modules=targets)
    convert.main(["to-jax", "--hf-dir", str(base_dir), "--peft-adapter", str(tmp_path / "adapter"),
                          "--out", str(tmp_path / "ckpt")])
    m = store.load(tmp_path / "ckpt")
    assert m.lora_config == lora.LoraConfig(rank=6, alpha=12.0, rslora=True, dropout=0.1, targets=tuple(targets))
    assert m.base_model_name_or_path == str(base_dir)  # PEFT recorded the path the base was loaded from
    diffs = _check_parity(m, {"peft": pm}, _prompts(5))
    print(f"PEFT-made adapter (r=6, rsLoRA, {targets}): {diffs}")
    # Back out: the same tensors bit for bit and the same adapter definition.
    convert.main(["to-peft", "--checkpoint", str(tmp_path / "ckpt"), "--out", str(tmp_path / "again")])
    got, want = load_file(tmp_path / "again" / peft_io.WEIGHTS_NAME), load_file(
        tmp_path / "adapter" / peft_io.WEIGHTS_NAME)
    assert got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in want)
    cfg_got = json.loads((tmp_path / "again" / peft_io.CONFIG_NAME).read_text())
    cfg_want = json.loads((tmp_path / "adapter" / peft_io.CONFIG_NAME).read_text())
    keys = ("r", "lora_alpha", "use_rslora", "lora_dropout", "base_model_name_or_path", "peft_type", "task_type")
    assert {k: cfg_got[k] for k in keys} == {k: cfg_want[k] for k in keys}
    assert sorted(cfg_got["target_modules"]) == sorted(cfg_want["target_modules"])


def test_regex_targets_and_layer_subsets_import(base_dir, tmp_path):
    """A regex target_modules that adapts gate/up in layer 1 only: layer 0 gets zero adapters, same logits."""
    pm = _peft_adapter(base_dir, tmp_path / "adapter", seed=2, r=4, lora_alpha=4,
                       target_modules=r"model\.layers\.1\.mlp\.(gate|up)_proj")
    tree, lcfg, _ = peft_io.load(tmp_path / "adapter", store.load(base_dir).cfg)
    assert lcfg.targets == ("gate_proj", "up_proj")
    assert not tree["layers"]["gate_proj"]["b"][0].any() and tree["layers"]["gate_proj"]["b"][1].any()
    base = store.load(base_dir)
    seq = np.concatenate([_prompts(6), _prompts(7)], axis=1)
    ours = np.asarray(forward(base.params, jnp.asarray(seq), base.cfg, lora=jax.device_put(tree),
                              lora_scale=lcfg.scale))
    assert float(np.abs(_torch_logits(pm, seq) - ours).max()) < 1e-4


@pytest.mark.parametrize("family", ["qwen2", "qwen3"])
def test_qwen_families_import_and_merge(family, tmp_path):
    """Qwen2 (q/k/v bias, tied embeddings) and Qwen3 (q/k norm): a PEFT adapter imports, merges and re-exports."""
    tiny_model(family, seed=21).save_pretrained(tmp_path / "base")
    pm = _peft_adapter(tmp_path / "base", tmp_path / "adapter", seed=5, r=4, lora_alpha=8,
                       target_modules=["q_proj", "v_proj", "o_proj", "down_proj"])
    convert.main(["to-jax", "--hf-dir", str(tmp_path / "base"), "--peft-adapter", str(tmp_path / "adapter"),
                          "--out", str(tmp_path / "ckpt")])
    convert.main(["to-hf", "--checkpoint", str(tmp_path / "ckpt"), "--out", str(tmp_path / "merged"),
                          "--merge-lora"])
    m = store.load(tmp_path / "ckpt")
    seq = np.concatenate([_prompts(8), _prompts(9)], axis=1)
    ours = np.asarray(forward(m.params, jnp.asarray(seq), m.cfg, lora=m.lora, lora_scale=m.lora_config.scale))
    merged = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    for name, tm in (("peft", pm), ("merged", merged)):
        assert float(np.abs(_torch_logits(tm, seq) - ours).max()) < 1e-4, name


def _cfg() -> ModelConfig:
    """The tiny Llama's shapes (hf_models.COMMON)."""
    return ModelConfig(vocab_size=128, hidden_size=64, intermediate_size=96, num_layers=2, num_heads=4, num_kv_heads=2,
        head_dim=24)


@pytest.mark.parametrize("config, want", [
    ({"target_modules": ["q_proj", "v_proj"]}, {"q_proj": [0, 1], "v_proj": [0, 1]}),
    ({"target_modules": ["self_attn.q_proj"], "layers_to_transform": [1]}, {"q_proj": [1]}),
    ({"target_modules": ["down_proj"], "layers_to_transform": 0, "layers_pattern": "layers"}, {"down_proj": [0]}),
    ({"target_modules": "all-linear"}, {p: [0, 1] for p in LORA_TARGETS}),
    ({"target_modules": r".*\.(q_proj|o_proj)"}, {"q_proj": [0, 1], "o_proj": [0, 1]}),
    ({"target_modules": "all-linear", "exclude_modules": ["mlp.down_proj", "k_proj"]},
     {p: [0, 1] for p in LORA_TARGETS if p not in ("down_proj", "k_proj")}),
])
def test_target_module_forms(config, want):
    assert peft_io.targeted(config, _cfg(), "cfg") == want


@pytest.mark.parametrize("config, match", [
    ({"target_modules": ["q_proj", "lm_head"]}, "selects lm_head; only the projections"),
    ({"target_modules": ["self_attn"]}, "selects model.layers.0.self_attn;"),
    ({"target_modules": r".*embed_tokens"}, "selects model.embed_tokens;"),
    ({"target_modules": r"q_proj"}, "selects none of the model's projections"),
    ({"target_modules": r"(["}, "not a valid regex"),
])
def test_target_module_refusals(config, match):
    with pytest.raises(UserError, match=match):
        peft_io.targeted(config, _cfg(), "cfg")


@pytest.fixture(scope="module")
def small_adapter(base_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("small") / "adapter"
    _peft_adapter(base_dir, d, seed=3, r=2, lora_alpha=4, target_modules=["q_proj"])
    return d


@pytest.mark.parametrize("edit, match", [
    ({"bias": "lora_only"}, r"bias='lora_only': trained biases are not supported"),
    ({"modules_to_save": ["lm_head"]}, r'modules_to_save=\["lm_head"\]: fully trained extra modules'),
    ({"peft_type": "IA3"}, r"peft_type 'IA3' is not supported"),
    ({"rank_pattern": {"q_proj": 4}}, r"rank_pattern=.*per-module ranks"),
    ({"fan_in_fan_out": True}, r"fan_in_fan_out=true"),
    ({"target_modules": ["q_proj", "k_proj"]},
     r"missing tensor base_model\.model\.model\.layers\.0\.self_attn\.k_proj"),
    ({"r": 3}, r"lora_A\.weight has shape \[2, 64\], expected \[3, 64\]"),
])
def test_unsupported_or_inconsistent_adapters_are_refused(small_adapter, tmp_path, edit, match):
    d = tmp_path / "adapter"
    d.mkdir()
    (d / peft_io.WEIGHTS_NAME).write_bytes((small_adapter / peft_io.WEIGHTS_NAME).read_bytes())
    config = json.loads((small_adapter / peft_io.CONFIG_NAME).read_text())
    (d / peft_io.CONFIG_NAME).write_text(json.dumps({**config, **edit}))
    with pytest.raises(UserError, match=match) as e:
        peft_io.load(d, _cfg())
    assert "\n" not in str(e.value)


def test_dora_adapter_refused_by_the_cli(base_dir, tmp_path):
    _peft_adapter(base_dir, tmp_path / "dora", seed=4, r=2, lora_alpha=4, target_modules=["v_proj"], use_dora=True)
    proc = subprocess.run([sys.executable, "tools/convert_weights.py", "to-jax", "--hf-dir", str(base_dir),
                           "--peft-adapter", str(tmp_path / "dora"), "--out", str(tmp_path / "ckpt")],
                          capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "use_dora=true: DoRA (weight-decomposed LoRA) is not supported" in last
    assert "Traceback" not in proc.stderr and not (tmp_path / "ckpt").exists()


def test_unknown_target_module_is_named(assets, tmp_path, capsys):
    """Issue 16: a target module the model does not have is named: an error when nothing else is targeted, a
    warning (PEFT ignores it too) beside real targets."""
    from jaxfin.errors import run_cli

    def run(targets):
        adapter = tmp_path / "adapter"
        adapter.mkdir(exist_ok=True)
        (adapter / peft_io.CONFIG_NAME).write_text(json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 4,
                                                               "target_modules": targets}))
        save_file({"x": np.zeros(1, np.float32)}, str(adapter / peft_io.WEIGHTS_NAME))
        capsys.readouterr()
        with pytest.raises(SystemExit) as e:
            run_cli(convert.main, ["to-jax", "--hf-dir", assets.model, "--peft-adapter", str(adapter), "--out",
                                   str(tmp_path / "ckpt")])
        err = capsys.readouterr().err.splitlines()  # the import progress bar, then the lines that matter
        return e.value.code, [line for line in err if line.startswith(("error: ", "warning: "))]

    where = tmp_path / "adapter" / peft_io.CONFIG_NAME
    code, lines = run(["foo_proj"])
    assert code == 2 and lines == [f"error: {where}: target_modules names 'foo_proj', which is no module of this "
                                   f"model; the modules LoRA can adapt here are {', '.join(LORA_TARGETS)}"], lines
    code, lines = run(["q_proj", "foo_proj"])
    assert code == 2 and lines[0] == (f"warning: {where}: target_modules names 'foo_proj', which is no module of this "
                                      f"model; ignored, as PEFT does (the adapter has no weights for it)"), lines
    assert lines[1].startswith("error: ") and "missing tensor" in lines[1] and len(lines) == 2
    assert not (tmp_path / "ckpt").exists()
