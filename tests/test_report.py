"""rlr.studies.report: curves read from metrics lines, markdown tables, the plot file."""
import math
import os

import numpy as np
import pytest

from rlr.studies import report
from rlr.train.metrics import MetricsWriter

LINES = [{"step": 3, "a": 1.0}, {"step": 1, "a": 5.0, "b": None}, {"step": 2, "b": 2.0},
         {"step": 4, "a": float("nan")}, {"step": 5, "a": 3.0}]


def test_curve_sorts_by_step_and_drops_missing():
    steps, values = report.curve(LINES, "a")
    assert steps.tolist() == [1, 3, 5] and values.tolist() == [5.0, 1.0, 3.0]
    assert report.curve(LINES, "b")[1].tolist() == [2.0]
    assert report.curve(LINES, "c")[0].size == 0


def test_first_last_and_tail_mean():
    assert report.first_and_last(LINES, "a") == (5.0, 3.0)
    assert all(math.isnan(v) for v in report.first_and_last(LINES, "c"))
    assert report.mean_of_last(LINES, "a", 2) == 2.0


def test_markdown_table():
    text = report.markdown_table(("x", "y"), [("p", 0.12345), ("q", float("nan"))], digits=2)
    assert text.splitlines() == ["| x | y |", "|---|---|", "| p | 0.12 |", "| q | - |"]


def test_read_metrics_and_plot(tmp_path):
    writer = MetricsWriter(str(tmp_path))
    for step in range(1, 4):
        writer.write(step, {"eval/accuracy": 0.1 * step})
    writer.close()
    lines = report.read_metrics(str(tmp_path))
    assert np.allclose(report.curve(lines, "eval/accuracy")[1], [0.1, 0.2, 0.3])
    path = report.plot_curves({"run": lines}, [("eval/accuracy", "acc")], str(tmp_path / "c.png"))
    assert os.path.getsize(path) > 1000


def test_read_metrics_names_the_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="metrics.jsonl"):
        report.read_metrics(str(tmp_path))


def test_last_samples_and_rm_win_rate(tmp_path):
    writer = MetricsWriter(str(tmp_path / "a"))
    writer.write_samples(0, [{"prompt": "p", "response": "x", "rm_score": 9.0}])
    writer.write_samples(1, [{"prompt": "p", "response": "rollout"}])  # no score: not an evaluation
    writer.write_samples(2, [{"prompt": p, "response": "r", "rm_score": v}
                             for p, v in (("p", 1.0), ("q", 0.5), ("p", -1.0), ("s", 2.0))])
    writer.close()
    scored = lambda r: "rm_score" in r  # noqa: E731
    a = report.last_samples(str(tmp_path / "a"), scored)
    assert [(r["step"], r["rm_score"]) for r in a] == [(2, 1.0), (2, 0.5), (2, -1.0), (2, 2.0)]
    assert report.last_samples(str(tmp_path / "a"), lambda r: "rm_score" not in r)[0]["response"] == "rollout"
    assert report.last_samples(str(tmp_path / "none"), scored) == []
    b = [{"prompt": p, "rm_score": v} for p, v in (("p", 0.0), ("q", 0.5), ("p", 3.0), ("s", 1.0))]
    assert report.rm_win_rate(a, b) == (1 + 0.5 + 0 + 1) / 4  # a wins, tie, b wins, a wins
    assert report.rm_win_rate(b, a) == 1 - report.rm_win_rate(a, b)
    with pytest.raises(ValueError, match="reply 1 answers 'q' in one run and 'x'"):
        report.rm_win_rate(a, b[:1] + [{"prompt": "x", "rm_score": 0.0}] + b[2:])
    with pytest.raises(ValueError, match="4 and 3 replies"):
        report.rm_win_rate(a, b[:3])
