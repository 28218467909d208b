"""The live consumer: aiokafka driven directly, offsets kept in PostgreSQL with the views (exactly-once apply).

- Assignment: new partitions are paused until their stored offsets are read from PostgreSQL and sought to
  (`ConsumerRebalanceListener`); Kafka's committed offsets are written too, after the database commit, but only
  for monitoring (lag-based autoscaling). Revocation waits for the batch in flight.
- Each poll takes at most ``max_records``; the batch is decoded, projected and applied in one transaction
  together with its offsets (see ``adapters.writer``).
- Poison records are dead-lettered (``<topic>.dlq``, via ``libs.flowcontrol.deliver``) before the transaction
  that stores their offsets as done, so they are never lost and never block their partition.
- When the database fails or is slow the breaker opens: every partition is paused, the poll loop keeps polling
  (the group keeps us), and after ``wait_in_open`` one probe re-reads the stored offsets; on success the
  partitions are sought back to them and resumed. Nothing is skipped: the offsets in PostgreSQL decide.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable, Mapping

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import OffsetAndMetadata

from libs.flowcontrol.breaker import BreakerState, CircuitBreaker
from libs.flowcontrol.errors import CallNotPermitted
from services.readside.adapters.writer import Fenced, VersionChanged
from services.readside.batches import BatchApplier, PreparedBatch
from services.readside.metrics import LagTracker
from services.readside.projections import TopicRole

logger = logging.getLogger(__name__)

_KAFKA_COMMIT_INTERVAL = 5.0
_HIGHWATER_REFRESH_INTERVAL = 5.0
_POINTER_CHECK_INTERVAL = 2.0


class _SeekToStoredOffsets(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, owner: ReadsideConsumer) -> None:
        self._owner = owner

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self._owner.revoke(list(revoked))

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        self._owner.assign(list(assigned))


class ReadsideConsumer:
    """The poll loop of the live read side (``await run()``; cancel to stop)."""

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        applier: BatchApplier,
        roles: Mapping[str, TopicRole],
        breaker: CircuitBreaker,
        lag: LagTracker,
        *,
        max_records: int,
        poll_timeout_ms: int,
    ) -> None:
        self._consumer = consumer
        self._applier = applier
        self._roles = roles
        self._breaker = breaker
        self._lag = lag
        self._max_records = max_records
        self._poll_timeout_ms = poll_timeout_ms
        # Where the next batch starts (ahead of the database by the batch in flight), and what is committed.
        self._positions: dict[TopicPartition, int | None] = {}
        self._committed: dict[TopicPartition, int | None] = {}
        self._generation = 0
        self._in_flight: asyncio.Task[None] | None = None
        self._unpositioned: set[TopicPartition] = set()
        self._highwater: dict[TopicPartition, int] = {}
        self._lock = asyncio.Lock()
        self._version: int | None = None
        self._last_kafka_commit = 0.0
        self._last_highwater_refresh = 0.0
        self._last_pointer_check = time.monotonic()
        self.batches = 0

    @property
    def version(self) -> int | None:
        """The view version this consumer writes (None before its first positioning)."""
        return self._version

    def assign(self, partitions: list[TopicPartition]) -> None:
        """New partitions: hold them until their stored offsets are known."""
        if partitions:
            self._consumer.pause(*partitions)
            self._unpositioned.update(partitions)
            logger.info("assigned %d partitions; positioning from stored offsets", len(partitions))

    async def revoke(self, partitions: list[TopicPartition]) -> None:
        """Partitions leave: let the batch in flight commit (or fail) first, then forget them."""
        async with self._lock:
            self._generation += 1
            for tp in partitions:
                self._positions.pop(tp, None)
                self._committed.pop(tp, None)
                self._unpositioned.discard(tp)
                self._highwater.pop(tp, None)
                self._lag.forget(tp.topic, tp.partition)

    async def run(self) -> None:
        """Consume until cancelled.

        Pipelined: while the database commits batch n, the loop fetches, decodes and projects batch n+1 (Python
        and PostgreSQL then use a core each). Batches still commit one at a time and in order; batch n+1 is
        prepared against the offsets batch n will store, and dropped (then fetched again) if batch n fails.
        """
        self._consumer.subscribe(list(self._roles), listener=_SeekToStoredOffsets(self))
        try:
            while True:
                if self._unpositioned:
                    await self._settle()
                    await self._position()
                batch = await self._consumer.getmany(timeout_ms=self._poll_timeout_ms, max_records=self._max_records)
                await self._refresh_lag()
                # Records of partitions that are not (or no longer) positioned are dropped: they are fetched again.
                batch = {tp: records for tp, records in batch.items() if tp in self._positions and records}
                if not batch:
                    await self._settle()
                    await self._check_pointer()
                    continue
                generation = self._generation
                prepared = await self._applier.prepare(batch, self._positions, self._known_highwater)
                if prepared is None or generation != self._generation:
                    continue
                self._positions.update(prepared.moved)
                await self._settle()
                if generation == self._generation:
                    self._in_flight = asyncio.create_task(self._commit(prepared, generation))
        finally:
            if self._in_flight is not None:
                # Stopping: the transaction in flight rolls back; its records are applied after the restart.
                self._in_flight.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._in_flight

    async def _settle(self) -> None:
        """Wait for the commit in flight (it handles its own failure)."""
        if self._in_flight is not None:
            task, self._in_flight = self._in_flight, None
            await task

    async def _commit(self, prepared: PreparedBatch, generation: int) -> None:
        async with self._lock:
            if generation != self._generation or self._version is None:
                return  # a failure, revocation or switch since it was prepared: its records are fetched again
            try:
                permit = self._breaker.acquire()
            except CallNotPermitted:
                self._hold_all("breaker open")
                return
            try:
                await self._applier.commit(self._version, prepared)
            except (VersionChanged, Fenced) as error:
                self._breaker.release(permit)
                logger.info("re-reading stored offsets: %s", error)
                self._hold_all(None)
                return
            except Exception as error:
                self._breaker.record_exception(permit, error)
                logger.warning("batch not applied, pausing consumption: %s: %s", type(error).__name__, error)
                self._hold_all("database unavailable")
                return
            self._breaker.record_success(permit)
            self.batches += 1
            self._committed.update(prepared.moved)
            if self._breaker.state is not BreakerState.CLOSED:
                # The batch went through but slowly enough to open the breaker: give the database a pause.
                self._hold_all("database slow")
        await self._commit_to_kafka()

    def _hold_all(self, reason: str | None) -> None:
        """Pause every assigned partition and re-read its stored offset before it resumes."""
        self._generation += 1
        held = list(self._positions)
        if held:
            self._consumer.pause(*held)
        self._unpositioned.update(held)
        self._positions.clear()
        self._committed.clear()
        if reason is not None:
            self._lag.set_paused(True)

    async def _position(self) -> None:
        async with self._lock:
            assigned = self._consumer.assignment()
            partitions = sorted(tp for tp in self._unpositioned if tp in assigned)
            self._unpositioned.intersection_update(assigned)
            if not partitions:
                return
            try:
                permit = self._breaker.acquire()
            except CallNotPermitted as refused:
                self._lag.set_paused(True)
                wait = refused.retry_after if refused.retry_after is not None else 0.2
                # Sleep briefly only: the poll loop must keep polling to stay in the group.
                await asyncio.sleep(min(wait, self._poll_timeout_ms / 1000))
                return
            try:
                version, stored = await self._applier.writer.positions([(tp.topic, tp.partition) for tp in partitions])
            except Exception as error:
                self._breaker.record_exception(permit, error)
                self._lag.set_paused(True)
                logger.warning("stored offsets not readable, staying paused: %s: %s", type(error).__name__, error)
                return
            self._breaker.record_success(permit)
            if self._version is not None and version != self._version and self._positions:
                # A rebuild switched the views: every partition continues from the new version's offsets.
                logger.info("views switched from version %d to %d", self._version, version)
                self._hold_all(None)
                return
            self._version = version
            self._lag.set_version(version)
            for tp in partitions:
                offset = stored[(tp.topic, tp.partition)]
                if offset is None:
                    await self._consumer.seek_to_beginning(tp)
                else:
                    self._consumer.seek(tp, offset)
                self._positions[tp] = offset
                self._committed[tp] = offset
            self._unpositioned.difference_update(partitions)
            self._consumer.resume(*partitions)
            if not self._unpositioned:
                self._lag.set_paused(False)
            logger.info("positioned %d partitions from view version %d", len(partitions), version)

    async def _check_pointer(self) -> None:
        """While idle, notice a rebuild's switch (a batch would notice it anyway) so lag and freshness follow."""
        now = time.monotonic()
        if self._version is None or not self._positions or now - self._last_pointer_check < _POINTER_CHECK_INTERVAL:
            return
        self._last_pointer_check = now
        async with self._lock:
            try:
                version = await self._applier.writer.pointer()
            except Exception as error:
                logger.debug("version pointer not readable: %s", error)
                return
            if version != self._version:
                logger.info("views switched from version %s to %d", self._version, version)
                self._hold_all(None)

    def _known_highwater(self, tp: TopicPartition) -> int | None:
        fetched: int | None = self._consumer.highwater(tp)
        listed = self._highwater.get(tp)
        if fetched is None:
            return listed
        return fetched if listed is None else max(fetched, listed)

    async def _refresh_lag(self) -> None:
        now = time.monotonic()
        assigned = list(self._consumer.assignment())
        if assigned and now - self._last_highwater_refresh > _HIGHWATER_REFRESH_INTERVAL:
            # Paused partitions are not fetched, so their log end would go stale without asking for it.
            self._last_highwater_refresh = now
            try:
                self._highwater.update(await self._consumer.end_offsets(assigned))
            except KafkaError as error:
                logger.debug("log end offsets not available: %s", error)
        for tp in assigned:
            if tp in self._committed:
                self._lag.update(tp.topic, tp.partition, self._committed[tp], self._known_highwater(tp))

    async def _commit_to_kafka(self) -> None:
        """Best effort, for monitoring only: PostgreSQL holds the offsets that count."""
        now = time.monotonic()
        if now - self._last_kafka_commit < _KAFKA_COMMIT_INTERVAL:
            return
        self._last_kafka_commit = now
        offsets = {tp: OffsetAndMetadata(offset, "") for tp, offset in self._committed.items() if offset is not None}
        if not offsets:
            return
        try:
            await self._consumer.commit(offsets)
        except (KafkaError, AssertionError) as error:
            logger.debug("monitoring commit to Kafka skipped: %s", error)
