"""Supervised fine-tuning (LoRA + NEFTune) on a task: `python -m jaxfin.train` runs `run(config)`.

One batch through the step: embed -> NEFTune noise -> decoder with the adapters -> cross-entropy in sequence
chunks against the output embedding (losses.sft_loss) -> gradients w.r.t. the adapters only -> AdamW
(step.train_step). The loop (loop.py) resumes, checkpoints, logs and stops on signals; session.py holds what SFT
and DPO share.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Sequence

import jax
import ml_collections

from jaxfin import synthetic, validate
from jaxfin.data import batches, chat, packing
from jaxfin.errors import UserError, out_of_memory
from jaxfin.io import files, workdir
from jaxfin.model import neftune
from jaxfin.tasks import ner
from jaxfin.training import distributed, loop, losses, multitask, session, sharding, step


def sft_config(config: ml_collections.ConfigDict, lcfg: Any) -> losses.SftConfig:
    if config.neftune.length not in neftune.LENGTHS:
        raise UserError(f"neftune.length={config.neftune.length!r}: choose one of {', '.join(neftune.LENGTHS)}")
    if config.train.loss_backward not in losses.LOSS_BACKWARDS:
        raise UserError(f"train.loss_backward={config.train.loss_backward!r}: choose one of "
                        f"{', '.join(losses.LOSS_BACKWARDS)}")
    return losses.SftConfig(lora_scale=lcfg.scale, lora_dropout=lcfg.dropout,
                            neftune_alpha=float(config.neftune.alpha), neftune_length=config.neftune.length,
                            loss_chunk=config.train.loss_chunk, loss_backward=config.train.loss_backward)


def assets(config: ml_collections.ConfigDict) -> tuple[str, str, str | None]:
    """(model path, train data, eval data); unset ones come from the self-made tiny assets (jaxfin.synthetic),
    written to WORKDIR/assets (deterministic in the seed, so a resumed run rewrites the same bytes)."""
    model_path, train_path, eval_path = config.model.path, config.data.train, config.data.eval
    if None in (model_path, train_path, eval_path):
        out = os.path.join(config.workdir, "assets")
        tiny = distributed.main_first("tiny assets", lambda: synthetic.write_tiny_assets(out, seed=config.seed))
        model_path, train_path, eval_path = model_path or tiny.model, train_path or tiny.train, eval_path or tiny.eval
    return model_path, train_path, eval_path


def sft_batch(position: int, *, packed: packing.Packed, batch_size: int, accum: int, seed: int,
              sh: sharding.TrainShardings, seq_len: int) -> dict[str, jax.Array]:
    """Batch number `position` of the run as global [A, B/A, T] arrays on the mesh (this process's rows only)."""
    global_shape = (accum, batch_size // accum, seq_len)
    rows = batches.local_batch(packed, position, batch_size, seed, sh.batch, global_shape)
    return batches.put_batch(batches.micro_batches(rows, accum), sh.batch, global_shape)


def run(config: ml_collections.ConfigDict, devices: Sequence[jax.Device] | None = None) -> dict[str, Any]:
    """Trains (or resumes) per `config` on `devices` (default all); returns {"step", "metrics": logged rows of
    this run, "eval": final eval metrics or None}, plus "stopped": the exit code when SIGTERM / SIGINT stopped it
    early (after saving checkpoint "step"). Starts from the adapters of model.path when it has some (a jaxfin
    checkpoint, e.g. an imported PEFT adapter) and the workdir has no checkpoint yet."""
    validate.check(config)  # every key, and that the workdir can be written: before anything is read or loaded
    wd = config.workdir
    lcfg = session.lora_config(config)
    hp = sft_config(config, lcfg)
    mesh = session.make_mesh(config, devices)
    B, A = config.train.batch_size, config.train.grad_accum_steps

    # Inputs are checked before the workdir is created, so a mistake leaves nothing behind (the tiny assets, if
    # this run wrote them, are removed again); the data before the model, so a bad line fails in a second rather
    # than after minutes of loading weights.
    names = multitask.task_names(config)
    with files.removed_on_error(os.path.join(wd, "assets")):
        model_path, train_path, eval_path = assets(config)
        sets, types = multitask.train_sets(names, train_path, config.data)
        task, train_examples = sets[0]
        jobs = multitask.eval_jobs(names, eval_path, types, config.eval.max_examples)
        # fire alone: its evaluation in WORKDIR/eval/ (as before multi-task runs); else WORKDIR/eval/NAME/ per task.
        eval_examples = jobs[0].examples if jobs and names == ["fire"] else []
        suite_jobs = [] if names == ["fire"] else jobs
        if len(names) > 1:
            hp = dataclasses.replace(hp, task_names=tuple(names))
        for job in jobs:
            if job.task.name == "fire":
                ner.warn_type_mismatch(types, job.examples, f"data.eval={config.data.eval or eval_path}")
        base_fingerprint = session.check_base(wd, model_path, config)
        model = session.load_model(config, model_path, mesh)
        if model.lora is not None:
            session.check_model_adapters(model_path, model.lora_config, lcfg)
        tokenizer = model.tokenizer()
        if len(names) == 1:
            encoded = chat.encode_task(task, train_examples, tokenizer, eos_ids=model.eos_ids)
            packed = packing.pack(encoded, config.train.seq_len, pad_id=tokenizer.pad_token_id or 0)
            total = config.train.steps or config.train.epochs * batches.steps_per_epoch(packed.num_rows, B)
        else:
            stream = multitask.make_stream(sets, tokenizer, model.eos_ids, config)
            total = stream.total
        if total < 1:
            raise UserError("train.steps and train.epochs are both 0: nothing to train")
    session.note_schedule_change(wd, config, total)

    tx, schedule = step.make_optimizer(config.optim, total)
    sh = sharding.train_shardings(model.cfg, lcfg, tx, mesh)
    base = jax.device_put(model.params, sh.base)  # a no-op when load_model placed them already

    os.makedirs(wd, exist_ok=True)
    mngr = workdir.checkpoint_manager(wd, config.checkpoint.max_to_keep)
    state = session.start_state(wd, mngr, cfg=model.cfg, lcfg=lcfg, tx=tx, sh=sh, seed=config.seed, model=model,
                                model_path=model_path)
    model = dataclasses.replace(model, params=base, lora=None, lora_config=None)
    if jax.process_index() == 0:
        workdir.write_run(wd, base_model=model.source or model_path,
                          base_model_name_or_path=model.base_model_name_or_path or model_path,
                          model_config=model.cfg, lora_config=lcfg, config={**config.to_dict(), "entity_types": types},
                          base_fingerprint=base_fingerprint, total_steps=total)

    data = str(config.data.eval or "tiny eval set")
    evaluate = functools.partial(_evaluate_at, model=model, lcfg=lcfg, task=task, examples=eval_examples,
                                 config=config, data=data) if eval_examples else None
    if suite_jobs:
        evaluate = lambda n, adapters: multitask.evaluate(  # noqa: E731
            session.eval_dir(wd, n), model, adapters, lcfg, suite_jobs, config, n)
    plan = loop.Plan(total=total, checkpoint_every=config.checkpoint.every_steps,
                     eval_every=config.eval.every_steps, log_every=config.train.log_every_steps,
                     max_nonfinite=config.train.max_nonfinite_steps)
    step_fn = step.jit_train_step(functools.partial(losses.sft_loss, cfg=model.cfg, hp=hp), tx, schedule,
                                  config.seed, sh)
    if len(names) == 1:
        batch_at = functools.partial(sft_batch, packed=packed, batch_size=B, accum=A, seed=config.seed, sh=sh,
                                     seq_len=config.train.seq_len)
    else:
        batch_at = functools.partial(multitask.stream_batch, stream=stream, accum=A, sh=sh,
                                     seq_len=config.train.seq_len)
    zero_shot = None
    if eval_examples and config.eval.baseline:
        zero_shot = session.baseline(wd, model, state, lcfg, task, eval_examples, config, data)
    elif suite_jobs and config.eval.baseline:
        zero_shot = multitask.baseline(wd, model, state, lcfg, suite_jobs, config)
    fit = f"the training step (train.batch_size={B} / train.grad_accum_steps={A} rows x train.seq_len=" \
          f"{config.train.seq_len} tokens, model.remat={config.model.remat}, {mesh.size} devices)"
    with out_of_memory(fit, "train.batch_size or train.seq_len, raise train.grad_accum_steps, set model.remat=full, "
                            "or spread the model over more devices (mesh.fsdp)"):
        result = loop.run(state, step_fn=step_fn, base=base, batch_at=batch_at, wd=wd, mngr=mngr, plan=plan,
                          evaluate=evaluate)
    if result.stopped is not None:
        return {"step": result.state.step, "metrics": result.rows, "eval": None, "stopped": result.stopped}
    final = None
    if eval_examples:
        final = session.evaluate(session.eval_dir(wd), model, result.state.adapters, lcfg, task, eval_examples,
                                 config, total, data, baseline=zero_shot)
    elif suite_jobs:  # {name: metrics}: WORKDIR/eval/NAME/ and WORKDIR/eval/summary.md
        final = multitask.evaluate(session.eval_dir(wd), model, result.state.adapters, lcfg, suite_jobs, config, total,
                                   baselines=zero_shot)
    return {"step": total, "metrics": result.rows, "eval": final, "baseline": zero_shot}


def _evaluate_at(n: int, adapters: Any, *, model: Any, lcfg: Any, task: Any, examples: Any, config: Any,
                 data: str) -> dict:
    return session.evaluate(session.eval_dir(config.workdir, n), model, adapters, lcfg, task, examples, config, n,
                            data)
