"""PPO of an SFT policy with shaped rewards: the reward-hacking study of Gao et al. (2024) and the
PPO of the DPO-vs-PPO study of Xu et al. (ICML 2024).

    rlr --config experiments/ppo.py:success --workdir runs/ppo-success     # synthetic task, CPU
    rlr --config experiments/ppo.py:clip_delta ...                         # one of STUDY
    rlr --config experiments/ppo.py:math_clip_delta ...                    # Qwen2.5-Math-1.5B on MATH
    rlr --config experiments/ppo.py:gsm8k_prm ...                          # ... on GSM8K
    rlr --config experiments/ppo.py:hh_rlhf ...                            # HH-RLHF, Bradley-Terry RM

The six reward variants (same seeds and budget; only config.rewards differs), objective
alpha * sum_k r_k + success - beta * KL:
  success         the 0/1 final-answer reward only
  orm             success + alpha * ORM score (sigmoid) at the last token
  prm             success + alpha * PRM step scores s_k (hackable by repeating correct steps)
  prm_clip        r_k = min(s_k - eta, 0)
  prm_delta       r_k = s_k - s_{k+1}, r_{K-1} = s_{K-1}, r_K = 0
  clip_delta      Clip, then Delta
Each synthetic variant reads its SFT policy from config.ppo.policy_source and its reward
models from config.rewards.orm_source / prm_source (run dirs of experiments/sft.py, orm.py,
prm.py; `make demo` sets them). The real variants read local checkpoints and run dirs (see
MATH_CHECKPOINT, ORM_RUN, PRM_RUN, HH_RM_RUN); nothing is downloaded. A reward model (or the
critic) trained on a larger model of the policy's family (`--config.model.hf_checkpoint=...` on
its run) is read at its own shape. GAE vs GRPO / RLOO: experiments/grpo.py.
"""
from __future__ import annotations

import ml_collections

from experiments import base, orm, sft
from rlr.train.tasks import data_group
from rlr.train.ppo import ppo_group, rewards_group, sampling_group

STUDY = ("success", "orm", "prm", "prm_clip", "prm_delta", "clip_delta")  # Gao et al. 2024
REAL_TASKS = ("math", "gsm8k")
VARIANTS = STUDY + tuple(f"{t}_{v}" for t in REAL_TASKS for v in STUDY) + ("hh_rlhf",)

ALPHA = 0.5  # weight of the ORM / PRM part (alpha of Gao et al. 2024)
ETA = 0.5  # eta of Clip: a step scored below eta gets a negative reward, above it 0
MATH_CHECKPOINT = "checkpoints/Qwen2.5-Math-1.5B"  # local HF dir (config.json, safetensors, tokenizer.json)
ORM_RUN = "runs/orm-{task}"  # the ORM run of experiments/orm.py:{task}
PRM_RUN = "runs/prm-{task}"  # the PRM run of experiments/prm.py:{task}
HH_CHECKPOINT = sft.QWEN_CHECKPOINT  # the HH-RLHF policy (an instruct model)
HH_RM_RUN = "runs/orm-hh_rlhf"  # the Bradley-Terry RM of experiments/orm.py:hh_rlhf


def study_rewards(variant: str, **changes) -> ml_collections.ConfigDict:
    """config.rewards of one of the six variants of Gao et al. (2024) (plus `changes`, e.g. the
    KL weight or where the reward models are)."""
    parts = {
        "success": {},
        "orm": dict(orm_weight=ALPHA),
        "prm": dict(prm_weight=ALPHA, prm_transform="none"),
        "prm_clip": dict(prm_weight=ALPHA, prm_transform="clip", prm_eta=ETA),
        "prm_delta": dict(prm_weight=ALPHA, prm_transform="delta"),
        "clip_delta": dict(prm_weight=ALPHA, prm_transform="clip_delta", prm_eta=ETA),
    }[variant]
    return rewards_group(success_weight=1.0, **parts, **changes)


def _synthetic(config: ml_collections.ConfigDict, variant: str) -> ml_collections.ConfigDict:
    config.model = base.model("tiny")  # the shape of experiments/sft.py's policy (the demo: synthetic-1m)
    config.data = data_group(num_train=4000, num_eval=128)
    config.sampling = sampling_group(temperature=1.0, num_samples=4)
    config.ppo = ppo_group(num_iterations=100, prompts_per_iteration=64, num_minibatches=4,
                           epochs=1, logprob_chunk=64)  # the update is ~80% of an iteration on CPU
    config.rewards = study_rewards(variant, kl_coef=0.02, max_steps=8)
    config.eval = sft.eval_group(every_steps=10, num_problems=128, batch_size=64)
    # synthetic-1m: 2e-4 with 16 prompts an iteration collapsed success-only PPO (held-out accuracy
    # 0.45 -> 0.08); 3e-5 barely moved any variant in 40 iterations; 1e-4 with 64 prompts keeps
    # success-only stable and lets the PRM-sum hack show within 16 iterations (README, Results).
    config.optim = base.optim(learning_rate=1e-4, schedule="constant", weight_decay=0.0)
    config.critic_optim = base.optim(learning_rate=3e-4, schedule="constant", weight_decay=0.0)
    return config


def _real(config: ml_collections.ConfigDict, task: str, variant: str) -> ml_collections.ConfigDict:
    """Qwen2.5-Math-1.5B on MATH / GSM8K: the policy is the checkpoint itself (it writes the
    boxed chain of thought of MATH_INSTRUCTION; set config.ppo.policy_source to start from an
    SFT run of the same model instead), the ORM / PRM are run dirs of reward models trained
    from it (steps end at a blank line, as config.rewards.step_delimiter says)."""
    config.model = base.model("qwen2.5-math-1.5b", hf_checkpoint=MATH_CHECKPOINT,
                              param_dtype="float32", dtype="bfloat16", remat="full")
    config.mesh = base.mesh(data=1, fsdp=-1)
    config.data = data_group(task=task, tokenizer="", data_dir="data/tfds",
                             manual_dir=f"data/manual/{task}", eval_split="test",
                             prompt_template=sft.MATH_INSTRUCTION, prompt_bucket=64,
                             response_bucket=64, max_response_len=1024 if task == "math" else 512)
    config.sampling = sampling_group(temperature=1.0, num_samples=4)
    config.ppo = ppo_group(num_iterations=500,
                           prompts_per_iteration=64, num_minibatches=8, epochs=1,
                           max_prompt_len=512, logprob_chunk=256)
    needs_orm, needs_prm = variant == "orm", variant.startswith("prm") or variant == "clip_delta"
    config.rewards = study_rewards(
        variant, kl_coef=0.05, max_steps=32, step_delimiter="\n\n",
        orm_source=ORM_RUN.format(task=task) if needs_orm else "",
        prm_source=PRM_RUN.format(task=task) if needs_prm else "")
    config.eval = sft.eval_group(every_steps=50, num_problems=500, batch_size=64)
    config.optim = base.optim(learning_rate=1e-6, schedule="constant", weight_decay=0.0)
    config.critic_optim = base.optim(learning_rate=5e-6, schedule="constant", weight_decay=0.0)
    config.checkpoint = base.checkpoint(every_steps=50)
    return config


def _hh_rlhf(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """PPO on HH-RLHF prompts with a Bradley-Terry RM, the three factors of Xu et al. (2024) on:
    advantage normalisation, a large batch, an EMA reference; also their gamma = lambda = 1,
    KL 0.1 in the reward, reward clip 20, 4 minibatches, value normalisation, top-k 200.
    The critic starts from the reward model."""
    config.model = base.model("", hf_checkpoint=HH_CHECKPOINT, param_dtype="float32",
                              dtype="bfloat16", remat="full")
    config.mesh = base.mesh(data=1, fsdp=-1)
    config.data = orm.hh_rlhf_data()
    config.sampling = sampling_group(temperature=1.0, top_k=200, num_samples=1)
    config.ppo = ppo_group(critic_source=HH_RM_RUN, num_iterations=300, prompts_per_iteration=512,
                           num_minibatches=4, epochs=1, gamma=1.0, gae_lambda=1.0,
                           normalize_advantages=True, value_norm=True, reference="ema",
                           ref_ema_decay=0.9, max_prompt_len=512, logprob_chunk=256)
    config.rewards = rewards_group(success_weight=0.0, orm_weight=1.0, orm_source=HH_RM_RUN,
                                   orm_sigmoid=False, kl_coef=0.1, reward_clip=20.0)
    config.eval = sft.eval_group(every_steps=50, num_problems=256, batch_size=64,
                                 rm_source=HH_RM_RUN)
    config.optim = base.optim(learning_rate=1e-6, schedule="constant", weight_decay=0.0)
    config.critic_optim = base.optim(learning_rate=5e-6, schedule="constant", weight_decay=0.0)
    config.checkpoint = base.checkpoint(every_steps=50)
    return config


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
    variant = base.select_variant("experiments/ppo.py", variant, VARIANTS, default="success")
    config = base.common(trainer="ppo")
    config.logging = base.logging(every_steps=1, num_samples=4)
    config.checkpoint = base.checkpoint(every_steps=20)
    if variant == "hh_rlhf":
        return _hh_rlhf(config)
    task, _, study = variant.partition("_")
    if task in REAL_TASKS:
        return _real(config, task, study)
    return _synthetic(config, variant)
