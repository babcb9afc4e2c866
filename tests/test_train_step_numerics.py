"""The speed and memory options of the train steps change no number beyond rounding.

Each real step (rlr.train.sft_step.train_step, rlr.train.dpo_step.train_step,
rlr.train.ppo_step.ppo_update, rlr.train.rm_step.train_step) runs on the same random params and
batch with and without an option: rematerialisation (full: SFT; dots: PPO), the time chunk of
the LM-head log-probs (one chunk vs chunks that do not divide the length), bfloat16 vs float32
compute (SFT), a bfloat16-stored DPO reference model, cuDNN attention's packed rows (DPO), and
gradient accumulation over micro-batches whose token / pair / row / step counts differ (every
step). (The DPO step reads its log-probs through the same
rlr.train.sequences.response_logprobs as the PPO step, so remat and chunks are checked there.)
One compile per variant keeps this under a minute of CPU. float32 options must agree to float32 rounding, bfloat16 compute to bfloat16
tolerance, and the bfloat16 reference under bfloat16 compute exactly (the kernels are cast to
bfloat16 before every matmul either way).
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from hf_fixtures import random_rlr_params
from rlr.models import Transformer, get_config
from rlr.train import dpo_step, ppo_step, rm_step, sft_step
from rlr.train.optim import OptimConfig, make_optimizer
from rlr.train.state import create_train_state

CONFIG = get_config("tiny", dtype=jnp.float32)  # V=256, D=64, L=2, GQA 4/2
ROWS, P, R = 4, 6, 10
T = P + R


@pytest.fixture(scope="module")
def params():
    return jax.tree.map(jnp.asarray, random_rlr_params(CONFIG, seed=1))


@pytest.fixture(scope="module")
def tokens():
    return np.random.default_rng(2).integers(0, CONFIG.vocab_size, (ROWS, T), dtype=np.int32)


def variant(remat="none", dtype=jnp.float32):
    return CONFIG.replace(remat=remat, dtype=dtype)


# ----------------------------------------------------------------------------- SFT


def sgd_run(step, params, *args):
    """(metrics, grads) of one jitted `step` built with plain SGD at rate 1: new params = params
    - grads, so the updated params give the gradients leaf by leaf."""
    state = create_train_state(params, optax.sgd(1.0), jax.random.key(0))
    new_state, metrics = step(state, *args)
    return metrics, jax.tree.map(lambda a, b: a - b, params, new_state.params)


def assert_same_step(run, base_run, keys):
    """The metrics `keys` and every gradient leaf of two sgd_runs agree to float32 rounding."""
    (metrics, grads), (base_metrics, base_grads) = run, base_run
    for key in keys:
        np.testing.assert_allclose(metrics[key], base_metrics[key], rtol=1e-5, atol=1e-6, err_msg=key)
    for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(base_grads)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def lengths_mask(width, lengths, start=0):
    """[len(lengths), width] bool: row b valid on slots start .. start + lengths[b] - 1."""
    slots = np.arange(width)[None, :] - start
    return (slots >= 0) & (slots < np.asarray(lengths)[:, None])


@functools.lru_cache(maxsize=None)
def sft_update(config, chunk, grad_accum_steps=1):
    """jit(state, batch -> (state, metrics)) of sft_step.train_step with SGD at rate 1."""
    return jax.jit(functools.partial(sft_step.train_step, model=Transformer(config),
                                     optimizer=optax.sgd(1.0), chunk_size=chunk,
                                     grad_accum_steps=grad_accum_steps))


def sft_run(params, tokens, config, chunk, loss_mask=None, grad_accum_steps=1):
    if loss_mask is None:
        loss_mask = np.arange(T)[None, :].repeat(ROWS, 0) >= P
    batch = dict(tokens=tokens, positions=np.tile(np.arange(T, dtype=np.int32), (ROWS, 1)),
                 attention_mask=np.ones((ROWS, T), bool), loss_mask=loss_mask)
    return sgd_run(sft_update(config, chunk, grad_accum_steps), params, batch)


def test_sft_step_same_loss_and_gradients_under_remat_and_chunks(params, tokens):
    base_metrics, base_grads = sft_run(params, tokens, variant(), T)  # no remat, one chunk
    metrics, grads = sft_run(params, tokens, variant("full"), 7)  # 7 does not divide T - 1
    assert float(base_metrics["loss"]) > 1.0 and float(base_metrics["grad_norm"]) > 0.1
    np.testing.assert_allclose(metrics["loss"], base_metrics["loss"], rtol=1e-6)
    np.testing.assert_allclose(metrics["grad_norm"], base_metrics["grad_norm"], rtol=1e-5)
    for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(base_grads)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_sft_step_bfloat16_compute_within_bfloat16_tolerance(params, tokens):
    base_metrics, base_grads = sft_run(params, tokens, variant(), T)
    metrics, grads = sft_run(params, tokens, variant(dtype=jnp.bfloat16), 8)
    np.testing.assert_allclose(metrics["loss"], base_metrics["loss"], rtol=2e-2)
    np.testing.assert_allclose(metrics["grad_norm"], base_metrics["grad_norm"], rtol=5e-2)
    flat = lambda tree: np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)])
    g, g0 = flat(grads), flat(base_grads)
    assert g @ g0 / (np.linalg.norm(g) * np.linalg.norm(g0)) > 0.99


# ----------------------------------------------------------------------------- DPO


def pair_batch(tokens):
    pairs = ROWS // 2
    ones = lambda *s: np.ones(s, bool)
    response_mask = np.arange(R)[None, :] < np.array([[R], [R - 3]])  # one short response
    return dpo_step.PairBatch(tokens[:pairs, :P], ones(pairs, P), tokens[:pairs, P:],
                              response_mask, tokens[pairs:, P:], ones(pairs, R), ones(pairs))


def test_dpo_bfloat16_reference_params_change_nothing_under_bfloat16_compute(params, tokens):
    batch = pair_batch(tokens)
    model = Transformer(variant(dtype=jnp.bfloat16))
    ref_logps = jax.jit(functools.partial(dpo_step.pair_logps, model, chunk_size=4))
    stored_bf16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
    full, half = ref_logps(params, batch), ref_logps(stored_bf16, batch)
    for a, b in zip(full, half):
        np.testing.assert_array_equal(a, b)
    assert float(jnp.abs(full.chosen).min()) > 1.0


def test_dpo_step_with_cudnn_attention_path_equals_the_mask_path(params, tokens, cudnn_on_cpu):
    """attention='cudnn' (its packed rows, XLA's kernel standing in for cuDNN's) on pairs with
    left-padded prompts and a short response: the same loss and updated params as the mask path,
    under bfloat16 compute."""
    batch = pair_batch(tokens)
    batch = batch._replace(prompt_mask=batch.prompt_mask & (np.arange(P)[None, :] >= [[0], [2]]))
    reference = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
    results = {}
    for attention in ("xla", "cudnn"):
        config = CONFIG.replace(dtype=jnp.bfloat16, attention=attention)
        step = jax.jit(functools.partial(
            dpo_step.train_step, model=Transformer(config), optimizer=optax.sgd(1.0),
            config=dpo_step.PreferenceConfig(logprob_chunk=4)))
        state = create_train_state(params, optax.sgd(1.0), jax.random.key(0))
        results[attention] = step(state, reference, batch)
    assert ("cudnn", True) in cudnn_on_cpu
    (xla_state, xla_metrics), (cudnn_state, cudnn_metrics) = results["xla"], results["cudnn"]
    assert float(xla_metrics["grad_norm"]) > 0.1
    np.testing.assert_allclose(cudnn_metrics["loss"], xla_metrics["loss"], rtol=1e-4)
    np.testing.assert_allclose(cudnn_metrics["grad_norm"], xla_metrics["grad_norm"], rtol=1e-3)
    for got, want in zip(jax.tree.leaves(cudnn_state.params), jax.tree.leaves(xla_state.params)):
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-5)


# ----------------------------------------------------------------------------- PPO


def critic_params(params):
    """The policy's body under a score head (kernel [D] random, bias 0)."""
    body = {k: v for k, v in params.items() if k != "lm_head"}
    kernel = jax.random.normal(jax.random.key(5), (CONFIG.hidden_size,)) / 8
    return {**body, "score_head": {"kernel": kernel, "bias": jnp.zeros(())}}


def ppo_batch(tokens):
    rng = np.random.default_rng(3)
    normal = lambda: rng.normal(size=(ROWS, R)).astype(np.float32)
    mask = np.arange(R)[None, :] < np.array([[R], [R - 2], [R], [4]])
    return ppo_step.PPOBatch(tokens[:, :P], np.ones((ROWS, P), bool), tokens[:, P:], mask,
                             old_logp=-np.abs(normal()) - 2.0, ref_logp=-np.abs(normal()) - 2.0,
                             advantages=normal(), returns=normal(), old_values=normal())


def test_ppo_update_same_under_remat_and_chunks(params, tokens):
    batch = ppo_batch(tokens)
    optim = OptimConfig(learning_rate=1e-3)
    results = []
    for remat, chunk in [("none", R), ("dots", 3)]:
        config = variant(remat)
        update = ppo_step.UpdateConfig(epochs=1, num_minibatches=1, logprob_chunk=chunk,
                                       entropy_coef=0.01)
        policy = create_train_state(params, make_optimizer(optim), jax.random.key(0))
        critic = create_train_state(critic_params(params), make_optimizer(optim), jax.random.key(1))
        fn = jax.jit(functools.partial(
            ppo_step.ppo_update, policy_model=Transformer(config),
            critic_model=Transformer(config, head="score"), policy_optim=optim,
            critic_optim=optim, config=update))
        results.append(fn(policy, critic, None, batch, jax.random.key(2))[2])
    base, other = results
    assert float(base["critic/grad_norm"]) > 0.01 and float(base["policy/grad_norm"]) > 0.01
    for key in ("policy/loss", "policy/entropy", "policy/clip_fraction", "policy/grad_norm",
                "critic/grad_norm"):
        np.testing.assert_allclose(other[key], base[key], rtol=1e-5, atol=1e-6, err_msg=key)
    value_keys = [k for k in base if k.startswith("critic/") and "loss" in k]
    assert value_keys
    for key in value_keys:
        np.testing.assert_allclose(other[key], base[key], rtol=1e-5, atol=1e-6, err_msg=key)


# ----------------------------------------------------------------------------- gradient accumulation
# Micro-batch i holds rows i, i + A, ...; the counts below differ between micro-batches, so a plain
# mean of the micro-batches' gradients would not pass (tests/test_accumulate.py shows the gap).


def test_sft_step_same_loss_and_gradients_in_micro_batches(params, tokens):
    """One row a micro-batch: 9, 2, 9 and 5 target tokens."""
    loss_mask = lengths_mask(T, [R, 3, R, 6], start=P)
    base = sft_run(params, tokens, variant(), 4, loss_mask)
    run = sft_run(params, tokens, variant(), 4, loss_mask, grad_accum_steps=4)
    assert float(base[0]["grad_norm"]) > 0.1
    assert_same_step(run, base, ("loss", "grad_norm", "num_tokens", "perplexity"))


def test_dpo_step_same_loss_and_gradients_in_micro_batches(params, tokens):
    """Four pairs, the last one padding: micro-batches of 2 and 1 valid pairs."""
    batch = dpo_step.PairBatch(tokens[:, :P], np.ones((ROWS, P), bool), tokens[:, P:],
                               lengths_mask(R, [R, 4, 7, 2]), tokens[::-1, P:],
                               lengths_mask(R, [5, R, 3, 2]), np.array([True, True, True, False]))
    reference = jax.tree.map(lambda x: 0.9 * x, params)
    runs = [sgd_run(jax.jit(functools.partial(
        dpo_step.train_step, model=Transformer(CONFIG), optimizer=optax.sgd(1.0),
        config=dpo_step.PreferenceConfig(logprob_chunk=4), grad_accum_steps=accum)),
        params, reference, batch) for accum in (1, 2)]
    assert float(runs[0][0]["grad_norm"]) > 0.01 and float(runs[0][0]["pairs"]) == 3
    assert_same_step(runs[1], runs[0], ("loss", "grad_norm", "rewards/margin", "rewards/accuracy",
                                        "logps/chosen", "pairs"))


def test_ppo_update_same_in_micro_batches(params, tokens):
    """The policy's minibatch in 2 micro-batches (10 + 10 and 8 + 4 response tokens), the
    critic's in 4; the same losses, grad norms and AdamW-updated params as one pass (Adam's eps
    1e-4: its first step, lr g / (|g| + eps), would otherwise turn rounding of the ~1e-9
    gradient entries into lr-sized changes)."""
    batch = ppo_batch(tokens)
    update = ppo_step.UpdateConfig(epochs=1, num_minibatches=1, logprob_chunk=4, entropy_coef=0.01,
                                   kl_loss_coef=0.1)
    results = []
    for policy_accum, critic_accum in [(1, 1), (2, 4)]:
        policy_optim = OptimConfig(learning_rate=1e-3, eps=1e-4, grad_accum_steps=policy_accum)
        critic_optim = OptimConfig(learning_rate=1e-3, eps=1e-4, grad_accum_steps=critic_accum)
        policy = create_train_state(params, make_optimizer(policy_optim), jax.random.key(0))
        critic = create_train_state(critic_params(params), make_optimizer(critic_optim),
                                    jax.random.key(1))
        fn = jax.jit(functools.partial(
            ppo_step.ppo_update, policy_model=Transformer(CONFIG),
            critic_model=Transformer(CONFIG, head="score"), policy_optim=policy_optim,
            critic_optim=critic_optim, config=update))
        results.append(fn(policy, critic, None, batch, jax.random.key(2)))
    (base_policy, base_critic, base), (policy, critic, metrics) = results
    assert float(base["policy/grad_norm"]) > 0.01 and float(base["critic/grad_norm"]) > 0.01
    for key in ("policy/loss", "policy/policy_loss", "policy/kl_loss", "policy/clip_fraction",
                "policy/log_ratio_max", "policy/grad_norm", "critic/value_loss", "critic/grad_norm"):
        np.testing.assert_allclose(metrics[key], base[key], rtol=1e-5, atol=1e-6, err_msg=key)
    for got, want in zip(jax.tree.leaves((policy.params, critic.params)),
                         jax.tree.leaves((base_policy.params, base_critic.params))):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def rm_batch(tokens, objective):
    """Four rows of `objective` (rlr.train.rm_step.OBJECTIVES), the counted items uneven over
    the micro-batches of rows (0, 2) and (1, 3)."""
    response_mask = lengths_mask(R, [R, 4, 7, 2])
    rows = dict(prompt_tokens=tokens[:, :P], prompt_mask=np.ones((ROWS, P), bool))
    if objective == "bradley_terry":
        return dict(rows, chosen_tokens=tokens[:, P:], chosen_mask=response_mask,
                    rejected_tokens=tokens[::-1, P:], rejected_mask=lengths_mask(R, [5, R, 3, 2]),
                    pair_mask=np.array([True, True, True, False]))
    rows.update(response_tokens=tokens[:, P:], response_mask=response_mask)
    if objective == "outcome_bce":
        return dict(rows, labels=np.array([1.0, 0.0, 0.0, 1.0], np.float32),
                    row_mask=np.array([True, False, True, True]))
    return dict(rows, step_positions=np.array([[2, 5, 9], [3, 0, 0], [1, 4, 6], [1, 0, 0]], np.int32),
                step_labels=np.array([[1, 1, 0], [0, 0, 0], [1, 0, 0], [1, 0, 0]], np.float32),
                step_mask=lengths_mask(3, [3, 1, 3, 0]))


@pytest.mark.parametrize("objective", rm_step.OBJECTIVES)
def test_reward_model_step_same_loss_and_gradients_in_micro_batches(params, tokens, objective):
    batch = rm_batch(tokens, objective)
    runs = [sgd_run(jax.jit(functools.partial(
        rm_step.train_step, model=Transformer(CONFIG, head="score"), optimizer=optax.sgd(1.0),
        objective=objective, grad_accum_steps=accum)), critic_params(params), batch)
        for accum in (1, 2)]
    assert float(runs[0][0]["grad_norm"]) > 0.01
    assert_same_step(runs[1], runs[0], ["loss", "grad_norm"] + ["num_steps"] * (objective == "process_bce"))
