"""Tests of rlr.losses.reward_model (Bradley-Terry, ORM and PRM BCE) and rlr.losses.sft."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlr.losses import reward_model as rm
from rlr.losses import sft


def softplus(z: float) -> float:
    return math.log1p(math.exp(z))


def all_finite(metrics) -> bool:
    return all(np.isfinite(float(v)) for v in metrics.values())


# ----------------------------------------------------------------------------- Bradley-Terry


def test_bradley_terry_hand_computed():
    loss, metrics = rm.bradley_terry_loss(np.array([2.0, 0.0]), np.array([0.0, 1.0]))
    # -log sigmoid(2) and -log sigmoid(-1)
    assert float(loss) == pytest.approx((softplus(-2.0) + softplus(1.0)) / 2, abs=1e-6)
    assert float(metrics["accuracy"]) == 0.5
    assert float(metrics["margin"]) == pytest.approx(0.5)
    assert float(metrics["chosen_mean"]) == 1.0 and float(metrics["rejected_mean"]) == 0.5
    grads = jax.grad(lambda c: rm.bradley_terry_loss(c, jnp.array([0.0, 1.0]))[0])(jnp.array([2.0, 0.0]))
    # d/dc of -log sigmoid(c - r) / 2 = -sigmoid(r - c) / 2
    np.testing.assert_allclose(grads, [-0.5 / (1 + math.exp(2.0)), -0.5 / (1 + math.exp(-1.0))], rtol=1e-6)


def test_bradley_terry_mask_and_empty():
    chosen, rejected = np.array([2.0, np.nan]), np.array([0.0, np.inf])
    loss, metrics = rm.bradley_terry_loss(chosen, rejected, mask=np.array([1, 0]))
    assert float(loss) == pytest.approx(softplus(-2.0), abs=1e-6) and float(metrics["accuracy"]) == 1.0
    empty, empty_metrics = rm.bradley_terry_loss(chosen, rejected, mask=np.zeros(2))
    assert float(empty) == 0.0 and all_finite(empty_metrics)


# ----------------------------------------------------------------------------- ORM


def test_outcome_bce_hand_computed():
    scores = np.array([0.0, 2.0, -1.0, np.nan], np.float32)
    labels = np.array([1, 0, 0, 1], np.float32)
    loss, metrics = rm.outcome_bce_loss(scores, labels, mask=np.array([1, 1, 1, 0]))
    # BCE(0, 1) = log 2; BCE(2, 0) = softplus(2); BCE(-1, 0) = softplus(-1)
    assert float(loss) == pytest.approx((math.log(2.0) + softplus(2.0) + softplus(-1.0)) / 3, abs=1e-6)
    assert float(metrics["accuracy"]) == pytest.approx(1 / 3)  # only the last valid row is right
    assert float(metrics["positive_rate"]) == pytest.approx(1 / 3)
    unmasked, _ = rm.outcome_bce_loss(scores[:3], labels[:3])
    assert float(unmasked) == pytest.approx(float(loss))
    grads = jax.grad(lambda s: rm.outcome_bce_loss(s, labels[:3])[0])(jnp.asarray(scores[:3]))
    np.testing.assert_allclose(grads, (jax.nn.sigmoid(scores[:3]) - labels[:3]) / 3, rtol=1e-6)


# ----------------------------------------------------------------------------- PRM


def test_gather_at_and_index_clipping():
    x = np.arange(10, dtype=np.float32).reshape(2, 5)
    np.testing.assert_array_equal(rm.gather_at(x, np.array([[0, 4], [2, 2]])), [[0, 4], [7, 7]])
    np.testing.assert_array_equal(rm.gather_at(x, np.array([[99, -3]])[[0, 0]]), [[4, 0], [9, 5]])


def test_process_bce_hand_computed_with_padded_steps():
    token_scores = np.array([[9.0, 1.0, 9.0, 9.0, -2.0], [9.0, 9.0, 0.5, 9.0, 9.0]], np.float32)
    positions = np.array([[1, 4], [2, 99]], np.int32)  # the padded slot holds an out-of-range index
    labels = np.array([[1, 0], [0, 1]], np.float32)
    step_mask = np.array([[1, 1], [1, 0]], np.float32)
    loss, metrics = rm.process_bce_loss(token_scores, positions, labels, step_mask)
    # steps: (logit 1, label 1), (-2, 0), (0.5, 0): the last one is wrong
    expected = (softplus(-1.0) + softplus(-2.0) + softplus(0.5)) / 3
    assert float(loss) == pytest.approx(expected, abs=1e-6)
    assert float(metrics["step_accuracy"]) == pytest.approx(2 / 3)
    assert float(metrics["num_steps"]) == 3.0
    grads = jax.grad(lambda s: rm.process_bce_loss(s, positions, labels, step_mask)[0])(jnp.asarray(token_scores))
    expected_grads = np.zeros((2, 5), np.float32)
    expected_grads[0, 1] = (1 / (1 + math.exp(-1.0)) - 1) / 3
    expected_grads[0, 4] = (1 / (1 + math.exp(2.0))) / 3
    expected_grads[1, 2] = (1 / (1 + math.exp(-0.5))) / 3
    np.testing.assert_allclose(grads, expected_grads, rtol=1e-5, atol=1e-7)


def test_process_bce_no_steps_is_zero_without_nan():
    positions, labels, no_steps = jnp.zeros((2, 2), jnp.int32), jnp.ones((2, 2)), jnp.zeros((2, 2))
    loss, metrics = rm.process_bce_loss(jnp.full((2, 3), jnp.nan), positions, labels, no_steps)
    assert float(loss) == 0.0 and all_finite(metrics) and float(metrics["num_steps"]) == 0.0


def test_last_token_scores_right_left_and_empty_rows():
    scores = np.arange(12, dtype=np.float32).reshape(3, 4)
    mask = np.array([[1, 1, 1, 0], [0, 0, 1, 1], [0, 0, 0, 0]])
    np.testing.assert_array_equal(rm.last_token_scores(scores, mask), [2.0, 7.0, 0.0])
    one_token = rm.last_token_scores(scores, np.array([[1, 0, 0, 0]] * 3))
    np.testing.assert_array_equal(one_token, [0.0, 4.0, 8.0])


# ----------------------------------------------------------------------------- SFT


def test_sft_loss_hand_computed():
    token_logp = np.log(np.array([[0.5, 0.25, 1.0], [0.125, 1.0, 1.0]], np.float32))
    token_logp[0, 2] = np.nan  # padding
    mask = np.array([[1, 1, 0], [1, 0, 0]])
    loss, metrics = sft.sft_loss(token_logp, mask)
    ln2 = math.log(2.0)
    assert float(loss) == pytest.approx((ln2 + 2 * ln2 + 3 * ln2) / 3, rel=1e-6)
    assert float(metrics["perplexity"]) == pytest.approx(4.0, rel=1e-5)
    assert float(metrics["num_tokens"]) == 3.0
    seq_mean, _ = sft.sft_loss(token_logp, mask, aggregation="seq_mean")
    assert float(seq_mean) == pytest.approx((1.5 * ln2 + 3 * ln2) / 2, rel=1e-6)


def test_sft_loss_empty_mask_and_bf16():
    logp = jnp.full((2, 3), -1.0, jnp.bfloat16)
    loss, metrics = sft.sft_loss(logp, jnp.zeros((2, 3)))
    assert float(loss) == 0.0 and float(metrics["perplexity"]) == 1.0 and all_finite(metrics)
    grads = jax.grad(lambda x: sft.sft_loss(x, jnp.zeros((2, 3)))[0])(jnp.zeros((2, 3)))
    assert not np.asarray(grads).any()
    loss, _ = jax.jit(sft.sft_loss)(logp, jnp.ones((2, 3)))
    assert loss.dtype == jnp.float32 and float(loss) == pytest.approx(1.0)
