"""PPO (and its critic-free variants GRPO / RLOO) on prompts of a task, with shaped rewards.

    rlr --config experiments/ppo.py:clip_delta --workdir runs/ppo-clip-delta
    rlr --config experiments/grpo.py --workdir runs/grpo

One iteration (Schulman et al. 2017; Ouyang et al. 2022; the reward parts of Gao et al. 2024
and the PPO switches of Xu et al. 2024):

  rollout   config.ppo.prompts_per_iteration train prompts (in a resumable shuffled order) x
            config.sampling.num_samples responses of the policy (rlr.sampling.Sampler);
  scoring   on the host: decode, check the final answers (the task's checker), find the step
            ends (rollout_scoring.host_scores); on the device, one jitted function
            (rollout_scoring.score_rollout): policy / reference log-probs, KL, ORM and PRM
            scores, the shaped per-token reward (config.rewards: a RewardSpec), the critic's
            values and the advantages (GAE, GRPO or RLOO; optionally normalised);
  update    one jitted function: ppo_step.ppo_update (config.ppo.epochs x num_minibatches
            steps of the policy and of the critic, separate optimizers config.optim and
            config.critic_optim), then, with config.ppo.reference = "ema", the reference
            ref <- decay * ref + (1 - decay) * policy (Xu et al. 2024, Sec. 5).

The policy starts from config.ppo.policy_source (an SFT run dir, a HF dir; "" =
config.model.hf_checkpoint or random), the critic from config.ppo.critic_source ("" = the
policy's source: lm -> score keeps the decoder, a reward-model run dir keeps its head), the
frozen ORM / PRM from config.rewards.orm_source / prm_source. The policy and reference have the
shape of config.model; the critic, ORM and PRM the shape of their sources (a reward model may be
larger than the policy: params_io.source_shape), reading the policy's tokens. The state
checkpointed (common.run_loop) is a dict {policy, critic (GAE), ref (EMA reference only: a fixed
reference is reloaded from its source), value_stats (value normalisation), rng}; the prompt
order's position is in the checkpoint's extra. At the start (step 0, a fresh run), every
config.eval.every_steps iterations and at the end: greedy responses to config.eval.num_problems
held-out problems -> eval/accuracy, eval/num_steps (steps split at
config.rewards.step_delimiter, the answer line included), eval/response_length (tokens),
eval/repetition_rate and, with config.eval.rm_source, eval/rm_score (that reward model's mean
score of the greedy responses: the measure of HH-RLHF, which has no answers).

Axes: B prompts, N = B x n rows (a prompt's samples contiguous), P prompt slots, R response
slots, K steps.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import os
from typing import Any, NamedTuple, Optional, Sequence

import jax
import ml_collections
import numpy as np

from rlr.config import ConfigError, to_config_dict, to_dataclass
from rlr.data.synthetic import repetition_rate
from rlr.losses.ppo import running_stats_init
from rlr.models import ModelConfig, Transformer
from rlr.parallel import host_local_rows, process_mean, replicate, shard_batch
from rlr.parallel.memory import MemoryEstimate, estimate_memory
from rlr.rewards.segment import split_steps
from rlr.rewards.shaping import RewardSpec
from rlr.sampling import Sampler
from rlr.train import common, params_io, rollout_scoring, sequences, tasks
from rlr.train.metrics import MetricsWriter, Timer
from rlr.train.optim import OptimConfig, as_optim_config, make_optimizer
from rlr.train.ppo_step import UpdateConfig, ppo_update
from rlr.train.rollout_scoring import ADVANTAGES, HostScores, Models, RolloutText, ScoringConfig
from rlr.train.sft import batch_iterator, check_batch_size
from rlr.train.state import create_train_state, ema_update

log = logging.getLogger(__name__)

REFERENCES = ("fixed", "ema")
CHECKED_TASKS = tasks.TASKS  # tasks whose final answers are checked (success reward, accuracy)


# ----------------------------------------------------------------------------- config groups


@dataclasses.dataclass(frozen=True)
class PPOConfig:
    """The config.ppo group; `ppo_group()` makes its ConfigDict."""

    policy_source: str = ""  # the policy to start from: an rlr run dir (SFT), a HF dir; "" = config.model.hf_checkpoint (or random)
    critic_source: str = ""  # the critic's start: "" = policy_source (fresh score head), an ORM run dir keeps its head (and its shape)
    num_iterations: int = 100  # rollout -> scoring -> update iterations
    prompts_per_iteration: int = 64  # prompts sampled an iteration, all hosts; a multiple of data x fsdp
    max_prompt_len: int = 0  # train prompts longer than this many tokens are skipped (0: keep all)
    advantage: str = "gae"  # gae (learned critic) | grpo | rloo (critic-free group baselines)
    gamma: float = 1.0  # GAE discount (Xu et al. 2024: 1)
    gae_lambda: float = 1.0  # GAE lambda (Xu et al. 2024: 1)
    normalize_advantages: bool = True  # whiten advantages over the batch (Xu et al. 2024)
    value_norm: bool = False  # the critic predicts returns normalised by running statistics
    kl_estimator: str = "k1"  # per-token KL estimate put in the reward: k1 | k2 | k3
    reference: str = "fixed"  # the KL reference: fixed (the initial policy) | ema (Xu et al. 2024)
    ref_ema_decay: float = 0.9  # ema: ref <- decay * ref + (1 - decay) * policy after each iteration
    epochs: int = 1  # passes over each rollout batch
    num_minibatches: int = 4  # minibatches a pass (one optimizer step each); must divide the rows
    clip_eps: float = 0.2  # PPO ratio clip
    dual_clip: float = 0.0  # dual clip c > 1 for negative advantages (Ye et al. 2020); 0: off
    value_clip_eps: float = 0.2  # clip of the value change around the rollout's values; 0: off
    entropy_coef: float = 0.0  # weight of the entropy bonus
    kl_loss_coef: float = 0.0  # weight of a KL(pi || ref) loss term (GRPO style); the KL in the reward is config.rewards.kl_coef
    kl_loss_estimator: str = "k3"  # estimator of the KL loss: k1 | k2 | k3
    aggregation: str = "token_mean"  # token_mean | seq_mean | seq_mean_token_sum
    recompute_logprobs: bool = True  # old log-probs by teacher forcing (else the sampler's)
    logprob_chunk: int = 128  # time chunk of the log-prob computation
    scoring_slices: int = 1  # the scoring forwards (log-probs, values, ORM / PRM) run on this many row slices in turn; num_minibatches bounds their memory by the update's

    def __post_init__(self):
        checks = [
            (self.num_iterations >= 1, "num_iterations", ">= 1"),
            (self.scoring_slices >= 1, "scoring_slices", ">= 1"),
            (self.prompts_per_iteration >= 1, "prompts_per_iteration", ">= 1"),
            (self.max_prompt_len >= 0, "max_prompt_len", ">= 0"),
            (self.advantage in ADVANTAGES, "advantage", f"one of {ADVANTAGES}"),
            (self.reference in REFERENCES, "reference", f"one of {REFERENCES}"),
            (0.0 <= self.ref_ema_decay <= 1.0, "ref_ema_decay", "in [0, 1]"),
            (self.dual_clip == 0 or self.dual_clip > 1, "dual_clip", "0 (off) or > 1"),
            (self.value_clip_eps >= 0, "value_clip_eps", ">= 0 (0: off)"),
            (0 <= self.gamma <= 1 and 0 <= self.gae_lambda <= 1, "gamma", "gamma, gae_lambda in [0, 1]"),
        ]
        for ok, name, expected in checks:
            if not ok:
                raise ConfigError(f"config.ppo.{name}={getattr(self, name)!r}: expected {expected}")

    def update_config(self) -> UpdateConfig:
        """The static settings of ppo_step.ppo_update."""
        return UpdateConfig(
            epochs=self.epochs, num_minibatches=self.num_minibatches, clip_eps=self.clip_eps,
            dual_clip=self.dual_clip or None, value_clip_eps=self.value_clip_eps or None,
            entropy_coef=self.entropy_coef, kl_loss_coef=self.kl_loss_coef,
            kl_loss_estimator=self.kl_loss_estimator, aggregation=self.aggregation,
            value_norm=self.value_norm, use_critic=self.advantage == "gae",
            logprob_chunk=self.logprob_chunk)

    def scoring_config(self, group_size: int, rewards: "RewardModels") -> ScoringConfig:
        """The static settings of rollout_scoring.score_rollout."""
        return ScoringConfig(
            advantage=self.advantage, gamma=self.gamma, gae_lambda=self.gae_lambda,
            normalize_advantages=self.normalize_advantages, kl_estimator=self.kl_estimator,
            group_size=group_size, value_norm=self.value_norm,
            recompute_logprobs=self.recompute_logprobs, orm_sigmoid=rewards.orm_sigmoid,
            prm_sigmoid=rewards.prm_sigmoid, logprob_chunk=self.logprob_chunk,
            row_slices=self.scoring_slices)


@dataclasses.dataclass(frozen=True)
class RewardModels:
    """The reward-model fields of config.rewards (its other fields are those of RewardSpec)."""

    orm_source: str = ""  # outcome reward model: an rlr run dir (score head) or HF seq-cls dir, of its own shape and the policy's tokenizer; "" = none
    prm_source: str = ""  # process reward model: as orm_source; "" = none
    orm_sigmoid: bool = True  # ORM reward = sigmoid(logit) (a BCE-trained ORM); False: the raw score (Bradley-Terry)
    prm_sigmoid: bool = True  # PRM step score = sigmoid(logit) (a BCE-trained PRM); False: the raw score
    max_steps: int = 16  # K, steps a response given PRM rewards (beyond: middle steps dropped, counted)
    step_delimiter: str = "\n"  # a step ends with this text (the PRM is read at its token)

    def __post_init__(self):
        if self.max_steps < 1:
            raise ConfigError(f"config.rewards.max_steps={self.max_steps}: expected >= 1")
        if not self.step_delimiter:
            raise ConfigError("config.rewards.step_delimiter: expected a non-empty string")


@dataclasses.dataclass(frozen=True)
class RolloutSampling:
    """The config.sampling group: how rollouts are sampled (length: config.data.max_response_len)."""

    temperature: float = 1.0  # softmax temperature (0: greedy)
    top_k: int = 0  # keep the k most likely tokens (0: off)
    top_p: float = 1.0  # nucleus mass (1: off)
    num_samples: int = 4  # responses a prompt (the GRPO / RLOO group)
    # prefill and decode on a per-layer copy of the policy's weights (compute dtype) and KV
    # cache (faster; one more model of memory while sampling); False: the scanned model
    unstack_layers: bool = True
    # prefill prompts this many tokens at a time (SamplingConfig.prefill_chunk; must divide the
    # prompt bucket): the prefill's memory falls from ~P^2 to ~C P a prompt; 0 = one pass
    prefill_chunk: int = 0


def ppo_group(**changes) -> ml_collections.ConfigDict:
    """The config.ppo group: the fields (and defaults) of PPOConfig, with `changes`."""
    return to_config_dict(PPOConfig(**changes))


def rewards_group(**changes) -> ml_collections.ConfigDict:
    """The config.rewards group: the fields of rlr.rewards.shaping.RewardSpec (the reward's
    parts and weights) and of RewardModels (where the ORM / PRM are), with `changes`."""
    spec_names = {f.name for f in dataclasses.fields(RewardSpec)}
    spec = RewardSpec(**{k: v for k, v in changes.items() if k in spec_names})
    models = RewardModels(**{k: v for k, v in changes.items() if k not in spec_names})
    return ml_collections.ConfigDict({**dataclasses.asdict(spec), **dataclasses.asdict(models)})


def sampling_group(**changes) -> ml_collections.ConfigDict:
    """The config.sampling group: the fields of RolloutSampling, with `changes`."""
    return to_config_dict(RolloutSampling(**changes))


def as_ppo_config(values: Any) -> PPOConfig:
    """PPOConfig from config.ppo; an unknown key is an error naming it."""
    return to_dataclass(PPOConfig, values, where="ppo")


def as_rewards(values: Any) -> tuple[RewardSpec, RewardModels]:
    """(RewardSpec, RewardModels) from config.rewards; an unknown key or a bad value is an
    error naming it."""
    values = values.to_dict() if isinstance(values, ml_collections.ConfigDict) else dict(values)
    spec_names = {f.name for f in dataclasses.fields(RewardSpec)}
    model_names = {f.name for f in dataclasses.fields(RewardModels)}
    unknown = sorted(set(values) - spec_names - model_names)
    if unknown:
        raise ConfigError(f"config.rewards.{unknown[0]}: unknown key; config.rewards has "
                          f"{sorted(spec_names | model_names)}")
    try:
        spec = RewardSpec(**{k: v for k, v in values.items() if k in spec_names})
    except ValueError as e:
        raise ConfigError(f"config.rewards: {e}") from None
    return spec, RewardModels(**{k: v for k, v in values.items() if k in model_names})


def as_sampling(values: Any) -> RolloutSampling:
    """RolloutSampling from config.sampling; an unknown key is an error naming it."""
    return to_dataclass(RolloutSampling, values, where="sampling")


def _check_rewards(spec: RewardSpec, models: RewardModels, task: str) -> None:
    """A reward part with a weight needs its model / checker (errors name the keys)."""
    if spec.orm_weight and not models.orm_source:
        raise ConfigError(f"config.rewards.orm_weight={spec.orm_weight} needs "
                          f"config.rewards.orm_source (an ORM run dir)")
    if spec.prm_weight and not models.prm_source:
        raise ConfigError(f"config.rewards.prm_weight={spec.prm_weight} needs "
                          f"config.rewards.prm_source (a PRM run dir)")
    if spec.success_weight and task not in CHECKED_TASKS:
        raise ConfigError(f"config.rewards.success_weight={spec.success_weight}: config.data.task="
                          f"{task!r} has no answer checker (tasks with one: {CHECKED_TASKS})")


# ----------------------------------------------------------------------------- prompts


class Prompts:
    """The train prompts, encoded once to one width P (so every rollout has one shape), and
    their examples (what a response is checked against)."""

    def __init__(self, tokenizer, data: Any, examples: Sequence[tasks.TaskExample],
                 max_len: int = 0):
        d = tasks.as_data_config(data)
        texts = [sequences.prompt_text(tokenizer, e.question, d.prompt_template) for e in examples]
        if max_len:
            lengths = np.array([len(tokenizer.encode(t)) + (tokenizer.bos_id is not None)
                                for t in texts])
            keep = np.flatnonzero(lengths <= max_len)
            if len(keep) < len(texts):
                log.warning("config.ppo.max_prompt_len=%d: %d of %d train prompts are longer and "
                            "skipped", max_len, len(texts) - len(keep), len(texts))
            texts, examples = [texts[i] for i in keep], [examples[i] for i in keep]
        if not texts:
            raise ConfigError("config.ppo.max_prompt_len: no train prompt is short enough")
        tokens, mask = sequences.encode_prompts(tokenizer, texts, d.prompt_bucket)
        self.examples = list(examples)
        self.rows = {"tokens": tokens, "mask": mask, "index": np.arange(len(texts))}

    @property
    def width(self) -> int:
        return self.rows["tokens"].shape[1]


# ----------------------------------------------------------------------------- jitted pieces

score = jax.jit(rollout_scoring.score_rollout, static_argnames=("models", "spec", "config"))
score.__doc__ = "rollout_scoring.score_rollout, jitted (models, spec, config static)."


def leaf_shardings(tree: Any) -> tuple:
    """The sharding of every leaf of a tree of arrays, in leaf order (hashable: a jit-static
    argument)."""
    return tuple(x.sharding for x in jax.tree.leaves(tree))


def keep_shardings(tree: Any, shardings: tuple) -> Any:
    """`tree` with the sharding objects `shardings` (leaf order), e.g. those it had before a
    jitted update: a jit returns an equivalent sharding spelled differently (P() for
    P('fsdp') on a mesh whose fsdp axis has size 1), which would key a new compilation. An
    equivalent sharding costs no copy."""
    leaves, treedef = jax.tree.flatten(tree)
    return jax.tree.unflatten(treedef, [jax.device_put(x, sharding)
                                        for x, sharding in zip(leaves, shardings)])


@functools.partial(jax.jit, static_argnames=("models", "policy_optim", "critic_optim", "config",
                                             "ref_decay", "mesh", "shardings"),
                   donate_argnames=("state",))
def update(state: dict, batch, value_stats, rng: jax.Array, *, models: Models,
           policy_optim: OptimConfig, critic_optim: Optional[OptimConfig], config: UpdateConfig,
           ref_decay: Optional[float], mesh, shardings: Optional[tuple] = None) -> tuple[dict, dict]:
    """The iteration's update of the state dict: ppo_step.ppo_update of state["policy"] (and
    state["critic"]) on `batch`; state["value_stats"] <- value_stats (the running return
    statistics after this batch); with ref_decay d (EMA reference) state["ref"] <-
    d * ref + (1 - d) * policy (rlr.train.state.ema_update with eta = 1 - d; Xu et al. 2024).
    `state` is donated. shardings (leaf_shardings(state)): the new state is constrained to the
    old one's shardings, so params stay FSDP-sharded as declared (call keep_shardings on the
    result: it restores the sharding objects too, so the next iteration's sampler / scoring
    see the same input shardings and do not recompile). Returns (state, metrics).
    """
    policy, critic, metrics = ppo_update(
        state["policy"], state.get("critic"), value_stats, batch, rng, policy_model=models.policy,
        critic_model=models.critic, policy_optim=policy_optim, critic_optim=critic_optim,
        config=config, mesh=mesh)
    state = {**state, "policy": policy}
    if critic is not None:
        state["critic"] = critic
    if value_stats is not None:
        state["value_stats"] = value_stats
    if ref_decay is not None:
        state["ref"] = ema_update(state["ref"], policy.params, 1.0 - ref_decay)
    if shardings is not None:
        leaves, treedef = jax.tree.flatten(state)
        state = jax.tree.unflatten(treedef, [jax.lax.with_sharding_constraint(x, sharding)
                                             for x, sharding in zip(leaves, shardings)])
    return state, metrics


@functools.lru_cache(maxsize=16)
def cached_sampler(model: Transformer, config, mesh, buckets: Optional[tuple] = None) -> Sampler:
    """One Sampler (so one compilation) per (model, SamplingConfig, mesh, buckets) in a process."""
    return Sampler(model, config, mesh, buckets=buckets)


def _copy(tree: Any) -> Any:
    """A copy of a tree of arrays in the same shardings (new buffers)."""
    return jax.tree.map(lambda x: jax.device_put(x, x.sharding, may_alias=False), tree)


# ----------------------------------------------------------------------------- metrics, samples


def step_stats(texts: Sequence[str], delimiter: str) -> dict:
    """num_steps (steps split at `delimiter`) and repetition_rate (share of steps repeating an
    earlier one, rlr.data.synthetic.repetition_rate) of responses, means."""
    return {"num_steps": float(np.mean([len(split_steps(t, delimiter)) for t in texts])),
            "repetition_rate": float(np.mean([repetition_rate(t) for t in texts]))}


def sample_records(examples: Sequence[tasks.TaskExample], text: RolloutText, host: HostScores,
                   token_rewards: np.ndarray, prm_scores: np.ndarray, count: int) -> list[dict]:
    """samples.jsonl records of the first `count` rows: prompt, response, reference answer,
    success, the PRM score and the shaped reward at each step's end token, the total reward."""
    records = []
    for i in range(min(count, len(examples))):
        valid = host.step_mask[i]
        records.append({
            "prompt": examples[i].question, "response": text.responses[i],
            "reference": examples[i].answer, "success": float(host.success[i]),
            "num_steps": int(text.num_steps[i]), "repetition_rate": float(text.repetition[i]),
            "step_prm_scores": prm_scores[i][valid].tolist(),
            "step_rewards": token_rewards[i][host.step_positions[i][valid]].tolist(),
            "total_reward": float(token_rewards[i].sum())})
    return records


def make_evaluate(config: ml_collections.ConfigDict, s: common.Setup, model: Transformer,
                  writer: MetricsWriter, rng: jax.Array, delimiter: str, frozen: dict):
    """evaluate(state, step) -> common.greedy_eval's metrics (accuracy for tasks with answers,
    response_length, rm_score with config.eval.rm_source) and num_steps, repetition_rate of
    greedy responses to config.eval.num_problems held-out problems (None when that is 0); writes
    every one to samples.jsonl (rlr.studies.report.rm_win_rate pairs two runs' replies). An
    eval.rm_source equal to rewards.orm_source scores with the run's ORM params (`frozen`), not
    a second copy."""
    num = config.eval.num_problems
    if num == 0:
        return None
    data = tasks.as_data_config(config.data)
    check_batch_size(config.eval.batch_size, s.mesh, "eval.batch_size")
    examples = tasks.prompt_examples(data, "eval", limit=num)
    sampler = cached_sampler(model, common.sampling_config(s.tokenizer, data), s.mesh)
    loaded = {os.path.abspath(config.rewards.orm_source): frozen["orm"]} if "orm" in frozen else {}
    score_fn = common.eval_scorer(config, s, examples, jax.random.fold_in(rng, 1), loaded)

    def evaluate(state, step: int) -> dict:
        metrics, records = common.greedy_eval(sampler, state["policy"].params, s.tokenizer, data,
                                              examples, rng, config.eval.batch_size, score_fn)
        metrics.update(step_stats([r["response"] for r in records], delimiter))
        writer.write_samples(step, [{"eval": True, **r} for r in records])
        return metrics

    return evaluate


# ----------------------------------------------------------------------------- the loop


def _check_sizes(c: PPOConfig, n: int, mesh, optims: dict[str, OptimConfig]) -> None:
    """The prompts of an iteration must divide over the mesh's data x fsdp devices, the
    rollout rows into config.ppo.num_minibatches equal minibatches and config.ppo.scoring_slices
    equal slices, and a minibatch into each optimizer's grad_accum_steps micro-batches (`optims`:
    config key -> OptimConfig); a minibatch, slice or micro-batch that does not divide over the
    devices is padded by XLA: it runs, a little less efficiently."""
    check_batch_size(c.prompts_per_iteration, mesh, "ppo.prompts_per_iteration")
    rows = c.prompts_per_iteration * n
    for key in ("num_minibatches", "scoring_slices"):
        if rows % getattr(c, key):
            raise ConfigError(f"config.ppo.{key}={getattr(c, key)}: must divide the {rows} rollout "
                              f"rows (prompts_per_iteration x sampling.num_samples)")
    minibatch = rows // c.num_minibatches
    for key, optim in optims.items():
        if minibatch % optim.grad_accum_steps:
            raise ConfigError(f"config.{key}.grad_accum_steps={optim.grad_accum_steps}: must divide "
                              f"a minibatch of {minibatch} rows (the {rows} rollout rows / "
                              f"ppo.num_minibatches)")


class Run(NamedTuple):
    """The fixed pieces of a PPO run (everything but the state)."""

    ppo: PPOConfig
    spec: RewardSpec
    rewards: RewardModels
    sampling: RolloutSampling
    scoring: ScoringConfig
    update: UpdateConfig
    policy_optim: OptimConfig
    critic_optim: Optional[OptimConfig]
    models: Models


CRITIC_SOURCE_KEYS = ("ppo.critic_source", "ppo.policy_source", "model.hf_checkpoint")


def _score_model(s: common.Setup, source: str, key: str) -> Transformer:
    """The score-head model of `source` (a critic, ORM or PRM) at its own shape
    (params_io.source_shape): a reward model may be larger than the policy. It reads the
    policy's tokens, which the sampler draws from the tokenizer's ids only; load_params checks
    that its vocabulary holds them and that it was trained on that tokenizer."""
    model_config = params_io.source_shape(source, s.model_config, key)
    if model_config != s.model_config:
        log.info("config.%s=%r: a model of its own shape (%d layers, hidden %d)", key, source,
                 model_config.num_layers, model_config.hidden_size)
    return Transformer(model_config, head="score")


def make_run(config: ml_collections.ConfigDict, s: common.Setup) -> Run:
    """The checked settings and models of a run (errors name the config key)."""
    for group in ("ppo", "rewards", "sampling", "eval", "critic_optim"):
        if group not in config:
            raise ConfigError(f"config.{group}: missing group (see experiments/ppo.py)")
    c = as_ppo_config(config.ppo)
    spec, rewards = as_rewards(config.rewards)
    sampling = as_sampling(config.sampling)
    n = sampling.num_samples
    _check_rewards(spec, rewards, tasks.as_data_config(config.data).task)
    update_config = c.update_config()
    optims = {"optim": as_optim_config(config.optim)}
    if update_config.use_critic:
        optims["critic_optim"] = as_optim_config(config.critic_optim, where="critic_optim")
    _check_sizes(c, n, s.mesh, optims)
    critic = (_score_model(s, *params_io.config_source(config, *CRITIC_SOURCE_KEYS))
              if update_config.use_critic else None)
    orm, prm = (_score_model(s, source, f"rewards.{name}_source") if source else None
                for name, source in (("orm", rewards.orm_source), ("prm", rewards.prm_source)))
    models = Models(Transformer(s.model_config), critic, orm, prm)
    return Run(c, spec, rewards, sampling, c.scoring_config(n, rewards), update_config,
               optims["optim"], optims.get("critic_optim"), models)


def memory_estimate(s: common.Setup, run: Run, prompt_len: int, response_len: int,
                    eval_reward_models: Sequence[ModelConfig] = ()) -> MemoryEstimate:
    """rlr.parallel.memory's bytes a device of an iteration: the rollout of
    ppo.prompts_per_iteration x num_samples responses of `response_len` tokens after prompts of
    `prompt_len` slots, its scoring (one of ppo.scoring_slices row slices at a time) and the
    update of one minibatch of those rows (in each optimizer's grad_accum_steps micro-batches),
    with every model of the run alive (policy and
    reference of config.model; critic with GAE, ORM, PRM and the evaluation's reward models,
    `eval_reward_models` (common.eval_reward_models), of their own shapes)."""
    prompts, seq_len = run.ppo.prompts_per_iteration, prompt_len + response_len
    n = run.sampling.num_samples
    rows = prompts * n
    return estimate_memory(
        s.model_config, s.mesh, rows // run.ppo.num_minibatches, seq_len,
        optimizer=make_optimizer(run.policy_optim),
        critic=run.models.critic.config if run.models.critic else None, references=1,
        reward_models=[m.config for m in (run.models.orm, run.models.prm) if m is not None],
        scorers=eval_reward_models,
        rollout=(prompts, prompt_len, response_len, n), prefill_chunk=run.sampling.prefill_chunk,
        scoring=(rows // run.ppo.scoring_slices, seq_len), chunk_size=run.ppo.logprob_chunk,
        grad_accum_steps=run.policy_optim.grad_accum_steps,
        critic_grad_accum_steps=run.critic_optim.grad_accum_steps if run.critic_optim else None)


def initial_state(config: ml_collections.ConfigDict, s: common.Setup, run: Run,
                  rng: jax.Array) -> tuple[dict, dict]:
    """(state, frozen params) at the start: state = {policy: TrainState, rng, critic: TrainState
    (GAE), ref (EMA reference), value_stats (value normalisation)}; frozen = {ref (fixed
    reference), orm, prm}. Params come from config.ppo.policy_source / critic_source and
    config.rewards.orm_source / prm_source (see params_io.load_params)."""
    keys = jax.random.split(rng, 6)
    models, c = run.models, run.ppo
    source, key = params_io.config_source(config, "ppo.policy_source", "model.hf_checkpoint")
    policy = params_io.load_params(models.policy, source, s.mesh, keys[0], s.tokenizer, key=key)
    frozen = {"ref": _copy(policy)}  # a copy: the update donates the policy's buffers
    for name in ("orm", "prm"):
        if getattr(models, name) is not None:
            source, key = params_io.config_source(config, f"rewards.{name}_source")
            frozen[name] = params_io.load_params(getattr(models, name), source, s.mesh, keys[1],
                                                 s.tokenizer, key=key, reward_model=True)
    state = {"policy": create_train_state(policy, make_optimizer(run.policy_optim), keys[2]),
             "rng": replicate(keys[3], s.mesh)}
    if models.critic is not None:
        source, key = params_io.config_source(config, *CRITIC_SOURCE_KEYS)
        critic = params_io.load_params(models.critic, source, s.mesh, keys[4], s.tokenizer, key=key)
        state["critic"] = create_train_state(critic, make_optimizer(run.critic_optim), keys[5])
    if c.reference == "ema":
        state["ref"] = frozen.pop("ref")
    if c.value_norm:
        state["value_stats"] = replicate(running_stats_init(), s.mesh)
    return state, frozen


def make_step(config: ml_collections.ConfigDict, s: common.Setup, run: Run, frozen: dict,
              prompts: Prompts, batches: list, writer: MetricsWriter):
    """step_fn(state, step) -> (state, metrics) of common.run_loop: one rollout -> scoring ->
    update iteration on the next prompts of batches[0]; writes rollout samples every
    config.logging.every_steps iterations."""
    data = tasks.as_data_config(config.data)
    sampling = run.sampling
    n, rewards = sampling.num_samples, run.rewards
    sampler = cached_sampler(run.models.policy, common.sampling_config(
        s.tokenizer, data, sampling.temperature, n, sampling.top_k, sampling.top_p,
        sampling.unstack_layers, sampling.prefill_chunk), s.mesh, (prompts.width,))
    success_fn = ((lambda e, text: tasks.answer_correct(data, e, text))
                  if data.task in CHECKED_TASKS else None)
    needs_positions = run.models.prm is not None
    update_models = Models(run.models.policy, run.models.critic)
    ref_decay = run.ppo.ref_ema_decay if run.ppo.reference == "ema" else None

    def step_fn(state, step: int):
        timer = Timer()
        with timer.phase("rollout"):
            rows = next(batches[0])
            rng, sample_key, update_key = jax.random.split(state["rng"], 3)
            rollout = sampler(state["policy"].params, rows["tokens"], rows["mask"], sample_key)
            tokens, mask = (host_local_rows(x, s.mesh)
                            for x in (rollout.response_tokens, rollout.response_mask))
        with timer.phase("scoring"):
            examples = [prompts.examples[i] for i in np.repeat(rows["index"], n)]
            host, text = rollout_scoring.host_scores(
                s.tokenizer, tokens, mask, examples, success_fn, rewards.max_steps,
                rewards.step_delimiter, step_positions=needs_positions)
            params = {"policy": state["policy"].params, "ref": state.get("ref"), **frozen}
            if "critic" in state:
                params["critic"] = state["critic"].params
            scored = score(params, rollout, shard_batch(host, s.mesh), state.get("value_stats"),
                           models=run.models, spec=run.spec, config=run.scoring)
            jax.block_until_ready(scored.batch)
        with timer.phase("update"):
            state = {**state, "rng": rng}
            shardings = leaf_shardings(state)
            state, update_metrics = update(
                state, scored.batch, scored.value_stats, update_key, models=update_models,
                policy_optim=run.policy_optim, critic_optim=run.critic_optim, config=run.update,
                ref_decay=ref_decay, mesh=s.mesh, shardings=shardings)
            state = keep_shardings(state, shardings)
            update_metrics = jax.device_get(update_metrics)
        metrics = {**jax.device_get(scored.metrics), **update_metrics, **timer.split()}
        host_metrics = {"response_length": float(np.mean(mask.sum(axis=1))),
                        "num_steps": float(np.mean(text.num_steps)),
                        "repetition_rate": float(np.mean(text.repetition))}
        host_metrics["invalid_token_rows"] = float(np.mean(text.invalid_tokens > 0))
        if needs_positions:
            host_metrics["steps_dropped"] = float(np.mean(text.steps_dropped))
        metrics.update(process_mean(host_metrics))  # each process decoded its own rows
        tokens_all = process_mean({"tokens": float(mask.sum())})["tokens"] * jax.process_count()
        metrics["tokens_per_s"] = tokens_all / max(sum(timer.totals.values()), 1e-9)
        metrics["rollout/tokens_per_s"] = tokens_all / max(timer.totals["rollout"], 1e-9)
        done = step + 1
        if done % config.logging.every_steps == 0 or done == run.ppo.num_iterations:
            token_rewards, prm_scores = (host_local_rows(x, s.mesh) for x in
                                         (scored.token_rewards, scored.prm_scores))
            writer.write_samples(done, sample_records(examples, text, host, token_rewards,
                                                      prm_scores, config.logging.num_samples))
        return state, metrics

    return step_fn


def train(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Run PPO / GRPO / RLOO (config.ppo, config.rewards, config.sampling, config.data,
    config.optim for the policy, config.critic_optim for the critic, config.eval) in
    `workdir`; resumes from its newest checkpoint; exports the final policy params
    (WORKDIR/params). Returns the final metrics."""
    s = common.setup(config)
    run = make_run(config, s)
    data = tasks.as_data_config(config.data)
    prompts = Prompts(s.tokenizer, data, tasks.prompt_examples(data, "train"), run.ppo.max_prompt_len)
    chunk = run.sampling.prefill_chunk
    if 0 < chunk < prompts.width and prompts.width % chunk:
        raise ConfigError(f"config.sampling.prefill_chunk={chunk}: must divide the prompt width "
                          f"{prompts.width} (or be 0, or >= it)")
    state_rng, eval_rng = jax.random.split(s.rng)
    initial = list(initial_state(config, s, run, state_rng))  # [state, frozen]
    frozen = initial.pop()
    size = run.ppo.prompts_per_iteration
    batches = [batch_iterator(prompts.rows, size, config.seed)]
    log.info("ppo: %d train prompts of %d tokens, %d x %d rollouts an iteration, advantage %s",
             len(prompts.examples), prompts.width, size, run.sampling.num_samples, run.ppo.advantage)
    common.log_memory_estimate("ppo", memory_estimate(
        s, run, prompts.width, data.max_response_len,
        common.eval_reward_models(config, s.model_config, [run.rewards.orm_source])), s.mesh)
    writer = MetricsWriter(workdir)
    evaluate = make_evaluate(config, s, run.models.policy, writer, eval_rng,
                             run.rewards.step_delimiter, frozen)

    def on_restore(extra: dict) -> None:
        fresh = initial.pop()  # released here: a restored run must not keep a second copy
        if "data" in extra:
            batches[0] = batch_iterator(prompts.rows, size, config.seed, extra["data"])
        elif evaluate is not None:  # a fresh start: evaluate the initial policy (step 0)
            writer.write(0, {f"eval/{k}": v for k, v in evaluate(fresh, 0).items()})

    try:
        state, final = common.run_loop(
            config, workdir, initial[0], make_step(config, s, run, frozen, prompts, batches, writer),
            run.ppo.num_iterations, on_restore=on_restore,
            extra_fn=lambda: {"data": batches[0].state_dict()}, eval_fn=evaluate,
            eval_every=config.eval.every_steps, progress_keys=("reward/total", "accuracy", "kl"),
            writer=writer)
    finally:
        writer.close()
    params_io.export_params(workdir, state["policy"].params, s.model_config, s.tokenizer)
    return final
