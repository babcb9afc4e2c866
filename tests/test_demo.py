"""The main job end to end: `python -m rlr.demo --quick` (SFT -> label -> ORM / PRM -> six PPO
runs -> table and plots), then the colab that reads its folder. Checks the table's structure
and that every reward variant really trained; the study's finding itself is not asserted."""
import json
import math
import os

import numpy as np
import pytest

import notebooks

from rlr import demo
from rlr.studies import report, reward_hacking

COLAB = os.path.join(os.path.dirname(os.path.dirname(__file__)), "colabs", "reward_hacking.ipynb")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory, optimized_compiles):
    workdir = str(tmp_path_factory.mktemp("demo"))
    assert demo.main(["--workdir", workdir, "--quick"]) == 0
    return workdir


def test_table_has_a_row_per_reward(quick_run):
    with open(os.path.join(quick_run, "results.md")) as f:
        lines = [line for line in f.read().splitlines() if line.startswith("|")]
    assert lines[0] == "| " + " | ".join(reward_hacking.HEADER) + " |"
    body = lines[2:]
    assert [row.split(" | ")[0].lstrip("| ") for row in body] == [
        reward_hacking.LABELS[v] for v in reward_hacking.VARIANTS]
    with open(os.path.join(quick_run, "results.json")) as f:
        rows = json.load(f)["rows"]
    for row in rows:
        for key in ("accuracy", "num_steps", "repetition_rate", "response_length"):
            assert math.isfinite(row[key]), (row["variant"], key)
        assert 0.0 <= row["accuracy"] <= 1.0 and 0.0 <= row["repetition_rate"] <= 1.0
        assert row["num_steps"] >= 0 and row["response_length"] >= 0  # a collapsed policy says ""
    assert os.path.getsize(os.path.join(quick_run, "curves.png")) > 10_000


def test_every_variant_trained(quick_run):
    """The policy left its reference (KL > 0 at the last iteration), its parameters got
    gradients, and the rewards it was trained on are the ones the variant names."""
    for variant in reward_hacking.VARIANTS:
        lines = report.read_metrics(os.path.join(quick_run, f"ppo_{variant}"))
        _, kl = report.curve(lines, "kl")
        _, grad = report.curve(lines, "policy/grad_norm")
        assert kl[-1] > 0 and np.all(grad > 0), variant
        _, prm = report.curve(lines, "reward/prm")
        uses_prm = variant in reward_hacking.PRM_VARIANTS
        assert (len(prm) > 0 and np.any(prm != 0)) == uses_prm, variant
        _, totals = report.curve(lines, "reward/total")
        assert len(set(np.round(totals, 6))) > 1, f"{variant}: reward/total never moved"


def test_rerun_skips_finished_stages(quick_run, capsys):
    before = os.path.getmtime(os.path.join(quick_run, "ppo_success", "metrics.jsonl"))
    assert demo.main(["--workdir", quick_run, "--quick", "--variants", "success"]) == 0
    assert "== sft" not in capsys.readouterr().out
    assert os.path.getmtime(os.path.join(quick_run, "ppo_success", "metrics.jsonl")) == before


def test_colab_runs_on_the_quick_run(quick_run):
    outputs = notebooks.execute(COLAB, quick_run)
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs)
    # Its hacked / clean samples are the last rollouts of each run, not the evaluation's replies.
    text = "".join(o.get("text", "") for o in outputs)
    for v in reward_hacking.VARIANTS:
        with open(os.path.join(quick_run, f"ppo_{v}", "samples.jsonl")) as f:
            rollouts = [r for r in map(json.loads, f) if not r.get("eval")]
        last = [r for r in rollouts if r["step"] == rollouts[-1]["step"]]
        assert f"{reward_hacking.LABELS[v]}: " in text
        assert f" of {len(last)} samples repeat a step" in text.split(f"{reward_hacking.LABELS[v]}: ")[1].split("\n")[0]
