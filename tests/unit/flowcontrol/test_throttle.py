import asyncio

import pytest

from libs.flowcontrol.errors import Throttled
from libs.flowcontrol.testing import FakeClock, RecordingObserver
from libs.flowcontrol.throttle import Throttle


async def _paced(clock: FakeClock, throttle: Throttle, name: str, log: list[tuple[str, float]]) -> None:
    await throttle.acquire()
    log.append((name, round(clock.now() - 1_000.0, 9)))


async def test_burst_goes_at_once_then_callers_wait_their_turn(clock: FakeClock) -> None:
    throttle = Throttle(rate=10, burst=2, max_wait=5, clock=clock)
    log: list[tuple[str, float]] = []
    tasks = [asyncio.create_task(_paced(clock, throttle, f"c{i}", log)) for i in range(5)]
    await clock.settle()
    assert log == [("c0", 0.0), ("c1", 0.0)]
    assert throttle.waiting == 3
    await clock.advance(1.0)
    assert log == [("c0", 0.0), ("c1", 0.0), ("c2", 0.1), ("c3", 0.2), ("c4", 0.3)]
    await asyncio.gather(*tasks)


async def test_refused_at_once_when_the_wait_would_pass_max_wait(clock: FakeClock, observer: RecordingObserver) -> None:
    throttle = Throttle(rate=10, burst=1, max_wait=0.25, clock=clock, observer=observer)
    log: list[tuple[str, float]] = []
    tasks = [asyncio.create_task(_paced(clock, throttle, f"c{i}", log)) for i in range(3)]
    await clock.settle()
    assert throttle.projected_wait() == pytest.approx(0.3)
    with pytest.raises(Throttled) as refused:
        await throttle.acquire()
    assert refused.value.retry_after == pytest.approx(0.05)
    assert throttle.waiting == 2  # the refused caller reserved nothing
    await clock.advance(1.0)
    await asyncio.gather(*tasks)
    assert observer.rejected_reasons == {"throttle": 1}
    assert observer.admitted_count == 3
    assert observer.waits == pytest.approx([0.1, 0.2])


async def test_refused_when_the_wait_would_pass_the_callers_deadline(clock: FakeClock) -> None:
    throttle = Throttle(rate=1, burst=1, max_wait=10, clock=clock)
    await throttle.acquire()
    with pytest.raises(Throttled):
        await throttle.acquire(deadline=clock.now() + 0.5)
    with pytest.raises(Throttled):
        await throttle.acquire(max_wait=0.5)
    waited = await clock.run(throttle.acquire(deadline=clock.now() + 1.0))
    assert waited == pytest.approx(1.0)


async def test_cancelled_waiter_gives_its_slot_to_the_next(clock: FakeClock) -> None:
    throttle = Throttle(rate=10, burst=1, max_wait=5, clock=clock)
    log: list[tuple[str, float]] = []
    tasks = {f"c{i}": asyncio.create_task(_paced(clock, throttle, f"c{i}", log)) for i in range(4)}
    await clock.settle()
    tasks["c1"].cancel()  # the head of the waiters
    tasks["c2"].cancel()  # a waiter behind it
    await clock.advance(1.0)
    assert log == [("c0", 0.0), ("c3", 0.1)]
    assert throttle.waiting == 0
    assert throttle.projected_wait() == 0


async def test_a_waiter_cancelled_right_after_reaching_the_head_passes_the_turn_on(clock: FakeClock) -> None:
    throttle = Throttle(rate=10, burst=1, max_wait=5, clock=clock)
    log: list[tuple[str, float]] = []
    tasks: dict[str, asyncio.Task[None]] = {}

    async def first_then_cancel_second() -> None:
        await _paced(clock, throttle, "c1", log)
        # c1 just handed the head to c2, which has not run yet: cancel it in this very step.
        tasks["c2"].cancel()

    await throttle.acquire()
    tasks["c1"] = asyncio.create_task(first_then_cancel_second())
    tasks["c2"] = asyncio.create_task(_paced(clock, throttle, "c2", log))
    tasks["c3"] = asyncio.create_task(_paced(clock, throttle, "c3", log))
    await clock.advance(1.0)
    assert log == [("c1", 0.1), ("c3", 0.2)]
    assert tasks["c2"].cancelled()


async def test_try_acquire_never_overtakes_waiters(clock: FakeClock) -> None:
    throttle = Throttle(rate=10, burst=1, max_wait=5, clock=clock)
    assert throttle.try_acquire()
    assert not throttle.try_acquire()
    task = asyncio.create_task(throttle.acquire())
    await clock.settle()
    await clock.advance(0.1)
    assert task.done()
    assert not throttle.try_acquire()
    await clock.advance(0.1)
    assert throttle.try_acquire()


async def test_rate_change_carries_the_debt_over(clock: FakeClock) -> None:
    throttle = Throttle(rate=1, burst=1, max_wait=10, clock=clock)
    await throttle.acquire()
    throttle.set_rate(10)
    assert throttle.projected_wait() == pytest.approx(0.1)
    throttle.set_scale(0.5)
    assert throttle.rate == 5
    assert throttle.projected_wait() == pytest.approx(0.2)


async def test_cost_must_fit_the_burst(clock: FakeClock) -> None:
    throttle = Throttle(rate=1, burst=2, clock=clock)
    with pytest.raises(ValueError, match="burst"):
        await throttle.acquire(cost=3)
    assert await throttle.acquire(cost=2) == 0
