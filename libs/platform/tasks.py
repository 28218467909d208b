"""A service's background parts (consumers, ingresses, relays): started on the composition root's exit stack.

``run_in_background(exits, work, name=..., on_fatal=...)`` starts ``work`` as a task, reports its death to
``on_fatal`` (``serve`` then stops the process with exit 1, so the replica is restarted rather than answering
without the part that died) and pushes its stop on ``exits``, so closing the stack stops it in reverse order of
start. A part that has its own way to finish (drain, then return) gets a ``stopping`` event instead of a
cancel; then returning before ``stopping`` is set is a death too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from typing import Any

logger = logging.getLogger(__name__)

OnFatal = Callable[[BaseException], object]
"""What a part's death is reported to: ``serve`` stops the server, tests record it."""


class PartEnded(RuntimeError):
    """A background part returned while the service still runs."""


def supervise(
    task: asyncio.Task[None], on_fatal: OnFatal | None, *, stopping: asyncio.Event | None = None
) -> asyncio.Task[None]:
    """Log and report ``task``'s death: an error, or with ``stopping`` a return before it was set."""

    def ended(done: asyncio.Task[None]) -> None:
        if done.cancelled():
            return
        error = done.exception()
        if error is None:
            if stopping is None or stopping.is_set():
                return
            error = PartEnded(f"{done.get_name()} ended while the service runs")
        logger.critical("%s stopped", done.get_name(), exc_info=error)
        if on_fatal is not None:
            on_fatal(error)

    task.add_done_callback(ended)
    return task


STOP_TIMEOUT = 10.0
"""How long a part asked to stop by its event may take to drain before it is cancelled (within the 15 s grace)."""


async def stop_task(
    task: asyncio.Task[None], stopping: asyncio.Event | None = None, *, timeout: float = STOP_TIMEOUT
) -> None:
    """Stop ``task``: set ``stopping`` and give it ``timeout`` to return, or cancel it; then wait for it.

    Never raises what the task died of: that was reported when it ended, and a stop must go on to the next part.
    """
    if stopping is not None:
        stopping.set()
        await asyncio.wait([task], timeout=timeout)
    if not task.done():
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task


def run_in_background(
    exits: contextlib.AsyncExitStack,
    work: Coroutine[Any, Any, None],
    *,
    name: str,
    on_fatal: OnFatal | None,
    stopping: asyncio.Event | None = None,
) -> asyncio.Task[None]:
    """Start ``work`` as a supervised task whose stop is pushed on ``exits``."""
    task = supervise(asyncio.create_task(work, name=name), on_fatal, stopping=stopping)
    exits.push_async_callback(stop_task, task, stopping)
    return task


__all__ = ["STOP_TIMEOUT", "OnFatal", "PartEnded", "run_in_background", "stop_task", "supervise"]
