"""The jitted DPO update, as pure functions of (state or params, reference params, batch) (the
loop is rlr/train/dpo.py).

Axes: B preference pairs, P prompt slots (left-padded), R response slots (right-padded; the
chosen and rejected responses of a batch share R).

The chosen and rejected responses of pair b are rows 2b and 2b + 1 of one [2B, P + R] model
batch (interleaved, not concatenated: with the pairs split over the devices, each device keeps
both responses of its own pairs). The reference model's log-probs are computed once per batch,
outside the gradient, from reference params passed in as an argument; SimPO uses none.
"""
from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Optional

import chex
import jax
import jax.numpy as jnp
import optax

from rlr.losses.dpo import DPO_KINDS, dpo_loss, sequence_logp, simpo_loss
from rlr.losses.masked import masked_mean
from rlr.models import Transformer
from rlr.train import sequences
from rlr.train.accumulate import accumulated_grad
from rlr.train.state import TrainState, apply_gradients

LOSSES = DPO_KINDS + ("simpo",)


class PairBatch(NamedTuple):
    """B preference pairs, ready for the model; a pytree (passes through jit).

    prompt_tokens, prompt_mask [B, P]: left-padded prompts (every row ends with a real token).
    chosen_tokens, chosen_mask [B, R]: the preferred responses, right-padded (eos included).
    rejected_tokens, rejected_mask [B, R]: the dispreferred responses, likewise.
    pair_mask [B] bool: valid pairs (padding pairs are ignored by the loss and the metrics).
    """

    prompt_tokens: jax.Array
    prompt_mask: jax.Array
    chosen_tokens: jax.Array
    chosen_mask: jax.Array
    rejected_tokens: jax.Array
    rejected_mask: jax.Array
    pair_mask: jax.Array


@dataclasses.dataclass(frozen=True)
class PreferenceConfig:
    """The static settings of the DPO objective (from config.dpo; hashable, so jit-static).

    loss: sigmoid | cdpo | robust | ipo | hinge (rlr.losses.dpo.dpo_loss) | simpo (simpo_loss,
    no reference model). beta: the KL / temperature coefficient. label_smoothing: eps of cdpo /
    robust. simpo_gamma: SimPO's target margin. average_logps: score a response by the mean of
    its token log-probs instead of the sum in the DPO kinds (IPO as Azar et al. state it; SimPO
    always averages).
    logprob_chunk: time chunk of the log-prob computation.
    """

    loss: str = "sigmoid"
    beta: float = 0.1
    label_smoothing: float = 0.0
    simpo_gamma: float = 0.5
    average_logps: bool = False
    logprob_chunk: int = 128

    def __post_init__(self):
        if self.loss not in LOSSES:
            raise ValueError(f"config.dpo.loss={self.loss!r}: expected one of {LOSSES}")
        if not self.beta > 0:
            raise ValueError(f"config.dpo.beta={self.beta!r}: expected > 0")
        if self.logprob_chunk < 1:
            raise ValueError(f"config.dpo.logprob_chunk={self.logprob_chunk}: expected >= 1")

    @property
    def uses_reference(self) -> bool:
        """Whether the loss reads a reference model (every kind but SimPO)."""
        return self.loss != "simpo"


def pair_sequences(batch: PairBatch) -> sequences.SequenceBatch:
    """The [2B, P + R] model batch of B pairs: row 2b = (prompt b, chosen b), row 2b + 1 =
    (prompt b, rejected b)."""
    chex.assert_equal_shape([batch.chosen_tokens, batch.rejected_tokens])

    def interleave(a, b):  # [B, ...] x 2 -> [2B, ...]
        return jnp.stack([a, b], axis=1).reshape((-1,) + a.shape[1:])

    return sequences.sequence_inputs(interleave(batch.prompt_tokens, batch.prompt_tokens),
                                     interleave(batch.prompt_mask, batch.prompt_mask),
                                     interleave(batch.chosen_tokens, batch.rejected_tokens),
                                     interleave(batch.chosen_mask, batch.rejected_mask))


class PairLogps(NamedTuple):
    """Per-pair response log-probs [B] float32: log pi summed over the response tokens, and the
    token counts."""

    chosen: jax.Array
    rejected: jax.Array
    chosen_len: jax.Array
    rejected_len: jax.Array

    def averaged(self) -> "PairLogps":
        """The same with each log-prob divided by its length (clamped at 1)."""
        return self._replace(chosen=self.chosen / jnp.maximum(self.chosen_len, 1.0),
                             rejected=self.rejected / jnp.maximum(self.rejected_len, 1.0))


def pair_logps(model: Transformer, params: Any, batch: PairBatch, chunk_size: int = 128) -> PairLogps:
    """log pi(y_w | x) and log pi(y_l | x) of every pair: sequence_logp of the response tokens'
    log-probs (rlr.models.token_logprobs in time chunks), and the response lengths."""
    seq = pair_sequences(batch)
    token_logp = sequences.response_logprobs(model, params, seq, chunk_size)  # [2B, R]
    logp = sequence_logp(token_logp, seq.response_mask).reshape(-1, 2)  # [B, 2]
    lengths = jnp.sum(seq.response_mask, axis=1, dtype=jnp.float32).reshape(-1, 2)
    return PairLogps(logp[:, 0], logp[:, 1], lengths[:, 0], lengths[:, 1])


def preference_loss(config: PreferenceConfig, policy: PairLogps, reference: Optional[PairLogps],
                    pair_mask: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The configured objective of a batch from summed log-probs: dpo_loss(kind=config.loss) of
    the policy's and the reference's (both length-averaged first when config.average_logps), or
    simpo_loss of the policy's log-probs and lengths (reference unused). Returns (loss, metrics:
    loss, rewards/chosen, rewards/rejected, rewards/margin, rewards/accuracy, logps/chosen,
    logps/rejected (mean summed log-probs))."""
    if config.loss == "simpo":
        loss, metrics = simpo_loss(policy.chosen, policy.rejected, policy.chosen_len,
                                   policy.rejected_len, config.beta, config.simpo_gamma, pair_mask)
    else:
        if reference is None:
            raise ValueError(f"config.dpo.loss={config.loss!r} needs reference log-probs")
        p, r = (policy.averaged(), reference.averaged()) if config.average_logps else (policy, reference)
        loss, metrics = dpo_loss(p.chosen, p.rejected, r.chosen, r.rejected, config.beta,
                                 config.loss, config.label_smoothing, pair_mask)
    metrics = {**metrics, "logps/chosen": masked_mean(policy.chosen, pair_mask),
               "logps/rejected": masked_mean(policy.rejected, pair_mask)}
    return loss, metrics


def reference_logps(model: Transformer, ref_params: Any, batch: PairBatch,
                    config: PreferenceConfig) -> Optional[PairLogps]:
    """The reference model's pair log-probs (no gradient), or None for SimPO."""
    if not config.uses_reference:
        return None
    return jax.tree.map(jax.lax.stop_gradient, pair_logps(model, ref_params, batch, config.logprob_chunk))


def loss_fn(params: Any, reference: Optional[PairLogps], batch: PairBatch, model: Transformer,
            config: PreferenceConfig) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(loss, metrics) of the policy `params` on a batch, given the reference's log-probs."""
    policy = pair_logps(model, params, batch, config.logprob_chunk)
    return preference_loss(config, policy, reference, batch.pair_mask)


def train_step(state: TrainState, ref_params: Any, batch: PairBatch, *, model: Transformer,
               optimizer: optax.GradientTransformation, config: PreferenceConfig,
               grad_accum_steps: int = 1) -> tuple[TrainState, dict]:
    """One DPO update: the reference log-probs (from `ref_params`; None for SimPO), grads of
    loss_fn w.r.t. the policy, apply_gradients; with grad_accum_steps > 1 both run a micro-batch
    of pairs at a time (``rlr.train.accumulate``, C_i = the micro-batch's valid pairs). Returns
    (state, metrics of preference_loss plus grad_norm and pairs, the number of valid pairs). Jit
    it with model / optimizer / config / grad_accum_steps static; state, ref_params and batch
    are traced."""
    def objective(params, pairs: PairBatch):
        return loss_fn(params, reference_logps(model, ref_params, pairs, config), pairs, model, config)

    def valid_pairs(pairs: PairBatch) -> jax.Array:
        return jnp.sum(pairs.pair_mask, dtype=jnp.float32)

    grads, metrics = accumulated_grad(objective, state.params, batch, grad_accum_steps, valid_pairs)
    state, grad_norm = apply_gradients(state, grads, optimizer)
    return state, {**metrics, "grad_norm": grad_norm, "pairs": valid_pairs(batch)}


def eval_step(params: Any, ref_params: Any, batch: PairBatch, *, model: Transformer,
              config: PreferenceConfig) -> dict:
    """The metrics of loss_fn on a batch, without an update (held-out pairs, or step 0)."""
    reference = reference_logps(model, ref_params, batch, config)
    return loss_fn(params, reference, batch, model, config)[1]
