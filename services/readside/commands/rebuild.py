"""``python -m services.readside.commands.rebuild`` (or ``gridhub rebuild``): replay the topics into new views.

Replays into a new version of the views, then switches to it:


1. Create ``<schema>_v<n+1>`` (an unfinished one left by an earlier run is dropped first).
2. Replay every partition of the six topics from its beginning into it, with the same projections and the same
   exactly-once apply as the live consumer (offsets stored in the new version), paced by the ``readside_rebuild``
   throttle, which lag-aware admission slows further while the live consumer falls behind. A progress bar goes
   to stderr.
3. Catch up with the live consumer, then, holding the version pointer ``FOR UPDATE`` (live batches wait), apply
   the last few records up to the live offsets and move the pointer: one transaction, so readers and the live
   consumer go from the old version to the new one at once; the live consumer continues from the new version's
   offsets.
4. Drop the old version (``--keep-old`` keeps it).

Poison records are only logged during a replay: the live consumer dead-lettered them when they first came.
A replay can only bring back what the topics still hold (their retention).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from collections.abc import Mapping
from typing import Any, TextIO

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition

from libs.flowcontrol.admission import AdmissionController, lag_signal
from libs.flowcontrol.delivery import DeliveryPolicy
from libs.flowcontrol.throttle import Throttle
from libs.platform.logging import configure_logging
from services.readside.adapters.kafka import LoggedDeadLetters, partitions_of, replay_consumer
from services.readside.adapters.schema import (
    StoredOffset,
    create_views,
    current_version,
    drop_views,
    read_offsets,
    search_path,
    switch_version,
    views_exist,
)
from services.readside.adapters.writer import ViewWriter
from services.readside.batches import BatchApplier, roles_of
from services.readside.settings import ReadsideSettings

logger = logging.getLogger(__name__)

# Live lag (records) at which the replay slows down, and at which it runs at its slowest (min_scale).
LIVE_LAG_LOW = 1_000
LIVE_LAG_HIGH = 20_000


class Progress:
    """A progress bar on a stream: redrawn in place on a terminal, a line every few seconds otherwise."""

    def __init__(self, total: int, stream: TextIO, *, label: str, interval: float = 2.0) -> None:
        self.total = max(total, 1)
        self.done = 0
        self._stream = stream
        self._label = label
        self._tty = stream.isatty()
        self._interval = 0.2 if self._tty else interval
        self._started = time.monotonic()
        self._shown = 0.0

    def update(self, done: int, *, force: bool = False) -> None:
        """Record progress; draw when due."""
        self.done = done
        now = time.monotonic()
        if force or now - self._shown >= self._interval:
            self._shown = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        fraction = min(1.0, self.done / self.total)
        width = 30
        filled = int(fraction * width)
        elapsed = max(now - self._started, 1e-9)
        rate = self.done / elapsed
        remaining = (self.total - self.done) / rate if rate > 0 and self.done < self.total else 0.0
        line = (
            f"{self._label} [{'#' * filled}{'.' * (width - filled)}] {fraction * 100:5.1f}% "
            f"{self.done:,}/{self.total:,} records {rate:,.0f}/s ETA {remaining:,.0f}s"
        )
        self._stream.write(("\r" + line) if self._tty else (line + "\n"))
        self._stream.flush()

    def finish(self, message: str) -> None:
        """Draw the final state and a closing line."""
        self._draw(time.monotonic())
        self._stream.write(("\n" if self._tty else "") + message + "\n")
        self._stream.flush()


class Rebuild:
    """One rebuild run (see the module docstring)."""

    def __init__(
        self,
        settings: ReadsideSettings,
        *,
        rate: float | None = None,
        keep_old: bool = False,
        progress_stream: TextIO = sys.stderr,
    ) -> None:
        self._settings = settings
        self._dsn = settings.postgres_dsn.get_secret_value()
        self._control = settings.postgres_schema
        self._keep_old = keep_old
        self._progress_stream = progress_stream
        policy = settings.boundaries.readside_rebuild.throttle
        assert policy is not None  # the settings insist on it
        # A burst of one batch: the replay starts at its pace instead of sprinting through the burst first.
        self._throttle = Throttle(rate or policy.rate, settings.max_records, max_wait=policy.max_wait)
        self._live_lag = 0
        self._admission = AdmissionController(
            self._throttle, lag_signal(lambda: self._live_lag, low=LIVE_LAG_LOW, high=LIVE_LAG_HIGH), min_scale=0.1
        )
        self._positions: dict[TopicPartition, int | None] = {}
        self.dead_letters = LoggedDeadLetters()

    async def run(self) -> int:
        """Rebuild and switch; return the new version."""
        conn = await asyncpg.connect(self._dsn, server_settings={"search_path": f'"{self._control}"'})
        consumer = replay_consumer(self._settings)
        writer: ViewWriter | None = None
        try:
            old = await current_version(conn)
            new = old + 1
            if await views_exist(conn, self._control, new):
                logger.warning("dropping version %d left by an unfinished rebuild", new)
                await drop_views(conn, self._control, new)
            await create_views(conn, self._control, new, self._settings.timezone)
            writer = ViewWriter(
                self._dsn, self._control, fixed_version=new, application_name=f"{self._settings.service_name}-rebuild"
            )
            roles = roles_of(*self._settings.event_topics)
            applier = BatchApplier(writer, roles, self.dead_letters, DeliveryPolicy(max_attempts=1))
            partitions = await partitions_of(self._settings.kafka_bootstrap_list, list(roles))
            await consumer.start()
            consumer.assign(partitions)
            _, stored = await writer.positions([(tp.topic, tp.partition) for tp in partitions])
            self._positions = {tp: stored[(tp.topic, tp.partition)] for tp in partitions}
            await consumer.seek_to_beginning(*partitions)
            begin: Mapping[TopicPartition, int] = await consumer.beginning_offsets(partitions)
            end: Mapping[TopicPartition, int] = await consumer.end_offsets(partitions)
            progress = Progress(
                sum(end[tp] - begin[tp] for tp in partitions), self._progress_stream, label=f"rebuild v{new}"
            )
            await self._replay_until(consumer, applier, new, end, begin, progress, conn, old)
            await self._switch(conn, consumer, applier, old, new, begin, progress)
            progress.finish(f"rebuild v{new}: switched from v{old}; {self.dead_letters.count} poison records skipped")
            if not self._keep_old:
                await drop_views(conn, self._control, old)
                logger.info("dropped view version %d", old)
            return new
        finally:
            await consumer.stop()
            if writer is not None:
                await writer.close()
            await conn.close()

    def _applied(self, begin: Mapping[TopicPartition, int]) -> int:
        return sum(max(0, (offset or begin[tp]) - begin[tp]) for tp, offset in self._positions.items())

    async def _replay_until(
        self,
        consumer: AIOKafkaConsumer,
        applier: BatchApplier,
        version: int,
        targets: Mapping[TopicPartition, int],
        begin: Mapping[TopicPartition, int],
        progress: Progress,
        conn: asyncpg.Connection[Any],
        live_version: int | None,
    ) -> None:
        """Apply batches until every partition's position reaches its target offset.

        With ``live_version`` the replay is paced (and slowed while that version's consumer lags); without it,
        it runs at full speed (the last records before the switch, while the live consumer waits anyway).
        """
        last_lag_check = 0.0
        while any((self._positions[tp] or begin[tp]) < target for tp, target in targets.items()):
            now = time.monotonic()
            if live_version is not None and now - last_lag_check >= 1.0:
                last_lag_check = now
                self._live_lag = sum(row.lag for row in await self._live_offsets(conn, live_version))
                self._admission.update()
            batch = await consumer.getmany(timeout_ms=500, max_records=self._settings.max_records)
            batch = {tp: records for tp, records in batch.items() if records}
            if not batch:
                continue
            if live_version is not None:
                await self._throttle.acquire(sum(len(records) for records in batch.values()))
            moved = await applier.apply(version, batch, self._positions, consumer.highwater)
            self._positions.update(moved)
            progress.update(self._applied(begin))

    async def _live_offsets(self, conn: asyncpg.Connection[Any], version: int) -> list[StoredOffset]:
        async with conn.transaction():
            await conn.execute("SELECT set_config('search_path', $1, true)", search_path(self._control, version))
            return await read_offsets(conn, self._settings.event_topics)

    async def _switch(
        self,
        conn: asyncpg.Connection[Any],
        consumer: AIOKafkaConsumer,
        applier: BatchApplier,
        old: int,
        new: int,
        begin: Mapping[TopicPartition, int],
        progress: Progress,
    ) -> None:
        # Close most of the distance to the live consumer without blocking it ...
        live = await self._live_offsets(conn, old)
        await self._replay_until(consumer, applier, new, self._targets(live), begin, progress, conn, old)
        # ... then block its batches for the last few records and the switch itself.
        async with conn.transaction():
            pointer = await conn.fetchval("SELECT version FROM view_version FOR UPDATE")
            if pointer != old:
                raise RuntimeError(f"the views moved to version {pointer} during the rebuild; not switching")
            await conn.execute("SELECT set_config('search_path', $1, true)", search_path(self._control, old))
            live = await read_offsets(conn, self._settings.event_topics)
            await self._replay_until(consumer, applier, new, self._targets(live), begin, progress, conn, None)
            await switch_version(conn, old, new)
        progress.update(self._applied(begin), force=True)

    def _targets(self, live: list[StoredOffset]) -> dict[TopicPartition, int]:
        return {
            TopicPartition(row.topic, row.partition): row.next_offset
            for row in live
            if row.next_offset is not None and TopicPartition(row.topic, row.partition) in self._positions
        }


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and run one rebuild."""
    parser = argparse.ArgumentParser(description="Rebuild the read side's views from the log, then switch to them.")
    parser.add_argument("--rate", type=float, default=None, help="records per second (default: settings)")
    parser.add_argument("--keep-old", action="store_true", help="keep the old version's schema")
    args = parser.parse_args(argv)
    settings = ReadsideSettings()
    configure_logging(f"{settings.service_name}-rebuild", settings.log_level, stream=sys.stderr)
    version = asyncio.run(Rebuild(settings, rate=args.rate, keep_old=args.keep_old).run())
    sys.stdout.write(f"views rebuilt as version {version}\n")


if __name__ == "__main__":
    main()
