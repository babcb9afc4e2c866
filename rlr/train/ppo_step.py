"""The jitted PPO update: several epochs over shuffled minibatches of one rollout batch, the
policy and the critic updated with separate optimizers (a pure function in its own file, as
EasyDeL's trainers/*/_fn.py; the loop is rlr/train/ppo.py).

Axes: N rows (B prompts x n samples, the samples of one prompt contiguous), P prompt slots
(left-padded), R response slots (right-padded), M minibatches of N // M rows.

Sequence layout: the model reads [prompt | response] of P + R slots. Response token t sits at
slot P + t and is predicted from slot P + t - 1, so the policy's log pi(y_t) and the critic's
V_t (the value of the state before y_t) are both read at slots P - 1 .. P + R - 2; a reward
model's verdict on token t (its last token, or a step end) is read at slot P + t.

Every function here takes parameters as arguments (never closed over); the models, optimizer
settings and UpdateConfig are static, hashable jit arguments (so a second run in the same
process with the same settings reuses the compiled update).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from rlr.losses.masked import AGGREGATIONS, aggregate, aggregation_count
from rlr.losses.ppo import (KL_KINDS, RunningMeanStd, entropy_loss, kl_penalty, policy_loss,
                            running_stats_normalize, value_loss)
from rlr.parallel import batch_sharding
from rlr.train import sequences
from rlr.train.accumulate import accumulated_grad
from rlr.train.optim import OptimConfig, make_optimizer
from rlr.train.state import TrainState, apply_gradients


class PPOBatch(NamedTuple):
    """One rollout batch, ready for the update (every field has N rows).

    prompt_tokens, prompt_mask [N, P]: left-padded prompts (each prompt repeated n times).
    response_tokens, response_mask [N, R]: right-padded responses.
    old_logp [N, R]: log pi_old(y_t) of the policy that sampled (the PPO ratio's denominator).
    ref_logp [N, R]: log pi_ref(y_t) of the reference model (a KL loss reads it).
    advantages [N, R]: A_t (normalised or not, as configured); 0 on padding.
    returns [N, R]: the critic's targets R_t = A_t + V_t (raw, before value normalisation).
    old_values [N, R]: the critic's output at rollout time, the centre of value clipping:
        V_old(s_t), or with value normalisation its normalised prediction (V_old - mean) / std
        under the statistics before this batch's returns updated them.
    """

    prompt_tokens: jax.Array
    prompt_mask: jax.Array
    response_tokens: jax.Array
    response_mask: jax.Array
    old_logp: jax.Array
    ref_logp: jax.Array
    advantages: jax.Array
    returns: jax.Array
    old_values: jax.Array


@dataclasses.dataclass(frozen=True)
class UpdateConfig:
    """The static settings of the update (from config.ppo; hashable, so jit-static).

    epochs: passes over the batch. num_minibatches: M, each pass's rows split in M shuffled
    minibatches, one optimizer step each. clip_eps: PPO ratio clip. dual_clip: c > 1 of dual
    clip (Ye et al. 2020) or None. value_clip_eps: clip of the value change or None.
    entropy_coef: weight of the entropy bonus. kl_loss_coef / kl_loss_estimator: a KL(pi || ref)
    term in the loss (GRPO style, Shao et al. 2024), 0 = off. aggregation: token_mean |
    seq_mean | seq_mean_token_sum. value_norm: the critic predicts returns normalised by running
    statistics (Xu et al. 2024). use_critic: False for critic-free advantages (GRPO, RLOO).
    logprob_chunk: time chunk of the log-prob computation.
    """

    epochs: int = 1
    num_minibatches: int = 4
    clip_eps: float = 0.2
    dual_clip: Optional[float] = None
    value_clip_eps: Optional[float] = 0.2
    entropy_coef: float = 0.0
    kl_loss_coef: float = 0.0
    kl_loss_estimator: str = "k3"
    aggregation: str = "token_mean"
    value_norm: bool = False
    use_critic: bool = True
    logprob_chunk: int = 128

    def __post_init__(self):
        checks = [
            (self.epochs >= 1, "epochs", ">= 1"),
            (self.num_minibatches >= 1, "num_minibatches", ">= 1"),
            (self.clip_eps > 0, "clip_eps", "> 0"),
            (self.dual_clip is None or self.dual_clip > 1, "dual_clip", "None or > 1"),
            (self.value_clip_eps is None or self.value_clip_eps > 0, "value_clip_eps", "None or > 0"),
            (self.kl_loss_estimator in KL_KINDS, "kl_loss_estimator", f"one of {KL_KINDS}"),
            (self.aggregation in AGGREGATIONS, "aggregation", f"one of {AGGREGATIONS}"),
            (self.logprob_chunk >= 1, "logprob_chunk", ">= 1"),
        ]
        for ok, name, expected in checks:
            if not ok:
                raise ValueError(f"config.ppo.{name}={getattr(self, name)!r}: expected {expected}")


# ----------------------------------------------------------------------------- model readers


def batch_inputs(batch) -> sequences.SequenceBatch:
    """The model inputs of anything with prompt_/response_ tokens and masks (a PPOBatch, a
    sampler Rollout): ``sequences.sequence_inputs``."""
    return sequences.sequence_inputs(batch.prompt_tokens, batch.prompt_mask, batch.response_tokens,
                                     batch.response_mask)


def critic_values(model, params, seq: sequences.SequenceBatch) -> jax.Array:
    """V(s_t) [N, R] float32: a score-head model read at slots P-1 .. P+R-2, the state before
    response token t (the same slots the policy predicts y_t from)."""
    p, r = seq.prompt_length, seq.response_tokens.shape[1]
    return sequences.score_sequences(model, params, seq)[:, p - 1:p + r - 1]


# ----------------------------------------------------------------------------- objectives


def policy_objective(params: Any, batch: PPOBatch, model, config: UpdateConfig
                     ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The policy's loss on one minibatch (Schulman et al. 2017, "Proximal Policy Optimization"):

        L = L_clip(ratio, A) - entropy_coef * H + kl_loss_coef * KL_est(pi || ref)

    with ratio = exp(log pi - log pi_old) (``rlr.losses.ppo.policy_loss``, optional dual clip),
    every term reduced with ``config.aggregation``. Metrics: policy_loss, clip_fraction,
    approx_kl, ratio_mean, entropy, log_ratio_max (max |log ratio| over valid tokens; ~0 (float
    noise) on the first minibatch when old_logp is the teacher-forced computation), kl_loss (when on), loss.
    """
    mask = batch.response_mask
    logp, entropy = sequences.response_logprobs_and_entropy(model, params, batch_inputs(batch),
                                                            config.logprob_chunk)
    loss, metrics = policy_loss(logp, batch.old_logp, batch.advantages, mask, config.clip_eps,
                                config.dual_clip, config.aggregation)
    ent_loss, ent_metrics = entropy_loss(entropy, mask, config.aggregation)
    metrics.update(ent_metrics)
    if config.entropy_coef:
        loss = loss + config.entropy_coef * ent_loss
    if config.kl_loss_coef:
        kl = kl_penalty(logp, batch.ref_logp, config.kl_loss_estimator, mask)
        metrics["kl_loss"] = aggregate(kl, mask, config.aggregation)
        loss = loss + config.kl_loss_coef * metrics["kl_loss"]
    log_ratio = jnp.where(mask.astype(bool), logp - batch.old_logp, 0.0)
    metrics["log_ratio_max"] = jnp.max(jnp.abs(log_ratio))
    metrics["loss"] = loss
    return loss, metrics


def critic_objective(params: Any, batch: PPOBatch, value_stats: Optional[RunningMeanStd], model,
                     config: UpdateConfig) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The critic's clipped value loss on one minibatch (``rlr.losses.ppo.value_loss``):

        l_t = 0.5 * max((V_t - R_t)^2, (clip(V_t, V_old_t - eps, V_old_t + eps) - R_t)^2)

    With value normalisation (Xu et al. 2024) the critic predicts normalised values: R_t is
    normalised with ``value_stats`` ((x - mean) / std of all returns seen, this batch's
    included) first. V_old_t is the critic's own rollout-time output (``PPOBatch.old_values``),
    so before the critic's first step V_t = V_old_t and no token is clipped; V_old_t
    renormalised with the updated statistics would move the clip's centre off the critic.
    """
    values = critic_values(model, params, batch_inputs(batch))
    returns = batch.returns
    if config.value_norm:
        returns = running_stats_normalize(value_stats, returns)
    return value_loss(values, batch.old_values, returns, batch.response_mask,
                      config.value_clip_eps, config.aggregation)


# ----------------------------------------------------------------------------- the update


def minibatch_rows(rng: jax.Array, num_rows: int, epochs: int, num_minibatches: int) -> jax.Array:
    """Row indices [epochs * M, N // M]: each epoch a fresh permutation of the N rows, cut into
    M minibatches. N must divide by M."""
    if num_rows % num_minibatches:
        raise ValueError(f"config.ppo.num_minibatches={num_minibatches} must divide the rollout "
                         f"batch of {num_rows} rows (prompts_per_iteration x num_samples)")
    keys = jax.random.split(rng, epochs)
    perms = jax.vmap(lambda k: jax.random.permutation(k, num_rows))(keys)
    return perms.reshape(epochs * num_minibatches, num_rows // num_minibatches)


def _take_rows(batch: PPOBatch, rows: jax.Array, mesh: Optional[Mesh]) -> PPOBatch:
    """The minibatch of ``rows``, its rows split over the mesh's (data, fsdp) when one is given."""
    mb = jax.tree.map(lambda x: jnp.take(x, rows, axis=0), batch)
    if mesh is None:
        return mb
    return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, batch_sharding(mesh, x.ndim)),
                        mb)


def ppo_update(policy: TrainState, critic: Optional[TrainState],
               value_stats: Optional[RunningMeanStd], batch: PPOBatch, rng: jax.Array, *,
               policy_model, critic_model, policy_optim: OptimConfig,
               critic_optim: Optional[OptimConfig], config: UpdateConfig,
               mesh: Optional[Mesh] = None) -> tuple[TrainState, Optional[TrainState], dict]:
    """config.epochs passes over ``batch``, each over config.num_minibatches shuffled minibatches;
    at each minibatch one optimizer step of the policy on ``policy_objective`` and (with a critic)
    one of the critic on ``critic_objective``, with separate optimizers (``make_optimizer`` of
    ``policy_optim`` / ``critic_optim``), each minibatch's gradient summed over the optimizer's
    grad_accum_steps micro-batches (``rlr.train.accumulate`` with C_i = the micro-batch's
    ``aggregation_count``: the gradient of the whole minibatch). The policy's steps are one
    ``lax.scan`` over all epochs x minibatches, the critic's a second over the same minibatches (the two are
    independent: a loop body doing both would hold both passes' buffers at once), so the whole
    update is one compiled program.

    Static (bind them, or name them in ``static_argnames``): the models, the OptimConfigs, the
    UpdateConfig and ``mesh`` (minibatch rows are constrained to (data, fsdp) on it; None: no
    constraint). rng: the key of the shuffles. ``value_stats`` (value normalisation) are the
    running statistics already updated with this batch's returns. Returns (policy, critic,
    metrics): every objective metric averaged over the minibatches under "policy/..." and
    "critic/...", the grad norms (before clipping), and "policy/first_log_ratio_max" (max
    |log ratio| of the first minibatch of the first epoch: ~1e-6 (a ratio of 1) when the
    stored old log-probs are the teacher-forced ones) and "policy/first_ratio_mean".
    """
    if config.use_critic != (critic is not None):
        raise ValueError(f"ppo_update: config.use_critic={config.use_critic} but a critic state "
                         f"was {'not ' if critic is None else ''}given")
    rows = minibatch_rows(rng, batch.response_tokens.shape[0], config.epochs,
                          config.num_minibatches)

    def count(minibatch: PPOBatch) -> jax.Array:
        return aggregation_count(minibatch.response_mask, config.aggregation)

    def optimizer_steps(state: TrainState, objective, optim: OptimConfig, prefix: str):
        """One lax.scan: an optimizer step of `state` on objective(params, minibatch) a
        minibatch; its metrics and grad_norm under `prefix`/, stacked over the minibatches."""
        optimizer = make_optimizer(optim)

        def step(state, mb_rows):
            minibatch = _take_rows(batch, mb_rows, mesh)
            grads, metrics = accumulated_grad(objective, state.params, minibatch,
                                              optim.grad_accum_steps, count)
            state, grad_norm = apply_gradients(state, grads, optimizer)
            return state, {f"{prefix}/{k}": v for k, v in {**metrics, "grad_norm": grad_norm}.items()}

        return jax.lax.scan(step, state, rows)

    policy, stacked = optimizer_steps(
        policy, functools.partial(policy_objective, model=policy_model, config=config),
        policy_optim, "policy")
    if critic is not None:
        critic, critic_stacked = optimizer_steps(
            critic, functools.partial(critic_objective, value_stats=value_stats,
                                      model=critic_model, config=config),
            critic_optim, "critic")
        stacked.update(critic_stacked)
    metrics = {k: jnp.mean(v) for k, v in stacked.items()}
    metrics["policy/log_ratio_max"] = jnp.max(stacked["policy/log_ratio_max"])
    metrics["policy/first_log_ratio_max"] = stacked["policy/log_ratio_max"][0]
    metrics["policy/first_ratio_mean"] = stacked["policy/ratio_mean"][0]
    return policy, critic, metrics
