"""Background jobs: the enricher (pending customers) and the purge of old idempotency keys.

The enricher runs a round every ``enrichment_interval`` seconds, and at once when an order was stored with its
customer pending (`wake`). While the ``customers_soap`` breaker is open a round ends at its first call (the
breaker refuses without a network call), so an outage costs nothing; after ``wait_in_open`` the next round's
first call is the breaker's half-open probe, and once it succeeds the round goes on through the backlog.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import timedelta

from libs.flowcontrol.errors import Refused
from services.workorders import handlers
from services.workorders.handlers import Context
from services.workorders.metrics import WorkordersMetrics

logger = logging.getLogger(__name__)

_PURGE_EVERY = 600.0


class Enricher:
    """Fills in the customer of orders created while the customers service could not answer."""

    def __init__(
        self,
        ctx: Context,
        *,
        interval: float,
        batch_size: int,
        max_backoff: timedelta,
        idempotency_retention: timedelta,
        metrics: WorkordersMetrics | None = None,
    ) -> None:
        self._ctx = ctx
        self._interval = interval
        self._batch_size = batch_size
        self._max_backoff = max_backoff
        self._retention = idempotency_retention
        self._metrics = metrics
        self._wake = asyncio.Event()
        self._last_purge = 0.0
        self.rounds = 0

    def wake(self) -> None:
        """Run a round soon (an order with a pending customer was just stored)."""
        self._wake.set()

    async def round(self) -> handlers.EnrichmentRound:
        """One pass over the pending orders (at most ``batch_size``)."""
        outcome = await handlers.enrich_pending(self._ctx, batch_size=self._batch_size, max_backoff=self._max_backoff)
        self.rounds += 1
        if self._metrics is not None:
            self._metrics.enriched.inc(outcome.enriched)
            if outcome.interrupted:
                self._metrics.enrichment_interrupted.inc()
        if outcome.enriched or outcome.postponed:
            logger.info("enriched %d orders, postponed %d", outcome.enriched, outcome.postponed)
        return outcome

    async def run(self, stop: asyncio.Event) -> None:
        """Enrich until ``stop`` is set; a failing round (e.g. our database down) is logged and retried."""
        while not stop.is_set():
            self._wake.clear()
            full = False
            try:
                outcome = await self.round()
                full = outcome.enriched + outcome.postponed >= self._batch_size and not outcome.interrupted
                await self._purge()
            except Refused as error:
                logger.warning("enrichment round skipped: %s", error)
            except Exception:
                logger.exception("enrichment round failed")
            if full:
                continue  # more are waiting
            await _wait_any(stop, self._wake, timeout=self._interval)

    async def _purge(self) -> None:
        now = time.monotonic()
        if now - self._last_purge < _PURGE_EVERY:
            return
        self._last_purge = now
        purged = await self._ctx.store.purge_idempotency_keys(self._retention)
        if purged:
            logger.info("purged %d idempotency keys older than %s", purged, self._retention)


async def _wait_any(stop: asyncio.Event, wake: asyncio.Event, *, timeout: float) -> None:
    waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(wake.wait())]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*waiters, return_exceptions=True)
