"""DPO (Rafailov et al. 2023) with a small LoRA on preference pairs: `python -m jaxfin.dpo` runs `run(config)`.

One batch through the step: B pairs, each as two rows (prompt + chosen, prompt + rejected) in one pass of the
decoder with the adapters -> summed completion log-probs through the chunked log-prob function; the same rows
without the adapters (the reference, under stop_gradient) or their precomputed log-probs -> TRL's per-pair loss
(training/preference.py) -> gradients w.r.t. the adapters only -> AdamW (step.train_step, the SFT step). The loop,
workdir, checkpoints, resume, signals, NaN guard and logs are SFT's (loop.py, session.py); reference.py says which
model is the policy's start and which the reference.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Sequence

import jax
import ml_collections

from jaxfin import tasks, validate
from jaxfin.data import batches, pairs as pairs_lib, preference_batches
from jaxfin.errors import UserError
from jaxfin.io import workdir
from jaxfin.io.files import read_json
from jaxfin.model import lora as lora_lib
from jaxfin.tasks.base import Example, Task
from jaxfin.training import loop, losses, preference, reference, session, sharding, step


def dpo_config(config: ml_collections.ConfigDict, lcfg: lora_lib.LoraConfig) -> losses.DpoConfig:
    d = config.dpo
    if d.init not in reference.MODES:
        raise UserError(f"dpo.init={d.init!r}: choose one of {', '.join(reference.MODES)}")
    try:
        preference.check_config(d.beta, d.loss_type, d.label_smoothing)
    except ValueError as e:
        raise UserError(f"dpo.{e}") from None
    if lcfg.dropout != 0:
        raise UserError(f"lora.dropout={lcfg.dropout}: DPO needs 0 (dropout would make the policy differ from the "
                        "reference by noise; TRL zeroes it too); set --config.lora.dropout=0")
    return losses.DpoConfig(lora_scale=lcfg.scale, beta=float(d.beta), loss_type=d.loss_type,
                            label_smoothing=float(d.label_smoothing), precomputed_ref=bool(d.precompute_ref),
                            loss_chunk=config.train.loss_chunk)


def eval_tasks(config: ml_collections.ConfigDict) -> list[tuple[Task, list[Example]]]:
    """(task, examples) per name of eval.tasks: data.eval when it names one task's file, else each task's dev
    file; eval.max_examples as in SFT (-1 all, 0 none, K the first K)."""
    names = [n.strip() for n in str(config.eval.tasks or "").split(",") if n.strip()]
    if config.eval.max_examples == 0 or not names:
        return []
    if config.data.eval and len(names) > 1:
        raise UserError(f"data.eval={config.data.eval} is one file but eval.tasks names {len(names)} tasks; unset "
                        "data.eval (each task reads its own dev file) or name one task")
    out = []
    for name in names:
        try:
            task = tasks.get(name)
        except ValueError as e:
            raise UserError(f"eval.tasks: {e}") from None
        examples = task.read(config.data.eval or task.files["valid"])
        if config.eval.max_examples > 0:
            examples = examples[: config.eval.max_examples]
        out.append((task, examples))
    return out


def read_pairs(path: str | None) -> list[pairs_lib.Pair]:
    if not path:
        raise UserError("data.pairs is not set: give the preference pairs file (python -m jaxfin.pairs makes one)")
    try:
        return pairs_lib.read_pairs(path)
    except ValueError as e:
        raise UserError(str(e)) from None


def run(config: ml_collections.ConfigDict, devices: Sequence[jax.Device] | None = None) -> dict[str, Any]:
    """Trains (or resumes) per `config` on `devices` (default all); returns {"step", "metrics": logged rows of this
    run, "eval": {task: final metrics}, "baseline": {task: metrics of the model DPO started from}}, plus
    "stopped": the exit code when SIGTERM / SIGINT stopped it early (after saving checkpoint "step")."""
    validate.check(config)  # every key, and that the workdir can be written: before anything is read or loaded
    wd = config.workdir
    lcfg = session.lora_config(config)  # config errors first, before anything is written or loaded
    hp = dpo_config(config, lcfg)
    mesh = session.make_mesh(config, devices)
    B, A = config.train.batch_size, config.train.grad_accum_steps
    if not config.model.path:
        raise UserError("model.path is not set: give the model DPO starts from (e.g. the SFT workdir)")
    if config.train.max_nonfinite_steps < 0:
        raise UserError(f"train.max_nonfinite_steps={config.train.max_nonfinite_steps}: must be >= 0 (0: never stop)")

    # Inputs are checked before the workdir is created, the data before the model.
    pairs = read_pairs(config.data.pairs)
    evals = eval_tasks(config)
    model = session.load_model(config, config.model.path, mesh)
    if config.dpo.init == "continue" and model.lora is not None:
        session.check_model_adapters(config.model.path, model.lora_config, lcfg)
    model, merged = reference.prepare(model, config.dpo.init)
    tokenizer = model.tokenizer()
    ids = preference_batches.token_ids(pairs, tokenizer, config.data.pairs)
    rows = preference_batches.encode(ids, config.train.seq_len, pad_id=tokenizer.pad_token_id or 0,
                                     names=[p["id"] for p in pairs], vocab_size=model.cfg.vocab_size)
    total = config.train.steps or config.train.epochs * batches.steps_per_epoch(rows.num_rows, B)
    if total < 1:
        raise UserError("train.steps and train.epochs are both 0: nothing to train")

    tx, schedule = step.make_optimizer(config.optim, total)
    sh = sharding.train_shardings(model.cfg, lcfg, tx, mesh)
    base = jax.device_put(model.params, sh.base)  # the reference: never changed, never copied

    os.makedirs(wd, exist_ok=True)
    mngr = workdir.checkpoint_manager(wd, config.checkpoint.max_to_keep)
    state = session.start_state(wd, mngr, cfg=model.cfg, lcfg=lcfg, tx=tx, sh=sh, seed=config.seed, model=model,
                                model_path=config.model.path)
    model = dataclasses.replace(model, params=base, lora=None, lora_config=None)
    if jax.process_index() == 0:
        workdir.write_run(wd, base_model=model.source or config.model.path,
                          base_model_name_or_path=model.source if merged else (model.base_model_name_or_path
                                                                               or config.model.path),
                          model_config=model.cfg, lora_config=lcfg, config=config.to_dict(), merged_base=merged)
    if hp.precomputed_ref:
        ref = reference.cached(wd, rows, base, cfg=model.cfg, hp=hp, per_micro=B // A, mesh=mesh,
                               model_id=f"{model.source}|{config.dpo.init}")
        rows = dataclasses.replace(rows, ref_logps_N2=ref)

    shardings = preference_batches.pair_shardings(mesh, hp.precomputed_ref)
    step_fn = step.jit_train_step(functools.partial(losses.dpo_loss, cfg=model.cfg, hp=hp), tx, schedule,
                                  config.seed, dataclasses.replace(sh, batch=shardings))
    batch_at = functools.partial(preference_batches.pair_batch, rows=rows, batch_size=B, accum=A, seed=config.seed,
                                 shardings=shardings)
    plan = loop.Plan(total=total, checkpoint_every=config.checkpoint.every_steps,
                     eval_every=config.eval.every_steps, log_every=config.train.log_every_steps,
                     max_nonfinite=config.train.max_nonfinite_steps)
    evaluate = functools.partial(_evaluate_all, model=model, lcfg=lcfg, evals=evals, config=config)
    before = _before(wd, state, evaluate) if evals else {}
    result = loop.run(state, step_fn=step_fn, base=base, batch_at=batch_at, wd=wd, mngr=mngr, plan=plan,
                      evaluate=(lambda n, adapters: evaluate(session.eval_dir(wd, n), n, adapters)) if evals else None)
    if result.stopped is not None:
        return {"step": result.state.step, "metrics": result.rows, "eval": None, "stopped": result.stopped}
    final = evaluate(session.eval_dir(wd), total, result.state.adapters, baselines=before) if evals else {}
    return {"step": total, "metrics": result.rows, "eval": final, "baseline": before}


def _evaluate_all(out: str, step_n: int, adapters: Any, *, model: Any, lcfg: lora_lib.LoraConfig,
                  evals: list[tuple[Task, list[Example]]], config: ml_collections.ConfigDict,
                  baselines: dict | None = None) -> dict[str, dict]:
    """Each task's evaluation in OUT/<task>/ (beside its `baselines` entry when given) -> {task: metrics}."""
    return {task.name: session.evaluate(os.path.join(out, task.name), model, adapters, lcfg, task, examples, config,
                                        step_n, str(config.data.eval or task.files["valid"]),
                                        baseline=(baselines or {}).get(task.name))
            for task, examples in evals}


def _before(wd: str, state: loop.State, evaluate: Any) -> dict[str, dict]:
    """The evaluation of the model DPO starts from (step 0: the zero adapter leaves the merged model unchanged;
    continue: the adapters of model.path), in WORKDIR/eval/baseline/<task>; computed once, read back on a resume."""
    out = os.path.join(wd, "eval", "baseline")
    done = {}
    if os.path.isdir(out):
        for name in os.listdir(out):
            if os.path.isfile(os.path.join(out, name, "metrics.json")):
                done[name] = read_json(os.path.join(out, name, "metrics.json"))
    if done or state.step != 0:
        if not done:
            print(f"note: {out} is missing and the run resumes at step {state.step}, so no before-DPO evaluation")
        return done
    return evaluate(out, 0, state.adapters)
