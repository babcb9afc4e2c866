"""The DPO-vs-PPO study of Xu et al. (ICML 2024), "Is DPO Superior to PPO for LLM Alignment? A
Comprehensive Study", on the synthetic task (the tabular counterexample of its Sec. 4.1 is
rlr/studies/dpo_counterexample.py).

    python -m rlr.studies.dpo_vs_ppo --workdir runs/dpo_vs_ppo           # ~17 min on a busy 2-core CPU
    python -m rlr.studies.dpo_vs_ppo --workdir runs/dpo_vs_ppo --quick   # a tiny budget, for tests

A list of ordinary `rlr` runs, each in its own folder under WORKDIR (the command of each is
printed, so any run can be repeated or changed by hand; a folder holding DONE is skipped, so an
interrupted study continues where it stopped). Every run gets the same task (TASK: one or two
+/- operations, so the small policy answers some problems right and some wrong) and model:

    sft                experiments/sft.py            the policy (synthetic-1m), reference solutions
    label              experiments/label.py          Budget.label_samples solutions sampled from
                                                     it for each of Budget.label_problems train
                                                     problems, each checked: the preference data
                                                     is correct over incorrect, per problem
    rm                 experiments/orm.py            a Bradley-Terry RM (rm.orm_loss=
                                                     bradley_terry) on those pairs, from the SFT
    dpo                experiments/dpo.py:labelled   offline DPO on the same pairs (every
                                                     correct x incorrect combination)
    idpo               experiments/iterative_dpo.py  rounds of sample -> rank by the RM -> DPO,
                                                     the reference refreshed each round (Xu et
                                                     al.'s iterative DPO, labelled by the RM)
    ppo_<factor>_s<i>  experiments/ppo_factors.py    PPO on the RM's score, seed `seed + i`, for
                                                     each factor of FACTORS (cumulative: baseline,
                                                     + advantage normalisation, + large batch,
                                                     + EMA reference), the same number of
                                                     sampled responses each

Then WORKDIR/results.md and results.json hold two tables, preference.png and factors.png the
plots:

1. The preference study (Xu et al. Sec. 4): the SFT policy, DPO, iterative DPO and PPO (all
   three factors on: the ppo_ema_ref_s* runs, mean over seeds) -- held-out greedy accuracy and
   where each policy puts its probability mass on the preference data's prompts (`coverage`):
   on the data's correct responses, on its incorrect ones, and outside the data. The paper's
   claim: DPO can move mass to responses the data never covers (its tabular example: pi_ref =
   (0.5, 0.5, 0), y1 > y2, DPO may reach (0.1, 0, 0.9)), PPO with a learned reward does not.
2. The PPO factors (Xu et al. Table 3): held-out greedy accuracy, the RM score and the rollouts'
   accuracy at the end of training, mean and standard deviation over the seeds.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import math
import os
import sys
import time
from typing import NamedTuple, Optional, Sequence

import numpy as np

from rlr.studies import cli, report
from rlr.studies.reward_hacking import DONE, EXPERIMENTS, Stage, run_stage

FACTORS = ("baseline", "adv_norm", "large_batch", "ema_ref")  # experiments/ppo_factors.py variants
FACTOR_LABELS = {"baseline": "PPO (baseline)", "adv_norm": "+ advantage normalisation",
                 "large_batch": "+ large batch", "ema_ref": "+ EMA reference"}
POLICIES = ("sft", "dpo", "idpo", "ppo")  # the rows of the preference table
POLICY_LABELS = {"sft": "SFT (reference)", "dpo": "DPO", "idpo": "iterative DPO",
                 "ppo": "PPO (BT RM, all factors)"}
# The task of every run (config.data overrides): easier than the demo's, so the small SFT
# policy is right on some problems and wrong on others (both are needed for a preference pair);
# few enough train problems that the label run covers them all, so the RM is trained on every
# prompt PPO and iterative DPO sample on.
TASK = (("data.num_ops", (1, 2)), ("data.ops", ("+", "-")), ("data.max_response_len", 32),
        ("data.num_train", 1024), ("data.num_eval", 128))
QUICK_TASK = (("data.num_ops", (1, 1)), ("data.ops", ("+", "-")), ("data.max_response_len", 20),
              ("data.num_train", 200), ("data.num_eval", 16))  # one operation: learnt in seconds
COVERAGE_FILE = "coverage.json"  # what `coverage` writes in each scored run's folder


@dataclasses.dataclass(frozen=True)
class Budget:
    """How much each run trains (what --quick changes). PPO: every factor samples
    ppo_prompts x ppo_iterations x num_samples responses in all (large_batch: LARGE_BATCH times
    the prompts an iteration, as many times fewer iterations)."""

    model: str
    task: tuple
    sft_steps: int
    sft_learning_rate: float
    label_problems: int
    label_samples: int
    rm_steps: int
    rm_batch_size: int
    dpo_steps: int
    dpo_eval_pairs: int
    idpo_rounds: int
    idpo_prompts: int
    ppo_prompts: int
    ppo_iterations: int
    num_samples: int
    seeds: int
    eval_every: int
    eval_problems: int
    coverage_prompts: int


FULL = Budget(model="synthetic-1m", task=TASK, sft_steps=300, sft_learning_rate=3e-3,
              label_problems=1024, label_samples=4, rm_steps=150, rm_batch_size=32, dpo_steps=60,
              dpo_eval_pairs=32, idpo_rounds=2, idpo_prompts=256, ppo_prompts=16,
              ppo_iterations=20, num_samples=4, seeds=3, eval_every=4, eval_problems=128,
              coverage_prompts=128)
QUICK = Budget(model="tiny", task=QUICK_TASK, sft_steps=80, sft_learning_rate=1e-2,
               label_problems=32, label_samples=4, rm_steps=4, rm_batch_size=8, dpo_steps=4,
               dpo_eval_pairs=0, idpo_rounds=2, idpo_prompts=8, ppo_prompts=8, ppo_iterations=8,
               num_samples=4, seeds=1, eval_every=8, eval_problems=8, coverage_prompts=8)


def factor_spec(factor: str) -> str:
    """The experiment spec of a PPO factor: experiments/ppo_factors.py:FACTOR."""
    return f"{os.path.join(EXPERIMENTS, 'ppo_factors.py')}:{factor}"


def batch_scale(factor: str) -> int:
    """How many times the baseline's prompts an iteration `factor` samples (experiments/
    ppo_factors.py decides: LARGE_BATCH from large_batch on, else 1)."""
    from rlr.config import load_config

    prompts = [load_config(factor_spec(f)).ppo.prompts_per_iteration for f in ("baseline", factor)]
    return prompts[1] // prompts[0]


def ppo_name(factor: str, seed_index: int) -> str:
    """The folder of the PPO run of `factor` with seed `seed + seed_index`."""
    return f"ppo_{factor}_s{seed_index}"


def stages(workdir: str, budget: Budget, seed: int = 0) -> list[Stage]:
    """The study's runs in order (see the module docstring)."""
    def run_dir(name: str) -> str:
        return os.path.join(workdir, name)

    def exp(name: str) -> str:
        return os.path.join(EXPERIMENTS, name)

    def common(run_seed: int) -> tuple:
        return (("seed", run_seed), ("model.name", budget.model)) + budget.task

    evaluation = (("eval.num_problems", budget.eval_problems),
                  ("eval.batch_size", min(64, budget.eval_problems)))
    policy = run_dir("sft")
    half = budget.label_samples // 2  # every correct x incorrect combination of a problem's samples
    out = [
        Stage("sft", exp("sft.py"), common(seed) + (
            ("sft.num_steps", budget.sft_steps), ("optim.learning_rate", budget.sft_learning_rate),
            ("optim.warmup_steps", min(50, budget.sft_steps // 5)),
            ("eval.every_steps", 0)) + evaluation),
        Stage("label", exp("label.py"), common(seed) + (
            ("label.policy_source", policy), ("label.num_problems", budget.label_problems),
            ("label.num_samples", budget.label_samples),
            ("label.batch_size", min(64, budget.label_problems)))),
        Stage("rm", exp("orm.py"), common(seed) + (
            ("rm.orm_loss", "bradley_terry"), ("rm.init_source", policy),
            ("rm.data_path", run_dir("label")), ("rm.num_steps", budget.rm_steps),
            ("rm.batch_size", budget.rm_batch_size))),
        Stage("dpo", f"{exp('dpo.py')}:labelled", common(seed) + (
            ("dpo.policy_source", policy), ("dpo.data_path", run_dir("label")),
            ("dpo.pairs_per_prompt", half * (budget.label_samples - half)),
            ("dpo.eval_pairs", budget.dpo_eval_pairs), ("dpo.num_steps", budget.dpo_steps),
            ("optim.warmup_steps", min(10, budget.dpo_steps // 5)), ("eval.every_steps", 0))
            + evaluation),
        Stage("idpo", exp("iterative_dpo.py"), common(seed) + (
            ("dpo.policy_source", policy), ("dpo.rm_source", run_dir("rm")),
            ("dpo.iterations", budget.idpo_rounds),
            ("dpo.prompts_per_iteration", budget.idpo_prompts),
            ("dpo.num_samples", budget.label_samples), ("dpo.eval_pairs", budget.dpo_eval_pairs),
            ("dpo.sample_batch_size", min(64, budget.idpo_prompts)),
            ("dpo.num_steps", budget.dpo_steps), ("eval.every_steps", 0)) + evaluation),
    ]
    for i in range(budget.seeds):
        for factor in FACTORS:
            scale = batch_scale(factor)
            out.append(Stage(ppo_name(factor, i), factor_spec(factor), common(seed + i) + (
                ("ppo.policy_source", policy), ("rewards.orm_source", run_dir("rm")),
                ("ppo.prompts_per_iteration", budget.ppo_prompts * scale),
                ("ppo.num_iterations", budget.ppo_iterations // scale),
                ("sampling.num_samples", budget.num_samples),
                ("eval.every_steps", max(1, budget.eval_every // scale))) + evaluation))
    return out


# ----------------------------------------------------------------------------- coverage


class PreferenceSet(NamedTuple):
    """The preference data's responses to one question: the distinct correct (chosen) and
    incorrect (rejected) ones."""

    question: str
    chosen: tuple[str, ...]
    rejected: tuple[str, ...]


def preference_sets(label_dir: str, limit: int) -> list[PreferenceSet]:
    """The first `limit` questions (file order) of a label run's labelled.jsonl that have both a
    correct and an incorrect response (the questions that give preference pairs)."""
    from rlr.train.label import read_labelled

    grouped: dict[str, tuple[dict, dict]] = collections.OrderedDict()
    for r in read_labelled(label_dir):
        chosen, rejected = grouped.setdefault(r.question, ({}, {}))
        (chosen if r.correct else rejected)[r.response] = None
    sets = [PreferenceSet(q, tuple(c), tuple(w)) for q, (c, w) in grouped.items() if c and w]
    return sets[:limit]


def in_data_mass(logps: np.ndarray, groups: np.ndarray, num_groups: int) -> np.ndarray:
    """sum over the rows of each group of exp(logp): [num_groups] (0 for a group without rows).
    logps [N] are sequence log-probs, groups [N] int in [0, num_groups)."""
    out = np.zeros(num_groups)
    np.add.at(out, groups, np.exp(logps))
    return out


def coverage(config, sets: Sequence[PreferenceSet], run_dirs: dict[str, str],
             batch_size: int = 64) -> dict[str, dict]:
    """Where each policy puts its probability mass on the preference data's prompts.

    For a prompt x with the data's correct responses C(x) and incorrect ones W(x) (distinct
    texts, each scored as the whole response followed by eos, i.e. the event that the policy
    generates exactly it and stops; a response cut at data.max_response_len without eos is the
    event of that prefix; these events are disjoint):
        chosen(x) = sum_{y in C(x)} pi(y | x),  rejected(x) = sum_{y in W(x)} pi(y | x),
        outside(x) = 1 - chosen(x) - rejected(x)  (mass on responses the data never shows),
    pi(y | x) = prod_t pi(y_t | x, y_<t) by teacher forcing (the model's softmax over its whole
    vocabulary, as its log-probs are trained). Returns {name: {chosen, rejected, outside (means
    over the prompts), prompts}} for each run dir (its exported params; the model, tokenizer and
    task of `config`). Xu et al. (2024), Sec. 4.1: DPO may put mass outside the data, PPO not.
    """
    import jax
    import jax.numpy as jnp

    from rlr.models import Transformer
    from rlr.parallel import shard_batch
    from rlr.train import common, params_io, sequences, tasks

    s = common.setup(config)
    data = tasks.as_data_config(config.data)
    model = Transformer(s.model_config)
    prompts, responses, groups = [], [], []
    for i, p in enumerate(sets):
        text = sequences.prompt_text(s.tokenizer, p.question, data.prompt_template)
        for kind, texts in ((0, p.chosen), (1, p.rejected)):
            prompts += [text] * len(texts)
            responses += list(texts)
            groups += [2 * i + kind] * len(texts)
    pt, pm = sequences.encode_prompts(s.tokenizer, prompts, data.prompt_bucket)
    rt, rmask = sequences.encode_responses(s.tokenizer, responses, data.response_bucket,
                                           max_len=data.max_response_len)

    @jax.jit
    def sequence_logps(params, prompt_tokens, prompt_mask, response_tokens, response_mask):
        batch = sequences.sequence_inputs(prompt_tokens, prompt_mask, response_tokens, response_mask)
        logp = sequences.response_logprobs(model, params, batch)
        return jnp.sum(jnp.where(batch.response_mask, logp, 0.0), axis=1)

    out = {}
    for name, run_dir in run_dirs.items():
        params = params_io.load_params(model, run_dir, s.mesh, s.rng, s.tokenizer)
        logps = []
        with common.model_context(s.mesh):
            for start in range(0, len(prompts), batch_size):
                rows = np.minimum(np.arange(start, start + batch_size), len(prompts) - 1)
                arrays = shard_batch((pt[rows], pm[rows], rt[rows], rmask[rows]), s.mesh)
                values = np.asarray(jax.device_get(sequence_logps(params, *arrays)), np.float64)
                logps.append(values[:min(batch_size, len(prompts) - start)])
        mass = in_data_mass(np.concatenate(logps), np.asarray(groups), 2 * len(sets)).reshape(-1, 2)
        out[name] = {"chosen": float(mass[:, 0].mean()), "rejected": float(mass[:, 1].mean()),
                     "outside": float(np.mean(1.0 - mass.sum(axis=1))), "prompts": len(sets)}
    return out


def run_coverage(workdir: str, budget: Budget, stage_list: Sequence[Stage]) -> dict[str, dict]:
    """coverage() of the SFT, DPO, iterative DPO and every full-factor PPO run (kept in each run's
    COVERAGE_FILE, so a rerun does not score again)."""
    from rlr import launch

    names = ["sft", "dpo", "idpo"] + [ppo_name("ema_ref", i) for i in range(budget.seeds)]
    out, missing = {}, {}
    for name in names:
        path = os.path.join(workdir, name, COVERAGE_FILE)
        if os.path.isfile(path):
            with open(path) as f:
                out[name] = json.load(f)
        else:
            missing[name] = os.path.join(workdir, name)
    if missing:
        sft = next(s for s in stage_list if s.name == "sft")
        config, _ = launch.parse_args(sft.argv(workdir))
        sets = preference_sets(os.path.join(workdir, "label"), budget.coverage_prompts)
        for name, values in coverage(config, sets, missing).items():
            with open(os.path.join(workdir, name, COVERAGE_FILE), "w") as f:
                json.dump(values, f)
            out[name] = values
    return out


# ----------------------------------------------------------------------------- tables


def mean_std(values: Sequence[float]) -> str:
    """'mean' of one value, 'mean ± sd' (sample standard deviation) of several, '-' of none."""
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f}"


def final_accuracy(run_dir: str) -> float:
    """The run's last held-out greedy accuracy (eval/accuracy)."""
    return report.first_and_last(report.read_metrics(run_dir), "eval/accuracy")[1]


def run_seconds(run_dir: str) -> float:
    """The wall time of a finished run (its DONE file); NaN when it has none."""
    path = os.path.join(run_dir, DONE)
    if not os.path.isfile(path):
        return math.nan
    with open(path) as f:
        return float(json.load(f)["seconds"])


def data_summary(workdir: str) -> dict:
    """The preference data and its reward model: the label run's statistics (num_responses,
    num_problems, accuracy, pass_at_n; rlr.train.label.label_stats) and the RM's final held-out
    pair accuracy (rm_accuracy: share of held-out pairs it ranks right)."""
    stats = report.read_metrics(os.path.join(workdir, "label"))[0]
    rm = report.first_and_last(report.read_metrics(os.path.join(workdir, "rm")), "eval/accuracy")[1]
    return {**{k: stats[k] for k in ("num_responses", "num_problems", "accuracy", "pass_at_n")},
            "rm_accuracy": rm}


PREFERENCE_HEADER = ("policy", "held-out accuracy", "mass on chosen (correct) data",
                     "mass on rejected (incorrect) data", "mass outside the data", "runs",
                     "train time (s)")


def preference_rows(workdir: str, budget: Budget, cover: dict[str, dict]) -> list[dict]:
    """A row per policy of POLICIES: lists of per-run values (PPO: one per seed)."""
    runs = {"sft": ["sft"], "dpo": ["dpo"], "idpo": ["idpo"],
            "ppo": [ppo_name("ema_ref", i) for i in range(budget.seeds)]}
    rows = []
    for policy in POLICIES:
        names = runs[policy]
        rows.append({"policy": policy, "runs": names,
                     "accuracy": [final_accuracy(os.path.join(workdir, n)) for n in names],
                     **{k: [cover[n][k] for n in names] for k in ("chosen", "rejected", "outside")},
                     "seconds": [run_seconds(os.path.join(workdir, n)) for n in names]})
    return rows


def preference_table(rows: Sequence[dict]) -> str:
    """The markdown table of the preference study (rows of preference_rows)."""
    return report.markdown_table(PREFERENCE_HEADER, [
        (POLICY_LABELS[r["policy"]], mean_std(r["accuracy"]), mean_std(r["chosen"]),
         mean_std(r["rejected"]), mean_std(r["outside"]), str(len(r["runs"])),
         f"{np.nansum(r['seconds']):.0f}") for r in rows])


FACTORS_HEADER = ("PPO", "held-out accuracy", "RM score (train)", "rollout accuracy (train)",
                  "accuracy at start", "prompts x iterations", "seeds", "time / run (s)")


def factor_rows(workdir: str, budget: Budget) -> list[dict]:
    """A row per factor: per-seed values of the final held-out accuracy, the mean of the last
    three iterations' RM score (orm/score_mean) and rollout accuracy, the start accuracy."""
    rows = []
    for factor in FACTORS:
        dirs = [os.path.join(workdir, ppo_name(factor, i)) for i in range(budget.seeds)]
        lines = [report.read_metrics(d) for d in dirs]
        scale = batch_scale(factor)
        rows.append({
            "factor": factor,
            "accuracy": [report.first_and_last(m, "eval/accuracy")[1] for m in lines],
            "start_accuracy": [report.first_and_last(m, "eval/accuracy")[0] for m in lines],
            "rm_score": [report.mean_of_last(m, "orm/score_mean", 3) for m in lines],
            "rollout_accuracy": [report.mean_of_last(m, "accuracy", 3) for m in lines],
            "prompts": budget.ppo_prompts * scale, "iterations": budget.ppo_iterations // scale,
            "seconds": [run_seconds(d) for d in dirs]})
    return rows


def factors_table(rows: Sequence[dict]) -> str:
    """The markdown table of the PPO factors (rows of factor_rows), Table 3 of Xu et al. (2024)."""
    return report.markdown_table(FACTORS_HEADER, [
        (FACTOR_LABELS[r["factor"]], mean_std(r["accuracy"]), mean_std(r["rm_score"]),
         mean_std(r["rollout_accuracy"]), mean_std(r["start_accuracy"]),
         f"{r['prompts']} x {r['iterations']}", str(len(r["accuracy"])),
         f"{np.nanmean(r['seconds']):.0f}") for r in rows])


# ----------------------------------------------------------------------------- plots


def _bars(ax, labels: Sequence[str], values: Sequence[Sequence[float]], title: str) -> None:
    """Mean bars with a standard-deviation whisker (one dot a run)."""
    means = [np.nanmean(v) for v in values]
    spread = [np.nanstd(v, ddof=1) if len(v) > 1 else 0.0 for v in values]
    x = np.arange(len(labels))
    ax.bar(x, means, yerr=spread, capsize=4, color="tab:blue", alpha=0.7)
    for i, v in enumerate(values):
        ax.plot([i] * len(v), v, "k.", markersize=5)
    ax.set_xticks(x, labels, rotation=20, ha="right", fontsize=8)
    ax.set_title(title)
    ax.grid(alpha=0.3, axis="y")


def plot_factors(workdir: str, budget: Budget, rows: Sequence[dict]) -> str:
    """WORKDIR/factors.png: final held-out accuracy and RM score per factor (bars: mean, whisker:
    sd, dots: seeds), and held-out accuracy over sampled responses (mean over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4))
    labels = [FACTOR_LABELS[r["factor"]] for r in rows]
    _bars(axes[0], labels, [r["accuracy"] for r in rows], "held-out greedy accuracy")
    _bars(axes[1], labels, [r["rm_score"] for r in rows], "RM score of the rollouts (last 3)")
    for r in rows:
        per_iteration = r["prompts"] * budget.num_samples
        curves = [report.curve(report.read_metrics(os.path.join(workdir, ppo_name(r["factor"], i))),
                               "eval/accuracy") for i in range(budget.seeds)]
        steps = curves[0][0]
        if not all(np.array_equal(c[0], steps) for c in curves):
            continue
        axes[2].plot(steps * per_iteration, np.mean([c[1] for c in curves], axis=0), marker="o",
                     markersize=3, label=FACTOR_LABELS[r["factor"]])
    axes[2].set_title("held-out accuracy (mean over seeds)")
    axes[2].set_xlabel("responses sampled")
    axes[2].grid(alpha=0.3)
    axes[2].legend(fontsize=8)
    fig.suptitle("PPO factors on the synthetic task (cumulative, same number of samples)")
    fig.tight_layout()
    path = os.path.join(workdir, "factors.png")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_preference(workdir: str, rows: Sequence[dict]) -> str:
    """WORKDIR/preference.png: stacked mass on chosen / rejected / outside the data per policy,
    held-out accuracy per policy, and the DPO runs' chosen / rejected log-probs over updates."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(17, 4))
    labels = [POLICY_LABELS[r["policy"]] for r in rows]
    x = np.arange(len(rows))
    bottom = np.zeros(len(rows))
    for key, color in (("chosen", "tab:green"), ("rejected", "tab:red"), ("outside", "tab:gray")):
        values = np.array([np.mean(r[key]) for r in rows])
        axes[0].bar(x, values, bottom=bottom, color=color, label=f"mass {key}" if key == "outside"
                    else f"mass on {key} data")
        bottom += values
    axes[0].set_xticks(x, labels, rotation=20, ha="right", fontsize=8)
    axes[0].set_ylim(0, 1)
    axes[0].legend(fontsize=8)
    axes[0].set_title("probability mass on the preference prompts")
    _bars(axes[1], labels, [r["accuracy"] for r in rows], "held-out greedy accuracy")
    for name in ("dpo", "idpo"):
        lines = report.read_metrics(os.path.join(workdir, name))
        for key, style in (("logps/chosen", "-"), ("logps/rejected", "--")):
            steps, values = report.curve(lines, key)
            axes[2].plot(steps, values, style, marker="o", markersize=3,
                         label=f"{POLICY_LABELS[name]}: {key}")
    axes[2].set_title("DPO: sequence log-prob of the batch's pairs")
    axes[2].set_xlabel("update")
    axes[2].grid(alpha=0.3)
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    path = os.path.join(workdir, "preference.png")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- the study


def run(workdir: str, budget: Budget, seed: int = 0) -> dict:
    """Run (or continue) the whole study in WORKDIR; writes results.md / .json and the PNGs.
    Returns the results.json content."""
    os.makedirs(workdir, exist_ok=True)
    start = time.time()
    stage_list = stages(workdir, budget, seed)
    for stage in stage_list:
        run_stage(stage, workdir)
    cover = run_coverage(workdir, budget, stage_list)
    preference = preference_rows(workdir, budget, cover)
    factors = factor_rows(workdir, budget)
    data = data_summary(workdir)
    tables = (f"## 1. DPO vs PPO: accuracy and mass outside the preference data\n\n"
              f"{preference_table(preference)}\n\n"
              f"Mass: mean over {cover['sft']['prompts']} preference prompts of the probability of "
              f"generating one of the data's correct / incorrect responses, or another one. "
              f"Preference data: {data['num_responses']:.0f} responses of the SFT policy to "
              f"{data['num_problems']:.0f} train problems, {data['accuracy']:.1%} correct, "
              f"{data['pass_at_n']:.1%} of the problems with a correct one; the Bradley-Terry RM "
              f"ranks {data['rm_accuracy']:.1%} of its held-out pairs right.\n\n"
              f"## 2. PPO factors (cumulative; mean ± sd over {budget.seeds} seeds)\n\n"
              f"{factors_table(factors)}\n")
    settings = {**dataclasses.asdict(budget), "task": dict(budget.task)}
    with open(os.path.join(workdir, "results.md"), "w") as f:
        f.write(f"Budget: {settings}, seed {seed}\n\n{tables}")
    results = {"budget": settings, "seed": seed, "data": data,
               "preference": preference, "factors": factors}
    with open(os.path.join(workdir, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    plot_preference(workdir, preference)
    plot_factors(workdir, budget, factors)
    print(f"\n{tables}\nwall time {time.time() - start:.0f} s; tables, plots and runs in {workdir}")
    return results


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The command line (see the module docstring); returns the exit status."""
    args = cli.parse(cli.parser("python -m rlr.studies.dpo_vs_ppo", __doc__,
                                workdir="runs/dpo_vs_ppo"), argv)
    run(args.workdir, QUICK if args.quick else FULL, args.seed)
    return 0

if __name__ == "__main__":
    sys.exit(main())
