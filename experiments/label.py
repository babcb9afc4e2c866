"""Sample solutions of the SFT policy on train problems and label them: the data of the reward models.

    rlr --config experiments/label.py --config.label.policy_source=runs/sft --workdir runs/label
    rlr --config experiments/label.py:math --workdir runs/label-math      # Qwen2.5 SFT policy on MATH
    rlr --config experiments/label.py:gsm8k --workdir runs/label-gsm8k

The synthetic variant labels every step (rlr.data.synthetic.check_steps); the real ones label
the outcome only (the math verifier), for an ORM (experiments/orm.py:math). The model and data
groups are those of experiments/sft.py, so the labels are of the policy the SFT run trained.
"""
from __future__ import annotations

import ml_collections

from experiments import base, sft

VARIANTS = sft.VARIANTS


def label_group(policy_source: str = "", num_problems: int = 512, num_samples: int = 8,
                temperature: float = 1.0, batch_size: int = 64) -> ml_collections.ConfigDict:
    """The label group: what the label loop (rlr/train/label.py) reads."""
    c = ml_collections.ConfigDict()
    c.policy_source = policy_source  # the policy: an rlr run dir (SFT), a HF dir; "" = config.model.hf_checkpoint (or random)
    c.num_problems = num_problems  # label responses to this many train problems (tasks.task_examples limit)
    c.num_samples = num_samples  # responses sampled a problem
    c.temperature = temperature  # sampling temperature (0: greedy, then num_samples copies)
    c.top_k = 0  # keep the k most likely tokens when sampling (0: off)
    c.top_p = 1.0  # nucleus mass when sampling (1.0: off)
    c.batch_size = batch_size  # prompts a sampling call (and a chunk of the resumable output); a multiple of data x fsdp
    c.corruptions = ()  # synthetic: also label one rlr.data.synthetic.corrupt(reference) a problem per mode
    return c


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
    variant = base.select_variant("experiments/label.py", variant, VARIANTS, default="synthetic")
    policy = sft.get_config(variant)
    config = base.common(trainer="label")
    config.model, config.mesh, config.data = policy.model, policy.mesh, policy.data
    if variant == "synthetic":
        config.label = label_group("runs/sft", num_problems=1000, num_samples=8, batch_size=64)
        return config
    config.label = label_group(f"runs/sft-{variant}", num_problems=2000, num_samples=4, batch_size=64)
    return config
