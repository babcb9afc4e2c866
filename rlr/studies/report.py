"""Reading finished runs back: curves and final values from WORKDIR/metrics.jsonl, the greedy
evaluation's replies from WORKDIR/samples.jsonl and a reward model's win rate between two runs,
a markdown table, and line plots (one line a run). The studies (rlr/studies/*) and the colabs
use these.
"""
from __future__ import annotations

import math
import os
from typing import Callable, Mapping, Optional, Sequence

import numpy as np

from rlr.train.metrics import METRICS_FILE, SAMPLES_FILE, read_jsonl


def read_metrics(run_dir: str) -> list[dict]:
    """The lines of RUN_DIR/metrics.jsonl (an error naming the file when there is none)."""
    path = os.path.join(run_dir, METRICS_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no metrics (is {run_dir} the workdir of a finished run?)")
    return read_jsonl(path)


def curve(lines: Sequence[Mapping], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of every line that logged `key` (None / NaN values dropped), by step."""
    points = sorted((line["step"], line[key]) for line in lines
                    if line.get(key) is not None and not _is_nan(line[key]))
    if not points:
        return np.zeros(0, np.int64), np.zeros(0)
    steps, values = zip(*points)
    return np.asarray(steps), np.asarray(values, np.float64)


def _is_nan(x) -> bool:
    return isinstance(x, float) and math.isnan(x)


def first_and_last(lines: Sequence[Mapping], key: str) -> tuple[float, float]:
    """(value at the first logged step, value at the last) of `key`; NaN when never logged."""
    _, values = curve(lines, key)
    return (float(values[0]), float(values[-1])) if len(values) else (math.nan, math.nan)


def mean_of_last(lines: Sequence[Mapping], key: str, count: int) -> float:
    """Mean of the last `count` logged values of `key` (a less noisy end value); NaN if none."""
    _, values = curve(lines, key)
    return float(np.mean(values[-count:])) if len(values) else math.nan


def last_samples(run_dir: str, keep: Callable[[Mapping], bool]) -> list[dict]:
    """The records of RUN_DIR/samples.jsonl that `keep` accepts, at the last step that wrote
    one, in the order written; [] when there are none. The greedy evaluation's replies:
    keep = lambda r: "rm_score" in r (with config.eval.rm_source) or "correct" in r (tasks with
    an answer checker; in the order of the held-out examples); PPO's rollouts:
    lambda r: not r.get("eval")."""
    path = os.path.join(run_dir, SAMPLES_FILE)
    records = [r for r in read_jsonl(path) if keep(r)] if os.path.isfile(path) else []
    last = max((r["step"] for r in records), default=None)
    return [r for r in records if r["step"] == last]


def rm_win_rate(a: Sequence[Mapping], b: Sequence[Mapping]) -> float:
    """The share of held-out prompts on which run a's greedy reply outscores run b's under one
    reward model, ties counting half: mean_i (1[s_a,i > s_b,i] + 1[s_a,i = s_b,i] / 2), over the
    last evaluations' records (last_samples) of two runs evaluated on the same prompts (Xu et
    al. 2024 report win rates judged by GPT-4; here the evaluation's reward model judges).
    Raises ValueError when the records do not pair up prompt by prompt."""
    if not a or len(a) != len(b):
        raise ValueError(f"rm_win_rate: {len(a)} and {len(b)} replies; expected the same, non-zero "
                         f"number (runs evaluated on the same held-out prompts)")
    for i, (x, y) in enumerate(zip(a, b)):
        if x["prompt"] != y["prompt"]:
            raise ValueError(f"rm_win_rate: reply {i} answers {x['prompt'][:60]!r} in one run and "
                             f"{y['prompt'][:60]!r} in the other; expected the same held-out prompts")
    wins = [float(x["rm_score"] > y["rm_score"]) + 0.5 * float(x["rm_score"] == y["rm_score"])
            for x, y in zip(a, b)]
    return float(np.mean(wins))


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]],
                   digits: int = 3) -> str:
    """A GitHub markdown table; floats printed with `digits` decimals, NaN as '-'."""
    def cell(v: object) -> str:
        if isinstance(v, float):
            return "-" if math.isnan(v) else f"{v:.{digits}f}"
        return str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def plot_curves(runs: Mapping[str, Sequence[Mapping]], panels: Sequence[tuple[str, str]],
                path: str, xlabel: str = "PPO iteration", title: Optional[str] = None) -> str:
    """One PNG with a panel per (metric key, panel title), one line per run (label -> metric
    lines). Returns `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    for ax, (key, panel_title) in zip(axes[0], panels):
        for label, lines in runs.items():
            steps, values = curve(lines, key)
            if len(steps):
                ax.plot(steps, values, marker="o", markersize=3, label=label)
        ax.set_title(panel_title)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
