"""`make demo`: the reward-hacking study of Gao et al. 2024 on the synthetic task, end to end on
a CPU (SFT -> label -> ORM / PRM -> six PPO runs -> table and plots); see
rlr/studies/reward_hacking.py for the pipeline.

    python -m rlr.demo --workdir runs/demo [--quick] [--seed 0]
"""
from __future__ import annotations

import sys
from typing import Optional, Sequence

from rlr.studies import cli, reward_hacking


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = cli.parser("python -m rlr.demo", __doc__, workdir="runs/demo")
    parser.add_argument("--variants", default=",".join(reward_hacking.VARIANTS),
                        help="comma-separated PPO reward variants to run")
    args = cli.parse(parser, argv)
    variants = tuple(v for v in args.variants.split(",") if v)
    unknown = sorted(set(variants) - set(reward_hacking.VARIANTS))
    if unknown:
        parser.error(f"--variants: unknown {unknown}; expected some of {reward_hacking.VARIANTS}")
    budget = reward_hacking.QUICK if args.quick else reward_hacking.FULL
    reward_hacking.run(args.workdir, budget, args.seed, variants=variants)
    return 0


if __name__ == "__main__":
    sys.exit(main())
