"""The DPO-vs-PPO counterexample of Xu et al. (2024), Sec. 4.1: hand-computed values and an
independent float64 numpy reference of the gradient-descent dynamics."""
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from rlr.studies import dpo_counterexample as ce


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _numpy_dpo_descent(start, beta, lr, steps):
    """Reference: d loss / d theta_1 = -beta sigmoid(-beta (theta_1 - theta_2)) = -d loss / d theta_2
    (pi_ref(y1) = pi_ref(y2)), d loss / d theta_3 = 0."""
    with np.errstate(divide="ignore"):
        theta = np.log(np.asarray(start, np.float64))
    for _ in range(steps):
        g = beta * _sigmoid(-beta * (theta[0] - theta[1]))
        theta[0] += lr * g
        theta[1] -= lr * g
    p = np.exp(theta - theta.max())
    return p / p.sum()


@pytest.mark.parametrize("beta", [0.1, 1.0])
@pytest.mark.parametrize("kind", ["sigmoid", "hinge"])
def test_dpo_cannot_tell_the_out_of_data_policy_from_the_rl_policy(beta, kind):
    # pi(y2) = 0 gives h = +inf: both policies reach the infimum 0 of the loss.
    assert ce.dpo_loss_of_policy((0.1, 0.0, 0.9), beta, kind) == 0.0
    assert ce.dpo_loss_of_policy((1.0, 0.0, 0.0), beta, kind) == 0.0


def test_dpo_loss_hand_values_depend_only_on_the_ratio():
    # sigmoid DPO with pi_ref(y1) = pi_ref(y2): log(1 + (pi(y2) / pi(y1))^beta).
    assert ce.dpo_loss_of_policy((10 / 11, 1 / 11, 0.0), 1.0) == pytest.approx(math.log(1.1), abs=1e-6)
    assert ce.dpo_loss_of_policy((1 / 11, 0.1 / 11, 0.9), 1.0) == pytest.approx(math.log(1.1), abs=1e-6)
    assert ce.dpo_loss_of_policy((0.1, 0.01, 0.89), 0.5) == pytest.approx(math.log1p(0.1 ** 0.5), abs=1e-6)
    assert ce.dpo_loss_of_policy((0.5, 0.5, 0.0), 0.1) == pytest.approx(math.log(2.0), abs=1e-6)


@settings(max_examples=25, deadline=None)
@given(a=st.floats(0.01, 1.0), p=st.floats(0.01, 0.99), beta=st.sampled_from([0.1, 1.0]))
def test_moving_mass_to_y3_leaves_the_dpo_loss_unchanged(a, p, beta):
    on_y3 = (a * p, a * (1 - p), 1 - a * p - a * (1 - p))
    assert ce.dpo_loss_of_policy(on_y3, beta) == pytest.approx(ce.dpo_loss_of_policy((p, 1 - p, 0.0), beta),
                                                                abs=1e-5)


def test_bt_reward_hand_values():
    # One step from r = 0 at lr 1: r1 += sigmoid(0) = 0.5, r2 -= 0.5; r3 never moves.
    np.testing.assert_allclose(ce.fit_bt_reward(1, 1.0), [0.5, -0.5, 0.0], atol=1e-7)
    second = 0.5 + 1.0 / (1.0 + math.e)  # + sigmoid(-1)
    np.testing.assert_allclose(ce.fit_bt_reward(2, 1.0), [second, -second, 0.0], atol=1e-6)


def test_kl_regularised_optimum_hand_values():
    # pi* = pi_ref exp(r / beta) / Z; pi_ref = (.5, .5, 0).
    s1 = 1.0 / (1.0 + math.exp(-1.0))
    np.testing.assert_allclose(ce.kl_regularised_optimum([0.5, -0.5, 0.0], 1.0), [s1, 1 - s1, 0.0], atol=1e-12)
    s2 = 1.0 / (1.0 + math.exp(-2.0))
    np.testing.assert_allclose(ce.kl_regularised_optimum([0.5, -0.5, 0.0], 0.5), [s2, 1 - s2, 0.0], atol=1e-12)
    # A reward however large on the unsupported y3 gives it no mass.
    assert ce.kl_regularised_optimum([0.5, -0.5, 1e6], 0.1)[2] == 0.0


def test_dpo_descent_matches_numpy_reference_and_never_moves_theta_3():
    start, beta, lr, steps = (0.05, 0.05, 0.9), 1.0, 1.0, 100
    end = ce.run_dpo(start, beta, steps, lr)
    expected = _numpy_dpo_descent(start, beta, lr, steps)
    np.testing.assert_allclose(end, expected, atol=1e-5)
    # theta_1 + theta_2 conserved and theta_3 fixed: pi1 * pi2 / pi3^2 = start's value.
    assert end[0] * end[1] / end[2] ** 2 == pytest.approx(0.05 * 0.05 / 0.9 ** 2, rel=1e-4)


def test_counterexample_dpo_keeps_mass_on_y3_while_rl_puts_none():
    rows = {row.name: row for row in ce.counterexample(beta=1.0, steps=100, rm_lr=1.0)}
    rl = rows["reference"].rl_end
    reward = ce.fit_bt_reward(100, 1.0)
    np.testing.assert_allclose(rl, ce.kl_regularised_optimum(reward, 1.0), atol=1e-12)
    assert rl[2] == 0.0 and rl[0] > 0.99
    # Matched learning rates: from pi_ref DPO reaches the RL optimum itself ...
    np.testing.assert_allclose(rows["reference"].dpo_end, rl, atol=1e-5)
    # ... and from a start with mass on y3 the same preference fit with pi(y3) large.
    y3 = rows["mass on y3"]
    np.testing.assert_allclose(y3.dpo_end, _numpy_dpo_descent((0.05, 0.05, 0.9), 1.0, 1.0, 100), atol=1e-5)
    assert y3.dpo_end[2] > 0.5
    assert y3.dpo_loss == pytest.approx(rows["reference"].dpo_loss, abs=1e-6)  # DPO sees no difference
    assert y3.dpo_end[0] / y3.dpo_end[1] == pytest.approx(rl[0] / rl[1], rel=1e-3)


def test_dpo_with_a_shared_logit_increases_mass_on_y3_at_the_rl_optimum_loss():
    rows = {row.name: row for row in ce.counterexample(beta=1.0, steps=100, rm_lr=1.0,
                                                       parametrisation="shared")}
    rl = rows["reference"].rl_end
    np.testing.assert_allclose(rows["reference"].dpo_end, rl, atol=1e-5)  # no y3 mass to share
    # logit_3 - logit_1 = theta_3 stays log(0.9 / 0.05) = log 18, and pi(y2) / pi(y1) is the RL
    # optimum's ratio q: the end policy is (1, q, 18) / (19 + q).
    q = rl[1] / rl[0]
    end = rows["mass on y3"].dpo_end
    np.testing.assert_allclose(end, np.array([1.0, q, 18.0]) / (19.0 + q), rtol=1e-4)
    assert end[2] > 0.9  # up from the start's 0.9
    assert rows["mass on y3"].dpo_loss == pytest.approx(rows["reference"].dpo_loss, abs=1e-6)


def test_hinge_dpo_stops_with_mass_on_y3_at_loss_zero():
    # One step at lr 0.6 gives theta_1 - theta_2 = 1.2 >= 1 / beta: the SLiC hinge is 0, the
    # gradient too, and pi stays (0.05 e^0.6, 0.05 e^-0.6, 0.9) / Z: y3 keeps its mass at the
    # loss of (1, 0, 0).
    end = ce.run_dpo((0.05, 0.05, 0.9), beta=1.0, steps=50, lr=0.6, kind="hinge")
    expected = np.array([0.05 * math.exp(0.6), 0.05 * math.exp(-0.6), 0.9])
    np.testing.assert_allclose(end, expected / expected.sum(), rtol=1e-5)
    assert ce.dpo_loss_of_policy(end, 1.0, "hinge") == 0.0
    assert ce.dpo_loss_of_policy((1.0, 0.0, 0.0), 1.0, "hinge") == 0.0


def test_rl_gradient_ascent_reaches_the_closed_form_optimum_from_every_start():
    reward = ce.fit_bt_reward(100, 1.0)
    optimum = ce.kl_regularised_optimum(reward, 1.0)
    for name, end in ce.rl_runs(reward, beta=1.0, steps=2000, lr=1.0).items():
        np.testing.assert_allclose(end, optimum, atol=1e-4, err_msg=name)
        assert end[2] == 0.0
    # The objective's value at hand-computed points: E[r] at pi_ref is 0 and KL(pi_ref || pi_ref) = 0.
    logp = np.log([0.5, 0.5])
    assert float(ce.rl_objective(logp, np.array([1.0, -1.0]), logp, 1.0)) == pytest.approx(0.0, abs=1e-7)
    # pi = (0.8, 0.2): E[r] = 0.6, KL = 0.8 log 1.6 + 0.2 log 0.4.
    value = ce.rl_objective(np.log([0.8, 0.2]), np.array([1.0, -1.0]), logp, 0.5)
    kl = 0.8 * math.log(1.6) + 0.2 * math.log(0.4)
    assert float(value) == pytest.approx(0.6 - 0.5 * kl, rel=1e-6)  # float32
    with pytest.raises(ValueError, match="KL"):
        ce.run_rl((0.05, 0.05, 0.9), reward, 1.0, 10, 1.0)


def test_bad_policies_are_errors():
    with pytest.raises(ValueError, match="policy"):
        ce.dpo_loss_of_policy((0.5, 0.6, 0.0), 1.0)
    with pytest.raises(ValueError, match="pi_ref"):
        ce.dpo_loss_of_policy((0.5, 0.5, 0.0), 1.0, ref=(1.0, 0.0, 0.0))


def test_main_prints_the_table(capsys):
    ce.main(["--steps", "10"])
    out = capsys.readouterr().out
    assert "DPO loss of (0.1, 0, 0.9): 0.0000" in out
    rows = [line for line in out.splitlines() if line.startswith(("reference", "uniform", "mass on y3"))]
    assert len(rows) == 6 and rows[0].rstrip().endswith("0.000)")  # two tables: tabular, shared
    assert "  mostly y2    (0.100, 0.900, 0.000) -> (" in out
