import asyncio
import logging

import pytest

from libs.flowcontrol.breaker import BreakerState, CircuitBreaker, StateTransition, WindowType
from libs.flowcontrol.errors import CallNotPermitted
from libs.flowcontrol.testing import FakeClock, RecordingObserver
from libs.flowcontrol.window import CountWindow, TimeWindow

CLOSED, HALF_OPEN, OPEN = BreakerState.CLOSED, BreakerState.HALF_OPEN, BreakerState.OPEN


class SoapFault(Exception):
    pass


class NotFound(Exception):
    pass


def breaker(clock: FakeClock, **settings: object) -> CircuitBreaker:
    defaults: dict[str, object] = {
        "window_size": 4,
        "minimum_calls": 4,
        "failure_rate_threshold": 50.0,
        "wait_in_open": 10.0,
        "permitted_calls_in_half_open": 2,
    }
    defaults.update(settings)
    return CircuitBreaker("customers_soap", clock=clock, **defaults)  # type: ignore[arg-type]


def succeed(b: CircuitBreaker, times: int = 1) -> None:
    for _ in range(times):
        b.record_success(b.acquire())


def fail(b: CircuitBreaker, times: int = 1, error: Exception | None = None) -> None:
    for _ in range(times):
        b.record_exception(b.acquire(), error or SoapFault("timeout"))


def test_stays_closed_below_the_minimum_number_of_calls(clock: FakeClock) -> None:
    b = breaker(clock)
    fail(b, 3)
    assert b.state is CLOSED
    fail(b)
    assert b.state is OPEN


def test_opens_at_the_failure_rate_threshold(clock: FakeClock) -> None:
    b = breaker(clock)
    succeed(b, 2)
    fail(b)
    assert b.state is CLOSED  # 3 calls < minimum
    fail(b)
    assert b.state is OPEN  # 2 of 4 = 50 %


def test_count_window_rolls_over(clock: FakeClock) -> None:
    b = breaker(clock, failure_rate_threshold=75.0)
    fail(b, 2)
    succeed(b, 2)  # 50 %
    succeed(b, 1)  # the oldest failure rolls out: 1 of 4
    assert b.snapshot().calls == 4
    assert b.snapshot().failed == 1
    fail(b, 2)  # S S F F: 50 %
    assert b.state is CLOSED
    fail(b)  # S F F F: 75 %
    assert b.state is OPEN


def test_time_window_forgets_outcomes_older_than_the_window(clock: FakeClock) -> None:
    b = breaker(clock, window_type=WindowType.TIME_BASED, window_size=10, minimum_calls=3)
    fail(b, 2)
    clock.tick(9.5)
    assert b.snapshot().calls == 2  # still inside the last 10 seconds
    clock.tick(1.0)
    assert b.snapshot().calls == 0  # the first second left the window
    succeed(b, 2)
    fail(b)
    assert b.state is CLOSED  # 1 of 3
    fail(b)
    assert b.state is OPEN  # 2 of 4


def test_minimum_calls_is_capped_by_a_count_window(clock: FakeClock) -> None:
    b = breaker(clock, window_size=2, minimum_calls=100)
    fail(b, 2)
    assert b.state is OPEN


def test_slow_calls_open_the_breaker_even_when_they_succeed(clock: FakeClock) -> None:
    b = breaker(clock, slow_call_duration_threshold=1.0, slow_call_rate_threshold=50.0)
    for duration in (0.5, 1.0, 2.0):  # exactly at the threshold is not slow
        permit = b.acquire()
        clock.tick(duration)
        b.record_success(permit)
    assert b.snapshot().slow == 1
    assert b.state is CLOSED
    permit = b.acquire()
    clock.tick(3.0)
    b.record_success(permit)
    assert b.state is OPEN


async def test_open_refuses_with_the_time_until_half_open(clock: FakeClock, observer: RecordingObserver) -> None:
    b = breaker(clock, observer=observer)
    fail(b, 4)
    clock.tick(4.0)
    with pytest.raises(CallNotPermitted) as refused:
        b.acquire()
    assert refused.value.retry_after == pytest.approx(6.0)
    assert refused.value.reason == "breaker_open"
    clock.tick(6.0)
    assert b.state is HALF_OPEN
    assert observer.breaker_states == [0, 2, 1]
    assert observer.rejected_reasons == {"breaker_open": 1}


async def test_half_open_admits_only_the_permitted_concurrent_calls(clock: FakeClock) -> None:
    b = breaker(clock)
    fail(b, 4)
    clock.tick(10.0)
    release = asyncio.Event()

    async def probe() -> str:
        await release.wait()
        return "customer"

    probes = [asyncio.create_task(b.call(probe)) for _ in range(3)]
    await clock.settle()
    assert probes[2].done()
    with pytest.raises(CallNotPermitted) as refused:
        probes[2].result()
    assert refused.value.retry_after is None
    with pytest.raises(CallNotPermitted):
        b.acquire()
    release.set()
    assert await asyncio.gather(*probes[:2]) == ["customer", "customer"]
    assert b.state is CLOSED


def test_half_open_goes_back_to_open_when_the_trial_calls_fail(clock: FakeClock) -> None:
    b = breaker(clock)
    fail(b, 4)
    clock.tick(10.0)
    succeed(b)
    assert b.state is HALF_OPEN
    fail(b)
    assert b.state is OPEN


def test_half_open_gives_up_after_its_max_wait(clock: FakeClock) -> None:
    b = breaker(clock, max_wait_in_half_open=5.0)
    fail(b, 4)
    clock.tick(10.0)
    b.acquire()  # a trial call that never reports back
    clock.tick(5.0)
    assert b.state is OPEN


def test_ignored_exceptions_count_neither_way_and_return_the_trial_permit(clock: FakeClock) -> None:
    b = breaker(clock, ignore_exceptions=(NotFound,))
    fail(b, 4, NotFound("customer 7"))
    assert b.snapshot().calls == 0
    fail(b, 4)
    clock.tick(10.0)
    for _ in range(5):
        assert b.record_exception(b.acquire(), NotFound("customer 7")) == "ignored"
    assert b.state is HALF_OPEN
    succeed(b, 2)
    assert b.state is CLOSED


def test_with_a_record_list_other_exceptions_count_as_success(clock: FakeClock) -> None:
    b = breaker(clock, record_exceptions=(SoapFault,), ignore_exceptions=(NotFound,))
    assert b.classify(ValueError()) == "success"
    assert b.classify(SoapFault()) == "failure"
    assert b.classify(NotFound()) == "ignored"
    fail(b, 4, ValueError("bad input"))
    assert b.state is CLOSED
    assert b.snapshot().failed == 0


def test_listeners_see_every_transition_and_a_failing_one_is_only_logged(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[StateTransition] = []

    def broken(_: StateTransition) -> None:
        raise RuntimeError("listener bug")

    b = breaker(clock)
    b.add_listener(broken)
    b.add_listener(seen.append)
    with caplog.at_level(logging.ERROR):
        fail(b, 4)
        clock.tick(10.0)
        succeed(b, 2)
    assert [(t.from_state, t.to_state) for t in seen] == [(CLOSED, OPEN), (OPEN, HALF_OPEN), (HALF_OPEN, CLOSED)]
    assert seen[1].at == 1_010.0
    assert seen[0].breaker == "customers_soap"
    assert "listener failed" in caplog.text


async def test_fallback_answers_refusals_and_counted_failures_only(clock: FakeClock) -> None:
    b = breaker(clock, ignore_exceptions=(NotFound,))

    async def cached(error: BaseException) -> str:
        return f"cached after {type(error).__name__}"

    async def soap_fault() -> str:
        raise SoapFault("503")

    async def not_found() -> str:
        raise NotFound("customer 7")

    assert await b.call(soap_fault, fallback=cached) == "cached after SoapFault"
    with pytest.raises(NotFound):
        await b.call(not_found, fallback=cached)
    with pytest.raises(SoapFault):
        await b.call(soap_fault)
    b.transition_to(OPEN)
    assert await b.call(soap_fault, fallback=cached) == "cached after CallNotPermitted"
    with pytest.raises(CallNotPermitted):
        await b.call(soap_fault)


async def test_async_with_records_the_outcome(clock: FakeClock) -> None:
    b = breaker(clock)
    for _ in range(4):
        with pytest.raises(SoapFault):
            async with b:
                raise SoapFault("timeout")
    assert b.state is OPEN
    b.transition_to(CLOSED)
    async with b:
        await clock.sleep(0)
    assert b.snapshot().calls == 1


async def test_concurrent_async_with_calls_keep_their_own_start_times(clock: FakeClock) -> None:
    b = breaker(clock, slow_call_duration_threshold=1.0, window_size=10, minimum_calls=10)

    async def call(duration: float) -> None:
        async with b:
            await clock.sleep(duration)

    await clock.run(asyncio.gather(call(3.0), call(0.5)))
    assert b.snapshot().calls == 2
    assert b.snapshot().slow == 1


def test_calls_admitted_before_a_transition_do_not_decide_the_next_state(clock: FakeClock) -> None:
    b = breaker(clock)
    stale = b.acquire()
    fail(b, 4)
    clock.tick(10.0)
    b.record_exception(stale, SoapFault("late"))
    assert b.state is HALF_OPEN
    assert b.snapshot().calls == 0


def test_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="percentages"):
        CircuitBreaker(failure_rate_threshold=0)
    with pytest.raises(ValueError, match="at least 1"):
        CircuitBreaker(window_size=0)


def test_windows_directly() -> None:
    count = CountWindow(2)
    count.record(0, failed=True, slow=True)
    count.record(0, failed=False, slow=False)
    snapshot = count.record(0, failed=False, slow=True)
    assert (snapshot.calls, snapshot.failed, snapshot.slow) == (2, 0, 1)
    assert snapshot.slow_rate == 50.0
    timed = TimeWindow(3, now=100.2)
    timed.record(100.2, failed=True, slow=False)
    timed.record(101.0, failed=False, slow=False)
    assert timed.snapshot(102.9).calls == 2
    assert timed.snapshot(103.0).calls == 1
    assert timed.snapshot(500.0).calls == 0
    assert timed.snapshot(500.0).failure_rate == 0.0
