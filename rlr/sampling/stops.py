"""Stop conditions of generation: end-of-sequence ids and stop sequences of token ids.

A stop sequence matches when the last generated tokens equal it; only generated tokens count
(a stop sequence that would span the prompt and the response does not match). Each row keeps a
window [B, M] of its last M generated tokens (M = the longest stop sequence), filled with -1
before anything is generated, so no stop sequence matches a partial window.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

EMPTY = -1  # window filler: no token id is negative


def init_window(batch: int, stop_sequences: tuple) -> jax.Array:
    """The empty window [B, M] of last generated tokens, M = max stop length (at least 1)."""
    width = max((len(s) for s in stop_sequences), default=1)
    return jnp.full((batch, width), EMPTY, jnp.int32)


def push_window(window: jax.Array, tokens: jax.Array) -> jax.Array:
    """Shift window [B, M] left by one and append tokens [B]."""
    return jnp.concatenate([window[:, 1:], tokens[:, None].astype(window.dtype)], axis=1)


def is_eos(tokens: jax.Array, eos_ids: tuple) -> jax.Array:
    """bool [B]: tokens [B] is one of eos_ids (all False when there are none)."""
    if not eos_ids:
        return jnp.zeros(tokens.shape, bool)
    return jnp.any(tokens[:, None] == jnp.asarray(eos_ids, tokens.dtype)[None, :], axis=1)


def ends_with_stop(window: jax.Array, stop_sequences: tuple) -> jax.Array:
    """bool [B]: the window [B, M] of last generated tokens ends with one of stop_sequences."""
    hit = jnp.zeros(window.shape[:1], bool)
    for sequence in stop_sequences:
        tail = window[:, window.shape[1] - len(sequence):]
        hit |= jnp.all(tail == jnp.asarray(sequence, window.dtype)[None, :], axis=1)
    return hit
