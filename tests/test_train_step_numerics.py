"""The speed options of benchmarks/train_step.py change no number beyond rounding.

Each real step (rlr.train.sft_step.train_step, rlr.train.dpo_step.train_step,
rlr.train.ppo_step.ppo_update) runs on the same random params and batch with and without an
option: rematerialisation (full: SFT; dots: PPO), the time chunk of the LM-head log-probs (one
chunk vs chunks that do not divide the length), bfloat16 vs float32 compute (SFT), a
bfloat16-stored DPO reference model, and cuDNN attention's packed rows (DPO). (The DPO step reads its log-probs through the same
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
from rlr.train import dpo_step, ppo_step, sft_step
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


@functools.lru_cache(maxsize=None)
def sft_update(config, chunk):
    """jit(state, batch -> (state, metrics)) with plain SGD at rate 1: new params = params -
    grads, so the updated params compare the gradients leaf by leaf."""
    return jax.jit(functools.partial(sft_step.train_step, model=Transformer(config),
                                     optimizer=optax.sgd(1.0), chunk_size=chunk))


def sft_run(params, tokens, config, chunk):
    batch = dict(tokens=tokens, positions=np.tile(np.arange(T, dtype=np.int32), (ROWS, 1)),
                 attention_mask=np.ones((ROWS, T), bool),
                 loss_mask=np.arange(T)[None, :].repeat(ROWS, 0) >= P)
    state = create_train_state(params, optax.sgd(1.0), jax.random.key(0))
    new_state, metrics = sft_update(config, chunk)(state, batch)
    grads = jax.tree.map(lambda a, b: a - b, params, new_state.params)
    return metrics, grads


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
