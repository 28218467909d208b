"""`python -m bench` hands its scale to every benchmark and states it in the results' README."""

from __future__ import annotations

from pathlib import Path

from bench.__main__ import BENCHMARKS, BY_NAME, Outcome, child_command, readme


def test_every_child_gets_the_scale_on_its_command_line() -> None:
    for benchmark in BENCHMARKS:
        command = child_command(benchmark, quick=False, out=None, scale=2.5)

        assert command[1:3] == ["-m", f"bench.{benchmark.name}"]
        assert command[command.index("--scale") + 1] == "2.5"
        assert "--quick" not in command


def test_a_quick_child_gets_no_scale() -> None:
    command = child_command(BY_NAME["demo"], quick=True, out=Path("/tmp/x"), scale=3.0)

    assert "--quick" in command
    assert "--scale" not in command
    assert command[-2:] == ["--out", "/tmp/x"]


def test_the_scale_survives_the_command_line_exactly() -> None:
    command = child_command(BY_NAME["pipeline"], quick=False, out=None, scale=1 / 3)

    assert float(command[command.index("--scale") + 1]) == 1 / 3


def test_the_readme_mentions_a_scale_other_than_one(tmp_path: Path) -> None:
    outcomes = [Outcome(benchmark, None) for benchmark in BENCHMARKS]

    scaled = readme(tmp_path, outcomes, quick=False, total=12.0, scale=3.0)
    default = readme(tmp_path, outcomes, quick=False, total=12.0, scale=1.0)
    quick = readme(tmp_path, outcomes, quick=True, total=12.0, scale=1.0)

    assert "`python -m bench --scale 3`" in scaled
    assert "**Scale 3**" in scaled
    assert "scale" not in default.lower().replace("at scale 1", "")
    assert "`python -m bench --quick`" in quick
    assert "**Scale" not in quick
