"""What every training command (SFT, DPO) does around its loss: config checks before anything is loaded, the
mesh, the base model placed straight into its shards, the optimizer and shardings, fresh / continued / resumed
state, the run record, and evaluation of the adapters on a task."""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import optax

from jaxfin.errors import UserError, out_of_memory
from jaxfin.evaluation import predict, report
from jaxfin.io import fingerprint, store, workdir
from jaxfin.io.files import read_json
from jaxfin.model import decoder, lora as lora_lib
from jaxfin.model.config import ATTENTION_IMPLS, LORA_IMPLS, ModelConfig
from jaxfin.model.params import Params
from jaxfin.tasks.base import Example, Task
from jaxfin.training import distributed, log, sharding
from jaxfin.training.loop import State


def lora_config(config: ml_collections.ConfigDict) -> lora_lib.LoraConfig:
    c = config.lora
    try:
        return lora_lib.LoraConfig(rank=c.rank, alpha=c.alpha, rslora=c.rslora, dropout=c.dropout,
                                   targets=tuple(c.targets))
    except ValueError as e:
        raise UserError(str(e)) from None


def make_mesh(config: ml_collections.ConfigDict, devices: Sequence[jax.Device] | None) -> jax.sharding.Mesh:
    """jax.distributed per the config (before anything touches a device), then the mesh, with the batch and
    model-runtime keys checked against it."""
    distributed.initialize(config.distributed)
    mesh = sharding.make_mesh(config.mesh.to_dict(), devices)
    B, A = config.train.batch_size, config.train.grad_accum_steps
    if A < 1 or B % A:
        raise UserError(f"train.grad_accum_steps={A} must be >= 1 and divide train.batch_size={B}")
    if (B // A) % sharding.batch_divisor(mesh):
        raise UserError(f"train.batch_size={B}: each of the {A} micro-batches must split evenly over the "
                        f"{sharding.batch_divisor(mesh)} data x fsdp devices")
    check_model_keys(config)
    return mesh


def check_model_keys(config: ml_collections.ConfigDict) -> None:
    """The runtime choices of the model block (remat, attention_impl, lora_impl) name something that exists."""
    if config.model.remat not in decoder.REMAT_POLICIES:
        raise UserError(f"model.remat={config.model.remat!r}: choose one of {', '.join(decoder.REMAT_POLICIES)}")
    if config.model.attention_impl not in ATTENTION_IMPLS:
        raise UserError(f"model.attention_impl={config.model.attention_impl!r}: choose xla or cudnn (or leave it "
                        f"unset)")
    if config.model.lora_impl not in LORA_IMPLS:
        raise UserError(f"model.lora_impl={config.model.lora_impl!r}: choose one of {', '.join(LORA_IMPLS)}")


def load_model(config: ml_collections.ConfigDict, path: str, mesh: jax.sharding.Mesh) -> store.Model:
    """The model of `path` with its base weights read straight into their shards, the runtime fields (remat,
    attention, LoRA path) of the config applied."""
    with out_of_memory(f"the base model in model.dtype={config.model.dtype} on {mesh.size} devices",
                       "model.dtype (bfloat16) or spread it over more devices (mesh.fsdp, mesh.tensor)"):
        model = store.load(path, dtype=config.model.dtype,
                           shardings=lambda cfg: sharding.param_shardings(cfg, mesh))
    cfg = model.cfg.replace(remat=config.model.remat, attention_impl=config.model.attention_impl,
                            lora_impl=config.model.lora_impl)
    if model.tokenizer_dir is None:
        raise UserError(f"model.path={path}: the model has no tokenizer files")
    return dataclasses.replace(model, cfg=cfg)


def check_model_adapters(path: str, have: lora_lib.LoraConfig, want: lora_lib.LoraConfig) -> None:
    """Training continues the adapters that come with the model, so the config's lora block must describe them
    (dropout is a training setting and may differ)."""
    keys = [k for k in ("rank", "alpha", "rslora") if getattr(have, k) != getattr(want, k)]
    keys += ["targets"] if set(have.targets) != set(want.targets) else []
    if keys:
        show = lambda c, k: ",".join(c.targets) if k == "targets" else str(getattr(c, k)).lower()  # noqa: E731
        raise UserError(f"model.path={path} has LoRA adapters with " + ", ".join(f"lora.{k}={show(have, k)}" for k in
                        keys) + " but the config asks for " + ", ".join(f"lora.{k}={show(want, k)}" for k in keys) +
                        "; set " + " ".join(f"--config.lora.{k}={show(have, k)}" for k in keys) + " to train them")


def resuming(wd: str) -> bool:
    """Whether the workdir has a checkpoint to resume from (its adapters were trained already)."""
    return workdir.is_workdir(wd) and workdir.latest_step(wd) is not None


def check_base(wd: str, model_path: str, config: ml_collections.ConfigDict) -> str:
    """The fingerprint of model.path's weights (recorded in run.json); resuming a workdir whose adapters were
    trained on other weights is refused, before the model is loaded, unless model.allow_base_change."""
    fp = fingerprint.of(model_path)
    if not resuming(wd):
        return fp
    run = workdir.read_run(wd)
    old = run.get("base_fingerprint")
    if old is None or old == fp:  # None: a workdir from before fingerprints, nothing to compare
        return fp
    what = (f"{wd}: its adapters were trained on {run['base_model']} (fingerprint {old[:12]}), but model.path="
            f"{model_path} holds other weights (fingerprint {fp[:12]})")
    if not config.get("model", {}).get("allow_base_change", False):
        raise UserError(f"{what}; use a new workdir, or set --config.model.allow_base_change=true to continue "
                        f"these adapters on the new base")
    print(f"note: {what}; continuing on the new base (model.allow_base_change)")
    return fp


def note_schedule_change(wd: str, config: ml_collections.ConfigDict, total: int) -> None:
    """Resuming with another length (train.steps raised on a finished run) or another optim.decay_steps changes
    the learning-rate schedule of the remaining steps: said once, at start."""
    if not resuming(wd):
        return
    run = workdir.read_run(wd)
    old_total = run.get("total_steps") or run.get("config", {}).get("train", {}).get("steps") or 0
    old_decay = run.get("config", {}).get("optim", {}).get("decay_steps") or old_total
    decay = config.optim.decay_steps or total
    if not old_total or old_decay == decay:
        return
    start = workdir.latest_step(wd)
    why = (f"the run was planned for {old_total} steps and now goes to {total}, and optim.decay_steps=0 makes the "
           f"cosine decay span the whole run" if not config.optim.decay_steps else
           f"optim.decay_steps is {config.optim.decay_steps}, the run was trained with a decay over {old_decay}")
    print(f"note: the learning-rate schedule changes from step {start + 1} on: {why} ({decay} steps instead of "
          f"{old_decay}); set --config.optim.decay_steps={old_decay} to keep the original schedule")


def check_resume(wd: str, mcfg: ModelConfig, lcfg: lora_lib.LoraConfig) -> None:
    run, old, old_lcfg = workdir.run_configs(wd)
    if old_lcfg != lcfg:
        raise UserError(f"{wd}: its checkpoints have lora config {run['lora_config']}, this run asks for "
                        f"{lcfg.to_dict()}; use a new workdir")
    if old.architecture != mcfg.architecture:
        raise UserError(f"{wd}: its checkpoints are for a different model than {run['base_model']}; use a new workdir")


def start_state(wd: str, mngr: Any, *, cfg: ModelConfig, lcfg: lora_lib.LoraConfig, tx: optax.GradientTransformation,
                sh: sharding.TrainShardings, seed: int, model: store.Model, model_path: str) -> State:
    """The state to train from: the workdir's latest checkpoint (resume), else the adapters that came with the
    model (e.g. an imported PEFT adapter: training continues them), else fresh adapters (PEFT init)."""
    start = mngr.latest_step()
    if start is not None:
        check_resume(wd, cfg, lcfg)
        like = lambda tree, shards: jax.tree.map(  # noqa: E731
            lambda s, h: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=h), tree, shards)
        lora_shapes = lora_lib.shapes(cfg, lcfg)
        adapters, opt_state, meta = workdir.restore(mngr, start, like(lora_shapes, sh.lora),
                                                    like(jax.eval_shape(tx.init, lora_shapes), sh.opt_state))
        print(f"resuming {wd} from step {start}")
        return State(adapters, opt_state, start, meta["data_position"], meta.get("nonfinite_steps", 0))
    if model.lora is not None:
        adapters = jax.device_put(jax.tree.map(lambda x: x.astype(jnp.float32), model.lora), sh.lora)
        print(f"starting from the LoRA adapters of {model_path}")
        return State(adapters, jax.jit(tx.init, out_shardings=sh.opt_state)(adapters))
    return State(*init_adapters(cfg, lcfg, tx, sh, seed))


def init_adapters(cfg: ModelConfig, lcfg: lora_lib.LoraConfig, tx: optax.GradientTransformation,
                  sh: sharding.TrainShardings, seed: int) -> tuple[Params, optax.OptState]:
    """Fresh adapters (PEFT init) and optimizer state, created in place on the mesh."""
    key = jax.random.fold_in(jax.random.key(seed), 2**32 - 1)  # a key no step uses
    adapters = jax.jit(lora_lib.init, static_argnums=(0, 1), out_shardings=sh.lora)(cfg, lcfg, key)
    return adapters, jax.jit(tx.init, out_shardings=sh.opt_state)(adapters)


def evaluate(out_dir: str, model: store.Model, adapters: Params, lcfg: lora_lib.LoraConfig, task: Task,
             examples: Sequence[Example], config: ml_collections.ConfigDict, step: int, data: str,
             baseline: dict | None = None) -> dict:
    """Greedy decoding with the adapters on the examples -> OUT/{metrics.json, predictions.jsonl, report.md}
    (process 0 writes; every process decodes its share of the rows). `baseline`: the same evaluation of the model
    before training, shown beside this one."""
    m = dataclasses.replace(model, lora=adapters, lora_config=lcfg)
    mesh = jax.tree.leaves(adapters)[0].sharding.mesh  # the training mesh: decode rows split over all its processes
    with out_of_memory(f"evaluation decoding (eval.batch_size={config.eval.batch_size}, eval.max_new_tokens="
                       f"{config.eval.max_new_tokens})", "eval.batch_size or eval.max_new_tokens"):
        outputs = predict.generate(m, task, examples, max_new_tokens=config.eval.max_new_tokens,
                                   batch_size=config.eval.batch_size, mesh=mesh, verbose=jax.process_index() == 0)
    metrics, rows = predict.score(task, examples, outputs)
    if jax.process_index() == 0:
        meta = {"workdir": config.workdir, "step": str(step), "data": data,
                "max_new_tokens": str(config.eval.max_new_tokens)}
        report.write(out_dir, task, metrics, rows, meta=meta, baseline=baseline)
        log.log_eval(config.workdir, step, metrics)
    print(f"eval step {step}: {report.summary_line(task.name, metrics)} -> {out_dir}")
    return metrics


def baseline(wd: str, model: store.Model, state: Any, lcfg: lora_lib.LoraConfig, task: Task,
             examples: Sequence[Example], config: ml_collections.ConfigDict, data: str) -> dict | None:
    """eval.baseline: the evaluation of the model as training starts (step 0: fresh adapters leave the base
    unchanged), in WORKDIR/eval/baseline; computed once, read back on a resume. None when it cannot be had (a run
    resumed past step 0 without one)."""
    out = os.path.join(wd, "eval", "baseline")
    path = os.path.join(out, "metrics.json")
    if os.path.isfile(path):
        return read_json(path)
    if state.step != 0:
        print(f"note: eval.baseline: {out} is missing and the run resumes at step {state.step}, so no baseline")
        return None
    return evaluate(out, model, state.adapters, lcfg, task, examples, config, 0, data)


def eval_dir(wd: str, step: int | None = None) -> str:
    """WORKDIR/eval (the end of training) or WORKDIR/eval/step_N (eval.every_steps)."""
    return os.path.join(wd, "eval") if step is None else os.path.join(wd, "eval", f"step_{step}")
