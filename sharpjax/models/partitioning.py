"""Logical axes -> mesh axes: the one table of sharding rules, and activation constraints.

Model code names logical axes, for params (`transformer.param_logical_axes`) and for the few
activations whose sharding must be pinned (`constrain`); `DEFAULT_RULES` maps them to the
mesh axes ("data", "fsdp", "tensor"). It sits below `models/` so that the model can apply it
without importing `sharpjax.parallel` (which builds meshes and places arrays, and imports the
model); for the same reason `put_global` (a host value onto a sharding, re-exported by
`sharpjax.parallel`) lives here, so that `models.hf` loads params in place. A logical axis whose
size the mesh axis does not divide is replicated rather than failing (e.g. 2 kv heads on
tensor=4), so small test models still run on big meshes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import jax
import numpy as np
from jax.sharding import PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")
# Batch rows are split over both data-parallel axes; fsdp additionally shards weights.
BATCH_AXES = ("data", "fsdp")

DEFAULT_RULES: Mapping[str, str | tuple[str, ...] | None] = {
    # params
    "layers": None,
    "embed": "fsdp",
    "norm": None,
    "heads": "tensor",
    "kv_heads": "tensor",
    "head_dim": None,
    "mlp": "tensor",
    "vocab": "tensor",
    # activations
    "batch": BATCH_AXES,
    "seq": None,
}


def logical_to_spec(
    logical_axes: tuple[str, ...], shape: tuple[int, ...], mesh, rules: Mapping = DEFAULT_RULES
) -> PartitionSpec:
    """Maps logical axis names to a PartitionSpec, replicating dims the mesh does not divide.

    `mesh` is a `Mesh` or an `AbstractMesh` (anything with a `shape` mapping axis -> size).
    """
    spec, used = [], set()
    for name, size in zip(logical_axes, shape, strict=True):
        if name not in rules:
            raise KeyError(f"logical axis {name!r} has no sharding rule; known: {sorted(rules)}.")
        mesh_axes = rules[name]
        mesh_axes = () if mesh_axes is None else (mesh_axes,) if isinstance(mesh_axes, str) else tuple(mesh_axes)
        mesh_axes = tuple(a for a in mesh_axes if a not in used and mesh.shape[a] > 1)
        if mesh_axes and size % math.prod(mesh.shape[a] for a in mesh_axes) == 0:
            used.update(mesh_axes)
            spec.append(mesh_axes[0] if len(mesh_axes) == 1 else mesh_axes)
        else:
            spec.append(None)
    return PartitionSpec(*spec)


def constrain(x: jax.Array, logical_axes: tuple[str, ...], rules: Mapping = DEFAULT_RULES) -> jax.Array:
    """Pins an activation's sharding to its logical axes on the mesh being traced under.

    The mesh is the abstract mesh of the trace context (`sharpjax.parallel.on_mesh`), which
    every multi-device entry point (trainer, plan) traces under. With no mesh, or a mesh of one
    device, there is nothing to pin and `x` is returned as is.
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        return x
    if not set(MESH_AXES) <= set(mesh.axis_names):
        raise ValueError(f"tracing under a mesh with axes {mesh.axis_names}; sharpjax's rules need {MESH_AXES} "
                         "(build it with sharpjax.parallel.make_mesh).")
    return jax.lax.with_sharding_constraint(x, logical_to_spec(logical_axes, x.shape, mesh, rules))


def put_global(x, sharding: jax.sharding.Sharding) -> jax.Array:
    """A host value that is identical on every process -> a global array with `sharding`.

    One process: `jax.device_put`. Several: each process fills its own shards from its copy
    (`device_put` refuses shardings that span other hosts' devices).
    """
    if jax.process_count() == 1:
        return jax.device_put(x, sharding)
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])
