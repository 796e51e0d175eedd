"""The DPO policy's starting point and its reference model, without a second copy of the base.

    dpo.init=merge     (default; the paper) the LoRA adapters that come with model.path (an SFT workdir or a jaxfin
                       checkpoint with adapters) are merged into the loaded base, in place, one layer at a time
                       (model/lora.merge_by_layer); a new zero-initialised adapter (lora.*) trains on top, and the
                       reference is the merged model with the adapter off. Without adapters in model.path the base
                       is used as it is.
    dpo.init=continue  the adapters of model.path are the policy's starting point and the reference is the base
                       with the adapters off: TRL's semantics for DPOTrainer(base_model, peft_config=...) whose
                       adapter weights are then loaded (tests/trl_dpo_reference.py, reference="base").

Either way the reference is `base` with `lora=None` in the same jitted step (losses.dpo_loss), or its log-probs are
precomputed once per dataset (dpo.precompute_ref) and cached in WORKDIR/reference/<key>.npz, keyed by the pairs'
token ids, a fingerprint of the reference weights and the batch layout (the values are computed on the same
micro-batch shape and sharding as in the step, so they equal the in-step ones bit for bit).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxfin.data.preference_batches import KEYS, PairRows
from jaxfin.io import store
from jaxfin.io.files import atomic_write
from jaxfin.model import lora as lora_lib
from jaxfin.model.params import Params
from jaxfin.training import losses, sharding

MODES = ("merge", "continue")
CACHE_DIR = "reference"


def prepare(model: store.Model, mode: str) -> tuple[store.Model, bool]:
    """(the model DPO trains on, whether adapters were merged into its base). merge: model.path's adapters folded
    into the base params in place (the unmerged base is not kept); continue: the model as loaded, its adapters
    the policy's start (session.start_state picks them up)."""
    if mode == "continue" or model.lora is None:
        return model, False
    params = lora_lib.merge_by_layer(model.params, model.lora, model.lora_config)
    print(f"merged the LoRA adapters of {model.source} into the base (the DPO reference; a new adapter trains on "
          f"top)")
    return dataclasses.replace(model, params=params, lora=None, lora_config=None), True


@jax.jit
def _leaf_sums(params: Params) -> list[jax.Array]:
    return [jnp.stack([jnp.sum(x.astype(jnp.float32)), jnp.sum(jnp.abs(x.astype(jnp.float32)))])
            for x in jax.tree.leaves(params)]


def fingerprint(params: Params) -> str:
    """A cheap identity of the reference weights: sha256 over each leaf's shape, dtype, sum and sum of |x| (one
    reduction per leaf on the device; any changed weight changes it in practice)."""
    h = hashlib.sha256()
    for leaf, sums in zip(jax.tree.leaves(params), _leaf_sums(params)):
        h.update(f"{leaf.shape}{leaf.dtype}".encode())
        h.update(np.asarray(jax.device_get(sums)).tobytes())
    return h.hexdigest()


def _micro_shardings(mesh: jax.sharding.Mesh) -> jax.sharding.NamedSharding:
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(sharding.BATCH_AXES, None, None))


def _reference_logps(base: Params, batch: dict, *, cfg: Any, chunk: int) -> jax.Array:
    return losses.sequence_logps(base, None, batch, cfg=cfg, lora_scale=1.0, chunk=chunk)


def compute(rows: PairRows, base: Params, *, cfg: Any, hp: losses.DpoConfig, per_micro: int,
            mesh: jax.sharding.Mesh) -> np.ndarray:
    """[N, 2] reference log-probs of every pair, `per_micro` pairs at a time: the micro-batch shape and sharding
    of the train step, so each value is computed as the step would compute it."""
    fn = jax.jit(functools.partial(_reference_logps, cfg=cfg, chunk=hp.loss_chunk))
    shard = _micro_shardings(mesh)
    N = rows.num_rows
    out = np.zeros((N, 2), np.float32)
    for start in range(0, N, per_micro):
        index = np.arange(start, start + per_micro)
        host = rows.rows(np.where(index < N, index, -1))
        batch = {k: jax.make_array_from_callback(host[k].shape, shard, lambda i, a=host[k]: a[i]) for k in KEYS}
        values = fn(base, batch)
        if not values.is_fully_addressable:
            from jax.experimental import multihost_utils

            values = multihost_utils.process_allgather(values, tiled=True)
        n = min(per_micro, N - start)
        out[start: start + n] = np.asarray(values)[:n]
    return out


def cached(wd: str, rows: PairRows, base: Params, *, cfg: Any, hp: losses.DpoConfig, per_micro: int,
           mesh: jax.sharding.Mesh, model_id: str) -> np.ndarray:
    """compute(), read from WORKDIR/reference/<key>.npz when this data, reference and layout were done before."""
    key_parts = {"data": rows.fingerprint(), "reference": fingerprint(base), "model": model_id,
                 "per_micro": per_micro, "devices": mesh.devices.size, "mesh": dict(mesh.shape),
                 "loss_chunk": hp.loss_chunk, "dtype": cfg.dtype}
    key = hashlib.sha256(json.dumps(key_parts, sort_keys=True).encode()).hexdigest()[:16]
    path = os.path.join(wd, CACHE_DIR, f"{key}.npz")
    if os.path.isfile(path):
        with np.load(path) as f:
            if f["ref_logps"].shape == (rows.num_rows, 2):
                print(f"reference log-probs of {rows.num_rows} pairs read from {path}")
                return f["ref_logps"]
    values = compute(rows, base, cfg=cfg, hp=hp, per_micro=per_micro, mesh=mesh)
    if jax.process_index() == 0:
        os.makedirs(os.path.dirname(path), exist_ok=True)

        def write(tmp: str) -> None:
            with open(tmp, "wb") as f:
                np.savez(f, ref_logps=values, ids=np.asarray(rows.ids), key=json.dumps(key_parts))

        atomic_write(path, write)
        print(f"reference log-probs of {rows.num_rows} pairs precomputed -> {path}")
    return values
