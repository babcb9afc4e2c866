"""Tests of rlr.losses.dpo: DPO variants, SimPO and sequence log-probs."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import reference_np as ref
from rlr.losses import dpo

SETTINGS = settings(max_examples=25, deadline=None)
N = 5  # pairs in the property / reference tests: one compilation each
dpo_jit = jax.jit(dpo.dpo_loss, static_argnames=("beta", "kind", "label_smoothing"))

# one pair with h = (-1 - -2) - (-3 - -3) = 1
PAIR = tuple(np.array([v], np.float32) for v in (-1.0, -3.0, -2.0, -3.0))


def neg_log_sigmoid(z: float) -> float:
    return math.log1p(math.exp(-z))


@pytest.mark.parametrize(
    "kind, beta, label_smoothing, expected",
    [
        ("sigmoid", 0.5, 0.0, neg_log_sigmoid(0.5)),
        ("cdpo", 0.5, 0.1, 0.9 * neg_log_sigmoid(0.5) + 0.1 * neg_log_sigmoid(-0.5)),
        ("robust", 0.5, 0.1, (0.9 * neg_log_sigmoid(0.5) - 0.1 * neg_log_sigmoid(-0.5)) / 0.8),
        ("ipo", 0.5, 0.0, 0.0),  # (1 - 1 / (2 * 0.5))^2
        ("ipo", 0.25, 0.0, 1.0),  # (1 - 2)^2
        ("hinge", 0.5, 0.0, 0.5),
        ("hinge", 2.0, 0.0, 0.0),
    ],
)
def test_dpo_hand_computed(kind, beta, label_smoothing, expected):
    loss, metrics = dpo.dpo_loss(*PAIR, beta=beta, kind=kind, label_smoothing=label_smoothing)
    assert float(loss) == pytest.approx(expected, abs=1e-6)
    assert float(metrics["rewards/chosen"]) == pytest.approx(beta * 1.0)
    assert float(metrics["rewards/rejected"]) == pytest.approx(0.0)
    assert float(metrics["rewards/margin"]) == pytest.approx(beta)
    assert float(metrics["rewards/accuracy"]) == 1.0


@SETTINGS
@given(
    st.lists(st.floats(-50, 0, width=32), min_size=2 * N, max_size=2 * N),
    st.sampled_from([0.01, 0.1, 1.0]),
)
def test_sigmoid_dpo_at_policy_equal_reference_is_log2(logps, beta):
    chosen, rejected = np.asarray(logps[:N], np.float32), np.asarray(logps[N:], np.float32)
    loss, metrics = dpo_jit(chosen, rejected, chosen, rejected, beta=beta)
    assert float(loss) == pytest.approx(math.log(2.0), abs=1e-6)
    assert float(metrics["rewards/margin"]) == 0.0 and float(metrics["rewards/accuracy"]) == 0.0


def test_sigmoid_dpo_gradient_hand_computed():
    beta = 0.5
    grads = jax.grad(lambda pc: dpo.dpo_loss(pc, *PAIR[1:], beta=beta)[0])(PAIR[0])
    # d/d pc of -log sigmoid(beta h) = -beta * sigmoid(-beta h), h = 1
    assert float(grads[0]) == pytest.approx(-beta / (1 + math.exp(beta)), abs=1e-6)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize(
    "kind, label_smoothing", [("sigmoid", 0.0), ("cdpo", 0.2), ("robust", 0.1), ("ipo", 0.0), ("hinge", 0.0)]
)
def test_dpo_matches_float64_reference(seed, kind, label_smoothing):
    rng = np.random.default_rng(seed)
    pc, pr = -np.abs(rng.normal(size=(2, N)) * 20)  # policy log-probs of chosen / rejected
    rc, rr = pc + rng.normal(size=N), pr + rng.normal(size=N)  # reference near the policy
    pc, pr, rc, rr = (a.astype(np.float32) for a in (pc, pr, rc, rr))
    beta = [0.1, 0.5, 0.05][seed]
    loss, metrics = dpo_jit(pc, pr, rc, rr, beta=beta, kind=kind, label_smoothing=label_smoothing)
    loss_np, metrics_np = ref.dpo_loss_np(pc, pr, rc, rr, beta, kind, label_smoothing)
    assert float(loss) == pytest.approx(loss_np, rel=1e-5, abs=1e-5)
    for key, value in metrics_np.items():
        assert float(metrics[key]) == pytest.approx(value, rel=1e-5, abs=1e-5), key


def test_dpo_pair_mask_ignores_padded_pairs():
    pc, pr, rc, rr = (np.array([a, np.nan], np.float32) for a in (-1.0, -3.0, -2.0, -3.0))
    loss, metrics = dpo.dpo_loss(pc, pr, rc, rr, beta=0.5, mask=np.array([1, 0]))
    assert float(loss) == pytest.approx(neg_log_sigmoid(0.5), abs=1e-6)
    assert float(metrics["rewards/chosen"]) == pytest.approx(0.5)
    empty, empty_metrics = dpo.dpo_loss(pc, pr, rc, rr, beta=0.5, mask=np.zeros(2))
    assert float(empty) == 0.0 and all(np.isfinite(float(v)) for v in empty_metrics.values())


def test_dpo_bad_arguments_raise():
    with pytest.raises(ValueError, match="kind must be one of"):
        dpo.dpo_loss(*PAIR, beta=0.1, kind="kto")
    with pytest.raises(ValueError, match="has no effect with kind='sigmoid'"):
        dpo.dpo_loss(*PAIR, beta=0.1, label_smoothing=0.1)
    with pytest.raises(ValueError, match=r"label_smoothing must be in \[0, 0.5\)"):
        dpo.dpo_loss(*PAIR, beta=0.1, kind="robust", label_smoothing=0.5)
    with pytest.raises(ValueError, match="beta must be > 0"):
        dpo.dpo_loss(*PAIR, beta=0.0)


def test_dpo_is_float32_for_bf16_inputs():
    loss, metrics = dpo.dpo_loss(*(jnp.asarray(a, jnp.bfloat16) for a in PAIR), beta=0.5)
    assert loss.dtype == jnp.float32 and metrics["rewards/chosen"].dtype == jnp.float32


def test_simpo_hand_computed():
    args = (np.array([-4.0]), np.array([-9.0]), np.array([2]), np.array([3]))
    loss, metrics = dpo.simpo_loss(*args, beta=2.0, gamma=0.5)
    # rewards: 2 * -4 / 2 = -4 and 2 * -9 / 3 = -6; -log sigmoid(-4 + 6 - 0.5)
    assert float(loss) == pytest.approx(neg_log_sigmoid(1.5), abs=1e-6)
    assert float(metrics["rewards/chosen"]) == pytest.approx(-4.0)
    assert float(metrics["rewards/rejected"]) == pytest.approx(-6.0)
    assert float(metrics["rewards/accuracy"]) == 1.0
    zero_len, _ = dpo.simpo_loss(np.array([0.0]), np.array([0.0]), np.array([0]), np.array([0]), beta=2.0, gamma=0.5)
    assert float(zero_len) == pytest.approx(neg_log_sigmoid(-0.5), abs=1e-6)


def test_sequence_logp_sums_valid_tokens_only():
    token_logp = np.array([[-1.0, -2.0, np.nan], [-0.5, np.inf, np.inf], [np.nan, np.nan, np.nan]], np.float32)
    mask = np.array([[1, 1, 0], [1, 0, 0], [0, 0, 0]], bool)
    np.testing.assert_allclose(dpo.sequence_logp(token_logp, mask), [-3.0, -0.5, 0.0])
    grads = jax.grad(lambda x: dpo.sequence_logp(x, mask).sum())(jnp.asarray(token_logp))
    np.testing.assert_array_equal(grads, mask.astype(np.float32))
