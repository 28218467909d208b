"""`python -m bench.against`: the report's ratios, and the settings an exported revision gets."""

from __future__ import annotations

from pathlib import Path

from bench.against import PER_CLIENT, Comparison, Rates, report, settings_of
from bench.collection import QUICK


def test_the_report_gives_each_side_against_the_baseline_and_the_two_against_each_other() -> None:
    comparison = Comparison(
        revision="main~3",
        commit="abc1234",
        head="def5678",
        params=QUICK,
        baseline_rest=[100_000.0],
        baseline_mqtt=[80_000.0],
        now=Rates(rest=[30_000.0], mqtt=[8_000.0]),
        then=Rates(rest=[40_000.0], mqtt=[10_000.0]),
    )

    text = report(comparison, "python -m bench.against main~3")

    assert "# Collection ingest: def5678 against abc1234 (main~3)" in text
    assert "| REST | 100.0k/s | 30.0k/s | 40.0k/s | 0.30 | 0.40 | **0.75** | 0.75 |" in text
    assert "| MQTT | 80.0k/s | 8.0k/s | 10.0k/s | 0.10 | 0.12 | **0.80** | 0.80 |" in text


def test_a_revision_without_the_per_client_cap_does_not_get_its_setting(tmp_path: Path) -> None:
    settings = tmp_path / "services" / "collection" / "settings.py"
    settings.parent.mkdir(parents=True)
    settings.write_text("class Boundaries: quota = 1\n")
    assert settings_of(tmp_path, "s1") == {"COLLECTION_POSTGRES_SCHEMA": "s1", PER_CLIENT: None}

    settings.write_text("class Boundaries: per_client = 1\n")
    assert settings_of(tmp_path, "s1") == {"COLLECTION_POSTGRES_SCHEMA": "s1"}
