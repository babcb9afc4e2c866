"""The reward-hacking study of Gao et al. 2024 ("On Designing Effective RL Reward at Training
Time for LLM Reasoning") on the synthetic task: does PPO with a plain PRM-sum reward learn to
add needless correct steps, and do Clip, Delta and Clip-Delta stop it?

    python -m rlr.demo --workdir runs/demo            # the whole pipeline (`make demo`)
    python -m rlr.demo --workdir runs/demo --quick    # a small budget, for tests

The pipeline is a list of ordinary `rlr` runs, each in its own folder under WORKDIR (the
command of each is printed, so any stage can be rerun or changed by hand):

    sft      experiments/sft.py          the ~1M-parameter policy on reference solutions, a share
                                         NEEDLESS_FRACTION of them with one needless correct step
    label    experiments/label.py        sample solutions, label each step with the checker; add one
                                         corrupted reference solution a problem and LABEL_CORRUPTIONS mode
    orm, prm experiments/orm.py, prm.py  reward models on those labels, from the SFT policy
    ppo_*    experiments/ppo.py:VARIANT  success | orm | prm | prm_clip | prm_delta | clip_delta,
                                         same seeds and budget, only config.rewards differs

then WORKDIR/results.md (the table), results.json and curves.png (held-out greedy accuracy,
steps per solution, repetition rate and length over PPO iterations, one line a reward).
A stage whose folder holds DONE is skipped, so an interrupted demo continues where it stopped.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from typing import Optional, Sequence

import numpy as np

from rlr.data import synthetic
from rlr.studies import report
from rlr.train.checkpoint import should_stop

EXPERIMENTS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__)))), "experiments")
VARIANTS = ("success", "orm", "prm", "prm_clip", "prm_delta", "clip_delta")
PRM_VARIANTS = ("prm", "prm_clip", "prm_delta", "clip_delta")  # the variants rewarded by the PRM
LABELS = {"success": "success only", "orm": "+ ORM", "prm": "+ PRM (sum)", "prm_clip": "+ PRM-Clip",
          "prm_delta": "+ PRM-Delta", "clip_delta": "+ PRM-Clip-Delta"}
# The setting in which a PRM can be hacked (see README, Results): the SFT data give the policy the
# habit of an occasional needless step, and the PRM's data hold written solutions with needless
# steps labelled correct next to the policy's samples, so the PRM pays for each correct step.
NEEDLESS_FRACTION = 0.15  # config.data.needless_fraction of every stage (SFT reference solutions)
LABEL_CORRUPTIONS = synthetic.CORRUPTION_MODES  # config.label.corruptions: the PRM / ORM data mix
DONE = "DONE"  # written in a stage's folder when its run has finished
EVAL_KEYS = ("eval/accuracy", "eval/num_steps", "eval/repetition_rate", "eval/response_length")


@dataclasses.dataclass(frozen=True)
class Budget:
    """How much each stage trains (the only thing --quick changes)."""

    sft_steps: int
    label_problems: int
    label_samples: int
    rm_steps: int
    ppo_iterations: int
    prompts_per_iteration: int
    num_samples: int
    eval_every: int
    eval_problems: int


FULL = Budget(sft_steps=640, label_problems=256, label_samples=4, rm_steps=150,
              ppo_iterations=10, prompts_per_iteration=32, num_samples=4, eval_every=2,
              eval_problems=64)
QUICK = Budget(sft_steps=60, label_problems=64, label_samples=2, rm_steps=20,
               ppo_iterations=4, prompts_per_iteration=8, num_samples=4, eval_every=2,
               eval_problems=16)


@dataclasses.dataclass(frozen=True)
class Stage:
    """One `rlr` run of the pipeline: its folder name, experiment spec and overrides."""

    name: str
    spec: str
    overrides: tuple[tuple[str, object], ...]

    def argv(self, workdir: str) -> list[str]:
        """The `rlr` command line of this stage (without the program name)."""
        return (["--config", self.spec]
                + [f"--config.{k}={v}" for k, v in self.overrides]
                + ["--workdir", os.path.join(workdir, self.name)])


def stages(workdir: str, budget: Budget, seed: int = 0, model: str = "synthetic-1m",
           variants: Sequence[str] = VARIANTS) -> list[Stage]:
    """The pipeline's runs in order (see the module docstring); every stage uses `seed`."""
    def run_dir(name: str) -> str:
        return os.path.join(workdir, name)

    def exp(name: str) -> str:
        return os.path.join(EXPERIMENTS, name)

    common = (("seed", seed), ("model.name", model), ("data.needless_fraction", NEEDLESS_FRACTION))
    evaluation = (("eval.every_steps", budget.eval_every), ("eval.num_problems", budget.eval_problems))
    out = [
        Stage("sft", exp("sft.py"), common + (
            ("sft.num_steps", budget.sft_steps), ("eval.every_steps", max(budget.sft_steps // 4, 1)),
            ("eval.num_problems", budget.eval_problems))),
        Stage("label", exp("label.py"), common + (
            ("label.policy_source", run_dir("sft")), ("label.num_problems", budget.label_problems),
            ("label.num_samples", budget.label_samples), ("label.corruptions", LABEL_CORRUPTIONS))),
    ]
    for kind in ("orm", "prm"):
        out.append(Stage(kind, exp(f"{kind}.py"), common + (
            ("rm.init_source", run_dir("sft")), ("rm.data_path", run_dir("label")),
            ("rm.num_steps", budget.rm_steps))))
    for variant in variants:
        out.append(Stage(f"ppo_{variant}", f"{exp('ppo.py')}:{variant}", common + (
            ("ppo.policy_source", run_dir("sft")),
            ("rewards.orm_source", run_dir("orm") if variant == "orm" else ""),
            ("rewards.prm_source", run_dir("prm") if variant in PRM_VARIANTS else ""),
            ("ppo.num_iterations", budget.ppo_iterations),
            ("ppo.prompts_per_iteration", budget.prompts_per_iteration),
            ("sampling.num_samples", budget.num_samples)) + evaluation))
    return out


def run_stage(stage: Stage, workdir: str) -> dict:
    """Run one stage through the `rlr` entry point (unless its folder holds DONE); returns
    {"seconds": wall time of the run (or of the earlier one)}."""
    from rlr import launch

    folder = os.path.join(workdir, stage.name)
    done = os.path.join(folder, DONE)
    if os.path.isfile(done):
        with open(done) as f:
            return json.load(f)
    argv = stage.argv(workdir)
    print(f"\n== {stage.name}: rlr {' '.join(argv)}", flush=True)
    start = time.time()
    launch.run(argv)
    if should_stop():  # the run saved a checkpoint on SIGTERM and returned early: not done
        raise SystemExit(f"{stage.name}: stopped by a preemption signal; rerun to continue")
    result = {"seconds": time.time() - start}
    with open(done, "w") as f:
        json.dump(result, f)
    return result


@dataclasses.dataclass(frozen=True)
class Row:
    """The study's numbers for one reward: held-out greedy eval at the start and the end of PPO,
    and the training reward's move (evidence that the run trained)."""

    variant: str
    accuracy: float
    num_steps: float
    repetition_rate: float
    response_length: float
    start_accuracy: float
    start_num_steps: float
    reward_first: float
    reward_last: float
    prm_score: float
    seconds: float


def summarise(workdir: str, variants: Sequence[str] = VARIANTS,
              seconds: Optional[dict] = None) -> list[Row]:
    """A Row per PPO run of WORKDIR, read from its metrics.jsonl. The training reward's move is
    the mean of the first vs the last three logged values of reward/total."""
    rows = []
    for variant in variants:
        lines = report.read_metrics(os.path.join(workdir, f"ppo_{variant}"))
        start, end = {}, {}
        for key in EVAL_KEYS:
            start[key], end[key] = report.first_and_last(lines, key)
        _, rewards = report.curve(lines, "reward/total")
        first = float(np.mean(rewards[:3])) if len(rewards) else math.nan
        rows.append(Row(variant, end["eval/accuracy"], end["eval/num_steps"],
                        end["eval/repetition_rate"], end["eval/response_length"],
                        start["eval/accuracy"], start["eval/num_steps"], first,
                        report.mean_of_last(lines, "reward/total", 3),
                        report.mean_of_last(lines, "prm/score_mean", 3),
                        (seconds or {}).get(variant, math.nan)))
    return rows


HEADER = ("reward", "accuracy", "steps / solution", "repetition rate", "length (tokens)",
          "accuracy at start", "steps at start", "train reward first -> last", "PPO time (s)")


def table(rows: Sequence[Row]) -> str:
    """The markdown table of the study (held-out greedy evaluation after the last update)."""
    return report.markdown_table(HEADER, [
        (LABELS.get(r.variant, r.variant), r.accuracy, r.num_steps, r.repetition_rate,
         r.response_length, r.start_accuracy, r.start_num_steps,
         f"{r.reward_first:.3f} -> {r.reward_last:.3f}", f"{r.seconds:.0f}") for r in rows])


def plot(workdir: str, variants: Sequence[str] = VARIANTS) -> str:
    """WORKDIR/curves.png: held-out accuracy, steps per solution, repetition rate and length
    over PPO iterations, one line a reward."""
    runs = {LABELS.get(v, v): report.read_metrics(os.path.join(workdir, f"ppo_{v}")) for v in variants}
    panels = [("eval/accuracy", "held-out greedy accuracy"), ("eval/num_steps", "steps per solution"),
              ("eval/repetition_rate", "repetition rate"), ("eval/response_length", "length (tokens)")]
    return report.plot_curves(runs, panels, os.path.join(workdir, "curves.png"),
                              title="PPO on the synthetic task: reward variants")


def run(workdir: str, budget: Budget, seed: int = 0, model: str = "synthetic-1m",
        variants: Sequence[str] = VARIANTS) -> list[Row]:
    """Run (or continue) the whole pipeline in WORKDIR and write results.md / .json / curves.png."""
    os.makedirs(workdir, exist_ok=True)
    start = time.time()
    seconds = {}
    for stage in stages(workdir, budget, seed, model, variants):
        result = run_stage(stage, workdir)
        if stage.name.startswith("ppo_"):
            seconds[stage.name[len("ppo_"):]] = result["seconds"]
    rows = summarise(workdir, variants, seconds)
    text = table(rows)
    with open(os.path.join(workdir, "results.md"), "w") as f:
        f.write(f"Budget: {dataclasses.asdict(budget)}, seed {seed}, model {model}\n\n{text}\n")
    with open(os.path.join(workdir, "results.json"), "w") as f:
        json.dump({"budget": dataclasses.asdict(budget), "seed": seed, "model": model,
                   "rows": [dataclasses.asdict(r) for r in rows]}, f, indent=1)
    plot(workdir, variants)
    print(f"\n{text}\n\nwall time {time.time() - start:.0f} s; table, curves and runs in {workdir}")
    return rows
