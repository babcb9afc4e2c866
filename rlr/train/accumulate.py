"""Gradient accumulation: the gradient of one optimizer step computed over micro-batches, so a
batch whose activations do not fit in device memory at once takes the same update (MaxText's
gradient_accumulation_steps, Levanter's microbatches).

Every rlr objective is a mean over counted items (valid tokens or sequences, pairs, rows,
labelled steps): L = S / C, with S the summed per-item loss and C the count. Micro-batch i has
L_i = S_i / C_i, so the batch's gradient is exactly

    grad L = sum_i (C_i / C) grad L_i,        C = sum_i C_i,

and not the plain mean of the grad L_i, which over-weights a micro-batch with few valid tokens
(the gradient-accumulation loss bug Hugging Face transformers fixed in 4.46, October 2024).

Axes: N rows of the batch, A micro-batches of N // A rows.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

Objective = Callable[[Any, Any], tuple[jax.Array, dict[str, jax.Array]]]


def split_micro_batches(batch: Any, steps: int) -> Any:
    """Every leaf [N, ...] as [A, N // A, ...]: micro-batch i holds rows i, i + A, i + 2A, ...

    Strided rather than contiguous, so that rows laid out in contiguous blocks over the devices
    (the batch axis sharded over data x fsdp) split where they are: each device keeps its share
    of every micro-batch, and no row moves.
    """
    def split(x: jax.Array) -> jax.Array:
        rows = x.shape[0]
        if rows % steps:
            raise ValueError(f"grad_accum_steps={steps} must divide the {rows} rows of a batch "
                             f"(config.optim.grad_accum_steps; PPO: of a minibatch)")
        return jnp.swapaxes(x.reshape((rows // steps, steps) + x.shape[1:]), 0, 1)

    return jax.tree.map(split, batch)


def combine_metrics(stacked: dict[str, jax.Array], weights: jax.Array) -> dict[str, jax.Array]:
    """One value a metric from its micro-batch values [A]: a name ending in "_max" takes the
    max, one starting with "num_" (a count) the sum, "perplexity" (exp of a token-mean NLL)
    exp(sum_i n_i log p_i / sum_i n_i) with n_i the micro-batches' "num_tokens" (C_i without
    them), and every other one the weighted mean sum_i w_i m_i with w_i = C_i / C. A mean over
    the counted items, and the perplexity, are then the batch's own values; any other mean (a
    token mean under a sequence aggregation, explained variance) is the C-weighted mean of the
    micro-batches' values."""
    def combine(name: str, values: jax.Array) -> jax.Array:
        if name.endswith("_max"):
            return jnp.max(values)
        if name.startswith("num_"):
            return jnp.sum(values)
        if name == "perplexity":
            tokens = stacked.get("num_tokens", weights)
            total = jnp.sum(tokens)
            return jnp.exp(jnp.sum(tokens * jnp.log(values)) / jnp.where(total > 0, total, 1.0))
        return jnp.sum(weights * values)

    return {name: combine(name, values) for name, values in stacked.items()}


def accumulated_grad(objective: Objective, params: Any, batch: Any, steps: int,
                     count: Callable[[Any], jax.Array]) -> tuple[Any, dict[str, jax.Array]]:
    """(grads, metrics) of objective(params, batch) -> (loss, metrics), in `steps` micro-batches.

        grads = sum_i (C_i / C) grad L_i,   C_i = count(micro-batch i),   C = sum_i C_i

    (``split_micro_batches`` rows; `count` returns the number of items the objective averages
    over in a micro-batch, a float32 scalar). The micro-batches run one after another in a
    ``lax.scan``, the sum kept in float32 and returned in the params' dtypes; only one
    micro-batch's activations are alive at a time. Metrics: ``combine_metrics``. steps = 1 is
    plain ``jax.grad`` on the whole batch (the same program as without accumulation).
    """
    grad_fn = jax.grad(objective, has_aux=True)
    if steps == 1:
        return grad_fn(params, batch)
    micro = split_micro_batches(batch, steps)
    counts = jax.vmap(count)(micro).astype(jnp.float32)  # [A]
    weights = counts / jnp.maximum(jnp.sum(counts), 1.0)

    def add_micro_batch(total, xs):
        micro_batch, weight = xs
        grads, metrics = grad_fn(params, micro_batch)
        return jax.tree.map(lambda t, g: t + weight * g.astype(jnp.float32), total, grads), metrics

    zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
    total, stacked = jax.lax.scan(add_micro_batch, zeros, (micro, weights))
    grads = jax.tree.map(lambda t, p: t.astype(p.dtype), total, params)
    return grads, combine_metrics(stacked, weights)
