"""All sharding decisions: the device mesh, logical-axis rules, and NamedShardings for params, adapters,
optimizer state and batches (the logical-axis style of MaxText / flax.linen.partitioning).

Mesh axes: data (pure data parallel), fsdp (data parallel with the weights' `embed` axis sharded, ZeRO-3 style),
tensor (Megatron-style heads / mlp / vocab split). The global batch is split over data x fsdp.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Sequence

import jax
import optax
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from jaxfin.errors import UserError
from jaxfin.model import lora as lora_lib
from jaxfin.model import params as params_lib
from jaxfin.model.config import ModelConfig

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")
# logical axis (params.logical_axes, lora.logical_axes) -> mesh axis; None replicates.
RULES: dict[str, Any] = {
    "batch": BATCH_AXES,
    "layers": None,
    "embed": "fsdp",
    "heads": "tensor",
    "kv_heads": "tensor",
    "mlp": "tensor",
    "vocab": "tensor",
}


def make_mesh(shape: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
    """Mesh over `devices` (default: all) with sizes from the config's `mesh` block; one size may be -1 (the rest)."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = {a: int(shape.get(a, 1)) for a in MESH_AXES}
    free = [a for a, s in sizes.items() if s == -1]
    if len(free) > 1 or any(s == 0 or s < -1 for s in sizes.values()):
        raise UserError(f"mesh: sizes must be positive with at most one -1, got {sizes}")
    known = math.prod(s for s in sizes.values() if s != -1)
    if free:
        if len(devices) % known:
            others = ", ".join(f"mesh.{a}={s}" for a, s in sizes.items() if s != -1)
            raise UserError(f"mesh.{free[0]}=-1: {others} do not divide the {len(devices)} devices")
        sizes[free[0]] = len(devices) // known
    if math.prod(sizes.values()) != len(devices):
        bad = next((a for a, s in sizes.items() if s > 1), "data")
        raise UserError(f"mesh.{bad}: mesh {sizes} has {math.prod(sizes.values())} devices, "
                        f"but there are {len(devices)} (use -1 for one axis to take the rest)")
    return jax.make_mesh(tuple(sizes[a] for a in MESH_AXES), MESH_AXES, (AxisType.Auto,) * len(MESH_AXES),
                         devices=devices)


def _axis_size(mesh: jax.sharding.Mesh, axis: Any) -> int:
    axes = axis if isinstance(axis, tuple) else (axis,)
    return math.prod(mesh.shape[a] for a in axes)


def spec(logical: Sequence[str | None], shape: Sequence[int], mesh: jax.sharding.Mesh) -> P:
    """PartitionSpec for one array. A dimension the mesh axis does not divide stays replicated (e.g. 8 kv heads
    on 16-way tensor parallelism), and a mesh axis is used at most once per array."""
    used: set[str] = set()
    out = []
    for name, size in zip(logical, shape):
        axis = RULES.get(name) if name else None
        axes = set(axis if isinstance(axis, tuple) else (axis,)) if axis else set()
        if axis is None or axes & used or size % _axis_size(mesh, axis):
            out.append(None)
        else:
            used |= axes
            out.append(axis)
    return P(*out)


def _shardings(logical_tree: Any, shape_tree: Any, mesh: jax.sharding.Mesh) -> Any:
    is_axes = lambda x: isinstance(x, tuple) and all(a is None or isinstance(a, str) for a in x)  # noqa: E731
    return jax.tree.map(lambda axes, s: NamedSharding(mesh, spec(axes, s.shape, mesh)),
                        logical_tree, shape_tree, is_leaf=is_axes)


def param_shardings(cfg: ModelConfig, mesh: jax.sharding.Mesh) -> Any:
    return _shardings(params_lib.logical_axes(cfg), params_lib.param_shapes(cfg), mesh)


def lora_shardings(cfg: ModelConfig, lcfg: lora_lib.LoraConfig, mesh: jax.sharding.Mesh) -> Any:
    return _shardings(lora_lib.logical_axes(lcfg), lora_lib.shapes(cfg, lcfg), mesh)


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def opt_state_shardings(tx: optax.GradientTransformation, lora_sh: Any, lora_shapes: Any,
                        mesh: jax.sharding.Mesh) -> Any:
    """Optimizer state sharded like the adapters it mirrors (Adam's mu / nu); counters replicated."""
    state_shapes = jax.eval_shape(tx.init, lora_shapes)
    return optax.tree_map_params(tx, lambda _, sh: sh, state_shapes, lora_sh,
                                 transform_non_params=lambda _: replicated(mesh))


@dataclasses.dataclass(frozen=True)
class TrainShardings:
    """Where each argument of the train step lives."""

    base: Any
    lora: Any
    opt_state: Any
    batch: NamedSharding
    replicated: NamedSharding


def train_shardings(cfg: ModelConfig, lcfg: lora_lib.LoraConfig, tx: optax.GradientTransformation,
                    mesh: jax.sharding.Mesh) -> TrainShardings:
    lora_sh = lora_shardings(cfg, lcfg, mesh)
    return TrainShardings(
        base=param_shardings(cfg, mesh),
        lora=lora_sh,
        opt_state=opt_state_shardings(tx, lora_sh, lora_lib.shapes(cfg, lcfg), mesh),
        batch=batch_sharding(mesh),
        replicated=replicated(mesh),
    )


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
    """Batches arrive as [A, B, T] (A gradient-accumulation micro-batches): B split over data x fsdp."""
    return NamedSharding(mesh, P(None, BATCH_AXES, None))


def batch_divisor(mesh: jax.sharding.Mesh) -> int:
    """Rows of a micro-batch must be a multiple of this (the data x fsdp size)."""
    return _axis_size(mesh, BATCH_AXES)
