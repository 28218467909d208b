"""A bounded async buffer with Akka Streams overflow strategies; never unbounded, never silent.

When full, `backpressure` makes producers wait; `drop_new` drops the incoming item; `drop_head`
the oldest buffered one; `drop_tail` the youngest buffered one; `drop_buffer` everything buffered;
`fail` fails the buffer (producers and consumers get `BufferOverflow` from then on). Every dropped
item goes to `on_drop(items, strategy)` and to the observer. A producer cancelled while waiting
inserts nothing, and the slot it was woken for passes to the next producer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from enum import StrEnum
from typing import Generic, TypeVar

from libs.flowcontrol.clock import Clock, MonotonicClock, wait_future
from libs.flowcontrol.errors import BufferClosed, BufferFull, BufferOverflow
from libs.flowcontrol.observer import NULL_OBSERVER, Observer

__all__ = ["BoundedBuffer", "DropCallback", "Offer", "OverflowStrategy"]

T = TypeVar("T")
logger = logging.getLogger(__name__)


class OverflowStrategy(StrEnum):
    """What a full buffer does with one more item (Akka Streams `OverflowStrategy`)."""

    BACKPRESSURE = "backpressure"
    DROP_NEW = "drop_new"
    DROP_HEAD = "drop_head"
    DROP_TAIL = "drop_tail"
    DROP_BUFFER = "drop_buffer"
    FAIL = "fail"


class Offer(StrEnum):
    """The result of a put (Akka's `QueueOfferResult` without the failure cases, which raise)."""

    ENQUEUED = "enqueued"
    DROPPED = "dropped"


DropCallback = Callable[[list[T], OverflowStrategy], object]


class BoundedBuffer(Generic[T]):
    """A FIFO buffer of at most `capacity` items between a producer side and a consumer side."""

    def __init__(
        self,
        capacity: int,
        strategy: OverflowStrategy = OverflowStrategy.BACKPRESSURE,
        *,
        on_drop: DropCallback[T] | None = None,
        clock: Clock | None = None,
        observer: Observer | None = None,
    ) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self._capacity = capacity
        self._strategy = OverflowStrategy(strategy)
        self._on_drop = on_drop
        self._clock = clock or MonotonicClock()
        self._observer = observer or NULL_OBSERVER
        self._items: deque[T] = deque()
        self._putters: deque[asyncio.Future[None]] = deque()
        self._getters: deque[asyncio.Future[None]] = deque()
        self._batchers: list[tuple[int, asyncio.Future[None]]] = []
        self._reserved = 0  # slots promised to woken producers that have not resumed yet
        self._closed = False
        self._failure: BufferOverflow | None = None

    def __len__(self) -> int:
        return len(self._items)

    @property
    def capacity(self) -> int:
        """The most items the buffer ever holds."""
        return self._capacity

    @property
    def strategy(self) -> OverflowStrategy:
        """The overflow strategy."""
        return self._strategy

    @property
    def closed(self) -> bool:
        """True after `close()`."""
        return self._closed

    @property
    def failed(self) -> bool:
        """True after a `fail` overflow."""
        return self._failure is not None

    @property
    def waiting_producers(self) -> int:
        """Producers waiting for space (only under `backpressure`)."""
        return len(self._putters)

    async def put(self, item: T) -> Offer:
        """Add `item`; under `backpressure` wait for space, otherwise apply the strategy at once."""
        self._check_writable()
        if self._strategy is not OverflowStrategy.BACKPRESSURE or (not self._putters and self._free()):
            return self.put_nowait(item)
        started = self._clock.now()
        putter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._putters.append(putter)
        try:
            await putter
        except BaseException:
            if putter.done() and not putter.cancelled() and putter.exception() is None:
                # Woken with a reserved slot but cancelled before using it: hand it on.
                self._reserved -= 1
                self._wake_putters()
            else:
                putter.cancel()
                with contextlib.suppress(ValueError):
                    self._putters.remove(putter)
            raise
        self._reserved -= 1
        if self._closed:
            raise BufferClosed("buffer closed")
        self._append(item)
        self._observer.waited(self._clock.now() - started)
        return Offer.ENQUEUED

    def put_nowait(self, item: T) -> Offer:
        """Add `item` without waiting; a full `backpressure` buffer raises `BufferFull`."""
        self._check_writable()
        if self._free() and not self._putters:
            self._append(item)
            return Offer.ENQUEUED
        return self._overflow(item)

    async def get(self) -> T:
        """Take the oldest item, waiting for one; raise `BufferClosed` once closed and drained."""
        while not self._items:
            self._check_readable()
            getter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._getters.append(getter)
            try:
                await getter
            except BaseException:
                getter.cancel()
                with contextlib.suppress(ValueError):
                    self._getters.remove(getter)
                if self._items and not getter.cancelled():
                    # Woken for an item but cancelled before taking it: wake the next consumer.
                    self._wake_getter()
                raise
        return self._take(1)[0]

    async def get_batch(self, max_items: int, timeout: float | None = None) -> list[T]:
        """Take up to `max_items` items for a batching consumer.

        With `timeout=None`, wait for at least one item and return what is there (up to
        `max_items`). With a timeout, wait until `max_items` are there or `timeout` seconds pass
        and return what is there then, possibly nothing. A closed buffer returns its remaining
        items at once and raises `BufferClosed` when empty.
        """
        if max_items < 1:
            raise ValueError("max_items must be at least 1")
        threshold = 1 if timeout is None else max_items
        deadline = None if timeout is None else self._clock.now() + timeout
        while len(self._items) < threshold and not self._closed and self._failure is None:
            remaining = None if deadline is None else deadline - self._clock.now()
            if remaining is not None and remaining <= 0:
                break
            entry: tuple[int, asyncio.Future[None]] = (threshold, asyncio.get_running_loop().create_future())
            self._batchers.append(entry)
            try:
                await wait_future(entry[1], self._clock, remaining)
            finally:
                entry[1].cancel()
                self._batchers.remove(entry)
        if not self._items:
            if self._closed or self._failure is not None:
                self._check_readable()
            return []
        return self._take(min(max_items, len(self._items)))

    def drain(self, max_items: int | None = None) -> list[T]:
        """Take up to `max_items` (default all) buffered items without waiting."""
        count = len(self._items) if max_items is None else min(max_items, len(self._items))
        return self._take(count) if count else []

    def snapshot(self) -> list[T]:
        """A copy of the buffered items, oldest first (diagnostics and tests)."""
        return list(self._items)

    def close(self) -> None:
        """Refuse further puts; consumers still get the buffered items, then `BufferClosed`."""
        if self._closed:
            return
        self._closed = True
        while self._putters:
            putter = self._putters.popleft()
            if not putter.done():
                putter.set_exception(BufferClosed("buffer closed"))
        self._wake_all_consumers()

    def __aiter__(self) -> BoundedBuffer[T]:
        return self

    async def __anext__(self) -> T:
        try:
            return await self.get()
        except BufferClosed:
            raise StopAsyncIteration from None

    def _free(self) -> int:
        return self._capacity - len(self._items) - self._reserved

    def _overflow(self, item: T) -> Offer:
        strategy = self._strategy
        if strategy is OverflowStrategy.BACKPRESSURE:
            self._observer.rejected(BufferFull.reason)
            raise BufferFull("buffer full")
        if strategy is OverflowStrategy.DROP_NEW:
            self._drop([item])
            return Offer.DROPPED
        if strategy is OverflowStrategy.FAIL:
            self._failure = BufferOverflow(f"buffer of {self._capacity} overflowed")
            lost = list(self._items)
            self._items.clear()
            self._observer.buffer_depth(0)
            self._wake_all_consumers()
            self._drop(lost)
            self._observer.rejected("buffer_overflow")
            raise BufferOverflow(str(self._failure))
        if strategy is OverflowStrategy.DROP_HEAD:
            dropped = [self._items.popleft()]
        elif strategy is OverflowStrategy.DROP_TAIL:
            dropped = [self._items.pop()]
        else:
            dropped = list(self._items)
            self._items.clear()
        self._append(item)
        self._drop(dropped)
        return Offer.ENQUEUED

    def _append(self, item: T) -> None:
        self._items.append(item)
        self._observer.admitted()
        self._observer.buffer_depth(len(self._items))
        self._wake_getter()
        if self._batchers:
            for threshold, future in self._batchers:
                if len(self._items) >= threshold and not future.done():
                    future.set_result(None)

    def _take(self, count: int) -> list[T]:
        taken = [self._items.popleft() for _ in range(count)]
        self._observer.buffer_depth(len(self._items))
        self._wake_putters()
        return taken

    def _drop(self, items: list[T]) -> None:
        if not items:
            return
        self._observer.dropped(self._strategy.value, len(items))
        if self._on_drop is not None:
            try:
                self._on_drop(items, self._strategy)
            except Exception:
                # The buffer is already consistent; a faulty sink must not break producers.
                logger.exception("on_drop callback failed for %d item(s)", len(items))

    def _wake_getter(self) -> None:
        while self._getters:
            getter = self._getters.popleft()
            if not getter.done():
                getter.set_result(None)
                return

    def _wake_putters(self) -> None:
        while self._putters and self._free() > 0:
            putter = self._putters.popleft()
            if putter.done():
                continue
            self._reserved += 1
            putter.set_result(None)

    def _wake_all_consumers(self) -> None:
        while self._getters:
            getter = self._getters.popleft()
            if not getter.done():
                getter.set_result(None)
        for _, future in self._batchers:
            if not future.done():
                future.set_result(None)

    def _check_writable(self) -> None:
        if self._failure is not None:
            raise BufferOverflow(str(self._failure))
        if self._closed:
            raise BufferClosed("buffer closed")

    def _check_readable(self) -> None:
        if self._failure is not None:
            raise BufferOverflow(str(self._failure))
        if self._closed:
            raise BufferClosed("buffer closed")
