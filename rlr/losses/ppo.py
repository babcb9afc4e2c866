"""PPO: advantages (GAE, GRPO, RLOO), clipped policy and value losses, KL estimators.

Axes: B batch (sequences), T response tokens, G samples of one prompt (a group).
Responses are right-padded; ``mask`` [B, T] marks the valid response tokens (bool or
0/1 float). All math is float32 whatever the input dtype, and every function is
jit-compatible (branches only on Python configuration, never on array values).
Values at masked positions are never read: they are replaced by 0 before any
arithmetic, so padding holding inf/NaN cannot leak into a loss or its gradient.
"""
from typing import NamedTuple, Sequence

import chex
import jax
import jax.numpy as jnp

from rlr.losses.masked import aggregate, as_f32, as_mask, masked_mean, optional_mask

KL_KINDS = ("k1", "k2", "k3")

AxisName = str | Sequence[str] | None


def _global_sum(x: jax.Array, axis_name: AxisName) -> jax.Array:
    """Sum of all elements, also across the devices of ``axis_name`` when one is given.

    Under plain ``jit`` a reduction over a sharded array is already global (GSPMD);
    inside ``shard_map`` / ``pmap`` each device only sees its shard, hence the psum.
    """
    total = jnp.sum(x)
    return total if axis_name is None else jax.lax.psum(total, axis_name)


def gae(
    rewards: jax.Array, values: jax.Array, mask: jax.Array, gamma: float, lam: float
) -> tuple[jax.Array, jax.Array]:
    """Generalised advantage estimation (Schulman et al. 2016, "High-Dimensional
    Continuous Control Using Generalized Advantage Estimation").

        delta_t = r_t + gamma * V_{t+1} - V_t
        A_t     = delta_t + gamma * lam * A_{t+1}
        R_t     = A_t + V_t                          (the value target)

    rewards, values, mask: [B, T]. Computed by a reverse ``lax.scan`` over T. The
    value after the last valid token is 0 (the episode ends there). Masked positions
    are not time steps: they get A = R = 0 and are skipped, so with right padding the
    recursion starts fresh at each row's last valid token; a hole inside a row (e.g.
    tool output tokens) is stepped over. Rewards and values at masked positions are
    ignored. Returns (advantages [B, T], returns [B, T]), float32.
    """
    chex.assert_rank([rewards, values, mask], 2)
    chex.assert_equal_shape([rewards, values, mask])
    valid = as_mask(mask).T  # [T, B]
    r = jnp.where(valid, as_f32(rewards).T, 0.0)
    v = jnp.where(valid, as_f32(values).T, 0.0)

    def step(carry, xs):
        next_value, next_adv = carry  # [B], [B]: value and advantage of the next valid token
        r_t, v_t, valid_t = xs
        adv_t = r_t + gamma * next_value - v_t + gamma * lam * next_adv
        adv_t = jnp.where(valid_t, adv_t, 0.0)
        carry = (jnp.where(valid_t, v_t, next_value), jnp.where(valid_t, adv_t, next_adv))
        return carry, adv_t

    zeros = jnp.zeros(r.shape[1], jnp.float32)
    _, adv = jax.lax.scan(step, (zeros, zeros), (r, v, valid), reverse=True)
    return adv.T, (adv + v).T


def policy_loss(
    logp: jax.Array,
    old_logp: jax.Array,
    advantages: jax.Array,
    mask: jax.Array,
    clip_eps: float,
    dual_clip: float | None = None,
    aggregation: str = "token_mean",
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """PPO clipped surrogate loss (Schulman et al. 2017, "Proximal Policy Optimization").

        ratio = exp(logp - old_logp)
        l_t   = max(-A_t * ratio, -A_t * clip(ratio, 1 - eps, 1 + eps))
    With ``dual_clip`` = c > 1 (Ye et al. 2020, "Mastering Complex Control in MOBA
    Games with Deep RL"), tokens with A_t < 0 use min(l_t, -c * A_t), which bounds the
    loss when the ratio explodes. l_t is reduced with ``aggregate(., mask, aggregation)``.

    logp, old_logp, advantages, mask: [B, T]. Metrics (token means over valid tokens):
    policy_loss, clip_fraction (share of tokens where the clipped term is active),
    approx_kl (k3 estimate of KL(old || new): ratio - 1 - log ratio), ratio_mean and,
    with dual clip, dual_clip_fraction.
    """
    chex.assert_rank([logp, old_logp, advantages, mask], 2)
    chex.assert_equal_shape([logp, old_logp, advantages, mask])
    if dual_clip is not None and not dual_clip > 1.0:
        raise ValueError(f"rlr/losses/ppo.py: dual_clip must be > 1 (or None), got {dual_clip!r}")
    valid = as_mask(mask)
    log_ratio = jnp.where(valid, as_f32(logp) - as_f32(old_logp), 0.0)
    adv = jnp.where(valid, as_f32(advantages), 0.0)
    ratio = jnp.exp(log_ratio)
    unclipped = -adv * ratio
    clipped = -adv * jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    per_token = jnp.maximum(unclipped, clipped)
    metrics = {}
    if dual_clip is not None:
        dual_active = (adv < 0) & (per_token > -dual_clip * adv)
        per_token = jnp.where(dual_active, -dual_clip * adv, per_token)
        metrics["dual_clip_fraction"] = masked_mean(dual_active, mask)
    loss = aggregate(per_token, mask, aggregation)
    metrics.update(
        policy_loss=loss,
        clip_fraction=masked_mean(clipped > unclipped, mask),
        approx_kl=masked_mean(ratio - 1.0 - log_ratio, mask),
        ratio_mean=masked_mean(ratio, mask),
    )
    return loss, metrics


def explained_variance(predictions: jax.Array, targets: jax.Array, mask: jax.Array,
                       flat: float = 1e-8) -> jax.Array:
    """1 - Var[targets - predictions] / Var[targets] over valid tokens; 0 when Var[targets] <= flat.

    1 is a perfect critic, 0 one no better than a constant, negative one worse. Targets flatter
    than `flat` (a batch whose rewards are all 0, where Var[targets] is float rounding) give 0,
    not a ratio of rounding errors (-1e14).
    """
    y = as_f32(targets)
    residual = y - as_f32(predictions)
    var_y = masked_mean((y - masked_mean(y, mask)) ** 2, mask)
    var_res = masked_mean((residual - masked_mean(residual, mask)) ** 2, mask)
    spread = var_y > flat
    return jnp.where(spread, 1.0 - var_res / jnp.where(spread, var_y, 1.0), 0.0)


def value_loss(
    values: jax.Array,
    old_values: jax.Array,
    returns: jax.Array,
    mask: jax.Array,
    clip_eps: float | None = None,
    aggregation: str = "token_mean",
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Clipped value loss of PPO (Schulman et al. 2017; as in OpenAI baselines ppo2).

        l_t = 0.5 * max((V_t - R_t)^2, (clip(V_t, V_old_t - eps, V_old_t + eps) - R_t)^2)
    and l_t = 0.5 * (V_t - R_t)^2 when ``clip_eps`` is None; reduced with ``aggregate``.

    values, old_values, returns, mask: [B, T]. Metrics: value_loss,
    value_clip_fraction (share of tokens where the clipped term is larger),
    explained_variance (of returns by values), value_mean, return_mean.
    """
    chex.assert_rank([values, old_values, returns, mask], 2)
    chex.assert_equal_shape([values, old_values, returns, mask])
    valid = as_mask(mask)
    v = jnp.where(valid, as_f32(values), 0.0)
    ret = jnp.where(valid, as_f32(returns), 0.0)
    unclipped = (v - ret) ** 2
    if clip_eps is None:
        per_token = 0.5 * unclipped
        clip_fraction = jnp.zeros((), jnp.float32)
    else:
        old = jnp.where(valid, as_f32(old_values), 0.0)
        clipped = (old + jnp.clip(v - old, -clip_eps, clip_eps) - ret) ** 2
        per_token = 0.5 * jnp.maximum(unclipped, clipped)
        clip_fraction = masked_mean(clipped > unclipped, mask)
    loss = aggregate(per_token, mask, aggregation)
    metrics = {
        "value_loss": loss,
        "value_clip_fraction": clip_fraction,
        "explained_variance": explained_variance(v, ret, mask),
        "value_mean": masked_mean(v, mask),
        "return_mean": masked_mean(ret, mask),
    }
    return loss, metrics


def entropy_loss(
    entropy: jax.Array, mask: jax.Array, aggregation: str = "token_mean"
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Entropy bonus as a loss: -aggregate(H_t) (Mnih et al. 2016; Schulman et al. 2017).

    entropy: [B, T] per-token entropies of the policy (computed by the model in chunks).
    Minimising this loss raises entropy. Metrics: entropy (token mean over valid tokens).
    """
    chex.assert_equal_shape([entropy, mask])
    return -aggregate(entropy, mask, aggregation), {"entropy": masked_mean(entropy, mask)}


def kl_penalty(
    logp: jax.Array, ref_logp: jax.Array, kind: str = "k1", mask: jax.Array | None = None
) -> jax.Array:
    """Per-token estimators of KL(pi || ref) from tokens sampled from pi (J. Schulman,
    "Approximating KL divergence", 2020), with d = logp - ref_logp:

        k1 = d                      (unbiased, high variance, can be negative)
        k2 = 0.5 * d^2              (biased, low variance, >= 0)
        k3 = exp(-d) - 1 + d        (unbiased, low variance, >= 0)

    logp, ref_logp: [B, T] (any equal shapes). Returns float32 of the same shape, usable
    as a per-token reward penalty or as a loss term. With ``mask``, masked positions
    give exactly 0 (and a zero gradient) whatever the inputs hold there.
    """
    chex.assert_equal_shape([logp, ref_logp])
    if kind not in KL_KINDS:
        raise ValueError(f"rlr/losses/ppo.py: kl kind must be one of {KL_KINDS}, got {kind!r}")
    d = as_f32(logp) - as_f32(ref_logp)
    if mask is not None:
        chex.assert_equal_shape([logp, mask])
        d = jnp.where(as_mask(mask), d, 0.0)
    if kind == "k1":
        return d
    if kind == "k2":
        return 0.5 * d**2
    return jnp.expm1(-d) + d


def normalize_advantages(
    advantages: jax.Array, mask: jax.Array, axis_name: AxisName = None, eps: float = 1e-8
) -> jax.Array:
    """Whiten advantages over all valid tokens of the WHOLE batch: (A - mean) / sqrt(var + eps).

    mean and (population) var are taken over every valid token of the global batch; masked
    positions return 0. Advantage normalisation is one of the three factors that make
    PPO work in Xu et al. 2024 ("Is DPO Superior to PPO for LLM Alignment?").

    Under ``jit`` with a batch sharded over devices, jnp reductions are already global.
    Inside ``shard_map`` / ``pmap``, pass the batch axis name(s) as ``axis_name`` so the
    statistics are psum-ed over devices. advantages, mask: any equal shapes, e.g. [B, T].
    """
    chex.assert_equal_shape([advantages, mask])
    valid = as_mask(mask)
    a = jnp.where(valid, as_f32(advantages), 0.0)
    count = jnp.maximum(_global_sum(valid.astype(jnp.float32), axis_name), 1.0)
    mean = _global_sum(a, axis_name) / count
    var = _global_sum(jnp.where(valid, (a - mean) ** 2, 0.0), axis_name) / count
    return jnp.where(valid, (a - mean) * jax.lax.rsqrt(var + eps), 0.0)


class RunningMeanStd(NamedTuple):
    """Running scalar mean and (population) variance of every value seen so far.

    A pure pytree: carry it in the train state. ``count`` is float32 (exact up to 2^24
    values; beyond that the merge weights lose ~1e-7 relative precision, which is harmless).
    """

    count: jax.Array
    mean: jax.Array
    var: jax.Array


def running_stats_init() -> RunningMeanStd:
    """Empty statistics: count 0, mean 0, var 1 (so normalising before any update is identity)."""
    return RunningMeanStd(
        count=jnp.zeros((), jnp.float32), mean=jnp.zeros((), jnp.float32), var=jnp.ones((), jnp.float32)
    )


def running_stats_update(
    state: RunningMeanStd, x: jax.Array, mask: jax.Array | None = None, axis_name: AxisName = None
) -> RunningMeanStd:
    """Merge the valid entries of ``x`` (any shape) into ``state`` with the parallel
    algorithm of Chan, Golub and LeVeque (1979):

        n = n_a + n_b,  delta = mean_b - mean_a,  mean = mean_a + delta * n_b / n
        var = (var_a * n_a + var_b * n_b + delta^2 * n_a * n_b / n) / n

    The result equals numpy's mean / var of the concatenation of all valid entries seen.
    Used for reward and value normalisation (Xu et al. 2024). An update with no valid
    entry leaves ``state`` unchanged. ``axis_name``: psum the batch statistics over
    devices inside ``shard_map`` / ``pmap`` (not needed under plain jit).
    """
    valid = optional_mask(x, mask)
    xb = jnp.where(valid, as_f32(x), 0.0)
    n_b = _global_sum(valid.astype(jnp.float32), axis_name)
    safe_n_b = jnp.maximum(n_b, 1.0)
    mean_b = _global_sum(xb, axis_name) / safe_n_b
    var_b = _global_sum(jnp.where(valid, (xb - mean_b) ** 2, 0.0), axis_name) / safe_n_b
    n = state.count + n_b
    safe_n = jnp.maximum(n, 1.0)
    delta = mean_b - state.mean
    mean = state.mean + delta * n_b / safe_n
    m2 = state.var * state.count + var_b * n_b + delta**2 * state.count * n_b / safe_n
    empty = n_b == 0
    return RunningMeanStd(
        count=n,
        mean=jnp.where(empty, state.mean, mean),
        var=jnp.where(empty, state.var, m2 / safe_n),
    )


def running_stats_normalize(
    state: RunningMeanStd, x: jax.Array, center: bool = True, eps: float = 1e-8
) -> jax.Array:
    """(x - mean) / sqrt(var + eps), or x / sqrt(var + eps) with ``center=False`` (reward
    scaling without shifting, as in OpenAI baselines' VecNormalize)."""
    x = as_f32(x)
    if center:
        x = x - state.mean
    return x * jax.lax.rsqrt(state.var + eps)


def running_stats_denormalize(state: RunningMeanStd, x: jax.Array, eps: float = 1e-8) -> jax.Array:
    """Inverse of centred ``running_stats_normalize``: x * sqrt(var + eps) + mean. A value
    head trained on normalised returns predicts normalised values; this maps them back."""
    return as_f32(x) * jnp.sqrt(state.var + eps) + state.mean


def _groups(scores: jax.Array, group_size: int) -> jax.Array:
    """[B] -> [B // G, G]; the G samples of one prompt are contiguous in the batch."""
    chex.assert_rank(scores, 1)
    if group_size < 1 or scores.shape[0] % group_size:
        raise ValueError(
            f"rlr/losses/ppo.py: group_size must be >= 1 and divide the batch size "
            f"{scores.shape[0]}, got {group_size!r}"
        )
    return as_f32(scores).reshape(-1, group_size)


def grpo_advantages(
    scores: jax.Array, group_size: int, eps: float = 1e-6, scale_by_std: bool = True
) -> jax.Array:
    """Group-relative advantages of GRPO (Shao et al. 2024, DeepSeekMath):

        A_i = (r_i - mean_group(r)) / (std_group(r) + eps)

    with the population std (ddof 0) of the G samples of the same prompt;
    ``scale_by_std=False`` gives A_i = r_i - mean_group(r) (Dr. GRPO, Liu et al. 2025).
    scores: [B] with B = num_prompts * G, samples of one prompt contiguous
    ([p0 s0..s(G-1), p1 s0..]). Returns [B] float32.
    """
    r = _groups(scores, group_size)
    centred = r - jnp.mean(r, axis=-1, keepdims=True)
    if scale_by_std:
        centred = centred / (jnp.std(r, axis=-1, keepdims=True) + eps)
    return centred.reshape(-1)


def rloo_advantages(scores: jax.Array, group_size: int) -> jax.Array:
    """REINFORCE leave-one-out advantages (Ahmadian et al. 2024, "Back to Basics";
    Kool et al. 2019): A_i = r_i - (1 / (G - 1)) * sum_{j != i} r_j within each group.

    scores: [B] with B = num_prompts * G, samples of one prompt contiguous. G >= 2.
    Returns [B] float32.
    """
    if group_size < 2:
        raise ValueError(f"rlr/losses/ppo.py: rloo_advantages needs group_size >= 2, got {group_size!r}")
    r = _groups(scores, group_size)
    baseline = (jnp.sum(r, axis=-1, keepdims=True) - r) / (group_size - 1)
    return (r - baseline).reshape(-1)


def broadcast_to_tokens(seq_values: jax.Array, mask: jax.Array) -> jax.Array:
    """Spread a per-sequence quantity [B] (e.g. a GRPO/RLOO advantage) over the valid
    response tokens: out[b, t] = seq_values[b] if mask[b, t] else 0. Returns [B, T] float32."""
    chex.assert_rank([seq_values, mask], [1, 2])
    chex.assert_equal_shape_prefix([seq_values, mask], 1)
    return jnp.where(as_mask(mask), as_f32(seq_values)[:, None], 0.0)
