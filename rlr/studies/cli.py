"""The command line the pipeline studies share: a workdir, a quick budget, a seed."""
from __future__ import annotations

import argparse
import logging
import os
from typing import Optional, Sequence

import jax


def parser(prog: str, doc: str, workdir: str) -> argparse.ArgumentParser:
    """--workdir (default `workdir`), --quick and --seed; a study adds its own flags."""
    p = argparse.ArgumentParser(prog=prog, description=doc,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default=workdir, help="folder of the runs and the results")
    p.add_argument("--quick", action="store_true", help="a tiny budget (a few minutes; the tests')")
    p.add_argument("--seed", type=int, default=0, help="seed of every stage")
    return p


def parse(p: argparse.ArgumentParser, argv: Optional[Sequence[str]]) -> argparse.Namespace:
    """The parsed flags, with logging set up and, unless one is set already (e.g. by
    JAX_COMPILATION_CACHE_DIR), a persistent compilation cache in WORKDIR/.jax_cache: the
    stages compile alike programs."""
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not jax.config.jax_compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", os.path.join(args.workdir, ".jax_cache"))
    return args
