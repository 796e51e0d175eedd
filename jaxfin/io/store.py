"""jaxfin model checkpoints (orbax), and `load`, which opens any model path the CLIs accept.

A jaxfin checkpoint directory:

  CKPT/jaxfin_model.json   format tag, ModelConfig, the source config.json and generation_config.json, LoRA config
  CKPT/params/             orbax StandardCheckpointer: the base params pytree (model/params.py layout)
  CKPT/lora/               orbax, optional: LoRA adapters (model/lora.py layout)
  CKPT/tokenizer/          the source's tokenizer files, byte for byte

A model path is one of: a transformers model directory (config.json + safetensors), a Hugging Face hub id, a GGUF
file (llama.cpp's format, io/gguf.py), a jaxfin checkpoint, or a training workdir (io/workdir.py: the base model
it records plus the adapters of its latest checkpoint). `load` is the one resolver every CLI and the training loop
use.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from jaxfin.errors import UserError
from jaxfin.io import gguf, hf, hub, workdir
from jaxfin.io.files import atomic_dir, read_json, write_files
from jaxfin.model.config import ModelConfig
from jaxfin.model.lora import LoraConfig, merge_by_layer
from jaxfin.model.params import Params, param_specs

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
    lora_config: LoraConfig | None = None
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
        return hf.tokenizer_files(self.tokenizer_dir) if self.tokenizer_dir else {}

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
    lora_config: LoraConfig | None = None,
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
    with atomic_dir(out_dir) as tmp:
        with ocp.StandardCheckpointer() as ckptr:
            ckptr.save(tmp / "params", params)
            if lora is not None:
                ckptr.save(tmp / "lora", lora)
            ckptr.wait_until_finished()
        if tokenizer_files:
            # config.json beside the tokenizer files: transformers 5 picks the tokenizer class from its model_type,
            # so the tokenizer then loads exactly as it does from the source HF directory.
            write_files(tmp / "tokenizer", {**tokenizer_files, "config.json": json.dumps(dict(hf_config)).encode()})
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


def _read_record(path: Path) -> dict:
    record = read_json(path / MODEL_JSON)
    if not isinstance(record, dict) or record.get("format") != FORMAT or record.get("version", 0) > VERSION:
        raise UserError(f"{path / MODEL_JSON}: not a jaxfin model checkpoint of version <= {VERSION}")
    return record


def _record_configs(path: Path, record: dict) -> tuple[ModelConfig, LoraConfig | None]:
    try:
        cfg = ModelConfig.from_dict(record["model_config"])
        lcfg = None if record.get("lora_config") is None else LoraConfig.from_dict(record["lora_config"])
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{path / MODEL_JSON}: cannot read the model / LoRA config ({e})") from None
    return cfg, lcfg


def _base_id(record: dict) -> str:
    """The recorded base model id; checkpoints written before the field existed fall back to their source."""
    return record.get("base_model_name_or_path") or record.get("source") or ""


def _workdir_base_id(run: dict) -> str:
    """A workdir's base model id: the id recorded by the jaxfin checkpoint it trained on, else its own record
    (always its own when its base is that model with its adapters merged)."""
    base = Path(run["base_model"])
    if is_checkpoint(base) and not run.get(workdir.MERGED_BASE):
        return _base_id(_read_record(base))
    return run.get("base_model_name_or_path") or run["base_model"]


def _local(path: str | os.PathLike) -> tuple[Path, str | None]:
    """(absolute local path, hub id or None): a hub id is downloaded first (orbax needs absolute paths)."""
    if hub.is_hub_id(str(path)):
        return Path(hub.download_model(str(path))).absolute(), str(path)
    p = Path(path).absolute()
    if is_gguf(p):
        if not p.is_file():
            raise UserError(f"{path}: no such GGUF file")
        return p, None
    if not p.is_dir():
        raise UserError(f"{path}: no such model directory")
    return p, None


def is_gguf(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(".gguf")


def open_gguf(path: str | os.PathLike) -> gguf.GgufModel:
    """The GGUF file's config, tokenizer and lazy tensors; what it cannot hold is one UserError line."""
    try:
        return gguf.open_gguf(path)
    except ValueError as e:
        raise UserError(str(e)) from None


def gguf_tokenizer_dir(model: gguf.GgufModel) -> str:
    """The GGUF's tokenizer as transformers files, written once per file version to ~/.cache/jaxfin/gguf/<key>
    ($JAXFIN_CACHE moves it): tokenizers load from a directory, and a GGUF holds its tokenizer inside."""
    stat = os.stat(model.path)
    key = hashlib.sha256(f"{os.path.abspath(model.path)}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    root = os.environ.get("JAXFIN_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "jaxfin")
    out = Path(root) / "gguf" / key
    if not out.is_dir():
        out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_dir(out) as tmp:
            write_files(tmp, {**model.tokenizer_files, "config.json": json.dumps(model.hf_config).encode()})
    return str(out)


def _not_a_model(path: str | os.PathLike) -> UserError:
    return UserError(f"{path}: not a model directory (no config.json, {MODEL_JSON} or {workdir.RUN_JSON})")


def describe(path: str | os.PathLike) -> tuple[ModelConfig, dict]:
    """(ModelConfig, config.json dict) of any model path without loading weights (a hub id is downloaded first;
    a workdir answers for its base model), so callers can build shardings or a peer model before loading."""
    p, _ = _local(path)
    if is_gguf(p):
        hf_config = open_gguf(p).hf_config
        return ModelConfig.from_hf(hf_config), hf_config
    if is_checkpoint(p):
        record = _read_record(p)
        return _record_configs(p, record)[0], record["hf_config"]
    if (p / "config.json").is_file():
        hf_config, cfg = hf.read_hf_config(p)
        return cfg, hf_config
    if workdir.is_workdir(str(p)):
        return describe(workdir.read_run(str(p))["base_model"])
    raise _not_a_model(path)


Shardings = Params | Callable[[ModelConfig], Params] | None


def load(path: str | os.PathLike, *, dtype: Any = None, shardings: Shardings = None, progress: bool = False) -> Model:
    """Opens any model path: an HF model directory or hub id, a jaxfin checkpoint, or a training workdir (its
    latest checkpoint's adapters on the base model the workdir records). Params are cast to `dtype` (default: as
    stored) and the compute dtype `cfg.dtype` set to match; `shardings` (a pytree of Shardings like the params,
    or a function of the ModelConfig giving one) places them as they are read."""
    p, hub_id = _local(path)
    if is_gguf(p):
        g = open_gguf(p)
        cfg = ModelConfig.from_hf(g.hf_config)
        params = hf.stream_params(cfg, g.tensors, gguf.GgufTensor.read, dtype=dtype,
                                  shardings=_placement(shardings, cfg), progress=progress)
        return Model(params, cfg.replace(dtype=str(params["embed_VD"].dtype)), g.hf_config, g.generation_config,
                     gguf_tokenizer_dir(g), source=str(p), base_model_name_or_path=str(p))
    if is_checkpoint(p):
        record = _read_record(p)
        cfg, lcfg = _record_configs(p, record)
        params = _restore(p / "params", param_specs(cfg), dtype, _placement(shardings, cfg))
        lora = None if lcfg is None else _restore(p / "lora", None, None, None)
        tokenizer_dir = p / "tokenizer"
        return Model(params, cfg.replace(dtype=str(params["embed_VD"].dtype)), record["hf_config"],
                     record.get("generation_config") or {}, str(tokenizer_dir) if tokenizer_dir.is_dir() else None,
                     lora, lcfg, str(p), _base_id(record))
    if (p / "config.json").is_file():
        params, cfg, hf_config = hf.load_hf(p, dtype=dtype, shardings=_placement(shardings, hf.read_hf_config(p)[1]),
                                            progress=progress)
        return Model(params, cfg, hf_config, hf.read_generation_config(p) or {},
                     str(p) if hf.has_tokenizer(p) else None, source=str(p), base_model_name_or_path=hub_id or str(p))
    if workdir.is_workdir(str(p)):
        lora, lcfg, base_path, _ = workdir.restore_adapters(str(p))
        base = load(base_path, dtype=dtype, shardings=shardings, progress=progress)
        if workdir.read_run(str(p)).get(workdir.MERGED_BASE) and base.lora is not None:  # e.g. DPO on an SFT model
            base = dataclasses.replace(base, params=merge_by_layer(base.params, base.lora, base.lora_config))
        return dataclasses.replace(base, lora=lora, lora_config=lcfg, source=str(p),
                                   base_model_name_or_path=_workdir_base_id(workdir.read_run(str(p))))
    raise _not_a_model(path)


def _placement(shardings: Shardings, cfg: ModelConfig) -> Params | None:
    return shardings(cfg) if callable(shardings) else shardings


def load_adapters(path: str | os.PathLike) -> tuple[Params, LoraConfig, ModelConfig, str]:
    """(lora, LoraConfig, ModelConfig, base model id) of a jaxfin checkpoint with adapters or of a training
    workdir (its latest checkpoint), without reading the base weights."""
    p = Path(path).absolute()
    if is_checkpoint(p):
        record = _read_record(p)
        cfg, lcfg = _record_configs(p, record)
        if lcfg is None:
            raise UserError(f"{path}: the checkpoint has no LoRA adapters")
        return _restore(p / "lora", None, None, None), lcfg, cfg, _base_id(record)
    if workdir.is_workdir(str(p)):
        run, cfg, _ = workdir.run_configs(str(p))
        lora, lcfg, _, _ = workdir.restore_adapters(str(p))
        return lora, lcfg, cfg, _workdir_base_id(run)
    if p.is_dir() and (p / "config.json").is_file():
        raise UserError(f"{path}: a transformers model directory has no jaxfin LoRA adapters (expected a jaxfin "
                        f"checkpoint or a training workdir)")
    raise UserError(f"{path}: not a jaxfin checkpoint or training workdir")
