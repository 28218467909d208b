"""The collection benchmark runs end to end against the stack (``--quick``: a smoke test, not a measurement)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.kafka, pytest.mark.mqtt, pytest.mark.postgres]

REPO = Path(__file__).resolve().parents[3]


def test_quick_benchmark_reports_rates_ratios_and_memory(tmp_path: Path) -> None:
    out = tmp_path / "collection.md"
    result = subprocess.run(
        [sys.executable, "-W", "error", "-m", "bench.collection", "--quick", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    report = out.read_text()
    assert "| REST `POST /v1/readings`" in report
    assert "| MQTT, messages of" in report
    assert "ratio service / raw" in report
    assert "| peak during the overload |" in report
    assert "**fairness: beside / alone**" in report
    assert "unaccounted 0." in report, "every reading the broker acknowledged to the noisy device is counted"
    assert "Warning" not in result.stderr
