"""Per-key parking lanes: a few items of a key over its quota wait in a small FIFO, one scheduler releases them.

For a shared ingress (one MQTT subscriber session serving every meter) where refusing is not possible and
holding without limit would block everyone: a key over its quota may park a few items (``max_per_lane``), and
only so many keys may park at once (``max_lanes``), so parked items never take more than
``max_lanes * max_per_lane`` of the shared window. `park` says False when there is no room; the caller then
deals with the item another way (the MQTT ingress records it in the DLQ as ``quota_exceeded``).

One task (`run`) releases every lane: it keeps a heap of when each lane's head can next pay its cost, sleeps
until the earliest one, and releases heads in due order, a key's items in the order they were parked. No task
or timer per item, so a flood of parked items never wakes all at once (no thundering herd), and the work is
one quota check per release or retry.
"""

from __future__ import annotations

import asyncio
import heapq
import math
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from libs.flowcontrol.clock import Clock, MonotonicClock, wait_future
from libs.flowcontrol.quota import Quota

__all__ = ["QuotaLanes"]

T = TypeVar("T")


class QuotaLanes(Generic[T]):
    """Bounded per-key lanes of items waiting for ``quota``; `run` releases them (see the module doc)."""

    def __init__(
        self,
        quota: Quota,
        *,
        max_lanes: int,
        max_per_lane: int,
        clock: Clock | None = None,
        on_depth: Callable[[int], object] | None = None,
    ) -> None:
        if max_lanes < 1 or max_per_lane < 1:
            raise ValueError("max_lanes and max_per_lane must be >= 1")
        self._quota = quota
        self._max_lanes = max_lanes
        self._max_per_lane = max_per_lane
        self._clock = clock or MonotonicClock()
        self._on_depth = on_depth
        self._lanes: dict[str, deque[tuple[float, T]]] = {}
        self._due: list[tuple[float, int, str]] = []  # (when, tie-breaker, key): one entry per lane
        self._order = 0
        self._parked = 0
        self._wakeup: asyncio.Future[None] | None = None

    def __len__(self) -> int:
        """Items parked now."""
        return self._parked

    @property
    def lanes(self) -> int:
        """Keys with parked items now."""
        return len(self._lanes)

    @property
    def capacity(self) -> int:
        """The most items that can be parked at once."""
        return self._max_lanes * self._max_per_lane

    def has_lane(self, key: str) -> bool:
        """Whether ``key`` has parked items (its next item must queue behind them to keep its order)."""
        return key in self._lanes

    def park(self, key: str, cost: float, item: T) -> bool:
        """Park ``item`` (costing ``cost`` of ``key``'s quota) at the end of ``key``'s lane; False if no room."""
        lane = self._lanes.get(key)
        if lane is None:
            if len(self._lanes) >= self._max_lanes:
                return False
            lane = self._lanes[key] = deque()
            self._schedule(self._clock.now(), key)
        elif len(lane) >= self._max_per_lane:
            return False
        lane.append((cost, item))
        self._set_depth(self._parked + 1)
        return True

    def clear(self) -> list[T]:
        """Forget every parked item (e.g. their connection is gone) and return them."""
        items = [item for lane in self._lanes.values() for _, item in lane]
        self._lanes.clear()
        self._due.clear()
        self._set_depth(0)
        return items

    async def run(self, release: Callable[[T], Awaitable[object]]) -> None:
        """Release parked items through ``release`` as their keys' quotas allow, until cancelled."""
        clock = self._clock
        while True:
            if not self._due:
                await self._wait(None)
                continue
            when, _, key = self._due[0]
            wait = when - clock.now()
            if wait > 0:
                await self._wait(wait)
                continue
            heapq.heappop(self._due)
            lane = self._lanes.get(key)
            if not lane:
                continue  # cleared meanwhile
            cost, item = lane[0]
            decision = self._quota.try_acquire(key, cost)
            if not decision.allowed and not math.isinf(decision.retry_after):
                self._schedule(clock.now() + decision.retry_after, key)
                continue
            # Paid (or costing more than the whole burst, which waiting never fixes): out it goes.
            lane.popleft()
            self._set_depth(self._parked - 1)
            if lane:
                self._schedule(clock.now(), key)
            else:
                del self._lanes[key]
            await release(item)

    def _schedule(self, when: float, key: str) -> None:
        self._order += 1
        earliest = self._due[0][0] if self._due else math.inf
        heapq.heappush(self._due, (when, self._order, key))
        if when < earliest and self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

    async def _wait(self, timeout: float | None) -> None:
        """Sleep ``timeout`` seconds (forever if None) or until a lane becomes due earlier."""
        self._wakeup = asyncio.get_running_loop().create_future()
        try:
            await wait_future(self._wakeup, self._clock, timeout)
        finally:
            self._wakeup = None

    def _set_depth(self, depth: int) -> None:
        self._parked = depth
        if self._on_depth is not None:
            self._on_depth(depth)
