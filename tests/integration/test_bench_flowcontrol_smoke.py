"""The flow-control benchmark runs end to end (`--quick`: a smoke test, not a measurement)."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_quick_benchmark_exits_cleanly_and_prints_ratios() -> None:
    result = subprocess.run(
        [sys.executable, "-W", "error", "-m", "bench.flowcontrol", "--quick"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "ratio guarded / plain" in result.stdout
    assert "quota.try_acquire" in result.stdout
    assert "Warning" not in result.stderr
