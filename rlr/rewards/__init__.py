"""Rewards: math answer verifiers, step segmentation, and reward shaping into per-token arrays.

Layering: this package never imports rlr.models, rlr.train or rlr.sampling; a learned
reward model enters the trainer as a scoring function whose outputs (ORM / PRM scores)
are shaped here.
"""
from rlr.rewards.segment import split_steps, step_arrays, step_end_tokens
from rlr.rewards.shaping import (
    RewardSpec,
    at_last_token,
    clip_process_rewards,
    delta_process_rewards,
    last_token_index,
    process_rewards,
    scatter_to_tokens,
    shape_rewards,
)
from rlr.rewards.verifier import answers_match, extract_answer, normalize_answer, verify

__all__ = [
    "RewardSpec",
    "answers_match",
    "at_last_token",
    "clip_process_rewards",
    "delta_process_rewards",
    "extract_answer",
    "last_token_index",
    "normalize_answer",
    "process_rewards",
    "scatter_to_tokens",
    "shape_rewards",
    "split_steps",
    "step_arrays",
    "step_end_tokens",
    "verify",
]
