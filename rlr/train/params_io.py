"""Params between stages: a run exports its params (export_params), the next stage loads them
(load_params) from that export, a Hugging Face checkpoint or a random init, sharded on its mesh."""
from __future__ import annotations

import json
import logging
import os
from typing import Any, NoReturn, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

from rlr.data.tokenizer import Tokenizer
from rlr.models import ModelConfig, Transformer
from rlr.models.config import NUMERICS
from rlr.parallel import init_model_params, param_shardings
from rlr.train.checkpoint import CheckpointError

PARAMS_DIR, PARAMS_INFO = "params", "params_info.json"  # what export_params writes in a workdir

log = logging.getLogger(__name__)


def _flat_shapes(tree: Any) -> dict[str, list[int]]:
    return {"/".join(k): list(v.shape) for k, v in traverse_util.flatten_dict(tree).items()}


def _head_of(params: Any) -> str:
    return "score" if "score_head" in params else "lm"


def export_params(workdir: str, params: Any, model_config: ModelConfig,
                  tokenizer: Optional[Tokenizer] = None) -> str:
    """Write `params` (of a model of `model_config`, trained on the ids of `tokenizer`) to
    WORKDIR/params (orbax) and WORKDIR/params_info.json (head, array shapes, the model's shape,
    ModelConfig.shape(), and the tokenizer's fingerprint when given): what
    `load_params(model, WORKDIR, ...)` of the next stage reads, at the shape
    `source_shape(WORKDIR, ...)` gives. Every process calls it (the save is collective).
    Returns the params directory."""
    import orbax.checkpoint as ocp

    workdir = os.path.abspath(workdir)
    path = os.path.join(workdir, PARAMS_DIR)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(path, params, force=True)
    checkpointer.wait_until_finished()
    checkpointer.close()
    if jax.process_index() == 0:
        info = {"head": _head_of(params), "shapes": _flat_shapes(params),
                "model": model_config.shape()}
        if tokenizer is not None:
            info["tokenizer"] = tokenizer.fingerprint()
        with open(os.path.join(workdir, PARAMS_INFO), "w") as f:
            json.dump(info, f, indent=1)
    return path


def _read_params_info(source: str) -> dict:
    file = os.path.join(source, PARAMS_INFO)
    try:
        with open(file) as f:
            info = json.load(f)
        if info.get("head") not in ("lm", "score") or not isinstance(info.get("shapes"), dict):
            raise ValueError("expected keys 'head' (lm | score) and 'shapes'")
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{file}: cannot read the params export ({e})") from None
    return info


def _abstract(model: Transformer, mesh) -> Any:
    """ShapeDtypeStruct params of `model` carrying their shardings on `mesh`."""
    tokens = jnp.zeros((1, 8), jnp.int32)
    shapes = jax.eval_shape(lambda: nn.meta.unbox(
        model.init(jax.random.key(0), tokens, tokens, jnp.ones((1, 8), bool))["params"]))
    shardings = param_shardings(model, mesh)
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                        shapes, shardings)


def _fresh_score_head(model: Transformer, mesh, rng: jax.Array) -> dict:
    """A new score head (kernel ~ N(0, 0.02^2) as the decoder initialises it, bias 0), sharded."""
    target = _abstract(model, mesh)["score_head"]
    kernel = 0.02 * jax.random.normal(rng, target["kernel"].shape, jnp.float32)
    return {"kernel": jax.device_put(kernel.astype(target["kernel"].dtype), target["kernel"].sharding),
            "bias": jax.device_put(jnp.zeros(target["bias"].shape, target["bias"].dtype),
                                   target["bias"].sharding)}


def _load_export(model: Transformer, source: str, info: dict, mesh, rng: jax.Array) -> Any:
    """Params of `model` from the export of an rlr run (see export_params), `info` its
    params_info.json."""
    import orbax.checkpoint as ocp

    exported = Transformer(model.config, head=info["head"])
    if info["head"] == "score" and model.head == "lm":
        raise CheckpointError(f"{source}: exported a score-head model; a policy (head 'lm') cannot "
                              f"be loaded from it")
    target = _abstract(exported, mesh)
    expected = _flat_shapes(target)
    if expected != info["shapes"]:
        diff = sorted(k for k in set(expected) | set(info["shapes"])
                      if expected.get(k) != info["shapes"].get(k))
        recorded = info.get("model", {})
        raise CheckpointError(
            f"{source}: the exported params (a model of {recorded.get('num_layers', '?')} layers, "
            f"hidden {recorded.get('hidden_size', '?')}) do not fit the model they are loaded into "
            f"({model.config.num_layers} layers, hidden {model.config.hidden_size}: config.model for "
            f"a policy; first difference at {diff[0]}: export {info['shapes'].get(diff[0])}, model "
            f"{expected.get(diff[0])})")
    checkpointer = ocp.StandardCheckpointer()
    try:
        params = checkpointer.restore(os.path.join(source, PARAMS_DIR), target)
    except Exception as e:  # orbax raises many kinds; the user needs the path and the cause
        first = (str(e).strip().splitlines() or ["no message"])[0]
        raise CheckpointError(f"{os.path.join(source, PARAMS_DIR)}: cannot restore params "
                              f"({type(e).__name__}: {first})") from e
    finally:
        checkpointer.close()
    if info["head"] == "lm" and model.head == "score":
        params = {k: v for k, v in params.items() if k != "lm_head"}
        params["score_head"] = _fresh_score_head(model, mesh, rng)
    return params


def config_source(config: Any, *keys: str) -> tuple[str, str]:
    """(source, key) of a stage's params: the value of the first of the dotted config `keys`
    that is set (e.g. "dpo.policy_source", "model.hf_checkpoint") and that key; ("", keys[0])
    when none is (a random init). The key goes to load_params, which names it in its errors."""
    for key in keys:
        value = config
        for part in key.split("."):
            value = value[part]
        if value:
            return value, key
    return "", keys[0]


def is_hf_checkpoint(source: str) -> bool:
    """Whether the directory `source` is a Hugging Face checkpoint (a config.json), not an rlr
    run (params_info.json, or what `rlr` writes first: checkpoints/, config.txt)."""
    return (os.path.isfile(os.path.join(source, "config.json"))
            and not any(os.path.exists(os.path.join(source, name))
                        for name in (PARAMS_INFO, "checkpoints", "config.txt")))


def _numerics(config: ModelConfig) -> dict:
    """config's NUMERICS fields (how the model computes): the overrides a source's own shape is
    read with."""
    return {name: getattr(config, name) for name in NUMERICS}


def source_shape(source: Optional[str], model_config: ModelConfig, key: Optional[str] = None
                 ) -> ModelConfig:
    """The shape of the model whose params `source` holds, computing with `model_config`'s
    NUMERICS (dtypes, remat, attention): a Hugging Face checkpoint's config.json; an rlr run's
    export's recorded shape (params_info.json "model", see export_params); `model_config`
    itself for a random init ("") and for an export written before shapes were recorded. So a
    reward model, judge or critic may be larger than the policy, or of another family.
    Errors name the file, and the config `key` that gave the source when given."""
    if not source:
        return model_config
    given = f"config.{key}={source!r}: " if key else ""
    if is_hf_checkpoint(source):
        from rlr.models.hf_io import read_hf_config

        try:
            return read_hf_config(source, **_numerics(model_config))
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{given}{e}") from None
    if not os.path.isfile(os.path.join(source, PARAMS_INFO)):
        return model_config  # load_params names what the directory lacks
    info = _read_params_info(source)
    if "model" not in info:
        return model_config
    try:
        return model_config.with_shape(info["model"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{given}{os.path.join(source, PARAMS_INFO)}: {e}") from None


def load_params(model: Transformer, source: Optional[str], mesh: jax.sharding.Mesh, rng: jax.Array,
                tokenizer: Optional[Tokenizer] = None, key: Optional[str] = None,
                reward_model: bool = False) -> Any:
    """Sharded params of `model` from `source`:
    - None or "": a random init (rlr.parallel.init_model_params with `rng`);
    - an rlr run directory (holding params_info.json): the params it exported with
      export_params, restored into the target shardings. An "lm" export loaded into a
      "score" model keeps the decoder (embedding, layers, final norm), drops lm_head and
      initialises a fresh score head from `rng` (a critic / reward model initialised from the
      SFT policy); "score" into "score" keeps everything;
    - a Hugging Face checkpoint directory (holding config.json): hf_io.load_hf_checkpoint
      (its shape must match model.config).
    `tokenizer`, when given, must fit the vocabulary and be the one the params were trained on
    (its Tokenizer.fingerprint: the one an export recorded, or a Hugging Face directory's
    tokenizer.json; a source recording none passes). `reward_model`: the params score with the
    head they hold (an ORM, PRM or Bradley-Terry RM), so a source without a trained score head (none,
    an "lm" export, a causal-LM Hugging Face checkpoint) is an error, not a fresh random head.
    Errors name the source, and the config `key` that gave it when given (config_source).
    """
    given = f"config.{key}={source!r}: " if key else ""
    if tokenizer is not None and tokenizer.vocab_size > model.config.vocab_size:
        raise CheckpointError(f"{given}a model of vocab_size={model.config.vocab_size} cannot read "
                              f"the tokenizer's {tokenizer.vocab_size} ids")
    if not source:
        if reward_model:
            raise CheckpointError(f"{given}a reward model needs a source (a reward-model run or a "
                                  f"Hugging Face sequence-classification checkpoint)")
        return init_model_params(model, rng, mesh)
    source = os.path.abspath(source)
    if not os.path.isdir(source):
        raise CheckpointError(f"{given}{source}: no such directory (expected the workdir of an earlier "
                              f"rlr run, holding {PARAMS_INFO}, or a Hugging Face checkpoint directory)")
    if os.path.isfile(os.path.join(source, PARAMS_INFO)):
        info = _read_params_info(source)
        if tokenizer is not None:
            _check_fingerprint(info.get("tokenizer"), "the run that exported them", tokenizer,
                               given, source)
        if reward_model and info["head"] != "score":
            _no_score_head(given, source, "an rlr run that exported a language model (head 'lm')")
        return _load_export(model, source, info, mesh, rng)
    if is_hf_checkpoint(source):
        from rlr.models.hf_io import has_score_head

        if tokenizer is not None:
            _check_fingerprint(_hf_fingerprint(source, given), "its tokenizer.json", tokenizer,
                               given, source)
        if reward_model and not has_score_head(source):
            _no_score_head(given, source, "a Hugging Face causal LM (no score.weight tensor)")
        return _load_hf(model, source, mesh, rng)
    raise CheckpointError(f"{given}{source}: holds neither {PARAMS_INFO} (an rlr run's export: did "
                          f"that run finish?) nor a Hugging Face config.json")


def _hf_fingerprint(source: str, given: str) -> Optional[str]:
    """The Tokenizer.fingerprint of a Hugging Face directory's tokenizer.json; None when it has
    none, or when it does not load (named in a warning)."""
    if not os.path.isfile(os.path.join(source, "tokenizer.json")):
        return None
    from rlr.data.tokenizer import load_tokenizer

    try:
        return load_tokenizer(source).fingerprint()
    except (OSError, ValueError) as e:
        log.warning("%s%s/tokenizer.json: not compared with this run's tokenizer (%s)", given,
                    source, e)
        return None


def _check_fingerprint(theirs: Optional[str], what: str, tokenizer: Tokenizer, given: str,
                       source: str) -> None:
    """Raise CheckpointError (prefixed by `given`) when the params at `source` were trained on
    the ids of another tokenizer (fingerprint `theirs`, from `what`) than `tokenizer`; None
    (not recorded) passes."""
    if theirs is not None and theirs != tokenizer.fingerprint():
        raise CheckpointError(f"{given}{source}: its params were trained on the ids of another "
                              f"tokenizer ({what}: fingerprint {theirs}) than the one this run reads "
                              f"it with (fingerprint {tokenizer.fingerprint()}): a model must read "
                              f"the ids it was trained on")


def _no_score_head(given: str, source: str, what: str) -> NoReturn:
    raise CheckpointError(f"{given}{source}: {what}; a reward model scoring with it would read a "
                          f"random score head (expected the export of a reward-model run, "
                          f"rlr/train/rm.py, or a Hugging Face *ForSequenceClassification checkpoint)")


def _load_hf(model: Transformer, source: str, mesh, rng: jax.Array) -> Any:
    from rlr.models.hf_io import load_hf_checkpoint

    c = model.config
    config, params = load_hf_checkpoint(source, mesh, config_overrides=_numerics(c),
                                        head=model.head, rng=rng)
    shape = ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
             "num_kv_heads", "head_dim", "tie_embeddings", "qkv_bias")
    for field in shape:
        if getattr(config, field) != getattr(c, field):
            raise CheckpointError(f"{source}/config.json: {field}={getattr(config, field)}, but the "
                                  f"model has {field}={getattr(c, field)} (config.model)")
    return params
