"""The optimizer: global-norm clipping, then AdamW with a warmup + decay learning-rate schedule.

AdamW: Loshchilov & Hutter 2019 (decoupled weight decay, not applied to norm scales and biases);
global-norm clipping: Pascanu et al. 2013; cosine decay: Loshchilov & Hutter 2017 (SGDR).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Union

import jax
import optax

from rlr.config import ConfigError, to_dataclass

SCHEDULES = ("constant", "linear", "cosine")
NO_DECAY_NAMES = ("bias", "scale")  # parameter leaf names that weight decay skips


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """Optimizer settings; `experiments/base.py:optim()` turns the defaults into a ConfigDict.
    `as_optim_config` checks them under the config key they came from (optim, critic_optim)."""

    learning_rate: float = 1e-5  # peak learning rate, reached at the end of warmup
    schedule: str = "cosine"  # after warmup: constant | linear | cosine decay to end_lr_fraction
    warmup_steps: int = 0  # linear warmup from 0 to learning_rate over this many steps
    total_steps: int = 1000  # step at which the decay ends (warmup included)
    end_lr_fraction: float = 0.0  # final lr = end_lr_fraction * learning_rate (linear, cosine)
    b1: float = 0.9  # Adam first-moment decay
    b2: float = 0.95  # Adam second-moment decay
    eps: float = 1e-8  # Adam denominator epsilon
    weight_decay: float = 0.0  # decoupled weight decay (not on norm scales and biases)
    max_grad_norm: float = 1.0  # clip gradients to this global norm; 0 disables clipping
    grad_accum_steps: int = 1  # an update's batch runs in this many micro-batches, their gradients summed (same update, 1/n of the activation memory)


ConfigLike = Union[OptimConfig, Mapping[str, Any]]


def as_optim_config(config: ConfigLike, where: str = "optim") -> OptimConfig:
    """The checked OptimConfig of an OptimConfig, a dict or an ml_collections ConfigDict
    (config.<where>); an unknown key or a setting out of range is an error that names
    config.<where>.<key>."""
    c = config if isinstance(config, OptimConfig) else to_dataclass(OptimConfig, config, where=where)
    key = f"config.{where}"
    if c.schedule not in SCHEDULES:
        raise ConfigError(f"{key}.schedule={c.schedule!r}: expected one of {SCHEDULES}")
    if c.warmup_steps < 0 or c.total_steps < 1:
        raise ConfigError(f"{key}.warmup_steps={c.warmup_steps}, {key}.total_steps={c.total_steps}: "
                          f"expected warmup_steps >= 0, total_steps >= 1")
    if c.grad_accum_steps < 1:
        raise ConfigError(f"{key}.grad_accum_steps={c.grad_accum_steps}: expected >= 1")
    if c.schedule != "constant" and c.warmup_steps >= c.total_steps:
        raise ConfigError(f"{key}.warmup_steps={c.warmup_steps} must be < {key}.total_steps="
                          f"{c.total_steps} for the {c.schedule!r} schedule")
    return c


def make_schedule(config: ConfigLike) -> optax.Schedule:
    """step -> learning rate. Warmup: lr * step / warmup_steps for step < warmup_steps; then
    with s = step - warmup_steps, D = total_steps - warmup_steps, f = end_lr_fraction:
      constant: lr
      linear:   lr * (1 - (1 - f) * min(s / D, 1))
      cosine:   lr * (f + (1 - f) * 0.5 * (1 + cos(pi * min(s / D, 1))))
    """
    c = as_optim_config(config)
    decay_steps = max(c.total_steps - c.warmup_steps, 1)
    end = c.learning_rate * c.end_lr_fraction
    if c.schedule == "constant":
        main = optax.constant_schedule(c.learning_rate)
    elif c.schedule == "linear":
        main = optax.linear_schedule(c.learning_rate, end, decay_steps)
    else:
        main = optax.cosine_decay_schedule(c.learning_rate, decay_steps, alpha=c.end_lr_fraction)
    if c.warmup_steps == 0:
        return main
    warmup = optax.linear_schedule(0.0, c.learning_rate, c.warmup_steps)
    return optax.join_schedules([warmup, main], [c.warmup_steps])


def weight_decay_mask(params: Any) -> Any:
    """A bool tree like `params`: True where weight decay applies, False on leaves named in
    NO_DECAY_NAMES (norm `scale`s and `bias`es), whatever their rank (layers are stacked)."""
    def decays(path, _):
        last = path[-1]
        name = getattr(last, "key", getattr(last, "name", None))
        return name not in NO_DECAY_NAMES

    return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(config: ConfigLike) -> optax.GradientTransformation:
    """clip_by_global_norm(max_grad_norm) (if > 0), then AdamW with `make_schedule(config)`:
      m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2;  m^ = m / (1 - b1^t);  v^ = v / (1 - b2^t)
      p <- p - lr_t * (m^ / (sqrt(v^) + eps) + weight_decay * mask * p)
    """
    c = as_optim_config(config)
    adamw = optax.adamw(make_schedule(c), b1=c.b1, b2=c.b2, eps=c.eps,
                        weight_decay=c.weight_decay, mask=weight_decay_mask)
    if c.max_grad_norm > 0:
        return optax.chain(optax.clip_by_global_norm(c.max_grad_norm), adamw)
    return adamw
