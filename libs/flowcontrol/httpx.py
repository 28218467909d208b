"""An httpx transport for outbound SOAP/REST calls: circuit breaker, bulkhead or limiter, and a timeout.

    transport = FlowControlTransport(httpx.AsyncHTTPTransport(), boundary=boundaries["customers_soap"])
    client = httpx.AsyncClient(transport=transport)
    soap = zeep.AsyncClient(wsdl, transport=zeep.transports.AsyncTransport(client=client, wsdl_client=...))

Per request, in this order: the breaker is asked (open -> `CallNotPermitted` at once, before any
permit is taken), a concurrency permit is taken (`BulkheadFull` / `LimitExceeded`), then the inner
transport runs under `timeout` (clock time, so tests use a `FakeClock`). The whole response body is
read inside that guarded section, so the permit, the timeout and the slow-call measurement cover the
complete exchange and no permit can leak through an unclosed stream; this transport is for API calls,
not large downloads. Responses `is_failure` flags (default: 5xx) count as breaker failures but are
returned, not raised: the caller sees the status. Transport errors and timeouts count as failures
(as the breaker's exception lists say) and propagate; the timeout raises `httpx.TimeoutException`.
Refusals are `Refused` subclasses carrying `retry_after`, so callers can fall back.

This module shares its name with the `httpx` package; absolute imports keep them apart.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx

from libs.flowcontrol.breaker import CircuitBreaker, Permit
from libs.flowcontrol.bulkhead import Bulkhead
from libs.flowcontrol.clock import Clock, MonotonicClock, wait_future
from libs.flowcontrol.limits import AdaptiveLimiter, Ticket
from libs.flowcontrol.policy import Boundary

__all__ = ["FlowControlTransport", "server_error"]


def server_error(response: httpx.Response) -> bool:
    """The default failure test: a 5xx status."""
    return response.status_code >= 500


def _retrieve(call: asyncio.Future[httpx.Response]) -> None:
    # A call abandoned at a timeout or cancellation may still fail; mark its error as seen.
    if not call.cancelled():
        call.exception()


class FlowControlTransport(httpx.AsyncBaseTransport):
    """Wrap `inner` (e.g. `httpx.AsyncHTTPTransport()`) with a breaker, a bulkhead or limiter and a timeout."""

    def __init__(
        self,
        inner: httpx.AsyncBaseTransport,
        *,
        boundary: Boundary | None = None,
        breaker: CircuitBreaker | None = None,
        bulkhead: Bulkhead | None = None,
        limiter: AdaptiveLimiter | None = None,
        timeout: float | None = None,
        is_failure: Callable[[httpx.Response], bool] = server_error,
        clock: Clock | None = None,
    ) -> None:
        if boundary is not None:
            breaker = boundary.breaker if breaker is None else breaker
            bulkhead = boundary.bulkhead if bulkhead is None else bulkhead
            limiter = boundary.limiter if limiter is None else limiter
            timeout = boundary.policy.timeout if timeout is None else timeout
            clock = boundary.clock if clock is None else clock
        if bulkhead is not None and limiter is not None:
            raise ValueError("give a boundary one concurrency policy: a bulkhead or a limiter")
        if timeout is not None and timeout <= 0:
            raise ValueError("timeout must be positive")
        self.inner = inner
        self.breaker = breaker
        self.bulkhead = bulkhead
        self.limiter = limiter
        self.timeout = timeout
        self.is_failure = is_failure
        self._clock = clock or MonotonicClock()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send `request` under the policies; raise `Refused` when refused, return any response."""
        permit = self.breaker.acquire() if self.breaker is not None else None
        ticket: Ticket | None = None
        try:
            if self.bulkhead is not None:
                await self.bulkhead.acquire()
            elif self.limiter is not None:
                ticket = await self.limiter.acquire()
        except BaseException:
            # Refused here (or cancelled while waiting): nothing was sent, so nothing to count.
            if permit is not None and self.breaker is not None:
                self.breaker.release(permit)
            raise
        try:
            response = await self._exchange(request)
        except BaseException as error:
            self._finish_error(permit, ticket, error)
            raise
        finally:
            if self.bulkhead is not None:
                self.bulkhead.release()
        self._finish_response(permit, ticket, self.is_failure(response))
        return response

    async def aclose(self) -> None:
        """Close the inner transport."""
        await self.inner.aclose()

    async def _exchange(self, request: httpx.Request) -> httpx.Response:
        if self.timeout is None:
            return await self._send(request)
        call = asyncio.ensure_future(self._send(request))
        call.add_done_callback(_retrieve)
        try:
            finished = await wait_future(call, self._clock, self.timeout)
        except BaseException:
            call.cancel()
            raise
        if not finished:
            call.cancel()
            # Let the call unwind, so its connection is back in the pool before we report.
            await asyncio.wait((call,))
            if call.cancelled() or call.exception() is not None:
                raise httpx.TimeoutException(f"no complete response within {self.timeout:g} s", request=request)
        return call.result()

    async def _send(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if response.is_stream_consumed:
            return response  # built with its content (a mock transport's): nothing left to read
        try:
            # Raw bytes: the client still decodes any Content-Encoding the headers declare.
            body = b"".join([chunk async for chunk in response.aiter_raw()])
        finally:
            await response.aclose()
        return httpx.Response(
            response.status_code,
            headers=response.headers,
            stream=httpx.ByteStream(body),
            extensions=response.extensions,
            request=request,
        )

    def _finish_response(self, permit: Permit | None, ticket: Ticket | None, failed: bool) -> None:
        if permit is not None and self.breaker is not None:
            if failed:
                self.breaker.record_failure(permit)
            else:
                self.breaker.record_success(permit)
        if ticket is not None and self.limiter is not None:
            if failed:
                self.limiter.on_dropped(ticket)
            else:
                self.limiter.on_success(ticket)

    def _finish_error(self, permit: Permit | None, ticket: Ticket | None, error: BaseException) -> None:
        if permit is not None and self.breaker is not None:
            self.breaker.record_exception(permit, error)
        if ticket is not None and self.limiter is not None:
            # Timeouts and broken connections are load signals; anything else (a bug, a cancel) is not.
            if isinstance(error, httpx.TransportError):
                self.limiter.on_dropped(ticket)
            else:
                self.limiter.on_exception(ticket, error)
