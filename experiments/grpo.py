"""GAE vs critic-free advantages: GRPO (Shao et al. 2024, DeepSeekMath) and RLOO (Ahmadian et
al. 2024) on the settings of experiments/ppo.py; only config.ppo.advantage differs from the PPO
run (same seeds, prompts, samples, rewards), so `ppo.py:success` vs `grpo.py:grpo` compares the
advantage estimators alone.

    rlr --config experiments/grpo.py --workdir runs/grpo                   # synthetic, success reward
    rlr --config experiments/grpo.py:rloo --workdir runs/rloo
    rlr --config experiments/grpo.py:math_grpo --workdir runs/grpo-math    # Qwen2.5-Math-1.5B on MATH

GRPO as published puts the KL in the loss, not in the reward: add
--config.rewards.kl_coef=0 --config.ppo.kl_loss_coef=0.04 (the "KL in reward vs KL loss" switch).
"""
from __future__ import annotations

import ml_collections

from experiments import base, ppo

ADVANTAGES = ("grpo", "rloo")
VARIANTS = ADVANTAGES + tuple(f"{t}_{a}" for t in ppo.REAL_TASKS for a in ADVANTAGES)


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
    variant = base.select_variant("experiments/grpo.py", variant, VARIANTS, default="grpo")
    task, _, advantage = variant.rpartition("_")
    config = ppo.get_config(f"{task}_success" if task else "success")
    config.ppo.advantage = advantage
    return config
