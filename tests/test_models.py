"""Tests of rlr.models: chunked log-probs (values, gradients, memory), the KV cache, remat,
bfloat16 compute, the packed-rows path of cuDNN attention, and the named configs' shapes and
parameter counts."""
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hf_fixtures import random_rlr_params
from rlr.models import (NAMED_CONFIGS, Transformer, get_config, init_cache, lm_head_weight,
                        next_token_logprobs, token_logprobs, unstack_cache, unstack_layers)
from rlr.models.decoder import cached_attention, pack_valid_tokens
from rlr.parallel import DEFAULT_RULES, make_mesh, shard_batch

B, T = 2, 12
CONFIG = get_config("tiny")


def naive_logprobs(hidden, weight, targets):
    """log_softmax(h W)[y] and entropy with the whole [B, T, V] logits (the reference)."""
    log_probs = jax.nn.log_softmax(jnp.einsum("btd,dv->btv", hidden, weight), axis=-1)
    logp = jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
    return logp, -jnp.sum(jnp.exp(log_probs) * log_probs, axis=-1)


def numpy_logprobs(hidden, weight, targets):
    """float64 numpy reference of (logp, entropy)."""
    logits = np.asarray(hidden, np.float64) @ np.asarray(weight, np.float64)
    logits -= logits.max(-1, keepdims=True)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    logp = np.take_along_axis(log_probs, np.asarray(targets)[..., None], -1)[..., 0]
    return logp, -(np.exp(log_probs) * log_probs).sum(-1)


def random_problem(seed, batch, length, dim, vocab):
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    hidden = jax.random.normal(k1, (batch, length, dim))
    weight = jax.random.normal(k2, (dim, vocab)) / math.sqrt(dim) * 3
    return hidden, weight, jax.random.randint(k3, (batch, length), 0, vocab)


@pytest.mark.parametrize("chunk", [5, 64])  # 13 = 2 * 5 + 3 (a padded tail); one chunk > T
def test_chunked_logprobs_equal_reference(chunk):
    hidden, weight, targets = random_problem(0, 2, 13, 8, 32)
    logp, entropy = jax.jit(token_logprobs, static_argnums=3)(hidden, weight, targets, chunk)
    ref_logp, ref_entropy = numpy_logprobs(hidden, weight, targets)
    assert logp.shape == entropy.shape == (2, 13)
    np.testing.assert_allclose(logp, ref_logp, rtol=0, atol=1e-5)
    np.testing.assert_allclose(entropy, ref_entropy, rtol=0, atol=1e-5)


def test_chunked_logprob_gradients_equal_naive():
    hidden, weight, targets = random_problem(1, 2, 13, 8, 32)
    coef = jax.random.normal(jax.random.key(2), (2, 2, 13))

    def objective(fn):
        return lambda h, w: jnp.sum(coef[0] * fn(h, w, targets)[0] + coef[1] * fn(h, w, targets)[1])

    chunked = jax.grad(objective(functools.partial(token_logprobs, chunk_size=5)), (0, 1))
    naive = jax.grad(objective(naive_logprobs), (0, 1))
    for got, want in zip(jax.jit(chunked)(hidden, weight), jax.jit(naive)(hidden, weight)):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_chunked_logprobs_use_several_times_less_memory():
    """XLA's temporary buffers: the naive [B, T, V] float32 logits vs one [B, C, V] chunk."""
    shapes = (jax.ShapeDtypeStruct((2, 512, 32), jnp.float32),
              jax.ShapeDtypeStruct((32, 8192), jnp.float32),
              jax.ShapeDtypeStruct((2, 512), jnp.int32))
    chunked = functools.partial(token_logprobs, chunk_size=64)

    def temp_bytes(fn):
        return jax.jit(fn).lower(*shapes).compile().memory_analysis().temp_size_in_bytes

    def value(fn):
        return lambda h, w, y: fn(h, w, y)

    def grad_hidden(fn):
        return jax.grad(lambda h, w, y: sum(jnp.sum(x) for x in fn(h, w, y)))

    for wrap in (value, grad_hidden):
        naive_bytes, chunked_bytes = temp_bytes(wrap(naive_logprobs)), temp_bytes(wrap(chunked))
        assert naive_bytes >= 2 * 512 * 8192 * 4  # the reference does hold the whole logits
        assert chunked_bytes * 4 < naive_bytes, (wrap.__name__, chunked_bytes, naive_bytes)


def model_inputs(seed=0, vocab=CONFIG.vocab_size):
    """tokens [B,T], positions [B,T], mask [B,T] with row 1 left-padded by 3."""
    tokens = jax.random.randint(jax.random.key(seed), (B, T), 0, vocab)
    mask = jnp.ones((B, T), bool).at[1, :3].set(False)
    positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)
    return tokens, positions, mask


@pytest.fixture(scope="module")
def params():
    """Random tiny-model params (far from the 0.02 init: attention is not uniform)."""
    return jax.tree.map(jnp.asarray, random_rlr_params(CONFIG))


@functools.lru_cache(maxsize=None)
def run(config):
    """jitted params -> (hidden [B,T,D], logp [B,T-1], entropy [B,T-1]) on model_inputs()."""
    model = Transformer(config)
    tokens, positions, mask = model_inputs()

    @jax.jit
    def fn(params):
        hidden, _ = model.apply({"params": params}, tokens, positions, mask)
        return (hidden, *next_token_logprobs(model, params, tokens, positions, mask, chunk_size=5))

    return fn


def test_next_token_logprobs_equal_reference(params):
    tokens, _, _ = model_inputs()
    hidden, logp, entropy = run(CONFIG)(params)
    ref_logp, ref_entropy = numpy_logprobs(hidden[:, :-1], lm_head_weight(params, CONFIG),
                                           tokens[:, 1:])
    assert np.std(ref_logp) > 0.5  # the logits are far from uniform
    np.testing.assert_allclose(logp, ref_logp, rtol=0, atol=1e-5)
    np.testing.assert_allclose(entropy, ref_entropy, rtol=0, atol=1e-5)


def test_cached_attention_equals_a_float64_reference():
    """cached_attention on the cache layout [B, KVH, S, Dh] with grouped queries: per query head
    n (key / value head n // G), softmax over the allowed keys of q.k / sqrt(Dh), times v."""
    rng = np.random.default_rng(0)
    batch, length, slots, heads, kv_heads, head_dim = 2, 3, 7, 6, 2, 8
    q = rng.normal(size=(batch, length, heads, head_dim))
    k, v = (rng.normal(size=(batch, kv_heads, slots, head_dim)) for _ in range(2))
    mask = rng.random((batch, 1, length, slots)) < 0.6
    mask[..., 0] = True  # every query sees a key
    got = cached_attention(*(jnp.asarray(x, jnp.float32) for x in (q, k, v)), jnp.asarray(mask))
    want = np.zeros_like(q)
    for b, t, n in np.ndindex(batch, length, heads):
        kv = n // (heads // kv_heads)
        logits = k[b, kv] @ q[b, t, n] / np.sqrt(head_dim)
        logits = np.where(mask[b, 0, t], logits, -np.inf)
        probs = np.exp(logits - logits.max())
        want[b, t, n] = probs / probs.sum() @ v[b, kv]
    np.testing.assert_allclose(np.asarray(got), want, rtol=0, atol=1e-6)


def test_kv_cache_prefill_and_decode_equal_full_forward(params):
    """Prefill 8 slots, decode 4 one at a time: the hidden states of the full forward."""
    model = Transformer(CONFIG)
    tokens, positions, mask = model_inputs()
    full = run(CONFIG)(params)[0]

    @jax.jit
    def step(p, tok, pos, cache, index):
        return model.apply({"params": p}, tok, pos, mask, cache=cache, cache_index=index)

    prefill, cache = step(params, tokens[:, :8], positions[:, :8], init_cache(CONFIG, B, T), 0)
    outs = [prefill]
    for t in range(8, T):
        out, cache = step(params, tokens[:, t:t + 1], positions[:, t:t + 1], cache, t)
        outs.append(out)
    assert cache.k.shape == (CONFIG.num_layers, B, CONFIG.num_kv_heads, T, CONFIG.head_dim)
    valid = np.asarray(mask)
    np.testing.assert_allclose(np.asarray(jnp.concatenate(outs, 1))[valid], np.asarray(full)[valid],
                               rtol=0, atol=1e-5)


def loss_and_grads(config, params):
    """A loss that reaches every parameter: sum(hidden * c) + mean of one LM log-prob."""
    model = Transformer(config)
    tokens, positions, mask = model_inputs()
    coef = jax.random.normal(jax.random.key(3), (B, T, config.hidden_size))

    def loss(p):
        hidden, _ = model.apply({"params": p}, tokens, positions, mask)
        logits = hidden[:, -1] @ lm_head_weight(p, config)
        return jnp.mean(hidden * coef) + jnp.mean(jax.nn.log_softmax(logits)[:, 0])

    return jax.jit(jax.value_and_grad(loss))(params)


def test_remat_policies_give_the_same_loss_and_gradients(params):
    loss, grads = loss_and_grads(CONFIG, params)
    assert float(jnp.sum(jnp.abs(grads["layers"]["attn"]["q_proj"]["kernel"]))) > 0
    for remat in ("full", "dots"):
        loss_r, grads_r = loss_and_grads(CONFIG.replace(remat=remat), params)
        np.testing.assert_allclose(loss_r, loss, rtol=1e-6)
        for got, want in zip(jax.tree.leaves(grads_r), jax.tree.leaves(grads)):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_bf16_compute_is_close_to_f32(params):
    out32, logp32, _ = run(CONFIG)(params)
    out16, logp16, _ = run(CONFIG.replace(dtype=jnp.bfloat16))(params)
    assert out16.dtype == jnp.bfloat16 and out32.dtype == jnp.float32
    assert logp16.dtype == jnp.float32
    err = np.abs(np.asarray(out16, np.float32) - np.asarray(out32))
    scale = np.abs(np.asarray(out32)).max()
    assert err.max() < 0.05 * scale, (err.max(), scale)
    np.testing.assert_allclose(logp16, logp32, rtol=0.05, atol=0.1)


def test_unrolled_model_on_unstacked_params_equals_the_scanned_model(params):
    """Transformer(scan_layers=False) on unstack_layers(params): the tree the unrolled model
    itself initialises (layer_0 .. layer_{L-1}, leaves without the layers axis), each layer the
    slice of the stacked arrays, and the scanned model's hidden states and KV cache (the unrolled
    model's per-layer cache, unstack_cache, holds the stacked one's layers)."""
    unrolled = Transformer(CONFIG, scan_layers=False)
    tokens, positions, mask = model_inputs()
    unstacked = unstack_layers(params, jnp.float32)
    own = nn.unbox(jax.eval_shape(lambda: unrolled.init(jax.random.key(0), tokens, positions,
                                                        mask)))
    assert (jax.tree.map(lambda x: x.shape, own["params"])
            == jax.tree.map(lambda x: x.shape, unstacked))
    np.testing.assert_array_equal(unstacked["layer_1"]["mlp"]["up_proj"]["kernel"],
                                  params["layers"]["mlp"]["up_proj"]["kernel"][1])
    assert unstack_layers(params, jnp.bfloat16)["layer_0"]["attn"]["q_proj"]["bias"].dtype == (
        jnp.bfloat16)
    cache = init_cache(CONFIG, B, T)
    want, want_cache = Transformer(CONFIG).apply({"params": params}, tokens, positions, mask,
                                                 cache=cache, cache_index=0)
    got, got_cache = unrolled.apply({"params": unstacked}, tokens, positions, mask,
                                    cache=unstack_cache(cache), cache_index=0)
    assert len(got_cache.k) == CONFIG.num_layers
    assert got_cache.k[0].shape == (B, CONFIG.num_kv_heads, T, CONFIG.head_dim)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=0, atol=1e-5)
    for per_layer, stacked in zip(got_cache, want_cache):  # float32 rounding apart
        np.testing.assert_allclose(np.stack(per_layer), np.asarray(stacked), rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match=r"scan_layers=False\) takes a per-layer KVCache"):
        unrolled.apply({"params": unstacked}, tokens, positions, mask, cache=cache,
                       cache_index=0)


def test_attention_config_errors():
    with pytest.raises(ValueError, match=r"attention='flash': expected one of \('xla', 'cudnn'\)"):
        CONFIG.replace(attention="flash")
    with pytest.raises(ValueError, match="attention='cudnn' needs dtype bfloat16 or float16.*float32"):
        CONFIG.replace(attention="cudnn")
    assert CONFIG.replace(attention="cudnn", dtype=jnp.bfloat16).attention == "cudnn"


def test_pack_valid_tokens_moves_each_rows_valid_tokens_to_its_front():
    mask = jnp.array([[0, 0, 1, 1, 1],   # left padding (a prompt)
                      [1, 1, 0, 1, 0],   # a hole and right padding
                      [1, 1, 1, 1, 1],
                      [0, 0, 0, 0, 0]], bool)
    order, lengths = pack_valid_tokens(mask)
    np.testing.assert_array_equal(order, [[2, 3, 4, 0, 1], [0, 1, 3, 2, 4], [0, 1, 2, 3, 4],
                                          [0, 1, 2, 3, 4]])
    np.testing.assert_array_equal(lengths, [3, 3, 5, 0])


def test_cudnn_attention_path_equals_the_mask_path_on_valid_positions(params, cudnn_on_cpu):
    """attention='cudnn' packs each row's valid tokens to its front and calls the fused kernel
    with is_causal and key/value lengths. With XLA's kernel standing in for cuDNN's (this is a
    CPU), the hidden states, critic scores and gradients of a masked loss equal the mask path's
    at every valid position, on a (data 2, fsdp 2, tensor 2) mesh, for left padding, right
    padding and a hole; the KV-cache path keeps the mask."""
    calls = cudnn_on_cpu
    rows, length = 4, 12
    tokens = jax.random.randint(jax.random.key(5), (rows, length), 0, CONFIG.vocab_size)
    mask = np.ones((rows, length), bool)
    mask[1, :3] = False  # a left-padded prompt
    mask[2, 9:] = False  # right padding
    mask[3, 4] = mask[3, 10:] = False  # a hole (a masked token mid-row) and right padding
    positions = jnp.asarray(np.maximum(np.cumsum(mask, axis=1) - 1, 0), jnp.int32)
    coef = jax.random.normal(jax.random.key(6), (rows, length, CONFIG.hidden_size))
    mesh = make_mesh(data=2, fsdp=2, tensor=2)
    batch = shard_batch((tokens, positions, jnp.asarray(mask)), mesh)

    def outputs(attention):
        config = CONFIG.replace(dtype=jnp.bfloat16, attention=attention)
        lm, critic = Transformer(config), Transformer(config, head="score")
        critic_params = {k: v for k, v in params.items() if k != "lm_head"}
        critic_params["score_head"] = {"kernel": coef[0, 0], "bias": jnp.ones(())}

        def loss(p, tokens, positions, mask):
            hidden, _ = lm.apply({"params": p}, tokens, positions, mask)
            logp, _ = token_logprobs(hidden[:, :-1], lm_head_weight(p, config), tokens[:, 1:])
            valid = mask[:, 1:] & mask[:, :-1]
            hidden32 = hidden.astype(jnp.float32)
            value = (jnp.sum(jnp.where(mask[..., None], hidden32 * coef, 0))
                     + jnp.sum(jnp.where(valid, logp, 0))) / jnp.sum(mask)
            return value, hidden32

        def run(p, tokens, positions, mask):
            (value, hidden), grads = jax.value_and_grad(loss, has_aux=True)(
                p, tokens, positions, mask)
            scores, _ = critic.apply({"params": critic_params}, tokens, positions, mask)
            return value, hidden, grads, scores

        with jax.set_mesh(mesh), nn.logical_axis_rules(DEFAULT_RULES):
            return jax.jit(run)(params, *batch)

    calls.clear()
    value, hidden, grads, scores = outputs("xla")
    assert calls and all(c == (None, False) for c in calls)
    calls.clear()
    value_c, hidden_c, grads_c, scores_c = outputs("cudnn")
    assert calls and all(c == ("cudnn", True) for c in calls)

    scale = float(np.abs(np.asarray(hidden)[mask]).max())
    # Each valid row does the same arithmetic in both paths (masked keys add exact zeros): equal
    # up to summation order, far below one bfloat16 step (2^-8 relative).
    assert np.abs(np.asarray(hidden_c)[mask] - np.asarray(hidden)[mask]).max() < 1e-3 * scale
    assert np.abs(np.asarray(scores_c)[mask] - np.asarray(scores)[mask]).max() < 1e-3 * float(
        np.abs(np.asarray(scores)[mask]).max())
    np.testing.assert_allclose(value_c, value, rtol=1e-4)
    for got, want in zip(jax.tree.leaves(grads_c), jax.tree.leaves(grads)):
        got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
        assert np.linalg.norm(got - want) < 1e-3 * np.linalg.norm(want)

    # Sampling (a KV cache) uses the masked cached_attention whatever the config says.
    calls.clear()
    config = CONFIG.replace(dtype=jnp.bfloat16, attention="cudnn")
    Transformer(config).apply({"params": params}, tokens[:, :4], positions[:, :4],
                              jnp.asarray(mask), cache=init_cache(config, rows, length),
                              cache_index=0)
    assert not calls


def test_float64_compute_keeps_float64_in_rope_and_rmsnorm():
    """RoPE and RMSNorm compute in float32 *or wider*: a float64 model (a parity reference) must
    not round its activations to float32 there. x = 1 + 1e-10 survives float64 and not float32."""
    from rlr.models.decoder import RMSNorm, apply_rope, rope_inverse_frequencies

    with jax.enable_x64(True):
        x = 1.0 + 1e-10 * np.arange(1, 2 * 3 * 16 + 1, dtype=np.float64).reshape(1, 2, 3, 16)
        at_zero = apply_rope(jnp.asarray(x), jnp.zeros((1, 2), jnp.int32),
                             rope_inverse_frequencies(16, 1e4))  # angle 0: the identity
        assert at_zero.dtype == jnp.float64
        np.testing.assert_array_equal(np.asarray(at_zero), x)
        config = CONFIG.replace(dtype=jnp.float64, param_dtype=jnp.float64, rms_norm_eps=1e-6)
        norm = RMSNorm(config)
        rows = jnp.asarray(x.reshape(6, 16))
        got = norm.apply(norm.init(jax.random.key(0), rows), rows)
        want = x.reshape(6, 16) / np.sqrt((x.reshape(6, 16) ** 2).mean(-1, keepdims=True) + 1e-6)
        assert got.dtype == jnp.float64
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-14, atol=0)

PUBLISHED_SIZES = {  # total parameters from the model cards (embeddings included)
    "qwen2.5-0.5b": 0.494e9, "qwen2.5-1.5b": 1.54e9, "qwen2.5-math-1.5b": 1.54e9,
    "qwen2.5-7b": 7.61e9, "llama-3.2-1b": 1.24e9, "smollm2-135m": 0.135e9,
}


@pytest.mark.parametrize("name", sorted(NAMED_CONFIGS))
def test_named_config_builds_with_its_parameter_count(name):
    config = NAMED_CONFIGS[name]
    tokens = jax.ShapeDtypeStruct((1, 4), jnp.int32)
    mask = jax.ShapeDtypeStruct((1, 4), jnp.bool_)
    shapes = jax.eval_shape(lambda t, m: Transformer(config).init(jax.random.key(0), t, t, m),
                            tokens, mask)
    count = sum(math.prod(x.shape) for x in jax.tree.leaves(shapes))
    assert count == config.num_params()
    if name in PUBLISHED_SIZES:
        assert abs(count / PUBLISHED_SIZES[name] - 1) < 0.02, count
    assert ("lm_head" in shapes["params"]) != config.tie_embeddings
