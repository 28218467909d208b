"""The back-pressure demo, the domino and pipeline benchmarks and the aggregator run end to end (`--quick`: smoke
tests, not measurements), so they do not rot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from stack.config import StackConfig

REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]


def run_module(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-W", "error", "-m", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def test_demo_through_the_aggregator_plots_and_reconciles_every_scenario(stack: StackConfig, tmp_path: Path) -> None:
    result = run_module("bench", "--quick", "--only", "demo", "--out", str(tmp_path))

    assert result.returncode == 0, result.stderr[-4000:]
    assert "Warning" not in result.stderr
    for name in ("README.md", "demo.md", "demo.png", "demo-a.png", "demo-b.png", "demo-c.png", "demo-d.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    figures = json.loads((tmp_path / "demo.json").read_text())
    assert set(figures) == {"a", "b", "c", "d"}
    assert all(scenario["accepted"] > 0 for scenario in figures.values())
    assert figures["a"]["lost"] == figures["b"]["lost"] == figures["d"]["lost"] == 0
    assert figures["c"]["lost"] == figures["c"]["slow_dropped"]  # whatever drop_new dropped, and nothing else
    report = (tmp_path / "demo.md").read_text()
    assert "NOT reconciled" not in report
    assert "[demo.png](demo.png)" in (tmp_path / "README.md").read_text()


def test_domino_compares_flow_control_off_and_on(stack: StackConfig, tmp_path: Path) -> None:
    result = run_module("bench.domino", "--quick", "--out", str(tmp_path))

    assert result.returncode == 0, result.stderr[-4000:]
    assert "Warning" not in result.stderr
    assert (tmp_path / "domino.png").stat().st_size > 0
    figures = json.loads((tmp_path / "domino.json").read_text())
    assert set(figures) == {"off", "on"}
    assert "| on |" in (tmp_path / "domino.md").read_text()


def test_pipeline_overload_loses_no_acknowledged_reading(stack: StackConfig, tmp_path: Path) -> None:
    result = run_module("bench.pipeline", "--quick", "--out", str(tmp_path))

    assert result.returncode == 0, result.stderr[-4000:]
    assert "Warning" not in result.stderr
    assert (tmp_path / "pipeline.png").stat().st_size > 0
    figures = json.loads((tmp_path / "pipeline.json").read_text())
    assert figures["sustainable"] > 0
    assert [row["share"] for row in figures["latency"]] == [0.25, 0.5, 0.8]
    assert figures["overload"]["acked_total"] > 0
    assert figures["overload"]["lost"] == 0
