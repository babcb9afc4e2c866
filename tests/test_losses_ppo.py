"""Tests of rlr.losses.ppo: GAE, PPO policy / value losses, KL estimators, advantage
normalisation (also sharded on the 8-device CPU mesh), running statistics, GRPO / RLOO."""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import reference_np as ref
from rlr.losses import masked, ppo

SETTINGS = settings(max_examples=25, deadline=None)
B, T = 4, 6  # fixed shapes for the property / reference tests: one compilation each

gae_jit = jax.jit(ppo.gae)
policy_loss_jit = jax.jit(ppo.policy_loss, static_argnames=("clip_eps", "dual_clip", "aggregation"))
value_loss_jit = jax.jit(ppo.value_loss, static_argnames=("clip_eps", "aggregation"))
normalize_jit = jax.jit(ppo.normalize_advantages)
running_update_jit = jax.jit(ppo.running_stats_update)


@functools.partial(jax.jit, static_argnames="aggregation")
def policy_grad_at_ratio_one(logp, advantages, mask, aggregation):
    """d policy_loss / d logp evaluated at logp == old_logp (ratio 1)."""
    loss = lambda lp: ppo.policy_loss(lp, logp, advantages, mask, 0.2, aggregation=aggregation)[0]  # noqa: E731
    return jax.grad(loss)(logp)


def right_padded_mask(lengths, t=T) -> np.ndarray:
    return (np.arange(t)[None, :] < np.asarray(lengths)[:, None]).astype(np.float32)


lengths_st = st.lists(st.integers(0, T), min_size=B, max_size=B)
floats_st = st.lists(st.floats(-2.0, 2.0, width=32), min_size=B * T, max_size=B * T).map(
    lambda xs: np.asarray(xs, np.float32).reshape(B, T)
)


def random_case(seed: int):
    """Random [B, T] inputs with random right-padded masks, including empty and full rows."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, T + 1, size=B)
    lengths[0], lengths[1] = 0, T
    mask = right_padded_mask(lengths)
    draw = lambda scale=1.0: (rng.normal(size=(B, T)) * scale).astype(np.float32)  # noqa: E731
    return mask, draw


# ----------------------------------------------------------------------------- GAE


def test_gae_hand_computed_with_padding_one_token_and_empty_rows():
    nan = float("nan")
    rewards = np.array([[0.0, 0.0, 1.0], [0.0, 2.0, nan], [3.0, 9.0, 9.0], [nan, nan, nan]], np.float32)
    values = np.array([[0.5, 0.2, 0.1], [1.0, 0.5, 7.0], [1.0, 9.0, 9.0], [nan, 1.0, 2.0]], np.float32)
    mask = np.array([[1, 1, 1], [1, 1, 0], [1, 0, 0], [0, 0, 0]], np.float32)
    adv, ret = ppo.gae(rewards, values, mask, gamma=1.0, lam=0.5)
    # row 0: A_2 = 1 - 0.1 = 0.9; A_1 = (0 + 0.1 - 0.2) + 0.5 * 0.9 = 0.35; A_0 = -0.3 + 0.5 * 0.35
    np.testing.assert_allclose(adv, [[-0.125, 0.35, 0.9], [0.25, 1.5, 0], [2.0, 0, 0], [0, 0, 0]], atol=1e-6)
    np.testing.assert_allclose(ret, [[0.375, 0.55, 1.0], [1.25, 2.0, 0], [3.0, 0, 0], [0, 0, 0]], atol=1e-6)


def test_gae_discounting_hand_computed():
    adv, ret = ppo.gae(np.array([[0.0, 1.0]]), np.array([[0.0, 0.0]]), np.ones((1, 2)), gamma=0.9, lam=0.5)
    # A_1 = 1; A_0 = 0 + 0.9 * 0 - 0 + 0.45 * 1
    np.testing.assert_allclose(adv, [[0.45, 1.0]], atol=1e-6)
    np.testing.assert_allclose(ret, [[0.45, 1.0]], atol=1e-6)


def test_gae_steps_over_a_hole_inside_a_row():
    adv, _ = ppo.gae(np.array([[0.0, 5.0, 1.0]]), np.array([[0.5, 9.0, 0.1]]), np.array([[1, 0, 1]]), 1.0, 1.0)
    # the masked middle token is not a time step: A_2 = 0.9, A_0 = (0 + 0.1 - 0.5) + 0.9
    np.testing.assert_allclose(adv, [[0.5, 0.0, 0.9]], atol=1e-6)


@SETTINGS
@given(rewards=floats_st, values=floats_st, lengths=lengths_st)
def test_gae_gamma_lambda_one_is_reward_to_go_minus_value(rewards, values, lengths):
    mask = right_padded_mask(lengths)
    adv, ret = gae_jit(rewards, values, mask, 1.0, 1.0)
    reward_to_go = np.cumsum((rewards * mask)[:, ::-1], axis=1)[:, ::-1]
    np.testing.assert_allclose(adv, (reward_to_go - values) * mask, atol=1e-5)
    np.testing.assert_allclose(ret, reward_to_go * mask, atol=1e-5)


@pytest.mark.parametrize("seed", range(4))
def test_gae_matches_float64_reference(seed):
    mask, draw = random_case(seed)
    rewards, values = draw(), draw()
    gamma, lam = [(1.0, 1.0), (0.99, 0.95), (0.9, 0.0), (0.5, 0.7)][seed]
    adv, ret = gae_jit(rewards, values, mask, gamma, lam)
    adv_np, ret_np = ref.gae_np(rewards, values, mask, gamma, lam)
    np.testing.assert_allclose(adv, adv_np, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ret, ret_np, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- aggregation


def test_aggregate_modes_hand_computed_and_bad_mode():
    x = np.array([[1.0, 2.0, 3.0], [4.0, 99.0, 99.0], [7.0, 8.0, 9.0]], np.float32)
    mask = np.array([[1, 1, 1], [1, 0, 0], [0, 0, 0]], np.float32)
    assert float(masked.aggregate(x, mask, "token_mean")) == pytest.approx(10.0 / 4)
    assert float(masked.aggregate(x, mask, "seq_mean")) == pytest.approx((2.0 + 4.0) / 2)
    assert float(masked.aggregate(x, mask, "seq_mean_token_sum")) == pytest.approx((6.0 + 4.0) / 2)
    with pytest.raises(ValueError, match="masked.py: aggregation must be one of"):
        masked.aggregate(x, mask, "sum")


def test_masked_mean_ignores_nan_in_padding_and_empty_is_zero():
    x = np.array([[1.0, float("nan")], [float("inf"), 3.0]], np.float32)
    assert float(masked.masked_mean(x, np.array([[1, 0], [0, 1]]))) == 2.0
    np.testing.assert_allclose(masked.masked_mean(x, np.array([[1, 0], [0, 0]]), axis=1), [1.0, 0.0])
    assert float(masked.masked_mean(x, np.zeros((2, 2)))) == 0.0


# ----------------------------------------------------------------------------- policy loss


def _ratio_case():
    """Row 0: (ratio 1.5, A 1), (0.5, 1), (1.5, -1); row 1: (0.5, -1) then padding; row 2 empty."""
    nan = float("nan")
    log_ratio = np.log(np.array([[1.5, 0.5, 1.5], [0.5, 1.0, 1.0], [1.0, 1.0, 1.0]]))
    old_logp = np.full((3, 3), -1.0)
    logp = old_logp + log_ratio
    logp[1, 1:] = nan
    logp[2, :] = np.inf
    adv = np.array([[1.0, 1.0, -1.0], [-1.0, nan, 5.0], [nan, 1.0, 1.0]])
    mask = np.array([[1, 1, 1], [1, 0, 0], [0, 0, 0]], bool)
    return logp.astype(np.float32), old_logp.astype(np.float32), adv.astype(np.float32), mask


@pytest.mark.parametrize(
    "aggregation, expected",
    # per-token losses: row 0 -> -1.2 (clipped), -0.5, 1.5; row 1 -> 0.8 (clipped)
    [("token_mean", 0.6 / 4), ("seq_mean", (-0.2 / 3 + 0.8) / 2), ("seq_mean_token_sum", (-0.2 + 0.8) / 2)],
)
def test_policy_loss_hand_computed(aggregation, expected):
    logp, old_logp, adv, mask = _ratio_case()
    loss, metrics = ppo.policy_loss(logp, old_logp, adv, mask, clip_eps=0.2, aggregation=aggregation)
    assert float(loss) == pytest.approx(expected, abs=1e-6)
    assert float(metrics["clip_fraction"]) == pytest.approx(0.5)
    assert float(metrics["ratio_mean"]) == pytest.approx(1.0, abs=1e-6)
    kl = (2 * (0.5 - math.log(1.5)) + 2 * (-0.5 - math.log(0.5))) / 4
    assert float(metrics["approx_kl"]) == pytest.approx(kl, abs=1e-6)
    grads = jax.grad(lambda lp: ppo.policy_loss(lp, old_logp, adv, mask, 0.2, aggregation=aggregation)[0])(logp)
    assert np.isfinite(np.asarray(grads)).all()
    assert not np.asarray(grads)[~mask].any()


def test_policy_loss_dual_clip_bounds_negative_advantages():
    logp = np.log(np.array([[5.0, 5.0, 0.5]], np.float32))
    adv = np.array([[-1.0, 1.0, -1.0]], np.float32)
    mask = np.ones((1, 3))
    old = np.zeros((1, 3), np.float32)
    _, plain = ppo.policy_loss(logp, old, adv, mask, 0.2)
    loss, metrics = ppo.policy_loss(logp, old, adv, mask, 0.2, dual_clip=3.0)
    # token 0: min(max(5, 1.2), 3) = 3; token 1 (A > 0): max(-5, -1.2) = -1.2; token 2: 0.8 (below the bound)
    assert float(plain["policy_loss"]) == pytest.approx((5.0 - 1.2 + 0.8) / 3, abs=1e-5)
    assert float(loss) == pytest.approx((3.0 - 1.2 + 0.8) / 3, abs=1e-5)
    assert float(metrics["dual_clip_fraction"]) == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="dual_clip must be > 1"):
        ppo.policy_loss(logp, old, adv, mask, 0.2, dual_clip=0.5)


def test_policy_loss_empty_response_is_zero_without_nan():
    z = jnp.zeros((2, 3))
    loss, metrics = ppo.policy_loss(z, z, jnp.ones((2, 3)), z, 0.2)
    assert float(loss) == 0.0
    assert all(np.isfinite(float(v)) for v in metrics.values())
    grads = jax.grad(lambda lp: ppo.policy_loss(lp, z, jnp.ones((2, 3)), z, 0.2)[0])(z)
    assert not np.asarray(grads).any()


def test_policy_loss_is_float32_for_bf16_inputs():
    logp, old_logp, adv, mask = _ratio_case()
    bf = lambda a: jnp.asarray(np.nan_to_num(a, posinf=0.0)).astype(jnp.bfloat16)  # noqa: E731
    loss, metrics = ppo.policy_loss(bf(logp), bf(old_logp), bf(adv), mask, 0.2)
    assert loss.dtype == jnp.float32 and metrics["approx_kl"].dtype == jnp.float32


@SETTINGS
@given(
    advantages=floats_st,
    logp=floats_st,
    lengths=lengths_st,
    aggregation=st.sampled_from(masked.AGGREGATIONS),
)
def test_policy_gradient_at_ratio_one_is_the_pg_estimate(advantages, logp, lengths, aggregation):
    mask = right_padded_mask(lengths)
    grads = policy_grad_at_ratio_one(logp, advantages, mask, aggregation)
    n = mask.sum(axis=1, keepdims=True)
    num_seqs = max(int((n > 0).sum()), 1)
    denominator = {
        "token_mean": max(mask.sum(), 1.0),
        "seq_mean": np.maximum(n, 1.0) * num_seqs,
        "seq_mean_token_sum": num_seqs,
    }[aggregation]
    np.testing.assert_allclose(grads, -advantages * mask / denominator, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize(
    "aggregation, dual_clip", [("token_mean", None), ("seq_mean", 3.0), ("seq_mean_token_sum", None)]
)
def test_policy_loss_matches_float64_reference(seed, aggregation, dual_clip):
    mask, draw = random_case(seed)
    old_logp = -np.abs(draw())
    logp = old_logp + draw(0.3)
    adv = draw()
    loss, metrics = policy_loss_jit(
        logp, old_logp, adv, mask, clip_eps=0.2, dual_clip=dual_clip, aggregation=aggregation
    )
    loss_np, metrics_np = ref.policy_loss_np(logp, old_logp, adv, mask, 0.2, dual_clip, aggregation)
    assert float(loss) == pytest.approx(loss_np, rel=1e-5, abs=1e-5)
    for key, value in metrics_np.items():
        assert float(metrics[key]) == pytest.approx(value, rel=1e-5, abs=1e-5), key


# ----------------------------------------------------------------------------- value loss


def test_value_loss_hand_computed():
    values = np.array([[1.5, 1.5, 0.0]], np.float32)
    old = np.array([[1.0, 1.0, 0.0]], np.float32)
    returns = np.array([[2.0, 1.0, 0.0]], np.float32)
    mask = np.array([[1, 1, 0]])
    loss, metrics = ppo.value_loss(values, old, returns, mask, clip_eps=0.2)
    # token 0: max(0.25, (1.2 - 2)^2 = 0.64); token 1: max(0.25, (1.2 - 1)^2 = 0.04)
    assert float(loss) == pytest.approx(0.5 * (0.64 + 0.25) / 2, abs=1e-6)
    assert float(metrics["value_clip_fraction"]) == pytest.approx(0.5)
    unclipped, _ = ppo.value_loss(values, old, returns, mask)
    assert float(unclipped) == pytest.approx(0.5 * 0.25, abs=1e-6)
    empty, empty_metrics = ppo.value_loss(values, old, returns, np.zeros((1, 3)), clip_eps=0.2)
    assert float(empty) == 0.0 and all(np.isfinite(float(v)) for v in empty_metrics.values())


def test_explained_variance_perfect_constant_and_flat_targets():
    returns = np.array([[1.0, 2.0, 3.0, 50.0]], np.float32)
    mask = np.array([[1, 1, 1, 0]])
    assert float(ppo.explained_variance(returns, returns, mask)) == pytest.approx(1.0)
    assert float(ppo.explained_variance(np.full_like(returns, 7.0), returns, mask)) == pytest.approx(0.0, abs=1e-6)
    assert float(ppo.explained_variance(returns, np.ones_like(returns), mask)) == 0.0
    rounding = np.ones_like(returns) + np.array([[0.0, 1e-7, -1e-7, 0.0]], np.float32)  # var ~7e-15
    assert float(ppo.explained_variance(returns, rounding, mask)) == 0.0


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("clip_eps, aggregation", [(None, "token_mean"), (0.2, "token_mean"), (0.2, "seq_mean")])
def test_value_loss_matches_float64_reference(seed, clip_eps, aggregation):
    mask, draw = random_case(seed)
    old = draw()
    values = old + draw(0.5)
    returns = draw()
    loss, metrics = value_loss_jit(values, old, returns, mask, clip_eps=clip_eps, aggregation=aggregation)
    loss_np, metrics_np = ref.value_loss_np(values, old, returns, mask, clip_eps, aggregation)
    assert float(loss) == pytest.approx(loss_np, rel=1e-5, abs=1e-5)
    assert float(metrics["explained_variance"]) == pytest.approx(metrics_np["explained_variance"], abs=1e-5)


def test_entropy_loss_is_negative_mean_entropy():
    loss, metrics = ppo.entropy_loss(np.array([[1.0, 3.0, 100.0]]), np.array([[1, 1, 0]]))
    assert float(loss) == -2.0 and float(metrics["entropy"]) == 2.0


# ----------------------------------------------------------------------------- KL


def test_kl_estimators_hand_values_and_masking():
    logp, ref_logp = np.array([[0.0, 0.0]]), np.array([[-0.5, np.inf]])
    mask = np.array([[1, 0]])
    np.testing.assert_allclose(ppo.kl_penalty(logp, ref_logp, "k1", mask), [[0.5, 0.0]])
    np.testing.assert_allclose(ppo.kl_penalty(logp, ref_logp, "k2", mask), [[0.125, 0.0]])
    np.testing.assert_allclose(ppo.kl_penalty(logp, ref_logp, "k3", mask), [[math.exp(-0.5) - 0.5, 0.0]], rtol=1e-6)
    grads = jax.grad(lambda lp: ppo.kl_penalty(lp, ref_logp, "k3", mask).sum())(jnp.asarray(logp, jnp.float32))
    np.testing.assert_allclose(grads, [[1 - math.exp(-0.5), 0.0]], rtol=1e-6)
    with pytest.raises(ValueError, match="kl kind must be one of"):
        ppo.kl_penalty(logp, ref_logp, "k4")


@SETTINGS
@given(st.lists(st.floats(-3, 3), min_size=5, max_size=5), st.lists(st.floats(-3, 3), min_size=5, max_size=5))
def test_k1_and_k3_are_unbiased_and_k3_nonnegative(pi_logits, ref_logits):
    logp = np.asarray(jax.nn.log_softmax(jnp.asarray(pi_logits, jnp.float32)))
    ref_logp = np.asarray(jax.nn.log_softmax(jnp.asarray(ref_logits, jnp.float32)))
    pi = np.exp(logp.astype(np.float64))
    kl = float(np.sum(pi * (logp - ref_logp)))  # KL(pi || ref) exactly, over the 5 outcomes
    k1, k3 = (np.asarray(ppo.kl_penalty(logp, ref_logp, kind)) for kind in ("k1", "k3"))
    assert float(np.sum(pi * k1)) == pytest.approx(kl, abs=1e-5)
    assert float(np.sum(pi * k3)) == pytest.approx(kl, abs=1e-5)
    assert (k3 >= -1e-7).all()


# ----------------------------------------------------------------------------- advantage normalisation


def _normalize_case():
    rng = np.random.default_rng(7)
    adv = (rng.normal(size=(16, 5)) * 3 + 1).astype(np.float32)
    mask = right_padded_mask(rng.integers(0, 6, size=16), t=5)
    adv[mask == 0] = np.nan  # padding must not leak into the statistics
    return adv, mask


def test_normalize_advantages_matches_numpy():
    adv, mask = _normalize_case()
    out = normalize_jit(adv, mask)
    np.testing.assert_allclose(out, ref.normalize_advantages_np(adv, mask), rtol=1e-5, atol=1e-5)
    valid = np.asarray(out)[mask == 1]
    assert valid.mean() == pytest.approx(0.0, abs=1e-5) and valid.std() == pytest.approx(1.0, abs=1e-5)
    assert float(jnp.abs(ppo.normalize_advantages(adv, np.zeros_like(mask))).sum()) == 0.0


def test_normalize_advantages_sharded_on_8_devices_equals_unsharded_numpy():
    assert jax.device_count() == 8
    adv, mask = _normalize_case()
    expected = ref.normalize_advantages_np(adv, mask)
    mesh = Mesh(np.array(jax.devices()), ("data",))
    sharding = NamedSharding(mesh, P("data"))
    adv_s, mask_s = jax.device_put(adv, sharding), jax.device_put(mask, sharding)
    assert len(adv_s.addressable_shards) == 8
    np.testing.assert_allclose(normalize_jit(adv_s, mask_s), expected, rtol=1e-5, atol=1e-5)

    per_shard = jax.shard_map(
        functools.partial(ppo.normalize_advantages, axis_name="data"),
        mesh=mesh,
        in_specs=(P("data"), P("data")),
        out_specs=P("data"),
    )
    np.testing.assert_allclose(jax.jit(per_shard)(adv_s, mask_s), expected, rtol=1e-5, atol=1e-5)
    # without the psum each shard would whiten with its own statistics: the test can fail
    local_only = jax.shard_map(
        ppo.normalize_advantages, mesh=mesh, in_specs=(P("data"), P("data")), out_specs=P("data")
    )
    assert not np.allclose(np.asarray(jax.jit(local_only)(adv_s, mask_s)), expected, atol=1e-3)


# ----------------------------------------------------------------------------- running statistics


@SETTINGS
@given(
    chunks=st.lists(
        st.tuples(floats_st, st.lists(st.booleans(), min_size=B * T, max_size=B * T)), min_size=1, max_size=4
    )
)
def test_running_stats_equal_numpy_of_concatenation(chunks):
    state = ppo.running_stats_init()
    seen = []
    for x, mask_list in chunks:
        mask = np.asarray(mask_list).reshape(B, T)
        state = running_update_jit(state, x * 10 + 5, mask)
        seen.append((x * 10 + 5)[mask])
    seen = np.concatenate(seen).astype(np.float64)
    assert float(state.count) == len(seen)
    if len(seen):
        assert float(state.mean) == pytest.approx(seen.mean(), rel=1e-5, abs=1e-4)
        assert float(state.var) == pytest.approx(seen.var(), rel=1e-4, abs=1e-3)
    else:
        assert float(state.mean) == 0.0 and float(state.var) == 1.0


def test_running_stats_normalize_and_denormalize():
    x = np.array([1.0, 2.0, 3.0, 4.0], np.float32)
    state = ppo.running_stats_update(ppo.running_stats_init(), x)
    assert float(state.mean) == pytest.approx(2.5) and float(state.var) == pytest.approx(1.25)
    normed = ppo.running_stats_normalize(state, x)
    np.testing.assert_allclose(normed, (x - 2.5) / math.sqrt(1.25), rtol=1e-6)
    np.testing.assert_allclose(ppo.running_stats_normalize(state, x, center=False), x / math.sqrt(1.25), rtol=1e-6)
    np.testing.assert_allclose(ppo.running_stats_denormalize(state, normed), x, rtol=1e-6)
    unchanged = ppo.running_stats_update(state, x, np.zeros(4))
    assert [float(a) for a in unchanged] == [float(a) for a in state]


# ----------------------------------------------------------------------------- GRPO / RLOO


def test_grpo_advantages_hand_computed():
    scores = np.array([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0], np.float32)
    # group 0: mean 0.5, std 0.5; group 1: constant -> 0
    np.testing.assert_allclose(ppo.grpo_advantages(scores, 4, eps=0.0)[:4], [1, -1, -1, 1], rtol=1e-6)
    np.testing.assert_allclose(ppo.grpo_advantages(scores, 4)[4:], 0.0)
    np.testing.assert_allclose(ppo.grpo_advantages(scores, 4, scale_by_std=False), [0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0])
    with pytest.raises(ValueError, match="group_size must be >= 1 and divide the batch size 8"):
        ppo.grpo_advantages(scores, 3)


def test_rloo_advantages_hand_computed_and_scaled_centring():
    scores = np.array([1.0, 0.0, 0.0, 1.0, 3.0, 1.0], np.float32)
    np.testing.assert_allclose(ppo.rloo_advantages(scores[:4], 4), [2 / 3, -2 / 3, -2 / 3, 2 / 3], rtol=1e-6)
    # RLOO equals G / (G - 1) times the group-centred score
    np.testing.assert_allclose(ppo.rloo_advantages(scores, 2), [1, -1, -1, 1, 2, -2], rtol=1e-6)
    with pytest.raises(ValueError, match="group_size >= 2"):
        ppo.rloo_advantages(scores, 1)


def test_broadcast_to_tokens():
    out = ppo.broadcast_to_tokens(np.array([2.0, -1.0, 5.0]), np.array([[1, 1, 0], [1, 0, 0], [0, 0, 0]]))
    np.testing.assert_array_equal(out, [[2, 2, 0], [-1, 0, 0], [0, 0, 0]])
