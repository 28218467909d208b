import asyncio
import contextlib

import pytest

from libs.flowcontrol.errors import LimitExceeded
from libs.flowcontrol.limits import AdaptiveLimiter, AIMDLimit, GradientLimit
from libs.flowcontrol.testing import FakeClock, RecordingObserver


def test_aimd_grows_by_one_while_the_limit_is_used() -> None:
    aimd = AIMDLimit(10, max_limit=12, latency_threshold=1.0)
    assert aimd.update(0.1, in_flight=5, dropped=False) == 11
    assert aimd.update(0.1, in_flight=2, dropped=False) == 11  # app-limited: no growth
    assert aimd.update(0.1, in_flight=11, dropped=False) == 12
    assert aimd.update(0.1, in_flight=12, dropped=False) == 12  # max


def test_aimd_backs_off_on_drops_and_slow_calls() -> None:
    aimd = AIMDLimit(20, min_limit=15, backoff_ratio=0.9, latency_threshold=1.0)
    assert aimd.update(0.1, in_flight=20, dropped=True) == 18
    assert aimd.update(1.5, in_flight=20, dropped=False) == 16
    assert aimd.update(1.5, in_flight=20, dropped=False) == 15  # min


def test_gradient_grows_while_latency_is_steady_and_shrinks_when_it_rises() -> None:
    gradient = GradientLimit(20, max_limit=100, warmup=5, long_window=50)
    for _ in range(30):
        gradient.update(0.010, in_flight=gradient.limit, dropped=False)
    grown = gradient.limit
    assert grown > 20
    for _ in range(10):
        gradient.update(0.050, in_flight=gradient.limit, dropped=False)
    shrunk = gradient.limit
    assert shrunk < grown * 0.8
    for _ in range(60):
        gradient.update(0.010, in_flight=gradient.limit, dropped=False)
    assert gradient.limit > shrunk


def test_gradient_respects_bounds_and_ignores_app_limited_samples() -> None:
    gradient = GradientLimit(10, min_limit=8, max_limit=12, warmup=1)
    for _ in range(50):
        gradient.update(0.01, in_flight=gradient.limit, dropped=False)
    assert gradient.limit == 12
    for _ in range(50):
        gradient.update(1.0, in_flight=gradient.limit, dropped=False)
    assert gradient.limit == 8
    before = gradient.limit
    gradient.update(5.0, in_flight=1, dropped=False)
    assert gradient.limit == before
    assert gradient.update(0.0, in_flight=8, dropped=False) == before


def test_limit_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="min_limit"):
        AIMDLimit(5, min_limit=10)
    with pytest.raises(ValueError, match="backoff_ratio"):
        AIMDLimit(backoff_ratio=1.0)
    with pytest.raises(ValueError, match="smoothing"):
        GradientLimit(smoothing=0)


async def _load(clock: FakeClock, limiter: AdaptiveLimiter, latency: float, calls: int) -> None:
    async def downstream() -> None:
        await clock.sleep(latency)

    async def one() -> None:
        with contextlib.suppress(LimitExceeded):
            await limiter.call(downstream)

    await clock.run(asyncio.gather(*(one() for _ in range(calls))))


async def test_limiter_follows_rising_and_falling_latency(clock: FakeClock, observer: RecordingObserver) -> None:
    limiter = AdaptiveLimiter(
        AIMDLimit(4, max_limit=20, latency_threshold=0.5), max_wait=10.0, clock=clock, observer=observer
    )
    for _ in range(5):
        await _load(clock, limiter, latency=0.1, calls=limiter.limit)
    high = limiter.limit
    assert high > 4
    for _ in range(3):
        await _load(clock, limiter, latency=1.0, calls=limiter.limit)
    low = limiter.limit
    assert low < high
    for _ in range(3):
        await _load(clock, limiter, latency=0.1, calls=limiter.limit)
    assert limiter.limit > low
    assert observer.limits[-1] == limiter.limit
    assert limiter.in_flight == 0


async def test_limiter_refuses_at_the_limit_and_drops_shrink_it(clock: FakeClock) -> None:
    limiter = AdaptiveLimiter(AIMDLimit(2), clock=clock)
    ticket = await limiter.acquire()
    async with limiter:
        with pytest.raises(LimitExceeded):
            await limiter.acquire()
    assert limiter.limit == 3  # a success at full use grows the limit
    limiter.on_exception(ticket, TimeoutError())
    assert limiter.limit == 2  # int(3 * 0.9)
    assert limiter.in_flight == 0
    with pytest.raises(ValueError, match="not a load signal"):
        async with limiter:
            raise ValueError("not a load signal")
    assert limiter.limit == 2


async def test_waiters_are_admitted_when_the_limit_grows(clock: FakeClock) -> None:
    limiter = AdaptiveLimiter(AIMDLimit(1, max_limit=5), max_wait=5.0, clock=clock)
    first = await limiter.acquire()
    waiters = [asyncio.create_task(limiter.acquire()) for _ in range(2)]
    await clock.settle()
    limiter.on_success(first)  # grows the limit to 2 and frees a permit
    await clock.settle()
    assert all(w.done() for w in waiters)
    assert limiter.in_flight == 2
