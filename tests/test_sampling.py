"""Tests of rlr.sampling: greedy parity with Hugging Face `generate`, log-probs equal to teacher
forcing, sampling statistics of the filters, stops, bucketing (one compilation a bucket), and the
8-device mesh equal to one device.

One tiny random Qwen2 (tests/hf_fixtures.py, float32) imported into rlr serves every model test;
shapes are fixed (B=4 prompts, R=10 new tokens) and the Samplers are cached, so the module
compiles four generation functions in all (greedy, greedy with stops, filtered sampling on one
device and on the 2x2x2 mesh).
"""
import dataclasses
import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import hf_fixtures as F
from rlr.models import Transformer, from_hf_config, next_token_logprobs, lm_head_weight
from rlr.models.hf_io import params_from_hf_state_dict
from rlr.parallel import BATCH_AXES, make_mesh, param_shardings
from rlr.sampling import (Sampler, SamplingConfig, bucket_length, categorical, check_prompts,
                          filter_logits, sample_tokens, top_k_filter, top_p_filter)
from rlr.sampling import stops

B, PROMPT, R = 4, 9, 10
V = F.TINY["vocab_size"]
PAD = 0
GREEDY = SamplingConfig(temperature=0.0, max_new_tokens=R, pad_id=PAD)
SAMPLED = SamplingConfig(temperature=0.7, top_k=12, top_p=0.8, max_new_tokens=R, num_samples=2,
                         eos_ids=(3,), pad_id=PAD)
TOL = 1e-4


@functools.lru_cache(maxsize=None)
def hf_and_rlr():
    """(torch model, rlr Transformer, rlr params) of one tiny random Qwen2."""
    hf = F.make_hf_model("qwen2", seed=0)
    config = from_hf_config(hf.config.to_dict())
    tensors = {k: v.numpy() for k, v in hf.state_dict().items()}
    params = jax.tree.map(jnp.asarray, params_from_hf_state_dict(tensors, config))
    return hf, Transformer(config), params


@functools.lru_cache(maxsize=None)
def sampler(config: SamplingConfig, mesh_shape=None) -> Sampler:
    _, model, _ = hf_and_rlr()
    mesh = None if mesh_shape is None else make_mesh(*mesh_shape)
    return Sampler(model, config, mesh)


def prompts(seed, length=PROMPT, pads=(0, 3, 1, 5)):
    tokens, mask, _ = F.padded_batch(seed, B, length, V, pads)
    return np.where(mask, tokens, PAD), mask


def hf_generate(tokens, mask, eos_id=None):
    """HF greedy tokens [B, <=R] and log-softmax of its raw logits [B, <=R, V] (float64)."""
    hf, _, _ = hf_and_rlr()
    with torch.no_grad():
        out = hf.generate(input_ids=torch.as_tensor(tokens, dtype=torch.long),
                          attention_mask=torch.as_tensor(mask, dtype=torch.long),
                          do_sample=False, max_new_tokens=R, pad_token_id=PAD,
                          eos_token_id=eos_id, output_logits=True, return_dict_in_generate=True)
    logits = torch.stack(out.logits, dim=1).double().numpy()
    return out.sequences[:, tokens.shape[1]:].numpy(), scipy.special.log_softmax(logits, axis=-1)


@functools.lru_cache(maxsize=None)
def greedy_rollout():
    _, _, params = hf_and_rlr()
    tokens, mask = prompts(0)
    return jax.tree.map(np.asarray, sampler(GREEDY)(params, tokens, mask, jax.random.key(0)))


def test_greedy_matches_hf_generate_with_left_padding():
    rollout = greedy_rollout()
    expected, logp = hf_generate(*prompts(0))
    np.testing.assert_array_equal(rollout.response_tokens, expected)
    assert rollout.response_mask.all() and (rollout.lengths == R).all()
    hf_logp = np.take_along_axis(logp, expected[..., None], -1)[..., 0]
    np.testing.assert_allclose(rollout.logprobs, hf_logp, atol=TOL)
    # The prompts come back left-padded to the 16-slot bucket.
    assert rollout.prompt_tokens.shape == (B, 16) and not rollout.prompt_mask[:, :16 - PROMPT].any()


def test_prompts_of_another_length_in_the_same_bucket_reuse_the_compilation():
    _, _, params = hf_and_rlr()
    greedy_rollout()
    compiled = sampler(GREEDY).trace_count
    tokens, mask = prompts(1, length=13, pads=(2, 0, 7, 12))
    rollout = sampler(GREEDY)(params, tokens, mask, jax.random.key(0))
    assert sampler(GREEDY).trace_count == compiled == 1
    np.testing.assert_array_equal(np.asarray(rollout.response_tokens), hf_generate(tokens, mask)[0])


def expected_stop_ends(greedy_tokens, eos_ids, stop_sequences):
    """Index of each row's last response token when greedy decoding stops (R-1 if it does not)."""
    ends = []
    for row in greedy_tokens.tolist():
        end = R - 1
        for t in range(R):
            if row[t] in eos_ids or any(tuple(row[t + 1 - len(s):t + 1]) == s
                                        for s in stop_sequences if t + 1 >= len(s)):
                end = t
                break
        ends.append(end)
    return np.asarray(ends)


def test_rows_stop_at_eos_or_stop_sequence_and_the_rest_go_on():
    _, _, params = hf_and_rlr()
    greedy = greedy_rollout()
    g = greedy.response_tokens
    eos = int(g[0, 3])  # row 0 emits it at step 3 (or earlier)
    stop = (int(g[1, 5]), int(g[1, 6]))  # row 1 ends on these two at step 6 (or earlier)
    config = dataclasses.replace(GREEDY, eos_ids=(V + 7, eos),
                                 stop_sequences=((V + 1, V + 2, V + 3), stop))
    ends = expected_stop_ends(g, {eos}, [stop])
    assert ends[0] <= 3 and ends[1] <= 6 and (ends == R - 1).any(), ends  # the case is non-trivial
    rollout = jax.tree.map(np.asarray, sampler(config)(params, *prompts(0), jax.random.key(0)))
    within = np.arange(R)[None, :] <= ends[:, None]
    np.testing.assert_array_equal(rollout.response_mask, within)
    np.testing.assert_array_equal(rollout.response_tokens, np.where(within, g, PAD))
    np.testing.assert_allclose(rollout.logprobs, np.where(within, greedy.logprobs, 0.0), atol=1e-6)
    np.testing.assert_array_equal(rollout.lengths, ends + 1)
    # Hugging Face stops on the same EOS and pads the same way.
    hf_tokens, _ = hf_generate(*prompts(0), eos_id=eos)
    eos_ends = expected_stop_ends(g, {eos}, [])
    hf_expected = np.where(np.arange(R)[None, :] <= eos_ends[:, None], g, PAD)
    np.testing.assert_array_equal(hf_tokens, hf_expected[:, :hf_tokens.shape[1]])


@functools.lru_cache(maxsize=None)
def sampled_rollout(mesh_shape=None, seed=0):
    _, model, params = hf_and_rlr()
    if mesh_shape is not None:
        params = jax.device_put(params, param_shardings(model, make_mesh(*mesh_shape)))
    return sampler(SAMPLED, mesh_shape)(params, *prompts(0), jax.random.key(seed))


def nucleus_support(logits, temperature, top_k, top_p):
    """float64 numpy reference: bool [..., V], the tokens temperature -> top-k -> top-p keep."""
    scaled = logits / temperature
    order = np.argsort(-scaled, axis=-1, kind="stable")
    ranks = np.argsort(order, axis=-1)
    in_top_k = ranks < top_k if top_k else np.ones(scaled.shape, bool)
    kept = np.where(in_top_k, scaled, -np.inf)
    probs = scipy.special.softmax(kept, axis=-1)
    sorted_probs = np.take_along_axis(probs, order, axis=-1)
    mass_before = np.cumsum(sorted_probs, axis=-1) - sorted_probs
    keep_sorted = (mass_before < top_p) & np.take_along_axis(in_top_k, order, axis=-1)
    keep_sorted[..., 0] = True
    return np.take_along_axis(keep_sorted, ranks, axis=-1)


def test_sampled_logprobs_equal_teacher_forcing_and_tokens_lie_in_the_filtered_support():
    _, model, params = hf_and_rlr()
    r = jax.tree.map(np.asarray, sampled_rollout())
    n = SAMPLED.num_samples
    assert r.response_tokens.shape == (B * n, R) and r.prompt_tokens.shape == (B * n, 16)
    np.testing.assert_array_equal(r.prompt_tokens[::n], r.prompt_tokens[1::n])  # rows contiguous
    assert (r.response_tokens[::n] != r.response_tokens[1::n]).any()  # samples differ

    tokens = np.concatenate([r.prompt_tokens, r.response_tokens], 1)
    mask = np.concatenate([r.prompt_mask, r.response_mask], 1)
    positions = np.maximum(np.cumsum(mask, 1) - 1, 0).astype(np.int32)
    forced, _ = jax.jit(functools.partial(next_token_logprobs, model))(params, tokens, positions,
                                                                     mask)
    forced = np.asarray(forced)[:, 16 - 1:]  # log p(response token t) at positions P-1+t
    np.testing.assert_allclose(np.where(r.response_mask, forced, 0.0), r.logprobs, atol=TOL)

    hidden, _ = jax.jit(model.apply)({"params": params}, tokens, positions, mask)
    logits = np.asarray(hidden @ lm_head_weight(params, model.config), np.float64)[:, 16 - 1:-1]
    support = nucleus_support(logits, SAMPLED.temperature, SAMPLED.top_k, SAMPLED.top_p)
    chosen = np.take_along_axis(support, r.response_tokens[..., None], -1)[..., 0]
    assert chosen[r.response_mask].all()
    assert support.sum(-1).max() > 1  # the filters leave a choice, so the check has teeth

    # Masks: a prefix per row; a row shorter than R ends on its EOS; pad after.
    assert (np.diff(r.response_mask.astype(int), axis=1) <= 0).all()
    np.testing.assert_array_equal(r.lengths, r.response_mask.sum(1))
    short = r.lengths < R
    assert (r.response_tokens[short, r.lengths[short] - 1] == SAMPLED.eos_ids[0]).all()
    assert (r.response_tokens[~r.response_mask] == PAD).all()


def test_same_key_same_rollout_other_key_other_rollout():
    _, _, params = hf_and_rlr()
    first = sampled_rollout()
    again = sampler(SAMPLED)(params, *prompts(0), jax.random.key(0))
    np.testing.assert_array_equal(np.asarray(first.response_tokens),
                                  np.asarray(again.response_tokens))
    other = sampled_rollout(seed=1)
    assert (np.asarray(first.response_tokens) != np.asarray(other.response_tokens)).any()
    assert sampler(SAMPLED).trace_count == 1


def test_mesh_2x2x2_equals_one_device():
    one = sampled_rollout()
    eight = sampled_rollout(mesh_shape=(2, 2, 2))
    assert eight.response_tokens.sharding.spec[0] == BATCH_AXES
    assert len(eight.response_tokens.sharding.device_set) == 8
    for a, b in zip(one, eight):
        if a.dtype == jnp.float32:
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
        else:
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_unstacked_decode_equals_the_scanned_model_and_unrolls_the_layers():
    """SamplingConfig.unstack_layers (the default) runs the token loop on per-layer weights: the
    same rollout as the scanned model sliced every token, and no scan over layers left inside
    the token loop (the scanned variant has one)."""
    _, model, params = hf_and_rlr()
    scanned_config = dataclasses.replace(SAMPLED, unstack_layers=False)
    unstacked, scanned = sampled_rollout(), sampler(scanned_config)(params, *prompts(0),
                                                                    jax.random.key(0))
    for a, b in zip(unstacked, scanned):  # the same arithmetic, fused differently: 1e-7 apart
        if a.dtype == jnp.float32:
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-5)
        else:
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    def scans_in_token_loop(config):
        from jax.extend.core import jaxprs_in_params

        from rlr.sampling.generate import generate

        tokens, mask = prompts(0)
        jaxpr = jax.make_jaxpr(lambda p: generate(model, p, tokens, mask, jax.random.key(0),
                                                  config))(params)
        loop = next(e for e in jaxpr.jaxpr.eqns if e.primitive.name == "while")
        body = loop.params["body_jaxpr"].jaxpr
        return sum(str(e.primitive) == "scan" for e in body.eqns) + sum(
            "scan" in str(sub) for e in body.eqns for sub in jaxprs_in_params(e.params))

    assert scans_in_token_loop(SAMPLED) == 0
    assert scans_in_token_loop(scanned_config) > 0


@pytest.mark.parametrize("base,chunk", [(GREEDY, 8), (dataclasses.replace(SAMPLED, unstack_layers=False), 4)])
def test_chunked_prefill_gives_the_one_pass_rollout(base, chunk):
    """SamplingConfig.prefill_chunk: the 16-slot bucket prefilled in 16 / chunk passes (the first
    chunk all padding in some rows), on the per-layer and on the stacked cache, gives the
    rollout of one pass (greedy: the HF-checked one), float32 rounding of the smaller matmuls
    (1e-6) the only difference."""
    _, model, params = hf_and_rlr()
    tokens, mask = prompts(0)
    chunked_config = dataclasses.replace(base, prefill_chunk=chunk)
    whole = sampler(base)(params, tokens, mask, jax.random.key(0))
    chunked = sampler(chunked_config)(params, tokens, mask, jax.random.key(0))
    for a, b in zip(whole, chunked):
        if a.dtype == jnp.float32:
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-5)
        else:
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    bucketed = sampler(base).prepare(tokens, mask)

    def scan_lengths(config):  # of the scans at the program's top level
        from rlr.sampling.generate import generate

        jaxpr = jax.make_jaxpr(lambda p: generate(model, p, *bucketed, jax.random.key(0),
                                                  config))(params)
        return [e.params["length"] for e in jaxpr.jaxpr.eqns if e.primitive.name == "scan"]

    # The chunks' loop (the scanned model's prefill scans its 2 layers inside it).
    assert 16 // chunk in scan_lengths(chunked_config) and 16 // chunk not in scan_lengths(base)


@pytest.mark.parametrize("mesh_shape, unstack", [(None, True), (None, False), ((2, 2, 2), False)])
def test_decode_writes_the_cache_in_place(mesh_shape, unstack):
    """Each decode step writes its keys / values into the carried cache and attends to them
    there: the compiled sampler copies no array of a layer's cache shape [(L,) B', KVH', S, Dh]
    (KVCache's layout is the attention matmuls' operand layout), per-layer or stacked. The one
    exception: the per-layer loop with one KV head a device (here the 2 over tensor=2 of the
    (2, 2, 2) mesh), where XLA:CPU copies each layer's cache (DECODE_CACHE_COPIES in
    rlr.parallel.memory); the stacked loop does not."""
    _, model, params = hf_and_rlr()
    s = sampler(dataclasses.replace(GREEDY, unstack_layers=unstack), mesh_shape)
    tokens, mask = s.prepare(*prompts(0))
    hlo = s.lower(params, tokens, mask, jax.random.key(0)).compile().as_text()
    c, (data, fsdp, tensor) = model.config, mesh_shape or (1, 1, 1)
    shape = (f"({c.num_layers},)?{B // (data * fsdp)},{c.num_kv_heads // tensor},"
             f"{tokens.shape[1] + R},{c.head_dim}")
    assert re.search(rf"= f32\[{shape}\]\{{[0-9,]*\}} dynamic-update-slice\(", hlo)  # the write
    assert not re.findall(rf"= f32\[{shape}\]\{{[0-9,]*\}} copy\(", hlo)


# ---------------------------------------------------------------- filters and sampling statistics

STAT_LOGITS = np.log(np.array([0.3, 0.2, 0.15, 0.12, 0.1, 0.07, 0.04, 0.02]))
STAT_ROWS = 8000


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def draw(key, temperature, top_k, top_p):
    logits = jnp.broadcast_to(jnp.asarray(STAT_LOGITS, jnp.float32), (STAT_ROWS, 8))
    return sample_tokens(logits, key, temperature, top_k, top_p)


@pytest.mark.parametrize("temperature,top_k,top_p", [
    (1.0, 0, 1.0), (0.5, 0, 1.0), (1.5, 3, 1.0), (1.0, 0, 0.7), (0.8, 5, 0.6), (2.0, 4, 0.9)])
def test_empirical_frequencies_match_the_filtered_distribution(temperature, top_k, top_p):
    support = nucleus_support(STAT_LOGITS, temperature, top_k, top_p)
    target = np.where(support, np.exp(STAT_LOGITS / temperature), 0.0)
    target /= target.sum()
    counts = np.bincount(np.asarray(draw(jax.random.key(7), temperature, top_k, top_p)),
                         minlength=8)
    assert counts[~support].sum() == 0
    tv = 0.5 * np.abs(counts / STAT_ROWS - target).sum()
    assert tv < 0.03, (tv, counts / STAT_ROWS, target)  # expected TV about 0.01 at 8000 draws


SCATTERED = np.array([5, 100, 127, 128, 200, 255, 256, 299])  # blocks 0, 0, 0, 1, 1, 1, 2, 2


@pytest.mark.parametrize("rest", [np.log(0.1 / 292), -np.inf])
def test_categorical_over_vocabulary_blocks_matches_softmax(rest):
    """categorical's two-level draw over blocks of 128 logits, at V = 300 (the last block
    partial): 8 tokens spread over the three blocks carry 0.9 of the mass (all of it when the
    other 292 are -inf), the rest share 0.1. Frequencies of the 8 and of the rest as a bin."""
    vocab = 300
    logits = np.full(vocab, rest)
    logits[SCATTERED] = STAT_LOGITS + (np.log(0.9) if np.isfinite(rest) else 0.0)
    probs = scipy.special.softmax(logits)
    draws = np.asarray(jax.jit(categorical)(
        jax.random.key(3), jnp.broadcast_to(jnp.asarray(logits, jnp.float32), (STAT_ROWS, vocab))))
    assert draws.dtype == np.int32 and draws.min() >= 0 and draws.max() < vocab
    counts = np.bincount(draws, minlength=vocab)
    bins = np.append(counts[SCATTERED], STAT_ROWS - counts[SCATTERED].sum()) / STAT_ROWS
    target = np.append(probs[SCATTERED], 1 - probs[SCATTERED].sum())
    if not np.isfinite(rest):
        assert bins[-1] == 0
    tv = 0.5 * np.abs(bins - target).sum()
    assert tv < 0.03, (tv, bins, target)


@pytest.mark.parametrize("top_p", [0.3, 0.9, 0.99])
def test_top_p_bisection_keeps_the_sorted_nucleus_of_a_large_vocabulary(top_p):
    """top_p_filter's bisection over order keys against the sort-based float64 reference, on
    4 rows of 5,000 logits (negative and positive, one row of -inf holes), and a cut inside a
    group of tied logits keeps the whole group."""
    logits = np.random.default_rng(0).standard_normal((4, 5000)) * 3
    logits[1, ::3] = -np.inf
    x = jnp.asarray(logits, jnp.float32)
    support = nucleus_support(np.asarray(x, np.float64), 1.0, 0, top_p)
    np.testing.assert_array_equal(np.isfinite(np.asarray(jax.jit(top_p_filter, static_argnums=1)(
        x, top_p))), support)
    # p = (e^2, e, e, e, 1) / 16.54: mass before the first 1 is 0.447 < 0.5, so 1 is the cut.
    tied = top_p_filter(jnp.asarray([[2.0, 1.0, 1.0, 1.0, 0.0]]), 0.5)
    np.testing.assert_array_equal(np.isfinite(np.asarray(tied)), [[True] * 4 + [False]])
    # p = (e, 1, 1, 1/e) / 5.09: 0.534 before the zeros < 0.6, so 0 is the cut; -0.0 ties +0.0.
    zeros = top_p_filter(jnp.asarray([[1.0, 0.0, -0.0, -1.0]]), 0.6)
    np.testing.assert_array_equal(np.isfinite(np.asarray(zeros)), [[True] * 3 + [False]])


@pytest.mark.parametrize("k", [1, 7, 50])
def test_top_k_over_the_best_blocks_equals_lax_top_k(k):
    """_top_k_values (TopK over block maxima, then over the best blocks' logits) returns
    lax.top_k's values exactly: random rows, rows of few distinct values (ties across blocks),
    -inf holes and a vocabulary that leaves the last block partial."""
    from rlr.sampling.filters import TOP_K_BLOCK, _top_k_values

    rng = np.random.default_rng(k)
    vocab = 61 * TOP_K_BLOCK + 5
    random_rows = rng.standard_normal((3, vocab)) * 3
    tied_rows = rng.integers(0, 4, (3, vocab)).astype(float)
    holes = np.where(rng.random((2, vocab)) < 0.9, -np.inf, rng.standard_normal((2, vocab)))
    x = jnp.asarray(np.concatenate([random_rows, tied_rows, holes]), jnp.float32)
    np.testing.assert_array_equal(np.asarray(jax.jit(_top_k_values, static_argnums=1)(x, k)),
                                  np.asarray(jax.lax.top_k(x, k)[0]))


def test_filters_compile_to_xla_top_k_or_bisection_not_a_sort_of_the_vocabulary():
    """top_k_filter and filter_logits read the k-th largest logit without slicing TopK's output
    (XLA turns a slice of it into a full sort, 100x slower at V = 151,936 on CPU); top-p alone
    sorts nothing either."""
    x = jnp.zeros((4, 4096))
    for fn in (lambda x: top_k_filter(x, 50), lambda x: filter_logits(x, 1.0, 50),
               lambda x: filter_logits(x, 1.0, 50, 0.9)):
        hlo = jax.jit(fn).lower(x).compile().as_text()
        assert '"TopK"' in hlo and " sort(" not in hlo
    assert " sort(" not in jax.jit(lambda x: filter_logits(x, 1.0, 0, 0.9)).lower(
        x).compile().as_text()


def test_greedy_is_argmax_of_the_raw_logits():
    logits = jnp.asarray([[0.1, 2.0, -1.0], [3.0, 3.0, 0.0]])
    np.testing.assert_array_equal(sample_tokens(logits, jax.random.key(0), 0.0, top_k=1), [1, 0])


# Logits at least 0.01 apart: filters keep every token tied at their cut (documented).
logits_st = st.lists(st.integers(-400, 400), min_size=10, max_size=10, unique=True).map(
    lambda xs: [x / 100 for x in xs])


@settings(max_examples=30, deadline=None)
@given(rows=st.lists(logits_st, min_size=3, max_size=3), top_k=st.integers(0, 10),
       top_p=st.floats(0.05, 1.0), temperature=st.floats(0.3, 3.0))
def test_filters_keep_the_reference_support(rows, top_k, top_p, temperature):
    logits = np.asarray(rows, np.float64)
    # Skip cuts within float32 rounding of a cumulative mass.
    probs = np.sort(scipy.special.softmax(logits / temperature, -1), -1)[:, ::-1]
    assume(np.abs(np.cumsum(probs, -1) - top_p).min() > 1e-4)
    support = nucleus_support(logits, temperature, top_k, top_p)
    x = jnp.asarray(logits, jnp.float32)
    composed = filter_logits(x, temperature, top_k, top_p)
    np.testing.assert_array_equal(np.isfinite(np.asarray(composed)), support)
    step_by_step = top_p_filter(top_k_filter(x / temperature, top_k) if top_k else x / temperature,
                                top_p)
    np.testing.assert_array_equal(np.isfinite(np.asarray(step_by_step)), support)
    kept = np.asarray(composed)[support]
    np.testing.assert_allclose(kept, (logits / temperature)[support], rtol=1e-6)


def test_top_k_and_top_p_count_the_ties_at_the_k_th_logit():
    """top-k keeps every token tied with the k-th logit, so the nucleus counts them too: for
    x = (3, 2, 2, 1), k = 2, p = 0.7, top-k keeps 3, 2, 2 (probabilities 0.58, 0.21, 0.21) and 3
    alone is short of 0.7. (Until 2026-12-07 filter_logits took the nucleus over the k values
    alone, where 3 has 0.73, and kept only it.)"""
    x = jnp.asarray([[3.0, 2.0, 2.0, 1.0]])
    np.testing.assert_array_equal(filter_logits(x, 1.0, 2, 0.7), [[3.0, 2.0, 2.0, -np.inf]])
    halves = jnp.round(jax.random.normal(jax.random.key(0), (64, 1000)) * 4) / 2  # many ties
    for top_k, top_p in [(2, 0.5), (5, 0.7), (20, 0.9)]:
        np.testing.assert_array_equal(filter_logits(halves, 1.0, top_k, top_p),
                                      top_p_filter(top_k_filter(halves, top_k), top_p))


def test_filter_arguments_are_checked():
    x = jnp.zeros((1, 4))
    with pytest.raises(ValueError, match="top_k"):
        top_k_filter(x, 0)
    with pytest.raises(ValueError, match="top_p"):
        top_p_filter(x, 0.0)
    with pytest.raises(ValueError, match="temperature"):
        filter_logits(x, 0.0)


# ---------------------------------------------------------------- stops, buckets, configs

def test_stop_window_matches_only_whole_sequences_of_generated_tokens():
    window = stops.init_window(3, ((5,), (1, 2, 3)))
    assert window.shape == (3, 3)
    hits = []
    for column in ([1, 9, 1], [2, 2, 5], [3, 3, 2]):
        window = stops.push_window(window, jnp.asarray(column))
        hits.append(np.asarray(stops.ends_with_stop(window, ((5,), (1, 2, 3)))).tolist())
    assert hits == [[False, False, False], [False, False, True], [True, False, False]]
    np.testing.assert_array_equal(stops.is_eos(jnp.asarray([4, 7, 0]), (7, 0)), [False, True, True])
    assert not stops.is_eos(jnp.asarray([4]), ()).any()


def test_bucket_length():
    assert [bucket_length(n) for n in (1, 9, 16, 17, 100, 128, 129)] == [16, 16, 16, 32, 128, 128, 256]
    assert bucket_length(40, buckets=(64, 32, 256)) == 64
    with pytest.raises(ValueError, match="largest bucket 256"):
        bucket_length(300, buckets=(64, 256))


def test_bad_configs_and_prompts_raise_naming_the_field():
    for field, value in [("temperature", -1.0), ("top_k", -2), ("top_p", 0.0), ("top_p", 1.5),
                         ("max_new_tokens", 0), ("num_samples", 0), ("stop_sequences", ((),)),
                         ("eos_ids", (-1,)), ("prefill_chunk", -1)]:
        with pytest.raises(ValueError, match=f"SamplingConfig.{field}"):
            SamplingConfig(**{field: value})
    config = SamplingConfig(eos_ids=[2, 3], stop_sequences=[[1, 2]])
    assert config.eos_ids == (2, 3) and config.stop_sequences == ((1, 2),) and hash(config)
    ok = np.ones((2, 4), bool)
    with pytest.raises(ValueError, match="left padding"):
        check_prompts(np.zeros((2, 4), np.int32), ok & np.array([True, False, True, True]))
    with pytest.raises(ValueError, match="last slot"):
        check_prompts(np.zeros((2, 4), np.int32), ok & np.array([True, True, True, False]))
    with pytest.raises(ValueError, match="integer"):
        check_prompts(np.zeros((2, 4), np.float32), ok)
    _, model, params = hf_and_rlr()  # a chunk that does not divide the 16-slot bucket
    with pytest.raises(ValueError, match="SamplingConfig.prefill_chunk=6 must divide the prompt "
                                         "bucket length 16"):
        Sampler(model, SamplingConfig(prefill_chunk=6))(params, *prompts(0), jax.random.key(0))


def test_num_tokens_keeps_padding_ids_of_the_embedding_out_of_the_sample():
    """A model whose embedding is padded beyond the tokenizer (num_tokens < V) never samples an
    id >= num_tokens, even at temperature 1 from a random model; log-probs stay the unmasked
    policy's (equal to teacher forcing)."""
    _, model, params = hf_and_rlr()
    config = SamplingConfig(temperature=1.0, max_new_tokens=R, num_samples=2, pad_id=PAD,
                            num_tokens=5)
    rollout = sampler(config)(params, *prompts(0), jax.random.key(3))
    tokens, mask = np.asarray(rollout.response_tokens), np.asarray(rollout.response_mask)
    assert mask.all() and tokens.max() < 5 and len(np.unique(tokens)) > 1
    p = rollout.prompt_tokens.shape[1]
    seq = np.concatenate([rollout.prompt_tokens, tokens], 1)
    full_mask = np.concatenate([rollout.prompt_mask, mask], 1)
    positions = np.maximum(np.cumsum(full_mask, 1) - 1, 0).astype(np.int32)
    forced, _ = next_token_logprobs(model, params, seq, positions, full_mask, 16)
    np.testing.assert_allclose(np.asarray(rollout.logprobs), np.asarray(forced)[:, p - 1:], atol=TOL)
