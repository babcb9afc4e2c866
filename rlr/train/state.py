"""The train state (step, params, optimizer state, PRNG key) and the pure functions that move it.

Params enter every function as arguments (never closed over), and the optimizer state is created
in the shards of the params: under FSDP each Adam moment lives where its parameter lives, so the
optimizer adds no whole copy of the model to any device.
"""
from __future__ import annotations

from typing import Any, Optional

import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from rlr.parallel.mesh import replicate


@flax.struct.dataclass
class TrainState:
    """One model's training state; a pytree, so it passes through jit and orbax as it is.

    step: int32 [] (updates applied so far); params: the model's parameter tree;
    opt_state: the optax state of `params`; rng: a typed PRNG key (jax.random.key).
    The optimizer itself is not stored (it is not an array); loops pass it to `apply_gradients`.
    """

    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array


def _as_typed_key(rng: jax.Array) -> jax.Array:
    """A typed key from either a typed key or raw uint32 key data (jax.random.PRNGKey)."""
    if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
        return rng
    return jax.random.wrap_key_data(rng)


def _mesh_of(tree: Any) -> Optional[jax.sharding.Mesh]:
    """The mesh every leaf of `tree` is NamedSharded on, or None if the leaves are not all so."""
    shardings = [getattr(x, "sharding", None) for x in jax.tree.leaves(tree)]
    if not shardings or not all(isinstance(s, NamedSharding) for s in shardings):
        return None
    return shardings[0].mesh


def opt_state_shardings(optimizer: optax.GradientTransformation, params: Any) -> Optional[Any]:
    """The sharding of every leaf of `optimizer.init(params)`: params-shaped subtrees (Adam's mu
    and nu) take the params' shardings leaf by leaf, everything else (counts) is replicated.

    `params` may be arrays or jax.ShapeDtypeStruct with `.sharding`. Returns None when the params
    are not NamedSharded on one mesh (a single device: nothing to decide).
    """
    mesh = _mesh_of(params)
    if mesh is None:
        return None
    replicated = NamedSharding(mesh, P())
    param_def = jax.tree.structure(params)
    param_leaves = jax.tree.leaves(params)

    def is_params_like(node) -> bool:
        return jax.tree.structure(node) == param_def and all(
            a.shape == b.shape for a, b in zip(jax.tree.leaves(node), param_leaves))

    def sharding_of(node):
        if is_params_like(node):
            return jax.tree.map(lambda p: p.sharding, params)
        return replicated

    abstract = jax.eval_shape(optimizer.init, params)
    return jax.tree.map(sharding_of, abstract, is_leaf=is_params_like)


def create_train_state(params: Any, optimizer: optax.GradientTransformation,
                       rng: jax.Array) -> TrainState:
    """TrainState(step=0, params, optimizer.init(params), rng), the optimizer state created by a
    jitted init directly in the params' shardings (see `opt_state_shardings`)."""
    shardings = opt_state_shardings(optimizer, params)
    init = jax.jit(optimizer.init) if shardings is None else jax.jit(optimizer.init,
                                                                      out_shardings=shardings)
    opt_state = init(params)
    mesh = _mesh_of(params)
    step = jnp.zeros((), jnp.int32)
    rng = _as_typed_key(rng)
    if mesh is not None:
        step, rng = replicate((step, rng), mesh)
    return TrainState(step=step, params=params, opt_state=opt_state, rng=rng)


def abstract_train_state(abstract_params: Any, optimizer: optax.GradientTransformation,
                         rng: jax.Array) -> TrainState:
    """The TrainState `create_train_state` would make, as jax.ShapeDtypeStruct leaves carrying
    their shardings, without allocating anything: the restore target of a checkpoint.

    abstract_params: ShapeDtypeStruct leaves with `.sharding` (e.g. from
    `rlr.parallel.mesh.abstract_params` and `param_shardings`), or real arrays.
    """
    def sds(x, sharding=None):
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding or getattr(x, "sharding", None))

    abstract_params = jax.tree.map(sds, abstract_params)
    shardings = opt_state_shardings(optimizer, abstract_params)
    opt_state = jax.eval_shape(optimizer.init, abstract_params)
    if shardings is not None:
        opt_state = jax.tree.map(sds, opt_state, shardings)
    mesh = _mesh_of(abstract_params)
    replicated = NamedSharding(mesh, P()) if mesh is not None else None
    rng = jax.eval_shape(_as_typed_key, rng)
    return TrainState(step=jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated),
                      params=abstract_params, opt_state=opt_state,
                      rng=jax.ShapeDtypeStruct(rng.shape, rng.dtype, sharding=replicated))


def apply_gradients(state: TrainState, grads: Any,
                    optimizer: optax.GradientTransformation) -> tuple[TrainState, jax.Array]:
    """One optimizer update: params <- params + optimizer.update(grads), step <- step + 1.

    Returns (new state, global norm of `grads` before any clipping, sqrt(sum_i ||g_i||^2)).
    Call it inside the loop's jitted step; `optimizer` is static there.
    """
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
    return new_state, optax.tree.norm(grads)


def ema_update(target_params: Any, source_params: Any, eta: float | jax.Array) -> Any:
    """Exponential moving average: target <- eta * source + (1 - eta) * target, leaf by leaf.

    The EMA reference model of Xu et al. 2024 ("Is DPO Superior to PPO for LLM Alignment?",
    Sec. 5): ref = eta * policy + (1 - eta) * ref after each update; eta = 1 copies the policy,
    eta = 0 keeps the reference fixed. Computed in float32, returned in the target's dtypes.
    """
    def mix(t, s):
        t32, s32 = t.astype(jnp.float32), s.astype(jnp.float32)
        return (eta * s32 + (1.0 - eta) * t32).astype(t.dtype)

    return jax.tree.map(mix, target_params, source_params)
