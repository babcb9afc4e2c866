"""rlr.parallel.memory against what XLA and the sampler actually allocate.

The SFT train step (rlr.train.sft_step.train_step, clip + AdamW from rlr.train.optim) is lowered
from abstract (ShapeDtypeStruct) state and batch on meshes of the 8 simulated CPU devices and
compiled; its memory analysis gives per-device bytes. Params + optimizer state + batch must
equal the compiled argument bytes exactly; the estimated training total must be within 20% of
arguments + outputs + temporaries - aliased. The sampling estimate (estimate_memory(rollout=...))
is checked the same way against the compiled rlr.sampling.Sampler. float32 compute: XLA's CPU
backend keeps float32 copies of bfloat16 tensors, so a bfloat16 estimate is checked on a GPU
(benchmarks/train_step.py prints both), not here.
"""
import functools
import logging
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from rlr.models import Transformer, get_config
from rlr.parallel import DEFAULT_RULES, abstract_sharded_params, make_mesh
from rlr.parallel.memory import (MemoryEstimate, activation_bytes, device_memory_limit,
                                 estimate_memory, format_bytes, kv_cache_bytes, mesh_sizes,
                                 optimizer_state_bytes, param_bytes, saved_bytes_per_token,
                                 scoring_activation_bytes)
from rlr.parallel.mesh import abstract_params
from rlr.sampling.generate import Sampler, SamplingConfig, generate
from rlr.rewards.shaping import RewardSpec
from rlr.sampling import Rollout
from rlr.train import common, dpo_step, ppo_step, rm_step, sft_step
from rlr.train.ppo import score as jitted_scoring
from rlr.train.rollout_scoring import HostScores, Models, ScoringConfig
from rlr.train.optim import OptimConfig, make_optimizer
from rlr.train.state import abstract_train_state

# Small but not trivial: activations, weights and logits all count.
CONFIG = get_config("tiny", vocab_size=512, hidden_size=128, intermediate_size=384, num_layers=4,
                    num_heads=4, num_kv_heads=2, head_dim=32, dtype=jnp.float32)
STEP_AND_KEY_BYTES = 4 + 8  # TrainState.step (int32) and its threefry key (2 x uint32)


def rows_of(mesh, shape, dtype):
    """An abstract array whose rows are split over (data, fsdp)."""
    spec = P(("data", "fsdp"), *[None] * (len(shape) - 1))
    return jax.ShapeDtypeStruct(shape, dtype, sharding=NamedSharding(mesh, spec))


def mesh_of(mesh_shape):
    """A (data, fsdp, tensor) mesh on the first prod(mesh_shape) simulated devices."""
    return make_mesh(*mesh_shape, devices=jax.devices()[:int(np.prod(mesh_shape))])


def peak_bytes(analysis) -> int:
    """Arguments + outputs + temporaries - aliased bytes a device of a compiled program."""
    return (analysis.argument_size_in_bytes + analysis.output_size_in_bytes
            + analysis.temp_size_in_bytes - analysis.alias_size_in_bytes)


def compiled_step(step, config, mesh, batch, seq_len, chunk, prompt_len=32, minibatches=4,
                  critic_config=None, accum=1):
    """(XLA's memory analysis, optimizer) of the jitted, state-donating SFT step (batch rows of
    seq_len), DPO step (batch / 2 pairs), PPO update (policy and a critic of `critic_config`,
    default `config`; `minibatches` minibatches of `batch` rows) or ORM step (outcome BCE, score
    head) on `mesh`, in `accum` micro-batches; DPO, PPO and ORM rows are prompt_len + response
    tokens."""
    optim = OptimConfig(grad_accum_steps=accum)
    optimizer = make_optimizer(optim)
    policy_model = Transformer(config, head="score" if step == "rm" else "lm")
    policy_params = abstract_sharded_params(policy_model, mesh)
    policy = abstract_train_state(policy_params, optimizer, jax.random.key(1))
    response_len = seq_len - prompt_len
    if step == "sft":
        data = {name: rows_of(mesh, (batch, seq_len), dtype)
                for name, dtype in [("tokens", jnp.int32), ("positions", jnp.int32),
                                    ("attention_mask", bool), ("loss_mask", bool)]}
        fn = functools.partial(sft_step.train_step, model=policy_model, optimizer=optimizer,
                               chunk_size=chunk, grad_accum_steps=accum)
        args, donated = (policy, data), (0,)
    elif step == "rm":
        data = {"prompt_tokens": rows_of(mesh, (batch, prompt_len), jnp.int32),
                "prompt_mask": rows_of(mesh, (batch, prompt_len), bool),
                "response_tokens": rows_of(mesh, (batch, response_len), jnp.int32),
                "response_mask": rows_of(mesh, (batch, response_len), bool),
                "labels": rows_of(mesh, (batch,), jnp.float32),
                "row_mask": rows_of(mesh, (batch,), bool)}
        fn = functools.partial(rm_step.train_step, model=policy_model, optimizer=optimizer,
                               objective="outcome_bce", grad_accum_steps=accum)
        args, donated = (policy, data), (0,)
    elif step == "dpo":
        pairs = batch // 2
        data = dpo_step.PairBatch(*[rows_of(mesh, (pairs, n), dtype) for n in
                                    (prompt_len, response_len, response_len) for dtype in (jnp.int32, bool)],
                                  rows_of(mesh, (pairs,), bool))
        fn = functools.partial(dpo_step.train_step, model=policy_model, optimizer=optimizer,
                               config=dpo_step.PreferenceConfig(logprob_chunk=chunk),
                               grad_accum_steps=accum)
        args, donated = (policy, policy_params, data), (0,)
    else:
        critic_model = Transformer(critic_config or config, head="score")
        critic = abstract_train_state(abstract_sharded_params(critic_model, mesh), optimizer,
                                      jax.random.key(2))
        n = batch * minibatches
        data = ppo_step.PPOBatch(rows_of(mesh, (n, prompt_len), jnp.int32),
                                 rows_of(mesh, (n, prompt_len), bool),
                                 rows_of(mesh, (n, response_len), jnp.int32),
                                 rows_of(mesh, (n, response_len), bool),
                                 *[rows_of(mesh, (n, response_len), jnp.float32)] * 5)
        fn = functools.partial(ppo_step.ppo_update, policy_model=policy_model,
                               critic_model=critic_model, policy_optim=optim, critic_optim=optim,
                               config=ppo_step.UpdateConfig(num_minibatches=minibatches,
                                                            logprob_chunk=chunk), mesh=mesh)
        args, donated = (policy, critic, None, data, jax.random.key(3)), (0, 1)
    with jax.set_mesh(mesh), nn.logical_axis_rules(DEFAULT_RULES):
        compiled = jax.jit(fn, donate_argnums=donated).lower(*args).compile()
    return compiled.memory_analysis(), optimizer


def test_memory_analysis_does_not_depend_on_the_backend_optimisations():
    """The suite compiles with XLA's back-end (LLVM) optimisations off (conftest.py); the
    memory analysis every test here holds an estimate to is the same with them on: buffer
    assignment belongs to the HLO passes, which run either way."""
    def sizes(analysis):
        return (analysis.argument_size_in_bytes, analysis.output_size_in_bytes,
                analysis.temp_size_in_bytes, analysis.alias_size_in_bytes)

    def compiled_sizes():
        return sizes(compiled_step("dpo", CONFIG.replace(remat="full"), mesh_of((1, 4, 1)), 8, 128,
                                   chunk=64)[0])

    before = jax.config.read("jax_disable_most_optimizations")
    try:
        jax.config.update("jax_disable_most_optimizations", True)
        unoptimised = compiled_sizes()
        jax.config.update("jax_disable_most_optimizations", False)
        assert compiled_sizes() == unoptimised
    finally:
        jax.config.update("jax_disable_most_optimizations", before)


@pytest.mark.parametrize("remat,mesh_shape,batch", [
    ("none", (1, 1, 1), 4),   # one device, everything saved
    ("full", (1, 4, 1), 4),   # FSDP: params, moments and gradients split 4 ways
    ("dots", (2, 1, 2), 8),   # data x tensor: heads and MLP split over tensor
])
def test_estimate_matches_compiled_sft_step(remat, mesh_shape, batch):
    seq_len, chunk = 128, 64
    config = CONFIG.replace(remat=remat)
    analysis, optimizer = compiled_step("sft", config, mesh_of(mesh_shape), batch, seq_len, chunk)
    est = estimate_memory(config, mesh_shape, batch, seq_len, optimizer=optimizer,
                          chunk_size=chunk)
    # Exact: params, Adam moments (+ counts) and the batch are the program's arguments.
    assert analysis.argument_size_in_bytes == (est.params + est.optimizer_state
                                               + est.batch_inputs + STEP_AND_KEY_BYTES)
    # The named optimizer leaves out only the two int32 step counts (clip has none).
    named = estimate_memory(config, mesh_shape, batch, seq_len, chunk_size=chunk)
    assert est.optimizer_state - named.optimizer_state == 8
    measured = peak_bytes(analysis)
    assert abs(est.training - measured) / measured < 0.2, (est.summary(), measured)
    assert est.total == est.training  # no KV cache asked for


BIG = CONFIG.replace(hidden_size=384, intermediate_size=1536, num_layers=6, num_heads=6,
                     head_dim=64)  # a critic / reward model larger than the policy: ~5x its params


@pytest.mark.parametrize("step,remat,mesh_shape,batch,seq_len,critic", [
    ("dpo", "none", (1, 1, 1), 4, 128, None),   # the reference's forward beside the policy's pass
    ("dpo", "full", (1, 4, 1), 8, 128, None),
    ("ppo", "none", (1, 1, 1), 8, 256, None),   # policy and critic: one pass alive at a time
    ("ppo", "dots", (2, 1, 2), 8, 128, None),
    ("ppo", "none", (1, 2, 1), 8, 128, BIG),    # a critic of its own, larger shape
    ("rm", "none", (1, 1, 1), 8, 128, None),    # a score head: no LM head, no logits
    ("rm", "full", (1, 4, 1), 8, 128, None),
])
def test_estimate_matches_compiled_dpo_ppo_and_rm_steps(step, remat, mesh_shape, batch, seq_len,
                                                        critic):
    # The reward model's vocabulary is large enough that an LM head's params, Adam moments and
    # logits, counted by mistake, would make the estimate 1.9-2.5x the compiled step.
    config = CONFIG.replace(remat=remat, vocab_size=16384 if step == "rm" else CONFIG.vocab_size)
    critic = critic or (config if step == "ppo" else None)
    analysis, optimizer = compiled_step(step, config, mesh_of(mesh_shape), batch, seq_len, chunk=64,
                                        critic_config=critic)
    measured = peak_bytes(analysis)
    est = estimate_memory(config, mesh_shape, batch, seq_len, optimizer=optimizer, chunk_size=64,
                          references=int(step == "dpo"), critic=critic,
                          head="score" if step == "rm" else "lm")
    assert abs(est.training - measured) / measured < 0.2, (est.summary(), measured)


@pytest.mark.parametrize("step,remat,mesh_shape,batch,accum", [
    ("sft", "none", (1, 1, 1), 16, 4),   # one device: 4 rows a micro-batch
    ("dpo", "none", (1, 4, 1), 16, 2),   # FSDP: the float32 sum of the gradients split 4 ways
    ("ppo", "dots", (2, 1, 2), 16, 2),   # policy and critic, each in micro-batches
])
def test_gradient_accumulation_estimate_matches_compiled_and_saves_memory(step, remat, mesh_shape,
                                                                          batch, accum):
    """A step in `accum` micro-batches: the estimate (activations of batch / accum rows, plus the
    float32 sum of the gradients) within 20% of XLA's analysis, and the compiled step needs less
    memory than the one-pass step on the same batch by at least half of what the estimate says
    it saves."""
    config = CONFIG.replace(remat=remat)
    peaks, estimates = [], []
    for steps in (1, accum):
        analysis, optimizer = compiled_step(step, config, mesh_of(mesh_shape), batch, 128, chunk=64,
                                            accum=steps)
        peaks.append(peak_bytes(analysis))
        estimates.append(estimate_memory(
            config, mesh_shape, batch, 128, optimizer=optimizer, chunk_size=64,
            references=int(step == "dpo"), critic=config if step == "ppo" else None,
            grad_accum_steps=steps).training)
    assert abs(estimates[1] - peaks[1]) / peaks[1] < 0.2, (estimates, peaks)
    saved = estimates[0] - estimates[1]
    assert saved > 0 and peaks[0] - peaks[1] > saved / 2, (estimates, peaks)


@pytest.mark.parametrize("step,mesh_shape,tied", [("sft", (1, 4, 1), False),
                                                 ("dpo", (2, 2, 2), True)])
def test_estimate_counts_the_lm_head_gathered_over_fsdp(step, mesh_shape, tied):
    """A large vocabulary over fsdp: the step holds the LM head whole (LM_HEAD_GATHERS tables);
    without them the estimate read 0.77 (SFT) and 0.75 (DPO, tied) of the compiled peak."""
    config = CONFIG.replace(vocab_size=32768, tie_embeddings=tied)
    analysis, optimizer = compiled_step(step, config, mesh_of(mesh_shape), 8, 128, chunk=64)
    measured = peak_bytes(analysis)
    est = estimate_memory(config, mesh_shape, 8, 128, optimizer=optimizer, chunk_size=64,
                          references=int(step == "dpo"))
    assert abs(est.training - measured) / measured < 0.2, (est.summary(), measured)


def compiled_scoring_temporaries(config, mesh, rows, seq_len, slices, chunk, prompt_len=32,
                                 score_config=None):
    """XLA's temporaries (bytes a device) of PPO's jitted scoring (rlr.train.ppo.score) of
    `rows` rollout rows in `slices` row slices, with policy and reference of `config`, critic,
    ORM and PRM of `score_config` (default `config`)."""
    lm, score = Transformer(config), Transformer(score_config or config, head="score")
    params = {name: abstract_sharded_params(lm if name in ("policy", "ref") else score, mesh)
              for name in ("policy", "ref", "critic", "orm", "prm")}
    r = seq_len - prompt_len
    rollout = Rollout(rows_of(mesh, (rows, prompt_len), jnp.int32),
                      rows_of(mesh, (rows, prompt_len), bool), rows_of(mesh, (rows, r), jnp.int32),
                      rows_of(mesh, (rows, r), bool), rows_of(mesh, (rows, r), jnp.float32),
                      rows_of(mesh, (rows,), jnp.int32))
    host = HostScores(rows_of(mesh, (rows,), jnp.float32), rows_of(mesh, (rows, 8), jnp.int32),
                      rows_of(mesh, (rows, 8), bool))
    config = ScoringConfig(group_size=4, logprob_chunk=chunk, row_slices=slices)
    with jax.set_mesh(mesh), nn.logical_axis_rules(DEFAULT_RULES):
        compiled = jitted_scoring.lower(params, rollout, host, None,
                                        models=Models(lm, score, score, score),
                                        spec=RewardSpec(orm_weight=1.0, prm_weight=1.0),
                                        config=config).compile()
    return compiled.memory_analysis().temp_size_in_bytes


@pytest.mark.parametrize("mesh_shape,rows,slices,vocab,big", [
    ((1, 1, 1), 32, 1, 512, False),      # one layer's intermediates dominate
    ((1, 1, 1), 32, 4, 32768, False),    # the logits of one chunk dominate
    ((2, 2, 2), 64, 1, 32768, False),    # tensor: plus the embedding gathered for the lookup
    ((2, 2, 2), 64, 4, 512, False),
    ((1, 2, 1), 32, 1, 512, True),       # critic, ORM and PRM larger than the policy: theirs
    ((1, 1, 1), 32, 4, 32768, True),     # the policy's logits against their larger layers
])
def test_scoring_estimate_within_20_percent_of_compiled_scoring(mesh_shape, rows, slices, vocab,
                                                                 big):
    config, seq_len = CONFIG.replace(vocab_size=vocab), 256
    score_config = BIG.replace(vocab_size=vocab) if big else config
    measured = compiled_scoring_temporaries(config, mesh_of(mesh_shape), rows, seq_len, slices,
                                            chunk=64, score_config=score_config)
    estimate = estimate_memory(config, mesh_shape, critic=score_config,
                               reward_models=[score_config] * 2, scoring=(rows // slices, seq_len),
                               chunk_size=64).scoring_activations
    assert abs(estimate - measured) / measured < 0.2, (estimate, measured)
    if not big:
        assert estimate == scoring_activation_bytes(config, mesh_shape, rows // slices, seq_len, 64)


@pytest.mark.parametrize("changes,seq_len", [
    ({}, 256),                                                        # attention's scores
    ({"num_heads": 16, "head_dim": 32}, 256),                         # many heads: 4x the scores
    ({"intermediate_size": 2048}, 256),                               # the MLP's peak
    ({"hidden_size": 512, "intermediate_size": 512, "head_dim": 128}, 256),  # a wide stream
    ({}, 512),                                                        # long sequences
    ({"hidden_size": 384, "intermediate_size": 1536, "num_heads": 6, "head_dim": 64}, 128),
])
def test_forward_bytes_follow_the_layer_shape(changes, seq_len):
    """One layer's forward peak (forward_bytes_per_token) against the compiled scoring of score
    models of each shape beside a small policy: the attention or the MLP phase, whichever is
    larger. The former estimate, a fixed share (0.6) of the backward's saved bytes, read
    0.60-1.46x of these."""
    policy = CONFIG.replace(hidden_size=64, intermediate_size=128, num_heads=2, num_kv_heads=1)
    scorer = CONFIG.replace(**changes)
    measured = compiled_scoring_temporaries(policy, mesh_of((1, 1, 1)), 32, seq_len, 1, chunk=64,
                                            score_config=scorer)
    estimate = scoring_activation_bytes(scorer, (1, 1, 1), 32, seq_len, 64, head="score")
    assert abs(estimate - measured) / measured < 0.1, (estimate, measured)


def test_param_bytes_by_hand():
    # Unsharded: 4 bytes a parameter of the closed-form count (lm_head untied in "tiny").
    assert param_bytes(CONFIG) == 4 * CONFIG.num_params()
    # fsdp=4 splits every `embed` dimension (all matrices; norm scales are [D] = embed too),
    # except biases ([heads, head_dim]: no embed axis) which stay whole.
    c = CONFIG
    biases = c.num_layers * c.head_dim * (c.num_heads + 2 * c.num_kv_heads)
    assert param_bytes(c, (1, 4, 1)) == 4 * ((c.num_params() - biases) // 4 + biases)
    # The critic's score head replaces lm_head [D, V] by a kernel [D] and a bias [].
    d, v = c.hidden_size, c.vocab_size
    assert param_bytes(c, head="score") == 4 * (c.num_params() - d * v + d + 1)
    # A 0.5B model is sized from shapes alone (nothing allocated); tied embeddings count once.
    big = get_config("qwen2.5-0.5b")
    assert param_bytes(big) == 4 * big.num_params()
    assert param_bytes(big.replace(param_dtype=jnp.bfloat16)) == 2 * big.num_params()


def test_estimate_parts_compose():
    kw = dict(mesh=(1, 2, 1), batch=4, seq_len=64)
    plain = estimate_memory(CONFIG, **kw)
    p_lm, p_score = param_bytes(CONFIG, (1, 2, 1)), param_bytes(CONFIG, (1, 2, 1), "score")
    assert (plain.params, plain.optimizer_state, plain.gradients) == (p_lm, 2 * p_lm, p_lm)
    ppo = estimate_memory(CONFIG, **kw, critic=CONFIG)
    assert ppo.params == p_lm + p_score
    assert ppo.optimizer_state == 2 * (p_lm + p_score)
    assert ppo.gradients == max(p_lm, p_score)  # policy and critic gradients not alive at once
    assert ppo.activations == plain.activations  # the LM head's pass is the larger
    rewarded = estimate_memory(CONFIG, **kw, critic=CONFIG, reward_models=[CONFIG] * 2)  # ORM, PRM
    assert rewarded.params == p_lm + 3 * p_score and rewarded.optimizer_state == ppo.optimizer_state
    judge = CONFIG.replace(hidden_size=2 * CONFIG.hidden_size, num_layers=CONFIG.num_layers + 1)
    judged = estimate_memory(CONFIG, **kw, critic=CONFIG, scorers=[judge, CONFIG])  # own shapes
    assert judged.params == p_lm + 2 * p_score + param_bytes(judge, (1, 2, 1), "score")
    # A critic of its own, larger shape: its params, Adam moments, gradients and pass count.
    p_big = param_bytes(BIG, (1, 2, 1), "score")
    big = estimate_memory(CONFIG, **kw, critic=BIG, reward_models=[BIG])
    assert big.params == p_lm + 2 * p_big and big.optimizer_state == 2 * (p_lm + p_big)
    assert big.gradients == p_big > p_lm
    assert big.activations == activation_bytes(BIG, (1, 2, 1), 4, 64, head="score") > plain.activations
    dpo = estimate_memory(CONFIG, **kw, references=1, reference_dtype=jnp.bfloat16)
    assert dpo.params == p_lm + p_lm // 2 and dpo.optimizer_state == 2 * p_lm
    refreshed = estimate_memory(CONFIG, **kw, references=2)  # DPO refresh_reference: two copies
    assert refreshed.params == 3 * p_lm and refreshed.optimizer_state == 2 * p_lm
    kept = estimate_memory(CONFIG, **kw, donate=False)
    assert (kept.params, kept.optimizer_state) == (2 * p_lm, 4 * p_lm)
    sgd = estimate_memory(CONFIG, **kw, optimizer="sgd")
    assert sgd.optimizer_state == 0
    # More rematerialisation, fewer activation bytes; more rows, more activation bytes.
    acts = [estimate_memory(CONFIG, **kw, remat=r).activations for r in ("none", "dots", "full")]
    assert acts[0] > acts[1] > acts[2]
    assert estimate_memory(CONFIG, (1, 2, 1), 8, 64).activations > plain.activations
    # Sampling (8 prompts of 32 slots x 2 samples of 64 tokens): counted there, not in training.
    cached = estimate_memory(CONFIG, **kw, rollout=(8, 32, 64, 2))
    assert cached.kv_cache == kv_cache_bytes(CONFIG, 16, 96, (1, 2, 1)) > 0
    assert plain.kv_cache == plain.decode_weights == plain.sampler_activations == 0
    # The per-layer copy gathered over fsdp: every weight whole, next to the sharded buffers it
    # is gathered from, the layer slices (float32 compute) or every cast weight (bfloat16).
    def layers(mesh):
        return param_bytes(CONFIG, mesh) - param_bytes(CONFIG.replace(num_layers=0), mesh)

    assert cached.decode_weights == param_bytes(CONFIG) + layers((1, 2, 1))
    one_device = estimate_memory(CONFIG, None, 8, 32, rollout=(8, 32, 64, 2))
    assert one_device.decode_weights == layers(None)  # float32 on one device: the layers only
    bf16 = estimate_memory(CONFIG.replace(dtype=jnp.bfloat16), **kw, rollout=(8, 32, 64, 2))
    assert bf16.decode_weights == (param_bytes(CONFIG) + p_lm) // 2
    assert cached.sampler_activations > 0
    assert cached.sampling == (cached.params + cached.optimizer_state + cached.kv_cache
                               + cached.decode_weights + cached.sampler_activations)
    assert cached.total == max(cached.training, cached.sampling)
    assert "activations" in cached.summary()
    assert plain.brief().startswith(f"training {plain.training / 2 ** 20:.1f} MiB (params ")
    assert "sampling" not in plain.brief() and "KV cache" in cached.brief()
    scored = estimate_memory(CONFIG, **kw, scoring=(16, 96))
    assert scored.scoring_activations == scoring_activation_bytes(CONFIG, (1, 2, 1), 16, 96) > 0
    assert scored.scoring == scored.params + scored.optimizer_state + scored.scoring_activations
    assert scored.total == max(scored.training, scored.scoring) and "scoring" in scored.brief()
    assert plain.scoring_activations == 0 and "scoring" not in plain.brief()
    assert format_bytes(3 * 2 ** 30 // 2) == "1.50 GiB" and format_bytes(2 ** 19) == "0.5 MiB"


def test_saved_bytes_formulas_by_hand():
    c = get_config("tiny", dtype=jnp.bfloat16)  # D=64, F=128, N=4, KVH=2, Dh=16
    s = 10
    assert saved_bytes_per_token(c, s, "full") == 2 * 64
    assert saved_bytes_per_token(c, s, "dots") == 2 * (2 * 64 + 64 + 2 * 32 + 2 * 128)
    none = 2 * (4 * 64 + 2 * 64 + 2 * 32 + 6 * 128 + 4 * s) + 4 * (2 * 64 + 4 * s + 2 * s + 8 + 1) + 2 * s
    assert saved_bytes_per_token(c, s, "none") == none
    # cuDNN flash attention: no [T, S] scores, softmax or mask; a float32 log-sum-exp a head.
    flash = c.replace(attention="cudnn")
    assert saved_bytes_per_token(flash, s, "none") == (2 * (4 * 64 + 2 * 64 + 2 * 32 + 6 * 128)
                                                       + 4 * (2 * 64 + 4))
    assert saved_bytes_per_token(flash, s, "dots") == saved_bytes_per_token(c, s, "dots")
    # tensor=2 halves heads, kv heads and the MLP width; the residual stream D stays whole.
    assert saved_bytes_per_token(c, s, "dots", tensor=2) == 2 * (2 * 64 + 32 + 2 * 16 + 2 * 64)


@pytest.mark.parametrize("mesh_shape", [(2, 2, 2), (2, 1, 4)])
def test_kv_cache_matches_sampler_cache(mesh_shape):
    """The cache `generate` builds, from the sharding constraints the sampler puts on it after
    the prefill: stacked [L, N, KVH, P + R, Dh] for the scanned model, L per-layer buffers
    [N, KVH, P + R, Dh] (and no stacked one) for the unrolled default; either way its
    per-device bytes are kv_cache_bytes."""
    config = get_config("tiny")
    mesh = make_mesh(*mesh_shape)
    model = Transformer(config)
    params = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                          abstract_params(lambda: model.init(
                              jax.random.key(0), jnp.zeros((1, 4), jnp.int32),
                              jnp.zeros((1, 4), jnp.int32), jnp.ones((1, 4), bool))["params"])[0])
    prompts, prompt_len, samples, new = 4, 8, 2, 6
    tokens = jnp.zeros((prompts, prompt_len), jnp.int32)
    mask = jnp.ones((prompts, prompt_len), bool)
    rows, slots = prompts * samples, prompt_len + new
    shape = (config.num_layers, rows, config.num_kv_heads, slots, config.head_dim)
    itemsize = jnp.dtype(config.dtype).itemsize
    for unstack, expected_shape, count in ((False, shape, 2), (True, shape[1:],
                                                                2 * config.num_layers)):
        sampling = SamplingConfig(max_new_tokens=new, num_samples=samples, unstack_layers=unstack)
        with jax.set_mesh(mesh), nn.logical_axis_rules(DEFAULT_RULES):
            jaxpr = jax.make_jaxpr(lambda p, t, m, k: generate(model, p, t, m, k, sampling, mesh))(
                params, tokens, mask, jax.random.key(0))
        caches = [(e.invars[0].aval, e.params["sharding"]) for e in jaxpr.jaxpr.eqns
                  if e.primitive.name == "sharding_constraint"
                  and e.invars[0].aval.shape in (shape, shape[1:])]
        assert [aval.shape for aval, _ in caches] == [expected_shape] * count  # k and v
        per_device = sum(math.prod(sharding.shard_shape(aval.shape)) * itemsize
                         for aval, sharding in caches)
        assert kv_cache_bytes(config, rows, slots, mesh) == per_device
    assert kv_cache_bytes(config, rows, slots) == 2 * math.prod(shape) * itemsize


def compiled_sampler_bytes(config, mesh, prompts, prompt_len, samples, prefill_chunk=0, new=16):
    """Arguments + outputs + temporaries - aliased bytes a device of the compiled Sampler for
    `prompts` prompts of prompt_len tokens, `samples` x `new` tokens each."""
    model = Transformer(config)
    sampler = Sampler(model, SamplingConfig(max_new_tokens=new, num_samples=samples,
                                            prefill_chunk=prefill_chunk), mesh)
    tokens, mask = sampler.prepare(np.ones((prompts, prompt_len), np.int32),
                                   np.ones((prompts, prompt_len), bool))
    return peak_bytes(sampler.lower(abstract_sharded_params(model, mesh), tokens, mask,
                                    jax.random.key(0)).compile().memory_analysis())


@pytest.mark.parametrize("mesh_shape,prompts,prompt_len,samples,changes,chunk", [
    ((1, 1, 1), 32, 256, 1, {}, 0),  # long prompts: the prefill's [b, N, P, P] scores dominate
    ((1, 2, 2), 32, 256, 1, {}, 0),
    ((1, 2, 2), 32, 256, 1, {}, 64),  # ... prefilled 64 tokens at a time: [b, N, 64, P]
    # One KV head a device (2 over tensor=2; 1 of 1): the token loop keeps more cache copies
    ((1, 2, 2), 32, 256, 1, {}, 16),
    ((1, 1, 2), 32, 64, 4, {}, 0),
    ((1, 1, 1), 32, 64, 4, dict(num_kv_heads=1), 0),
    ((2, 2, 2), 16, 16, 4, dict(vocab_size=16384), 0),  # the token loop's logits dominate
    ((1, 1, 4), 8, 16, 1, dict(hidden_size=512, intermediate_size=2048, num_heads=8,
                               num_kv_heads=4), 0),  # weights dominate, split over tensor
    ((1, 4, 1), 8, 16, 1, dict(hidden_size=512, intermediate_size=2048), 0),  # ... over fsdp
    # A large vocabulary: embedding and head gathered over fsdp (and the lookup's copy) ...
    ((1, 2, 1), 8, 16, 1, dict(vocab_size=32768), 0),
    ((1, 1, 2), 8, 16, 1, dict(vocab_size=32768, tie_embeddings=True), 0),  # ... or split by rows
])
def test_sampling_estimate_within_20_percent_of_compiled_sampler(mesh_shape, prompts, prompt_len,
                                                                 samples, changes, chunk):
    """estimate_memory(rollout=...).sampling (optimizer "sgd": no state) against XLA's memory
    analysis of the compiled Sampler (arguments + outputs + temporaries - aliased, per device)."""
    config = CONFIG.replace(**changes)
    mesh = mesh_of(mesh_shape)
    compiled = compiled_sampler_bytes(config, mesh, prompts, prompt_len, samples, chunk)
    est = estimate_memory(config, mesh, optimizer="sgd", rollout=(prompts, prompt_len, 16, samples),
                          prefill_chunk=chunk)
    assert 0.8 < est.sampling / compiled < 1.2, (est.summary(), compiled)


def test_chunked_prefill_bounds_the_sampler_memory():
    """16 prompts of 512 tokens: in one pass the prefill's scores [b, N, P, P] make the peak;
    in chunks of 64 tokens the sampler needs under a third of it (XLA:CPU: 174 -> 40 MiB), and
    the estimate follows both within 20%."""
    mesh = mesh_of((1, 1, 1))
    whole, chunked = (compiled_sampler_bytes(CONFIG, mesh, 16, 512, 1, chunk) for chunk in (0, 64))
    assert chunked < whole / 3, (chunked, whole)
    for chunk, compiled in ((0, whole), (64, chunked)):
        est = estimate_memory(CONFIG, mesh, optimizer="sgd", rollout=(16, 512, 16, 1),
                              prefill_chunk=chunk)
        assert 0.8 < est.sampling / compiled < 1.2, (chunk, est.summary(), compiled)


def test_mesh_sizes_and_errors():
    assert mesh_sizes(None) == {"data": 1, "fsdp": 1, "tensor": 1}
    assert mesh_sizes({"fsdp": 8}) == {"data": 1, "fsdp": 8, "tensor": 1}
    assert mesh_sizes((2, 2, 2)) == mesh_sizes(make_mesh(2, 2, 2))
    with pytest.raises(ValueError, match="expected names from"):
        mesh_sizes({"model": 2})
    with pytest.raises(ValueError, match="expected 3 sizes"):
        mesh_sizes((2, 4))
    with pytest.raises(ValueError, match="no -1"):
        mesh_sizes((-1, 1, 1))
    with pytest.raises(ValueError, match="remat='half'"):
        estimate_memory(CONFIG, None, 1, 8, remat="half")
    with pytest.raises(ValueError, match="optimizer='lion'"):
        optimizer_state_bytes(CONFIG, None, "lion")
    assert isinstance(estimate_memory(CONFIG), MemoryEstimate)


def test_trainer_log_names_the_estimate_and_warns_above_the_device(monkeypatch, caplog):
    estimate = estimate_memory(CONFIG, (1, 2, 1), 4, 64, rollout=(8, 32, 64, 2))
    mesh = make_mesh()
    assert device_memory_limit(mesh.devices.flat[0]) is None  # XLA:CPU does not say
    with caplog.at_level(logging.INFO, logger="rlr.train.common"):
        common.log_memory_estimate("sft", estimate, mesh)
        for limit in (estimate.total, estimate.total - 1):
            monkeypatch.setattr(common, "device_memory_limit", lambda device, limit=limit: limit)
            common.log_memory_estimate("sft", estimate, mesh)
    records = [(r.levelname, r.getMessage()) for r in caplog.records]
    text = f"sft: estimated memory a device: {estimate.brief()}"
    assert records[0] == ("INFO", text)
    assert records[1] == ("INFO", f"{text}; the device has {format_bytes(estimate.total)}")
    assert records[2][0] == "WARNING"
    assert records[2][1].startswith(f"{text}: above the device's {format_bytes(estimate.total - 1)}")
