"""The scheduler: one task, one tick per interval, bounded work per tick (clock injected).

A tick (1) sweeps a slice of the connected meterpoints so that every day of the look-back has a row (days that got
no reading at all reach their deadline too; a round of ``sweep_batch`` per tick must stay well within the 31 hours
from a day's start to its D+1 deadline), (2) publishes the days whose D+1 deadline passed unpublished
(reason DEADLINE), and (3) scans for intervals still missing after the grace period (GapFillRequested). Each step
is its own transaction; the days it touches are locked, so the consumer and the scheduler never publish the same
version twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any

import asyncpg

from services.vee import handlers
from services.vee.adapters.postgres import DayKey
from services.vee.handlers import Context, GapSettings, WallClock

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class TickOutcome:
    swept: int
    published: int
    gap_requests: int


class Scheduler:
    def __init__(
        self,
        pool: asyncpg.Pool[Any],
        ctx: Context,
        gap: GapSettings,
        clock: WallClock,
        *,
        interval: float,
        deadline_batch: int,
        sweep_batch: int,
    ) -> None:
        self._pool = pool
        self._ctx = ctx
        self._gap = gap
        self._clock = clock
        self._interval = interval
        self._deadline_batch = deadline_batch
        self._sweep_batch = sweep_batch
        self._cursor = ""
        self._rounds = 0
        self._gap_cursor: DayKey | None = None
        self._lock = asyncio.Lock()
        self.ticks = 0

    async def tick(self) -> TickOutcome:
        """One round of bounded work at the clock's now."""
        async with self._lock:
            now = self._clock()
            async with self._pool.acquire() as conn:
                async with conn.transaction():
                    # The first round after a start covers the look-back (an outage's days); later rounds only
                    # the days begun since (yesterday and today), so a round stays one row per series and day.
                    self._cursor, swept = await handlers.sweep_days(
                        conn,
                        ctx=self._ctx,
                        now=now,
                        after=self._cursor,
                        limit=self._sweep_batch,
                        lookback_days=self._gap.lookback_days if self._rounds == 0 else 1,
                    )
                    if not self._cursor:
                        self._rounds += 1
                async with conn.transaction():
                    published = await handlers.publish_due_days(
                        conn, ctx=self._ctx, now=now, limit=self._deadline_batch
                    )
                async with conn.transaction():
                    requested, self._gap_cursor = await handlers.scan_gaps(
                        conn, ctx=self._ctx, gap=self._gap, now=now, after=self._gap_cursor
                    )
            self.ticks += 1
            return TickOutcome(swept, published, requested)

    async def run(self, stop: asyncio.Event) -> None:
        """Tick until ``stop``; a failed tick (the database away) is logged and retried at the next one."""
        while not stop.is_set():
            try:
                await self.tick()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as error:
                logger.warning("scheduler tick failed: %s: %s", type(error).__name__, error)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self._interval)
