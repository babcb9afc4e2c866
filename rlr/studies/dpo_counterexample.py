"""The DPO-vs-PPO counterexample of Xu et al. (ICML 2024), "Is DPO Superior to PPO for LLM
Alignment? A Comprehensive Study", Sec. 4.1 (Theorem 4.1 and its example).

Three responses y1, y2, y3; the reference policy pi_ref = (0.5, 0.5, 0); one preference y1 > y2.
- DPO (Rafailov et al. 2023) minimises -log sigmoid(beta h) with
  h = log pi(y1)/pi_ref(y1) - log pi(y2)/pi_ref(y2) = log pi(y1) - log pi(y2) (pi_ref(y1) =
  pi_ref(y2)): the loss sees only the ratio pi(y1) / pi(y2), never pi(y3). So (0.1, 0, 0.9) and
  (1, 0, 0) both reach the infimum 0, and any two policies with the same ratio have the same loss.
  On a tabular softmax policy pi = softmax(theta) the DPO gradient w.r.t. theta_3 is exactly 0 and
  theta_1 + theta_2 is conserved, so gradient descent never takes mass off y3 on purpose: pi(y3)
  shrinks only as a side effect of e^theta_1 growing (it vanishes only as the log-ratio goes to
  infinity).
- RL (PPO's objective) maximises E_pi[r] - beta KL(pi || pi_ref) for a reward r fitted on the same
  data (Bradley-Terry on the single pair; r(y3) is never trained). Its optimum is
  pi*(y) = pi_ref(y) exp(r(y) / beta) / Z (Rafailov et al. 2023, eq. 4), so pi*(y3) = 0 whatever
  r(y3) is, and the mass goes to y1.

Where DPO's extra mass comes from in practice is generalisation: a response the data never shows
can share parameters with one it does. With logit(y3) = theta_1 + theta_3 ("y3 shares y1's
logit"), every DPO step that raises y1 raises y3 alike, so pi(y3) / pi(y1) stays fixed while
pi(y2) -> 0: from (0.05, 0.05, 0.9) DPO *increases* pi(y3), towards 0.9 / 0.95, at the same loss
as the RL optimum. RL cannot follow: KL(pi || pi_ref) is infinite for any pi(y3) > 0.

The RL optimum is computed in closed form and also reached by gradient ascent on
E_pi[r] - beta KL(pi || pi_ref) from several starts in the support of pi_ref (run_rl).

Matched fits: with reward-model learning rate lr, DPO at lr / beta^2 moves its implicit reward
margin beta * (log-ratio) exactly as gradient descent moves the BT margin r(y1) - r(y2) (both
follow m <- m + 2 lr sigmoid(-m)), so after the same number of steps DPO fits the pair exactly as
well as the reward model. From pi_ref, DPO then ends at the RL optimum; from a start with mass on
y3 it ends with the same preference fit and a large pi(y3). With beta = 1 (the default) the effect
is plain; with the paper's beta = 0.1 a matched fit needs a log-ratio 10 times larger, which on
the tabular parametrisation also squeezes pi(y3) (try --beta 0.1). A loss with a finite
minimiser stops earlier still: the SLiC hinge (kind="hinge") is exactly 0 once beta h >= 1, so
DPO from (0.05, 0.05, 0.9) halts with pi(y3) near 0.89 at the loss of (1, 0, 0).

    python -m rlr.studies.dpo_counterexample [--beta 1.0] [--steps 100] [--lr 1.0] [--rl-steps 2000]
"""
from __future__ import annotations

import argparse
import functools
import math
from typing import Mapping, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rlr.losses.dpo import dpo_loss
from rlr.losses.reward_model import bradley_terry_loss

PI_REF = (0.5, 0.5, 0.0)
CHOSEN, REJECTED = 0, 1  # the one preference of the data: y1 > y2
DEFAULT_STARTS: Mapping[str, tuple[float, float, float]] = {
    "reference": PI_REF,
    "uniform": (1 / 3, 1 / 3, 1 / 3),
    "mass on y3": (0.05, 0.05, 0.9),
}
RL_STARTS: Mapping[str, tuple[float, float, float]] = {  # RL needs KL(start || pi_ref) < inf
    "reference": PI_REF,
    "mostly y1": (0.9, 0.1, 0.0),
    "mostly y2": (0.1, 0.9, 0.0),
}
PARAMETRISATIONS = ("tabular", "shared")  # shared: logit(y3) = theta_1 + theta_3


def log_probs(policy: Sequence[float], name: str = "policy") -> np.ndarray:
    """log of a 3-response distribution [3] (float64), with log 0 = -inf; raises ValueError naming
    `name` unless it is 3 non-negative numbers summing to 1."""
    p = np.asarray(policy, dtype=np.float64)
    if p.shape != (3,) or np.any(p < 0) or not math.isclose(p.sum(), 1.0, abs_tol=1e-6):
        raise ValueError(f"{name}={tuple(policy)}: expected 3 non-negative probabilities summing to 1")
    with np.errstate(divide="ignore"):
        return np.log(p)


def _ref_pair_logp(ref: Sequence[float]) -> np.ndarray:
    """log pi_ref of (y1, y2) [2]: the only reference log-probs DPO uses (log pi_ref(y3) = log 0
    never enters). Both must be > 0, or the DPO loss is undefined."""
    logp = log_probs(ref, "ref")[[CHOSEN, REJECTED]]
    if not np.all(np.isfinite(logp)):
        raise ValueError(f"ref={tuple(ref)}: pi_ref(y1) and pi_ref(y2) must be > 0 for the DPO loss")
    return logp


def _pair_loss(policy_logp: jax.Array, ref_logp: jax.Array, beta: float, kind: str) -> jax.Array:
    """rlr's dpo_loss on the single pair (y1 > y2): policy_logp [3], ref_logp [2] -> scalar."""
    loss, _ = dpo_loss(policy_logp[CHOSEN][None], policy_logp[REJECTED][None], ref_logp[0][None],
                       ref_logp[1][None], beta=beta, kind=kind)
    return loss


def dpo_loss_of_policy(policy: Sequence[float], beta: float, kind: str = "sigmoid",
                       ref: Sequence[float] = PI_REF) -> float:
    """The DPO loss (rlr.losses.dpo.dpo_loss, `kind`) of a tabular policy on the pair y1 > y2.

    For kind="sigmoid" and pi_ref(y1) = pi_ref(y2) this is log(1 + (pi(y2) / pi(y1))^beta):
    0 when pi(y2) = 0, whatever pi(y3) is.
    """
    policy_logp = jnp.asarray(log_probs(policy), jnp.float32)
    ref_logp = jnp.asarray(_ref_pair_logp(ref), jnp.float32)
    return float(_pair_loss(policy_logp, ref_logp, beta, kind))


def _logits(theta: jax.Array, parametrisation: str) -> jax.Array:
    """The policy's logits [3] of its parameters theta [3]: theta itself ("tabular"), or
    (theta_1, theta_2, theta_1 + theta_3) ("shared": y3 shares y1's logit)."""
    if parametrisation == "shared":
        return theta.at[2].add(theta[0])
    return theta


def _initial_theta(start_logp: np.ndarray, parametrisation: str) -> np.ndarray:
    """The theta [3] whose policy is the start (log-probs [3], -inf allowed)."""
    if parametrisation not in PARAMETRISATIONS:
        raise ValueError(f"parametrisation={parametrisation!r}: expected one of {PARAMETRISATIONS}")
    if parametrisation == "tabular":
        return start_logp
    if not np.isfinite(start_logp[0]):
        raise ValueError("start: the 'shared' parametrisation needs pi(y1) > 0 (logit_3 = theta_1 + theta_3)")
    return np.array([start_logp[0], start_logp[1], start_logp[2] - start_logp[0]])


@functools.partial(jax.jit, static_argnames=("beta", "steps", "kind", "parametrisation"))
def _dpo_descent(theta: jax.Array, ref_logp: jax.Array, beta: float, lr: float, steps: int,
                 kind: str, parametrisation: str) -> jax.Array:
    def loss(t):
        return _pair_loss(jax.nn.log_softmax(_logits(t, parametrisation)), ref_logp, beta, kind)

    def step(_, t):
        grad = jax.grad(loss)(t)
        return t - lr * jnp.where(jnp.isfinite(t), grad, 0.0)  # a -inf logit (pi = 0) stays put

    return jax.lax.fori_loop(0, steps, step, theta)


def run_dpo(start: Sequence[float], beta: float, steps: int, lr: float, kind: str = "sigmoid",
            ref: Sequence[float] = PI_REF, parametrisation: str = "tabular") -> np.ndarray:
    """Gradient descent on the DPO loss (rlr.losses.dpo.dpo_loss, `kind`) of a 3-response policy
    pi = softmax(logits(theta)), theta [3] starting where pi = start (log 0 = -inf: a response the
    start never produces stays at 0). logits = theta ("tabular") or (theta_1, theta_2,
    theta_1 + theta_3) ("shared").

    theta <- theta - lr * d loss / d theta, `steps` times. Returns the end policy [3] (float64).
    """
    theta = _initial_theta(log_probs(start, "start"), parametrisation)
    ref_logp = jnp.asarray(_ref_pair_logp(ref), jnp.float32)
    theta = _dpo_descent(jnp.asarray(theta, jnp.float32), ref_logp, beta, lr, steps, kind, parametrisation)
    return np.asarray(jax.nn.softmax(_logits(theta, parametrisation)), np.float64)


@functools.partial(jax.jit, static_argnames=("steps",))
def _bt_descent(reward: jax.Array, lr: float, steps: int) -> jax.Array:
    def loss(r):
        value, _ = bradley_terry_loss(r[CHOSEN][None], r[REJECTED][None])
        return value

    return jax.lax.fori_loop(0, steps, lambda _, r: r - lr * jax.grad(loss)(r), reward)


def fit_bt_reward(steps: int, lr: float) -> np.ndarray:
    """A tabular reward r [3] fitted to the one pair y1 > y2 with rlr's bradley_terry_loss,
    -log sigmoid(r(y1) - r(y2)), by `steps` of gradient descent from r = 0.

    Only r(y1), r(y2) move (by +-lr sigmoid(-(r1 - r2)) a step); r(y3) stays 0: the data never
    covers y3. Returns r as float64.
    """
    reward = _bt_descent(jnp.zeros((3,), jnp.float32), lr, steps)
    return np.asarray(reward, np.float64)


def kl_regularised_optimum(reward: Sequence[float], beta: float,
                           ref: Sequence[float] = PI_REF) -> np.ndarray:
    """argmax_pi E_pi[r] - beta KL(pi || pi_ref) = pi_ref exp(r / beta) / Z (Rafailov et al. 2023,
    eq. 4), in float64. A response with pi_ref = 0 gets exactly 0, whatever its reward."""
    ref_p = np.exp(log_probs(ref, "ref"))
    r = np.asarray(reward, np.float64)
    supported = ref_p > 0
    shift = np.max(r[supported]) / beta  # for stable exp; the unsupported rewards never enter
    weights = np.where(supported, ref_p * np.exp(np.where(supported, r / beta - shift, 0.0)), 0.0)
    return weights / weights.sum()


def rl_objective(policy_logp: jax.Array, reward: jax.Array, ref_logp: jax.Array,
                 beta: float) -> jax.Array:
    """E_pi[r] - beta KL(pi || pi_ref) = sum_y pi(y) (r(y) - beta log(pi(y) / pi_ref(y))) over
    responses whose log-probs are all finite (the support of pi_ref); arrays [k]."""
    pi = jnp.exp(policy_logp)
    return jnp.sum(pi * (reward - beta * (policy_logp - ref_logp)))


@functools.partial(jax.jit, static_argnames=("beta", "steps"))
def _rl_ascent(theta: jax.Array, reward: jax.Array, ref_logp: jax.Array, beta: float, lr: float,
               steps: int) -> jax.Array:
    def objective(t):
        return rl_objective(jax.nn.log_softmax(t), reward, ref_logp, beta)

    return jax.lax.fori_loop(0, steps, lambda _, t: t + lr * jax.grad(objective)(t), theta)


def run_rl(start: Sequence[float], reward: Sequence[float], beta: float, steps: int, lr: float,
           ref: Sequence[float] = PI_REF) -> np.ndarray:
    """Gradient ascent on the KL-regularised RL objective (rl_objective) of a tabular softmax
    policy from `start`, over the responses pi_ref supports (the others keep probability 0: any
    mass there makes the KL infinite). A start with mass outside pi_ref's support is a
    ValueError. Returns the end policy [3] (float64)."""
    start_logp, ref_logp = log_probs(start, "start"), log_probs(ref, "ref")
    supported = np.isfinite(ref_logp)
    if np.any(np.isfinite(start_logp) & ~supported):
        raise ValueError(f"start={tuple(start)}: puts mass where pi_ref={tuple(ref)} has none, so "
                         f"KL(pi || pi_ref) is infinite; RL starts inside pi_ref's support")
    theta = _rl_ascent(jnp.asarray(start_logp[supported], jnp.float32),
                       jnp.asarray(np.asarray(reward, np.float64)[supported], jnp.float32),
                       jnp.asarray(ref_logp[supported], jnp.float32), beta, lr, steps)
    end = np.zeros(3)
    end[supported] = np.asarray(jax.nn.softmax(theta), np.float64)
    return end


def matched_dpo_lr(rm_lr: float, beta: float) -> float:
    """The DPO learning rate rm_lr / beta^2 at which the implicit reward margin of a tabular DPO
    policy, beta * (theta_1 - theta_2), follows the same steps as the BT reward margin under
    rm_lr: both are m <- m + 2 rm_lr sigmoid(-m) (d loss / d theta_1 = -beta sigmoid(-beta h))."""
    return rm_lr / beta ** 2


class Row(NamedTuple):
    """One start of the table: its name, the start policy, DPO's end policy and loss, the RL
    optimum (the same for every start: it does not depend on where optimisation begins)."""

    name: str
    start: np.ndarray
    dpo_end: np.ndarray
    dpo_loss: float
    rl_end: np.ndarray


def counterexample(beta: float = 1.0, steps: int = 100, rm_lr: float = 1.0,
                   starts: Optional[Mapping[str, Sequence[float]]] = None,
                   parametrisation: str = "tabular") -> list[Row]:
    """For every start: DPO's end policy after `steps` of gradient descent at matched_dpo_lr (with
    `parametrisation`), and the KL-regularised RL optimum for the BT reward fitted with `steps`
    at rm_lr."""
    starts = DEFAULT_STARTS if starts is None else starts
    rl_end = kl_regularised_optimum(fit_bt_reward(steps, rm_lr), beta)
    lr = matched_dpo_lr(rm_lr, beta)
    rows = []
    for name, start in starts.items():
        end = run_dpo(start, beta, steps, lr, parametrisation=parametrisation)
        rows.append(Row(name, np.asarray(start, np.float64), end, dpo_loss_of_policy(end, beta), rl_end))
    return rows


def rl_runs(reward: Sequence[float], beta: float, steps: int, lr: float,
            starts: Optional[Mapping[str, Sequence[float]]] = None) -> dict[str, np.ndarray]:
    """run_rl's end policy from every start (default RL_STARTS): all the same optimum."""
    starts = RL_STARTS if starts is None else starts
    return {name: run_rl(start, reward, beta, steps, lr) for name, start in starts.items()}


def _fmt(p: np.ndarray) -> str:
    return "(" + ", ".join(f"{x:.3f}" for x in p) + ")"


def format_table(rows: Sequence[Row]) -> str:
    """The rows as a fixed-width text table."""
    header = f"{'start':<12} {'pi_0':<23} {'DPO end':<23} {'DPO loss':>9}   {'RL optimum':<23}"
    lines = [header, "-" * len(header)]
    for row in rows:
        lines.append(f"{row.name:<12} {_fmt(row.start):<23} {_fmt(row.dpo_end):<23} "
                     f"{row.dpo_loss:>9.4f}   {_fmt(row.rl_end):<23}")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--beta", type=float, default=1.0, help="KL / DPO coefficient beta")
    parser.add_argument("--steps", type=int, default=100, help="gradient steps of both fits")
    parser.add_argument("--lr", type=float, default=1.0, help="reward-model learning rate "
                        "(DPO uses lr / beta^2, the matched rate)")
    parser.add_argument("--rl-steps", type=int, default=2000, help="gradient-ascent steps of RL")
    args = parser.parse_args(argv)
    beta = args.beta
    reward = fit_bt_reward(args.steps, args.lr)
    print(f"pi_ref = {PI_REF}, data: y1 > y2, beta = {beta}")
    print(f"DPO loss of (0.1, 0, 0.9): {dpo_loss_of_policy((0.1, 0.0, 0.9), beta):.4f}   "
          f"of (1, 0, 0): {dpo_loss_of_policy((1.0, 0.0, 0.0), beta):.4f}")
    print(f"BT reward after {args.steps} steps: {_fmt(reward)}")
    print(f"KL-regularised RL optimum pi_ref exp(r / beta) / Z: {_fmt(kl_regularised_optimum(reward, beta))}")
    print(f"RL by {args.rl_steps} steps of gradient ascent on E[r] - beta KL, from starts in pi_ref's support:")
    for name, end in rl_runs(reward, beta, args.rl_steps, args.lr).items():
        print(f"  {name:<12} {_fmt(np.asarray(RL_STARTS[name]))} -> {_fmt(end)}")
    for parametrisation, title in (("tabular", "DPO, tabular softmax"),
                                   ("shared", "DPO, y3 shares y1's logit (logit_3 = theta_1 + theta_3)")):
        print(f"\n{title}, {args.steps} steps at the matched rate lr / beta^2:")
        print(format_table(counterexample(beta, args.steps, args.lr, parametrisation=parametrisation)))


if __name__ == "__main__":
    main()
