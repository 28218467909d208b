import asyncio
import gzip
from collections.abc import AsyncIterator

import httpx
import pytest
import zeep.transports

from libs.flowcontrol.breaker import BreakerState, CircuitBreaker
from libs.flowcontrol.bulkhead import Bulkhead
from libs.flowcontrol.errors import BulkheadFull, CallNotPermitted, Refused
from libs.flowcontrol.httpx import FlowControlTransport
from libs.flowcontrol.limits import AdaptiveLimiter, AIMDLimit
from libs.flowcontrol.policy import BoundaryPolicy, BreakerSettings, BulkheadSettings, build_boundary
from libs.flowcontrol.testing import FakeClock

PARTNER = "http://partner.test/soap"


class Partner:
    """A fake downstream: answers `status`, or raises `error`, or waits `delay` on the fake clock."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.status = 200
        self.error: Exception | None = None
        self.delay = 0.0
        self.gate: asyncio.Event | None = None
        self.calls = 0

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.delay:
            await self.clock.sleep(self.delay)
        if self.error is not None:
            raise self.error
        return httpx.Response(self.status, text="<ok/>")


def breaker_for(clock: FakeClock) -> CircuitBreaker:
    return CircuitBreaker(
        "customers_soap",
        failure_rate_threshold=50,
        window_size=4,
        minimum_calls=4,
        wait_in_open=30,
        permitted_calls_in_half_open=1,
        clock=clock,
    )


def client_with(transport: httpx.AsyncBaseTransport) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=transport)


async def test_5xx_responses_open_the_breaker_then_calls_fail_fast_until_a_probe_closes_it(clock: FakeClock) -> None:
    partner = Partner(clock)
    partner.status = 503
    breaker = breaker_for(clock)
    async with client_with(FlowControlTransport(httpx.MockTransport(partner), breaker=breaker, clock=clock)) as client:
        # The caller sees each 503: the breaker counts it without raising.
        assert [(await client.post(PARTNER)).status_code for _ in range(4)] == [503] * 4
        assert breaker.state is BreakerState.OPEN
        with pytest.raises(CallNotPermitted) as refused:
            await client.post(PARTNER)
        assert refused.value.retry_after == 30
        assert partner.calls == 4  # refused fast, never sent

        clock.tick(30)
        assert breaker.state is BreakerState.HALF_OPEN
        partner.status = 200
        assert (await client.post(PARTNER)).text == "<ok/>"
        assert breaker.state is BreakerState.CLOSED
        assert (await client.post(PARTNER)).status_code == 200


async def test_transport_errors_count_as_failures_and_propagate(clock: FakeClock) -> None:
    partner = Partner(clock)
    partner.error = httpx.ConnectError("connection refused")
    breaker = breaker_for(clock)
    async with client_with(FlowControlTransport(httpx.MockTransport(partner), breaker=breaker, clock=clock)) as client:
        for _ in range(4):
            with pytest.raises(httpx.ConnectError):
                await client.get(PARTNER)
        with pytest.raises(CallNotPermitted):
            await client.get(PARTNER)
        clock.tick(30)
        # The half-open probe fails too: open again for another wait.
        with pytest.raises(httpx.ConnectError):
            await client.get(PARTNER)
        assert breaker.state is BreakerState.OPEN
        with pytest.raises(Refused):
            await client.get(PARTNER)
    assert partner.calls == 5


async def test_timeout_is_enforced_on_the_clock_and_counts_as_a_failure(clock: FakeClock) -> None:
    partner = Partner(clock)
    partner.delay = 10.0
    breaker = breaker_for(clock)
    transport = FlowControlTransport(httpx.MockTransport(partner), breaker=breaker, timeout=2.0, clock=clock)
    async with client_with(transport) as client:
        call = asyncio.create_task(client.get(PARTNER))
        await clock.advance(1.9)
        assert not call.done()
        await clock.advance(0.1)
        with pytest.raises(httpx.TimeoutException, match="within 2 s"):
            await call
        assert clock.sleepers == 0  # the abandoned call was cancelled, not left running
        assert breaker.snapshot().failed == 1

        partner.delay = 1.0
        quick = asyncio.create_task(client.get(PARTNER))
        await clock.advance(1.0)
        assert (await quick).status_code == 200
        assert breaker.snapshot().calls == 2


async def slow_chunks(clock: FakeClock) -> AsyncIterator[bytes]:
    yield b"<partial"
    await clock.sleep(5.0)
    yield b"/>"


async def test_timeout_covers_reading_the_body(clock: FakeClock) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=slow_chunks(clock))

    transport = FlowControlTransport(httpx.MockTransport(handler), timeout=2.0, clock=clock)
    async with client_with(transport) as client:
        call = asyncio.create_task(client.get(PARTNER))
        await clock.advance(2.0)
        with pytest.raises(httpx.TimeoutException):
            await call


async def test_streamed_and_encoded_bodies_pass_through_intact(clock: FakeClock) -> None:
    async def gzipped() -> AsyncIterator[bytes]:
        packed = gzip.compress(b"<envelope>" + b"x" * 1000 + b"</envelope>")
        yield packed[:10]
        yield packed[10:]

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"Content-Encoding": "gzip"}, content=gzipped())

    transport = FlowControlTransport(httpx.MockTransport(handler), timeout=5.0, clock=clock)
    async with client_with(transport) as client:
        response = await client.get(PARTNER)
    assert response.text == "<envelope>" + "x" * 1000 + "</envelope>"


async def test_bulkhead_full_is_refused_without_touching_the_breaker(clock: FakeClock) -> None:
    partner = Partner(clock)
    partner.gate = asyncio.Event()
    breaker = breaker_for(clock)
    bulkhead = Bulkhead(1, retry_after=0.5, clock=clock)
    transport = FlowControlTransport(httpx.MockTransport(partner), breaker=breaker, bulkhead=bulkhead, clock=clock)
    async with client_with(transport) as client:
        first = asyncio.create_task(client.get(PARTNER))
        await clock.settle()
        assert bulkhead.in_flight == 1
        with pytest.raises(BulkheadFull) as refused:
            await client.get(PARTNER)
        assert refused.value.retry_after == 0.5
        partner.gate.set()
        assert (await first).status_code == 200
    assert bulkhead.in_flight == 0
    assert partner.calls == 1
    assert breaker.snapshot().calls == 1  # the refused call counts neither way


async def test_half_open_trial_permit_comes_back_when_the_bulkhead_refuses(clock: FakeClock) -> None:
    breaker = breaker_for(clock)
    breaker.transition_to(BreakerState.HALF_OPEN)
    bulkhead = Bulkhead(1, clock=clock)
    await bulkhead.acquire()
    transport = FlowControlTransport(
        httpx.MockTransport(Partner(clock)), breaker=breaker, bulkhead=bulkhead, clock=clock
    )
    async with client_with(transport) as client:
        with pytest.raises(BulkheadFull):
            await client.get(PARTNER)
        bulkhead.release()
        assert (await client.get(PARTNER)).status_code == 200  # the single trial permit was returned
    assert breaker.state is BreakerState.CLOSED


async def test_limiter_backs_off_on_failures(clock: FakeClock) -> None:
    partner = Partner(clock)
    partner.status = 502
    limiter = AdaptiveLimiter(AIMDLimit(10, min_limit=1, max_limit=10, backoff_ratio=0.5), clock=clock)
    async with client_with(FlowControlTransport(httpx.MockTransport(partner), limiter=limiter, clock=clock)) as client:
        assert (await client.get(PARTNER)).status_code == 502
        assert limiter.limit == 5
        partner.error = httpx.ReadError("reset by peer")
        with pytest.raises(httpx.ReadError):
            await client.get(PARTNER)
        assert limiter.limit == 2
    assert limiter.in_flight == 0


async def test_built_from_a_boundary_declared_in_settings(clock: FakeClock) -> None:
    boundary = build_boundary(
        "customers_soap",
        BoundaryPolicy(
            breaker=BreakerSettings(window_size=2, minimum_calls=2, wait_in_open=10),
            bulkhead=BulkheadSettings(max_concurrent=2),
            timeout=3.0,
        ),
        clock=clock,
    )
    transport = FlowControlTransport(httpx.MockTransport(Partner(clock)), boundary=boundary)
    assert transport.timeout == 3.0
    assert transport.breaker is boundary.breaker
    assert transport.bulkhead is boundary.bulkhead
    with pytest.raises(ValueError, match="one concurrency policy"):
        FlowControlTransport(
            httpx.MockTransport(Partner(clock)),
            bulkhead=Bulkhead(1, clock=clock),
            limiter=AdaptiveLimiter(AIMDLimit(), clock=clock),
        )


async def test_zeep_async_transport_uses_it_and_sees_refusals(clock: FakeClock) -> None:
    partner = Partner(clock)
    breaker = breaker_for(clock)
    client = httpx.AsyncClient(
        transport=FlowControlTransport(httpx.MockTransport(partner), breaker=breaker, timeout=5.0, clock=clock)
    )
    wsdl_client = httpx.Client(transport=httpx.MockTransport(lambda request: httpx.Response(404)))
    soap = zeep.transports.AsyncTransport(client=client, wsdl_client=wsdl_client)
    try:
        response = await soap.post(PARTNER, "<Envelope/>", {"Content-Type": "text/xml"})
        assert response.status_code == 200
        breaker.transition_to(BreakerState.OPEN)
        with pytest.raises(CallNotPermitted):
            await soap.post(PARTNER, "<Envelope/>", {"Content-Type": "text/xml"})
    finally:
        await soap.aclose()
        wsdl_client.close()
    assert partner.calls == 1
