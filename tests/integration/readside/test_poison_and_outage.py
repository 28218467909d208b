"""Poison records go to the DLQ and the rest is applied; a database outage pauses consumption and loses nothing."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer
from prometheus_client import CollectorRegistry

from libs.events import CustomerRegistered, KafkaRecord, to_record
from libs.events.examples import example_events
from services.readside.adapters.kafka import partitions_of
from services.readside.app import start_parts
from tests.integration.readside.support import (
    TcpProxy,
    Topics,
    applied_through,
    assert_totals_match,
    end_offsets,
    produce,
    reading_stream,
    records_of,
    settings_for,
    stored_offsets,
    wait_for,
)

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]


def through_proxy(dsn: str, port: int) -> str:
    parts = urlsplit(dsn)
    credentials = parts.netloc.rsplit("@", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{credentials}@127.0.0.1:{port}"))


async def read_dead_letters(bootstrap: str, topic: str, count: int) -> list[tuple[bytes | None, dict[str, bytes]]]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(await partitions_of([bootstrap], [topic]))
        found: list[tuple[bytes | None, dict[str, bytes]]] = []

        async def enough() -> bool:
            batch = await consumer.getmany(timeout_ms=100)
            found.extend((r.value, dict(r.headers)) for records in batch.values() for r in records)
            return len(found) >= count

        await wait_for(enough, 30, f"{count} dead letters on {topic}")
        return found
    finally:
        await consumer.stop()


async def test_poison_records_are_dead_lettered_and_an_outage_loses_nothing(
    pg_dsn: str, kafka_bootstrap: str, topics: Topics, control_schema: str, pg: asyncpg.Connection
) -> None:
    stream = reading_stream(seed=23, meterpoints=6, hours=24)
    records = records_of(stream.events, topics)
    third = len(records) // 3
    customer = next(e for e in example_events() if isinstance(e.data, CustomerRegistered))
    key = records[0].key
    poison = [
        KafkaRecord(topics.readings, key, b"{not json", [("content-type", b"application/cloudevents+json")]),
        # A valid event, but not one the readings topic carries.
        topics.route(to_record(customer))._replace(topic=topics.readings, key=customer.subject.encode()),
    ]
    proxy = TcpProxy("127.0.0.1", urlsplit(pg_dsn).port or 5432)
    port = await proxy.start()
    settings = settings_for(through_proxy(pg_dsn, port), kafka_bootstrap, control_schema, topics, max_records=200)
    registry = CollectorRegistry()
    readside = await start_parts(settings, registry=registry)
    try:
        # Part 1 with poison in the middle: the rest is applied, the poison is in the DLQ with its reasons.
        await produce(kafka_bootstrap, [*records[: third // 2], *poison, *records[third // 2 : third]])
        ends = await end_offsets(kafka_bootstrap, topics.all)
        await wait_for(lambda: applied_through(pg, control_schema, ends), 30, "part 1 applied")
        dead = await read_dead_letters(kafka_bootstrap, f"{topics.readings}.dlq", 2)
        assert sorted(value for value, _ in dead) == sorted(record.value for record in poison)
        reasons = {headers["dlq.reason"] for _, headers in dead}
        assert reasons == {b"invalid_json", b"unexpected_type"}
        assert all(headers["dlq.source.topic"] == topics.readings.encode() for _, headers in dead)
        applied_before_outage = await stored_offsets(pg, control_schema)

        # The database goes away for the consumer: it pauses, and its stored offsets stay where they were.
        await proxy.stop()
        await produce(kafka_bootstrap, records[third : 2 * third])
        lag = readside.lag

        async def paused() -> bool:
            return lag.paused

        await wait_for(paused, 30, "consumption paused")
        assert not (await readside.readiness.run()).ready
        await produce(kafka_bootstrap, records[2 * third :])
        consumer = readside.consumer
        assert consumer is not None
        batches = consumer.batches
        # The breaker lets one probe through per wait_in_open: after two more failed probes it is still paused.
        probes = _breaker_calls(registry)

        async def probed_twice() -> bool:
            return _breaker_calls(registry) >= probes + 2

        await wait_for(probed_twice, 15, "two failed probes of the database")
        assert lag.paused
        assert consumer.batches == batches
        assert await stored_offsets(pg, control_schema) == applied_before_outage

        # Back again: it resumes from the stored offsets; every record counted once, none skipped.
        await proxy.start()
        ends = await end_offsets(kafka_bootstrap, topics.all)
        await wait_for(lambda: applied_through(pg, control_schema, ends), 60, "everything applied after the outage")
        assert not readside.lag.paused
        await assert_totals_match(pg, control_schema, stream)
        assert (await readside.readiness.run()).ready
    finally:
        await readside.stop()
        await proxy.stop()


def _breaker_calls(registry: CollectorRegistry) -> float:
    """Calls the consumer's database breaker let through (batches and probes)."""
    return sum(
        sample.value
        for metric in registry.collect()
        for sample in metric.samples
        if sample.name == "gridhub_flow_admitted_total" and sample.labels.get("boundary") == "readside_postgres"
    )
