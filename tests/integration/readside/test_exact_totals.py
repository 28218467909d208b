"""Readings with duplicates, out-of-order arrivals and corrections give exactly the reference totals."""

from __future__ import annotations

import asyncpg
import pytest
from prometheus_client import CollectorRegistry

from services.readside.app import start_parts
from tests.integration.readside.support import (
    Topics,
    applied_through,
    assert_totals_match,
    end_offsets,
    produce,
    reading_stream,
    records_of,
    settings_for,
    wait_for,
)

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]


async def test_hourly_and_daily_totals_equal_an_independent_reference(
    pg_dsn: str, kafka_bootstrap: str, topics: Topics, control_schema: str, pg: asyncpg.Connection
) -> None:
    stream = reading_stream(seed=7)
    assert stream.duplicates > 0
    assert stream.corrections > 0
    settings = settings_for(pg_dsn, kafka_bootstrap, control_schema, topics, max_records=700)
    readside = await start_parts(settings, registry=CollectorRegistry())
    try:
        # Half before the consumer catches up, half after: corrections then also replace rows of earlier batches.
        records = records_of(stream.events, topics)
        half = len(records) // 2
        await produce(kafka_bootstrap, records[:half])
        ends = await end_offsets(kafka_bootstrap, topics.all)
        await wait_for(lambda: applied_through(pg, control_schema, ends), 60, "the first half applied")
        await produce(kafka_bootstrap, records[half:])
        ends = await end_offsets(kafka_bootstrap, topics.all)
        await wait_for(lambda: applied_through(pg, control_schema, ends), 60, "everything applied")
        await assert_totals_match(pg, control_schema, stream)
        assert readside.consumer is not None
        assert readside.consumer.batches > 2
    finally:
        await readside.stop()
