"""The jitted pieces of reward-model training, as pure functions of (state or params, batch) (the
loop is rlr/train/rm.py).

Axes: B rows (responses, or pairs for Bradley-Terry), P prompt slots (left-padded), R response
slots (right-padded), K steps.

A batch is a dict of arrays, by objective (OBJECTIVES):
- "outcome_bce" (ORM, Cobbe et al. 2021): prompt_tokens, prompt_mask [B, P]; response_tokens,
  response_mask [B, R]; labels [B] float (1 = the final answer is right); row_mask [B] bool.
  The verdict is the score head at the last response token (its eos).
- "bradley_terry" (pairwise RM, Ouyang et al. 2022): the fields of rlr.train.dpo_step.PairBatch:
  prompt_tokens, prompt_mask [B, P]; chosen_tokens, chosen_mask, rejected_tokens,
  rejected_mask [B, R]; pair_mask [B] bool. Each response's verdict is read as for the ORM.
- "process_bce" (PRM, Lightman et al. 2023): the prompt and response fields; step_positions [B, K]
  int32 (response token that ends each step, rlr.train.sequences.step_end_positions); step_labels
  [B, K] float (1 = the step is correct); step_mask [B, K] bool (labelled steps of valid rows).
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import optax

from rlr.losses.reward_model import bradley_terry_loss, outcome_bce_loss, process_bce_loss
from rlr.models import Transformer
from rlr.train import sequences
from rlr.train.accumulate import accumulated_grad
from rlr.train.dpo_step import PairBatch, pair_sequences
from rlr.train.state import TrainState, apply_gradients

OBJECTIVES = ("outcome_bce", "bradley_terry", "process_bce")
Batch = Mapping[str, jax.Array]


def response_token_scores(model: Transformer, params: Any, batch: Batch) -> jax.Array:
    """The score head at every response token, float32 [B, R] (entry r has seen x and y_<=r)."""
    seq = sequences.sequence_inputs(batch["prompt_tokens"], batch["prompt_mask"],
                                    batch["response_tokens"], batch["response_mask"])
    return sequences.response_scores(model, params, seq)


def outcome_verdicts(model: Transformer, params: Any, batch: Batch) -> jax.Array:
    """ORM verdict logits [B]: the response score at each row's last valid token."""
    return sequences.outcome_scores(response_token_scores(model, params, batch), batch["response_mask"])


def pair_verdicts(model: Transformer, params: Any, batch: Batch) -> tuple[jax.Array, jax.Array]:
    """(chosen, rejected) verdict logits [B] of B pairs, both responses of a pair scored in one
    [2B, P + R] model batch (rlr.train.dpo_step.pair_sequences)."""
    seq = pair_sequences(PairBatch(**{k: batch[k] for k in PairBatch._fields}))
    verdicts = sequences.outcome_scores(sequences.response_scores(model, params, seq), seq.response_mask)
    verdicts = verdicts.reshape(-1, 2)
    return verdicts[:, 0], verdicts[:, 1]


def process_step_scores(model: Transformer, params: Any, batch: Batch) -> jax.Array:
    """PRM step logits [B, K]: the response score at each step's end token (mask the padding)."""
    return sequences.step_scores(response_token_scores(model, params, batch), batch["step_positions"])


def outcome_loss(params: Any, model: Transformer, batch: Batch):
    """outcome_bce_loss(verdicts, labels, row_mask): BCE of the last-token logit against the
    final answer's correctness."""
    return outcome_bce_loss(outcome_verdicts(model, params, batch), batch["labels"], batch["row_mask"])


def pair_loss(params: Any, model: Transformer, batch: Batch):
    """bradley_terry_loss(r_chosen, r_rejected, pair_mask): -log sigmoid(r_w - r_l)."""
    chosen, rejected = pair_verdicts(model, params, batch)
    return bradley_terry_loss(chosen, rejected, batch["pair_mask"])


def process_loss(params: Any, model: Transformer, batch: Batch):
    """process_bce_loss at the step-end tokens: BCE of each step's logit against its label."""
    scores = response_token_scores(model, params, batch)
    return process_bce_loss(scores, batch["step_positions"], batch["step_labels"], batch["step_mask"])


LOSSES: dict[str, Callable] = {"outcome_bce": outcome_loss, "bradley_terry": pair_loss,
                               "process_bce": process_loss}
# The mask of the items each objective's loss is the mean over (rlr.train.accumulate's C_i).
COUNTED = {"outcome_bce": "row_mask", "bradley_terry": "pair_mask", "process_bce": "step_mask"}


def loss_fn(params: Any, batch: Batch, model: Transformer, objective: str):
    """(loss, metrics) of the reward model `params` on a batch under `objective` (OBJECTIVES)."""
    if objective not in LOSSES:
        raise ValueError(f"rm_step: objective={objective!r}, expected one of {OBJECTIVES}")
    return LOSSES[objective](params, model, batch)


def train_step(state: TrainState, batch: Batch, *, model: Transformer,
               optimizer: optax.GradientTransformation, objective: str,
               grad_accum_steps: int = 1) -> tuple[TrainState, dict]:
    """One reward-model update: grads of loss_fn (over grad_accum_steps micro-batches of rows,
    ``rlr.train.accumulate`` with C_i = the micro-batch's valid items of COUNTED[objective]),
    then apply_gradients. Returns (state, metrics of the loss plus grad_norm). Jit it with model /
    optimizer / objective / grad_accum_steps bound (functools.partial); state and batch are the
    traced arguments."""
    def count(rows: Batch) -> jax.Array:
        return jnp.sum(rows[COUNTED[objective]], dtype=jnp.float32)

    grads, metrics = accumulated_grad(lambda params, rows: loss_fn(params, rows, model, objective),
                                      state.params, batch, grad_accum_steps, count)
    state, grad_norm = apply_gradients(state, grads, optimizer)
    return state, {**metrics, "grad_norm": grad_norm}


def eval_scores(params: Any, batch: Batch, *, model: Transformer, objective: str) -> dict:
    """The reward model's logits on a batch, for host-side metrics and best-of-N: {"verdict": [B]}
    (outcome_bce; the labels are not read), {"chosen": [B], "rejected": [B]} (bradley_terry) or
    {"step_scores": [B, K]} (process_bce)."""
    if objective == "outcome_bce":
        return {"verdict": outcome_verdicts(model, params, batch)}
    if objective == "bradley_terry":
        chosen, rejected = pair_verdicts(model, params, batch)
        return {"chosen": chosen, "rejected": rejected}
    if objective == "process_bce":
        return {"step_scores": process_step_scores(model, params, batch)}
    raise ValueError(f"rm_step: objective={objective!r}, expected one of {OBJECTIVES}")
