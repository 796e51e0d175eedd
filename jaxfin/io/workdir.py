"""A training workdir, usable on its own by generate / evaluate / convert:

  WORKDIR/run.json              base model (path and fingerprint), model and LoRA configs, the training config,
                                the planned steps
  WORKDIR/checkpoints/<step>/   orbax: lora, opt_state, meta {step, data_position, nonfinite_steps}; <step> = steps
                                done; a save in flight is `<step>.orbax-checkpoint-tmp` (never listed, cleaned up)
  WORKDIR/metrics.jsonl         one JSON object per logged step, only appended to; after a crash a step may appear
                                twice (read_metrics: the last row of a step wins)
  WORKDIR/tb/                   TensorBoard event files
  WORKDIR/eval/                 evaluation at the end (eval/step_N/ for eval.every_steps)
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
from typing import Any

import jax
import orbax.checkpoint as ocp

from jaxfin.errors import UserError
from jaxfin.io.files import read_json, write_json
from jaxfin.model import lora as lora_lib
from jaxfin.model.config import ModelConfig
from jaxfin.model.lora import LoraConfig
from jaxfin.model.params import Params

RUN_JSON = "run.json"
# run.json key set (to True) when the base is model.path with its own adapters merged in (DPO's dpo.init=merge):
# loading the workdir merges them again before applying the workdir's adapters.
MERGED_BASE = "base_adapters_merged"
CHECKPOINTS = "checkpoints"
METRICS = "metrics.jsonl"
_DAMAGED = "cannot restore this checkpoint, delete it to resume from the previous one"


def is_workdir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, RUN_JSON))


def write_run(workdir: str, *, base_model: str, base_model_name_or_path: str, model_config: ModelConfig,
              lora_config: LoraConfig, config: dict[str, Any], merged_base: bool = False, **extra: Any) -> None:
    """Writes run.json (atomically: a rename, so a reader never sees half a file). `merged_base`: the adapters
    that came with `base_model` are merged into the base these checkpoints train on (MERGED_BASE). `extra`:
    further top-level fields (base_fingerprint: io/fingerprint.of the base; total_steps: the run's planned length)."""
    record = {
        "base_model": os.path.abspath(base_model) if os.path.isdir(base_model) else base_model,
        "base_model_name_or_path": base_model_name_or_path,
        "model_config": dataclasses.asdict(model_config),
        "lora_config": lora_config.to_dict(),
        "config": config,
        **extra,
    } | ({MERGED_BASE: True} if merged_base else {})
    os.makedirs(workdir, exist_ok=True)
    write_json(os.path.join(workdir, RUN_JSON), record)


def read_run(workdir: str) -> dict[str, Any]:
    path = os.path.join(workdir, RUN_JSON)
    if not os.path.isfile(path):
        raise UserError(f"{workdir}: not a training workdir (no {RUN_JSON})")
    return read_json(path)  # not JSON / not UTF-8: one line naming the file


def open_metrics(workdir: str) -> Any:
    """metrics.jsonl opened for appending. A run killed in the middle of a write can leave a torn last line;
    it is ended with a newline first, so the next row starts on its own line (and read_metrics skips the torn one)."""
    path = os.path.join(workdir, METRICS)
    if os.path.isfile(path) and os.path.getsize(path):
        with open(path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            torn = f.read(1) != b"\n"
        if torn:
            with open(path, "a") as f:
                f.write("\n")
    return open(path, "a")


def read_metrics(workdir: str) -> list[dict[str, Any]]:
    """The training curve of a workdir: the rows of metrics.jsonl, one per step, in step order.

    The file is only ever appended to. A run that was killed may have logged steps after its last checkpoint;
    the resumed run logs those steps again (same values on the same hardware), so for each step the LAST row
    wins, key by key: an evaluation's row {"step", "eval": {...}} joins the training row of its step (step 0:
    the evaluation before training, eval.baseline, has no training fields). Lines that are not JSON (a write torn
    by a kill) are skipped."""
    rows: dict[int, dict[str, Any]] = {}
    with open(os.path.join(workdir, METRICS)) as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and isinstance(row.get("step"), int):
                rows[row["step"]] = {**rows.get(row["step"], {}), **row}
    return [rows[k] for k in sorted(rows)]


def checkpoint_manager(workdir: str, max_to_keep: int | None = None) -> ocp.CheckpointManager:
    """Orbax writes each checkpoint into `<step>.orbax-checkpoint-tmp` and renames it to `<step>` when complete,
    so a kill during a save leaves only a tmp dir, which is never listed as a step and is removed here."""
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True, cleanup_tmp_directories=True)
    return ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, CHECKPOINTS)), options=options)


def latest_step(path: str) -> int | None:
    """The newest complete checkpoint's step (orbax only lists finalised ones), or None."""
    if not os.path.isdir(os.path.join(path, CHECKPOINTS)):
        return None
    with ocp.CheckpointManager(os.path.abspath(os.path.join(path, CHECKPOINTS))) as mngr:
        return mngr.latest_step()


def save(mngr: ocp.CheckpointManager, step: int, lora: Params, opt_state: Any, data_position: int,
         nonfinite_steps: int = 0) -> None:
    """Starts an (async) save of the state after `step` steps; mngr.wait_until_finished() before exiting.
    `nonfinite_steps`: steps skipped so far by the NaN/Inf guard (their count continues across a resume)."""
    mngr.save(step, args=ocp.args.Composite(
        lora=ocp.args.StandardSave(lora),
        opt_state=ocp.args.StandardSave(opt_state),
        meta=ocp.args.JsonSave({"step": step, "data_position": data_position, "nonfinite_steps": nonfinite_steps}),
    ))


def orbax_error(path: str, e: BaseException, what: str) -> UserError:
    """One UserError line for a checkpoint orbax cannot read, with the innermost cause (tensorstore's names the
    tensor and the byte range). Orbax leaves its other reads of that checkpoint pending; at exit they would print
    tracebacks ("Exception ignored in: <coroutine ...>", "_GatheringFuture exception was never retrieved", and from
    tensorstore's callbacks "RuntimeError: Event loop is closed"), which are silenced since this line says it all
    (`--debug` still shows the chained traceback)."""
    inner = e
    while inner.__cause__ is not None or inner.__context__ is not None:
        inner = inner.__cause__ or inner.__context__
    first = (str(inner).strip().splitlines() or [type(inner).__name__])[0]
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    previous = sys.unraisablehook

    def quiet(u: Any) -> None:
        code = getattr(u.object, "cr_code", None)
        closed = isinstance(u.exc_value, RuntimeError) and str(u.exc_value) == "Event loop is closed"
        if not (closed or (code is not None and "orbax" in code.co_filename)):
            previous(u)

    if getattr(previous, "__name__", "") != quiet.__name__:
        sys.unraisablehook = quiet
    return UserError(f"{path}: {what} ({first[:300]})")


def restore(mngr: ocp.CheckpointManager, step: int, lora_like: Any, opt_state_like: Any) -> tuple[Params, Any, dict]:
    """(lora, opt_state, meta) of checkpoint `step`, placed like the given ShapeDtypeStructs (with shardings).
    A checkpoint that is complete but unreadable (damaged or foreign files) is one UserError line naming it."""
    try:
        out = mngr.restore(step, args=ocp.args.Composite(
            lora=ocp.args.StandardRestore(lora_like),
            opt_state=ocp.args.StandardRestore(opt_state_like),
            meta=ocp.args.JsonRestore(),
        ))
    except Exception as e:  # orbax / tensorstore raise many types; all mean the same thing here
        raise orbax_error(os.path.join(str(mngr.directory), str(step)), e, _DAMAGED) from e
    return out.lora, out.opt_state, out.meta


def run_configs(path: str) -> tuple[dict[str, Any], ModelConfig, LoraConfig]:
    """(run.json, its ModelConfig, its LoraConfig); a record this version cannot read is one UserError line."""
    run = read_run(path)
    try:
        return run, ModelConfig.from_dict(run["model_config"]), LoraConfig.from_dict(run["lora_config"])
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{os.path.join(path, RUN_JSON)}: cannot read the model / LoRA config ({e})") from None


def restore_adapters(path: str, step: int | None = None) -> tuple[Params, LoraConfig, str, int]:
    """(lora on the first device, LoraConfig, base model path, step) of a workdir's checkpoint (default latest)."""
    run, cfg, lcfg = run_configs(path)
    step = latest_step(path) if step is None else step
    if step is None:
        raise UserError(f"{path}: the workdir has no checkpoint yet")
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])  # this process's (multi-host)
    like = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device),
                        lora_lib.shapes(cfg, lcfg))
    with ocp.CheckpointManager(os.path.abspath(os.path.join(path, CHECKPOINTS))) as mngr:
        if step not in mngr.all_steps():
            raise UserError(f"{path}: no checkpoint for step {step} (have {sorted(mngr.all_steps())})")
        try:
            lora = mngr.restore(step, args=ocp.args.Composite(lora=ocp.args.StandardRestore(like))).lora
        except Exception as e:
            raise orbax_error(os.path.join(str(mngr.directory), str(step)), e, _DAMAGED) from e
    return lora, lcfg, run["base_model"], step
