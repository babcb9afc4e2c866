"""Jitted generation with a key/value cache: prefill, then one token a step inside lax.while_loop.

`generate` is a pure function (traceable under jit); `Sampler` is the way to call it: it pads a
batch of left-padded prompts to a length bucket, places it on the mesh and runs one compiled
function per (rows, bucket) shape, with the parameters as an argument (never closed over).

Per call, for prompts [B, P] (left-padded, mask [B, P]) and n = num_samples:
  1. prefill the B prompts into a cache of P slots (RoPE positions cumsum(mask) - 1), in one
     pass or in chunks of SamplingConfig.prefill_chunk tokens;
  2. copy the cache into one of P + max_new slots per row and repeat each prompt's rows n
     times (rows of one prompt are contiguous: [p0 s0..s(n-1), p1 s0, ...]);
  3. sample token 0 from the prefill's last-position logits, then loop: feed the last token at
     slot P + t - 1, take the logits of that one position [B*n, V] and sample token t. The loop
     ends after max_new tokens or as soon as every row has finished.
Prefill and loop run the model with its layers unrolled, on a per-layer copy of the weights
(gathered whole over fsdp on a mesh: every token needs every weight) and a per-layer cache
(SamplingConfig.unstack_layers, the default), or the scanned model.
A row finishes after an EOS id or the last token of a stop sequence (both kept, mask True);
after that it emits pad_id with mask False and log-prob 0, while the other rows go on.

The attention mask over the cache is the prompt's mask in the first P slots and True in every
generated slot from the start: the model's causal mask (key slot <= query slot) hides the slots
not yet written, so the mask need not change inside the loop.

Log-probs are log_softmax of the raw logits (temperature 1, no filters) at the sampled token:
log pi(y_t | x, y_<t) of the unmodified policy, what PPO's importance ratio compares against the
teacher-forced log-probs of the same tokens.
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, NamedTuple, Optional, Sequence

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from rlr.models import (KVCache, init_cache, last_token_logits, lm_head_weight, unstack_cache,
                        unstack_layers)
from rlr.parallel import (BATCH_AXES, DEFAULT_RULES, batch_sharding, param_shardings,
                          rules_without, shard_batch)
from rlr.sampling import filters, stops

MIN_BUCKET = 16


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """How to sample; hashable, so it is a static argument under jit.

    temperature: 0 = greedy (argmax), else logits / temperature.
    top_k: keep the k most likely tokens (0 = off). top_p: nucleus mass (1.0 = off).
    Filters apply in the order temperature -> top-k -> top-p (rlr/sampling/filters.py).
    max_new_tokens: response length R. num_samples: n responses a prompt, rows contiguous.
    eos_ids: token ids that end a response (kept in it). stop_sequences: token-id tuples that
    end a response when its last generated tokens equal one (kept in it). pad_id: the token
    written after a row has finished (its mask is False). num_tokens: sample only ids below it
    (the tokenizer's vocabulary, when the model's embedding is padded larger: a padding id
    never decodes); 0 = every id. Log-probs stay those of the full (unmasked) policy.
    unstack_layers: run the prefill and the token loop on a per-layer copy of the weights in the
    compute dtype (rlr.models.decoder.unstack_layers), made once a call, and a per-layer KV
    cache (unstack_cache): no copy of every layer's weights and cache out of the stacked arrays
    at every token, for the memory of one more model in the compute dtype (whole over fsdp:
    rlr.parallel.memory.decode_weight_bytes) and a longer compile (the layers unrolled).
    False: the scanned model, sliced every token. With one KV head a device (KVH / tensor = 1)
    XLA:CPU copies each layer's cache at every token of the per-layer loop and not of the
    scanned one (tests/test_sampling.py; benchmarks/RESULTS.md measures what it costs).
    prefill_chunk: prefill the prompts C tokens at a time (chunked prefill, as vLLM and
    Sarathi-Serve, Agrawal et al. 2024, schedule it), each chunk attending to the cache the
    earlier ones wrote: the prefill's attention scores and MLP activations shrink by P / C,
    for P / C passes over the weights. C must divide the prompt bucket P; 0 (or C >= P) = the
    whole prompt in one pass.
    """

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    max_new_tokens: int = 64
    num_samples: int = 1
    eos_ids: tuple = ()
    stop_sequences: tuple = ()
    pad_id: int = 0
    num_tokens: int = 0
    unstack_layers: bool = True
    prefill_chunk: int = 0

    def __post_init__(self):
        # Lists become tuples so the config stays hashable.
        object.__setattr__(self, "eos_ids", tuple(int(i) for i in self.eos_ids))
        object.__setattr__(self, "stop_sequences",
                           tuple(tuple(int(i) for i in s) for s in self.stop_sequences))
        checks = [
            (self.temperature >= 0, "temperature", ">= 0"),
            (self.top_k >= 0, "top_k", ">= 0 (0 = off)"),
            (0 < self.top_p <= 1, "top_p", "0 < top_p <= 1 (1 = off)"),
            (self.max_new_tokens >= 1, "max_new_tokens", ">= 1"),
            (self.num_samples >= 1, "num_samples", ">= 1"),
            (all(len(s) > 0 for s in self.stop_sequences), "stop_sequences",
             "non-empty token sequences"),
            (all(i >= 0 for i in self.eos_ids), "eos_ids", "non-negative token ids"),
            (self.num_tokens >= 0, "num_tokens", ">= 0 (0 = every id)"),
            (self.prefill_chunk >= 0, "prefill_chunk", ">= 0 (0 = the whole prompt at once)"),
        ]
        for ok, name, expected in checks:
            if not ok:
                raise ValueError(f"SamplingConfig.{name}={getattr(self, name)!r}: expected {expected}")


class Rollout(NamedTuple):
    """Generated responses, N = B * num_samples rows (rows of one prompt contiguous).

    prompt_tokens, prompt_mask [N, P]: the (bucket-padded, left-padded) prompts, repeated.
    response_tokens [N, R] int32: pad_id after a row finished.
    response_mask [N, R] bool: True up to and including the EOS / last stop token.
    logprobs [N, R] float32: log pi(token) under the raw policy (temperature 1, no filters);
      0 where the mask is False.
    lengths [N] int32: number of response tokens (sum of response_mask).
    """

    prompt_tokens: jax.Array
    prompt_mask: jax.Array
    response_tokens: jax.Array
    response_mask: jax.Array
    logprobs: jax.Array
    lengths: jax.Array


class _LoopState(NamedTuple):
    step: jax.Array  # scalar int32: tokens emitted so far
    last: jax.Array  # [N] int32: the token emitted at step - 1
    done: jax.Array  # [N] bool: the row has finished
    window: jax.Array  # [N, M] int32: last generated tokens (stop sequences)
    cache: KVCache
    tokens: jax.Array  # [N, R] int32
    mask: jax.Array  # [N, R] bool
    logprobs: jax.Array  # [N, R] float32


def _cache_spec(mesh: Mesh, num_kv_heads: int, rank: int) -> P:
    """A cache array [(L,) N, KVH, S, Dh]: rows over (data, fsdp), kv heads over tensor when
    they divide."""
    heads = "tensor" if num_kv_heads % mesh.shape["tensor"] == 0 else None
    return P(*(None,) * (rank - 4), BATCH_AXES, heads, None, None)


def _constrain_cache(cache: KVCache, mesh: Optional[Mesh]) -> KVCache:
    if mesh is None:
        return cache

    def constrain(x):
        spec = _cache_spec(mesh, x.shape[-3], x.ndim)
        return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))

    return jax.tree.map(constrain, cache)


def _gathered_over_fsdp(decoder, params: Any, mesh: Mesh) -> Any:
    """The per-layer weights whole over fsdp (split over tensor as before), gathered once a
    call: every token needs every weight whole, and constrained here XLA gathers each layer's
    slice once, where otherwise it gathered the stacked weights and sliced them again (two full
    copies a device)."""
    rules = rules_without(nn.get_logical_axis_rules() or DEFAULT_RULES, "fsdp")
    return jax.lax.with_sharding_constraint(params, param_shardings(decoder, mesh, rules))


def _emit(state: _LoopState, logits: jax.Array, rng: jax.Array,
          config: SamplingConfig) -> _LoopState:
    """Sample the token of `state.step` from logits [N, V], record it, update stops."""
    key = jax.random.fold_in(rng, state.step)
    allowed = logits
    if config.num_tokens:
        ids = jax.lax.broadcasted_iota(jnp.int32, logits.shape, logits.ndim - 1)
        allowed = jnp.where(ids < config.num_tokens, logits, -jnp.inf)
    sampled = filters.sample_tokens(allowed, key, config.temperature, config.top_k, config.top_p)
    log_z = jax.nn.logsumexp(logits, axis=-1)
    logp = jnp.take_along_axis(logits, sampled[:, None], axis=-1)[:, 0] - log_z
    valid = ~state.done
    token = jnp.where(valid, sampled, config.pad_id).astype(jnp.int32)
    window = stops.push_window(state.window, token)
    finished = stops.is_eos(token, config.eos_ids) | stops.ends_with_stop(
        window, config.stop_sequences)
    column = (0, state.step)
    return state._replace(
        step=state.step + 1,
        last=token,
        done=state.done | (valid & finished),
        window=window,
        tokens=jax.lax.dynamic_update_slice(state.tokens, token[:, None], column),
        mask=jax.lax.dynamic_update_slice(state.mask, valid[:, None], column),
        logprobs=jax.lax.dynamic_update_slice(
            state.logprobs, jnp.where(valid, logp, 0.0)[:, None], column),
    )


def _prefill_chunks(length: int, chunk: int) -> int:
    """How many chunks of SamplingConfig.prefill_chunk tokens prefill a bucket of `length`."""
    if not chunk or chunk >= length:
        return 1
    if length % chunk:
        raise ValueError(f"SamplingConfig.prefill_chunk={chunk} must divide the prompt bucket "
                         f"length {length} (or be 0 / >= it)")
    return length // chunk


def _prefill(model, params, tokens, mask, repeats: int, total_slots: int, chunk: int, mesh):
    """Run the prompts [B, P] through the model, in P / C chunks of C tokens (`chunk`; one pass
    when 0); return (last-position logits [B*n, V], cache of `total_slots` slots with each
    prompt's rows repeated n times), the cache stacked for a scanned model and per layer for an
    unrolled one.

    Chunk k writes its keys / values at slots kC..kC+C-1 and attends to slots <= its own: the
    cache holds every earlier chunk, so each token sees what one pass shows it."""
    batch, length = tokens.shape
    positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0).astype(jnp.int32)
    cache = init_cache(model.config, batch, length)
    if not model.scan_layers:
        cache = unstack_cache(cache)
    chunks = _prefill_chunks(length, chunk)
    width = length // chunks

    def prefill_chunk(k, carry):  # (cache, hidden [B, D] of the chunk's last position)
        start = k * width
        hidden, cache = model.apply(
            {"params": params}, jax.lax.dynamic_slice_in_dim(tokens, start, width, axis=1),
            jax.lax.dynamic_slice_in_dim(positions, start, width, axis=1), mask,
            cache=_constrain_cache(carry[0], mesh), cache_index=start)
        return cache, hidden[:, -1]

    empty = jnp.zeros((batch, model.config.hidden_size), model.config.dtype)
    cache, last = (prefill_chunk(0, (cache, empty)) if chunks == 1 else
                   jax.lax.fori_loop(0, chunks, prefill_chunk, (cache, empty)))
    logits = last_token_logits(last[:, None], lm_head_weight(params, model.config))

    def extend(x):  # [(L,) B, KVH, P, Dh] -> [(L,) B*n, KVH, total_slots, Dh]
        slots = [(0, 0)] * x.ndim
        slots[-2] = (0, total_slots - length)
        return jnp.repeat(jnp.pad(x, slots), repeats, axis=x.ndim - 4)

    return jnp.repeat(logits, repeats, axis=0), _constrain_cache(jax.tree.map(extend, cache), mesh)


def generate(model, params: Any, prompt_tokens: jax.Array, prompt_mask: jax.Array,
             rng: jax.Array, config: SamplingConfig, mesh: Optional[Mesh] = None) -> Rollout:
    """Sample config.num_samples responses of up to max_new_tokens for each prompt.

    y_t ~ softmax(filter(z_t)), z_t = logits of pi(. | x, y_<t) read from a KV cache (one
    position a step, Pope et al. 2022), filter = temperature -> top-k (Fan et al. 2018) -> top-p
    (Holtzman et al. 2020); logprobs_t = log_softmax(z_t)[y_t] (the unfiltered policy).
    model: an LM-head rlr.models.Transformer; params its parameter tree. prompt_tokens [B, P]
    int, prompt_mask [B, P] bool, left-padded (every row's last slot is a real token). rng: a
    PRNG key (same key, same output). mesh: when given, the cache is constrained to rows over
    (data, fsdp) and kv heads over tensor; call under `jax.set_mesh(mesh)` and
    `nn.logical_axis_rules(DEFAULT_RULES)` (Sampler does). Traceable: use inside jit.
    Returns a Rollout of N = B * num_samples rows (see Rollout and the module docstring).
    """
    chex.assert_rank([prompt_tokens, prompt_mask], 2)
    chex.assert_equal_shape([prompt_tokens, prompt_mask])
    n, new = config.num_samples, config.max_new_tokens
    prompt_tokens = prompt_tokens.astype(jnp.int32)
    prompt_mask = prompt_mask.astype(bool)
    prompt_len = prompt_tokens.shape[1]
    rows = prompt_tokens.shape[0] * n

    decoder, decoder_params = model, params
    if config.unstack_layers:
        decoder = model.clone(scan_layers=False)
        decoder_params = unstack_layers(params, model.config.dtype)
        if mesh is not None:
            decoder_params = _gathered_over_fsdp(decoder, decoder_params, mesh)
    logits, cache = _prefill(decoder, decoder_params, prompt_tokens, prompt_mask, n,
                             prompt_len + new, config.prefill_chunk, mesh)
    prompt_tokens = jnp.repeat(prompt_tokens, n, axis=0)
    prompt_mask = jnp.repeat(prompt_mask, n, axis=0)
    next_position = jnp.sum(prompt_mask, axis=1, dtype=jnp.int32)  # [N]: RoPE position of token 0
    attention = jnp.concatenate([prompt_mask, jnp.ones((rows, new), bool)], axis=1)  # [N, P+R]

    state = _LoopState(
        step=jnp.zeros((), jnp.int32), last=jnp.zeros((rows,), jnp.int32),
        done=jnp.zeros((rows,), bool),
        window=stops.init_window(rows, config.stop_sequences), cache=cache,
        tokens=jnp.full((rows, new), config.pad_id, jnp.int32),
        mask=jnp.zeros((rows, new), bool), logprobs=jnp.zeros((rows, new), jnp.float32))
    state = _emit(state, logits, rng, config)

    def cond(s: _LoopState):
        return (s.step < new) & ~jnp.all(s.done)

    def body(s: _LoopState):
        slot = prompt_len + s.step - 1  # the cache slot of the last emitted token
        positions = (next_position + s.step - 1)[:, None]
        hidden, cache = decoder.apply({"params": decoder_params}, s.last[:, None], positions,
                                      attention, cache=s.cache, cache_index=slot)
        # The head read inside the loop: a tied embedding's transpose folds into the matmul
        # here, where one taken outside is a [D, V] copy the loop carries.
        weight = lm_head_weight(decoder_params, model.config)
        step_logits = nn.with_logical_constraint(last_token_logits(hidden, weight),
                                                 ("act_batch", "act_vocab"))
        return _emit(s._replace(cache=_constrain_cache(cache, mesh)), step_logits, rng, config)

    state = jax.lax.while_loop(cond, body, state)
    lengths = jnp.sum(state.mask, axis=1, dtype=jnp.int32)
    return Rollout(prompt_tokens, prompt_mask, state.tokens, state.mask, state.logprobs, lengths)


def bucket_length(length: int, buckets: Optional[Sequence[int]] = None) -> int:
    """The padded prompt length of a batch whose longest prompt has `length` tokens: the
    smallest bucket >= length, buckets defaulting to powers of two from 16."""
    if buckets is None:
        return max(MIN_BUCKET, 1 << max(length - 1, 0).bit_length())
    fitting = [b for b in sorted(buckets) if b >= length]
    if not fitting:
        raise ValueError(f"prompt length {length} exceeds the largest bucket {max(buckets)} "
                         f"(buckets={sorted(buckets)})")
    return fitting[0]


def left_pad(tokens: np.ndarray, mask: np.ndarray, length: int,
             pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Left-pad tokens / mask [B, P] to [B, length] with pad_id / False (host numpy)."""
    extra = length - tokens.shape[1]
    if extra < 0:
        raise ValueError(f"prompts of {tokens.shape[1]} slots do not fit in {length}")
    tokens = np.pad(tokens, ((0, 0), (extra, 0)), constant_values=pad_id)
    return tokens, np.pad(mask, ((0, 0), (extra, 0)), constant_values=False)


def check_prompts(tokens: np.ndarray, mask: np.ndarray) -> None:
    """Raise ValueError unless tokens / mask are [B, P] and every row is left-padded and
    non-empty (mask False...False True...True)."""
    if tokens.ndim != 2 or tokens.shape != mask.shape:
        raise ValueError(f"prompt_tokens {tokens.shape} and prompt_mask {mask.shape}: expected "
                         "two [B, P] arrays of the same shape")
    if not np.issubdtype(tokens.dtype, np.integer):
        raise ValueError(f"prompt_tokens dtype {tokens.dtype}: expected integer token ids")
    if mask.shape[1] == 0 or not np.all(mask[:, -1]):
        raise ValueError("prompt_mask: every row needs at least one token and must be left-padded "
                         "(its last slot True)")
    if np.any(np.diff(mask.astype(np.int8), axis=1) < 0):
        raise ValueError("prompt_mask: expected left padding (False...False True...True a row)")


class Sampler:
    """Compiled generation of one model and SamplingConfig, optionally on a mesh.

    sampler = Sampler(model, config, mesh); rollout = sampler(params, tokens, mask, rng).
    Prompts (host numpy, left-padded [B, P]) are padded on the left to bucket_length(P,
    buckets), so batches of one B and one bucket reuse one compiled function; `trace_count`
    counts the traces (compilations). With a mesh, prompts are split over (data, fsdp) (B must
    divide by their size) and params are used with the shardings they carry.
    """

    def __init__(self, model, config: SamplingConfig, mesh: Optional[Mesh] = None,
                 buckets: Optional[Sequence[int]] = None, rules=DEFAULT_RULES):
        self.model, self.config, self.mesh, self.rules = model, config, mesh, rules
        self.buckets = None if buckets is None else tuple(sorted(buckets))
        self.trace_count = 0

        def run(params, tokens, mask, rng):
            self.trace_count += 1  # runs once per trace, i.e. per compilation
            return generate(model, params, tokens, mask, rng, config, mesh)

        out_shardings = None
        if mesh is not None:
            out_shardings = Rollout(*(batch_sharding(mesh, d) for d in (2, 2, 2, 2, 2, 1)))
        self._run = jax.jit(run, out_shardings=out_shardings)

    def _context(self):
        """The mesh and logical-axis rules the model's sharding constraints need (none without a mesh)."""
        stack = contextlib.ExitStack()
        if self.mesh is not None:
            stack.enter_context(jax.set_mesh(self.mesh))
            stack.enter_context(nn.logical_axis_rules(self.rules))
        return stack

    def prepare(self, prompt_tokens, prompt_mask) -> tuple[Any, Any]:
        """Check host prompts [B, P], left-pad them to their bucket and, on a mesh, split them
        over (data, fsdp): the (tokens, mask) the compiled function takes."""
        tokens, mask = np.asarray(prompt_tokens), np.asarray(prompt_mask).astype(bool)
        check_prompts(tokens, mask)
        length = bucket_length(tokens.shape[1], self.buckets)
        tokens, mask = left_pad(tokens.astype(np.int32), mask, length, self.config.pad_id)
        if self.mesh is None:
            return tokens, mask
        shards = int(np.prod([self.mesh.shape[a] for a in BATCH_AXES]))
        global_rows = tokens.shape[0] * jax.process_count()
        if global_rows % shards:
            raise ValueError(f"prompt batch {global_rows} (all hosts) must divide by the "
                             f"mesh's data x fsdp = {shards}")
        return shard_batch((tokens, mask), self.mesh)

    def lower(self, params, tokens, mask, rng: jax.Array) -> jax.stages.Lowered:
        """The lowered function for prepared (tokens, mask): `.compile()` gives an executable
        called as compiled(params, tokens, mask, rng), with `memory_analysis()` / `cost_analysis()`."""
        with self._context():
            return self._run.lower(params, tokens, mask, rng)

    def __call__(self, params, prompt_tokens, prompt_mask, rng: jax.Array) -> Rollout:
        """Rollout of N = B * num_samples rows for host prompts [B, P] (see `generate`)."""
        tokens, mask = self.prepare(prompt_tokens, prompt_mask)
        with self._context():
            return self._run(params, tokens, mask, rng)
