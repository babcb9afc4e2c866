"""Masked reductions the loss families share: float32 casts, masks, the masked mean and the
per-token aggregation modes (token_mean, seq_mean, seq_mean_token_sum).

Axes: B batch (sequences), T tokens. ``mask`` [B, T] marks the valid tokens (bool or 0/1
float). Masked entries are replaced by 0 before any arithmetic, so padding holding inf/NaN
cannot leak into a loss or its gradient.
"""
import chex
import jax
import jax.numpy as jnp

AGGREGATIONS = ("token_mean", "seq_mean", "seq_mean_token_sum")


def as_f32(x) -> jax.Array:
    """x as a float32 array: the losses compute in float32 whatever the input dtype."""
    return jnp.asarray(x).astype(jnp.float32)


def as_mask(mask) -> jax.Array:
    """A bool or 0/1 float mask as bool."""
    return jnp.asarray(mask).astype(bool)


def optional_mask(x: jax.Array, mask: jax.Array | None) -> jax.Array:
    """bool mask of x's shape: the given mask, or everything valid when it is None."""
    if mask is None:
        return jnp.ones(jnp.shape(x), bool)
    chex.assert_equal_shape([x, mask])
    return as_mask(mask)


def masked_mean(x: jax.Array, mask: jax.Array, axis: int | None = None) -> jax.Array:
    """Mean of ``x`` over the positions where ``mask`` is set: sum(x*m) / max(sum(m), 1).

    Returns 0 (not NaN) where nothing is valid. Masked entries of ``x`` are ignored
    even when they hold inf/NaN.
    """
    chex.assert_equal_shape([x, mask])
    valid = as_mask(mask)
    total = jnp.sum(jnp.where(valid, as_f32(x), 0.0), axis=axis)
    count = jnp.sum(valid.astype(jnp.float32), axis=axis)
    return total / jnp.maximum(count, 1.0)


def aggregation_weights(mask: jax.Array, mode: str = "token_mean") -> jax.Array:
    """Per-token weights w [B, T] such that a loss is ``sum(w * per_token)``.

    - ``token_mean``: every valid token of the batch counts the same,
      w = m / sum(m) (PPO as in Schulman et al. 2017 / DAPO, Yu et al. 2025).
    - ``seq_mean``: mean over tokens within a sequence, then mean over sequences,
      w = m / (n_b * S) (GRPO, Shao et al. 2024).
    - ``seq_mean_token_sum``: sum over tokens within a sequence, mean over sequences,
      w = m / S (Dr. GRPO style, Liu et al. 2025).
    n_b is the number of valid tokens of sequence b, S the number of sequences with at
    least one valid token; rows with no valid token get weight 0 and do not count in S.
    Denominators are clamped at 1, so an all-padding batch gives weights 0.
    """
    m = as_mask(mask).astype(jnp.float32)
    count = jnp.maximum(aggregation_count(mask, mode), 1.0)
    if mode == "seq_mean":
        return m / jnp.maximum(jnp.sum(m, axis=-1, keepdims=True), 1.0) / count
    return m / count


def aggregation_count(mask: jax.Array, mode: str = "token_mean") -> jax.Array:
    """The number of items ``aggregate`` averages over, float32 []: the valid tokens of ``mask``
    [B, T] (``token_mean``), or its sequences with at least one valid token (``seq_mean``,
    ``seq_mean_token_sum``). A loss over part of the rows times its count, summed over the parts
    and divided by the whole count, is the loss of the whole (``rlr.train.accumulate``)."""
    chex.assert_rank(mask, 2)
    if mode not in AGGREGATIONS:
        raise ValueError(f"rlr/losses/masked.py: aggregation must be one of {AGGREGATIONS}, got {mode!r}")
    valid = as_mask(mask)
    if mode == "token_mean":
        return jnp.sum(valid, dtype=jnp.float32)
    return jnp.sum(jnp.any(valid, axis=-1), dtype=jnp.float32)


def aggregate(per_token: jax.Array, mask: jax.Array, mode: str = "token_mean") -> jax.Array:
    """Reduce a per-token loss [B, T] to a scalar: sum(aggregation_weights(mask, mode) * x).

    See ``aggregation_weights`` for the modes. Masked entries are ignored (also inf/NaN).
    """
    chex.assert_equal_shape([per_token, mask])
    x = jnp.where(as_mask(mask), as_f32(per_token), 0.0)
    return jnp.sum(aggregation_weights(mask, mode) * x)
