"""Logit filters and token sampling: temperature, top-k, top-p (nucleus), greedy.

Pure functions on logits [B, V] (float32). A filter returns logits of the same shape with the
tokens it removes set to -inf, so `categorical` samples from the renormalised rest.
`filter_logits` applies them in the order temperature -> top-k -> top-p (the order of Hugging
Face's default logits warpers): top-p's nucleus is measured on the tempered, top-k-truncated
distribution.

Ties: a filter keeps every token whose logit equals its threshold, so top-k can keep more than k
tokens (and top-p more than the smallest set) when logits tie exactly at the cut.

Cost a token at B rows and a vocabulary of V (Qwen2.5: V = 151,936): `categorical` draws
Gumbel noise for V / VOCAB_BLOCK + VOCAB_BLOCK values a row, not V; top-k runs XLA's TopK on
V / TOP_K_BLOCK block maxima and k * TOP_K_BLOCK candidates; top-p without top-k finds its cut
by bisection (32 masked sums over the row); nothing sorts V.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

NEG_INF = -jnp.inf
VOCAB_BLOCK = 128  # logits a block in `categorical`'s first draw (divides 151,936 and 49,152)
TOP_K_BLOCK = 32  # logits a block in `_top_k_values`' first pass


def apply_temperature(logits: jax.Array, temperature: float) -> jax.Array:
    """logits / temperature (Ackley et al. 1985, Boltzmann sampling): temperature > 0."""
    if temperature <= 0:
        raise ValueError(f"temperature={temperature}: expected > 0 (use greedy for 0)")
    return logits / jnp.asarray(temperature, logits.dtype)


def _mask_below(logits: jax.Array, threshold: jax.Array) -> jax.Array:
    """Set logits [B, V] below threshold [B, 1] to -inf."""
    return jnp.where(logits >= threshold, logits, NEG_INF)


def _nucleus_threshold(sorted_logits: jax.Array, ties_beyond: jax.Array,
                       top_p: float) -> jax.Array:
    """The smallest logit of the nucleus, [B, 1], from logits [B, K] sorted descending.

    Token i (in sorted order) is kept iff the probability mass strictly before it is < top_p:
    the kept prefix is the smallest one whose mass is >= top_p, and the first token is always
    kept. Probabilities are the softmax over the K given logits and ties_beyond [B, 1] more
    tokens equal to the last of them (the ties top-k keeps past its k values), which come last.
    """
    top, last = jnp.max(sorted_logits, -1, keepdims=True), _kth_largest(sorted_logits)
    weights = jnp.exp(sorted_logits - top)
    total = jnp.sum(weights, axis=-1, keepdims=True) + ties_beyond * jnp.exp(last - top)
    probs = weights / total
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    num_kept = jnp.maximum(jnp.sum(mass_before < top_p, axis=-1, keepdims=True), 1)
    return jnp.take_along_axis(sorted_logits, num_kept - 1, axis=-1)


def _pad_to_blocks(logits: jax.Array, block: int) -> jax.Array:
    """logits [B, V] -> [B, ceil(V / block), block], the last block padded with -inf."""
    rows, vocab = logits.shape
    num_blocks = -(-vocab // block)
    return jnp.pad(logits, ((0, 0), (0, num_blocks * block - vocab)),
                   constant_values=NEG_INF).reshape(rows, num_blocks, block)


def _top_k_values(logits: jax.Array, k: int) -> jax.Array:
    """The k largest logits of each row [B, k], sorted descending, exactly those of
    `lax.top_k(logits, k)`, from two small TopKs instead of one over V.

    Split the row into blocks of TOP_K_BLOCK and keep the k blocks with the largest maxima. They
    hold k logits >= mu, the smallest of their maxima, and every logit outside them is <= mu, so
    the k largest of their k * TOP_K_BLOCK logits are the row's k largest (ties included). On
    CPU at B = 64, V = 151,936: 5x faster than lax.top_k at k = 50, 2x at k = 200.
    """
    rows, vocab = logits.shape
    if k * TOP_K_BLOCK >= vocab:
        return jax.lax.top_k(logits, k)[0]
    blocks = _pad_to_blocks(logits, TOP_K_BLOCK)
    best = jax.lax.top_k(jnp.max(blocks, axis=-1), k)[1]  # [B, k] block indices
    candidates = jnp.take_along_axis(blocks, best[:, :, None], axis=1).reshape(rows, -1)
    return jax.lax.top_k(candidates, k)[0]


def _kth_largest(top_values: jax.Array) -> jax.Array:
    """The last of `lax.top_k`'s values [B, k], as [B, 1].

    A min over the k values, not top_values[:, -1:]: XLA (CPU, jax 0.10) rewrites a slice of
    TopK's output into a sort of the whole row, 100x slower at B = 64, V = 151,936.
    """
    return jnp.min(top_values, axis=-1, keepdims=True)


def top_k_filter(logits: jax.Array, top_k: int) -> jax.Array:
    """Keep the top_k largest logits of each row, -inf elsewhere (Fan et al. 2018).

    top_k >= V keeps everything; top_k must be >= 1.
    """
    if top_k < 1:
        raise ValueError(f"top_k={top_k}: expected >= 1")
    if top_k >= logits.shape[-1]:
        return logits
    return _mask_below(logits, _kth_largest(_top_k_values(logits, top_k)))


def _order_keys(logits: jax.Array) -> jax.Array:
    """uint32 keys in the order of the float32 logits (the radix-sort key: a negative float's
    bits all flipped, a non-negative one's sign bit set), so key_i > key_j iff x_i > x_j; -0.0
    is read as +0.0 first, the two zeros being one value (a tie) to a comparison."""
    x = logits.astype(jnp.float32)
    bits = jax.lax.bitcast_convert_type(jnp.where(x == 0, 0.0, x), jnp.uint32)
    return jnp.where(bits >> 31 == 1, ~bits, bits | jnp.uint32(1 << 31))


def top_p_filter(logits: jax.Array, top_p: float) -> jax.Array:
    """Nucleus filter (Holtzman et al. 2020): keep the smallest set of most likely tokens whose
    probability sum is >= top_p (at least one token), -inf elsewhere. 0 < top_p <= 1.

    Kept: x_i >= v, v the smallest logit with S(v) < top_p, S(k) = sum of p_j over x_j > k.
    Found without sorting the row: S is non-increasing, so m = max{k : S(k) >= top_p} over the
    order keys (`_order_keys`) is built bit by bit, 32 masked sums over the row, and the kept
    tokens are those with key > m. 10x faster than a sort on CPU at B = 64, V = 151,936.
    """
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p={top_p}: expected 0 < top_p <= 1")
    if top_p == 1:
        return logits
    probs = jax.nn.softmax(logits, axis=-1)
    keys = _order_keys(logits)

    def set_bit(bit, heavy):  # heavy [B, 1]: the largest key prefix k found with S(k) >= top_p
        candidate = heavy | jnp.left_shift(jnp.uint32(1), (31 - bit).astype(jnp.uint32))
        mass_above = jnp.sum(jnp.where(keys > candidate, probs, 0.0), axis=-1, keepdims=True)
        return jnp.where(mass_above >= top_p, candidate, heavy)

    heavy = jax.lax.fori_loop(0, 32, set_bit, jnp.zeros(logits.shape[:-1] + (1,), jnp.uint32))
    return jnp.where(keys > heavy, logits, NEG_INF)


def filter_logits(logits: jax.Array, temperature: float, top_k: int = 0,
                  top_p: float = 1.0) -> jax.Array:
    """temperature -> top-k -> top-p on logits [B, V]; top_k = 0 and top_p = 1 are off.

    With both top-k and top-p on, the nucleus is computed on the k sorted values that
    `_top_k_values` returns, the tokens tied with the k-th beyond them counted in (one masked
    sum over V): the same result as top_p_filter(top_k_filter(x)), without sorting V.
    """
    logits = apply_temperature(logits, temperature)
    if 0 < top_k < logits.shape[-1]:
        top_values = _top_k_values(logits, top_k)  # [B, k], sorted descending
        threshold = _kth_largest(top_values)
        if top_p < 1:
            ties_beyond = (jnp.sum(logits == threshold, axis=-1, keepdims=True)
                           - jnp.sum(top_values == threshold, axis=-1, keepdims=True))
            threshold = _nucleus_threshold(top_values, ties_beyond.astype(logits.dtype), top_p)
        return _mask_below(logits, threshold)
    return top_p_filter(logits, top_p)


def categorical(rng: jax.Array, logits: jax.Array) -> jax.Array:
    """One draw from softmax(logits) a row: logits [B, V] -> [B] int32, exactly distributed.

    Gumbel-max (Gumbel 1954; Maddison et al. 2014) in two levels over blocks of VOCAB_BLOCK
    logits (the last padded with -inf): a block j ~ softmax_j(logsumexp(x_block j)), then a
    token i of block j ~ softmax_i(x_i). P(i) = (Z_j / Z)(exp(x_i) / Z_j) = softmax(x)_i, with
    Z_j = sum over block j of exp(x_i) and Z = sum_j Z_j. Noise for V / VOCAB_BLOCK +
    VOCAB_BLOCK values a row instead of V (jax.random.categorical): 25x faster on CPU at B = 64,
    V = 151,936. Rows need one finite logit.
    """
    blocks = _pad_to_blocks(logits, VOCAB_BLOCK)
    block_rng, token_rng = jax.random.split(rng)
    block = jax.random.categorical(block_rng, jax.nn.logsumexp(blocks, axis=-1), axis=-1)  # [B]
    chosen = jnp.take_along_axis(blocks, block[:, None, None], axis=1)[:, 0]  # [B, VOCAB_BLOCK]
    token = jax.random.categorical(token_rng, chosen, axis=-1)
    return (block * VOCAB_BLOCK + token).astype(jnp.int32)


def sample_tokens(logits: jax.Array, rng: jax.Array, temperature: float, top_k: int = 0,
                  top_p: float = 1.0) -> jax.Array:
    """One token per row of logits [B, V] -> [B] int32.

    temperature == 0 is greedy decoding (argmax of the raw logits; filters do not matter);
    otherwise a draw from softmax(filter_logits(logits)) (`categorical`).
    """
    if temperature == 0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    return categorical(rng, filter_logits(logits, temperature, top_k, top_p))
