"""Offline DPO (and its variants: --config.dpo.loss=ipo | simpo | cdpo | robust | hinge).

    rlr --config experiments/dpo.py --workdir runs/dpo            # synthetic, from runs/sft: reference over corrupted
    rlr --config experiments/dpo.py:labelled --workdir runs/dpo-l  # correct over incorrect samples of runs/label
    rlr --config experiments/dpo.py:hh_rlhf --workdir runs/dpo-hh  # HH-RLHF, the policy of ppo.py:hh_rlhf
    rlr --config experiments/dpo.py:gsm8k --config.dpo.policy_source=runs/sft-gsm8k --workdir runs/dpo-gsm8k
    rlr --config experiments/dpo.py:math --config.dpo.policy_source=runs/sft-math --workdir runs/dpo-math

gsm8k / math: pairs sampled once from the SFT policy (config.dpo.pairs='sampled', one round) and
ranked by the answer verifier: a correct solution over an incorrect one of the same problem.
The real variants read a local Hugging Face checkpoint and the upstream files (rlr/data/builders);
nothing is downloaded. See rlr/train/dpo.py for every config.dpo key.
"""
from __future__ import annotations

import ml_collections

from experiments import base
from experiments.orm import hh_rlhf_data
from experiments.ppo import HH_CHECKPOINT, HH_RM_RUN
from experiments.sft import MATH_INSTRUCTION, QWEN_CHECKPOINT, eval_group
from rlr.train.tasks import data_group
from rlr.train.dpo import dpo_group

VARIANTS = ("synthetic", "labelled", "hh_rlhf", "gsm8k", "math")


def real_model(checkpoint: str) -> ml_collections.ConfigDict:
    """The model group of the real settings: a local HF checkpoint, bf16 compute, FSDP-friendly remat."""
    return base.model("", hf_checkpoint=checkpoint, param_dtype="float32", dtype="bfloat16", remat="full")


def math_data(task: str) -> ml_collections.ConfigDict:
    """The data group of GSM8K / MATH (as experiments/sft.py uses them)."""
    return data_group(task=task, tokenizer="", data_dir="data/tfds", manual_dir=f"data/manual/{task}",
                      eval_split="test", prompt_template=MATH_INSTRUCTION, prompt_bucket=64,
                      response_bucket=64, max_response_len=512 if task == "gsm8k" else 1024)


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
    variant = base.select_variant("experiments/dpo.py", variant, VARIANTS, default="synthetic")
    config = base.common(trainer="dpo")
    num_steps = ml_collections.FieldReference(300)
    config.optim.total_steps = num_steps
    config.optim.schedule = "linear"
    config.checkpoint = base.checkpoint(every_steps=200)
    if variant in ("synthetic", "labelled"):
        config.model = base.model("tiny")
        config.data = data_group(num_train=2000, num_eval=64)
        # From the SFT run of experiments/sft.py (a random policy samples ids the char tokenizer lacks).
        config.dpo = dpo_group(policy_source="runs/sft", pairs="corrupt", batch_size=32, beta=0.1,
                               eval_pairs=64)
        if variant == "labelled":  # the label run of experiments/label.py
            config.dpo.pairs, config.dpo.data_path = "labelled", "runs/label"
        config.eval = eval_group(every_steps=100, num_problems=64, batch_size=64)
        config.optim.learning_rate = 3e-4
        config.optim.warmup_steps = 10
    elif variant == "hh_rlhf":
        # Rafailov et al. (2023) on Anthropic HH: beta 0.1, lr 1e-6 (RMSprop there), batch 64,
        # prompts kept to their last 256 tokens, replies cut at 256. The policy, data and
        # held-out measure of experiments/ppo.py:hh_rlhf, so the two compare (Xu et al. 2024):
        # eval/rm_score, the Bradley-Terry RM's mean score of greedy replies to 256 test prompts.
        config.model = real_model(HH_CHECKPOINT)
        config.mesh = base.mesh(data=1, fsdp=-1)
        config.data = hh_rlhf_data()
        num_steps.set(2500)  # ~1 epoch of the 160k HH pairs at batch 64
        config.dpo = dpo_group(pairs="hh_rlhf", batch_size=64, beta=0.1, max_prompt_len=256,
                               eval_pairs=512)
        config.eval = eval_group(every_steps=250, num_problems=256, batch_size=64,
                                 rm_source=HH_RM_RUN)
        config.optim.learning_rate = 1e-6
        config.optim.warmup_steps = 150
    else:  # gsm8k / math: verifier-ranked pairs sampled from the SFT policy
        config.model = real_model(QWEN_CHECKPOINT)
        config.mesh = base.mesh(data=1, fsdp=-1)
        config.data = math_data(variant)
        num_steps.set(500)
        config.dpo = dpo_group(pairs="sampled", iterations=1, prompts_per_iteration=4096,
                               num_samples=8, temperature=1.0, sample_batch_size=64, batch_size=32,
                               beta=0.1, eval_pairs=256)
        config.eval = eval_group(every_steps=100, num_problems=500, batch_size=64)
        config.optim.learning_rate = 5e-7
        config.optim.warmup_steps = 20
    config.dpo.num_steps = num_steps  # the schedule's optim.total_steps follows it
    return config
