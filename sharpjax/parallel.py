"""Every sharding decision in one place: mesh, logical-axis rules, param and batch shardings,
global arrays across processes, and the multi-process (jax.distributed) start.

Model code names logical axes; the rules that map them to the mesh axes ("data", "fsdp",
"tensor") are `sharpjax.models.partitioning` (re-exported here). The same code runs on 1 CPU,
8 fake CPU devices and a GPU/TPU mesh. Programs over several devices are traced under
`on_mesh(mesh)`, so that the model's activation constraints know the mesh.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from sharpjax.errors import ConfigError
from sharpjax.models.config import ModelConfig
from sharpjax.models.partitioning import BATCH_AXES, DEFAULT_RULES, MESH_AXES, logical_to_spec, put_global
from sharpjax.models.transformer import Params, init_params, param_logical_axes, param_shapes


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ("data", "fsdp", "tensor") mesh; `-1` on one axis takes the remaining devices."""
    devices = list(devices if devices is not None else jax.devices())
    sizes = [data, fsdp, tensor]
    if sizes.count(-1) > 1:
        raise ValueError(f"mesh (data={data}, fsdp={fsdp}, tensor={tensor}): at most one axis may be -1.")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if len(devices) % known:
            raise ValueError(f"mesh fsdp*tensor*data={known} does not divide the {len(devices)} devices.")
        sizes[sizes.index(-1)] = len(devices) // known
    if math.prod(sizes) != len(devices):
        raise ValueError(
            f"mesh (data={sizes[0]}, fsdp={sizes[1]}, tensor={sizes[2]}) needs {math.prod(sizes)} devices; "
            f"{len(devices)} are available."
        )
    return Mesh(np.asarray(devices).reshape(sizes), MESH_AXES)


def param_shardings(config: ModelConfig, mesh: Mesh, rules: Mapping = DEFAULT_RULES) -> Params:
    """NamedShardings for every param, in the param pytree's structure."""
    is_axes = lambda x: isinstance(x, tuple) and all(isinstance(a, str) for a in x)  # noqa: E731
    return jax.tree.map(
        lambda axes, shape: NamedSharding(mesh, logical_to_spec(axes, shape, mesh, rules)),
        param_logical_axes(config),
        param_shapes(config),
        is_leaf=is_axes,
    )


def on_mesh(mesh: Mesh | None):
    """The context to trace a program over `mesh` in; none for None.

    The model pins a few activations' shardings (`partitioning.constrain`: q, k and v alike,
    which cuDNN's attention requires under FSDP); they apply only under this context. Only the
    abstract mesh is set (`use_abstract_mesh`, not `set_mesh`): tracing sees the mesh, while
    eager ops keep their default device, which matters for a compile-only GPU mesh (plan).
    """
    return contextlib.nullcontext() if mesh is None else jax.sharding.use_abstract_mesh(mesh.abstract_mesh)


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
    """Rows split over the data-parallel axes, other dims replicated."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def shard_params(params: Params, shardings: Params) -> Params:
    """Places an existing param pytree (on one device or on the host) onto the mesh."""
    if jax.process_count() == 1:
        return jax.device_put(params, shardings)
    return jax.tree.map(lambda x, s: put_global(np.asarray(x), s), params, shardings)


def init_params_sharded(config: ModelConfig, key: jax.Array, mesh: Mesh, rules: Mapping = DEFAULT_RULES) -> Params:
    """Random params created directly in their shards (no full copy on one device)."""
    shardings = param_shardings(config, mesh, rules)
    return jax.jit(lambda k: init_params(config, k), out_shardings=shardings)(key)


def to_host(x) -> np.ndarray:
    """The full value of a (possibly multi-process, sharded) array as numpy, on every process.

    `jax.device_get` only sees this process's shards; with several processes the rows of a
    data-parallel batch live on other hosts, so they are all-gathered first.
    """
    if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))


def maybe_initialize_distributed() -> bool:
    """`jax.distributed.initialize()` when the usual coordinator variables are set.

    Reads JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID (explicit), and lets
    JAX auto-detect SLURM / Open MPI / cloud TPU environments when only
    SHARPJAX_DISTRIBUTED=1 is set. Returns whether it initialized.
    """
    address = os.environ.get("JAX_COORDINATOR_ADDRESS")
    if address:
        try:
            num_processes = int(os.environ["JAX_NUM_PROCESSES"])
            process_id = int(os.environ["JAX_PROCESS_ID"])
        except KeyError as e:
            raise ConfigError(
                f"JAX_COORDINATOR_ADDRESS is set but {e.args[0]} is not; set JAX_NUM_PROCESSES and JAX_PROCESS_ID."
            ) from None
        jax.distributed.initialize(address, num_processes=num_processes, process_id=process_id)
        return True
    if os.environ.get("SHARPJAX_DISTRIBUTED") == "1":
        jax.distributed.initialize()
        return True
    return False
