"""The consumer of ``meter.commands.v1``: each ``GapFillRequested`` goes to its meterpoint's source.

Runs on the library's one consumer (`KafkaDelivery` over aiokafka, ADR 0004): an offset is committed only after the
request is where it goes (the broker's PUBACK of a device command, the row of a head-end request, the renamed file
of an FTP partner). A dependency that is away (`Refused`: the MQTT breaker open, the broker not connected) pauses
the partition; a request outside its grid company's scope is rejected (dead-lettered with the reason); other event
types on the topic are passed over.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer

from libs.events import from_record
from libs.events.meterpoints import SourceKind
from libs.events.records import HEADER_CE_TYPE
from libs.events.series import GapFillRequested
from libs.flowcontrol.consumer import ConsumedRecord, KafkaDelivery
from libs.flowcontrol.delivery import Reject
from libs.flowcontrol.policy import Boundary
from libs.platform.kafka import start_producer_retrying
from services.collection.adapters.devicecommands import DeviceCommands
from services.collection.adapters.rereads import OutboxWriter, RereadStore
from services.collection.gapfill import check_route
from services.collection.metrics import CollectionMetrics
from services.collection.scope import ScopeView

logger = logging.getLogger(__name__)

_MAX_BACKOFF = 10.0


@dataclass
class GapFillRoutes:
    """Where requests go; a route left None refuses its requests (that door is off in this replica)."""

    scope: ScopeView | None
    metrics: CollectionMetrics
    devices: DeviceCommands | None
    head_ends: RereadStore | None
    partners: OutboxWriter | None
    max_open_per_client: int

    async def route(self, request: GapFillRequested) -> None:
        """Deliver one request to its source (see the module doc); raise `Reject` when it never can be."""
        kind = request.data_source.kind
        entry = self.scope.get(request.meterpoint_id) if self.scope is not None else None
        refusal = check_route(request, entry, enforced=self.scope is not None)
        if refusal is not None:
            self.metrics.gapfill_requests.labels(kind.value, "refused").inc()
            raise Reject(f"{refusal.reason}: {refusal.detail}")
        if kind is SourceKind.DEVICE and self.devices is not None:
            await self.devices.send(request)
        elif kind is SourceKind.HEAD_END and self.head_ends is not None:
            dropped = await self.head_ends.add(request, max_open=self.max_open_per_client)
            if dropped:
                self.metrics.gapfill_requests.labels(kind.value, "dropped").inc(dropped)
        elif kind is SourceKind.FTP_PARTNER and self.partners is not None:
            partners = self.partners
            try:
                await asyncio.to_thread(partners.write, request)
            except ValueError as error:  # the source id is no FTP login
                self.metrics.gapfill_requests.labels(kind.value, "refused").inc()
                raise Reject(f"not_in_scope: {error}") from None
        else:
            self.metrics.gapfill_requests.labels(kind.value, "refused").inc()
            raise Reject(f"route_disabled: {kind.value} is not served by this replica")
        self.metrics.gapfill_requests.labels(kind.value, "routed").inc()


def _is_gap_fill(record: ConsumedRecord) -> bool:
    for name, value in record.headers:
        if name == HEADER_CE_TYPE:
            return bytes(value) == GapFillRequested.event_type.encode()
    return True  # no type header: let the parser decide (and reject what it cannot read)


def gapfill_handler(routes: GapFillRoutes) -> Callable[[ConsumedRecord], Any]:
    """The per-record handler: parse (a malformed record is rejected), route."""

    async def handle(record: ConsumedRecord) -> None:
        if not _is_gap_fill(record):
            return  # another command on the topic: not collection's
        event = from_record(record.value, record.headers, record.key, GapFillRequested)
        await routes.route(event.data)

    return handle


async def run_gapfill_consumer(
    routes: GapFillRoutes,
    boundary: Boundary,
    *,
    bootstrap_servers: str,
    topic: str,
    group_id: str,
    client_id: str,
    stop: asyncio.Event,
) -> None:
    """Consume ``topic`` until ``stop`` is set; start again after a failure (with a growing pause)."""
    backoff = 1.0
    handle = gapfill_handler(routes)
    while not stop.is_set():
        producer = await start_producer_retrying(bootstrap_servers, f"{client_id}-gapfill-dlq", stop)
        if producer is None:
            return
        delivery = KafkaDelivery.from_boundary(boundary, producer)
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=bootstrap_servers,
            client_id=f"{client_id}-gapfill",
            group_id=group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_interval_ms=int(delivery.max_poll_interval * 1000),
        )
        try:
            await consumer.start()
            run = asyncio.create_task(delivery.run(consumer, handle))
            stopped = asyncio.create_task(stop.wait())
            try:
                await asyncio.wait([run, stopped], return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (run, stopped):
                    task.cancel()
                await asyncio.gather(run, stopped, return_exceptions=True)
            if run.done() and not run.cancelled() and run.exception() is not None:
                raise RuntimeError("the gap-fill consumer stopped") from run.exception()
        except Exception:
            logger.exception("gap-fill consumer failed; starting it again in %.1fs", backoff)
            try:
                await asyncio.wait_for(stop.wait(), timeout=backoff)
            except TimeoutError:
                backoff = min(backoff * 2, _MAX_BACKOFF)
        finally:
            await delivery.aclose()
            await consumer.stop()
            await producer.stop()
