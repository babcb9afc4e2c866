"""The PPO factors of Xu et al. (ICML 2024), "Is DPO Superior to PPO for LLM Alignment?", Table 3:
PPO with a Bradley-Terry reward model, then cumulatively + advantage normalisation, + a large
batch, + an EMA reference model.

    rlr --config experiments/ppo_factors.py:baseline --config.ppo.policy_source=runs/sft \\
        --config.rewards.orm_source=runs/rm-bt --workdir runs/ppo-baseline       # synthetic, CPU
    rlr --config experiments/ppo_factors.py:ema_ref ...                          # all three on
    rlr --config experiments/ppo_factors.py:hh_rlhf_baseline --workdir runs/ppo-hh-baseline
    python -m rlr.studies.dpo_vs_ppo --workdir runs/dpo_vs_ppo                   # the whole study

Variants (FACTORS, each adds one factor to the one before):
  baseline      advantages not normalised, small batch, fixed reference (the initial policy)
  adv_norm      + advantages whitened over the batch
  large_batch   + LARGE_BATCH x the prompts an iteration, / LARGE_BATCH the iterations: the same
                number of sampled responses (the same budget), fewer and larger updates (the
                number of minibatches stays 4, as in the paper); where its LARGE_BATCH x larger
                minibatches do not fit (hh_rlhf_*), --config.optim.grad_accum_steps=4 and
                --config.critic_optim.grad_accum_steps=4 take the same updates in the memory of
                the small batch
  ema_ref       + reference <- decay * reference + (1 - decay) * policy after each iteration
Everything else is fixed: GAE with gamma = lambda = 1, value normalisation, KL in the reward,
the raw (no sigmoid) reward-model score at the last token clipped to +-20.

synthetic (the bare names): the ~1M-parameter policy of the synthetic task, rewarded by the
Bradley-Terry RM (experiments/orm.py with rm.orm_loss=bradley_terry) trained on correct-over-
incorrect pairs of its own samples; the SFT run and the RM run are set on the command line
(rlr/studies/dpo_vs_ppo.py does). hh_rlhf_*: experiments/ppo.py:hh_rlhf (a local instruct
checkpoint, the Bradley-Terry RM of experiments/orm.py:hh_rlhf) with the same switches.
"""
from __future__ import annotations

import ml_collections

from experiments import base, ppo, sft
from rlr.config import ConfigError
from rlr.train.tasks import data_group
from rlr.train.ppo import ppo_group, rewards_group, sampling_group

FACTORS = ("baseline", "adv_norm", "large_batch", "ema_ref")  # cumulative, Table 3's order
VARIANTS = FACTORS + tuple(f"hh_rlhf_{f}" for f in FACTORS)
LARGE_BATCH = 4  # large_batch: this many times the prompts an iteration, / LARGE_BATCH iterations
EMA_DECAY = 0.9  # ema_ref: ref <- decay * ref + (1 - decay) * policy each iteration
RM_RUN = "runs/rm-bt"  # the Bradley-Terry RM run of the synthetic variants (experiments/orm.py)


def with_factors(config: ml_collections.ConfigDict, factor: str) -> ml_collections.ConfigDict:
    """`config`, a PPO config with all three factors on (a large batch), with the factors after
    `factor` (in FACTORS order) turned off: no advantage normalisation before adv_norm; before
    large_batch, LARGE_BATCH times fewer prompts an iteration over LARGE_BATCH times more
    iterations (evaluated as often in sampled responses); a fixed reference before ema_ref."""
    level = FACTORS.index(factor)
    config.ppo.normalize_advantages = level >= FACTORS.index("adv_norm")
    if level < FACTORS.index("large_batch"):
        if config.ppo.prompts_per_iteration % LARGE_BATCH:
            raise ConfigError(f"experiments/ppo_factors.py:{factor}: config.ppo.prompts_per_"
                              f"iteration={config.ppo.prompts_per_iteration} must divide by "
                              f"LARGE_BATCH={LARGE_BATCH}")
        config.ppo.prompts_per_iteration //= LARGE_BATCH
        config.ppo.num_iterations *= LARGE_BATCH
        config.eval.every_steps *= LARGE_BATCH
    ema = level >= FACTORS.index("ema_ref")
    config.ppo.reference = "ema" if ema else "fixed"
    config.ppo.ref_ema_decay = EMA_DECAY
    return config


def _synthetic() -> ml_collections.ConfigDict:
    """PPO of the synthetic-task policy on the Bradley-Terry RM's score, all factors on."""
    config = base.common(trainer="ppo")
    config.logging = base.logging(every_steps=1, num_samples=4)
    config.checkpoint = base.checkpoint(every_steps=20)
    config.model = base.model("tiny")  # the shape of the SFT run's policy (the study: synthetic-1m)
    config.data = data_group(num_train=4000, num_eval=128)
    config.sampling = sampling_group(temperature=1.0, num_samples=4)
    config.ppo = ppo_group(policy_source="runs/sft", num_iterations=15, prompts_per_iteration=128,
                           num_minibatches=4, epochs=1, gamma=1.0, gae_lambda=1.0,
                           normalize_advantages=True, value_norm=True, reference="ema",
                           ref_ema_decay=EMA_DECAY, logprob_chunk=64)
    config.rewards = rewards_group(success_weight=0.0, orm_weight=1.0, orm_source=RM_RUN,
                                   orm_sigmoid=False, kl_coef=0.1, reward_clip=20.0)
    config.eval = sft.eval_group(every_steps=5, num_problems=128, batch_size=64)
    config.optim = base.optim(learning_rate=2e-4, schedule="constant", weight_decay=0.0)
    config.critic_optim = base.optim(learning_rate=1e-3, schedule="constant", weight_decay=0.0)
    return config


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
    variant = base.select_variant("experiments/ppo_factors.py", variant, VARIANTS, default="ema_ref")
    if variant.startswith("hh_rlhf_"):
        return with_factors(ppo.get_config("hh_rlhf"), variant[len("hh_rlhf_"):])
    return with_factors(_synthetic(), variant)
