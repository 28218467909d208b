import asyncio
import logging

import pytest

from libs.flowcontrol.admission import AdmissionController, breaker_signal, depth_signal, lag_signal, strongest
from libs.flowcontrol.breaker import BreakerState, CircuitBreaker
from libs.flowcontrol.buffer import BoundedBuffer
from libs.flowcontrol.quota import Quota
from libs.flowcontrol.testing import FakeClock
from libs.flowcontrol.throttle import Throttle


def test_lag_signal_maps_lag_between_thresholds() -> None:
    lag = [0.0]
    signal = lag_signal(lambda: lag[0], low=1_000, high=11_000)
    assert signal() == 0.0
    lag[0] = 6_000
    assert signal() == 0.5
    lag[0] = 50_000
    assert signal() == 1.0
    with pytest.raises(ValueError, match="low < high"):
        lag_signal(lambda: 0.0, low=1, high=1)


def test_depth_breaker_and_strongest_signals(clock: FakeClock) -> None:
    buffer: BoundedBuffer[int] = BoundedBuffer(10, clock=clock)
    for reading in range(7):
        buffer.put_nowait(reading)
    assert depth_signal(buffer)() == pytest.approx(0.5)
    breaker = CircuitBreaker(clock=clock)
    assert breaker_signal(breaker)() == 0.0
    breaker.transition_to(BreakerState.HALF_OPEN)
    assert breaker_signal(breaker)() == 0.5
    breaker.transition_to(BreakerState.OPEN)
    assert strongest(depth_signal(buffer), breaker_signal(breaker))() == 1.0


def test_lag_lowers_the_quota_at_once_and_restores_it_gradually(clock: FakeClock) -> None:
    quota = Quota(rate=100, burst=1, clock=clock)
    throttle = Throttle(rate=100, clock=clock)
    lag = [0.0]
    controller = AdmissionController(
        [quota, throttle],
        lag_signal(lambda: lag[0], low=0, high=10_000),
        min_scale=0.1,
        recovery_per_second=0.2,
        clock=clock,
    )
    assert controller.update() == 1.0
    lag[0] = 20_000  # the read side fell far behind
    assert controller.update() == pytest.approx(0.1)
    assert quota.limits("meter").rate == pytest.approx(10)
    assert throttle.rate == pytest.approx(10)
    quota.try_acquire("meter")
    assert quota.try_acquire("meter").retry_after == pytest.approx(0.1)
    lag[0] = 0  # caught up: recover at 0.2 per second, not at once
    clock.tick(1.0)
    assert controller.update() == pytest.approx(0.3)
    clock.tick(2.0)
    assert controller.update() == pytest.approx(0.7)
    lag[0] = 5_000  # half the pressure again: straight down to 0.55
    clock.tick(1.0)
    assert controller.update() == pytest.approx(0.55)
    lag[0] = 0
    clock.tick(10.0)
    assert controller.update() == 1.0
    assert quota.scale == 1.0


def test_a_failing_signal_keeps_the_current_scale(clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    quota = Quota(rate=10, burst=1, clock=clock)
    readings = iter([1.0])

    def signal() -> float:
        return next(readings)  # StopIteration after the first reading

    controller = AdmissionController(quota, signal, min_scale=0.2, clock=clock)
    assert controller.update() == pytest.approx(0.2)
    with caplog.at_level(logging.ERROR):
        assert controller.update() == pytest.approx(0.2)
    assert "admission signal failed" in caplog.text


async def test_run_updates_on_its_interval(clock: FakeClock) -> None:
    quota = Quota(rate=10, burst=1, clock=clock)
    pressure = [1.0]
    controller = AdmissionController(quota, lambda: pressure[0], interval=0.5, clock=clock)
    task = asyncio.create_task(controller.run())
    await clock.settle()
    assert quota.scale == pytest.approx(0.1)
    pressure[0] = 0.0
    await clock.advance(2.0)
    assert quota.scale == pytest.approx(0.3)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
