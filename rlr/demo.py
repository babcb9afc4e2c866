"""`make demo`: the reward-hacking study of Gao et al. 2024 on the synthetic task, end to end on
a CPU (SFT -> label -> ORM / PRM -> six PPO runs -> table and plots); see
rlr/studies/reward_hacking.py for the pipeline.

    python -m rlr.demo --workdir runs/demo [--quick] [--seed 0]
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Optional, Sequence

import jax

from rlr.studies import reward_hacking


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rlr.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="runs/demo", help="folder of the runs and the results")
    parser.add_argument("--quick", action="store_true", help="a small budget (a few minutes)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every stage")
    parser.add_argument("--variants", default=",".join(reward_hacking.VARIANTS),
                        help="comma-separated PPO reward variants to run")
    args = parser.parse_args(argv)
    variants = tuple(v for v in args.variants.split(",") if v)
    unknown = sorted(set(variants) - set(reward_hacking.VARIANTS))
    if unknown:
        parser.error(f"--variants: unknown {unknown}; expected some of {reward_hacking.VARIANTS}")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):  # the stages compile alike programs
        jax.config.update("jax_compilation_cache_dir", os.path.join(args.workdir, ".jax_cache"))
    budget = reward_hacking.QUICK if args.quick else reward_hacking.FULL
    reward_hacking.run(args.workdir, budget, args.seed, variants=variants)
    return 0


if __name__ == "__main__":
    sys.exit(main())
