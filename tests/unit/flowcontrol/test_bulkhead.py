import asyncio

import pytest

from libs.flowcontrol.bulkhead import Bulkhead
from libs.flowcontrol.errors import BulkheadFull
from libs.flowcontrol.testing import FakeClock, RecordingObserver


async def test_refuses_at_once_beyond_max_concurrent_by_default(clock: FakeClock, observer: RecordingObserver) -> None:
    bulkhead = Bulkhead(2, retry_after=2.5, clock=clock, observer=observer)
    await bulkhead.acquire()
    assert bulkhead.try_acquire()
    assert bulkhead.available == 0
    with pytest.raises(BulkheadFull) as refused:
        await bulkhead.acquire()
    assert refused.value.retry_after == 2.5
    assert not bulkhead.try_acquire()
    bulkhead.release()
    assert bulkhead.in_flight == 1
    assert observer.in_flights == [1, 2, 1]
    assert observer.rejected_reasons == {"bulkhead_full": 2}


async def test_waiters_get_permits_in_arrival_order_within_max_wait(
    clock: FakeClock, observer: RecordingObserver
) -> None:
    bulkhead = Bulkhead(1, max_wait=5.0, clock=clock, observer=observer)
    await bulkhead.acquire()
    order: list[str] = []

    async def caller(name: str) -> None:
        async with bulkhead:
            order.append(name)
            await clock.sleep(1.0)

    tasks = [asyncio.create_task(caller(name)) for name in ("first", "second")]
    await clock.advance(2.0)
    bulkhead.release()
    await clock.advance(1.0)
    assert order == ["first", "second"]
    await clock.advance(1.0)
    await asyncio.gather(*tasks)
    assert bulkhead.in_flight == 0
    assert observer.waits == [2.0, 3.0]


async def test_max_wait_expires_with_bulkhead_full(clock: FakeClock) -> None:
    bulkhead = Bulkhead(1, max_wait=0.5, clock=clock)
    await bulkhead.acquire()
    waiter = asyncio.create_task(bulkhead.acquire())
    await clock.advance(0.5)
    with pytest.raises(BulkheadFull):
        waiter.result()
    assert bulkhead.waiting == 0
    bulkhead.release()
    assert bulkhead.in_flight == 0


async def test_cancelled_waiter_takes_no_permit(clock: FakeClock) -> None:
    bulkhead = Bulkhead(1, max_wait=5.0, clock=clock)
    await bulkhead.acquire()
    cancelled = asyncio.create_task(bulkhead.acquire())
    waiting = asyncio.create_task(bulkhead.acquire())
    await clock.settle()
    cancelled.cancel()
    await clock.settle()
    bulkhead.release()
    await clock.settle()
    assert waiting.done()
    assert not waiting.exception()
    assert bulkhead.in_flight == 1


async def test_waiter_cancelled_after_the_hand_over_passes_the_permit_on(clock: FakeClock) -> None:
    bulkhead = Bulkhead(1, max_wait=5.0, clock=clock)
    await bulkhead.acquire()
    first = asyncio.create_task(bulkhead.acquire())
    second = asyncio.create_task(bulkhead.acquire())
    await clock.settle()
    bulkhead.release()  # hands the permit to `first`...
    first.cancel()  # ...which is cancelled before it resumes
    await clock.settle()
    assert first.cancelled()
    assert second.done()
    assert not second.exception()
    assert bulkhead.in_flight == 1


async def test_max_waiting_bounds_the_queue(clock: FakeClock) -> None:
    bulkhead = Bulkhead(1, max_wait=5.0, max_waiting=1, clock=clock)
    await bulkhead.acquire()
    waiter = asyncio.create_task(bulkhead.acquire())
    await clock.settle()
    with pytest.raises(BulkheadFull):
        await bulkhead.acquire()
    bulkhead.release()
    await clock.settle()
    assert waiter.done()


async def test_raising_the_limit_admits_waiters(clock: FakeClock) -> None:
    bulkhead = Bulkhead(1, max_wait=5.0, clock=clock)
    await bulkhead.acquire()
    waiter = asyncio.create_task(bulkhead.acquire())
    await clock.settle()
    bulkhead.set_max_concurrent(2)
    await clock.settle()
    assert waiter.done()
    assert bulkhead.in_flight == 2


async def test_call_releases_even_on_error(clock: FakeClock) -> None:
    bulkhead = Bulkhead(1, clock=clock)

    async def boom() -> None:
        raise RuntimeError("downstream")

    with pytest.raises(RuntimeError):
        await bulkhead.call(boom)

    async def ok() -> int:
        return 1

    assert await bulkhead.call(ok) == 1
    assert bulkhead.in_flight == 0
