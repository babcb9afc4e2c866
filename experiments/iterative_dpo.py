"""Iterative (online) DPO: rounds of sample from the current policy -> rank (answer checker or an
outcome reward model) -> pair the best with the worst -> DPO updates (rlr/train/dpo.py,
config.dpo.pairs='sampled').

    rlr --config experiments/iterative_dpo.py --workdir runs/idpo       # synthetic, from runs/sft
    rlr --config experiments/iterative_dpo.py --config.dpo.rm_source=runs/orm \\
        --workdir runs/idpo-orm                                         # ranked by the ORM instead
    rlr --config experiments/iterative_dpo.py:gsm8k --config.dpo.policy_source=runs/sft-gsm8k \\
        --workdir runs/idpo-gsm8k                                           # and :math likewise

Start from an SFT policy (synthetic: the run of experiments/sft.py in runs/sft): a random one
never answers right, so no round would find a pair.
"""
from __future__ import annotations

import ml_collections

from experiments import base, dpo
from experiments.sft import QWEN_CHECKPOINT, eval_group
from rlr.train.tasks import data_group
from rlr.train.dpo import dpo_group

VARIANTS = ("synthetic", "gsm8k", "math")


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
    variant = base.select_variant("experiments/iterative_dpo.py", variant, VARIANTS, default="synthetic")
    config = base.common(trainer="dpo")
    num_steps = ml_collections.FieldReference(400)
    config.optim.total_steps = num_steps
    config.optim.schedule = "constant"  # every round learns at the same rate
    config.checkpoint = base.checkpoint(every_steps=100)
    if variant == "synthetic":
        config.model = base.model("tiny")
        config.data = data_group(num_train=2000, num_eval=64)
        config.dpo = dpo_group(num_steps=num_steps.get(), policy_source="runs/sft", pairs="sampled",
                               iterations=4, prompts_per_iteration=256, num_samples=4, temperature=1.0,
                               sample_batch_size=64, batch_size=32, beta=0.1, eval_pairs=64,
                               refresh_reference=True)
        config.eval = eval_group(every_steps=100, num_problems=64, batch_size=64)
        config.optim.learning_rate = 1e-4
    else:
        # Pang et al. (2024), iterative RPO on GSM8K: a few rounds, fresh samples each, the
        # reference reset to the last round's policy.
        config.model = dpo.real_model(QWEN_CHECKPOINT)
        config.mesh = base.mesh(data=1, fsdp=-1)
        config.data = dpo.math_data(variant)
        num_steps.set(1200)
        config.dpo = dpo_group(num_steps=num_steps.get(), pairs="sampled", iterations=3,
                               prompts_per_iteration=2048, num_samples=8, temperature=1.0,
                               sample_batch_size=64, batch_size=32, beta=0.1, eval_pairs=256,
                               refresh_reference=True)
        config.eval = eval_group(every_steps=400, num_problems=500, batch_size=64)
        config.optim.learning_rate = 5e-7
    config.dpo.num_steps = num_steps  # the schedule's optim.total_steps follows it
    return config
