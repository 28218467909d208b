"""What the scale multiplies in each benchmark: durations and volumes; rates, sizes and rounds stay."""

from __future__ import annotations

import dataclasses
from types import ModuleType

import pytest

from bench import collection, demo, domino, flowcontrol, pipeline, readside

MODULES = [flowcontrol, readside, collection, demo, domino, pipeline]


@pytest.mark.parametrize("module", MODULES, ids=lambda module: module.__name__)
def test_scale_one_is_the_default_run(module: ModuleType) -> None:
    full = module.FULL

    assert full.scaled(1.0) == full
    assert full.scale == 1.0


@pytest.mark.parametrize("module", MODULES, ids=lambda module: module.__name__)
def test_only_the_named_fields_change(module: ModuleType) -> None:
    full = module.FULL
    scaled = full.scaled(3.0)
    changed = {
        field.name for field in dataclasses.fields(full) if getattr(full, field.name) != getattr(scaled, field.name)
    }

    expected = {
        "bench.flowcontrol": {"policy_calls", "asgi_requests", "http_requests", "http_seconds"},
        "bench.readside": {"readings", "meterpoints", "latency_seconds"},
        "bench.collection": {"rest_readings", "mqtt_messages", "overload_seconds"},
        "bench.demo": {"seconds"},
        "bench.domino": {"healthy", "incident", "recovery", "settle"},
        "bench.pipeline": {"capacity_seconds", "latency_seconds", "overload_seconds"},
    }[module.__name__]
    assert changed == expected | {"scale"}
    assert scaled.scale == 3.0
    for name in expected:
        assert getattr(scaled, name) == pytest.approx(3 * getattr(full, name)), name


def test_collection_sends_whole_batches_at_any_scale() -> None:
    params = collection.FULL.scaled(0.0123)

    assert params.rest_readings % params.batch == 0
    assert params.rest_readings >= params.batch


def test_readside_keeps_a_day_of_quarter_hours_per_meterpoint() -> None:
    small, large = readside.FULL.scaled(0.2), readside.FULL.scaled(5)

    assert (small.readings, small.meterpoints) == (40_000, 400)
    assert (large.readings, large.meterpoints) == (1_000_000, 10_000)
    assert large.latency_rate == readside.FULL.latency_rate


def test_domino_never_settles_for_less_than_the_default() -> None:
    assert domino.FULL.scaled(0.2).settle == domino.FULL.settle
    assert domino.FULL.scaled(0.2).incident == pytest.approx(3.0)


def test_the_demo_sizes_its_id_tables_for_the_longer_run() -> None:
    assert demo.FULL.scaled(4).table_size > 3.9 * demo.FULL.table_size
