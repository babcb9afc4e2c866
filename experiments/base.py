"""The config pieces every experiment composes (call them; do not copy them).

    from experiments import base

    def get_config(variant=None):
        config = base.common(trainer="ppo")
        config.model = base.model("qwen2.5-1.5b", dtype="bfloat16")
        config.optim.learning_rate = 1e-6
        ...
        return config

Every field has a default and a one-line comment; a field that is None by default is a typed
placeholder so that `--config.a.b=VALUE` overrides are type-checked (see rlr/config.py).
`model_config(config.model)` turns the model group into an rlr.models.ModelConfig.
"""
from __future__ import annotations

from typing import Optional

import ml_collections
from ml_collections.config_dict import placeholder

from rlr.config import ConfigError, make_model_config, to_config_dict
from rlr.train.optim import OptimConfig, as_optim_config

model_config = make_model_config  # config.model -> rlr.models.ModelConfig (errors name the key)


def select_variant(experiment: str, variant: Optional[str], variants: tuple, default: str) -> str:
    """The variant an experiment file builds: `variant`, or `default` when none is given.

    `experiment` is the file as a user names it on the command line ("experiments/ppo.py");
    an unknown variant is a ConfigError naming it and the variants there are.
    """
    variant = variant or default
    if variant not in variants:
        raise ConfigError(f"{experiment}:{variant}: unknown variant, expected one of {variants}")
    return variant


def model(name: str = "tiny", hf_checkpoint: Optional[str] = None, param_dtype: str = "float32",
          dtype: str = "float32", remat: str = "none",
          attention: str = "xla") -> ml_collections.ConfigDict:
    """The model group: which decoder, where its weights are, its numerics."""
    c = ml_collections.ConfigDict()
    c.name = name  # a named shape of rlr.models.get_config ("" to take it from hf_checkpoint)
    c.hf_checkpoint = placeholder(str)  # Hugging Face checkpoint dir (config.json + safetensors); None: random init
    c.hf_checkpoint = hf_checkpoint
    c.param_dtype = param_dtype  # storage dtype of the parameters: float32 | bfloat16 | float16
    c.dtype = dtype  # compute dtype: float32 | bfloat16 | float16
    c.remat = remat  # what each layer keeps for the backward pass: none | full | dots
    c.attention = attention  # attention kernel of training forwards: xla | cudnn (GPU, bf16 / f16 dtype)
    return c


def mesh(data: int = -1, fsdp: int = 1, tensor: int = 1) -> ml_collections.ConfigDict:
    """The device mesh group: rlr.parallel.make_mesh(data, fsdp, tensor)."""
    c = ml_collections.ConfigDict()
    c.data = data  # data-parallel axis size (-1: all devices left over)
    c.fsdp = fsdp  # fully-sharded axis size (params and optimizer state split over it)
    c.tensor = tensor  # tensor-parallel axis size (heads, mlp and vocab split over it)
    return c


def optim(**changes) -> ml_collections.ConfigDict:
    """The optimizer group: the fields (and their comments) of rlr.train.optim.OptimConfig."""
    return to_config_dict(as_optim_config(OptimConfig(**changes)))


def checkpoint(every_steps: int = 500, keep: int = 3, resume: bool = True,
               restore_path: Optional[str] = None) -> ml_collections.ConfigDict:
    """The checkpoint group: how often to save, how many to keep, where to start from."""
    c = ml_collections.ConfigDict()
    c.every_steps = every_steps  # save every this many steps (and at the end, and on SIGTERM)
    c.keep = keep  # keep the newest this many checkpoints
    c.resume = resume  # continue from the newest checkpoint in WORKDIR/checkpoints if one exists
    c.restore_path = placeholder(str)  # start from this checkpoint (a step dir) instead; None: not used
    c.restore_path = restore_path
    return c


def logging(every_steps: int = 10, num_samples: int = 4) -> ml_collections.ConfigDict:
    """The logging group: metrics and sample cadence."""
    c = ml_collections.ConfigDict()
    c.every_steps = every_steps  # write metrics.jsonl / TensorBoard every this many steps
    c.num_samples = num_samples  # rollouts written to samples.jsonl at each logging step (evaluations write every reply)
    return c


def common(trainer: str, seed: int = 0) -> ml_collections.ConfigDict:
    """The root config with every shared group at its defaults; experiments add their own
    groups (data, ppo, dpo, rewards, ...) and change fields."""
    c = ml_collections.ConfigDict()
    c.trainer = trainer  # the loop to run: a module of rlr/train (sft, rm, dpo, ppo, ...)
    c.seed = seed  # seed of parameter init, sampling and data order
    c.model = model()
    c.mesh = mesh()
    c.optim = optim()
    c.checkpoint = checkpoint()
    c.logging = logging()
    return c
