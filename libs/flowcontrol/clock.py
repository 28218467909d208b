"""Time as a dependency: every policy reads `now()` and sleeps through an injected `Clock`.

Policies never call `time.monotonic()` or `asyncio.sleep()` themselves, so tests drive them with
`libs.flowcontrol.testing.FakeClock` and never sleep for real.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Protocol, runtime_checkable

__all__ = ["Clock", "MonotonicClock", "wait_future"]


@runtime_checkable
class Clock(Protocol):
    """A monotonic clock in seconds plus a way to sleep on it."""

    def now(self) -> float:
        """Seconds on a monotonic scale; only differences are meaningful."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Suspend the calling task for `seconds` of this clock's time."""
        ...


class MonotonicClock:
    """The real clock: `time.monotonic()` and `asyncio.sleep()`."""

    def now(self) -> float:
        """Return `time.monotonic()`."""
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        """Sleep on the running event loop."""
        await asyncio.sleep(max(0.0, seconds))


async def wait_future(future: asyncio.Future[Any], clock: Clock, timeout: float | None) -> bool:
    """Wait until `future` is done or `timeout` seconds of `clock` time pass; return `future.done()`.

    The future is never cancelled and its exception never raised here: callers that hand resources
    through futures (permits, buffer slots) must inspect it afterwards, because it may complete in
    the same loop iteration as the timeout. If the calling task is cancelled, `CancelledError`
    propagates and `future` is left as it is for the caller's cleanup.
    """
    if future.done():
        return True
    if timeout is None:
        await asyncio.wait((future,))
        return True
    if timeout <= 0:
        return False
    sleeper = asyncio.ensure_future(clock.sleep(timeout))
    try:
        await asyncio.wait((future, sleeper), return_when=asyncio.FIRST_COMPLETED)
    finally:
        sleeper.cancel()
    return future.done()
