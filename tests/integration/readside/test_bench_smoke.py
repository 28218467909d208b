"""`python -m bench.readside --quick` runs end to end against the stack and reports its figures."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from stack.config import REPO

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]


def test_quick_benchmark_reports_throughput_ratio_and_latency(stack: object, tmp_path: Path) -> None:
    report = tmp_path / "readside.md"
    result = subprocess.run(
        [sys.executable, "-m", "bench.readside", "--quick", "--out", str(report)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    text = report.read_text()
    assert "quick smoke run" in text
    assert "Ratio read side / baseline:" in text
    assert "| p50 | p99 | max |" in text
