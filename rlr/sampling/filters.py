"""Logit filters and token sampling: temperature, top-k, top-p (nucleus), greedy.

Pure functions on logits [B, V] (float32). A filter returns logits of the same shape with the
tokens it removes set to -inf, so `jax.random.categorical` samples from the renormalised rest.
`filter_logits` applies them in the order temperature -> top-k -> top-p (the order of Hugging
Face's default logits warpers): top-p's nucleus is measured on the tempered, top-k-truncated
distribution.

Ties: a filter keeps every token whose logit equals its threshold, so top-k can keep more than k
tokens (and top-p more than the smallest set) when logits tie exactly at the cut.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

NEG_INF = -jnp.inf


def apply_temperature(logits: jax.Array, temperature: float) -> jax.Array:
    """logits / temperature (Ackley et al. 1985, Boltzmann sampling): temperature > 0."""
    if temperature <= 0:
        raise ValueError(f"temperature={temperature}: expected > 0 (use greedy for 0)")
    return logits / jnp.asarray(temperature, logits.dtype)


def _mask_below(logits: jax.Array, threshold: jax.Array) -> jax.Array:
    """Set logits [B, V] below threshold [B, 1] to -inf."""
    return jnp.where(logits >= threshold, logits, NEG_INF)


def _nucleus_threshold(sorted_logits: jax.Array, top_p: float) -> jax.Array:
    """The smallest logit of the nucleus, [B, 1], from logits [B, K] sorted descending.

    Token i (in sorted order) is kept iff the probability mass strictly before it is < top_p:
    the kept prefix is the smallest one whose mass is >= top_p, and the first token is always
    kept. Probabilities are the softmax over the K given logits.
    """
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    num_kept = jnp.maximum(jnp.sum(mass_before < top_p, axis=-1, keepdims=True), 1)
    return jnp.take_along_axis(sorted_logits, num_kept - 1, axis=-1)


def top_k_filter(logits: jax.Array, top_k: int) -> jax.Array:
    """Keep the top_k largest logits of each row, -inf elsewhere (Fan et al. 2018).

    top_k >= V keeps everything; top_k must be >= 1.
    """
    if top_k < 1:
        raise ValueError(f"top_k={top_k}: expected >= 1")
    if top_k >= logits.shape[-1]:
        return logits
    kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
    return _mask_below(logits, kth)


def top_p_filter(logits: jax.Array, top_p: float) -> jax.Array:
    """Nucleus filter (Holtzman et al. 2020): keep the smallest set of most likely tokens whose
    probability sum is >= top_p (at least one token), -inf elsewhere. 0 < top_p <= 1."""
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p={top_p}: expected 0 < top_p <= 1")
    if top_p == 1:
        return logits
    sorted_logits = -jnp.sort(-logits, axis=-1)
    return _mask_below(logits, _nucleus_threshold(sorted_logits, top_p))


def filter_logits(logits: jax.Array, temperature: float, top_k: int = 0,
                  top_p: float = 1.0) -> jax.Array:
    """temperature -> top-k -> top-p on logits [B, V]; top_k = 0 and top_p = 1 are off.

    With both top-k and top-p on, the nucleus is computed on the k sorted values that
    `lax.top_k` returns (the same result as top_p_filter(top_k_filter(x)), without sorting V).
    """
    logits = apply_temperature(logits, temperature)
    if 0 < top_k < logits.shape[-1]:
        top_values = jax.lax.top_k(logits, top_k)[0]  # [B, k], sorted descending
        threshold = top_values[:, -1:]
        if top_p < 1:
            threshold = _nucleus_threshold(top_values, top_p)
        return _mask_below(logits, threshold)
    return top_p_filter(logits, top_p)


def sample_tokens(logits: jax.Array, rng: jax.Array, temperature: float, top_k: int = 0,
                  top_p: float = 1.0) -> jax.Array:
    """One token per row of logits [B, V] -> [B] int32.

    temperature == 0 is greedy decoding (argmax of the raw logits; filters do not matter);
    otherwise a draw from softmax(filter_logits(logits)) with jax.random.categorical.
    """
    if temperature == 0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    filtered = filter_logits(logits, temperature, top_k, top_p)
    return jax.random.categorical(rng, filtered, axis=-1).astype(jnp.int32)
