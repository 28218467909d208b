"""Background parts: a death is reported once, a stop never raises, the exit stack stops them in reverse."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from libs.platform.tasks import PartEnded, run_in_background, stop_task


async def test_a_part_that_fails_is_reported_and_its_stop_does_not_raise() -> None:
    deaths: list[BaseException] = []

    async def consumer() -> None:
        raise ConnectionError("broker gone")

    async with contextlib.AsyncExitStack() as exits:
        task = run_in_background(exits, consumer(), name="consumer", on_fatal=deaths.append)
        with contextlib.suppress(ConnectionError):
            await task
        await asyncio.sleep(0)  # done callbacks run on the next loop turn
    assert [type(error) for error in deaths] == [ConnectionError]


async def test_a_part_with_a_stop_event_that_returns_early_is_a_death() -> None:
    deaths: list[BaseException] = []
    stopping = asyncio.Event()

    async def relay() -> None:
        return

    async with contextlib.AsyncExitStack() as exits:
        task = run_in_background(exits, relay(), name="outbox-relay", on_fatal=deaths.append, stopping=stopping)
        await task
        await asyncio.sleep(0)
    assert len(deaths) == 1
    assert isinstance(deaths[0], PartEnded)
    assert "outbox-relay" in str(deaths[0])


async def test_a_part_stopped_by_its_event_drains_and_is_no_death() -> None:
    deaths: list[BaseException] = []
    stopping = asyncio.Event()
    drained: list[str] = []

    async def relay() -> None:
        await stopping.wait()
        drained.append("drained")

    async with contextlib.AsyncExitStack() as exits:
        run_in_background(exits, relay(), name="outbox-relay", on_fatal=deaths.append, stopping=stopping)
        await asyncio.sleep(0)
    assert drained == ["drained"]
    assert deaths == []


async def test_the_stack_cancels_parts_in_reverse_order_of_start() -> None:
    stopped: list[str] = []

    async def part(name: str) -> None:
        try:
            await asyncio.Event().wait()
        finally:
            stopped.append(name)

    async with contextlib.AsyncExitStack() as exits:
        for name in ("mqtt-ingress", "ftp-ingress", "lag-probe"):
            run_in_background(exits, part(name), name=name, on_fatal=None)
        await asyncio.sleep(0)
    assert stopped == ["lag-probe", "ftp-ingress", "mqtt-ingress"]


async def test_stopping_a_task_that_already_failed_does_not_raise_again() -> None:
    async def broken() -> None:
        raise ValueError("bad")

    task = asyncio.create_task(broken())
    with pytest.raises(ValueError, match="bad"):
        await task
    await stop_task(task)
    assert task.done()


async def test_a_part_that_does_not_drain_in_time_is_cancelled() -> None:
    stopping = asyncio.Event()
    cancelled: list[bool] = []

    async def stuck() -> None:
        try:
            await asyncio.Event().wait()  # ignores the stop event
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    task = asyncio.create_task(stuck())
    await asyncio.sleep(0)
    await stop_task(task, stopping, timeout=0.01)
    assert stopping.is_set()
    assert cancelled == [True]
    assert task.cancelled()
