"""The train step, for any loss: micro-batch scan with an exact mean, gradients for the adapters only, gradient
clipping + AdamW, and a NaN/Inf guard, as one jitted function.

    loss_fn(adapters, base, batch, rng) -> (loss_sum, aux)     (training/losses.py)
    aux = {"count": denominator of the loss, "tokens": real tokens processed, "metrics": {name: (sum, n)}}

Step n means n optimizer updates done. Randomness (NEFTune noise, dropout) is a function of (seed, step,
micro-batch) only, so a resumed run repeats the losses of an uninterrupted one bit for bit on the same devices.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax

from jaxfin.model.params import Params
from jaxfin.training.sharding import TrainShardings

Batch = dict[str, jax.Array]
LossFn = Callable[[Params, Params, Batch, jax.Array], tuple[jax.Array, dict]]


def train_step(adapters: Params, opt_state: optax.OptState, base: Params, batch: Batch, step: jax.Array, *,
               loss_fn: LossFn, tx: optax.GradientTransformation, schedule: optax.Schedule,
               seed: int) -> tuple[Params, optax.OptState, dict[str, jax.Array]]:
    """One optimizer update from a batch of [A, ...] arrays (A gradient-accumulation micro-batches).

    The loss is the sum over the A micro-batches divided by their total count, so accumulation changes nothing
    but memory; each aux metric is likewise sum / n over all micro-batches. `step` is the number of steps done
    before this one. A step with a non-finite loss or gradient changes nothing (metrics "nonfinite")."""
    key = jax.random.fold_in(jax.random.key(seed), step)
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def micro(acc: Params, xs: tuple[Batch, jax.Array]) -> tuple[Params, tuple[jax.Array, dict]]:
        mb, i = xs
        (loss, aux), grads = grad_fn(adapters, base, mb, jax.random.fold_in(key, i))
        return jax.tree.map(jnp.add, acc, grads), (loss, aux)

    A = jax.tree.leaves(batch)[0].shape[0]
    grads, (losses, aux) = jax.lax.scan(micro, jax.tree.map(jnp.zeros_like, adapters), (batch, jnp.arange(A)))
    count = jnp.maximum(jnp.sum(aux["count"]), 1.0)
    grads = jax.tree.map(lambda g: g / count, grads)
    updates, new_opt_state = tx.update(grads, opt_state, adapters)
    loss, grad_norm = jnp.sum(losses) / count, optax.tree.norm(grads)
    # NaN/Inf guard: a non-finite loss or gradient (the norm is non-finite iff some element is, or it overflows)
    # skips the update: adapters and optimizer state (its step count too) stay as they were. A select, not a
    # host-side branch, so there is one compile and no sync.
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)  # noqa: E731
    # The lr this update used: the schedule at the optimizer's count of applied (finite) updates.
    applied = next(s.count for s in jax.tree.leaves(opt_state, is_leaf=_is_schedule_state) if _is_schedule_state(s))
    metrics = {"loss": loss, "grad_norm": grad_norm, "lr": schedule(applied), "tokens": jnp.sum(aux["tokens"]),
               "nonfinite": jnp.logical_not(finite)}
    # A metric with nothing to average in this step (e.g. a task absent from the batch) is NaN: null in the log.
    metrics |= {k: jnp.where(jnp.sum(n) > 0, jnp.sum(s) / jnp.maximum(jnp.sum(n), 1), jnp.nan)
                for k, (s, n) in aux["metrics"].items()}
    return keep(optax.apply_updates(adapters, updates), adapters), keep(new_opt_state, opt_state), metrics


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


def jit_train_step(loss_fn: LossFn, tx: optax.GradientTransformation, schedule: optax.Schedule, seed: int,
                   sh: TrainShardings) -> Any:
    """train_step jitted with explicit shardings; the adapters and optimizer state are donated (updated in place)."""
    return jax.jit(functools.partial(train_step, loss_fn=loss_fn, tx=tx, schedule=schedule, seed=seed),
                   in_shardings=(sh.lora, sh.opt_state, sh.base, sh.batch, sh.replicated),
                   out_shardings=(sh.lora, sh.opt_state, sh.replicated), donate_argnums=(0, 1))
