import asyncio
from collections.abc import AsyncIterator
from types import SimpleNamespace

import httpx
import orjson
import pytest
from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from libs.flowcontrol.asgi import (
    FlowControlMiddleware,
    _BodyTooLarge,
    client_key_resolver,
    ratelimit_headers,
    retry_after_seconds,
)
from libs.flowcontrol.bulkhead import Bulkhead
from libs.flowcontrol.limits import AdaptiveLimiter, AIMDLimit
from libs.flowcontrol.metrics import FlowMetrics
from libs.flowcontrol.policy import BoundaryPolicy, BulkheadSettings, QuotaSettings, build_boundary
from libs.flowcontrol.quota import Quota
from libs.flowcontrol.testing import FakeClock, RecordingObserver
from libs.platform.logging import CorrelationIdMiddleware
from libs.platform.problems import Problem

READINGS = {"meterpoint_id": "871234567890123456", "readings": [{"interval_end": "2025-01-01T00:15:00Z", "kwh": 0.25}]}


class Readings(BaseModel):
    meterpoint_id: str
    readings: list[dict[str, object]]


def readings_api() -> FastAPI:
    api = FastAPI()

    @api.post("/v1/readings", status_code=202)
    async def post_readings(batch: Readings) -> dict[str, int]:
        return {"accepted": len(batch.readings)}

    @api.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return api


class BodyCounter:
    """A plain ASGI app that reads the whole body and answers with its size; `gate` can hold it."""

    def __init__(self) -> None:
        self.calls = 0
        self.gate: asyncio.Event | None = None
        self.entered = asyncio.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.calls += 1
        self.entered.set()
        size = 0
        while True:
            message = await receive()
            size += len(message.get("body", b""))
            if not message.get("more_body", False):
                break
        if self.gate is not None:
            await self.gate.wait()
        body = orjson.dumps({"size": size})
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})


def client_for(app: object, *, peer: tuple[str, int] = ("127.0.0.1", 123)) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=peer)  # type: ignore[arg-type]
    return httpx.AsyncClient(transport=transport, base_url="http://gridhub.test")


def assert_problem(response: httpx.Response, status: int, reason: str) -> dict[str, object]:
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, object] = response.json()
    Problem.model_validate(body)  # the same shape as every other GridHub error body
    assert body["status"] == status
    assert body["type"] == "about:blank"
    assert body["reason"] == reason
    return body


async def test_burst_of_100_admits_exactly_the_burst_and_answers_the_rest_429(clock: FakeClock) -> None:
    """The issue's acceptance test: burst 10 admits 10 of 100; a second client is unaffected."""
    quota = Quota(rate=0.4, burst=10, clock=clock)
    app = FlowControlMiddleware(readings_api(), quota=quota)
    async with client_for(app) as client:

        async def post(client_id: str) -> httpx.Response:
            return await client.post("/v1/readings", json=READINGS, headers={"X-Client-Id": client_id})

        burst = await asyncio.gather(*(post("meter-co") for _ in range(100)))
        admitted = [response for response in burst if response.status_code == 202]
        refused = [response for response in burst if response.status_code == 429]
        assert len(admitted) == 10
        assert len(refused) == 90
        for response in refused:
            # One token takes 1 / 0.4 = 2.5 s to come back: Retry-After rounds up to 3.
            assert response.headers["retry-after"] == "3"
            assert response.headers["ratelimit-policy"] == '"default";q=10;w=25'
            assert response.headers["ratelimit"] == '"default";r=0;t=25'
            body = assert_problem(response, 429, "quota")
            assert body["title"] == "Too Many Requests"
        assert admitted[0].json() == {"accepted": 1}
        assert {response.headers["ratelimit-policy"] for response in admitted} == {'"default";q=10;w=25'}
        assert sorted(response.headers["ratelimit"] for response in admitted)[-1] == '"default";r=9;t=3'

        other = await asyncio.gather(*(post("grid-op-2") for _ in range(10)))
        assert [response.status_code for response in other] == [202] * 10

        clock.tick(2.4)
        early = await post("meter-co")
        assert early.status_code == 429
        assert early.headers["retry-after"] == "1"  # 0.1 s left, rounded up
        clock.tick(0.1)  # exactly the retry_after of the first refusal
        assert (await post("meter-co")).status_code == 202
        again = await post("meter-co")
        assert again.status_code == 429
        assert again.headers["retry-after"] == "3"


async def test_added_with_fastapi_add_middleware(clock: FakeClock) -> None:
    api = readings_api()
    api.add_middleware(FlowControlMiddleware, quota=Quota(rate=1, burst=1, clock=clock))
    async with client_for(api) as client:
        assert (await client.post("/v1/readings", json=READINGS)).status_code == 202
        assert_problem(await client.post("/v1/readings", json=READINGS), 429, "quota")


async def test_exempt_paths_pass_without_quota_or_headers(clock: FakeClock) -> None:
    quota = Quota(rate=1, burst=1, clock=clock)
    app = FlowControlMiddleware(readings_api(), quota=quota, bulkhead=Bulkhead(1, clock=clock))
    async with client_for(app) as client:
        for _ in range(5):
            health = await client.get("/healthz")
            assert health.status_code == 200
            assert "ratelimit" not in health.headers
        assert (await client.post("/v1/readings", json=READINGS)).status_code == 202
        assert (await client.post("/v1/readings", json=READINGS)).status_code == 429


async def test_custom_exempt_paths_replace_the_defaults(clock: FakeClock) -> None:
    app = FlowControlMiddleware(
        readings_api(), quota=Quota(rate=1, burst=1, clock=clock), exempt_paths={"/v1/readings"}
    )
    async with client_for(app) as client:
        assert [(await client.post("/v1/readings", json=READINGS)).status_code for _ in range(3)] == [202] * 3
        assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/healthz")).status_code == 429


async def test_bulkhead_full_answers_503_with_retry_after(clock: FakeClock, observer: RecordingObserver) -> None:
    counter = BodyCounter()
    counter.gate = asyncio.Event()
    bulkhead = Bulkhead(1, retry_after=2.5, clock=clock, observer=observer)
    app = FlowControlMiddleware(counter, bulkhead=bulkhead)
    async with client_for(app) as client:
        first = asyncio.create_task(client.post("/v1/readings", content=b"{}"))
        await counter.entered.wait()
        busy = await client.post("/v1/readings", content=b"{}")
        body = assert_problem(busy, 503, "bulkhead_full")
        assert busy.headers["retry-after"] == "3"
        assert "ratelimit" not in busy.headers  # no quota, no quota headers
        assert body["title"] == "Service Unavailable"
        counter.gate.set()
        assert (await first).status_code == 200
        assert (await client.post("/v1/readings", content=b"{}")).status_code == 200
    assert counter.calls == 2
    assert bulkhead.in_flight == 0
    assert observer.rejected_reasons == {"bulkhead_full": 1}
    assert observer.in_flights == [1, 0, 1, 0]


async def test_limiter_full_answers_503(clock: FakeClock) -> None:
    counter = BodyCounter()
    counter.gate = asyncio.Event()
    limiter = AdaptiveLimiter(AIMDLimit(1, min_limit=1, max_limit=1), retry_after=0.2, clock=clock)
    app = FlowControlMiddleware(counter, limiter=limiter)
    async with client_for(app) as client:
        first = asyncio.create_task(client.get("/v1/work-orders"))
        await counter.entered.wait()
        busy = await client.get("/v1/work-orders")
        assert_problem(busy, 503, "limit")
        assert busy.headers["retry-after"] == "1"
        counter.gate.set()
        assert (await first).status_code == 200
    assert limiter.in_flight == 0


async def test_declared_content_length_over_the_limit_is_refused_before_the_app(clock: FakeClock) -> None:
    counter = BodyCounter()
    observer = RecordingObserver()
    app = FlowControlMiddleware(counter, max_body_bytes=100, observer=observer)
    async with client_for(app) as client:
        assert (await client.post("/v1/readings", content=b"x" * 100)).json() == {"size": 100}
        too_large = await client.post("/v1/readings", content=b"x" * 101)
        assert_problem(too_large, 413, "body_too_large")
    assert counter.calls == 1
    assert observer.rejected_reasons == {"body_too_large": 1}


async def chunks(*sizes: int) -> AsyncIterator[bytes]:
    for size in sizes:
        yield b"x" * size


async def test_chunked_body_without_length_is_counted_and_refused() -> None:
    counter = BodyCounter()
    app = FlowControlMiddleware(counter, max_body_bytes=100)
    async with client_for(app) as client:
        fits = await client.post("/v1/readings", content=chunks(50, 50))
        assert fits.request.headers.get("transfer-encoding") == "chunked"
        assert "content-length" not in fits.request.headers
        assert fits.json() == {"size": 100}
        too_large = await client.post("/v1/readings", content=chunks(60, 60, 60))
        assert_problem(too_large, 413, "body_too_large")
    assert counter.calls == 2  # the app ran, but never answered the oversized one


async def test_chunked_body_into_a_fastapi_endpoint_is_refused(clock: FakeClock) -> None:
    app = FlowControlMiddleware(readings_api(), max_body_bytes=64, quota=Quota(rate=1, burst=5, clock=clock))
    async with client_for(app) as client:
        response = await client.post("/v1/readings", content=chunks(40, 40))
        assert_problem(response, 413, "body_too_large")
        assert response.headers["ratelimit"] == '"default";r=4;t=1'


async def test_chunked_body_into_a_starlette_endpoint_replaces_its_500() -> None:
    async def upload(request: Request) -> Response:
        return Response(await request.body())

    app = FlowControlMiddleware(Starlette(routes=[Route("/upload", upload, methods=["POST"])]), max_body_bytes=64)
    async with client_for(app) as client:
        assert (await client.post("/upload", content=chunks(30, 30))).status_code == 200
        # Starlette's ServerErrorMiddleware answers 500 and re-raises; the client sees our 413.
        assert_problem(await client.post("/upload", content=chunks(40, 40)), 413, "body_too_large")


async def test_body_past_the_limit_after_the_response_started_propagates() -> None:
    async def early_answer(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        while (await receive()).get("more_body", False):
            pass
        await send({"type": "http.response.body", "body": b""})

    app = FlowControlMiddleware(early_answer, max_body_bytes=10)
    async with client_for(app) as client:
        with pytest.raises(_BodyTooLarge):
            await client.post("/upload", content=chunks(8, 8))


async def test_request_cost_hook_prices_requests_and_a_cost_above_burst_is_413(clock: FakeClock) -> None:
    def cost(scope: Scope) -> float:
        return 20.0 if scope["path"] == "/v1/huge-batch" else 4.0

    app = FlowControlMiddleware(BodyCounter(), quota=Quota(rate=1, burst=10, clock=clock), cost=cost)
    async with client_for(app) as client:
        statuses = [(await client.post("/v1/readings", content=b"{}")).status_code for _ in range(3)]
        assert statuses == [200, 200, 429]
        huge = await client.post("/v1/huge-batch", content=b"{}")
        body = assert_problem(huge, 413, "quota")
        assert "retry-after" not in huge.headers
        assert body["detail"] == "the request costs 20 quota units, more than the burst of 10"


async def test_client_key_prefers_the_authenticated_api_key(clock: FakeClock) -> None:
    quota = Quota(rate=1, burst=1, clock=clock)
    inner = FlowControlMiddleware(BodyCounter(), quota=quota)

    async def authenticated(scope: Scope, receive: Receive, send: Send) -> None:
        scope.setdefault("state", {})["api_key"] = SimpleNamespace(client="acme-grid")
        await inner(scope, receive, send)

    async with client_for(authenticated) as client:
        # The header names another client, but the authenticated key decides.
        assert (await client.get("/v1/x", headers={"X-Client-Id": "someone-else"})).status_code == 200
        assert (await client.get("/v1/x", headers={"X-Client-Id": "third"})).status_code == 429
    assert quota.try_acquire("someone-else").allowed
    assert not quota.try_acquire("acme-grid").allowed


async def test_client_key_falls_back_to_the_peer_address(clock: FakeClock) -> None:
    quota = Quota(rate=1, burst=1, clock=clock)
    app = FlowControlMiddleware(BodyCounter(), quota=quota)
    async with client_for(app, peer=("10.0.0.1", 5000)) as one, client_for(app, peer=("10.0.0.2", 5000)) as two:
        assert (await one.get("/v1/x")).status_code == 200
        assert (await one.get("/v1/x", headers={"X-Client-Id": "not a valid id!"})).status_code == 429
        assert (await two.get("/v1/x")).status_code == 200
    assert set(quota._buckets) == {"ip:10.0.0.1", "ip:10.0.0.2"}


def test_client_key_resolver_without_header_ignores_it() -> None:
    resolve = client_key_resolver(header=None)
    scope: Scope = {"type": "http", "headers": [(b"x-client-id", b"acme")], "client": ("192.0.2.7", 1)}
    assert resolve(scope) == "ip:192.0.2.7"
    assert client_key_resolver("X-Tenant")({**scope, "headers": [(b"x-tenant", b"acme")]}) == "acme"
    assert resolve({"type": "http", "headers": []}) == "ip:unknown"


async def test_client_key_is_left_in_scope_state_for_endpoints(clock: FakeClock) -> None:
    seen: list[str] = []

    async def endpoint(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope["state"]["client_key"])
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    app = FlowControlMiddleware(endpoint, quota=Quota(rate=1, burst=5, clock=clock))
    async with client_for(app) as client:
        await client.get("/v1/x", headers={"X-Client-Id": "acme"})
    assert seen == ["acme"]


async def test_problem_body_carries_the_correlation_id(clock: FakeClock) -> None:
    app = CorrelationIdMiddleware(FlowControlMiddleware(BodyCounter(), quota=Quota(rate=1, burst=1, clock=clock)))
    async with client_for(app) as client:
        await client.get("/v1/x")
        refused = await client.get("/v1/x", headers={"X-Correlation-ID": "req-42"})
    assert assert_problem(refused, 429, "quota")["correlation_id"] == "req-42"
    assert refused.headers["x-correlation-id"] == "req-42"


async def test_lifespan_and_websocket_scopes_pass_through(clock: FakeClock) -> None:
    seen: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope["type"])

    middleware = FlowControlMiddleware(app, quota=Quota(rate=1, burst=1, clock=clock), max_body_bytes=1)

    async def receive() -> Message:
        return {"type": "lifespan.startup"}

    async def send(message: Message) -> None:
        raise AssertionError("nothing is sent")

    await middleware({"type": "lifespan"}, receive, send)
    await middleware({"type": "websocket", "path": "/ws", "headers": []}, receive, send)
    assert seen == ["lifespan", "websocket"]


async def test_boundary_settings_and_prometheus_metrics(clock: FakeClock) -> None:
    registry = CollectorRegistry()
    boundary = build_boundary(
        "rest_ingress",
        BoundaryPolicy(
            quota=QuotaSettings(rate=1, burst=2),
            bulkhead=BulkheadSettings(max_concurrent=4),
            max_body_bytes=10,
        ),
        clock=clock,
        metrics=FlowMetrics(registry),
    )
    app = FlowControlMiddleware(BodyCounter(), boundary=boundary)
    async with client_for(app) as client:
        assert (await client.post("/v1/x", content=b"small")).status_code == 200
        assert (await client.post("/v1/x", content=b"much too large")).status_code == 413
        assert (await client.post("/v1/x", content=b"small")).status_code == 429

    def sample(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, {"boundary": "rest_ingress", **labels})

    # Each policy counts its own admissions: two requests passed the quota, one reached the bulkhead.
    assert sample("gridhub_flow_admitted_total", policy="quota") == 2
    assert sample("gridhub_flow_admitted_total", policy="bulkhead") == 1
    assert sample("gridhub_flow_rejected_total", reason="quota") == 1
    assert sample("gridhub_flow_rejected_total", reason="body_too_large") == 1
    assert sample("gridhub_flow_in_flight") == 0
    assert sample("gridhub_flow_limit") == 4


def test_both_concurrency_policies_at_once_is_a_configuration_error(clock: FakeClock) -> None:
    with pytest.raises(ValueError, match="one concurrency policy"):
        FlowControlMiddleware(
            BodyCounter(), bulkhead=Bulkhead(1, clock=clock), limiter=AdaptiveLimiter(AIMDLimit(), clock=clock)
        )
    with pytest.raises(ValueError, match="policy_name"):
        FlowControlMiddleware(BodyCounter(), policy_name='bad"name')


@pytest.mark.parametrize(
    ("retry_after", "seconds"),
    [(0.0001, 1), (0.1, 1), (1.0, 1), (1.0000000001, 1), (1.01, 2), (2.5, 3), (60.0, 60)],
)
def test_retry_after_rounds_up_to_whole_seconds(retry_after: float, seconds: int) -> None:
    assert retry_after_seconds(retry_after) == seconds


def test_ratelimit_headers_follow_the_ietf_draft(clock: FakeClock) -> None:
    quota = Quota(rate=10, burst=10, clock=clock)
    for _ in range(10):
        decision = quota.try_acquire("acme")
    assert dict(ratelimit_headers(decision)) == {
        b"ratelimit-policy": b'"default";q=10;w=1',
        b"ratelimit": b'"default";r=0;t=1',
    }
    fresh = Quota(rate=50, burst=100, clock=clock).try_acquire("acme")
    assert dict(ratelimit_headers(fresh, "ingress")) == {
        b"ratelimit-policy": b'"ingress";q=100;w=2',
        b"ratelimit": b'"ingress";r=99;t=1',
    }


async def _trickle(app: object, scope_path: str, chunks: int, clock: FakeClock, step: float) -> list[Message]:
    """Drive `app` with a body that sends one byte every `step` seconds of fake time; return what it sent."""
    sent: list[Message] = []
    sent_chunks = 0

    async def receive() -> Message:
        nonlocal sent_chunks
        await clock.sleep(step)
        sent_chunks += 1
        return {"type": "http.request", "body": b"x", "more_body": sent_chunks < chunks}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": scope_path, "headers": [], "client": ("10.0.0.1", 1)}
    task = asyncio.create_task(app(scope, receive, send))  # type: ignore[operator]
    while not task.done():
        await clock.advance(step)
    await task
    return sent


async def test_a_trickled_body_is_cut_off_with_408_and_its_permit_released(clock: FakeClock) -> None:
    bulkhead = Bulkhead(1, clock=clock)
    inner = BodyCounter()
    app = FlowControlMiddleware(inner, bulkhead=bulkhead, body_timeout=5.0, min_body_rate=100.0, clock=clock)
    sent = await _trickle(app, "/v1/readings", chunks=60, clock=clock, step=1.0)
    start = sent[0]
    assert start["status"] == 408
    assert (b"connection", b"close") in start["headers"]
    body = orjson.loads(sent[1]["body"])
    assert body["reason"] == "body_timeout"
    assert bulkhead.in_flight == 0
    # One byte per second earns 0.01 s per byte: cut off at ~5 s, long before the 60 s the body would take.
    assert clock.now() < 1_000.0 + 7.0


async def test_a_body_at_a_decent_rate_outlasts_body_timeout(clock: FakeClock) -> None:
    inner = BodyCounter()
    app = FlowControlMiddleware(inner, body_timeout=1.0, min_body_rate=1.0, clock=clock)
    # One byte every 0.5 s for 10 s: twice the floor rate, so the allowance keeps ahead.
    sent = await _trickle(app, "/v1/readings", chunks=20, clock=clock, step=0.5)
    assert sent[0]["status"] == 200
    assert orjson.loads(sent[1]["body"]) == {"size": 20}


async def test_a_client_over_its_in_flight_cap_gets_429_while_another_passes(clock: FakeClock) -> None:
    from libs.flowcontrol.perclient import PerClientLimit

    inner = BodyCounter()
    inner.gate = asyncio.Event()
    per_client = PerClientLimit(2, retry_after=2.0)
    app = FlowControlMiddleware(inner, per_client=per_client, bulkhead=Bulkhead(8, clock=clock))
    async with client_for(app) as client:
        held = [
            asyncio.create_task(client.post("/v1/readings", content=b"x", headers={"X-Client-Id": "noisy"}))
            for _ in range(2)
        ]
        while per_client.in_flight("noisy") < 2:
            await asyncio.sleep(0)
        refused = await client.post("/v1/readings", content=b"x", headers={"X-Client-Id": "noisy"})
        assert_problem(refused, 429, "client_busy")
        assert refused.headers["retry-after"] == "2"
        other = asyncio.create_task(client.post("/v1/readings", content=b"x", headers={"X-Client-Id": "quiet"}))
        while per_client.in_flight("quiet") < 1:
            await asyncio.sleep(0)
        inner.gate.set()
        assert (await other).status_code == 200
        assert [(await task).status_code for task in held] == [200, 200]
    assert len(per_client) == 0
