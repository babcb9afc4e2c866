"""The jitted pieces of supervised fine-tuning, as pure functions of (state or params, batch).

A batch is a dict of [B, T] arrays: tokens, positions, attention_mask, loss_mask (True on the
tokens to learn: the response), and segment_ids when sequences are packed
(rlr.data.batching.concat_prompt_response / pack_sequences make both forms). The token at t
is predicted from position t - 1, so the loss reads log-probs [B, T-1] against
loss_mask[:, 1:].
"""
from __future__ import annotations

from typing import Any, Mapping

import jax
import optax

from rlr.losses.masked import aggregation_count
from rlr.losses.sft import sft_loss
from rlr.models import Transformer, lm_head_weight, token_logprobs
from rlr.train.accumulate import accumulated_grad
from rlr.train.state import TrainState, apply_gradients


def sft_loss_fn(params: Any, model: Transformer, batch: Mapping[str, jax.Array],
                chunk_size: int = 128, aggregation: str = "token_mean"):
    """Masked next-token cross-entropy of a batch: sft_loss(log pi(x_t | x_<t) for t >= 1,
    loss_mask[:, 1:]), log-probs from rlr.models.token_logprobs in time chunks (never [B, T, V]
    logits). Returns (loss, metrics: loss, perplexity, num_tokens)."""
    hidden, _ = model.apply({"params": params}, batch["tokens"], batch["positions"],
                            batch["attention_mask"], segment_ids=batch.get("segment_ids"))
    logp, _ = token_logprobs(hidden[:, :-1], lm_head_weight(params, model.config),
                             batch["tokens"][:, 1:], chunk_size)
    return sft_loss(logp, batch["loss_mask"][:, 1:], aggregation)


def train_step(state: TrainState, batch: Mapping[str, jax.Array], *, model: Transformer,
               optimizer: optax.GradientTransformation, chunk_size: int = 128,
               aggregation: str = "token_mean", grad_accum_steps: int = 1) -> tuple[TrainState, dict]:
    """One SFT update: grads of sft_loss_fn (over grad_accum_steps micro-batches of rows,
    ``rlr.train.accumulate`` with C_i = the micro-batch's ``aggregation_count`` of loss_mask),
    then apply_gradients. Returns (state, metrics: loss, perplexity, num_tokens, grad_norm). Jit
    it with model / optimizer / chunk_size / aggregation / grad_accum_steps bound
    (functools.partial); state and batch are the traced arguments."""
    def objective(params, rows):
        return sft_loss_fn(params, model, rows, chunk_size, aggregation)

    def count(rows):
        return aggregation_count(rows["loss_mask"][:, 1:], aggregation)

    grads, metrics = accumulated_grad(objective, state.params, batch, grad_accum_steps, count)
    state, grad_norm = apply_gradients(state, grads, optimizer)
    return state, {**metrics, "grad_norm": grad_norm}


def eval_step(params: Any, batch: Mapping[str, jax.Array], *, model: Transformer,
              chunk_size: int = 128, aggregation: str = "token_mean") -> dict:
    """The metrics of sft_loss_fn on a held-out batch (no update)."""
    return sft_loss_fn(params, model, batch, chunk_size, aggregation)[1]
