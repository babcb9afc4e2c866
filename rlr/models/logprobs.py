"""Per-token log-probabilities and entropies of an LM head, computed in chunks over time.

The float32 logits of a whole batch, [B, T, V], are never materialised: a scan over time chunks
of C tokens computes logits [B, C, V] for one chunk, reduces them to log p(target) and entropy,
and (under `jax.checkpoint`) recomputes them in the backward pass instead of storing them. For
Qwen2 (V = 151,936) at B=8, T=1024 that is 5 GB of float32 logits avoided.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


def _chunk_stats(hidden, weight, targets):
    """log p(targets) and entropy of softmax(hidden @ weight) for one chunk: [B, C] each."""
    logits = jnp.einsum("bcd,dv->bcv", hidden, weight.astype(hidden.dtype),
                        preferred_element_type=jnp.float32)
    log_z = jax.nn.logsumexp(logits, axis=-1)
    target_logits = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    probs = jnp.exp(logits - log_z[..., None])
    entropy = log_z - jnp.sum(probs * logits, axis=-1)
    return target_logits - log_z, entropy


def token_logprobs(hidden: jax.Array, weight: jax.Array, targets: jax.Array,
                   chunk_size: int = 128) -> tuple[jax.Array, jax.Array]:
    """log softmax(h_t W)[y_t] and the entropy H_t = -sum_v p_tv log p_tv, in chunks of time.

    hidden [B, T, D] (compute dtype), weight [D, V], targets [B, T] int -> (logp [B, T],
    entropy [B, T]), both float32. T need not divide by chunk_size (the tail is padded).
    """
    batch, length, dim = hidden.shape
    chunk = min(chunk_size, length)
    num_chunks = -(-length // chunk)
    pad = num_chunks * chunk - length
    hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
    targets = jnp.pad(targets, ((0, 0), (0, pad)))
    hidden_chunks = hidden.reshape(batch, num_chunks, chunk, dim).swapaxes(0, 1)
    target_chunks = targets.reshape(batch, num_chunks, chunk).swapaxes(0, 1)

    @functools.partial(jax.checkpoint, prevent_cse=False)
    def body(_, xs):
        return None, _chunk_stats(xs[0], weight, xs[1])

    _, (logp, entropy) = jax.lax.scan(body, None, (hidden_chunks, target_chunks))
    unchunk = lambda x: x.swapaxes(0, 1).reshape(batch, num_chunks * chunk)[:, :length]
    return unchunk(logp), unchunk(entropy)


def last_token_logits(hidden: jax.Array, weight: jax.Array) -> jax.Array:
    """Float32 logits [B, V] of the last position of hidden [B, T, D] (what sampling needs)."""
    return jnp.einsum("bd,dv->bv", hidden[:, -1], weight.astype(hidden.dtype),
                      preferred_element_type=jnp.float32)


def next_token_logprobs(model, params, tokens: jax.Array, positions: jax.Array,
                        attention_mask: jax.Array, chunk_size: int = 128):
    """log pi(x_{t+1} | x_{<=t}) and entropy at every position t < T-1 of tokens [B, T].

    `model` is an LM-head `Transformer`; returns (logp [B, T-1], entropy [B, T-1]) float32.
    """
    from rlr.models.decoder import lm_head_weight

    hidden, _ = model.apply({"params": params}, tokens, positions, attention_mask)
    return token_logprobs(hidden[:, :-1], lm_head_weight(params, model.config), tokens[:, 1:],
                          chunk_size)
