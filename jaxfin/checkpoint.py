"""jaxfin model checkpoints (orbax), and `load_model`, which opens any model path the CLIs accept.

A jaxfin checkpoint directory:

  CKPT/jaxfin_model.json   format tag, ModelConfig, the source config.json and generation_config.json, LoRA config
  CKPT/params/             orbax StandardCheckpointer: the base params pytree (model.py layout)
  CKPT/lora/               orbax, optional: LoRA adapters (lora.py layout)
  CKPT/tokenizer/          the source's tokenizer files, byte for byte

A model path is one of: a transformers model directory (config.json + safetensors), a jaxfin checkpoint, or a
training workdir (jaxfin.workdir: the base model it records plus the adapters of its latest checkpoint).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from jaxfin import convert, hub
from jaxfin.errors import UserError
from jaxfin.model import ModelConfig, Params, param_specs

MODEL_JSON = "jaxfin_model.json"
FORMAT = "jaxfin-model"
VERSION = 1


@dataclasses.dataclass
class Model:
    """A loaded model: params (and adapters) plus everything needed to run and re-export it."""

    params: Params
    cfg: ModelConfig
    hf_config: dict
    generation_config: dict
    tokenizer_dir: str | None
    lora: Params | None = None
    lora_config: Any = None  # jaxfin.lora.LoraConfig
    source: str = ""  # absolute path it was loaded from
    base_model_name_or_path: str = ""  # the base model's hub id or path, as exports record it (PEFT's field)

    @property
    def eos_ids(self) -> tuple[int, ...]:
        """Stop ids: `eos_token_id` of generation_config.json, else of config.json (an int or a list)."""
        for config in (self.generation_config, self.hf_config):
            eos = (config or {}).get("eos_token_id")
            if eos is not None:
                return tuple(int(e) for e in eos) if isinstance(eos, (list, tuple)) else (int(eos),)
        return ()

    def tokenizer_files(self) -> dict[str, bytes]:
        return convert.tokenizer_files(self.tokenizer_dir) if self.tokenizer_dir else {}

    def tokenizer(self) -> Any:
        """transformers.AutoTokenizer over the model's tokenizer files (no remote code), or None without any."""
        if not self.tokenizer_dir:
            return None
        from transformers import AutoTokenizer

        try:
            return AutoTokenizer.from_pretrained(self.tokenizer_dir)
        except (OSError, ValueError) as e:
            raise UserError(f"{self.tokenizer_dir}: cannot load the tokenizer: {str(e).splitlines()[0]}") from None


def save_model(
    out_dir: str | os.PathLike,
    params: Params,
    cfg: ModelConfig,
    *,
    hf_config: Mapping[str, Any],
    generation_config: Mapping[str, Any] | None,
    tokenizer_files: Mapping[str, bytes],
    lora: Params | None = None,
    lora_config: Any = None,
    source: str | None = None,
    base_model_name_or_path: str | None = None,
) -> None:
    """Writes a jaxfin checkpoint (layout above) into a temp dir beside `out_dir`, renamed into place at the end
    (replacing `out_dir` if it exists). `base_model_name_or_path` (default: `source`) is the base model's id that
    a PEFT export of the adapters records."""
    record = {
        "format": FORMAT,
        "version": VERSION,
        "model_config": dataclasses.asdict(cfg),
        "hf_config": dict(hf_config),
        "generation_config": dict(generation_config or {}),
        "lora_config": None if lora_config is None else lora_config.to_dict(),
        "source": source,
        "base_model_name_or_path": base_model_name_or_path or source,
    }
    with convert.atomic_dir(out_dir) as tmp:
        with ocp.StandardCheckpointer() as ckptr:
            ckptr.save(tmp / "params", params)
            if lora is not None:
                ckptr.save(tmp / "lora", lora)
            ckptr.wait_until_finished()
        if tokenizer_files:
            # config.json beside the tokenizer files: transformers 5 picks the tokenizer class from its model_type,
            # so the tokenizer then loads exactly as it does from the source HF directory.
            convert.write_files(tmp / "tokenizer", {**tokenizer_files, "config.json": json.dumps(dict(hf_config)).encode()})
        (tmp / MODEL_JSON).write_text(json.dumps(record, indent=2) + "\n")


def is_checkpoint(path: str | os.PathLike) -> bool:
    return (Path(path) / MODEL_JSON).is_file()


def _restore(path: Path, expected: Params | None, dtype: Any, shardings: Params | None) -> Params:
    """Restores an orbax pytree, cast to `dtype` (default: as stored) and placed per `shardings` (default: the
    first device). `expected` ((shape, axes) specs) guards against a checkpoint of another model."""
    if not path.is_dir():
        raise UserError(f"{path}: missing (incomplete jaxfin checkpoint)")
    try:
        return _restore_orbax(path, expected, dtype, shardings)
    except UserError:
        raise
    except Exception as e:  # orbax / tensorstore raise many types for damaged files; all mean the same here
        from jaxfin import workdir

        raise workdir.orbax_error(str(path), e, "damaged or incomplete orbax checkpoint") from e


def _restore_orbax(path: Path, expected: Params | None, dtype: Any, shardings: Params | None) -> Params:
    with ocp.StandardCheckpointer() as ckptr:
        stored = ckptr.metadata(path).item_metadata.tree
        if expected is not None:
            want = jax.tree.map(lambda s: tuple(s[0]), expected, is_leaf=lambda x: isinstance(x, tuple))
            have = jax.tree.map(lambda m: tuple(m.shape), stored)
            if want != have:
                raise UserError(f"{path}: stored params do not match the model config in {MODEL_JSON}")
        default = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])  # this process's (multi-host)
        shardings = shardings if shardings is not None else jax.tree.map(lambda _: default, stored)
        like = jax.tree.map(lambda m, s: jax.ShapeDtypeStruct(m.shape, jnp.dtype(dtype or m.dtype), sharding=s),
                            stored, shardings)
        return ckptr.restore(path, like)


def _load_checkpoint(path: Path, dtype: Any, shardings: Params | None) -> Model:
    record = _read_record(path)
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    cfg = ModelConfig(**{k: v for k, v in record["model_config"].items() if k in known})
    params = _restore(path / "params", param_specs(cfg), dtype, shardings)
    lora, lora_config = _checkpoint_adapters(path, record)
    tokenizer_dir = path / "tokenizer"
    return Model(params, cfg.replace(dtype=str(params["embed_VD"].dtype)), record["hf_config"],
                 record.get("generation_config") or {}, str(tokenizer_dir) if tokenizer_dir.is_dir() else None,
                 lora, lora_config, str(path.absolute()), _base_id(record))


def _read_record(path: Path) -> dict:
    record = convert.read_json(path / MODEL_JSON)
    if record.get("format") != FORMAT or record.get("version", 0) > VERSION:
        raise UserError(f"{path / MODEL_JSON}: not a jaxfin model checkpoint of version <= {VERSION}")
    return record


def _checkpoint_adapters(path: Path, record: dict) -> tuple[Params | None, Any]:
    if record.get("lora_config") is None:
        return None, None
    from jaxfin.lora import LoraConfig

    return _restore(path / "lora", None, None, None), LoraConfig.from_dict(record["lora_config"])


def _base_id(record: dict) -> str:
    """The recorded base model id; checkpoints written before the field existed fall back to their source."""
    return record.get("base_model_name_or_path") or record.get("source") or ""


def _workdir_base_id(run: dict) -> str:
    """A workdir's base model id: the id recorded by the jaxfin checkpoint it trained on, else its own record."""
    base = Path(run["base_model"])
    if is_checkpoint(base):
        return _base_id(_read_record(base))
    return run.get("base_model_name_or_path") or run["base_model"]


def load_adapters(path: str | os.PathLike) -> tuple[Params, Any, ModelConfig, str]:
    """(lora, LoraConfig, ModelConfig, base model id) of a jaxfin checkpoint with adapters or of a training
    workdir (its latest checkpoint), without reading the base weights."""
    p = Path(path).absolute()
    if is_checkpoint(p):
        record = _read_record(p)
        lora, lora_config = _checkpoint_adapters(p, record)
        if lora is None:
            raise UserError(f"{path}: the checkpoint has no LoRA adapters")
        known = {f.name for f in dataclasses.fields(ModelConfig)}
        return lora, lora_config, ModelConfig(**{k: v for k, v in record["model_config"].items() if k in known}), \
            _base_id(record)
    from jaxfin import workdir

    if workdir.is_workdir(str(p)):
        run = workdir.read_run(str(p))
        lora, lora_config, _, _ = workdir.load_adapters(str(p))
        return lora, lora_config, ModelConfig(**run["model_config"]), _workdir_base_id(run)
    if p.is_dir() and (p / "config.json").is_file():
        raise UserError(f"{path}: a transformers model directory has no jaxfin LoRA adapters (expected a jaxfin "
                        f"checkpoint or a training workdir)")
    raise UserError(f"{path}: not a jaxfin checkpoint or training workdir")


def model_config(path: str | os.PathLike) -> ModelConfig | None:
    """The ModelConfig of a model path without loading weights (None for a hub id not downloaded yet), so callers
    can build shardings and load the params straight into them."""
    p = Path(path)
    if is_checkpoint(p):
        record = convert.read_json(p / MODEL_JSON)
        known = {f.name for f in dataclasses.fields(ModelConfig)}
        return ModelConfig(**{k: v for k, v in record.get("model_config", {}).items() if k in known})
    if (p / "config.json").is_file():
        return convert.read_hf_config(p)[1]
    from jaxfin import workdir

    if workdir.is_workdir(str(p)):
        return model_config(workdir.read_run(str(p))["base_model"])
    return None


def load_model(
    path: str | os.PathLike, *, dtype: Any = None, shardings: Params | None = None, progress: bool = False
) -> Model:
    """Opens an HF model directory, a jaxfin checkpoint, or a training workdir (its latest checkpoint's adapters on
    the base model the workdir records). Params are cast to `dtype` (default: as stored) and the compute dtype
    `cfg.dtype` set to match; `shardings` (a pytree of Shardings like the params) places them."""
    p = Path(path).absolute()  # orbax needs absolute paths
    base_id = None
    if hub.is_hub_id(str(path)):
        p, base_id = Path(hub.download_model(str(path))), str(path)
    if not p.is_dir():
        raise UserError(f"{path}: no such model directory")
    if is_checkpoint(p):
        return _load_checkpoint(p, dtype, shardings)
    if (p / "config.json").is_file():
        params, cfg, hf_config = convert.load_hf(p, dtype=dtype, shardings=shardings, progress=progress)
        return Model(params, cfg, hf_config, convert.read_generation_config(p) or {},
                     str(p) if convert.has_tokenizer(p) else None, source=str(p.absolute()),
                     base_model_name_or_path=base_id or str(p))
    from jaxfin import workdir  # the training side imports this module; import lazily

    if workdir.is_workdir(str(p)):
        lora, lora_config, base_path, step = workdir.load_adapters(str(p))
        base = load_model(base_path, dtype=dtype, shardings=shardings, progress=progress)
        return dataclasses.replace(base, lora=lora, lora_config=lora_config, source=str(p.absolute()),
                                   base_model_name_or_path=_workdir_base_id(workdir.read_run(str(p))))
    raise UserError(f"{path}: not a model directory (no config.json, {MODEL_JSON} or {workdir.RUN_JSON})")
