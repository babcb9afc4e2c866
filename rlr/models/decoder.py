"""The Llama / Qwen2 decoder in Flax linen, with an LM head or a scalar (value / reward) head.

One definition serves policy, reference, critic and reward model: they differ by `head` and by
their parameter trees. Layers are stacked with `nn.scan` (one compiled layer, parameters with a
leading `layers` axis; a sampler's token loop runs them unrolled on `unstack_layers`' per-layer
trees), every parameter carries logical axis names (rlr/parallel/rules.py maps them onto the
mesh), and the key/value cache is an explicit input and output, so generation is a pure
function too: stacked [L, B, KVH, S, Dh] for the scanned model, a buffer a layer for the
unrolled one, in the [B, KVH, S, Dh] layout the attention matmuls read without a transposed copy.

Architecture: Touvron et al. 2023 (Llama), Qwen Team 2024 (Qwen2: q/k/v biases); RoPE from
Su et al. 2021 in the Hugging Face `rotate_half` layout; RMSNorm from Zhang & Sennrich 2019;
SwiGLU from Shazeer 2020; grouped-query attention from Ainslie et al. 2023.
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from rlr.models.config import ModelConfig, RopeScaling

HEADS = ("lm", "score")
MASKED_LOGIT = -0.7 * float(jnp.finfo(jnp.float32).max)  # a masked key's logit (as jax.nn)


class KVCache(NamedTuple):
    """Keys and values of every layer, slot-major per head: [B, KVH, S, Dh] a layer (S cache
    slots; the layout of the attention matmuls' operands, so no step copies a layer's cache).

    Stacked (the scanned model): k, v [L, B, KVH, S, Dh]. Per layer (the unrolled model): k, v
    tuples of L arrays [B, KVH, S, Dh] (`unstack_cache`): each layer writes and reads its own
    buffer, where a slice of the stacked one would be a copy every step.
    """

    k: Any
    v: Any


def init_cache(config: ModelConfig, batch: int, length: int, dtype=None) -> KVCache:
    """An all-zero stacked cache of `length` slots for `batch` sequences."""
    shape = (config.num_layers, batch, config.num_kv_heads, length, config.head_dim)
    zeros = jnp.zeros(shape, dtype or config.dtype)
    return KVCache(zeros, zeros)


def unstack_cache(cache: KVCache) -> KVCache:
    """The per-layer cache (tuples of L [B, KVH, S, Dh]) of a stacked one [L, B, KVH, S, Dh]."""
    return KVCache(*(tuple(x) for x in cache))


def _partitioned(init, names):
    return nn.with_logical_partitioning(init, names)


def _constrain(x, names):
    return nn.with_logical_constraint(x, names)


def _at_least_float32(dtype):
    """float32 for bfloat16 / float16 / float32 compute, float64 for float64 (parity checks)."""
    return jnp.promote_types(dtype, jnp.float32)


def rope_inverse_frequencies(head_dim: int, theta: float,
                             scaling: Optional[RopeScaling] = None) -> jax.Array:
    """inv_freq_i = theta^(-2i/Dh), i < Dh/2 (Su et al. 2021), with Llama 3 scaling if given.

    Llama 3 scaling (Meta 2024): wavelengths 2 pi / inv_freq longer than
    original_max / low_freq_factor are divided by `factor`, shorter than
    original_max / high_freq_factor kept, and the band between interpolated smoothly.
    """
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    if scaling is None:
        return inv_freq
    wavelen = 2 * math.pi / inv_freq
    low_wavelen = scaling.original_max_position_embeddings / scaling.low_freq_factor
    high_wavelen = scaling.original_max_position_embeddings / scaling.high_freq_factor
    scaled = jnp.where(wavelen > low_wavelen, inv_freq / scaling.factor, inv_freq)
    smooth = ((scaling.original_max_position_embeddings / wavelen - scaling.low_freq_factor)
              / (scaling.high_freq_factor - scaling.low_freq_factor))
    smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return jnp.where(medium, smoothed, scaled)


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq: jax.Array) -> jax.Array:
    """Rotate x [B, T, N, Dh] by angles positions[b, t] * inv_freq (rotate_half layout).

    out = x * cos(a) + rotate_half(x) * sin(a), with a = concat(f, f), rotate_half(x) =
    concat(-x2, x1) for the two halves x1, x2 of the head dimension (as Hugging Face Llama).
    Angles, cos and sin in float32 (as Hugging Face); the rotation in float32 or wider.
    """
    angles = positions[..., None].astype(jnp.float32) * inv_freq  # [B, T, Dh/2]
    angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]  # [B, T, 1, Dh]
    wide = x.astype(_at_least_float32(x.dtype))
    x1, x2 = jnp.split(wide, 2, axis=-1)
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    cos, sin = jnp.cos(angles).astype(wide.dtype), jnp.sin(angles).astype(wide.dtype)
    return (wide * cos + rotated * sin).astype(x.dtype)


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * scale, computed in float32 or wider (Zhang & Sennrich
    2019)."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x):
        scale = self.param("scale", _partitioned(nn.initializers.ones, ("embed",)),
                           (x.shape[-1],), self.config.param_dtype)
        wide = x.astype(_at_least_float32(x.dtype))
        normed = wide * jax.lax.rsqrt(jnp.mean(wide * wide, axis=-1, keepdims=True)
                                      + self.config.rms_norm_eps)
        return (normed.astype(self.config.dtype) * scale.astype(self.config.dtype))


class Linear(nn.Module):
    """y = x . W + b, contracting the last `in_dims` axes of x with the leading axes of W.

    W has shape x.shape[-in_dims:] + out_shape and logical axes `names`; b has out_shape.
    Computed in `dtype` (default config.dtype).
    """

    config: ModelConfig
    out_shape: tuple
    names: tuple
    in_dims: int = 1
    bias: bool = False
    dtype: Any = None

    @nn.compact
    def __call__(self, x):
        c = self.config
        dtype = self.dtype or c.dtype
        kernel = self.param("kernel", _partitioned(nn.initializers.normal(0.02), self.names),
                            x.shape[x.ndim - self.in_dims:] + self.out_shape, c.param_dtype)
        contract = (tuple(range(x.ndim - self.in_dims, x.ndim)), tuple(range(self.in_dims)))
        y = jax.lax.dot_general(x.astype(dtype), kernel.astype(dtype), (contract, ((), ())))
        if self.bias:
            b = self.param("bias", _partitioned(nn.initializers.zeros, self.names[self.in_dims:]),
                           self.out_shape, c.param_dtype)
            y = y + b.astype(dtype)
        return y


class Attention(nn.Module):
    """Grouped-query causal self-attention with RoPE, writing into an optional KV cache."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x, positions, mask, lengths, layer_cache, cache_index):
        """x [B,T,D]; positions [B,T]; mask [B,1,T,S] bool, or None with lengths [B] int32 (rows
        packed by `pack_valid_tokens`: causal over the first lengths[b] slots, T == S);
        layer_cache None, (k, v, layer) with the stacked caches [L,B,KVH,S,Dh] and this layer's
        index, or (k, v, None) with this layer's own caches [B,KVH,S,Dh] (KVCache)."""
        c = self.config
        q = Linear(c, (c.num_heads, c.head_dim), ("embed", "heads", "head_dim"),
                   bias=c.qkv_bias, name="q_proj")(x)
        k = Linear(c, (c.num_kv_heads, c.head_dim), ("embed", "kv_heads", "head_dim"),
                   bias=c.qkv_bias, name="k_proj")(x)
        v = Linear(c, (c.num_kv_heads, c.head_dim), ("embed", "kv_heads", "head_dim"),
                   bias=c.qkv_bias, name="v_proj")(x)
        inv_freq = rope_inverse_frequencies(c.head_dim, c.rope_theta, c.rope_scaling)
        q = apply_rope(q, positions, inv_freq)
        k = apply_rope(k, positions, inv_freq)
        q = _constrain(q, ("act_batch", "act_length", "act_heads", None))
        if layer_cache is not None:
            # The T new entries are written in place at slot cache_index (a stacked cache rides
            # in the scan carry: one write, not a copy of the layer's cache), then attended to.
            cache_k, cache_v, layer = layer_cache
            cache_k, k = _write_cache(cache_k, k, layer, cache_index)
            cache_v, v = _write_cache(cache_v, v, layer, cache_index)
            out = cached_attention(q, k.astype(q.dtype), v.astype(q.dtype), mask)
            layer_cache = (cache_k, cache_v)
        elif lengths is None:
            out = jax.nn.dot_product_attention(q, k, v, mask=mask)
        else:
            out = jax.nn.dot_product_attention(q, k, v, is_causal=True, query_seq_lengths=lengths,
                                               key_value_seq_lengths=lengths,
                                               implementation=c.attention)
        out = Linear(c, (c.hidden_size,), ("heads", "head_dim", "embed"), in_dims=2,
                     name="o_proj")(out)
        return out, layer_cache


def _write_cache(cache: jax.Array, new: jax.Array, layer: Optional[jax.Array],
                 cache_index) -> tuple[jax.Array, jax.Array]:
    """(updated cache, this layer's [B, KVH, S, Dh]) after writing new [B, T, KVH, Dh] at slots
    cache_index..cache_index+T-1 of a layer's cache [B, KVH, S, Dh] (layer None) or of the
    stacked cache [L, B, KVH, S, Dh] at `layer`."""
    new = jnp.swapaxes(new, 1, 2).astype(cache.dtype)  # [B, KVH, T, Dh]
    if layer is None:
        cache = jax.lax.dynamic_update_slice(cache, new, (0, 0, cache_index, 0))
        return cache, cache
    cache = jax.lax.dynamic_update_slice(cache, new[None], (layer, 0, 0, cache_index, 0))
    return cache, jax.lax.dynamic_index_in_dim(cache, layer, keepdims=False)


def cached_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """Grouped-query attention of q [B, T, N, Dh] over a cache k, v [B, KVH, S, Dh]: [B, T, N, Dh].

    softmax(q k^T / sqrt(Dh) + mask) v with the N query heads in KVH groups of G = N / KVH
    sharing a key / value head (Ainslie et al. 2023); mask [B, 1, T, S] bool. The logits and the
    softmax in float32, the probabilities cast to v's dtype before the second matmul: the
    arithmetic of jax.nn.dot_product_attention's XLA path, on the cache's own layout.
    """
    batch, length, heads, head_dim = q.shape
    kv_heads = k.shape[1]
    q = q.reshape(batch, length, kv_heads, heads // kv_heads, head_dim)
    logits = jnp.einsum("btkgd,bksd->bkgts", q, k, preferred_element_type=jnp.float32)
    logits = jnp.where(mask[:, :, None], logits * (1 / math.sqrt(head_dim)), MASKED_LOGIT)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgts,bksd->bkgtd", probs, v)  # the matmul's own output layout
    return jnp.moveaxis(out, 3, 1).reshape(batch, length, heads, head_dim)


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x)) (Shazeer 2020)."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x):
        c = self.config
        gate = Linear(c, (c.intermediate_size,), ("embed", "mlp"), name="gate_proj")(x)
        up = Linear(c, (c.intermediate_size,), ("embed", "mlp"), name="up_proj")(x)
        hidden = _constrain(nn.silu(gate) * up, ("act_batch", "act_length", "act_mlp"))
        return Linear(c, (c.hidden_size,), ("mlp", "embed"), name="down_proj")(hidden)


class Block(nn.Module):
    """One pre-norm decoder layer, written as a scan body over layers:
    ((x, cache_k, cache_v), layer) -> ((x, cache_k, cache_v), None); layer is the index into
    stacked caches, or None when cache_k / cache_v are this layer's own (see Attention)."""

    config: ModelConfig

    @nn.compact
    def __call__(self, carry, layer, positions, mask, lengths, cache_index):
        x, cache_k, cache_v = carry
        layer_cache = None if cache_k is None else (cache_k, cache_v, layer)
        attn_out, layer_cache = Attention(self.config, name="attn")(
            RMSNorm(self.config, name="attn_norm")(x), positions, mask, lengths, layer_cache,
            cache_index)
        x = x + attn_out
        x = x + MLP(self.config, name="mlp")(RMSNorm(self.config, name="mlp_norm")(x))
        x = _constrain(x, ("act_batch", "act_length", "act_embed"))
        cache_k, cache_v = (None, None) if layer_cache is None else layer_cache
        return (x, cache_k, cache_v), None


_REMAT_POLICY = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


def attention_mask(attention_mask: jax.Array, query_slots: jax.Array,
                   segment_ids: Optional[jax.Array] = None) -> jax.Array:
    """Boolean [B, 1, T, S]: query t may see key s iff s is a valid key and s <= t's slot.

    attention_mask [B, S] marks valid key slots (padding False); query_slots [T] is the slot of
    each query token (0..T-1 without a cache, cache_index + t with one); segment_ids [B, T]
    (packed sequences, T == S) also require the same segment. Every query sees itself, so a
    padding row never has an empty softmax.
    """
    key_slots = jnp.arange(attention_mask.shape[1])
    causal = key_slots[None, :] <= query_slots[:, None]  # [T, S]
    mask = causal[None] & attention_mask[:, None, :].astype(bool)
    if segment_ids is not None:
        mask &= segment_ids[:, :, None] == segment_ids[:, None, :]
    mask |= key_slots[None, None, :] == query_slots[None, :, None]
    return mask[:, None]


def pack_valid_tokens(attention_mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """order [B, T] int32 and lengths [B] int32 that move each row's valid tokens to its front.

    order[b] lists row b's valid slots in their order, then its padding slots (a stable sort
    of ~attention_mask[b]); lengths[b] = sum_t attention_mask[b, t]. In x[b, order[b]] the
    valid tokens fill slots 0..lengths[b]-1, where causal attention over the first lengths[b]
    keys sees exactly what `attention_mask` allows a valid query (every valid key at or before
    it), the one form of padding that fused kernels (cuDNN flash attention's PADDING_CAUSAL)
    take without a [T, S] mask. x[b, argsort(order[b])] undoes it.
    """
    valid = attention_mask.astype(bool)
    order = jnp.argsort(~valid, axis=1, stable=True).astype(jnp.int32)
    return order, jnp.sum(valid, axis=1, dtype=jnp.int32)


class Transformer(nn.Module):
    """Decoder with an LM head ("lm": returns final hidden states for chunked log-probs) or a
    scalar head ("score": returns a float32 score per token, for critics and reward models).

    __call__(tokens [B,T] int, positions [B,T] int, attention_mask [B,S] bool, segment_ids=None,
             cache=None, cache_index=None) -> (out, cache)
    Layers run as one scanned layer (params["layers"], every leaf [L, ...]; a stacked KVCache),
    or unrolled with scan_layers=False (params layer_0 .. layer_{L-1}, `unstack_layers`; a
    per-layer KVCache, `unstack_cache`).
    out is hidden [B,T,D] (lm) or scores [B,T] (score). Without a cache S = T; with one, S is
    the cache length and the T new tokens are written at slots cache_index..cache_index+T-1.
    With config.attention == "cudnn", a forward without cache or segment_ids packs each row's
    valid tokens to its front (`pack_valid_tokens`), attends with cuDNN flash attention
    (causal, key/value lengths) and unpacks the outputs: valid positions get what the mask
    path gives them; padding positions, which no loss reads, do not.
    """

    config: ModelConfig
    head: str = "lm"
    scan_layers: bool = True  # False: layer_0 .. layer_{L-1}, a parameter tree each (decoding)

    @nn.compact
    def __call__(self, tokens, positions, attention_mask_, segment_ids=None, cache=None,
                 cache_index=None):
        c = self.config
        if self.head not in HEADS:
            raise ValueError(f"head={self.head!r}: expected one of {HEADS}")
        embed = nn.Embed(c.vocab_size, c.hidden_size, dtype=c.dtype, param_dtype=c.param_dtype,
                         embedding_init=_partitioned(nn.initializers.normal(0.02),
                                                     ("vocab", "embed")), name="embed")
        packed = c.attention != "xla" and cache is None and segment_ids is None
        if packed:
            order, lengths = pack_valid_tokens(attention_mask_)
            tokens, positions = (jnp.take_along_axis(a, order, axis=1) for a in (tokens, positions))
            mask = None
        else:
            start = 0 if cache is None else cache_index
            query_slots = start + jnp.arange(tokens.shape[1])
            mask, lengths = attention_mask(attention_mask_, query_slots, segment_ids), None
        # The lookup reads the table in its parameter sharding (vocab over tensor, embed over
        # fsdp). Where data > 1 and fsdp > 1 (on 8 devices: meshes (2,2,2), (2,4,1), (4,2,1);
        # not (1,4,2), (1,8,1), (4,1,2), (8,1,1)), XLA's SPMD partitioner warns "Involuntary
        # full rematerialization" as it reshards the rows it looked up to act_batch. Gathering
        # the table over fsdp first silences it but costs more. Compiled SFT step, V=151936,
        # D=896, 2 layers, 64 x 512 tokens, float32 (2026-12-07): peak 4418 -> 4548 MiB a device
        # on (2,2,2) and 4707 -> 5097 MiB on (2,4,1); collective output bytes 1748 -> 1682 and
        # 2017 -> 2253 MiB.
        x = _constrain(embed(tokens), ("act_batch", "act_length", "act_embed"))

        block = Block
        if c.remat != "none":
            block = nn.remat(Block, policy=_REMAT_POLICY[c.remat], prevent_cse=False)
        per_layer = cache is not None and isinstance(cache.k, (tuple, list))
        if cache is not None and per_layer == self.scan_layers:
            expected = ("a stacked KVCache (k, v [L, B, KVH, S, Dh]: init_cache)"
                        if self.scan_layers else
                        "a per-layer KVCache (tuples of L [B, KVH, S, Dh]: unstack_cache)")
            raise ValueError(f"Transformer(scan_layers={self.scan_layers}) takes {expected}")
        if self.scan_layers:
            layers = nn.scan(
                block, variable_axes={"params": 0}, split_rngs={"params": True},
                in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast),
                length=c.num_layers, metadata_params={nn.PARTITION_NAME: "layers"})(c, name="layers")
            carry = (x, None, None) if cache is None else (x, *cache)
            (x, cache_k, cache_v), _ = layers(carry, jnp.arange(c.num_layers), positions, mask,
                                              lengths, cache_index)
            new_cache = None if cache is None else KVCache(cache_k, cache_v)
        else:
            keys, values = [], []
            for i in range(c.num_layers):
                carry = (x, None, None) if cache is None else (x, cache.k[i], cache.v[i])
                (x, cache_k, cache_v), _ = block(c, name=f"layer_{i}")(
                    carry, None, positions, mask, lengths, cache_index)
                keys.append(cache_k)
                values.append(cache_v)
            new_cache = None if cache is None else KVCache(tuple(keys), tuple(values))
        if packed:
            x = jnp.take_along_axis(x, jnp.argsort(order, axis=1)[..., None], axis=1)
        hidden = RMSNorm(c, name="final_norm")(x)

        if self.head == "score":
            scores = Linear(c, (), ("embed",), bias=True, dtype=jnp.float32,
                            name="score_head")(hidden)
            return scores, new_cache
        if not c.tie_embeddings:
            self.param("lm_head", _partitioned(nn.initializers.normal(0.02), ("embed", "vocab")),
                       (c.hidden_size, c.vocab_size), c.param_dtype)
        return hidden, new_cache


def unstack_layers(params: Any, dtype: Any) -> Any:
    """The parameter tree of Transformer(..., scan_layers=False) in `dtype`, from that of the
    scanned model: params["layers"] (every leaf [L, ...]) becomes layer_0 .. layer_{L-1}.

    The scanned model slices each layer's weights out of the stacked arrays on every call (a
    copy: matmul libraries take whole buffers), which a decoder calling the model once a token
    pays at every token; unstacking once before the token loop pays it once. Casting to the
    compute dtype changes no number (every layer casts its weights to it before use) and
    halves what the decode steps of a float32-stored policy read.
    """
    cast = lambda tree: jax.tree.map(lambda x: x.astype(dtype), tree)
    layers = params["layers"]
    count = jax.tree.leaves(layers)[0].shape[0]
    unstacked = {f"layer_{i}": cast(jax.tree.map(lambda x, i=i: x[i], layers))
                 for i in range(count)}
    return {**{k: cast(v) for k, v in params.items() if k != "layers"}, **unstacked}


def lm_head_weight(params, config: ModelConfig) -> jax.Array:
    """The output projection W [D, V] of an LM-head parameter tree (the embedding if tied)."""
    if config.tie_embeddings:
        return params["embed"]["embedding"].T
    return params["lm_head"]
