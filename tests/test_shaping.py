"""Reward shaping: golden values, edge cases, Clip / Delta properties, a float64 numpy reference."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlr.rewards.shaping import (
    PRM_TRANSFORMS,
    RewardSpec,
    clip_process_rewards,
    delta_process_rewards,
    last_token_index,
    process_rewards,
    scatter_to_tokens,
    shape_rewards,
)

B, T, K = 3, 8, 4  # shapes of the property tests (fixed: one compilation per op)


def test_last_token_index():
    mask = np.array([[1, 1, 0], [0, 0, 0], [1, 0, 1]], bool)
    np.testing.assert_array_equal(last_token_index(mask), [1, -1, 2])
    np.testing.assert_array_equal(last_token_index(mask.astype(np.float32)), [1, -1, 2])


def test_scatter_to_tokens_golden():
    values = np.array([[1.0, 2.0, np.nan], [3.0, 4.0, 5.0]], np.float32)
    positions = np.array([[0, 2, 99], [1, 1, 3]], np.int32)  # invalid step: garbage value and position
    step_mask = np.array([[1, 1, 0], [1, 1, 1]], bool)
    out = scatter_to_tokens(values, positions, step_mask, T=4)
    np.testing.assert_array_equal(out, [[1, 0, 2, 0], [0, 7, 0, 5]])  # same token: added


def test_clip_golden():
    s = np.array([[0.9, 0.2, 0.5, 7.0]], np.float32)
    m = np.array([[1, 1, 1, 0]], bool)
    np.testing.assert_allclose(clip_process_rewards(s, m, eta=0.5), [[0.0, -0.3, 0.0, 0.0]], atol=1e-6)
    np.testing.assert_allclose(clip_process_rewards(s, m), [[0.0, 0.0, 0.0, 0.0]])


@pytest.mark.parametrize(
    "scores, mask, expected",
    [
        ([0.9, 0.7, 0.4, 0.8], [1, 1, 1, 1], [0.2, 0.3, 0.4, 0.0]),  # K=4: s1-s2, s2-s3, s3, 0
        ([0.6, 0.1, 0.0, 0.0], [1, 1, 0, 0], [0.6, 0.0, 0.0, 0.0]),  # K=2: s1, 0
        ([0.5, np.nan, 0.0, 0.0], [1, 0, 0, 0], [0.0, 0.0, 0.0, 0.0]),  # K=1 edge: the last step gets 0
        ([0.0, 0.0, 0.0, 0.0], [0, 0, 0, 0], [0.0, 0.0, 0.0, 0.0]),  # no steps
        ([0.9, np.nan, 0.7, 0.3], [1, 0, 1, 1], [0.2, 0.0, 0.7, 0.0]),  # valid steps need not be a prefix
    ],
)
def test_delta_golden(scores, mask, expected):
    out = delta_process_rewards(np.array([scores], np.float32), np.array([mask], bool))
    np.testing.assert_allclose(out, [expected], atol=1e-6)


def test_clip_delta_golden():
    spec = RewardSpec(prm_weight=1.0, prm_transform="clip_delta", prm_eta=0.5)
    s = np.array([[0.2, 0.9, 0.1, 0.3]], np.float32)  # clipped: -0.3, 0, -0.4, -0.2
    out = process_rewards(spec, s, np.ones((1, 4), bool))
    np.testing.assert_allclose(out, [[-0.3, 0.4, -0.4, 0.0]], atol=1e-6)  # sums to -0.3


def _batch():
    """B=2, T=5: row 0 has 4 tokens and 3 steps, row 1 has 2 tokens and 1 step."""
    mask = np.array([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0]], np.float32)
    return dict(
        response_mask=mask,
        success=np.array([1.0, 0.0], np.float32),
        orm_scores=np.array([0.5, -2.0], np.float32),
        prm_scores=np.array([[0.9, 0.6, 0.8], [0.4, 0.0, 0.0]], np.float32),
        step_positions=np.array([[0, 2, 3], [1, 0, 0]], np.int32),
        step_mask=np.array([[1, 1, 1], [1, 0, 0]], bool),
        kl=np.full((2, 5), 0.5, np.float32),
    )


def test_shape_rewards_golden():
    spec = RewardSpec(success_weight=1.0, orm_weight=2.0, prm_weight=0.5, prm_transform="delta",
                      length_coef=0.1, kl_coef=0.2)
    rewards, metrics = shape_rewards(spec, **_batch())
    # row 0: delta = [0.3, 0.6, 0] * 0.5 at tokens 0, 2; outcome 1 + 2*0.5 = 2 at token 3;
    #        every token -0.1 (length) - 0.1 (kl)
    # row 1: delta of one step = 0; outcome 0 + 2*(-2) = -4 at token 1
    expected = np.array([[0.15 - 0.2, -0.2, 0.3 - 0.2, 2.0 - 0.2, 0.0],
                         [-0.2, -4.0 - 0.2, 0.0, 0.0, 0.0]])
    np.testing.assert_allclose(rewards, expected, atol=1e-6)
    assert rewards.dtype == jnp.float32
    expected_metrics = {"reward/success": 0.5, "reward/orm": (1.0 - 4.0) / 2, "reward/prm": 0.45 / 2,
                        "reward/length": (-0.4 - 0.2) / 2, "reward/kl": (-0.4 - 0.2) / 2,
                        "reward/total": expected.sum() / 2}
    assert set(metrics) == set(expected_metrics)
    for key, value in expected_metrics.items():
        np.testing.assert_allclose(metrics[key], value, atol=1e-6, err_msg=key)


def test_length_final_and_reward_clip():
    batch = _batch()
    spec = RewardSpec(orm_weight=10.0, length_coef=0.5, length_mode="final", reward_clip=3.0)
    rewards, metrics = shape_rewards(spec, batch["response_mask"], success=batch["success"],
                                     orm_scores=batch["orm_scores"])
    # outcome row 0: 1 + 5 - 0.5*4 = 4 -> 3; row 1: 0 - 20 - 0.5*2 = -21 -> -3
    np.testing.assert_allclose(rewards, [[0, 0, 0, 3, 0], [0, -3, 0, 0, 0]], atol=1e-6)
    np.testing.assert_allclose(metrics["reward/clip_frac"], 1.0)
    np.testing.assert_allclose(metrics["reward/length"], -1.5)  # parts are reported before clipping
    spec = RewardSpec(success_weight=1.0, kl_coef=10.0, reward_clip=2.0, reward_clip_mode="per_token")
    rewards, metrics = shape_rewards(spec, batch["response_mask"], success=batch["success"], kl=batch["kl"])
    np.testing.assert_allclose(rewards, [[-2, -2, -2, -2, 0], [-2, -2, 0, 0, 0]], atol=1e-6)
    np.testing.assert_allclose(metrics["reward/clip_frac"], 1.0)


def test_all_padding_rows_get_zero_and_no_nan():
    batch = _batch()
    batch["response_mask"][1] = 0
    for name in ("success", "orm_scores"):
        batch[name][1] = np.nan
    batch["prm_scores"][1] = np.nan
    batch["kl"][1] = np.inf
    spec = RewardSpec(orm_weight=1.0, prm_weight=1.0, prm_transform="clip_delta", length_coef=0.1, kl_coef=0.1)
    rewards, metrics = shape_rewards(spec, **batch)
    assert np.all(np.isfinite(rewards)) and np.all(rewards[1] == 0)
    assert all(np.isfinite(v) for v in metrics.values())
    # metrics average over non-empty rows only: row 0 alone
    np.testing.assert_allclose(metrics["reward/total"], rewards[0].sum(), atol=1e-6)
    empty, metrics = shape_rewards(RewardSpec(), np.zeros((2, 3)), success=np.ones(2))
    assert np.all(empty == 0) and metrics["reward/total"] == 0


def test_zero_weight_parts_need_no_input_and_missing_inputs_are_named():
    mask = np.ones((2, 3), bool)
    rewards, metrics = shape_rewards(RewardSpec(), mask, success=np.array([1.0, 0.0]))
    np.testing.assert_array_equal(rewards, [[0, 0, 1], [0, 0, 0]])
    assert set(metrics) == {"reward/success", "reward/total"}
    with pytest.raises(ValueError, match="success_weight is non-zero, so the input 'success' is required"):
        shape_rewards(RewardSpec(), mask)
    with pytest.raises(ValueError, match="'step_mask'"):
        shape_rewards(RewardSpec(success_weight=0.0, prm_weight=1.0), mask,
                      prm_scores=np.zeros((2, 2)), step_positions=np.zeros((2, 2), np.int32))
    with pytest.raises(ValueError, match="'kl'"):
        shape_rewards(RewardSpec(success_weight=0.0, kl_coef=0.1), mask)
    with pytest.raises(ValueError, match=r"orm_scores must have shape \(2,\)"):
        shape_rewards(RewardSpec(success_weight=0.0, orm_weight=1.0), mask, orm_scores=np.zeros(3))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"prm_transform": "clipdelta"}, r"prm_transform must be one of \('none', 'clip', 'delta', 'clip_delta'\)"),
        ({"length_mode": "sum"}, "length_mode must be one of"),
        ({"reward_clip_mode": "x"}, "reward_clip_mode must be one of"),
        ({"reward_clip": 0.0}, "reward_clip must be None or a number > 0"),
        ({"kl_coef": -0.1}, "kl_coef must be >= 0"),
        ({"prm_weight": float("nan")}, "prm_weight must be a finite number"),
        ({"success_weight": "1"}, "success_weight must be a finite number"),
    ],
)
def test_reward_spec_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RewardSpec(**kwargs)


def test_jit_matches_eager():
    spec = RewardSpec(orm_weight=1.0, prm_weight=0.3, prm_transform="clip_delta", prm_eta=0.5,
                      length_coef=0.01, reward_clip=1.5, kl_coef=0.05)
    batch = _batch()
    eager = shape_rewards(spec, **batch)
    jitted = jax.jit(shape_rewards, static_argnums=0)(spec, **batch)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), eager, jitted)


# ---------------------------------------------------------------- properties


@st.composite
def step_batches(draw):
    """A batch [B, T] with prefix response masks and K-padded step scores at valid tokens."""
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    lengths = draw(st.lists(st.integers(0, T), min_size=B, max_size=B))
    mask = np.arange(T)[None, :] < np.array(lengths)[:, None]
    n_steps = [draw(st.integers(0, min(K, n))) for n in lengths]
    positions = np.zeros((B, K), np.int32)
    for b, (n, length) in enumerate(zip(n_steps, lengths)):
        positions[b, :n] = np.sort(rng.choice(length, size=n, replace=False)) if n else []
    step_mask = np.arange(K)[None, :] < np.array(n_steps)[:, None]
    return dict(
        response_mask=mask,
        success=rng.integers(0, 2, B).astype(np.float32),
        orm_scores=rng.normal(size=B).astype(np.float32),
        prm_scores=np.where(step_mask, rng.uniform(size=(B, K)), np.nan).astype(np.float32),
        step_positions=positions,
        step_mask=step_mask,
        kl=rng.normal(size=(B, T)).astype(np.float32),
    )


def _reference_process(scores: list[float], transform: str, eta: float) -> list[float]:
    """Gao et al. (2024) transforms of one row's valid step scores, in float64 loops."""
    s = [float(x) for x in scores]
    if transform in ("clip", "clip_delta"):
        s = [min(x - eta, 0.0) for x in s]
    if transform in ("delta", "clip_delta"):
        n = len(s)
        s = [s[k] - s[k + 1] if k < n - 2 else (s[k] if k == n - 2 else 0.0) for k in range(n)]
    return s


def _reference_rewards(spec: RewardSpec, batch) -> np.ndarray:
    """Unclipped per-token rewards in float64, straight from the formulas of shape_rewards."""
    out = np.zeros((B, T))
    for b in range(B):
        valid = np.flatnonzero(batch["response_mask"][b])
        if valid.size == 0:
            continue
        last = valid[-1]
        out[b, last] += spec.success_weight * batch["success"][b] + spec.orm_weight * batch["orm_scores"][b]
        steps = np.flatnonzero(batch["step_mask"][b])
        shaped = _reference_process(batch["prm_scores"][b, steps], spec.prm_transform, spec.prm_eta)
        for k, r in zip(steps, shaped):
            out[b, batch["step_positions"][b, k]] += spec.prm_weight * r
        out[b, valid] -= spec.length_coef + spec.kl_coef * batch["kl"][b, valid].astype(np.float64)
    return out


@given(step_batches(), st.sampled_from(PRM_TRANSFORMS), st.floats(-1, 1), st.floats(0, 2), st.floats(0, 1))
@settings(max_examples=40, deadline=None)
def test_shape_rewards_equals_float64_reference(batch, transform, alpha, eta, kl_coef):
    spec = RewardSpec(success_weight=1.0, orm_weight=0.5, prm_weight=alpha, prm_transform=transform,
                      prm_eta=eta, length_coef=0.01, kl_coef=kl_coef)
    rewards, metrics = shape_rewards(spec, **batch)
    reference = _reference_rewards(spec, batch)
    np.testing.assert_allclose(rewards, reference, atol=1e-5)
    n_rows = max(int(batch["response_mask"].any(-1).sum()), 1)
    np.testing.assert_allclose(metrics["reward/total"], reference.sum() / n_rows, atol=1e-5)
    parts = sum(float(v) for k, v in metrics.items() if k != "reward/total")
    np.testing.assert_allclose(metrics["reward/total"], parts, atol=1e-4)  # total = sum of the parts


@given(step_batches(), st.floats(0, 2))
@settings(max_examples=30, deadline=None)
def test_process_reward_return_properties(batch, eta):
    s, m = batch["prm_scores"], batch["step_mask"]
    n = m.sum(-1)
    first = np.where(n > 0, s[:, 0], 0.0).astype(np.float64)
    delta = np.asarray(delta_process_rewards(s, m)).sum(-1)
    np.testing.assert_allclose(delta[n >= 2], first[n >= 2], atol=1e-6)  # telescopes to s_1
    np.testing.assert_array_equal(delta[n < 2], 0.0)
    clip = np.asarray(clip_process_rewards(s, m, eta))
    assert np.all(clip <= 0.0)
    spec = RewardSpec(prm_weight=1.0, prm_transform="clip_delta", prm_eta=eta)
    clip_delta = np.asarray(process_rewards(spec, s, m)).sum(-1)
    np.testing.assert_allclose(clip_delta[n >= 2], np.minimum(first - eta, 0.0)[n >= 2], atol=1e-6)


@given(st.lists(st.floats(0, 1), min_size=2, max_size=K - 1), st.floats(0, 1))
@settings(max_examples=30, deadline=None)
def test_delta_return_cannot_grow_by_appending_steps(scores, extra):
    """Appending a step (say a repeated correct one) leaves the Delta return at s_1."""
    def delta_return(values):
        padded = np.zeros((1, K), np.float32)
        padded[0, : len(values)] = values
        mask = np.arange(K)[None, :] < len(values)
        return float(delta_process_rewards(padded, mask).sum())

    base = delta_return(scores)
    np.testing.assert_allclose(delta_return(scores + [extra]), base, atol=1e-6)
    np.testing.assert_allclose(base, np.float32(scores[0]), atol=1e-6)


def test_reward_spec_is_hashable_and_frozen():
    spec = RewardSpec()
    assert hash(spec) == hash(RewardSpec())
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.kl_coef = 1.0  # type: ignore[misc]
