"""Reward shaping: turn sequence and step scores into a per-token reward array [B, T].

The parts follow Gao et al. (2024), "On Designing Effective RL Reward at Training Time for
LLM Reasoning", and Xu et al. (ICML 2024), "Is DPO Superior to PPO for LLM Alignment?":

- success (0/1 correctness from a verifier) and the ORM score, at the last response token;
- PRM step scores s_1..s_K, transformed (none / Clip / Delta / Clip-Delta) and placed at
  the token that ends each step (``rlr.rewards.segment``);
- a length penalty, and the KL-in-reward term -beta * kl_t at every response token;
- optional reward clipping to [-c, c] (Xu et al. clip at 20).

Objective of Gao et al.: alpha * sum_k r_k + success - beta * KL.

Axes: B batch, T response tokens, K steps. Masks are bool or 0/1 floats; a row whose
response mask is all zero (padding) gets zero reward everywhere, never NaN. Every
function is pure jnp and jit-compatible: it branches only on the (hashable, static)
``RewardSpec`` and on which inputs are given, never on array values.
"""
import dataclasses
import math

import jax
import jax.numpy as jnp

PRM_TRANSFORMS = ("none", "clip", "delta", "clip_delta")
LENGTH_MODES = ("per_token", "final")
CLIP_MODES = ("final", "per_token")


@dataclasses.dataclass(frozen=True)
class RewardSpec:
    """Which reward parts an experiment uses, and their weights.

    success_weight: weight of the 0/1 success reward (at the last token).
    orm_weight: weight of the outcome reward model score (at the last token).
    prm_weight: alpha, weight of the (transformed) PRM step rewards.
    prm_transform: "none" | "clip" | "delta" | "clip_delta" (Gao et al. 2024).
    prm_eta: eta of Clip, r_k = min(s_k - eta, 0).
    length_coef: length penalty per response token (a negative value is a bonus).
    length_mode: "per_token" (-coef at each token) | "final" (-coef * length at the last token).
    reward_clip: c > 0 to clip rewards to [-c, c] (Xu et al. 2024 use 20), or None.
    reward_clip_mode: "final" clips the outcome reward at the last token (success + ORM +
        final length penalty, as in Xu et al.'s PPO); "per_token" clips each token's total.
    kl_coef: beta >= 0 of the KL-in-reward term, -beta * kl_t at every response token.
    """

    success_weight: float = 1.0
    orm_weight: float = 0.0
    prm_weight: float = 0.0
    prm_transform: str = "none"
    prm_eta: float = 0.0
    length_coef: float = 0.0
    length_mode: str = "per_token"
    reward_clip: float | None = None
    reward_clip_mode: str = "final"
    kl_coef: float = 0.0

    def __post_init__(self):
        for name in ("success_weight", "orm_weight", "prm_weight", "prm_eta", "length_coef", "kl_coef"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"RewardSpec.{name} must be a finite number, got {value!r}")
        for name, allowed in (
            ("prm_transform", PRM_TRANSFORMS),
            ("length_mode", LENGTH_MODES),
            ("reward_clip_mode", CLIP_MODES),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"RewardSpec.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.kl_coef < 0:
            raise ValueError(f"RewardSpec.kl_coef must be >= 0, got {self.kl_coef}")
        clip = self.reward_clip
        if clip is not None and (isinstance(clip, bool) or not isinstance(clip, (int, float)) or not clip > 0):
            raise ValueError(f"RewardSpec.reward_clip must be None or a number > 0, got {clip!r}")


def _f32(x) -> jax.Array:
    return jnp.asarray(x).astype(jnp.float32)


def _valid(mask) -> jax.Array:
    return jnp.asarray(mask).astype(bool)


def _check_shape(name: str, x, shape: tuple[int, ...]) -> None:
    if tuple(jnp.shape(x)) != tuple(shape):
        raise ValueError(f"shape_rewards: {name} must have shape {tuple(shape)}, got {tuple(jnp.shape(x))}")


def last_token_index(mask: jax.Array) -> jax.Array:
    """Index [B] (int32) of the last valid token of each row of ``mask`` [B, T]; -1 for an empty row."""
    positions = jnp.arange(jnp.shape(mask)[-1], dtype=jnp.int32)
    return jnp.max(jnp.where(_valid(mask), positions, -1), axis=-1)


def at_last_token(values: jax.Array, mask: jax.Array) -> jax.Array:
    """Place a per-sequence value [B] at the last valid token of ``mask`` [B, T]; 0 elsewhere.

    An empty row gets all zeros (``one_hot(-1)`` is zero), and a NaN value there is dropped.
    """
    last = last_token_index(mask)
    hot = jax.nn.one_hot(last, jnp.shape(mask)[-1], dtype=bool)
    return jnp.where(hot, _f32(values)[:, None], 0.0)


def scatter_to_tokens(values: jax.Array, positions: jax.Array, step_mask: jax.Array, T: int) -> jax.Array:
    """Place step values [B, K] at their token ``positions`` [B, K] of a [B, T] array.

    out[b, positions[b, k]] += values[b, k] for every valid step (``step_mask``); invalid
    steps (and their possibly garbage values) are dropped, steps ending in the same token
    add up, and a valid position outside [0, T) is dropped.
    """
    valid = _valid(step_mask)
    vals = jnp.where(valid, _f32(values), 0.0)
    pos = jnp.where(valid, jnp.asarray(positions, jnp.int32), T)
    pos = jnp.where(pos < 0, T, pos)
    rows = jnp.broadcast_to(jnp.arange(vals.shape[0])[:, None], vals.shape)
    return jnp.zeros((vals.shape[0], T), jnp.float32).at[rows, pos].add(vals, mode="drop")


def clip_process_rewards(scores: jax.Array, step_mask: jax.Array, eta: float = 0.0) -> jax.Array:
    """Clip transform of PRM step scores [B, K] (Gao et al. 2024): r_k = min(s_k - eta, 0).

    Every step reward is <= 0, so adding steps can only lower the return: the policy
    cannot gain by repeating steps the PRM likes. Invalid steps get 0.
    """
    valid = _valid(step_mask)
    return jnp.where(valid, jnp.minimum(_f32(scores) - eta, 0.0), 0.0)


def delta_process_rewards(scores: jax.Array, step_mask: jax.Array) -> jax.Array:
    """Delta transform of PRM step scores [B, K] (Gao et al. 2024).

    With p_1..p_K the valid steps of a row (K = that row's number of valid steps):

        r_k = s_k - s_{k+1}  for k < K-1,   r_{K-1} = s_{K-1},   r_K = 0.

    The last step gets 0 because the success reward covers it; the sum telescopes to s_1,
    so the return cannot grow by appending steps. Edge K = 1: the only step is the last,
    r_1 = 0 (return 0). Valid steps need not be a prefix: "next" is the next valid step.
    Invalid steps get 0.
    """
    valid = _valid(step_mask)
    s = jnp.where(valid, _f32(scores), 0.0)
    K = s.shape[-1]
    index = jnp.arange(K, dtype=jnp.int32)
    # next_index[k] = smallest valid j > k (K if none): a reverse running min of valid indices.
    candidate = jnp.where(valid, index, K)
    shifted = jnp.concatenate([candidate[:, 1:], jnp.full_like(candidate[:, :1], K)], axis=-1)
    next_index = jax.lax.cummin(shifted, axis=1, reverse=True)
    s_next = jnp.take_along_axis(s, jnp.minimum(next_index, K - 1), axis=-1)
    rank = jnp.cumsum(valid.astype(jnp.int32), axis=-1) - 1
    count = jnp.sum(valid.astype(jnp.int32), axis=-1, keepdims=True)
    r = jnp.where(rank < count - 2, s - s_next, jnp.where(rank == count - 2, s, 0.0))
    return jnp.where(valid, r, 0.0)


def process_rewards(spec: RewardSpec, scores: jax.Array, step_mask: jax.Array) -> jax.Array:
    """Per-step process rewards [B, K] of ``spec.prm_transform`` (unweighted).

    none: r_k = s_k; clip: min(s_k - eta, 0); delta: see ``delta_process_rewards``;
    clip_delta: Delta applied to the Clip rewards (Gao et al. 2024), return min(s_1 - eta, 0).
    """
    valid = _valid(step_mask)
    if spec.prm_transform == "none":
        return jnp.where(valid, _f32(scores), 0.0)
    if spec.prm_transform == "clip":
        return clip_process_rewards(scores, valid, spec.prm_eta)
    if spec.prm_transform == "delta":
        return delta_process_rewards(scores, valid)
    return delta_process_rewards(clip_process_rewards(scores, valid, spec.prm_eta), valid)


def _require(name: str, value, part: str) -> None:
    if value is None:
        raise ValueError(f"shape_rewards: {part} is non-zero, so the input {name!r} is required")


def shape_rewards(
    spec: RewardSpec,
    response_mask: jax.Array,
    success: jax.Array | None = None,
    orm_scores: jax.Array | None = None,
    prm_scores: jax.Array | None = None,
    step_positions: jax.Array | None = None,
    step_mask: jax.Array | None = None,
    kl: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Per-token rewards [B, T] (float32) of a batch, composed from the parts of ``spec``.

        R[b, t] = m[b, t] * ( outcome_b * [t = last_b]
                              + alpha * sum_k r_{b,k} * [t = pos_{b,k}]
                              - length_coef * ([per_token] or L_b * [final and t = last_b])
                              - beta * kl[b, t] )
        outcome_b = success_weight * success_b + orm_weight * orm_b

    with r_k the transformed PRM rewards (``process_rewards``), last_b the last valid
    token, L_b the response length. ``reward_clip`` c clips the outcome (plus a final
    length penalty) to [-c, c] (mode "final") or every token's total (mode "per_token").
    Tokens outside ``response_mask`` (and all-padding rows) get 0.

    Inputs: response_mask [B, T]; success [B]; orm_scores [B]; prm_scores, step_positions,
    step_mask [B, K]; kl [B, T]. A part whose weight is 0 needs no input (it is ignored if
    given); a part with a non-zero weight and a missing input raises ValueError naming it.

    Metrics (scalars): each enabled part's mean per-sequence return, ``reward/success``,
    ``reward/orm``, ``reward/prm``, ``reward/length``, ``reward/kl`` (weighted, signed as
    added; before clipping), ``reward/total`` (after clipping) and, when clipping,
    ``reward/clip_frac`` (fraction of clipped values). Means are over non-empty rows.
    """
    if jnp.ndim(response_mask) != 2:
        raise ValueError(f"shape_rewards: response_mask must be [B, T], got shape {jnp.shape(response_mask)}")
    B, T = jnp.shape(response_mask)
    mask = _valid(response_mask)
    fmask = mask.astype(jnp.float32)
    parts: dict[str, jax.Array] = {}
    outcome = jnp.zeros((B,), jnp.float32)

    if spec.success_weight != 0:
        _require("success", success, "RewardSpec.success_weight")
        _check_shape("success", success, (B,))
        parts["success"] = spec.success_weight * _f32(success)
        outcome = outcome + parts["success"]
    if spec.orm_weight != 0:
        _require("orm_scores", orm_scores, "RewardSpec.orm_weight")
        _check_shape("orm_scores", orm_scores, (B,))
        parts["orm"] = spec.orm_weight * _f32(orm_scores)
        outcome = outcome + parts["orm"]
    length = jnp.sum(fmask, axis=-1)
    if spec.length_coef != 0 and spec.length_mode == "final":
        parts["length"] = -spec.length_coef * length
        outcome = outcome + parts["length"]

    clip_final = spec.reward_clip is not None and spec.reward_clip_mode == "final"
    clipped_outcome = jnp.clip(outcome, -spec.reward_clip, spec.reward_clip) if clip_final else outcome
    # where(), not multiply: a NaN score of an all-padding row must not leak.
    rewards = at_last_token(clipped_outcome, mask)

    if spec.prm_weight != 0:
        step_inputs = {"prm_scores": prm_scores, "step_positions": step_positions, "step_mask": step_mask}
        for name, value in step_inputs.items():
            _require(name, value, "RewardSpec.prm_weight")
        K = jnp.shape(prm_scores)[-1]
        for name, value in step_inputs.items():
            _check_shape(name, value, (B, K))
        step_rewards = spec.prm_weight * process_rewards(spec, prm_scores, step_mask)
        prm_tokens = jnp.where(mask, scatter_to_tokens(step_rewards, step_positions, step_mask, T), 0.0)
        parts["prm"] = jnp.sum(prm_tokens, axis=-1)
        rewards = rewards + prm_tokens
    if spec.length_coef != 0 and spec.length_mode == "per_token":
        rewards = rewards - spec.length_coef * fmask
        parts["length"] = -spec.length_coef * length
    if spec.kl_coef != 0:
        _require("kl", kl, "RewardSpec.kl_coef")
        _check_shape("kl", kl, (B, T))
        kl_tokens = jnp.where(mask, -spec.kl_coef * _f32(kl), 0.0)
        parts["kl"] = jnp.sum(kl_tokens, axis=-1)
        rewards = rewards + kl_tokens

    if spec.reward_clip is not None and spec.reward_clip_mode == "per_token":
        clipped = jnp.clip(rewards, -spec.reward_clip, spec.reward_clip)
        clip_frac = jnp.sum(jnp.where(mask, clipped != rewards, False)) / jnp.maximum(jnp.sum(fmask), 1.0)
        rewards = clipped
    elif clip_final:
        row_valid = jnp.any(mask, axis=-1)
        clip_frac = jnp.sum(row_valid & (clipped_outcome != outcome)) / jnp.maximum(jnp.sum(row_valid), 1)
    rewards = jnp.where(mask, rewards, 0.0)

    row_valid = jnp.any(mask, axis=-1)
    n_rows = jnp.maximum(jnp.sum(row_valid), 1).astype(jnp.float32)

    def seq_mean(per_row: jax.Array) -> jax.Array:
        return jnp.sum(jnp.where(row_valid, per_row, 0.0)) / n_rows

    metrics = {f"reward/{name}": seq_mean(value) for name, value in parts.items()}
    metrics["reward/total"] = seq_mean(jnp.sum(rewards, axis=-1))
    if spec.reward_clip is not None:
        metrics["reward/clip_frac"] = clip_frac.astype(jnp.float32)
    return rewards, metrics
