"""Process reward models: the PRM of the reward-hacking study (Gao et al. 2024).

    rlr --config experiments/prm.py --config.rm.init_source=runs/sft --config.rm.data_path=runs/label --workdir runs/prm
    rlr --config experiments/prm.py:math_shepherd --workdir runs/prm-shepherd   # Qwen2.5 on Math-Shepherd
    rlr --config experiments/prm.py:prm800k --workdir runs/prm-prm800k          # Qwen2.5 on PRM800K

synthetic (default): step labels of a label run (rlr.data.synthetic.check_steps: a repeated
correct step is correct, which is what lets PPO hack this PRM), from the SFT policy, the tiny
model on a CPU. math_shepherd / prm800k: the local upstream files (data/manual/<name>, see
rlr/data/builders/process_steps.py), one line a step, the MATH prompt format of
experiments/sft.py:math, with best-of-8 reranking of the MATH test problems at the end.
"""
from __future__ import annotations

import ml_collections

from experiments import base
from experiments.orm import rm_config

VARIANTS = ("synthetic", "math_shepherd", "prm800k")


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
    variant = base.select_variant("experiments/prm.py", variant, VARIANTS, default="synthetic")
    if variant == "synthetic":
        config = rm_config("prm", variant, num_steps=300)
        config.rm.init_source = "runs/sft"
        config.rm.data_path = "runs/label"
        return config
    config = rm_config("prm", variant, num_steps=1500)  # ~1 epoch of 100k solutions at batch 64
    config.rm.dataset = variant
    config.rm.manual_dir = f"data/manual/{variant}"
    config.rm.max_examples = 100_000
    config.rm.batch_size = 64
    config.rm.max_steps = 32
    config.rm.eval_fraction = 0.02
    config.rm.best_of_n = 8
    return config
