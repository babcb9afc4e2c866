"""Supervised fine-tuning of the policy that the reward models and PPO / DPO start from.

    rlr --config experiments/sft.py --workdir runs/sft                 # synthetic task, tiny model, CPU
    rlr --config experiments/sft.py:gsm8k --workdir runs/sft-gsm8k     # Qwen2.5 on GSM8K
    rlr --config experiments/sft.py:math --workdir runs/sft-math       # Qwen2.5 on MATH

The real variants read a local Hugging Face checkpoint (config.model.hf_checkpoint, its
tokenizer.json too) and the upstream dataset files in config.data.manual_dir (see
rlr/data/builders); nothing is downloaded.
"""
from __future__ import annotations

import ml_collections

from experiments import base
from rlr.train.tasks import data_group

VARIANTS = ("synthetic", "gsm8k", "math")
QWEN_CHECKPOINT = "checkpoints/Qwen2.5-1.5B-Instruct"  # a local HF directory (config.json, safetensors, tokenizer)
MATH_INSTRUCTION = "{question}\nPlease reason step by step, and put your final answer within \\boxed{}."


def sft_group(num_steps: ml_collections.FieldReference, batch_size: int = 32) -> ml_collections.ConfigDict:
    """The sft group: what the SFT loop (rlr/train/sft.py) reads."""
    c = ml_collections.ConfigDict()
    c.init_source = ""  # params to start from: "" = config.model.hf_checkpoint (or random), an rlr run dir, a HF dir
    c.num_steps = num_steps  # optimizer updates (the schedule's optim.total_steps follows it)
    c.batch_size = batch_size  # sequences (or packed rows) an update, all hosts; a multiple of data x fsdp
    c.pack_length = 0  # > 0: pack sequences into rows of this many tokens; 0: one pair a row
    c.chunk_size = 128  # time chunk of the log-prob computation
    c.aggregation = "token_mean"  # how token losses are averaged (rlr.losses.masked.AGGREGATIONS)
    return c


def eval_group(every_steps: int = 200, num_problems: int = 64, batch_size: int = 32,
               rm_source: str = "") -> ml_collections.ConfigDict:
    """The eval group: held-out loss and greedy accuracy, and a reward model's score."""
    c = ml_collections.ConfigDict()
    c.every_steps = every_steps  # evaluate every this many updates (and after the last); 0: only at the end
    c.num_problems = num_problems  # held-out problems evaluated; 0 disables evaluation
    c.batch_size = batch_size  # prompts a sampling call; a multiple of data x fsdp
    c.rm_source = rm_source  # SFT / DPO / PPO: an outcome RM (rlr run, or HF checkpoint of its own shape) scoring each greedy response (eval/rm_score); "" = none
    c.rm_tokenizer = ""  # the tokenizer (and chat format) rm_source reads replies with: a tokenizer file or checkpoint dir; "" = the policy's
    return c


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
    variant = base.select_variant("experiments/sft.py", variant, VARIANTS, default="synthetic")
    config = base.common(trainer="sft")
    num_steps = ml_collections.FieldReference(1500)
    config.optim.total_steps = num_steps
    config.checkpoint = base.checkpoint(every_steps=500)
    if variant == "synthetic":
        config.model = base.model("tiny")
        config.data = data_group(num_train=4000, num_eval=128)
        config.sft = sft_group(num_steps, batch_size=32)
        config.eval = eval_group(every_steps=250, num_problems=128, batch_size=64)
        config.optim.learning_rate = 1e-3
        config.optim.warmup_steps = 50
        config.optim.weight_decay = 0.01
        return config
    config.model = base.model("", hf_checkpoint=QWEN_CHECKPOINT, param_dtype="float32",
                              dtype="bfloat16", remat="full")
    config.mesh = base.mesh(data=1, fsdp=-1)
    config.data = data_group(task=variant, tokenizer="", data_dir="data/tfds",
                             manual_dir=f"data/manual/{variant}", eval_split="test",
                             prompt_template=MATH_INSTRUCTION, prompt_bucket=64,
                             response_bucket=64, max_response_len=512 if variant == "gsm8k" else 1024)
    num_steps.set(700 if variant == "gsm8k" else 1500)  # ~3 epochs of GSM8K (7.5k, batch 32), ~2 of MATH (12k, batch 16)
    config.sft = sft_group(num_steps, batch_size=32 if variant == "gsm8k" else 16)
    config.eval = eval_group(every_steps=200, num_problems=500, batch_size=64)
    config.optim.learning_rate = 1e-5
    config.optim.warmup_steps = 20
    return config
