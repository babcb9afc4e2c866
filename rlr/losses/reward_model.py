"""Reward-model losses: pairwise Bradley-Terry, outcome (ORM) and process (PRM) BCE.

Axes: B sequences, T tokens, K reasoning steps. Scores are logits (unbounded reals).
float32 math whatever the input dtype.
"""
import chex
import jax
import jax.numpy as jnp

from rlr.losses.masked import as_f32, as_mask, masked_mean, optional_mask


def gather_at(x: jax.Array, idx: jax.Array) -> jax.Array:
    """out[b, k] = x[b, idx[b, k]]: [B, T], [B, K] int -> [B, K].

    Indices are clipped to [0, T - 1] (jit cannot raise on values), so padded step
    slots may hold any index as long as the caller masks them out.
    """
    chex.assert_rank([x, idx], 2)
    chex.assert_equal_shape_prefix([x, idx], 1)
    idx = jnp.clip(jnp.asarray(idx).astype(jnp.int32), 0, x.shape[1] - 1)  # also no negative wrap-around
    return jnp.take_along_axis(x, idx, axis=1)


def last_token_scores(token_scores: jax.Array, mask: jax.Array) -> jax.Array:
    """Score at the last valid token of each row, where an ORM reads its verdict: [B, T] -> [B].

    The last valid token is the largest t with mask[b, t] set (works for right or left
    padding); a row with no valid token gives 0.
    """
    chex.assert_rank([token_scores, mask], 2)
    chex.assert_equal_shape([token_scores, mask])
    valid = as_mask(mask)
    positions = jnp.arange(valid.shape[1])
    last = jnp.max(jnp.where(valid, positions, -1), axis=1)  # [B], -1 for empty rows
    score = gather_at(as_f32(token_scores), jnp.maximum(last, 0)[:, None])[:, 0]
    return jnp.where(last >= 0, score, 0.0)


def bradley_terry_loss(
    chosen_scores: jax.Array, rejected_scores: jax.Array, mask: jax.Array | None = None
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Pairwise reward-model loss of the Bradley-Terry model (Bradley & Terry 1952; as in
    Ouyang et al. 2022, InstructGPT): mean over valid pairs of -log sigmoid(r_w - r_l).

    chosen_scores, rejected_scores: [B]; ``mask`` [B] optional marks valid pairs. Metrics:
    loss, accuracy (share of pairs with r_w > r_l), margin (mean r_w - r_l),
    chosen_mean, rejected_mean.
    """
    chex.assert_rank([chosen_scores, rejected_scores], 1)
    chex.assert_equal_shape([chosen_scores, rejected_scores])
    valid = optional_mask(chosen_scores, mask)
    margin = jnp.where(valid, as_f32(chosen_scores) - as_f32(rejected_scores), 0.0)
    loss = masked_mean(-jax.nn.log_sigmoid(margin), valid)
    metrics = {
        "loss": loss,
        "accuracy": masked_mean(margin > 0, valid),
        "margin": masked_mean(margin, valid),
        "chosen_mean": masked_mean(chosen_scores, valid),
        "rejected_mean": masked_mean(rejected_scores, valid),
    }
    return loss, metrics


def _bce_with_metrics(
    logits: jax.Array, labels: jax.Array, valid: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Masked mean binary cross-entropy with logits and the accuracy of sign(logit) vs label.

    BCE(s, y) = softplus(s) - y * s = -y log sigmoid(s) - (1 - y) log sigmoid(-s).
    Returns (loss, accuracy, number of valid entries).
    """
    s = jnp.where(valid, as_f32(logits), 0.0)
    y = jnp.where(valid, as_f32(labels), 0.0)
    loss = masked_mean(jax.nn.softplus(s) - y * s, valid)
    accuracy = masked_mean((s > 0) == (y > 0.5), valid)
    return loss, accuracy, jnp.sum(valid.astype(jnp.float32))


def outcome_bce_loss(
    scores: jax.Array, labels: jax.Array, mask: jax.Array | None = None
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Outcome reward model (ORM) loss (Cobbe et al. 2021, "Training Verifiers to Solve Math
    Word Problems"): binary cross-entropy of the logit ``scores`` [B] against the
    correctness ``labels`` [B] in {0, 1}, averaged over valid rows (``mask`` [B] optional).

    Metrics: loss, accuracy (sign of the logit vs the label), positive_rate (mean label).
    """
    chex.assert_rank([scores, labels], 1)
    chex.assert_equal_shape([scores, labels])
    valid = optional_mask(scores, mask)
    loss, accuracy, _ = _bce_with_metrics(scores, labels, valid)
    return loss, {"loss": loss, "accuracy": accuracy, "positive_rate": masked_mean(labels, valid)}


def process_bce_loss(
    token_scores: jax.Array,
    step_end_positions: jax.Array,
    step_labels: jax.Array,
    step_mask: jax.Array,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Process reward model (PRM) loss (Lightman et al. 2023, "Let's Verify Step by Step"):
    binary cross-entropy of the logit read at each step's last token against the step
    label, averaged over all valid steps of the batch.

    token_scores: [B, T] logits at every token; step_end_positions: [B, K] int token
    index of each step's last token; step_labels: [B, K] in {0, 1}; step_mask: [B, K]
    marks real steps. Metrics: loss, step_accuracy, num_steps.
    """
    chex.assert_rank([token_scores, step_end_positions, step_labels, step_mask], 2)
    chex.assert_equal_shape([step_end_positions, step_labels, step_mask])
    step_scores = gather_at(token_scores, step_end_positions)  # [B, K]
    loss, accuracy, num_steps = _bce_with_metrics(step_scores, step_labels, as_mask(step_mask))
    return loss, {"loss": loss, "step_accuracy": accuracy, "num_steps": num_steps}
