import asyncio

import pytest

from libs.flowcontrol.clock import MonotonicClock, wait_future
from libs.flowcontrol.testing import FakeClock


async def test_fake_sleep_parks_until_advanced_and_wakes_in_deadline_order(clock: FakeClock) -> None:
    woke: list[tuple[str, float]] = []

    async def sleeper(name: str, seconds: float) -> None:
        await clock.sleep(seconds)
        woke.append((name, clock.now()))

    tasks = [asyncio.create_task(sleeper("late", 2.0)), asyncio.create_task(sleeper("early", 1.0))]
    await clock.settle()
    assert clock.sleepers == 2
    await clock.advance(0.5)
    assert woke == []
    await clock.advance(2.0)
    assert woke == [("early", 1_001.0), ("late", 1_002.0)]
    assert clock.now() == 1_002.5
    await asyncio.gather(*tasks)


async def test_work_scheduled_by_a_woken_task_runs_within_the_same_advance(clock: FakeClock) -> None:
    async def twice() -> float:
        await clock.sleep(1.0)
        await clock.sleep(1.0)
        return clock.now()

    task = asyncio.create_task(twice())
    await clock.advance(5.0)
    assert task.done()
    assert task.result() == 1_002.0


async def test_cancelled_sleeper_is_skipped(clock: FakeClock) -> None:
    task = asyncio.create_task(clock.sleep(1.0))
    await clock.settle()
    task.cancel()
    await clock.settle()
    assert clock.sleepers == 0
    assert clock.next_deadline is None
    await clock.advance(2.0)
    assert task.cancelled()


async def test_advance_refuses_to_go_back(clock: FakeClock) -> None:
    with pytest.raises(ValueError, match="back"):
        await clock.advance(-1.0)


async def test_run_advances_time_until_the_task_is_done(clock: FakeClock) -> None:
    async def work() -> str:
        await clock.sleep(3.0)
        await clock.sleep(4.0)
        return "done"

    assert await clock.run(work()) == "done"
    assert clock.now() == 1_007.0


async def test_run_fails_fast_when_the_task_waits_on_something_else(clock: FakeClock) -> None:
    never: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    with pytest.raises(RuntimeError, match="not waiting"):
        await clock.run(never)


async def test_monotonic_clock_moves_forward() -> None:
    real = MonotonicClock()
    before = real.now()
    await real.sleep(0)
    assert real.now() >= before


async def test_wait_future_times_out_on_the_clock_without_cancelling_the_future(clock: FakeClock) -> None:
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    waiter = asyncio.create_task(wait_future(future, clock, 2.0))
    await clock.advance(1.0)
    assert not waiter.done()
    await clock.advance(1.0)
    assert waiter.result() is False
    assert not future.cancelled()


async def test_wait_future_returns_when_the_future_completes(clock: FakeClock) -> None:
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    waiter = asyncio.create_task(wait_future(future, clock, 10.0))
    await clock.settle()
    future.set_exception(ValueError("kept for the caller"))
    await clock.settle()
    assert waiter.result() is True
    assert isinstance(future.exception(), ValueError)
    assert clock.sleepers == 0
    assert await wait_future(future, clock, None) is True
