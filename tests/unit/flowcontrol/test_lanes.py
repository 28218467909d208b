import asyncio

from libs.flowcontrol.lanes import QuotaLanes
from libs.flowcontrol.quota import Quota
from libs.flowcontrol.testing import FakeClock


def lanes_of(clock: FakeClock, *, max_lanes: int = 2, max_per_lane: int = 3) -> tuple[Quota, QuotaLanes[str]]:
    quota = Quota(1.0, 1.0, clock=clock)  # one item per second per key
    return quota, QuotaLanes(quota, max_lanes=max_lanes, max_per_lane=max_per_lane, clock=clock)


async def test_parked_items_leave_in_order_at_the_keys_rate_through_one_scheduler(clock: FakeClock) -> None:
    quota, lanes = lanes_of(clock)
    assert quota.try_acquire("a").allowed  # a's bucket is empty now
    released: list[tuple[float, str]] = []

    async def release(item: str) -> None:
        released.append((clock.now() - 1_000.0, item))

    for item in ("a1", "a2", "a3"):
        assert lanes.park("a", 1, item)
    assert lanes.park("b", 1, "b1")  # b's bucket is full: out at once
    task = asyncio.create_task(lanes.run(release))
    await clock.advance(0.5)
    assert clock.sleepers == 1  # one scheduler asleep, however many items are parked
    await clock.advance(2.5)
    assert released == [(0.0, "b1"), (1.0, "a1"), (2.0, "a2"), (3.0, "a3")]
    assert len(lanes) == 0
    assert lanes.lanes == 0
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_park_refuses_beyond_the_lane_and_beyond_the_number_of_lanes(clock: FakeClock) -> None:
    _, lanes = lanes_of(clock, max_lanes=2, max_per_lane=2)
    assert lanes.park("a", 1, "a1")
    assert lanes.park("a", 1, "a2")
    assert not lanes.park("a", 1, "a3")  # a's lane is full
    assert lanes.park("b", 1, "b1")
    assert not lanes.park("c", 1, "c1")  # no third lane
    assert lanes.capacity == 4
    assert len(lanes) == 3
    assert sorted(lanes.clear()) == ["a1", "a2", "b1"]
    assert len(lanes) == 0
    assert lanes.park("c", 1, "c1")


async def test_a_new_lane_wakes_the_sleeping_scheduler(clock: FakeClock) -> None:
    quota, lanes = lanes_of(clock)
    quota.try_acquire("a")
    released: list[str] = []

    async def release(item: str) -> None:
        released.append(item)

    lanes.park("a", 1, "a1")
    task = asyncio.create_task(lanes.run(release))
    await clock.settle()
    assert released == []  # asleep until a's token is back, 1 s from now
    lanes.park("b", 1, "b1")
    await clock.settle()
    assert released == ["b1"]
    await clock.advance(1.0)
    assert released == ["b1", "a1"]
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
