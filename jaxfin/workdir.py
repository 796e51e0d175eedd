"""A training workdir, usable on its own by generate / evaluate / convert:

  WORKDIR/run.json              base model, model and LoRA configs, the training config
  WORKDIR/checkpoints/<step>/   orbax: lora, opt_state, meta {step, data_position}; <step> = updates done
  WORKDIR/metrics.jsonl         one JSON object per logged step, appended across resumes
  WORKDIR/tb/                   TensorBoard event files
  WORKDIR/eval/                 evaluation at the end (eval/step_N/ for eval.every_steps)
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from jaxfin import lora as lora_lib
from jaxfin.errors import UserError
from jaxfin.lora import LoraConfig
from jaxfin.model import ModelConfig, Params

RUN_JSON = "run.json"
CHECKPOINTS = "checkpoints"


def is_workdir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, RUN_JSON))


def write_run(workdir: str, *, base_model: str, base_model_name_or_path: str, model_config: ModelConfig,
              lora_config: LoraConfig, config: dict[str, Any]) -> None:
    """Writes run.json (atomically: a rename, so a reader never sees half a file)."""
    record = {
        "base_model": os.path.abspath(base_model) if os.path.isdir(base_model) else base_model,
        "base_model_name_or_path": base_model_name_or_path,
        "model_config": dataclasses.asdict(model_config),
        "lora_config": lora_config.to_dict(),
        "config": config,
    }
    os.makedirs(workdir, exist_ok=True)
    tmp = os.path.join(workdir, RUN_JSON + ".tmp")
    with open(tmp, "w") as f:
        json.dump(record, f, indent=2)
    os.replace(tmp, os.path.join(workdir, RUN_JSON))


def read_run(workdir: str) -> dict[str, Any]:
    path = os.path.join(workdir, RUN_JSON)
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise UserError(f"{workdir}: not a training workdir (no {RUN_JSON})") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None


def checkpoint_manager(workdir: str, max_to_keep: int | None = None) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
    return ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, CHECKPOINTS)), options=options)


def latest_step(path: str) -> int | None:
    """The newest complete checkpoint's step (orbax only lists finalised ones), or None."""
    if not os.path.isdir(os.path.join(path, CHECKPOINTS)):
        return None
    with ocp.CheckpointManager(os.path.abspath(os.path.join(path, CHECKPOINTS))) as mngr:
        return mngr.latest_step()


def save(mngr: ocp.CheckpointManager, step: int, lora: Params, opt_state: Any, data_position: int) -> None:
    """Starts an (async) save of the state after `step` updates; mngr.wait_until_finished() before exiting."""
    mngr.save(step, args=ocp.args.Composite(
        lora=ocp.args.StandardSave(lora),
        opt_state=ocp.args.StandardSave(opt_state),
        meta=ocp.args.JsonSave({"step": step, "data_position": data_position}),
    ))


def restore(mngr: ocp.CheckpointManager, step: int, lora_like: Any, opt_state_like: Any) -> tuple[Params, Any, dict]:
    """(lora, opt_state, meta) of checkpoint `step`, placed like the given ShapeDtypeStructs (with shardings)."""
    out = mngr.restore(step, args=ocp.args.Composite(
        lora=ocp.args.StandardRestore(lora_like),
        opt_state=ocp.args.StandardRestore(opt_state_like),
        meta=ocp.args.JsonRestore(),
    ))
    return out.lora, out.opt_state, out.meta


def load_adapters(path: str, step: int | None = None) -> tuple[Params, LoraConfig, str, int]:
    """(lora on the first device, LoraConfig, base model path, step) of a workdir's checkpoint (default latest)."""
    run = read_run(path)
    cfg = ModelConfig(**run["model_config"])
    lcfg = LoraConfig.from_dict(run["lora_config"])
    step = latest_step(path) if step is None else step
    if step is None:
        raise UserError(f"{path}: the workdir has no checkpoint yet")
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    like = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device),
                        lora_lib.shapes(cfg, lcfg))
    with ocp.CheckpointManager(os.path.abspath(os.path.join(path, CHECKPOINTS))) as mngr:
        if step not in mngr.all_steps():
            raise UserError(f"{path}: no checkpoint for step {step} (have {sorted(mngr.all_steps())})")
        lora = mngr.restore(step, args=ocp.args.Composite(lora=ocp.args.StandardRestore(like))).lora
    return lora, lcfg, run["base_model"], step
