"""bench.vee: its report, the headline `python -m bench` reads back from it, its histogram quantiles and its scale."""

from __future__ import annotations

import dataclasses
import math
from datetime import date
from pathlib import Path

import pytest

from bench import vee
from bench.__main__ import BY_NAME, HEADLINES, Outcome, child_command, readme


def phase(rate: int, delays: list[float], drain: float, kept_up: bool) -> vee.Latency:
    histogram = {0.05: 0.0, 0.1: 10.0, 0.25: 500.0, 0.5: 980.0, 1.0: 1000.0, float("inf"): 1000.0}
    return vee.Latency(rate, delays, histogram, drain, kept_up, vee.Batches(400, len(delays), 80.0))


def figures(*, keeps_up: bool = True) -> vee.Figures:
    behind = phase(4_000, [i / 100 for i in range(100, 1100)], drain=9.5, kept_up=False)
    steady = phase(2_000, [i / 1000 for i in range(100, 1100)], drain=0.3, kept_up=keeps_up)
    return vee.Figures(
        total=200_064,
        produce_seconds=4.2,
        readside_seconds=[10.0, 9.0, 11.0],  # median 10 s: 20,006 readings/s
        vee_seconds=[25.0, 20.0, 30.0],  # median 25 s: 8,003 readings/s
        vee_batches=[vee.Batches(100, 200_064, 24.0)] * 3,
        checked=vee.Checked(intervals=200_064, held=0, days_published=2_084, duplicates=0.0),
        latencies=[behind, steady],
        days=[date(2025, 3, 3), date(2025, 3, 4), date(2025, 3, 5), date(2025, 3, 6)],
    )


def test_the_report_states_both_rates_the_ratio_and_the_latency() -> None:
    text = vee.report(vee.FULL, figures(), quick=False)

    assert "| 10.00 | 20,006 |" in text
    assert "| 25.00 | 8,003 |" in text
    assert "**Ratio VEE / read side: 0.40** (goal: at least 0.5; per round: 0.40, 0.45, 0.37)." in text
    # The phase VEE kept up with: 1,000 delays of 100..1099 ms, the nearest-rank p50 and p99, the maximum; the
    # histogram's buckets beside them.
    assert "| 600 ms | 1089 ms | 1099 ms | 2,000 readings/s | yes | 250 ms | 1000 ms |" in text
    assert "| 4,000 readings/s | 1,000 | 6000 ms | 10890 ms | 9.50 s | no |" in text
    assert "round 1: 100 batches of 2,001 records on average, 240 ms each to apply" in text
    assert "200,064 intervals stored for 200,064 readings, 0 held" in text
    assert "- scale: 1, the default" in text


def test_without_a_rate_vee_kept_up_with_the_figures_are_of_the_last_and_say_so() -> None:
    text = vee.report(vee.FULL, figures(keeps_up=False), quick=False)

    assert "| 600 ms | 1089 ms | 1099 ms | 2,000 readings/s | **no** |" in text
    assert HEADLINES["vee"](text, Path(".")).endswith(
        "p50 600 ms, p99 1089 ms at 2,000 readings/s, VEE falling behind even there"
    )


def test_the_headline_is_read_back_from_the_report() -> None:
    headline = HEADLINES["vee"](vee.report(vee.FULL, figures(), quick=False), Path("."))

    assert headline == (
        "validation at ratio 0.40 of the read side's projection (8,003 vs 20,006 readings/s, same readings, same "
        "run); reading -> validated interval p50 600 ms, p99 1089 ms at 2,000 readings/s"
    )


def test_a_report_without_figures_gives_an_empty_headline() -> None:
    assert HEADLINES["vee"]("# VEE benchmark\n\nnothing measured\n", Path(".")) == ""


def test_the_results_readme_links_the_report_with_its_headline(tmp_path: Path) -> None:
    (tmp_path / "vee.md").write_text(vee.report(vee.FULL, figures(), quick=False))
    outcomes = [Outcome(BY_NAME["vee"], 0, 300.0)]

    text = readme(tmp_path, outcomes, quick=False, total=300.0)

    [row] = [line for line in text.splitlines() if line.startswith("| vee |")]
    assert "validation at ratio 0.40" in row
    assert "[vee.md](vee.md)" in row
    assert row.endswith("| 300 s |")


def test_the_child_writes_its_report_where_the_aggregator_reads_it() -> None:
    command = child_command(BY_NAME["vee"], quick=False, out=Path("/tmp/results"), scale=1.0)

    assert command[1:3] == ["-m", "bench.vee"]
    assert command[-2:] == ["--out", "/tmp/results/vee.md"]


def test_histogram_quantiles_are_the_upper_bound_of_their_bucket() -> None:
    buckets = {0.1: 0.0, 0.25: 50.0, 0.5: 99.0, 1.0: 100.0, float("inf"): 100.0}

    assert vee.histogram_percentile(buckets, 0.5) == 0.25
    assert vee.histogram_percentile(buckets, 0.99) == 0.5
    assert vee.histogram_percentile(buckets, 1.0) == 1.0
    assert math.isnan(vee.histogram_percentile({0.1: 0.0, float("inf"): 0.0}, 0.5))  # nothing observed


def test_scale_multiplies_meterpoints_and_the_latency_phase_only() -> None:
    assert vee.FULL.scaled(1.0) == vee.FULL
    assert vee.FULL.readings == 200_064
    scaled = vee.FULL.scaled(3.0)
    changed = {
        field.name
        for field in dataclasses.fields(vee.FULL)
        if getattr(vee.FULL, field.name) != getattr(scaled, field.name)
    }

    assert changed == {"meterpoints", "latency_seconds", "scale"}
    assert scaled.rounds == vee.FULL.rounds
    assert scaled.readings == 3 * vee.FULL.readings
    assert scaled.latency_seconds == pytest.approx(60.0)


def test_the_readings_are_distinct_plausible_quarter_hours_of_registered_meterpoints() -> None:
    params = vee.QUICK
    records = vee.readings(params)
    registered = {record.key for record in vee.master_data(params)}

    assert len(records) == params.readings == 50 * 2 * 96
    assert {record.key for record in records} == registered
    assert len({bytes(record.value) for record in records}) == len(records)
    values = [vee.value_of(index, step) for index in range(params.meterpoints) for step in range(96)]
    assert min(values) > 0
    assert max(values) < 2
