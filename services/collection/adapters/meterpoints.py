"""The scope view's feed: ``meterpoints.v1`` read from the beginning into a `ScopeView`, in the process.

`MeterpointFeed.run()` assigns every partition (no consumer group: each replica keeps the whole view), seeks to
the beginning, notes the end offsets, and applies records until cancelled. ``caught_up`` is set once the view
has read up to those end offsets (readiness waits on it); if that takes longer than ``catch_up_timeout`` the feed
raises `CatchUpTimeout` (the part is fatal: a replica without its view must not serve). After that it follows
the topic; ``lag`` (records behind the broker's high watermark) is a gauge.

A record that is not a meterpoint event is skipped and counted (``malformed``): the registry validated what it
published, so it is nobody's to dead-letter here. A tombstone (no value) removes its meterpoint.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from libs.events.fields import MAX_VERSION
from libs.events.gsrn import is_valid_gsrn
from libs.events.meterpoints import MeterpointRegistered, MeterpointUpdated, SourceKind
from libs.events.parties import is_valid_eic, is_valid_gln
from services.collection.metrics import CollectionMetrics
from services.collection.scope import Applied, ScopeView

logger = logging.getLogger(__name__)

EVENT_TYPES = frozenset({MeterpointRegistered.event_type, MeterpointUpdated.event_type})
_SOURCE_KINDS = frozenset(kind.value for kind in SourceKind)
_MAX_SOURCE_ID = 128
_FULL_LOG_EVERY = 60.0  # seconds between log lines while the view refuses meterpoints


class CatchUpTimeout(RuntimeError):
    """The view did not reach the topic's end offsets in time."""


def parse_meterpoint(value: bytes) -> tuple[str, str, tuple[str, str] | None, int] | None:
    """The fields the view keeps from one ``meterpoints.v1`` record value, or None when it is not a meterpoint event.

    A light check of what the view relies on (faster than the pydantic models, which matters for millions of records
    at start): the event type, a valid GSRN, a GLN-13/EIC-16 grid company, a known source kind, a version of
    1..MAX_VERSION (as the models: no consumer's 32-bit version column may overflow).
    """
    try:
        envelope = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(envelope, dict) or envelope.get("type") not in EVENT_TYPES:
        return None
    data = envelope.get("data")
    if not isinstance(data, dict):
        return None
    meterpoint_id, grid_company, version = data.get("meterpoint_id"), data.get("grid_company"), data.get("version")
    if not (isinstance(meterpoint_id, str) and is_valid_gsrn(meterpoint_id)):
        return None
    if not (isinstance(grid_company, str) and (is_valid_gln(grid_company) or is_valid_eic(grid_company))):
        return None
    if type(version) is not int or not 1 <= version <= MAX_VERSION:
        return None
    source = data.get("data_source")
    if source is None:
        return meterpoint_id, grid_company, None, version
    if not isinstance(source, dict):
        return None
    kind, source_id = source.get("kind"), source.get("id")
    if kind not in _SOURCE_KINDS or not isinstance(source_id, str) or not 0 < len(source_id) <= _MAX_SOURCE_ID:
        return None
    return meterpoint_id, grid_company, (kind, source_id), version


class MeterpointFeed:
    """Keeps a `ScopeView` up to date from ``topic`` (see the module doc)."""

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str,
        view: ScopeView,
        *,
        metrics: CollectionMetrics | None = None,
        catch_up_timeout: float = 120.0,
        consumer_factory: Callable[[], AIOKafkaConsumer] | None = None,
    ) -> None:
        self.topic = topic
        self.view = view
        self._bootstrap = bootstrap_servers
        self._metrics = metrics
        self._catch_up_timeout = catch_up_timeout
        self._consumer_factory = consumer_factory
        self.caught_up = asyncio.Event()
        self.lag = 0
        self.malformed = 0
        self.removed = 0
        self._full_logged = -math.inf
        self._refused_logged = 0
        if metrics is not None:
            metrics.view_capacity.set(view.capacity)

    async def wait_caught_up(self, timeout: float) -> None:
        """Return once the view has caught up (TimeoutError after ``timeout`` seconds)."""
        async with asyncio.timeout(timeout):
            await self.caught_up.wait()

    async def run(self, *, stop_when_caught_up: bool = False) -> None:
        """Read the topic from the beginning; follow it until cancelled (or return once caught up)."""
        consumer = (
            self._consumer_factory()
            if self._consumer_factory is not None
            else AIOKafkaConsumer(
                bootstrap_servers=self._bootstrap,
                group_id=None,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                max_partition_fetch_bytes=4 * 1024 * 1024,
            )
        )
        await consumer.start()
        try:
            partitions = await self._partitions()
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            ends = await consumer.end_offsets(partitions)
            deadline = time.monotonic() + self._catch_up_timeout
            started = time.monotonic()
            pending = {tp for tp in partitions if ends[tp] > 0}
            while True:
                if pending:
                    pending = {tp for tp in pending if await consumer.position(tp) < ends[tp]}
                    if not pending:
                        self._caught_up(started)
                        if stop_when_caught_up:
                            return
                    elif time.monotonic() > deadline:
                        behind = sum([ends[tp] - await consumer.position(tp) for tp in pending])
                        raise CatchUpTimeout(
                            f"the meterpoint view did not catch up with {self.topic} within "
                            f"{self._catch_up_timeout:g} s ({len(self.view)} meterpoints read, {behind} records behind)"
                        )
                elif not self.caught_up.is_set():
                    self._caught_up(started)
                    if stop_when_caught_up:
                        return
                batches = await consumer.getmany(timeout_ms=500, max_records=10_000)
                for records in batches.values():
                    self._apply(records)
                await self._measure_lag(consumer, partitions)
        finally:
            await consumer.stop()

    async def _partitions(self) -> list[TopicPartition]:
        # The consumer's own metadata knows assigned topics only; the admin API says which partitions exist.
        admin = AIOKafkaAdminClient(bootstrap_servers=self._bootstrap, request_timeout_ms=10_000)
        await admin.start()
        try:
            described = await admin.describe_topics([self.topic])
        finally:
            await admin.close()
        numbers = sorted(
            entry["partition"]
            for topic in described
            if topic.get("error_code", 0) == 0
            for entry in topic.get("partitions", ())
        )
        if not numbers:
            raise LookupError(f"topic {self.topic} does not exist")
        return [TopicPartition(self.topic, number) for number in numbers]

    def _caught_up(self, started: float) -> None:
        self.view.ready = True
        self.caught_up.set()
        if self._metrics is not None:
            self._metrics.view_caught_up.set(1)
        logger.info(
            "meterpoint view caught up with %s: %d meterpoints in %.1f s",
            self.topic,
            len(self.view),
            time.monotonic() - started,
        )

    def _apply(self, records: list[Any]) -> None:
        view, metrics = self.view, self._metrics
        counts: dict[str, int] = {}
        for record in records:
            if record.value is None:
                key = record.key.decode() if record.key else ""
                outcome = view.remove(key) if is_valid_gsrn(key) else "malformed"
            else:
                fields = parse_meterpoint(record.value)
                if fields is None:
                    outcome = "malformed"
                else:
                    meterpoint_id, grid_company, source, version = fields
                    outcome = view.apply(meterpoint_id, grid_company=grid_company, source=source, version=version)
            counts[outcome] = counts.get(outcome, 0) + 1
        self.malformed += counts.get("malformed", 0)
        if counts.get("malformed"):
            logger.warning("skipped %d record(s) on %s that are no meterpoint event", counts["malformed"], self.topic)
        if counts.get(Applied.REFUSED):
            self._log_full()
        if metrics is not None:
            for outcome, count in counts.items():
                metrics.view_records.labels(str(outcome)).inc(count)
            metrics.view_entries.set(len(view))
            metrics.view_full.set(1 if view.full else 0)

    def _log_full(self) -> None:
        now = time.monotonic()
        if now - self._full_logged < _FULL_LOG_EVERY:
            return
        refused = self.view.refused - self._refused_logged
        self._full_logged, self._refused_logged = now, self.view.refused
        logger.error(
            "meterpoint view full (capacity %d): %d new meterpoint(s) refused so far; their readings are held as "
            "unknown_meterpoint until COLLECTION_SCOPE__CAPACITY is raised and the holds are redriven",
            self.view.capacity,
            refused,
        )

    async def _measure_lag(self, consumer: AIOKafkaConsumer, partitions: list[TopicPartition]) -> None:
        # The high watermark comes with every fetch response: no extra request.
        lag = 0
        for partition in partitions:
            highwater = consumer.highwater(partition)
            if highwater is not None:
                lag += max(0, highwater - await consumer.position(partition))
        self.lag = lag
        if self._metrics is not None:
            self._metrics.view_lag.set(lag)


__all__ = ["EVENT_TYPES", "CatchUpTimeout", "MeterpointFeed", "parse_meterpoint"]
