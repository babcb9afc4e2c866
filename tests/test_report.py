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
