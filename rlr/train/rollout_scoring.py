"""Turn a sampler Rollout into PPO's training batch: rewards, values, advantages.

Two halves, run once per PPO iteration:

- host (numpy, after decoding): ``host_scores`` decodes the responses, checks them (the
  synthetic task's final_answer_correct, or the math verifier), counts their steps and, when a
  process reward model is used, finds the token that ends each step
  (``sequences.step_end_positions``, steps split at "\\n");
- device (one jitted function, ``score_rollout``): teacher-forced log-probs of the policy and
  the reference, the per-token KL, the ORM score at the last response token, the PRM step
  scores (sigmoid of the score head at step ends), the shaped per-token reward
  (``rlr.rewards.shaping.shape_rewards``: success, ORM, PRM with none / Clip / Delta /
  Clip-Delta, length, KL-in-reward, clipping; Gao et al. 2024, Xu et al. 2024), the critic's
  values, and the advantages: GAE (Schulman et al. 2016) with a critic, or the critic-free
  group baselines GRPO (Shao et al. 2024) / RLOO (Ahmadian et al. 2024), optionally
  normalised over the whole batch.

Axes: N rows (prompts x n samples, a prompt's samples contiguous), P prompt slots, R response
slots, K steps.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rlr.data.synthetic import repetition_rate
from rlr.data.tokenizer import Tokenizer
from rlr.losses.masked import masked_mean
from rlr.losses.ppo import (KL_KINDS, RunningMeanStd, broadcast_to_tokens, explained_variance, gae,
                            grpo_advantages, kl_penalty, normalize_advantages, rloo_advantages,
                            running_stats_denormalize, running_stats_update)
from rlr.rewards.segment import split_steps
from rlr.rewards.shaping import RewardSpec, shape_rewards
from rlr.sampling import Rollout
from rlr.train import sequences
from rlr.train.ppo_step import PPOBatch, batch_inputs, critic_values

ADVANTAGES = ("gae", "grpo", "rloo")


# ----------------------------------------------------------------------------- host side


class HostScores(NamedTuple):
    """What the host computes from the decoded responses, for the device (numpy, N rows).

    success [N] float32: 1 for a correct final answer (0 when the task has no checker).
    step_positions [N, K] int32: response token that ends each step (0 on padding).
    step_mask [N, K] bool: valid steps.
    """

    success: np.ndarray
    step_positions: np.ndarray
    step_mask: np.ndarray


class RolloutText(NamedTuple):
    """Host-only facts of the responses, for metrics and samples.jsonl.

    responses: the decoded texts (eos dropped). num_steps [N]: steps of each response
    (split at the delimiter). repetition [N]: share of steps that repeat an earlier one
    (the PRM-hacking signal of Gao et al. 2024). steps_dropped [N]: middle steps beyond
    max_steps that got no PRM reward (see rlr.rewards.segment.step_arrays).
    invalid_tokens [N]: sampled ids outside the tokenizer's vocabulary (a model vocabulary
    padded beyond the tokenizer's); they are decoded as padding (no text).
    """

    responses: list[str]
    num_steps: np.ndarray
    repetition: np.ndarray
    steps_dropped: np.ndarray
    invalid_tokens: np.ndarray


SuccessFn = Callable[[Any, str], float]  # (reference of the prompt, response text) -> 0 / 1


def host_scores(tokenizer: Tokenizer, response_tokens: np.ndarray, response_mask: np.ndarray,
                references: Sequence[Any], success_fn: Optional[SuccessFn], max_steps: int,
                delimiter: str = "\n", step_positions: bool = True
                ) -> tuple[HostScores, RolloutText]:
    """Decode and check the responses of a rollout (host numpy [N, R]).

    references[i]: what success_fn needs to check row i (a TaskExample, a reference answer),
    one per row. success_fn None: success is 0 everywhere (a task judged by a reward model
    only). step_positions: find the token ending each step (decode with offsets, only needed
    by a PRM); otherwise steps are only counted and positions / mask are empty. Token ids the
    tokenizer does not have (a model vocabulary larger than the tokenizer's) decode as its
    pad id (one token; no text with the char tokenizer) and are counted in
    RolloutText.invalid_tokens.
    """
    tokens, mask = np.asarray(response_tokens), np.asarray(response_mask).astype(bool)
    if len(references) != tokens.shape[0]:
        raise ValueError(f"host_scores: {len(references)} references for {tokens.shape[0]} rows")
    invalid = mask & ((tokens < 0) | (tokens >= tokenizer.vocab_size))
    tokens = np.where(invalid, tokenizer.pad_id, tokens)
    texts = sequences.decode_responses(tokenizer, tokens, mask)
    success = np.zeros(len(texts), np.float32)
    if success_fn is not None:
        success[:] = [float(success_fn(ref, text)) for ref, text in zip(references, texts)]
    if step_positions:
        positions, step_mask, dropped = sequences.step_end_positions(tokenizer, tokens, mask,
                                                                     max_steps, delimiter)
    else:
        positions = np.zeros((len(texts), max_steps), np.int32)
        step_mask = np.zeros((len(texts), max_steps), bool)
        dropped = np.zeros((len(texts),), np.int32)
    num_steps = np.array([len(split_steps(t, delimiter)) for t in texts], np.int32)
    repetition = np.array([repetition_rate(t) for t in texts], np.float32)
    return (HostScores(success, positions, step_mask),
            RolloutText(texts, num_steps, repetition, dropped, invalid.sum(axis=1).astype(np.int32)))


# ----------------------------------------------------------------------------- device side


@dataclasses.dataclass(frozen=True)
class ScoringConfig:
    """The static settings of ``score_rollout`` (from config.ppo / config.rewards).

    advantage: gae | grpo | rloo. gamma, gae_lambda: of GAE (Xu et al. 2024 use 1, 1).
    normalize_advantages: whiten advantages over every valid token of the batch.
    kl_estimator: k1 | k2 | k3, the per-token KL(pi || ref) estimate put in the reward.
    group_size: samples a prompt (GRPO / RLOO groups). value_norm: the critic predicts
    normalised values (denormalised here with the running statistics, which are then updated
    with this batch's returns). recompute_logprobs: old log-probs by teacher forcing (the
    update's own computation, so the first ratio is exactly 1) instead of the sampler's.
    orm_sigmoid / prm_sigmoid: squash the score head's logit with a sigmoid (a BCE-trained
    ORM / PRM) or use it raw (a Bradley-Terry reward model). logprob_chunk: log-prob time chunk.
    row_slices: the model forwards (log-probs, values, ORM / PRM scores) run on this many
    slices of the rows in turn (sequences.map_row_slices): 1 keeps every row in one pass.
    """

    advantage: str = "gae"
    gamma: float = 1.0
    gae_lambda: float = 1.0
    normalize_advantages: bool = True
    kl_estimator: str = "k1"
    group_size: int = 1
    value_norm: bool = False
    recompute_logprobs: bool = True
    orm_sigmoid: bool = True
    prm_sigmoid: bool = True
    logprob_chunk: int = 128
    row_slices: int = 1

    def __post_init__(self):
        if self.advantage not in ADVANTAGES:
            raise ValueError(f"config.ppo.advantage={self.advantage!r}: expected one of {ADVANTAGES}")
        if self.kl_estimator not in KL_KINDS:
            raise ValueError(f"config.ppo.kl_estimator={self.kl_estimator!r}: expected one of "
                             f"{KL_KINDS}")
        if self.advantage == "rloo" and self.group_size < 2:
            raise ValueError(f"config.ppo.advantage='rloo' needs config.sampling.num_samples >= 2, "
                             f"got {self.group_size}")
        if self.row_slices < 1:
            raise ValueError(f"config.ppo.scoring_slices={self.row_slices}: expected >= 1")
        if self.value_norm and self.advantage != "gae":
            raise ValueError(f"config.ppo.value_norm=True needs a critic (advantage 'gae'), got "
                             f"advantage={self.advantage!r}")

    @property
    def use_critic(self) -> bool:
        return self.advantage == "gae"


class Models(NamedTuple):
    """The models of a PPO run (hashable linen modules; None when not used): the policy (and,
    with other params, the reference), the critic, the outcome and the process reward model."""

    policy: Any
    critic: Any = None
    orm: Any = None
    prm: Any = None


class Scored(NamedTuple):
    """The output of ``score_rollout``.

    batch: the PPOBatch the update trains on. token_rewards [N, R]: the shaped rewards.
    prm_scores [N, K]: the PRM's step scores (zeros without a PRM). value_stats: the running
    return statistics after this batch (None without value normalisation). metrics: scalars.
    """

    batch: PPOBatch
    token_rewards: jax.Array
    prm_scores: jax.Array
    value_stats: Optional[RunningMeanStd]
    metrics: dict


def _squash(x: jax.Array, sigmoid: bool) -> jax.Array:
    return jax.nn.sigmoid(x) if sigmoid else x


def score_rollout(params: dict, rollout: Rollout, host: HostScores,
                  value_stats: Optional[RunningMeanStd], *, models: Models, spec: RewardSpec,
                  config: ScoringConfig) -> Scored:
    """Rewards, values and advantages of one rollout (pure; jit it with models, spec and config
    static).

    params: {"policy", "ref"} and, when their models are set, "critic", "orm", "prm".
    rollout: the sampler's output (N rows). host: HostScores of those rows (device arrays).

        log pi_old = teacher-forced policy log-probs (or the sampler's)
        kl_t       = KL estimate of log pi_old - log pi_ref (config.kl_estimator)
        orm_b      = [sigmoid] ORM score at the last response token
        s_{b,k}    = [sigmoid] PRM score at the end token of step k
        r          = shape_rewards(spec, success, orm, s, kl)          [N, R]
        gae:  V = critic (denormalised with value_stats), (A, R_t) = GAE(r, V, gamma, lambda);
              the batch's old_values are the critic's output itself (the value clip's centre)
        grpo / rloo: A = group baseline of the sequence return sum_t r_t, on every token
        A         <- (A - mean) / std over every valid token (config.normalize_advantages)

    Metrics: the reward parts (reward/success, reward/orm, reward/prm, reward/kl, reward/total,
    ...), accuracy, kl (KL(pi || ref) of a response: the per-sequence sum of the k3 estimate,
    unbiased and >= 0 whatever estimator the reward uses, mean over rows) and kl_per_token, the
    sampler-vs-teacher-forcing log-prob gap, orm/prm score means, critic value statistics and
    explained variance of the returns by the values, advantage mean / std before normalisation.
    """
    seq = batch_inputs(rollout)
    mask = rollout.response_mask.astype(bool)
    fmask = mask.astype(jnp.float32)
    policy_model = models.policy
    metrics = {}

    def forward(fn: Callable[[Any], jax.Array]) -> jax.Array:
        """fn(seq), a model's forward, on config.row_slices slices of the rows in turn."""
        return sequences.map_row_slices(fn, seq, config.row_slices)

    def logprobs(policy_params: Any) -> jax.Array:
        return forward(lambda s: sequences.response_logprobs(policy_model, policy_params, s,
                                                             config.logprob_chunk))

    if config.recompute_logprobs:
        old_logp = jnp.where(mask, logprobs(params["policy"]), 0.0)
        gap = jnp.abs(old_logp - rollout.logprobs)
        metrics["rollout/logprob_gap_max"] = jnp.max(jnp.where(mask, gap, 0.0))
    else:
        old_logp = rollout.logprobs.astype(jnp.float32)
    ref_logp = jnp.where(mask, logprobs(params["ref"]), 0.0)
    kl = kl_penalty(old_logp, ref_logp, config.kl_estimator, mask)

    orm = prm = None
    if models.orm is not None:
        scores = forward(lambda s: sequences.response_scores(models.orm, params["orm"], s))
        orm = _squash(sequences.outcome_scores(scores, mask), config.orm_sigmoid)
        metrics["orm/score_mean"] = jnp.mean(orm)
    if models.prm is not None:
        scores = forward(lambda s: sequences.response_scores(models.prm, params["prm"], s))
        prm = _squash(sequences.step_scores(scores, host.step_positions), config.prm_sigmoid)
        prm = jnp.where(host.step_mask, prm, 0.0)
        metrics["prm/score_mean"] = masked_mean(prm, host.step_mask)
    rewards, reward_metrics = shape_rewards(
        spec, mask, success=host.success, orm_scores=orm, prm_scores=prm,
        step_positions=host.step_positions, step_mask=host.step_mask, kl=kl)
    metrics.update(reward_metrics)
    metrics["accuracy"] = jnp.mean(host.success)
    kl3 = kl if config.kl_estimator == "k3" else kl_penalty(old_logp, ref_logp, "k3", mask)
    metrics["kl"] = jnp.mean(jnp.sum(kl3, axis=-1))
    metrics["kl_per_token"] = masked_mean(kl3, mask)

    zeros = jnp.zeros_like(fmask)
    if config.use_critic:
        critic_out = jnp.where(mask, forward(
            lambda s: critic_values(models.critic, params["critic"], s)), 0.0)
        values = critic_out
        if config.value_norm:  # the critic predicts (V - mean) / std under the stats so far
            values = jnp.where(mask, running_stats_denormalize(value_stats, critic_out), 0.0)
        advantages, returns = gae(rewards, values, mask, config.gamma, config.gae_lambda)
        if config.value_norm:
            value_stats = running_stats_update(value_stats, returns, mask)
        metrics["critic/explained_variance_rollout"] = explained_variance(values, returns, mask)
        metrics["critic/value_rollout_mean"] = masked_mean(values, mask)
    else:
        returns = values = critic_out = zeros
        seq_return = jnp.sum(rewards, axis=-1)
        if config.advantage == "grpo":
            seq_adv = grpo_advantages(seq_return, config.group_size)
        else:
            seq_adv = rloo_advantages(seq_return, config.group_size)
        advantages = broadcast_to_tokens(seq_adv, mask)
    metrics["advantage/mean"] = masked_mean(advantages, mask)
    metrics["advantage/std"] = jnp.sqrt(masked_mean((advantages - metrics["advantage/mean"]) ** 2,
                                                    mask))
    if config.normalize_advantages:
        advantages = normalize_advantages(advantages, mask)

    batch = PPOBatch(prompt_tokens=rollout.prompt_tokens, prompt_mask=rollout.prompt_mask,
                     response_tokens=rollout.response_tokens, response_mask=mask,
                     old_logp=old_logp, ref_logp=ref_logp, advantages=advantages,
                     returns=returns, old_values=critic_out)
    prm_scores = prm if prm is not None else jnp.zeros(host.step_mask.shape, jnp.float32)
    return Scored(batch, rewards, prm_scores, value_stats, metrics)
