"""Config helpers: load an experiment file, apply `--config.a.b=value` overrides with type checks,
save the resolved config, and turn config groups into the dataclasses the library takes.

An experiment is a Python file with `get_config(arg=None) -> ml_collections.ConfigDict`; every
field has a default (its type is the type of the default) and a one-line comment. A field whose
default is None should be declared `ml_collections.config_dict.placeholder(type)` so that an
override can be type-checked; a bare None field takes a Python literal (or else a string).
"""
from __future__ import annotations

import ast
import dataclasses
import importlib.util
import json
import logging
import os
import sys
from typing import Any, Iterable, Mapping, Optional

import ml_collections
from ml_collections import config_dict

log = logging.getLogger(__name__)

DTYPES = ("float32", "bfloat16", "float16")  # the dtype names config.model accepts
_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


class ConfigError(ValueError):
    """A user error in an experiment file or an override; the message names the file or key."""


# ----------------------------------------------------------------------------- experiment files


def split_spec(spec: str) -> tuple[str, Optional[str]]:
    """'experiments/x.py:variant' -> ('experiments/x.py', 'variant'); no ':' -> (path, None)."""
    path, sep, arg = spec.partition(":")
    return path, (arg if sep else None)


def load_config(spec: str) -> ml_collections.ConfigDict:
    """Run `get_config()` (or `get_config(variant)` for 'path.py:variant') of an experiment file.

    The directory above the file's directory (the repository root for experiments/NAME.py) is
    put on sys.path first, so experiment files can `from experiments import base`.
    """
    path, arg = split_spec(spec)
    if not os.path.isfile(path):
        raise ConfigError(f"--config {path}: no such file (expected an experiment file such as "
                          f"experiments/NAME.py)")
    root = os.path.dirname(os.path.dirname(os.path.abspath(path)))
    if root not in sys.path:
        sys.path.insert(0, root)
    name = "rlr_experiment_" + os.path.splitext(os.path.basename(path))[0]
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"--config {path}: defines no get_config()")
    config = module.get_config() if arg is None else module.get_config(arg)
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(f"--config {path}: get_config() returned {type(config).__name__}, "
                          f"expected an ml_collections.ConfigDict")
    return config


# ----------------------------------------------------------------------------- overrides


def _field_type(parent: ml_collections.ConfigDict, name: str) -> tuple[Optional[type], bool]:
    """(declared type of parent.name, whether it may be None): a placeholder's type (nullable),
    the default's type, or (None, True) for a bare None default (any literal)."""
    field = parent._fields[name]  # noqa: SLF001 (ConfigDict has no public accessor for this)
    if isinstance(field, config_dict.FieldReference):
        return field.get_type(), True
    return (None, True) if field is None else (type(field), False)


def parse_value(text: str, kind: Optional[type], key: str, nullable: bool = False) -> Any:
    """The value of the override `key=text` for a field of type `kind` (None: any literal).

    bool: true/false/1/0/yes/no/on/off; int: an integer; float: any number (inf, nan too);
    str: the text itself; tuple/list: a Python literal of that container. 'None' / 'none'
    sets a nullable field (a placeholder, or None by default) to None.
    """
    def fail(expected: str):
        return ConfigError(f"--{key}={text!r}: expected {expected}")

    if nullable and text in ("None", "none"):
        return None
    if kind is None:
        try:
            return ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return text
    if kind is bool:
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise fail("bool (true or false)")
    if kind is str:
        return text
    if kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            raise fail(kind.__name__) from None
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        raise fail(kind.__name__) from None
    if kind in (tuple, list) and isinstance(value, (tuple, list)):
        return kind(value)
    raise fail(kind.__name__)


def apply_override(config: ml_collections.ConfigDict, key: str, text: str) -> None:
    """Set config.<key> (a dotted path such as 'ppo.kl_coef') from its command-line text.

    Errors name the key: an unknown field (listing the fields of its group), a group set as a
    value, or text that does not parse as the field's type.
    """
    parts = key.split(".")
    node, walked = config, "config"
    for part in parts[:-1]:
        if part not in node:
            raise ConfigError(f"--{walked}.{part}: unknown key; {walked} has {sorted(node.keys())}")
        node, walked = node[part], f"{walked}.{part}"
        if not isinstance(node, ml_collections.ConfigDict):
            raise ConfigError(f"--config.{key}: {walked} is not a group (it holds a "
                              f"{type(node).__name__} value)")
    name, full = parts[-1], f"config.{key}"
    if name not in node:
        raise ConfigError(f"--{full}: unknown key; {walked} has {sorted(node.keys())}")
    if isinstance(node[name], ml_collections.ConfigDict):
        raise ConfigError(f"--{full}: is a group; set one of its fields {sorted(node[name].keys())}")
    kind, nullable = _field_type(node, name)
    value = parse_value(text, kind, full, nullable)
    try:
        node[name] = value
    except TypeError as e:
        raise ConfigError(f"--{full}={text!r}: {e}") from None


def split_overrides(args: Iterable[str], prefix: str = "--config.") -> tuple[list[tuple[str, str]],
                                                                              list[str]]:
    """Separate `--config.a.b=v` / `--config.a.b v` arguments ([(a.b, v)]) from the others."""
    overrides, rest = [], []
    args = list(args)
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith(prefix):
            key, sep, value = arg[len(prefix):].partition("=")
            if not sep:
                if i + 1 >= len(args):
                    raise ConfigError(f"{arg}: missing value (use {arg}=VALUE)")
                value, i = args[i + 1], i + 1
            overrides.append((key, value))
        else:
            rest.append(arg)
        i += 1
    return overrides, rest


def config_changes(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    """'key: old -> new' for each leaf of two nested dicts (configs as JSON) that differs, keys
    dotted and sorted; a key on one side only shows '<missing>' on the other."""
    missing = object()

    def show(value: Any) -> str:
        return "<missing>" if value is missing else repr(value)

    changes = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, missing), new.get(key, missing)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            changes += config_changes(a, b, f"{prefix}{key}.")
        elif a != b:
            changes.append(f"{prefix}{key}: {show(a)} -> {show(b)}")
    return changes


def write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
    """workdir/config.json (machine-readable) and workdir/config.txt (the readable dump).

    A workdir whose config.json holds another config gets a warning that names each changed key
    before the file is replaced: the trainers continue from what the workdir holds (checkpoints,
    a label run's samples) whatever the new config says."""
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, "config.json")
    text = config.to_json_best_effort(indent=2, sort_keys=True) + "\n"
    if os.path.isfile(path):
        try:
            with open(path) as f:
                changes = config_changes(json.load(f), json.loads(text))
        except ValueError as e:
            changes = [f"the old file does not parse ({e})"]
        if changes:
            log.warning("%s: this workdir was run with another config; continuing from what it "
                        "holds with %d change(s): %s", path, len(changes), "; ".join(changes))
    with open(path, "w") as f:
        f.write(text)
    with open(os.path.join(workdir, "config.txt"), "w") as f:
        f.write(str(config))


# ----------------------------------------------------------------------------- dataclasses


def to_config_dict(instance: Any) -> ml_collections.ConfigDict:
    """A ConfigDict of a dataclass instance's fields (its defaults become the config defaults)."""
    return ml_collections.ConfigDict(dataclasses.asdict(instance))


def to_dataclass(cls: type, values: Mapping[str, Any], where: str) -> Any:
    """cls(**values) from a dict or ConfigDict (config.<where>); an unknown key is an error that
    names it and the known ones."""
    values = values.to_dict() if isinstance(values, ml_collections.ConfigDict) else dict(values)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ConfigError(f"config.{where}.{unknown[0]}: unknown key; {cls.__name__} has "
                          f"{sorted(fields)}")
    return cls(**values)


def make_model_config(model: Mapping[str, Any], where: str = "model"):
    """The rlr.models.ModelConfig of a config.model group (see experiments/base.py:model()).

    name: a rlr.models named shape; hf_checkpoint: a Hugging Face directory whose config.json
    gives the shape (and must agree with `name` where both are set); param_dtype / dtype:
    names in DTYPES; remat: none | full | dots; attention: xla | cudnn (absent in the configs
    of runs saved before it existed: xla). Errors name the offending key.
    """
    import jax.numpy as jnp

    from rlr.models import NAMED_CONFIGS, get_config
    from rlr.models.hf_io import read_hf_config

    changes = {}
    for key in ("param_dtype", "dtype"):
        if model[key] not in DTYPES:
            raise ConfigError(f"config.{where}.{key}={model[key]!r}: expected one of {DTYPES}")
        changes[key] = getattr(jnp, model[key])
    changes["remat"] = model["remat"]
    changes["attention"] = model.get("attention", "xla")
    name, path = model["name"], model["hf_checkpoint"]
    if name and name not in NAMED_CONFIGS:
        raise ConfigError(f"config.{where}.name={name!r}: expected one of {sorted(NAMED_CONFIGS)}")
    if not path and not name:
        raise ConfigError(f"config.{where}: set name (a named shape) or hf_checkpoint")
    try:
        config = read_hf_config(path, **changes) if path else get_config(name, **changes)
    except ValueError as e:  # a field ModelConfig refuses (remat, attention with its dtype, ...)
        raise ConfigError(f"config.{where}: {e}") from None
    if not path:
        return config
    if name:
        named = get_config(name, **changes)
        shape = ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                 "num_kv_heads", "head_dim")
        for field in shape:
            if getattr(named, field) != getattr(config, field):
                raise ConfigError(
                    f"config.{where}: name={name!r} has {field}={getattr(named, field)} but "
                    f"hf_checkpoint {path}/config.json has {getattr(config, field)}")
    return config

