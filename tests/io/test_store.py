"""jaxfin checkpoints, load_model over every kind of model path, and the converter CLI end to end."""

import json

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import transformers
from safetensors.numpy import load_file

from hf_models import save_tokenizer, tiny_model

from jaxfin import convert
from jaxfin.errors import run_cli, UserError
from jaxfin.io import hf as hf_io
from jaxfin.io import safetensors as st_io
from jaxfin.io import store, workdir
from jaxfin.model import lora as lora_lib
from jaxfin.training import sharding


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """A tiny Llama HF directory with tokenizer files and a generation_config.json whose eos is a list."""
    d = tmp_path_factory.mktemp("llama")
    tiny_model("llama", seed=5).save_pretrained(d)
    save_tokenizer(d)
    (d / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": [2, 7]}))
    return d


@pytest.fixture(scope="module")
def ckpt(hf_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt") / "ckpt"
    convert.main(["to-jax", "--hf-dir", str(hf_dir), "--out", str(out)])
    return out


def _equal_trees(a, b) -> bool:
    return jax.tree.structure(a) == jax.tree.structure(b) and all(
        x.dtype == y.dtype and np.array_equal(np.asarray(x), np.asarray(y))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def test_checkpoint_round_trip(hf_dir, ckpt):
    src, saved = store.load(hf_dir), store.load(ckpt)
    assert _equal_trees(src.params, saved.params)
    assert saved.cfg == src.cfg and saved.cfg.dtype == "float32"
    assert saved.hf_config == src.hf_config and saved.generation_config == src.generation_config
    assert saved.eos_ids == src.eos_ids == (2, 7)
    assert saved.source == str(ckpt.absolute()) and saved.lora is None
    assert saved.tokenizer_files() == src.tokenizer_files() == hf_io.tokenizer_files(hf_dir)
    assert len(saved.tokenizer_files()) == 4
    assert saved.tokenizer()("w5 w9").input_ids == [5, 9]


def test_load_checkpoint_cast_and_sharded(ckpt):
    cfg = store.load(ckpt).cfg
    shardings = sharding.param_shardings(cfg, sharding.make_mesh({"fsdp": 2, "tensor": 4}, jax.devices()[:8]))
    full = store.load(ckpt)
    model = store.load(ckpt, dtype="bfloat16", shardings=shardings)
    assert model.cfg.dtype == "bfloat16"
    for leaf, want, placed in zip(jax.tree.leaves(model.params), jax.tree.leaves(full.params),
                                  jax.tree.leaves(shardings), strict=True):
        assert leaf.sharding == placed and leaf.dtype == jnp.bfloat16
        np.testing.assert_array_equal(np.asarray(leaf), np.asarray(want).astype(ml_dtypes.bfloat16))


def test_cli_to_hf_bit_identical_and_overwrite(hf_dir, ckpt, tmp_path, capsys):
    out = tmp_path / "hf"
    convert.main(["to-hf", "--checkpoint", str(ckpt), "--out", str(out)])
    want, got = load_file(hf_dir / "model.safetensors"), load_file(out / "model.safetensors")
    assert want.keys() == got.keys() and all(np.array_equal(want[k], got[k]) for k in want)
    for name in hf_io.tokenizer_files(hf_dir):
        assert (out / name).read_bytes() == (hf_dir / name).read_bytes()
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == [2, 7]
    _, info = transformers.AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not any(info.values())

    with pytest.raises(SystemExit) as e:  # non-empty --out is refused ...
        run_cli(convert.main, ["to-hf", "--checkpoint", str(ckpt), "--out", str(out)])
    assert e.value.code == 2 and "--overwrite" in capsys.readouterr().err
    # ... unless --overwrite; an HF directory is a valid --checkpoint too, and --dtype narrows.
    convert.main(["to-hf", "--checkpoint", str(hf_dir), "--out", str(out), "--dtype", "bfloat16",
                          "--overwrite"])
    got = load_file(out / "model.safetensors")
    assert all(got[k].dtype == ml_dtypes.bfloat16 for k in got)
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]  # no temp or old dirs left behind


def test_failed_export_leaves_nothing(hf_dir, tmp_path, monkeypatch):
    model = store.load(hf_dir)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("old")

    def fail(self, name, array):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(st_io.Writer, "write", fail)
    with pytest.raises(UserError, match=r"/out: cannot write: No space left on device$"):  # one line naming --out
        hf_io.save_hf(tmp_path / "out", model.params, model.cfg, hf_config=model.hf_config)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["keep.txt"]


def test_workdir_path_loads_base_and_adapters(hf_dir, tmp_path, capsys):
    base = store.load(hf_dir)
    lcfg = lora_lib.LoraConfig(rank=2, alpha=4.0)
    adapters = lora_lib.init(base.cfg, lcfg, jax.random.key(0))
    adapters = jax.tree.map(lambda x: x + 0.5, adapters)  # b is zero-initialised; make every leaf distinct
    wd = str(tmp_path / "run")
    workdir.write_run(wd, base_model=str(hf_dir), base_model_name_or_path=str(hf_dir), model_config=base.cfg,
                      lora_config=lcfg, config={})
    mngr = workdir.checkpoint_manager(wd)
    workdir.save(mngr, 3, adapters, {"count": jnp.zeros((), jnp.int32)}, data_position=0)
    mngr.wait_until_finished()
    mngr.close()

    model = store.load(wd)
    assert _equal_trees(model.params, base.params) and _equal_trees(model.lora, adapters)
    assert model.lora_config == lcfg and model.tokenizer_dir == str(hf_dir) and model.source == wd
    assert model.base_model_name_or_path == str(hf_dir)
    with pytest.raises(SystemExit) as e:  # to-hf without --merge-lora: the base alone, with a note
        run_cli(convert.main, ["to-hf", "--checkpoint", wd, "--out", str(tmp_path / "o")])
    assert e.value.code == 0 and "LoRA adapters, which are not merged" in capsys.readouterr().err


def test_eos_ids_fall_back_to_config():
    model = store.Model(params={}, cfg=None, hf_config={"eos_token_id": 9}, generation_config={},
                             tokenizer_dir=None)
    assert model.eos_ids == (9,) and model.tokenizer() is None and model.tokenizer_files() == {}
    model.generation_config = {"eos_token_id": 4}
    assert model.eos_ids == (4,)


def test_load_model_rejects_other_paths(tmp_path):
    with pytest.raises(UserError, match="no such model directory"):
        store.load(tmp_path / "absent")
    with pytest.raises(UserError, match="not a model directory"):
        store.load(tmp_path)
