"""The benchmarks' scale: `--scale FACTOR`, else `GRIDHUB_BENCH_SCALE`, else 1; a finite number above 0 or refused."""

from __future__ import annotations

import argparse

import pytest

from bench.common import SCALE_ENV, add_scale_option, scale_line, scale_of, scaled_count


def parser() -> argparse.ArgumentParser:
    built = argparse.ArgumentParser(prog="python -m bench.example")
    built.add_argument("--quick", action="store_true")
    add_scale_option(built, "readings")
    return built


def resolve(argv: list[str], environ: dict[str, str]) -> float:
    built = parser()
    return scale_of(built, built.parse_args(argv), environ)


def test_the_option_wins_over_the_environment() -> None:
    assert resolve(["--scale", "2.5"], {SCALE_ENV: "7"}) == 2.5


def test_the_environment_counts_when_the_option_is_absent() -> None:
    assert resolve([], {SCALE_ENV: " 0.2 "}) == 0.2


@pytest.mark.parametrize("environ", [{}, {SCALE_ENV: ""}, {SCALE_ENV: "  "}])
def test_without_option_or_environment_the_scale_is_one(environ: dict[str, str]) -> None:
    assert resolve([], environ) == 1.0


def test_the_real_environment_is_read_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SCALE_ENV, "3")
    built = parser()

    assert scale_of(built, built.parse_args([])) == 3.0


@pytest.mark.parametrize("value", ["0", "-1", "abc", "", "nan", "inf", "-inf", "1e999"])
def test_an_invalid_option_is_refused_with_the_reason(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        resolve([f"--scale={value}"], {SCALE_ENV: "2"})

    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "argument --scale: scale must be a" in error
    assert f"above 0, not {value!r}" in error


@pytest.mark.parametrize("value", ["0", "-3", "two", "nan"])
def test_an_invalid_environment_value_is_refused_naming_the_variable(
    value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        resolve([], {SCALE_ENV: value})

    assert exit_info.value.code == 2
    assert f"error: {SCALE_ENV}: scale must be a" in capsys.readouterr().err


def test_an_invalid_environment_value_does_not_matter_when_the_option_is_given() -> None:
    assert resolve(["--scale", "4"], {SCALE_ENV: "nonsense"}) == 4.0


def test_quick_wins_over_the_scale_and_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    assert resolve(["--quick", "--scale", "5"], {}) == 1.0
    assert resolve(["--quick"], {SCALE_ENV: "5"}) == 1.0
    assert capsys.readouterr().err.count("--quick ignores the scale (5)") == 2


def test_quick_still_refuses_an_invalid_scale() -> None:
    with pytest.raises(SystemExit):
        resolve(["--quick"], {SCALE_ENV: "-1"})


def test_scaled_counts_round_to_whole_multiples_and_never_reach_zero() -> None:
    assert scaled_count(200_000, 0.2) == 40_000
    assert scaled_count(200_000, 0.0123, multiple=1000) == 2000
    assert scaled_count(6000, 1e-9) == 1
    assert scaled_count(200_000, 1e-9, multiple=1000) == 1000


def test_the_report_line_states_the_scale() -> None:
    assert scale_line(1.0, False, "readings") == "- scale: 1, the default (`--scale` multiplies readings)"
    assert scale_line(2.5, False, "readings").startswith("- scale: 2.5 (readings x2.5 of the default run")
    assert scale_line(1.0, True, "readings") == "- scale: does not apply to --quick"
