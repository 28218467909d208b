"""Kafka consumers: meter alarms open inspections, customer events keep the local replica, meterpoint master data
says which grid company (tenant) owns each meterpoint and so its orders.

Both run on plain aiokafka under `libs.flowcontrol.consumer.KafkaDelivery` (one consumer and one group per topic,
each with its own boundary): a record is committed after its database transaction, an invalid one
(`InvalidEvent`) goes to ``<topic>.dlq`` at once, a failing one is retried with backoff and then dead-lettered,
and a refused database (`DatabaseUnavailable`, the ``workorders_postgres`` breaker open) pauses the partition and
redelivers the record later: never skipped. Delivery is at least once; the handlers are idempotent (an alarm's id
is recorded once in the alarm ledger, replica rows and meterpoint owners carry versions or natural keys).

Kafka being down at start-up only delays the consumers: `run_consumers` retries until the service stops.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from aiokafka import AIOKafkaConsumer

from libs.events import InvalidEvent, InvalidReason, MeterAlarmRaised, from_record
from libs.flowcontrol.consumer import ConsumedRecord, KafkaDelivery
from libs.flowcontrol.observer import Observer
from libs.flowcontrol.policy import Boundary
from libs.platform.kafka import start_producer_retrying
from services.workorders import handlers
from services.workorders.handlers import Context
from services.workorders.settings import WorkordersSettings

logger = logging.getLogger(__name__)

RecordHandler = Callable[[ConsumedRecord], Awaitable[None]]
_MAX_BACKOFF = 10.0


@dataclass(frozen=True)
class Subscription:
    """One consumed topic: its group, its boundary (delivery policy, bulkhead) and its handler."""

    topic: str
    group_id: str
    boundary: Boundary
    handle: RecordHandler


def meter_event_handler(ctx: Context, settings: WorkordersSettings) -> RecordHandler:
    """meter.events.v1: an alarm that calls for it opens an inspect_meter order or joins the open one."""
    max_age = timedelta(hours=settings.max_alarm_age_hours)
    limit = handlers.AlarmLimit(
        max_orders=settings.max_alarm_orders_per_meterpoint,
        window=timedelta(hours=settings.alarm_order_window_hours),
    )

    async def handle(record: ConsumedRecord) -> None:
        event = from_record(record.value, record.headers, record.key, MeterAlarmRaised)
        await handlers.on_meter_alarm(
            ctx, event.data, inspection_alarms=settings.inspection_alarms, max_age=max_age, limit=limit
        )

    return handle


def customer_event_handler(ctx: Context) -> RecordHandler:
    """customers.v1: customers and meterpoint links into the replica."""

    async def handle(record: ConsumedRecord) -> None:
        event = from_record(record.value, record.headers, record.key)
        if not isinstance(event.data, handlers.CUSTOMER_EVENTS):
            detail = f"{event.type} is not carried on customers.v1"
            raise InvalidEvent(InvalidReason.UNEXPECTED_TYPE, detail, event.type)
        await handlers.on_customer_event(ctx, event)

    return handle


def meterpoint_event_handler(ctx: Context) -> RecordHandler:
    """meterpoints.v1: who owns each meterpoint (the tenant of its orders)."""

    async def handle(record: ConsumedRecord) -> None:
        event = from_record(record.value, record.headers, record.key)
        if not isinstance(event.data, handlers.METERPOINT_EVENTS):
            detail = f"{event.type} is not carried on meterpoints.v1"
            raise InvalidEvent(InvalidReason.UNEXPECTED_TYPE, detail, event.type)
        await handlers.on_meterpoint_event(ctx, event)

    return handle


def subscriptions(settings: WorkordersSettings, ctx: Context, boundaries: dict[str, Boundary]) -> list[Subscription]:
    """The three consumers of the service."""
    prefix = settings.consumer_group_prefix
    return [
        Subscription(
            settings.meter_events_topic,
            f"{prefix}.meter-events",
            boundaries["workorders_meter_events_consumer"],
            meter_event_handler(ctx, settings),
        ),
        Subscription(
            settings.customers_topic,
            f"{prefix}.customers",
            boundaries["workorders_customers_consumer"],
            customer_event_handler(ctx),
        ),
        Subscription(
            settings.meterpoints_topic,
            f"{prefix}.meterpoints",
            boundaries["workorders_meterpoints_consumer"],
            meterpoint_event_handler(ctx),
        ),
    ]


async def run_consumers(
    subs: Sequence[Subscription],
    *,
    bootstrap_servers: str,
    client_id: str,
    stop: asyncio.Event,
    max_records: int,
    observer_of: Callable[[str], Observer] | None = None,
    consumer_options: dict[str, Any] | None = None,
) -> None:
    """Consume every subscription until ``stop`` is set; restart all of them after a failure."""
    backoff = 1.0
    while not stop.is_set():
        try:
            await _consume(subs, bootstrap_servers, client_id, stop, max_records, observer_of, consumer_options or {})
            return
        except Exception:
            logger.exception("consumers failed; restarting them in %.1fs", backoff)
            try:
                await asyncio.wait_for(stop.wait(), timeout=backoff)
            except TimeoutError:
                backoff = min(backoff * 2, _MAX_BACKOFF)


async def _consume(
    subs: Sequence[Subscription],
    bootstrap_servers: str,
    client_id: str,
    stop: asyncio.Event,
    max_records: int,
    observer_of: Callable[[str], Observer] | None,
    consumer_options: dict[str, Any],
) -> None:
    producer = await start_producer_retrying(bootstrap_servers, f"{client_id}-dlq", stop)
    if producer is None:
        return
    async with AsyncExitStack() as stack:
        # Exits run last-in first-out: consumers stop, then the deliveries, then the dead-letter producer.
        stack.push_async_callback(producer.stop)
        tasks: list[asyncio.Task[None]] = []
        for sub in subs:
            observer = observer_of(sub.boundary.name) if observer_of is not None else None
            delivery = KafkaDelivery.from_boundary(sub.boundary, producer, observer=observer)
            stack.push_async_callback(delivery.aclose)
            consumer = AIOKafkaConsumer(
                sub.topic,
                bootstrap_servers=bootstrap_servers,
                client_id=f"{client_id}-{sub.group_id}",
                group_id=sub.group_id,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                max_poll_interval_ms=int(delivery.max_poll_interval * 1000),
                **consumer_options,
            )
            await consumer.start()
            stack.push_async_callback(consumer.stop)
            run = delivery.run(consumer, sub.handle, max_records=max_records)
            tasks.append(asyncio.create_task(run, name=f"consume-{sub.topic}"))
        stopped = asyncio.create_task(stop.wait())
        try:
            done, _ = await asyncio.wait([*tasks, stopped], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (*tasks, stopped):
                task.cancel()
            await asyncio.gather(*tasks, stopped, return_exceptions=True)
        for task in done:
            if task is not stopped and not task.cancelled() and task.exception() is not None:
                raise RuntimeError(f"{task.get_name()} stopped") from task.exception()
