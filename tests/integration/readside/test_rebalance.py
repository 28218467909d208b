"""Two read sides in one group: partitions move between them mid-stream and every reading still counts once."""

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


async def test_partitions_moving_between_consumers_change_nothing(
    pg_dsn: str, kafka_bootstrap: str, topics: Topics, control_schema: str, pg: asyncpg.Connection
) -> None:
    stream = reading_stream(seed=53, meterpoints=30)
    records = records_of(stream.events, topics)
    thirds = [records[: len(records) // 3], records[len(records) // 3 : 2 * len(records) // 3]]
    thirds.append(records[2 * len(records) // 3 :])
    settings = settings_for(pg_dsn, kafka_bootstrap, control_schema, topics, max_records=100)

    first = await start_parts(settings, registry=CollectorRegistry())
    second = None
    try:
        await produce(kafka_bootstrap, thirds[0])
        ends = await end_offsets(kafka_bootstrap, topics.all)
        await wait_for(lambda: applied_through(pg, control_schema, ends), 60, "the first third applied")
        second = await start_parts(settings, registry=CollectorRegistry())  # joins: a rebalance
        lag = second.lag

        async def second_owns_partitions() -> bool:
            return lag.version is not None and len(lag.partitions()) > 0

        await wait_for(second_owns_partitions, 60, "the second consumer taking partitions")
        await produce(kafka_bootstrap, thirds[1])  # shared by both
        ends = await end_offsets(kafka_bootstrap, topics.all)
        await wait_for(lambda: applied_through(pg, control_schema, ends), 60, "the second third applied")
        assert second.consumer is not None
        assert second.consumer.batches > 0
        assert first.consumer is not None
        assert first.consumer.batches > 0
        await first.stop()  # leaves mid-stream: its partitions move to the second one
        await produce(kafka_bootstrap, thirds[2])
        ends = await end_offsets(kafka_bootstrap, topics.all)
        await wait_for(lambda: applied_through(pg, control_schema, ends), 60, "everything applied")
    finally:
        if first.task is not None and not first.task.done():
            await first.stop()
        if second is not None:
            await second.stop()
    await assert_totals_match(pg, control_schema, stream)
