"""Outcome reward models: the ORM of the reward-hacking study and the Bradley-Terry RM of DPO vs PPO.

    rlr --config experiments/orm.py --config.rm.init_source=runs/sft --config.rm.data_path=runs/label --workdir runs/orm
    rlr --config experiments/orm.py:math --workdir runs/orm-math        # Qwen2.5, MATH outcome labels
    rlr --config experiments/orm.py:gsm8k --workdir runs/orm-gsm8k      # Qwen2.5, GSM8K outcome labels
    rlr --config experiments/orm.py:hh_rlhf --workdir runs/rm-hh        # Bradley-Terry RM on HH-RLHF pairs

synthetic (default): BCE on the final-answer labels of a label run (experiments/label.py), from
the SFT policy, the tiny model on a CPU. math / gsm8k: the same on the outcome labels of the
SFT policy's samples (experiments/label.py:math), with best-of-8 reranking at the end.
hh_rlhf: a Bradley-Terry reward model on the HH-RLHF preference pairs (Xu et al. 2024 train
PPO on such a model), read from the upstream files in data/manual/hh_rlhf.
"""
from __future__ import annotations

import ml_collections

from experiments import base, sft
from rlr.train.sequences import DIALOGUE_TEMPLATE
from rlr.train.tasks import data_group

VARIANTS = ("synthetic", "math", "gsm8k", "hh_rlhf")


def rm_group(kind: str, num_steps: ml_collections.FieldReference, batch_size: int = 32,
             init_source: str = "", data_path: str = "", dataset: str = "") -> ml_collections.ConfigDict:
    """The rm group: what the reward-model loop (rlr/train/rm.py) reads."""
    c = ml_collections.ConfigDict()
    c.kind = kind  # orm (outcome) | prm (process)
    c.orm_loss = "bce"  # an ORM's objective: bce (correctness labels) | bradley_terry (pairs)
    c.init_source = init_source  # start from: an rlr run dir (SFT: decoder + fresh head), a HF dir; "" = model.hf_checkpoint
    c.data_path = data_path  # a labelled.jsonl or the workdir of a label run; "" = use rm.dataset
    c.dataset = dataset  # a load_split set instead: math_shepherd | prm800k (prm), hh_rlhf | preference_pairs
    c.split = "train"  # the load_split split read from rm.dataset
    c.manual_dir = ""  # rm.dataset's upstream files; "" = config.data.manual_dir
    c.max_examples = 0  # > 0: read only this many records of rm.dataset, spread evenly over it
    c.eval_fraction = 0.1  # share of the questions held out (with all their responses) for eval/*
    c.num_steps = num_steps  # optimizer updates (the schedule's optim.total_steps follows it)
    c.batch_size = batch_size  # responses (pairs: bradley_terry) an update, all hosts; multiple of data x fsdp
    c.max_steps = 16  # PRM: steps (lines) read a response; beyond, the middle ones are dropped
    c.max_prompt_len = 0  # > 0: keep only the last this many prompt tokens (long dialogues)
    c.best_of_n = 0  # > 0: at the end, best-of-N accuracy on eval.num_problems held-out problems
    c.best_of_n_temperature = 1.0  # sampling temperature of the best-of-N responses
    c.prm_aggregate = "min"  # best-of-N with a PRM: a response scores the min | product of its steps
    c.policy_source = ""  # best-of-N policy; "" = rm.init_source
    return c


def hh_rlhf_data() -> ml_collections.ConfigDict:
    """The data group of every HH-RLHF experiment (orm.py, dpo.py and ppo.py:hh_rlhf): the
    upstream files in data/manual/hh_rlhf, one builder config (dataset_config, "" = all four
    subsets), one prompt format and reply length, so that the RM is trained on and DPO and PPO
    are measured on the same dialogues. Pick a subset for all three with
    --config.data.dataset_config=helpful_base. The prompt is the dialogue's Human / Assistant
    turns as the chat's user / assistant messages (DIALOGUE_TEMPLATE, as TRL converts HH for
    chat models); --config.data.prompt_template='{question}' puts the whole transcript in one
    user message instead."""
    return data_group(task="hh_rlhf", tokenizer="", data_dir="data/tfds",
                      manual_dir="data/manual/hh_rlhf", eval_split="test",
                      prompt_template=DIALOGUE_TEMPLATE, prompt_bucket=64, response_bucket=64,
                      max_response_len=256)


def rm_config(kind: str, variant: str, num_steps: int) -> ml_collections.ConfigDict:
    """The shared frame of experiments/orm.py and prm.py: the model, mesh and data groups of
    experiments/sft.py:<variant> (its "math" variant for the variants SFT has not), checkpoint,
    eval, and an rm group whose num_steps drives optim.total_steps."""
    policy = sft.get_config(variant if variant in sft.VARIANTS else "math")
    config = base.common(trainer="rm")
    config.model, config.mesh, config.data = policy.model, policy.mesh, policy.data
    steps = ml_collections.FieldReference(num_steps)
    config.optim.total_steps = steps
    config.optim.warmup_steps = steps // 20  # follows rm.num_steps too
    config.rm = rm_group(kind, steps)
    config.checkpoint = base.checkpoint(every_steps=500)
    if variant == "synthetic":
        config.eval = sft.eval_group(every_steps=100, num_problems=64, batch_size=64)
        config.optim.learning_rate = 3e-4
        return config
    config.eval = sft.eval_group(every_steps=200, num_problems=200, batch_size=64)
    config.optim.learning_rate = 1e-5
    return config


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
    variant = base.select_variant("experiments/orm.py", variant, VARIANTS, default="synthetic")
    if variant == "synthetic":
        config = rm_config("orm", variant, num_steps=300)
        config.rm.init_source = "runs/sft"
        config.rm.data_path = "runs/label"
        return config
    if variant == "hh_rlhf":
        config = rm_config("orm", variant, num_steps=2500)  # ~1 epoch of the ~160k pairs at batch 64
        config.rm.orm_loss = "bradley_terry"
        config.rm.dataset = "hh_rlhf"
        config.rm.batch_size = 64
        config.rm.max_prompt_len = 512
        config.rm.eval_fraction = 0.02
        config.data = hh_rlhf_data()
        config.eval.num_problems = 0
        return config
    config = rm_config("orm", variant, num_steps=500)  # ~2 epochs of 2000 problems x 4 samples at batch 32
    config.rm.init_source = f"runs/sft-{variant}"
    config.rm.data_path = f"runs/label-{variant}"
    config.rm.best_of_n = 8
    return config
