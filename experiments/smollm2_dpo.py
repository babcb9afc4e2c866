"""DPO of SmolLM2-135M-Instruct on verifier-ranked pairs of its own GSM-style solutions.

    rlr fetch
    rlr --config experiments/smollm2_dpo.py --workdir runs/smollm2-dpo         # CPU, 2 cores
    rlr eval --checkpoint runs/smollm2-dpo --sets gsm8k-eval
    rlr --config experiments/smollm2_dpo.py:full --workdir runs/smollm2-dpo    # GPU / TPU sizes

Pairs (config.dpo.pairs = "sampled"): the policy samples num_samples solutions to each training
problem (GSM-Symbolic problems generated from the non-held-out templates, see
experiments/smollm2_ppo.py); the answer verifier ranks them and a correct solution is paired
with an incorrect one of the same problem. These are verifier preferences, not human ones:
they say which final answer is right, nothing about style or helpfulness, and problems the
policy solves always (or, without reference_chosen, never) give no pair. Held-out eval: the
other 50 GSM8K originals.

The cpu variant sets config.dpo.reference_chosen: a problem none of whose samples is correct
pairs its reference solution (chosen) over one of them (SPIN's pairs, Chen et al. 2024), so a
policy that solves ~2% of GSM8K still gets pairs; the full variant keeps pure verifier pairs.

Measured (2026-12-03, 2-core CPU, nothing else running): 21.9 min wall, 4.7 GB peak RAM. None
of the 48 x 4 samples (224 tokens, temperature 1) was correct, so all 48 pairs were reference
pairs (at 160 tokens, without reference_chosen, an earlier run found no pair at all). 12 steps
of 4 pairs: loss 0.693 -> 0.26, reward margin 1.2; on 16 held-out reference pairs accuracy 1.0,
margin 1.17. That separates reference-style text from the policy's own samples, which is easy;
greedy accuracy on the 50 held-out GSM8K originals stayed 1/50 (rlr eval, 384 tokens; README).
"""
from __future__ import annotations

import ml_collections

from experiments import base, sft
from experiments.smollm2_ppo import gsm_data, smollm2_model
from rlr.train.dpo import dpo_group

VARIANTS = ("cpu", "full")


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
    variant = base.select_variant("experiments/smollm2_dpo.py", variant, VARIANTS, default="cpu")
    full = variant == "full"
    config = base.common(trainer="dpo")
    config.model = smollm2_model(full)
    num_steps = ml_collections.FieldReference(500 if full else 12)
    config.optim.total_steps = num_steps
    config.optim.schedule = "linear"
    config.optim.learning_rate = 5e-7 if full else 5e-6
    config.optim.warmup_steps = 20 if full else 2
    config.checkpoint = base.checkpoint(every_steps=100)
    if full:
        config.mesh = base.mesh(data=1, fsdp=-1)
        config.data = gsm_data(max_response_len=512)
        config.dpo = dpo_group(pairs="sampled", iterations=2, prompts_per_iteration=2048,
                               num_samples=8, temperature=1.0, sample_batch_size=64,
                               batch_size=32, beta=0.1, eval_pairs=128, refresh_reference=True)
        config.eval = sft.eval_group(every_steps=100, num_problems=50, batch_size=50)
    else:
        # 224 tokens: every training problem's reference solution fits (the longest is 222).
        config.data = gsm_data(max_response_len=224)
        config.dpo = dpo_group(pairs="sampled", iterations=1, prompts_per_iteration=48,
                               num_samples=4, temperature=1.0, sample_batch_size=16,
                               batch_size=4, beta=0.1, eval_pairs=16, logprob_chunk=32,
                               reference_chosen=True)
        config.eval = sft.eval_group(every_steps=0, num_problems=50, batch_size=25)
    config.dpo.num_steps = num_steps
    return config
