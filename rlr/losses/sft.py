"""Supervised fine-tuning loss: masked token cross-entropy from target log-probs.

Axes: B sequences, T tokens. The model computes log pi(target_t | prefix) in chunks over
the vocabulary, so this loss never sees [B, T, V] logits. float32 math.
"""
import chex
import jax
import jax.numpy as jnp

from rlr.losses.masked import aggregate, as_f32, as_mask, masked_mean


def sft_loss(
    token_logp: jax.Array, loss_mask: jax.Array, aggregation: str = "token_mean"
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Negative log-likelihood of the targets: aggregate(-log p(y_t | y_<t, x), loss_mask).

    token_logp: [B, T] log-probs of the target tokens; loss_mask: [B, T] marks the tokens
    trained on (e.g. the response, not the prompt). ``aggregation`` as in
    ``rlr.losses.masked.aggregate`` (token_mean is the usual cross-entropy). Metrics: loss,
    perplexity = exp(token-mean NLL), num_tokens. An empty mask gives loss 0, perplexity 1.
    """
    chex.assert_rank([token_logp, loss_mask], 2)
    chex.assert_equal_shape([token_logp, loss_mask])
    nll = -as_f32(token_logp)
    loss = aggregate(nll, loss_mask, aggregation)
    metrics = {
        "loss": loss,
        "perplexity": jnp.exp(masked_mean(nll, loss_mask)),
        "num_tokens": jnp.sum(as_mask(loss_mask).astype(jnp.float32)),
    }
    return loss, metrics
