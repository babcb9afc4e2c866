"""Direct preference optimisation losses: DPO and its variants, SimPO.

Axes: B preference pairs, T tokens. Inputs are per-sequence log-probs summed over the
response tokens (``sequence_logp``). float32 math whatever the input dtype.
"""
import chex
import jax
import jax.numpy as jnp

from rlr.losses.masked import as_f32, as_mask, masked_mean, optional_mask

DPO_KINDS = ("sigmoid", "cdpo", "robust", "ipo", "hinge")


def sequence_logp(token_logp: jax.Array, mask: jax.Array) -> jax.Array:
    """log pi(y | x) = sum_t mask[b, t] * token_logp[b, t]: [B, T] -> [B] float32.

    Masked entries are ignored even when they hold inf/NaN; an empty response gives 0.
    """
    chex.assert_rank([token_logp, mask], 2)
    chex.assert_equal_shape([token_logp, mask])
    return jnp.sum(jnp.where(as_mask(mask), as_f32(token_logp), 0.0), axis=-1)


def _preference_metrics(
    chosen_rewards: jax.Array, rejected_rewards: jax.Array, valid: jax.Array
) -> dict[str, jax.Array]:
    return {
        "rewards/chosen": masked_mean(chosen_rewards, valid),
        "rewards/rejected": masked_mean(rejected_rewards, valid),
        "rewards/margin": masked_mean(chosen_rewards - rejected_rewards, valid),
        "rewards/accuracy": masked_mean(chosen_rewards > rejected_rewards, valid),
    }


def dpo_loss(
    policy_chosen_logp: jax.Array,
    policy_rejected_logp: jax.Array,
    ref_chosen_logp: jax.Array,
    ref_rejected_logp: jax.Array,
    beta: float,
    kind: str = "sigmoid",
    label_smoothing: float = 0.0,
    mask: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """DPO-family loss on preference pairs, averaged over the valid pairs.

    With h = (log pi(y_w) - log ref(y_w)) - (log pi(y_l) - log ref(y_l)) and
    eps = ``label_smoothing``:
    - ``sigmoid``: -log sigmoid(beta h)   (Rafailov et al. 2023, "Direct Preference Optimization")
    - ``cdpo``:   -(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h), 0 <= eps < 0.5
                  (conservative DPO, Mitchell 2023: labels flipped with probability eps)
    - ``robust``: [-(1 - eps) log sigmoid(beta h) + eps log sigmoid(-beta h)] / (1 - 2 eps)
                  (rDPO, Chowdhury et al. 2024: unbiased under label noise eps)
    - ``ipo``:    (h - 1 / (2 beta))^2   (Azar et al. 2023, "A General Theoretical Paradigm ...";
                  IPO was stated with length-averaged log-probs: pass those to follow it)
    - ``hinge``:  max(0, 1 - beta h)     (SLiC, Zhao et al. 2023)

    All inputs [B] float (summed log-probs); ``mask`` [B] optional marks valid pairs (padded
    pairs are ignored; no valid pair gives loss 0). Metrics: loss, rewards/chosen and
    rewards/rejected (beta * (log pi - log ref)), rewards/margin, rewards/accuracy
    (share of pairs with chosen reward > rejected reward).
    """
    chex.assert_rank([policy_chosen_logp, policy_rejected_logp, ref_chosen_logp, ref_rejected_logp], 1)
    chex.assert_equal_shape([policy_chosen_logp, policy_rejected_logp, ref_chosen_logp, ref_rejected_logp])
    if kind not in DPO_KINDS:
        raise ValueError(f"rlr/losses/dpo.py: kind must be one of {DPO_KINDS}, got {kind!r}")
    if kind in ("cdpo", "robust"):
        if not 0.0 <= label_smoothing < 0.5:
            raise ValueError(
                f"rlr/losses/dpo.py: label_smoothing must be in [0, 0.5) for {kind!r}, got {label_smoothing!r}"
            )
    elif label_smoothing != 0.0:
        raise ValueError(
            f"rlr/losses/dpo.py: label_smoothing={label_smoothing!r} has no effect with kind={kind!r}; "
            "use kind='cdpo' or 'robust'"
        )
    if not beta > 0:
        raise ValueError(f"rlr/losses/dpo.py: beta must be > 0, got {beta!r}")
    valid = optional_mask(policy_chosen_logp, mask)
    chosen_logratio = jnp.where(valid, as_f32(policy_chosen_logp) - as_f32(ref_chosen_logp), 0.0)
    rejected_logratio = jnp.where(valid, as_f32(policy_rejected_logp) - as_f32(ref_rejected_logp), 0.0)
    h = chosen_logratio - rejected_logratio
    log_sig_pos = jax.nn.log_sigmoid(beta * h)
    log_sig_neg = jax.nn.log_sigmoid(-beta * h)
    if kind == "sigmoid":
        per_pair = -log_sig_pos
    elif kind == "cdpo":
        per_pair = -(1.0 - label_smoothing) * log_sig_pos - label_smoothing * log_sig_neg
    elif kind == "robust":
        per_pair = (-(1.0 - label_smoothing) * log_sig_pos + label_smoothing * log_sig_neg) / (
            1.0 - 2.0 * label_smoothing
        )
    elif kind == "ipo":
        per_pair = (h - 1.0 / (2.0 * beta)) ** 2
    else:
        per_pair = jax.nn.relu(1.0 - beta * h)
    loss = masked_mean(per_pair, valid)
    metrics = {"loss": loss, **_preference_metrics(beta * chosen_logratio, beta * rejected_logratio, valid)}
    return loss, metrics


def simpo_loss(
    chosen_logp_sum: jax.Array,
    rejected_logp_sum: jax.Array,
    chosen_len: jax.Array,
    rejected_len: jax.Array,
    beta: float,
    gamma: float,
    mask: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """SimPO (Meng et al. 2024, "Simple Preference Optimization with a Reference-Free Reward"):

        -log sigmoid(beta / |y_w| * log pi(y_w) - beta / |y_l| * log pi(y_l) - gamma)

    No reference model; the implicit reward is the length-normalised log-prob
    beta / |y| * log pi(y), gamma the target reward margin. All inputs [B]; lengths are
    token counts (clamped at 1). ``mask`` [B] optional marks valid pairs. Metrics: loss,
    rewards/chosen, rewards/rejected, rewards/margin, rewards/accuracy.
    """
    chex.assert_rank([chosen_logp_sum, rejected_logp_sum, chosen_len, rejected_len], 1)
    chex.assert_equal_shape([chosen_logp_sum, rejected_logp_sum, chosen_len, rejected_len])
    valid = optional_mask(chosen_logp_sum, mask)
    chosen_rewards = jnp.where(valid, beta * as_f32(chosen_logp_sum) / jnp.maximum(as_f32(chosen_len), 1.0), 0.0)
    rejected_rewards = jnp.where(
        valid, beta * as_f32(rejected_logp_sum) / jnp.maximum(as_f32(rejected_len), 1.0), 0.0
    )
    per_pair = -jax.nn.log_sigmoid(chosen_rewards - rejected_rewards - gamma)
    loss = masked_mean(per_pair, valid)
    return loss, {"loss": loss, **_preference_metrics(chosen_rewards, rejected_rewards, valid)}
