"""The `rlr` command line.

    rlr --config experiments/NAME.py[:variant] [--config.a.b=VALUE ...] [--workdir runs/x]
        runs `rlr.train.<config.trainer>.train(config, workdir)` after writing the resolved
        config to WORKDIR/config.json and config.txt;
    rlr SUBCOMMAND ARGS...
        runs a registered subcommand (see SUBCOMMANDS / register_subcommand).

`config.trainer` is a module name under rlr/train (sft, rm, dpo, ppo, ...) or, for a trainer
outside the package, a dotted module path; the module must define `train(config, workdir)`.
"""
from __future__ import annotations

import argparse
import ast
import importlib
import logging
import os
import pkgutil
import sys
from typing import Callable, Optional, Sequence, Union

import ml_collections

from rlr.config import ConfigError, apply_override, load_config, split_overrides, split_spec, write_config

log = logging.getLogger(__name__)

# name -> main(argv) or "module:function" (imported on use, so `rlr --help` stays light).
SUBCOMMANDS: dict[str, Union[str, Callable[[list[str]], Optional[int]]]] = {}


def register_subcommand(name: str, target: Union[str, Callable[[list[str]], Optional[int]]]) -> None:
    """Make `rlr NAME ARGS...` call target(ARGS) (a callable or a 'module:function' string)."""
    SUBCOMMANDS[name] = target


register_subcommand("fetch", "rlr.fetch:main")  # download the real model and problems (issue 10)
register_subcommand("eval", "rlr.evaluate:main")  # greedy / pass@k accuracy of a checkpoint


def _resolve(target: Union[str, Callable]) -> Callable:
    if callable(target):
        return target
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def available_trainers() -> list[str]:
    """Modules of rlr/train that define a top-level `train` function (read from source, so a
    broken or heavy trainer module is not imported to list it)."""
    import rlr.train

    names = []
    for info in pkgutil.iter_modules(rlr.train.__path__):
        path = os.path.join(info.module_finder.path, info.name + ".py")
        if info.ispkg or not os.path.isfile(path):
            continue
        with open(path) as f:
            tree = ast.parse(f.read(), path)
        if any(isinstance(node, ast.FunctionDef) and node.name == "train" for node in tree.body):
            names.append(info.name)
    return sorted(names)


def get_trainer(name: str) -> Callable[[ml_collections.ConfigDict, str], object]:
    """The `train(config, workdir)` of trainer `name` (see the module docstring)."""
    module_name = name if "." in name else f"rlr.train.{name}"
    allowed = available_trainers()
    if "." not in name and name not in allowed:
        raise ConfigError(f"config.trainer={name!r}: unknown trainer; expected one of {allowed} "
                          f"(modules of rlr/train that define train) or a dotted module path")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name is not None and module_name.startswith(e.name):
            raise ConfigError(f"config.trainer={name!r}: no module {module_name!r}; expected one "
                              f"of {allowed} or an importable dotted module path") from None
        raise
    if not callable(getattr(module, "train", None)):
        raise ConfigError(f"config.trainer={name!r}: module {module_name} defines no train("
                          f"config, workdir)")
    return module.train


def default_workdir(spec: str) -> str:
    """runs/NAME or runs/NAME-VARIANT for --config experiments/NAME.py[:VARIANT]."""
    path, variant = split_spec(spec)
    name = os.path.splitext(os.path.basename(path))[0]
    return os.path.join("runs", f"{name}-{variant}" if variant else name)


def parse_args(argv: Sequence[str]) -> tuple[ml_collections.ConfigDict, str]:
    """(resolved config, workdir) from the train-form arguments; errors name the key or file."""
    overrides, rest = split_overrides(argv)
    parser = argparse.ArgumentParser(
        prog="rlr", description="Run an experiment: rlr --config experiments/NAME.py[:variant] "
        "[--config.a.b=VALUE ...] [--workdir DIR]. Subcommands: " + (", ".join(sorted(SUBCOMMANDS))
                                                                     or "none registered"))
    parser.add_argument("--config", required=True, help="experiment file, optionally :variant")
    parser.add_argument("--workdir", default=None, help="output directory (default runs/NAME)")
    args = parser.parse_args(rest)
    config = load_config(args.config)
    for key, value in overrides:
        apply_override(config, key, value)
    if "trainer" not in config:
        raise ConfigError(f"--config {args.config}: the config has no 'trainer' field "
                          f"(expected one of {available_trainers()})")
    return config, args.workdir or default_workdir(args.config)


def run(argv: Sequence[str]) -> object:
    """The train form: resolve the config, write it to the workdir, run the trainer."""
    from rlr.parallel import initialize_distributed

    initialize_distributed()  # before anything touches devices
    config, workdir = parse_args(argv)
    train = get_trainer(config.trainer)
    import jax

    if jax.process_index() == 0:
        write_config(config, workdir)
    log.info("trainer %s, workdir %s", config.trainer, workdir)
    return train(config, workdir)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the `rlr` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)  # orbax logs every save step at INFO
    if argv and argv[0] in SUBCOMMANDS:
        status = _resolve(SUBCOMMANDS[argv[0]])(argv[1:])
        return int(status or 0)
    try:
        run(argv)
    except user_errors() as e:
        print(f"rlr: error: {e}", file=sys.stderr)
        return 2
    return 0


def user_errors() -> tuple[type[Exception], ...]:
    """The exceptions a user causes (a config key, a checkpoint path, a data file): reported as
    one line `rlr: error: ...` with exit status 2 instead of a traceback."""
    from rlr.data.builders._io import DataFormatError, RecordError
    from rlr.train.checkpoint import CheckpointError

    return ConfigError, CheckpointError, DataFormatError, RecordError


if __name__ == "__main__":
    sys.exit(main())
