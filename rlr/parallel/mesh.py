"""Device meshes, sharded parameter initialisation, batch placement and multi-host start.

The same calls run on 1 CPU, 8 simulated CPU devices, a GPU host and a TPU pod: a mesh is
(data, fsdp, tensor), params are created directly in their shards (jit with out_shardings, so a
7B tree is never whole on one device), and host-local batches become global arrays split over
(data, fsdp).
"""
from __future__ import annotations

import logging
import os
from typing import Any, Callable, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from rlr.parallel.rules import BATCH_AXES, DEFAULT_RULES, MESH_AXES

log = logging.getLogger(__name__)


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1,
              devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
    """A (data, fsdp, tensor) mesh over `devices` (all by default); one size may be -1 (the rest)."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = [data, fsdp, tensor]
    if sizes.count(-1) > 1:
        raise ValueError(f"mesh (data={data}, fsdp={fsdp}, tensor={tensor}): at most one size may be -1")
    known = int(np.prod([s for s in sizes if s != -1]))
    if -1 in sizes:
        if len(devices) % known:
            raise ValueError(f"mesh (data={data}, fsdp={fsdp}, tensor={tensor}): {len(devices)} devices "
                             f"do not divide by {known}")
        sizes[sizes.index(-1)] = len(devices) // known
    if int(np.prod(sizes)) != len(devices):
        raise ValueError(f"mesh (data={sizes[0]}, fsdp={sizes[1]}, tensor={sizes[2]}) needs "
                         f"{int(np.prod(sizes))} devices, {len(devices)} are present")
    # Auto axes: XLA's partitioner propagates the shardings that params and batches carry.
    auto = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
    return jax.make_mesh(tuple(sizes), MESH_AXES, axis_types=auto, devices=devices)


def logical_to_sharding(logical_specs: Any, mesh: Mesh, rules=DEFAULT_RULES) -> Any:
    """NamedShardings for a pytree of logical PartitionSpecs under `rules`."""
    return nn.logical_to_mesh_sharding(logical_specs, mesh, rules)


def abstract_params(init_fn: Callable, *args) -> tuple[Any, Any]:
    """(shape/dtype tree, logical PartitionSpec tree) of the params `init_fn(*args)` would make."""
    boxed = jax.eval_shape(init_fn, *args)
    return nn.meta.unbox(boxed), nn.get_partition_spec(boxed)


def init_sharded(init_fn: Callable, mesh: Mesh, *args, rules=DEFAULT_RULES) -> Any:
    """Run `init_fn(*args)` (returning boxed, logically partitioned params) with every output
    created in its shard: jit with out_shardings, so nothing is ever materialised whole."""
    _, specs = abstract_params(init_fn, *args)
    shardings = logical_to_sharding(specs, mesh, rules)
    with jax.set_mesh(mesh):
        return jax.jit(lambda *a: nn.meta.unbox(init_fn(*a)), out_shardings=shardings)(*args)


def _model_init(model: nn.Module, batch: int = 1, length: int = 8) -> Callable:
    """key -> the (boxed) `params` collection of a `rlr.models.Transformer`, initialised on
    [batch, length] dummy tokens."""
    import jax.numpy as jnp

    tokens = jnp.zeros((batch, length), jnp.int32)
    mask = jnp.ones((batch, length), bool)
    return lambda key: model.init(key, tokens, tokens, mask)["params"]


def init_model_params(model: nn.Module, rng: jax.Array, mesh: Mesh, batch: int = 1,
                      length: int = 8, rules=DEFAULT_RULES) -> Any:
    """Sharded params of a `rlr.models.Transformer` (the `params` collection, unboxed)."""
    return init_sharded(_model_init(model, batch, length), mesh, rng, rules=rules)


def param_shardings(model: nn.Module, mesh: Mesh, rules=DEFAULT_RULES) -> Any:
    """The NamedSharding of every parameter of `model` (same tree as its params)."""
    _, specs = abstract_params(_model_init(model), jax.random.key(0))
    return logical_to_sharding(specs, mesh, rules)


def abstract_sharded_params(model: nn.Module, mesh: Mesh, rules=DEFAULT_RULES) -> Any:
    """The params `init_model_params` would make, as jax.ShapeDtypeStruct leaves carrying their
    shardings: nothing allocated, enough to trace or compile a step (or to restore into)."""
    shapes, specs = abstract_params(_model_init(model), jax.random.key(0))
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                        shapes, logical_to_sharding(specs, mesh, rules))


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
    """Leading (batch) axis split over (data, fsdp); the other `ndim - 1` axes whole."""
    return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


def shard_batch(batch: Any, mesh: Mesh) -> Any:
    """Host-local numpy arrays (this process's rows) -> global jax arrays split over (data, fsdp).

    On one host this is a device_put; on many, each host passes its own rows and the global
    batch is their concatenation in process order.
    """
    def put(x):
        x = np.asarray(x)
        return jax.make_array_from_process_local_data(batch_sharding(mesh, x.ndim), x)

    return jax.tree.map(put, batch)


def host_local_rows(x: jax.Array, mesh: Mesh) -> np.ndarray:
    """This process's rows of a global array split over (data, fsdp), as numpy: the inverse of
    `shard_batch` (all the rows with one process)."""
    if x.is_fully_addressable:
        return np.asarray(jax.device_get(x))
    from jax.experimental import multihost_utils

    spec = P(BATCH_AXES, *([None] * (x.ndim - 1)))
    return np.asarray(multihost_utils.global_array_to_host_local_array(x, mesh, spec))


def gather_rows(x: jax.Array) -> np.ndarray:
    """Every row of a global array as numpy, on every process: with several processes an
    all-gather (a collective: every process must call it), else a device_get."""
    if x.is_fully_addressable:
        return np.asarray(jax.device_get(x))
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def process_mean(values: Mapping[str, float]) -> dict[str, float]:
    """The mean over processes of each host-side value (a collective: every process calls it
    with the same keys); the values themselves with one process. For means over rows that the
    processes split evenly, this is the mean over all rows."""
    if jax.process_count() == 1:
        return dict(values)
    from jax.experimental import multihost_utils

    names = sorted(values)
    gathered = multihost_utils.process_allgather(np.array([values[k] for k in names], np.float64))
    return dict(zip(names, np.asarray(gathered).mean(axis=0).tolist()))


def process_rows(rows: int, mesh: Optional[Mesh]) -> np.ndarray:
    """Indices of the rows of a global batch of `rows` that this process feeds to `shard_batch`
    (its host-local rows): those its devices hold when the batch is split over (data, fsdp), in
    increasing order; every row without a mesh. `rows` must divide by data x fsdp."""
    if mesh is None:
        return np.arange(rows)
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    if rows % shards:
        raise ValueError(f"a batch of {rows} rows does not split over the mesh's data x fsdp = "
                         f"{shards}")
    held = np.zeros(rows, bool)
    for index in batch_sharding(mesh, 1).addressable_devices_indices_map((rows,)).values():
        held[index] = True
    return np.flatnonzero(held)


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Every leaf of `tree` whole on every device of `mesh`: a jitted identity, which (unlike
    device_put) also places values when the mesh spans processes (each passes the same tree)."""
    return jax.jit(lambda t: t, out_shardings=NamedSharding(mesh, P()))(tree)


def initialize_distributed() -> bool:
    """Start multi-host JAX when the launcher asked for it; return whether it did.

    Launchers set RLR_DISTRIBUTED=1, and on GPU hosts also JAX_COORDINATOR_ADDRESS,
    JAX_NUM_PROCESSES and JAX_PROCESS_ID (on TPU VMs jax finds these itself).
    """
    if os.environ.get("RLR_DISTRIBUTED", "0") != "1":
        return False
    kwargs = {}
    if "JAX_COORDINATOR_ADDRESS" in os.environ:
        kwargs = dict(coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
                      num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
                      process_id=int(os.environ["JAX_PROCESS_ID"]))
    jax.distributed.initialize(**kwargs)
    log.info("jax.distributed: process %d of %d, %d devices", jax.process_index(),
             jax.process_count(), jax.device_count())
    return True
