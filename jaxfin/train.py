"""LoRA + NEFTune instruction fine-tuning: the jitted train step and the loop.

    python -m jaxfin.train --config configs/lora_neftune.py --config.lora.rank=32

One batch through the step: embed -> NEFTune noise (neftune.py) -> decoder with the adapters (model.py) ->
cross-entropy in sequence chunks against the output embedding -> gradients w.r.t. the adapters only -> AdamW.
Step n means n optimizer updates done: metrics of step n, checkpoint n (the state after n updates); a rerun with
the same workdir resumes from the latest checkpoint and continues at n + 1, with the same losses bit for bit on
the same devices (data order, NEFTune noise and dropout are functions of (seed, step)). A step whose loss or
gradients are not finite is skipped (it still counts as a step) and counted; train.max_nonfinite_steps in a row
stop the run. SIGTERM / SIGINT save a checkpoint of the current step and exit 143 / 130 (jaxfin.preemption).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxfin import config_flags, data, hub, distributed, model, neftune, preemption, sharding, workdir
from jaxfin import lora as lora_lib
from jaxfin.errors import UserError, run_cli
from jaxfin.model import ModelConfig, Params

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "tiny.py")
Batch = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """Static settings of the train step (hashable, closed over by jit)."""

    lora_scale: float
    lora_dropout: float = 0.0
    neftune_alpha: float = 0.0
    neftune_length: str = "segment"
    loss_chunk: int = 128
    seed: int = 0


def chunked_cross_entropy(h_BTD: jax.Array, w_VD: jax.Array, targets_BT: jax.Array, mask_BT: jax.Array,
                          chunk: int) -> jax.Array:
    """Sum over masked-in positions of -log softmax(h @ w.T)[target], computed `chunk` positions at a time with
    the logits rematerialised in the backward pass, so [B, T, V] f32 logits never exist at once."""
    B, T, D = h_BTD.shape
    chunk = min(chunk, T)
    pad = -T % chunk
    if pad:  # padded positions carry mask 0
        h_BTD = jnp.pad(h_BTD, ((0, 0), (0, pad), (0, 0)))
        targets_BT, mask_BT = jnp.pad(targets_BT, ((0, 0), (0, pad))), jnp.pad(mask_BT, ((0, 0), (0, pad)))
    n = (T + pad) // chunk
    to_chunks = lambda x: x.reshape(B, n, chunk, *x.shape[2:]).swapaxes(0, 1)  # noqa: E731  [n, B, c, ...]
    w_VD = w_VD.astype(h_BTD.dtype)

    @jax.checkpoint
    def chunk_loss(xs: tuple[jax.Array, jax.Array, jax.Array]) -> jax.Array:
        h_BcD, t_Bc, m_Bc = xs
        logits_BcV = jnp.einsum("BcD,VD->BcV", h_BcD, w_VD, preferred_element_type=jnp.float32)
        target_Bc = jnp.take_along_axis(logits_BcV, t_Bc[..., None], axis=-1)[..., 0]
        return jnp.sum((jax.nn.logsumexp(logits_BcV, axis=-1) - target_Bc) * m_Bc)

    return jnp.sum(jax.lax.map(chunk_loss, (to_chunks(h_BTD), to_chunks(targets_BT), to_chunks(mask_BT))))


def loss_sum(lora: Params, base: Params, batch: Batch, rng: jax.Array, cfg: ModelConfig, hp: StepConfig) -> jax.Array:
    """Summed token cross-entropy of one micro-batch, with NEFTune noise and LoRA dropout drawn from `rng`."""
    noise_rng, dropout_rng = jax.random.split(rng)
    x_BTD = model.embed(base, batch["tokens_BT"], cfg)
    x_BTD = neftune.add_noise(x_BTD, batch["segment_ids_BT"], noise_rng, hp.neftune_alpha, hp.neftune_length)
    h_BTD, _ = model.decoder(base, x_BTD, batch["positions_BT"], cfg, segment_ids_BT=batch["segment_ids_BT"],
                             lora=lora, lora_scale=hp.lora_scale, lora_dropout=hp.lora_dropout,
                             rng=dropout_rng if hp.lora_dropout > 0 else None)
    return chunked_cross_entropy(h_BTD, model.output_embedding(base, cfg), batch["targets_BT"],
                                 batch["loss_mask_BT"], hp.loss_chunk)


def train_step(lora: Params, opt_state: optax.OptState, base: Params, batch: Batch, step: jax.Array, *,
               cfg: ModelConfig, hp: StepConfig, tx: optax.GradientTransformation,
               schedule: optax.Schedule) -> tuple[Params, optax.OptState, dict[str, jax.Array]]:
    """One optimizer update from a batch of [A, B, T] arrays (A gradient-accumulation micro-batches).

    The loss is the mean over all masked-in targets of the A micro-batches, so accumulation changes nothing but
    memory. Randomness (NEFTune, dropout) is a function of (seed, step, micro-batch) only. `step` is the number
    of steps done before this one. A step with a non-finite loss or gradient changes nothing (metrics "nonfinite")."""
    count = jnp.maximum(jnp.sum(batch["loss_mask_BT"]), 1.0)
    key = jax.random.fold_in(jax.random.key(hp.seed), step)
    grad_fn = jax.value_and_grad(loss_sum)

    def micro(acc: Params, xs: tuple[Batch, jax.Array]) -> tuple[Params, jax.Array]:
        mb, i = xs
        loss, grads = grad_fn(lora, base, mb, jax.random.fold_in(key, i), cfg, hp)
        return jax.tree.map(jnp.add, acc, grads), loss

    A = batch["tokens_BT"].shape[0]
    grads, losses = jax.lax.scan(micro, jax.tree.map(jnp.zeros_like, lora), (batch, jnp.arange(A)))
    grads = jax.tree.map(lambda g: g / count, grads)
    updates, new_opt_state = tx.update(grads, opt_state, lora)
    loss, grad_norm = jnp.sum(losses) / count, optax.tree.norm(grads)
    # NaN/Inf guard: a non-finite loss or gradient (the norm is non-finite iff some element is, or it overflows)
    # skips the update: adapters and optimizer state (its step count too) stay as they were. A select, not a
    # host-side branch, so there is one compile and no sync.
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)  # noqa: E731
    # The lr this update used: the schedule at the optimizer's count of applied (finite) updates.
    applied = next(s.count for s in jax.tree.leaves(opt_state, is_leaf=_is_schedule_state) if _is_schedule_state(s))
    metrics = {"loss": loss, "grad_norm": grad_norm, "lr": schedule(applied),
               "tokens": jnp.sum(batch["segment_ids_BT"] > 0), "nonfinite": jnp.logical_not(finite)}
    return keep(optax.apply_updates(lora, updates), lora), keep(new_opt_state, opt_state), metrics


def _is_schedule_state(x: Any) -> bool:
    return isinstance(x, optax.ScaleByScheduleState)


def make_optimizer(optim: ml_collections.ConfigDict, total_steps: int) -> tuple[optax.GradientTransformation,
                                                                                  optax.Schedule]:
    """clip_by_global_norm + AdamW (Loshchilov & Hutter 2019), linear warmup then cosine decay to
    lr * end_lr_ratio over optim.decay_steps (0: the whole run). The k-th applied update (1-based) uses
    schedule(k - 1); a step skipped by the NaN guard applies none, so later steps lag by one."""
    decay = optim.decay_steps or total_steps
    warmup = min(optim.warmup_steps, decay)
    # Evaluated at k = count + 1 over a horizon of decay + 1: the first update gets lr / warmup (not 0) and the
    # last one a small positive lr (not end_lr exactly), so no update is wasted.
    cosine = optax.warmup_cosine_decay_schedule(0.0, optim.lr, warmup, decay + 1, optim.lr * optim.end_lr_ratio)
    schedule = lambda count: cosine(count + 1)  # noqa: E731
    tx = optax.chain(optax.clip_by_global_norm(optim.clip_norm),
                     optax.adamw(schedule, b1=optim.b1, b2=optim.b2, weight_decay=optim.weight_decay))
    return tx, schedule


def jit_train_step(cfg: ModelConfig, hp: StepConfig, tx: optax.GradientTransformation, schedule: optax.Schedule,
                   sh: sharding.TrainShardings) -> Any:
    """train_step jitted with explicit shardings; the adapters and optimizer state are donated (updated in place)."""
    return jax.jit(functools.partial(train_step, cfg=cfg, hp=hp, tx=tx, schedule=schedule),
                   in_shardings=(sh.lora, sh.opt_state, sh.base, sh.batch, sh.replicated),
                   out_shardings=(sh.lora, sh.opt_state, sh.replicated), donate_argnums=(0, 1))


def init_state(cfg: ModelConfig, lcfg: lora_lib.LoraConfig, tx: optax.GradientTransformation,
               sh: sharding.TrainShardings, seed: int) -> tuple[Params, optax.OptState]:
    """Fresh adapters (PEFT init) and optimizer state, created in place on the mesh."""
    key = jax.random.fold_in(jax.random.key(seed), 2**32 - 1)  # a key no step uses
    lora = jax.jit(lora_lib.init, static_argnums=(0, 1), out_shardings=sh.lora)(cfg, lcfg, key)
    return lora, jax.jit(tx.init, out_shardings=sh.opt_state)(lora)


def lora_config(config: ml_collections.ConfigDict) -> lora_lib.LoraConfig:
    c = config.lora
    return lora_lib.LoraConfig(rank=c.rank, alpha=c.alpha, rslora=c.rslora, dropout=c.dropout,
                               targets=tuple(c.targets))


def step_config(config: ml_collections.ConfigDict, lcfg: lora_lib.LoraConfig) -> StepConfig:
    if config.neftune.length not in neftune.LENGTHS:
        raise UserError(f"neftune.length={config.neftune.length!r}: choose one of {', '.join(neftune.LENGTHS)}")
    return StepConfig(lora_scale=lcfg.scale, lora_dropout=lcfg.dropout, neftune_alpha=float(config.neftune.alpha),
                      neftune_length=config.neftune.length, loss_chunk=config.train.loss_chunk, seed=config.seed)


def micro_batches(batch: dict[str, np.ndarray], accum: int) -> dict[str, np.ndarray]:
    """[B, T] -> [A, B/A, T] with micro-batch a = rows a, a + A, ...: a process's contiguous slice of the global
    batch then stays contiguous in every micro-batch (see sharding.put_batch)."""
    return {k: v.reshape(v.shape[0] // accum, accum, *v.shape[1:]).swapaxes(0, 1) for k, v in batch.items()}


# --------------------------------------------------------------------------------------------------------------
# The loop.


def _assets(config: ml_collections.ConfigDict) -> tuple[str, str, str | None]:
    """(model path, train data, eval data); unset ones come from the self-made tiny assets (jaxfin.synthetic),
    written to WORKDIR/assets (deterministic in the seed, so a resumed run rewrites the same bytes)."""
    model_path, train_path, eval_path = config.model.path, config.data.train, config.data.eval
    if None in (model_path, train_path, eval_path):
        from jaxfin import synthetic

        out = os.path.join(config.workdir, "assets")
        tiny = distributed.main_first("tiny assets", lambda: synthetic.write_tiny_assets(out, seed=config.seed))
        model_path, train_path, eval_path = model_path or tiny.model, train_path or tiny.train, eval_path or tiny.eval
    return model_path, train_path, eval_path


def _evaluate(out_dir: str, base_model: Any, lora: Params, lcfg: lora_lib.LoraConfig, examples: list[dict],
              types: list[str], config: ml_collections.ConfigDict, step: int) -> dict[str, Any]:
    """Greedy decoding with the adapters on the eval examples -> OUT/{metrics.json, predictions.jsonl, report.md}."""
    from jaxfin import evaluate

    m = dataclasses.replace(base_model, lora=lora, lora_config=lcfg)
    mesh = jax.tree.leaves(lora)[0].sharding.mesh  # the training mesh: decode rows split over all its processes
    predictions = evaluate.evaluate_model(m, examples, max_new_tokens=config.eval.max_new_tokens,
                                          batch_size=config.eval.batch_size, types=types, mesh=mesh)
    metrics = evaluate.score(examples, predictions, types)
    if jax.process_index() == 0:
        meta = {"workdir": config.workdir, "step": str(step), "data": str(config.data.eval or "tiny eval set"),
                "max_new_tokens": str(config.eval.max_new_tokens)}
        evaluate.write_report(out_dir, metrics, evaluate.prediction_rows(examples, predictions), meta=meta)
    print(f"eval step {step}: micro F1 {metrics['micro_f1']:.4f} (precision {metrics['micro_precision']:.4f}, "
          f"recall {metrics['micro_recall']:.4f}), parse failures {metrics['parse_failure_rate']:.2%}, "
          f"n={metrics['n_examples']} -> {out_dir}")
    return metrics


def _check_resume(wd: str, mcfg: ModelConfig, lcfg: lora_lib.LoraConfig) -> None:
    run = workdir.read_run(wd)
    if run["lora_config"] != lcfg.to_dict():
        raise UserError(f"{wd}: its checkpoints have lora config {run['lora_config']}, this run asks for "
                        f"{lcfg.to_dict()}; use a new workdir")
    old = {k: v for k, v in run["model_config"].items() if k not in ("dtype", "remat", "attention_impl")}
    new = {k: v for k, v in dataclasses.asdict(mcfg).items() if k in old}
    if old != new:
        raise UserError(f"{wd}: its checkpoints are for a different model than {run['base_model']}; use a new workdir")


def _check_model_adapters(path: str, have: lora_lib.LoraConfig, want: lora_lib.LoraConfig) -> None:
    """Training continues the adapters that come with the model, so the config's lora block must describe them
    (dropout is a training setting and may differ)."""
    keys = [k for k in ("rank", "alpha", "rslora") if getattr(have, k) != getattr(want, k)]
    keys += ["targets"] if set(have.targets) != set(want.targets) else []
    if keys:
        show = lambda c, k: ",".join(c.targets) if k == "targets" else str(getattr(c, k)).lower()  # noqa: E731
        raise UserError(f"model.path={path} has LoRA adapters with " + ", ".join(f"lora.{k}={show(have, k)}" for k in
                        keys) + " but the config asks for " + ", ".join(f"lora.{k}={show(want, k)}" for k in keys) +
                        "; set " + " ".join(f"--config.lora.{k}={show(have, k)}" for k in keys) + " to train them")


def run(config: ml_collections.ConfigDict, devices: Sequence[jax.Device] | None = None) -> dict[str, Any]:
    """Trains (or resumes) per `config` on `devices` (default all); returns {"step", "metrics": logged rows of
    this run, "eval": final eval metrics or None}, plus "stopped": the exit code when SIGTERM / SIGINT stopped it
    early (after saving checkpoint "step"). Starts from the adapters of model.path when it has some (a jaxfin
    checkpoint, e.g. an imported PEFT adapter) and the workdir has no checkpoint yet."""
    from jaxfin import checkpoint, ner

    wd = config.workdir
    lcfg = lora_config(config)  # config errors first, before anything is written or loaded
    hp = step_config(config, lcfg)
    distributed.initialize(config.distributed)  # before anything touches a device
    mesh = sharding.make_mesh(config.mesh.to_dict(), devices)
    B, A = config.train.batch_size, config.train.grad_accum_steps
    if A < 1 or B % A:
        raise UserError(f"train.grad_accum_steps={A} must be >= 1 and divide train.batch_size={B}")
    if (B // A) % sharding.batch_divisor(mesh):
        raise UserError(f"train.batch_size={B}: each of the {A} micro-batches must split evenly over the "
                        f"{sharding.batch_divisor(mesh)} data x fsdp devices")
    if config.model.remat not in model.REMAT_POLICIES:
        raise UserError(f"model.remat={config.model.remat!r}: choose one of {', '.join(model.REMAT_POLICIES)}")
    if config.model.attention_impl not in (None, "xla", "cudnn"):
        raise UserError(f"model.attention_impl={config.model.attention_impl!r}: choose xla or cudnn (or leave it unset)")

    # Inputs are checked before the workdir is created, so a mistake leaves nothing behind; the data before the
    # model, so a bad line fails in a second rather than after minutes of loading weights.
    model_path, train_path, eval_path = _assets(config)
    train_examples = ner.load_examples(train_path)
    types = ner.entity_types(train_examples)
    eval_examples = [] if config.eval.max_examples == 0 else ner.load_examples(eval_path)
    if config.eval.max_examples > 0:
        eval_examples = eval_examples[: config.eval.max_examples]
    # Place the base weights straight into their shards (a hub id is downloaded first, so its config is known).
    local_path = hub.download_model(model_path) if hub.is_hub_id(model_path) else model_path
    peek = checkpoint.model_config(local_path)
    base_model = checkpoint.load_model(local_path, dtype=config.model.dtype, shardings=None if peek is None else
                                       sharding.param_shardings(peek, mesh))
    if local_path != model_path:
        base_model = dataclasses.replace(base_model, base_model_name_or_path=model_path)
    mcfg = base_model.cfg.replace(remat=config.model.remat, attention_impl=config.model.attention_impl)
    if base_model.lora is not None:
        _check_model_adapters(model_path, base_model.lora_config, lcfg)
    tokenizer = base_model.tokenizer()
    if tokenizer is None:
        raise UserError(f"model.path={model_path}: the model has no tokenizer files")
    encoded = data.encode_ner(train_examples, tokenizer, types, eos_ids=base_model.eos_ids)
    packed = data.pack(encoded, config.train.seq_len, pad_id=tokenizer.pad_token_id or 0)
    total = config.train.steps or config.train.epochs * data.steps_per_epoch(packed.num_rows, B)
    if total < 1:
        raise UserError("train.steps and train.epochs are both 0: nothing to train")
    if config.train.max_nonfinite_steps < 0:
        raise UserError(f"train.max_nonfinite_steps={config.train.max_nonfinite_steps}: must be >= 0 (0: never stop)")

    tx, schedule = make_optimizer(config.optim, total)
    sh = sharding.train_shardings(mcfg, lcfg, tx, mesh)
    base = jax.device_put(base_model.params, sh.base)  # a no-op when load_model placed them already
    model_lora = base_model.lora  # adapters that came with model.path (e.g. an imported PEFT adapter), or None
    base_model = dataclasses.replace(base_model, params=base, cfg=mcfg, lora=None, lora_config=None)

    os.makedirs(wd, exist_ok=True)
    mngr = workdir.checkpoint_manager(wd, config.checkpoint.max_to_keep)
    start, nonfinite = mngr.latest_step(), 0
    if start is None and model_lora is not None:
        lora = jax.device_put(jax.tree.map(lambda x: x.astype(jnp.float32), model_lora), sh.lora)
        opt_state = jax.jit(tx.init, out_shardings=sh.opt_state)(lora)
        start, position = 0, 0
        print(f"starting from the LoRA adapters of {model_path}")
    elif start is None:
        lora, opt_state = init_state(mcfg, lcfg, tx, sh, config.seed)
        start, position = 0, 0
    else:
        _check_resume(wd, mcfg, lcfg)
        like = lambda tree, shards: jax.tree.map(  # noqa: E731
            lambda s, h: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=h), tree, shards)
        lora_shapes = lora_lib.shapes(mcfg, lcfg)
        lora, opt_state, meta = workdir.restore(mngr, start, like(lora_shapes, sh.lora),
                                                like(jax.eval_shape(tx.init, lora_shapes), sh.opt_state))
        position, nonfinite = meta["data_position"], meta.get("nonfinite_steps", 0)
        print(f"resuming {wd} from step {start}")
    del model_lora
    if jax.process_index() == 0:
        workdir.write_run(wd, base_model=base_model.source or model_path, base_model_name_or_path=base_model.base_model_name_or_path or model_path,
                          model_config=mcfg, lora_config=lcfg, config={**config.to_dict(), "entity_types": types})

    step_fn = jit_train_step(mcfg, hp, tx, schedule, sh)
    global_shape = (A, B // A, config.train.seq_len)
    log = workdir.MetricsLog(wd, start, total, config.train.log_every_steps, nonfinite)
    max_bad, every = config.train.max_nonfinite_steps, config.checkpoint.every_steps
    saved = start if start else None  # the newest checkpoint (written or being written)

    def logged(n: int, metrics: dict[str, jax.Array]) -> None:
        """Logs step n; stops the run after max_bad consecutive skipped (non-finite) steps."""
        if not log.step(n, metrics) and max_bad and log.consecutive >= max_bad:
            kept = f"checkpoint {saved} holds the last good state" if saved else "no checkpoint was written"
            raise UserError(f"training stopped at step {n}: {max_bad} consecutive steps ({n - max_bad + 1}-{n}) had "
                            f"a non-finite loss or gradients and were skipped (adapters not updated); {kept}. Lower "
                            f"optim.lr or check the data (train.max_nonfinite_steps={max_bad})")

    stop, stopped, pending = preemption.StopSignal(), None, None
    stop.install()
    try:
        for step in range(start, total):
            batch = distributed.local_batch(packed, position, B, config.seed, sh.batch, global_shape)
            position += 1
            batch = sharding.put_batch(micro_batches(batch, A), sh.batch, global_shape)
            lora, opt_state, metrics = step_fn(lora, opt_state, base, batch, np.int32(step))
            if pending is not None:
                logged(*pending)  # step n - 1, fetched while step n runs
            n, pending = step + 1, (step + 1, metrics)
            stopping = stop.requested()
            if n == total or stopping or (every and n % every == 0):
                # Step n's metrics first (the save waits for step n anyway): the checkpoint's count of skipped
                # steps is then exact, and a checkpoint is never written after the step that ends a run.
                logged(*pending)
                pending = None
                workdir.save(mngr, n, lora, opt_state, position, log.nonfinite)
                saved = n
            if stopping:
                stopped = n
                break
            if config.eval.every_steps and n % config.eval.every_steps == 0 and n != total and eval_examples:
                _evaluate(os.path.join(wd, "eval", f"step_{n}"), base_model, lora, lcfg, eval_examples, types,
                          config, n)
    finally:
        stop.restore()
        log.close()
        mngr.wait_until_finished()  # a save in flight completes (or, if the process is killed, stays a tmp dir)
        mngr.close()
    if stopped is not None:
        return {"step": stopped, "metrics": log.rows, "eval": None, "stopped": stop.exit_code}
    final = None
    if eval_examples:
        final = _evaluate(os.path.join(wd, "eval"), base_model, lora, lcfg, eval_examples, types, config, total)
    return {"step": total, "metrics": log.rows, "eval": final}


def main(argv: Sequence[str]) -> int:
    config, rest = config_flags.parse_args(argv, DEFAULT_CONFIG)
    if rest:
        raise UserError(f"unexpected argument {rest[0]!r} (usage: --config FILE --config.KEY=VALUE ...)")
    t0 = time.perf_counter()
    out = run(config)
    if "stopped" in out:
        print(f"stopped at step {out['step']}: checkpoint saved in {config.workdir}; run the same command to "
              f"continue", file=sys.stderr)
        return out["stopped"]
    rows = out["metrics"]
    if rows:
        loss = lambda r: "nan" if r["loss"] is None else f"{r['loss']:.4f}"  # noqa: E731
        print(f"trained to step {out['step']} in {time.perf_counter() - t0:.1f} s: loss {loss(rows[0])} "
              f"(step {rows[0]['step']}) -> {loss(rows[-1])} (step {rows[-1]['step']}); workdir {config.workdir}")
    return 0


if __name__ == "__main__":
    run_cli(main)
