"""A process reward model on real step labels: SmolLM2-135M-Instruct + a score head, trained on
CHAMP's first-wrong-step annotations (540 model solutions to competition problems; steps before
the annotated first wrong step labelled correct, from it on wrong; Mao et al. 2024), for the
clip_delta variants of experiments/smollm2_ppo.py.

    rlr fetch                                                           # writes champ/fws_labelled.jsonl
    rlr --config experiments/smollm2_prm.py --workdir runs/smollm2-prm        # CPU, 2 cores
    rlr --config experiments/smollm2_prm.py:full --workdir runs/smollm2-prm   # GPU / TPU sizes

10% of the CHAMP problems (with all their solutions) are held out for eval/* (step accuracy).
CHAMP is competition mathematics, not GSM8K: this PRM scores GSM-style steps out of its domain,
which is what a small study on real labels can have offline.

Measured (2026-12-03, 2-core CPU): the cpu variant (486 train / 54 held-out solutions; 30 steps
of 4 solutions, a quarter of an epoch) took 11.8 min wall and 3.8 GB peak RAM. Held out, it
labels 62.6% of the 422 steps right, below the 64.5% of always answering "correct", and finds the
first wrong step (or its absence) on 9.3% of the 54 solutions: no step judgement that
generalises, from 120 competition solutions; the full variant trains 300 steps of 32.
"""
from __future__ import annotations

import os

import ml_collections

from experiments import base, sft
from experiments.orm import rm_group
from experiments.smollm2_ppo import gsm_data, model_dir, smollm2_model
from rlr.fetch import DEFAULT_CACHE

VARIANTS = ("cpu", "full")


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
    variant = base.select_variant("experiments/smollm2_prm.py", variant, VARIANTS, default="cpu")
    full = variant == "full"
    config = base.common(trainer="rm")
    config.model = smollm2_model(full)
    config.data = gsm_data(max_response_len=512 if full else 256)
    steps = ml_collections.FieldReference(300 if full else 30)
    config.optim.total_steps = steps
    config.optim.learning_rate = 1e-5
    config.optim.warmup_steps = 10 if full else 3
    config.rm = rm_group("prm", steps, batch_size=32 if full else 4, init_source=model_dir(),
                         data_path=os.path.join(DEFAULT_CACHE, "champ", "fws_labelled.jsonl"))
    config.rm.max_steps = 32 if full else 16
    config.eval = sft.eval_group(every_steps=100 if full else 0, num_problems=0, batch_size=8)
    config.checkpoint = base.checkpoint(every_steps=100)
    if full:
        config.mesh = base.mesh(data=1, fsdp=-1)
    return config
