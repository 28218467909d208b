import asyncio
import logging

import pytest

from libs.flowcontrol.buffer import BoundedBuffer, Offer, OverflowStrategy
from libs.flowcontrol.errors import BufferClosed, BufferFull, BufferOverflow
from libs.flowcontrol.testing import FakeClock, RecordingObserver

S = OverflowStrategy


class DropSink:
    def __init__(self) -> None:
        self.calls: list[tuple[list[int], OverflowStrategy]] = []

    def __call__(self, items: list[int], strategy: OverflowStrategy) -> None:
        self.calls.append((items, strategy))


def filled(strategy: OverflowStrategy, sink: DropSink, clock: FakeClock, capacity: int = 3) -> BoundedBuffer[int]:
    buffer: BoundedBuffer[int] = BoundedBuffer(capacity, strategy, on_drop=sink, clock=clock)
    for reading in range(1, capacity + 1):
        assert buffer.put_nowait(reading) is Offer.ENQUEUED
    return buffer


async def test_drop_new_drops_the_incoming_item(clock: FakeClock) -> None:
    sink = DropSink()
    buffer = filled(S.DROP_NEW, sink, clock)
    assert await buffer.put(4) is Offer.DROPPED
    assert buffer.drain() == [1, 2, 3]
    assert sink.calls == [([4], S.DROP_NEW)]


async def test_drop_head_drops_the_oldest(clock: FakeClock) -> None:
    sink = DropSink()
    buffer = filled(S.DROP_HEAD, sink, clock)
    assert await buffer.put(4) is Offer.ENQUEUED
    assert buffer.drain() == [2, 3, 4]
    assert sink.calls == [([1], S.DROP_HEAD)]


async def test_drop_tail_drops_the_youngest_buffered(clock: FakeClock) -> None:
    sink = DropSink()
    buffer = filled(S.DROP_TAIL, sink, clock)
    assert await buffer.put(4) is Offer.ENQUEUED
    assert buffer.drain() == [1, 2, 4]
    assert sink.calls == [([3], S.DROP_TAIL)]


async def test_drop_buffer_drops_everything_buffered(clock: FakeClock) -> None:
    sink = DropSink()
    buffer = filled(S.DROP_BUFFER, sink, clock)
    assert await buffer.put(4) is Offer.ENQUEUED
    assert buffer.drain() == [4]
    assert sink.calls == [([1, 2, 3], S.DROP_BUFFER)]


async def test_fail_fails_the_buffer_for_producers_and_consumers(clock: FakeClock) -> None:
    sink = DropSink()
    buffer: BoundedBuffer[int] = BoundedBuffer(2, S.FAIL, on_drop=sink, clock=clock)
    await buffer.put(1)
    await buffer.put(2)
    with pytest.raises(BufferOverflow):
        await buffer.put(3)  # the producer keeps item 3: an exception, not a silent drop
    assert buffer.failed
    assert len(buffer) == 0
    assert sink.calls == [([1, 2], S.FAIL)]
    with pytest.raises(BufferOverflow):
        await buffer.put(4)
    with pytest.raises(BufferOverflow):
        await buffer.get()


async def test_fail_wakes_a_waiting_consumer_with_the_failure(clock: FakeClock) -> None:
    buffer: BoundedBuffer[int] = BoundedBuffer(1, S.FAIL, clock=clock)
    consumer = asyncio.create_task(buffer.get_batch(5, timeout=10))
    await clock.settle()
    buffer.put_nowait(1)  # wakes nobody: the batch wants 5
    with pytest.raises(BufferOverflow):
        buffer.put_nowait(2)
    await clock.settle()
    with pytest.raises(BufferOverflow):
        consumer.result()


async def test_backpressure_makes_the_producer_wait_for_space(clock: FakeClock, observer: RecordingObserver) -> None:
    buffer: BoundedBuffer[int] = BoundedBuffer(2, clock=clock, observer=observer)
    await buffer.put(1)
    await buffer.put(2)
    producer = asyncio.create_task(buffer.put(3))
    await clock.settle()
    assert not producer.done()
    assert buffer.waiting_producers == 1
    with pytest.raises(BufferFull):
        buffer.put_nowait(99)
    await clock.advance(0.5)
    assert await buffer.get() == 1
    await clock.settle()
    assert producer.result() is Offer.ENQUEUED
    assert buffer.drain() == [2, 3]
    assert observer.waits == [0.5]
    assert observer.rejected_reasons == {"buffer_full": 1}
    assert max(observer.depths) == 2


async def test_cancelled_waiting_producer_inserts_nothing(clock: FakeClock) -> None:
    buffer: BoundedBuffer[int] = BoundedBuffer(1, clock=clock)
    await buffer.put(1)
    cancelled = asyncio.create_task(buffer.put(2))
    waiting = asyncio.create_task(buffer.put(3))
    await clock.settle()
    cancelled.cancel()
    await clock.settle()
    assert buffer.waiting_producers == 1
    assert await buffer.get() == 1
    await clock.settle()
    assert waiting.done()
    assert buffer.drain() == [3]


async def test_producer_cancelled_after_being_woken_hands_its_slot_on(clock: FakeClock) -> None:
    buffer: BoundedBuffer[int] = BoundedBuffer(1, clock=clock)
    await buffer.put(1)
    first = asyncio.create_task(buffer.put(2))
    second = asyncio.create_task(buffer.put(3))
    await clock.settle()
    assert buffer.drain() == [1]  # wakes `first` with a reserved slot...
    first.cancel()  # ...and it is cancelled before it could use it
    await clock.settle()
    assert first.cancelled()
    assert second.result() is Offer.ENQUEUED
    assert buffer.drain() == [3]
    assert buffer.waiting_producers == 0
    assert await buffer.put(4) is Offer.ENQUEUED  # no slot leaked either way


async def test_newcomers_queue_behind_waiting_producers(clock: FakeClock) -> None:
    buffer: BoundedBuffer[int] = BoundedBuffer(1, clock=clock)
    await buffer.put(1)
    early = asyncio.create_task(buffer.put(2))
    await clock.settle()
    assert buffer.drain() == [1]
    late = asyncio.create_task(buffer.put(3))  # a slot is free but reserved for `early`
    await clock.settle()
    assert early.done()
    assert not late.done()
    assert await buffer.get() == 2
    await clock.settle()
    assert await buffer.get() == 3


async def test_consumer_cancelled_after_being_woken_wakes_the_next(clock: FakeClock) -> None:
    buffer: BoundedBuffer[int] = BoundedBuffer(2, clock=clock)
    first = asyncio.create_task(buffer.get())
    second = asyncio.create_task(buffer.get())
    await clock.settle()
    buffer.put_nowait(7)  # wakes `first`...
    first.cancel()  # ...which is cancelled before taking it
    await clock.settle()
    assert second.result() == 7


async def test_get_batch_returns_a_full_batch_at_once_or_what_is_there_at_the_timeout(clock: FakeClock) -> None:
    buffer: BoundedBuffer[int] = BoundedBuffer(10, clock=clock)
    batch = asyncio.create_task(buffer.get_batch(3, timeout=1.0))
    await clock.settle()
    for reading in (1, 2, 3, 4):
        buffer.put_nowait(reading)
    await clock.settle()
    assert batch.result() == [1, 2, 3]
    partial = asyncio.create_task(buffer.get_batch(3, timeout=1.0))
    await clock.advance(0.99)
    assert not partial.done()
    await clock.advance(0.01)
    assert partial.result() == [4]
    assert await clock.run(buffer.get_batch(3, timeout=0.5)) == []


async def test_get_batch_without_timeout_waits_for_the_first_item(clock: FakeClock) -> None:
    buffer: BoundedBuffer[int] = BoundedBuffer(10, clock=clock)
    batch = asyncio.create_task(buffer.get_batch(5))
    await clock.settle()
    assert not batch.done()
    buffer.put_nowait(1)
    buffer.put_nowait(2)
    await clock.settle()
    assert batch.result() == [1, 2]


async def test_close_refuses_puts_then_drains_then_raises(clock: FakeClock) -> None:
    buffer: BoundedBuffer[int] = BoundedBuffer(1, clock=clock)
    await buffer.put(1)
    producer = asyncio.create_task(buffer.put(2))
    await clock.settle()
    buffer.close()
    await clock.settle()
    with pytest.raises(BufferClosed):
        producer.result()
    with pytest.raises(BufferClosed):
        await buffer.put(3)
    assert [reading async for reading in buffer] == [1]
    with pytest.raises(BufferClosed):
        await buffer.get_batch(10, timeout=1)
    buffer.close()  # idempotent


async def test_close_wakes_waiting_consumers(clock: FakeClock) -> None:
    buffer: BoundedBuffer[int] = BoundedBuffer(3, clock=clock)
    getter = asyncio.create_task(buffer.get())
    batcher = asyncio.create_task(buffer.get_batch(3, timeout=60))
    await clock.settle()
    buffer.put_nowait(1)
    await clock.settle()
    assert getter.result() == 1
    buffer.put_nowait(2)
    buffer.close()
    await clock.settle()
    assert batcher.result() == [2]


async def test_a_failing_drop_sink_is_logged_not_raised(clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    def broken(items: list[int], strategy: OverflowStrategy) -> None:
        raise RuntimeError("dead-letter producer down")

    buffer: BoundedBuffer[int] = BoundedBuffer(1, S.DROP_HEAD, on_drop=broken, clock=clock)
    buffer.put_nowait(1)
    with caplog.at_level(logging.ERROR):
        assert buffer.put_nowait(2) is Offer.ENQUEUED
    assert "on_drop callback failed" in caplog.text
    assert buffer.drain() == [2]


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError, match="capacity"):
        BoundedBuffer(0)
