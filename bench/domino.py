"""The domino effect: a slow customers SOAP service behind the work orders service, flow control off against on.

    uv run python -m bench.domino            # about 2 minutes; writes bench/results/domino.md and domino.png
    uv run python -m bench.domino --scale 4  # every phase (healthy, incident, healthy again) 4x as long
    uv run python -m bench.domino --quick    # a smoke test; writes nothing unless --out

The work orders service (the real app, its own process, PostgreSQL in a schema of the run's own, consumers and relay
off, the enricher on) creates orders for a planning system and calls the customers service's
``GetMeterpointCustomer`` for each one (zeep over the library's ``FlowControlTransport``). The customers service is
a stand-in answering that WSDL operation the way a server with a fixed pool of workers does: ``workers`` calls at a
time, each taking the current service time, the rest queued. Three phases: healthy (20 ms), an incident (the
service time jumps, e.g. a slow database behind it), healthy again. Open-loop load throughout, each caller giving up
after ``caller_timeout`` seconds:

- the planning system creates orders (``POST /v1/work-orders``);
- field crews read orders (``GET /v1/work-orders/{id}``), which never call the customers service: unrelated requests;
- the customer centre calls the customers service directly: another client of the slow dependency.

Modes, by configuration only (``WorkordersSettings.boundaries``):

- **off**: no REST quota or bulkhead; ``customers_soap`` with a breaker that can never open (time window of one
  second, a billion minimum calls), no bulkhead, a timeout of an hour. The settings require a breaker and a timeout
  for ``customers_soap``, so "off" is these permissive values; httpx's default pool (100 connections) stays.
- **edge only**: the REST ingress as shipped (quota, bulkhead 32), ``customers_soap`` as in *off*.
- **on**: the shipped settings (``customers_soap``: breaker on slow calls > 2 s, bulkhead 5, timeout 3 s; an order
  whose customer cannot be looked up now is created with its customer ``pending`` and filled in by the enricher).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import sys
import time
import uuid
from base64 import b64decode
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import date
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import uvicorn
from prometheus_client import CollectorRegistry
from starlette.types import ASGIApp, Receive, Scope, Send

from bench.common import (
    BENCH_TENANT,
    RESULTS,
    add_scale_option,
    bound_socket,
    emit,
    machine_line,
    percentile,
    pyplot,
    rss_mib,
    scale_line,
    scale_of,
    serve,
)
from libs.events import with_check_digit
from libs.events.customers import CustomerKind
from libs.flowcontrol.breaker import BreakerState, WindowType
from libs.flowcontrol.policy import BoundaryPolicy, BreakerSettings
from libs.platform.apikeys import InMemoryKeyStore, Role, generate_api_key
from services.customers.domain import Address, Contact, Customer, CustomerDetails, MeterpointHolder, MeterpointLink
from services.customers.entrypoints.soap_codec import encode_holder
from services.customers.entrypoints.soap_xml import response_envelope
from services.workorders.app import create_app
from services.workorders.settings import Boundaries, WorkordersSettings
from stack.config import StackConfig

REPORT = RESULTS / "domino.md"
HEALTHY_SERVICE_TIME = 0.02


@dataclass(frozen=True)
class Params:
    healthy: float  # seconds before the incident
    incident: float  # seconds of the incident
    recovery: float  # seconds after it
    incident_service_time: float  # seconds per call during the incident
    workers: int  # calls the customers service works on at once
    create_rate: float  # orders/s from the planning system
    read_rate: float  # reads/s from field crews
    centre_rate: float  # calls/s from the customer centre to the customers service
    caller_timeout: float  # every caller gives up after this long
    sample_every: float
    settle: float  # after the load: at most this long for the enricher to fill in pending customers
    scale: float = 1.0

    def scaled(self, factor: float) -> Params:
        """Every phase ``factor`` times as long (so ``factor`` times the calls); the settle limit grows with it but
        never shrinks (more pending orders to fill in); rates, service times, workers and the callers' timeout stay."""
        return replace(
            self,
            healthy=self.healthy * factor,
            incident=self.incident * factor,
            recovery=self.recovery * factor,
            settle=self.settle * max(1.0, factor),
            scale=factor,
        )


SCALES = "the seconds of each phase (healthy, incident, healthy again) and with them the calls"
FULL = Params(
    healthy=4.0,
    incident=15.0,
    recovery=10.0,
    incident_service_time=2.5,
    workers=10,
    create_rate=15.0,
    read_rate=15.0,
    centre_rate=2.0,
    caller_timeout=5.0,
    sample_every=0.5,
    settle=20.0,
)
QUICK = Params(
    healthy=0.3,
    incident=2.0,
    recovery=0.7,
    incident_service_time=1.0,
    workers=4,
    create_rate=8.0,
    read_rate=8.0,
    centre_rate=2.0,
    caller_timeout=1.5,
    sample_every=0.25,
    settle=2.0,
)
MODES = ("off", "edge only", "on")
QUICK_MODES = ("off", "on")  # the smoke test: both code paths, half the time

# "Off" within what the settings allow: customers_soap must declare a breaker and a timeout.
NEVER_OPENS = BreakerSettings(
    window_type=WindowType.TIME_BASED, window_size=1, minimum_calls=10**9, slow_call_duration_threshold=3600.0
)
SOAP_OFF = BoundaryPolicy(breaker=NEVER_OPENS, timeout=3600.0)
REST_OFF = BoundaryPolicy(max_body_bytes=64 * 1024)


def boundaries(mode: str) -> Boundaries:
    """The work orders service's boundaries in ``mode``."""
    if mode == "off":
        return Boundaries(rest_ingress=REST_OFF, customers_soap=SOAP_OFF)
    if mode == "edge only":
        return Boundaries(customers_soap=SOAP_OFF)
    return Boundaries()


# --- the customers service stand-in ----------------------------------------------------------------------------------


def _holder_response() -> bytes:
    contact = Contact("mette@example.dk", "+4520123456", Address("Vestergade 12", "8000", "Aarhus C", "DK"))
    customer = Customer("C-100001", CustomerDetails(CustomerKind.PERSON, "Mette Hansen", contact), 1)
    link = MeterpointLink("C-100001", "571313180400000025", date(2020, 1, 1))
    return response_envelope(encode_holder(MeterpointHolder(customer, link)))


CENTRE_REQUEST = (
    b'<?xml version="1.0" encoding="utf-8"?>'
    b'<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/" xmlns:c="urn:gridhub:customers:v1">'
    b"<soap:Body><c:GetMeterpointCustomer><c:meterpointId>571313180400000025</c:meterpointId>"
    b"<c:onDate>2026-01-15</c:onDate></c:GetMeterpointCustomer></soap:Body></soap:Envelope>"
)


class SlowCustomers:
    """``GetMeterpointCustomer`` answered by ``workers`` workers, each call taking ``service_time``; others queue.

    Like a servlet container's fixed thread pool with an unbounded accept queue, it does not notice callers that
    gave up: their calls still take a worker. Counts per client (the HTTP Basic user) what waits and what is served.
    """

    def __init__(self, workers: int) -> None:
        self.workers = asyncio.Semaphore(workers)
        self.service_time = HEALTHY_SERVICE_TIME
        self.waiting: Counter[str] = Counter()
        self.serving: Counter[str] = Counter()
        self.served: Counter[str] = Counter()
        self.response = _holder_response()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        while (await receive()).get("more_body"):
            pass
        client = _basic_user(scope)
        self.waiting[client] += 1
        queued = True
        try:
            async with self.workers:
                self.waiting[client] -= 1
                queued = False
                self.serving[client] += 1
                try:
                    await asyncio.sleep(self.service_time)
                finally:
                    self.serving[client] -= 1
        finally:
            if queued:
                self.waiting[client] -= 1
        self.served[client] += 1
        headers = [(b"content-type", b"text/xml; charset=utf-8"), (b"content-length", str(len(self.response)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": self.response})


def _basic_user(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == b"authorization" and value.startswith(b"Basic "):
            return b64decode(value[6:]).split(b":", 1)[0].decode()
    return "anonymous"


# --- the work orders service, in a process of its own ----------------------------------------------------------------


class CountingTransport(httpx.AsyncBaseTransport):
    """The real network under the flow-control transport, counting the SOAP calls in flight on it."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.in_flight = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.in_flight += 1
        try:
            response = await self.inner.handle_async_request(request)
            await response.aread()
            return response
        finally:
            self.in_flight -= 1

    async def aclose(self) -> None:
        await self.inner.aclose()


class BenchStats:
    """ASGI wrapper: counts requests in flight on the server (callers that gave up included), answers /_bench/stats."""

    def __init__(self, app: Any, network: CountingTransport) -> None:
        self.app = app
        self.network = network
        self.creates = 0
        self.reads = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["path"] == "/_bench/stats":
            await _json(send, self.stats())
            return
        kind = "creates" if scope["method"] == "POST" else "reads"
        setattr(self, kind, getattr(self, kind) + 1)
        try:
            await self.app(scope, receive, send)
        finally:
            setattr(self, kind, getattr(self, kind) - 1)

    def stats(self) -> dict[str, Any]:
        parts = self.app.state.parts
        soap, rest = parts.boundaries["customers_soap"], parts.boundaries["rest_ingress"]
        breaker = soap.breaker.state if soap.breaker is not None else BreakerState.CLOSED
        return {
            "rss_mib": rss_mib(),
            "creates_in_flight": self.creates,
            "reads_in_flight": self.reads,
            "soap_in_flight": self.network.in_flight,
            "breaker_open": breaker is not BreakerState.CLOSED,
            "rest_bulkhead": rest.bulkhead.in_flight if rest.bulkhead is not None else None,
        }


async def _json(send: Send, body: Any) -> None:
    payload = orjson.dumps(body)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": payload})


def serve_workorders(mode: str, customers_url: str, schema: str) -> None:
    """Child process: the work orders app in ``mode`` on an ephemeral port; prints its port and API keys."""
    stack = StackConfig()
    planning, crews = (
        generate_api_key("planning", Role.OPERATOR, tenant=BENCH_TENANT),
        generate_api_key("crews", Role.READER, tenant=BENCH_TENANT),
    )
    settings = WorkordersSettings(
        postgres_dsn=stack.postgres_dsn("workorders"),
        postgres_schema=schema,
        kafka_bootstrap_servers=stack.kafka_bootstrap,
        consumers_enabled=False,
        relay_enabled=False,
        enrichment_enabled=True,
        enrichment_interval=1.0,
        customers_soap_url=customers_url,
        boundaries=boundaries(mode),
        log_level="WARNING",
    )
    network = CountingTransport()
    app = create_app(
        settings,
        registry=CollectorRegistry(),
        soap_transport=network,
        key_store=InMemoryKeyStore([planning.record, crews.record]),
    )
    sock = bound_socket()
    keys = {"port": sock.getsockname()[1], "planning": planning.plain_key, "crews": crews.plain_key}
    print(json.dumps(keys), flush=True)
    wrapped: ASGIApp = BenchStats(app, network)
    config = uvicorn.Config(wrapped, lifespan="on", log_level="warning", access_log=False, http="httptools")
    uvicorn.Server(config).run(sockets=[sock])


METERPOINTS = [with_check_digit(f"5713131804{n:07d}") for n in range(500)]
"""The meterpoints the planning system opens orders at (all of the benchmark's grid company)."""


@contextlib.asynccontextmanager
async def workorders(mode: str, customers_url: str) -> AsyncIterator[tuple[str, dict[str, str], str]]:
    """The service in a child process on a fresh schema; yields base URL, API keys, schema."""
    stack = StackConfig()
    schema = f"bench_domino_{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(stack.postgres_dsn("workorders"))
    await conn.execute(f"CREATE SCHEMA {schema}")
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "bench.domino", "--serve-workorders", mode, customers_url, schema),
        stdout=asyncio.subprocess.PIPE,
        cwd=Path(__file__).parent.parent,
    )
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), 60)).decode()
        if not line.startswith("{"):
            raise RuntimeError(f"the work orders service did not start ({process.returncode})")
        keys = json.loads(line)
        base_url = f"http://127.0.0.1:{keys['port']}"
        async with httpx.AsyncClient(base_url=base_url, timeout=2) as client:
            deadline = time.monotonic() + 30
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get("/readyz")).status_code == 200:
                        break
                if time.monotonic() > deadline or process.returncode is not None:
                    raise RuntimeError("the work orders service did not become ready")
                await asyncio.sleep(0.1)
        # The benchmark's meterpoints belong to its grid company, as the meterpoints consumer would have stored it
        # (the consumers are off here: the load is the REST API's). An order is opened only at one's own meterpoint.
        await conn.execute(
            f"INSERT INTO {schema}.meterpoint_owners (meterpoint_id, grid_company, version) "
            "SELECT unnest($1::text[]), $2, 1",
            METERPOINTS,
            BENCH_TENANT,
        )
        yield base_url, keys, schema
    finally:
        if process.returncode is None:
            process.terminate()
        await asyncio.wait_for(process.wait(), 30)
        await conn.execute(f"DROP SCHEMA {schema} CASCADE")
        await conn.close()


# --- load ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """One request of the load: when it was sent (s since start), how long until an answer or giving up, outcome."""

    stream: str
    sent: float
    seconds: float
    outcome: str  # known | pending | none | ok | 429 | 503 | other status | timeout | error


@dataclass
class Run:
    mode: str
    calls: list[Call] = field(default_factory=list)
    samples: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)


Request = Callable[[], Awaitable[httpx.Response]]


async def open_loop(
    stream: str,
    rate: float,
    *,
    until: float,
    started: float,
    request: Request,
    classify: Callable[[httpx.Response], str],
    timeout: float,
    calls: list[Call],
    in_flight: Counter[str],
) -> None:
    """Send ``rate`` requests/s until ``until`` whatever the answers (callers do not wait for each other)."""
    tasks: set[asyncio.Task[None]] = set()

    async def one() -> None:
        sent = time.monotonic()
        in_flight[stream] += 1
        try:
            async with asyncio.timeout(timeout):
                response = await request()
            outcome = classify(response)
        except TimeoutError:
            outcome = "timeout"
        except httpx.HTTPError:
            outcome = "error"
        finally:
            in_flight[stream] -= 1
        calls.append(Call(stream, round(sent - started, 3), round(time.monotonic() - sent, 4), outcome))

    index = 0
    while (at := started + index / rate) < until:
        await asyncio.sleep(max(0.0, at - time.monotonic()))
        task = asyncio.create_task(one())
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        index += 1
    await asyncio.gather(*tasks)


def _create_outcome(response: httpx.Response) -> str:
    if response.status_code == 201:
        return str(orjson.loads(response.content)["customer"]["status"])
    return str(response.status_code)


def _plain_outcome(response: httpx.Response) -> str:
    return "ok" if response.status_code == 200 else str(response.status_code)


async def run_mode(params: Params, mode: str, customers: SlowCustomers, customers_url: str) -> Run:
    run = Run(mode)
    rng = random.Random(7)
    meterpoints = METERPOINTS
    async with workorders(mode, customers_url) as (base_url, keys, schema):
        limits = httpx.Limits(max_connections=2000, max_keepalive_connections=200)
        planning = {"authorization": f"Bearer {keys['planning']}"}
        crews = {"authorization": f"Bearer {keys['crews']}"}
        async with (
            httpx.AsyncClient(base_url=base_url, limits=limits, timeout=60) as creators,
            httpx.AsyncClient(base_url=base_url, limits=limits, timeout=60) as readers,
            httpx.AsyncClient(limits=limits, timeout=60, auth=("customer-centre", "x")) as centre,
            httpx.AsyncClient(base_url=base_url, timeout=5) as monitor,
        ):

            def create() -> Awaitable[httpx.Response]:
                body = {"meterpoint_id": rng.choice(meterpoints), "type": "replace_meter"}
                headers = {**planning, "idempotency-key": uuid.uuid4().hex}
                return creators.post("/v1/work-orders", json=body, headers=headers)

            # Orders for the crews to read, created while everything is healthy.
            known_ids = []
            for _ in range(20):
                response = await create()
                response.raise_for_status()
                known_ids.append(orjson.loads(response.content)["work_order_id"])

            def read() -> Awaitable[httpx.Response]:
                return readers.get(f"/v1/work-orders/{rng.choice(known_ids)}", headers=crews)

            def call_customers() -> Awaitable[httpx.Response]:
                headers = {"content-type": "text/xml; charset=utf-8", "soapaction": '"urn:gridhub:customers:v1#X"'}
                return centre.post(customers_url, content=CENTRE_REQUEST, headers=headers)

            pool = await asyncpg.connect(
                StackConfig().postgres_dsn("workorders"), server_settings={"search_path": schema}
            )
            in_flight: Counter[str] = Counter()
            started = time.monotonic()
            total = params.healthy + params.incident + params.recovery

            async def sample() -> None:
                while True:
                    row: dict[str, Any] = {"t": round(time.monotonic() - started, 2)}
                    with contextlib.suppress(httpx.HTTPError):
                        row.update(orjson.loads((await monitor.get("/_bench/stats")).content))
                    row["pending"] = await pool.fetchval(
                        "SELECT count(*) FROM work_orders WHERE customer_status = 'pending'"
                    )
                    row["customers_waiting"] = sum(customers.waiting.values())
                    row["customers_waiting_workorders"] = customers.waiting["workorders"]
                    row["callers_in_flight"] = dict(in_flight)
                    run.samples.append(row)
                    await asyncio.sleep(params.sample_every)

            async def phases() -> None:
                await asyncio.sleep(params.healthy)
                customers.service_time = params.incident_service_time
                await asyncio.sleep(params.incident)
                customers.service_time = HEALTHY_SERVICE_TIME

            sampler = asyncio.create_task(sample())
            loads = (
                ("create", params.create_rate, create, _create_outcome),
                ("read", params.read_rate, read, _plain_outcome),
                ("centre", params.centre_rate, call_customers, _plain_outcome),
            )
            await asyncio.gather(
                phases(),
                *(
                    open_loop(
                        stream,
                        rate,
                        until=started + total,
                        started=started,
                        request=request,
                        classify=classify,
                        timeout=params.caller_timeout,
                        calls=run.calls,
                        in_flight=in_flight,
                    )
                    for stream, rate, request, classify in loads
                ),
            )
            # The enricher fills in pending customers once the customers service is healthy again.
            deadline = time.monotonic() + params.settle
            while run.samples and run.samples[-1].get("pending") and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(params.sample_every)
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
            counts = await pool.fetch("SELECT customer_status, count(*) AS n FROM work_orders GROUP BY 1")
            run.summary["orders"] = {row["customer_status"]: row["n"] for row in counts}
            await pool.close()
    while any(customers.waiting.values()) or any(customers.serving.values()):  # noqa: ASYNC110
        await asyncio.sleep(0.05)  # the next mode starts on an idle customers service
    run.summary.update(summarise(params, run))
    return run


# --- figures ---------------------------------------------------------------------------------------------------------


def summarise(params: Params, run: Run) -> dict[str, Any]:
    start, end = params.healthy, params.healthy + params.incident

    def during(stream: str) -> list[Call]:
        return [c for c in run.calls if c.stream == stream and start <= c.sent < end]

    def ok(call: Call) -> bool:
        return call.outcome in ("known", "pending", "none", "ok")

    result: dict[str, Any] = {}
    for stream in ("create", "read", "centre"):
        calls = during(stream)
        seconds = [c.seconds for c in calls]
        result[stream] = {
            "sent": len(calls),
            "ok_share": sum(ok(c) for c in calls) / len(calls) if calls else float("nan"),
            "timeouts": sum(c.outcome == "timeout" for c in calls),
            "refused": sum(c.outcome in ("429", "503") for c in calls),
            "p50": percentile(seconds, 0.5),
            "p99": percentile(seconds, 0.99),
        }
    created = [c for c in during("create") if ok(c)]
    result["create"]["pending_share"] = (
        sum(c.outcome == "pending" for c in created) / len(created) if created else float("nan")
    )
    before = [s["rss_mib"] for s in run.samples if "rss_mib" in s and s["t"] < start]
    inside = [s for s in run.samples if "rss_mib" in s and start <= s["t"] < end + params.caller_timeout]
    result["rss_before"] = max(before, default=float("nan"))
    result["rss_peak"] = max((s["rss_mib"] for s in inside), default=float("nan"))
    result["peak_soap_in_flight"] = max((s.get("soap_in_flight", 0) for s in inside), default=0)
    result["peak_server_in_flight"] = max(
        (s.get("creates_in_flight", 0) + s.get("reads_in_flight", 0) for s in inside), default=0
    )
    opened = [s["t"] for s in run.samples if s.get("breaker_open") and s["t"] >= start]
    result["breaker_opened_after"] = opened[0] - start if opened else None
    known_again = [c.sent for c in run.calls if c.stream == "create" and c.outcome == "known" and c.sent >= end]
    result["known_again_after"] = known_again[0] - end if known_again else None
    ok_creates = sum(1 for c in run.calls if c.stream == "create" and ok(c))
    all_creates = sum(1 for c in run.calls if c.stream == "create")
    stored = sum(run.summary.get("orders", {}).values()) - 20  # the warm-up orders
    result["created_after_caller_gave_up"] = stored - ok_creates
    result["creates_total"] = all_creates
    result["pending_left"] = run.summary.get("orders", {}).get("pending", 0)
    return result


def plot(runs: list[Run], params: Params, out: Path) -> Path:
    """One column per mode; rows: order creation, unrelated requests, calls in flight, memory."""
    plt = pyplot()
    figure, axes = plt.subplots(4, len(runs), figsize=(4.6 * len(runs), 11.5), sharex=True, squeeze=False)
    start, end = params.healthy, params.healthy + params.incident
    colours = {"known": "tab:green", "pending": "tab:orange", "none": "tab:olive", "timeout": "tab:red"}
    for column, run in enumerate(runs):
        create_axis, other_axis, flight_axis, rss_axis = (axes[row][column] for row in range(4))
        for outcome in sorted({c.outcome for c in run.calls if c.stream == "create"}):
            points = [c for c in run.calls if c.stream == "create" and c.outcome == outcome]
            colour = colours.get(outcome, "tab:purple")
            times, seconds = [c.sent for c in points], [c.seconds for c in points]
            create_axis.scatter(times, seconds, s=6, label=f"create: {outcome}", color=colour)
        create_axis.set_title(f"flow control {run.mode}", fontsize=10)
        for stream, marker, colour in (("read", "o", "tab:blue"), ("centre", "^", "tab:gray")):
            fine = [c for c in run.calls if c.stream == stream and c.outcome == "ok"]
            failed = [c for c in run.calls if c.stream == stream and c.outcome != "ok"]
            name = "crews: GET order" if stream == "read" else "customer centre: SOAP"
            other_axis.scatter(
                [c.sent for c in fine], [c.seconds for c in fine], s=6, marker=marker, color=colour, label=f"{name} ok"
            )
            other_axis.scatter(
                [c.sent for c in failed],
                [c.seconds for c in failed],
                s=10,
                marker="x",
                color="tab:red" if stream == "read" else "darkred",
                label=f"{name} failed",
            )
        samples = [s for s in run.samples if "rss_mib" in s]
        t = [s["t"] for s in samples]
        flight_axis.plot(t, [s["soap_in_flight"] for s in samples], label="SOAP calls in flight (workorders)")
        in_server = [s["creates_in_flight"] + s["reads_in_flight"] for s in samples]
        flight_axis.plot(t, in_server, label="requests in flight (workorders server)")
        flight_axis.plot(t, [s["customers_waiting"] for s in samples], label="queued at customers (all clients)")
        pending = [s["pending"] for s in samples]
        flight_axis.plot(t, pending, label="orders with customer pending", linestyle="--")
        for sample in run.samples:
            if sample.get("breaker_open"):
                flight_axis.axvspan(
                    sample["t"], sample["t"] + params.sample_every, color="red", alpha=0.08, linewidth=0
                )
        rss_axis.plot(t, [s["rss_mib"] for s in samples], color="tab:brown", label="RSS, workorders")
        rss_axis.set_xlabel("seconds (shaded: incident)")
        for axis in (create_axis, other_axis, flight_axis, rss_axis):
            axis.axvspan(start, end, color="gold", alpha=0.12, linewidth=0)
            axis.grid(alpha=0.3)
            axis.legend(fontsize=6, loc="upper right")
        for axis in (create_axis, other_axis):
            axis.axhline(params.caller_timeout, color="tab:red", linewidth=0.8, linestyle=":")
    axes[0][0].set_ylabel("seconds to answer (create)")
    axes[1][0].set_ylabel("seconds to answer (unrelated)")
    axes[2][0].set_ylabel("count (red band: breaker not closed)")
    axes[3][0].set_ylabel("MiB")
    for row in range(4):
        # Memory from its lowest value, the rest from 0; one scale per row, so the modes compare at a glance.
        bottom = min(axis.get_ylim()[0] for axis in axes[row]) if row == 3 else 0
        top = max(axis.get_ylim()[1] for axis in axes[row])
        for axis in axes[row]:
            axis.set_ylim(bottom, top)
    figure.suptitle(
        f"Domino: customers SOAP at {params.incident_service_time:g} s per call ({params.workers} workers) "
        f"for {params.incident:g} s; callers give up after {params.caller_timeout:g} s"
    )
    figure.tight_layout()
    path = out / "domino.png"
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return path


def _pct(value: float) -> str:
    return "n/a" if value != value else f"{100 * value:.0f} %"


def _s(value: float | None) -> str:
    if value is None or value != value:
        return "n/a"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.1f} s"


def report(runs: list[Run], params: Params, plot_path: Path | None, quick: bool, took: float) -> str:
    lines = [
        "# The domino effect: a slow customers service behind work orders" + (" (quick smoke run)" if quick else ""),
        "",
        machine_line(),
        "",
        "## Parameters",
        "",
        f"- customers service stand-in: `GetMeterpointCustomer` of the committed WSDL, {params.workers} workers, "
        f"{HEALTHY_SERVICE_TIME * 1000:g} ms per call, {params.incident_service_time:g} s during the incident; "
        f"healthy {params.healthy:g} s, incident {params.incident:g} s, healthy again {params.recovery:g} s",
        f"- load, open loop, every caller gives up after {params.caller_timeout:g} s: planning system "
        f"{params.create_rate:g} orders/s (`POST /v1/work-orders`), field crews {params.read_rate:g} reads/s "
        f"(`GET /v1/work-orders/{{id}}`, no customers call), customer centre {params.centre_rate:g} SOAP calls/s "
        "straight to the customers service",
        "- work orders: the real app in its own process (uvicorn), PostgreSQL, consumers and relay off, enricher every "
        "1 s; modes set only `WorkordersSettings.boundaries` (see the module docstring)",
        scale_line(params.scale, quick, SCALES),
        "",
        "## During the incident",
        "",
        "| mode | creates answered in time | create p50 / p99 | of those, customer pending | crews' reads ok | "
        "read p99 | customer centre ok | centre p99 | peak SOAP calls in flight | peak requests in flight | "
        "RSS before → peak | breaker opened after |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in runs:
        s = run.summary
        c, r, k = s["create"], s["read"], s["centre"]
        lines.append(
            f"| {run.mode} | {_pct(c['ok_share'])} | {_s(c['p50'])} / {_s(c['p99'])} | {_pct(c['pending_share'])} | "
            f"{_pct(r['ok_share'])} ({r['refused']} refused, {r['timeouts']} timed out) | {_s(r['p99'])} | "
            f"{_pct(k['ok_share'])} ({k['timeouts']} timed out) | {_s(k['p99'])} | {s['peak_soap_in_flight']} | "
            f"{s['peak_server_in_flight']} | {s['rss_before']:.0f} → {s['rss_peak']:.0f} MiB | "
            f"{_s(s['breaker_opened_after'])} |"
        )
    lines += [
        "",
        "## Afterwards",
        "",
        "| mode | orders created though the caller had given up | first known customer after the incident | "
        "orders still pending at the end |",
        "|---|---:|---:|---:|",
    ]
    for run in runs:
        s = run.summary
        lines.append(
            f"| {run.mode} | {s['created_after_caller_gave_up']} of {s['creates_total']} | "
            f"{_s(s['known_again_after'])} | {s['pending_left']} |"
        )
    lines += [
        "",
        "Reading it:",
        "",
        "- **off**: every order waits for the slow service, so requests pile up in the work orders service (in "
        "flight, memory) and in the customers service's queue, where they also delay the customer centre, a client "
        "that has nothing to do with work orders: the slowness spreads to everyone sharing the dependency. Callers "
        "give up, but their orders are still created later (a retry with a new key would duplicate them).",
        "- **edge only**: the REST bulkhead bounds what piles up, but it is shared: hung creates fill it and the "
        "crews' unrelated reads are refused (503) with them; flow control at the edge alone does not contain a "
        "slow dependency.",
        "- **on**: the `customers_soap` bulkhead (5) and timeout (3 s) bound the calls, the breaker opens on slow "
        "calls and order creation answers at once with the customer pending; reads and the customer centre stay "
        "healthy. After the incident a half-open probe closes the breaker and the enricher fills in the pending "
        "customers.",
        "",
    ]
    if plot_path is not None:
        lines += [f"Plot: [{plot_path.name}]({plot_path.name}).", ""]
    lines += [f"Took {took:.0f} s.", ""]
    return "\n".join(lines)


def headline(runs: list[Run]) -> dict[str, Any]:
    """The figures the aggregator puts into bench/results/README.md."""
    return {
        run.mode: {
            "create_ok": run.summary["create"]["ok_share"],
            "create_p99": run.summary["create"]["p99"],
            "read_ok": run.summary["read"]["ok_share"],
            "centre_ok": run.summary["centre"]["ok_share"],
            "rss_growth": run.summary["rss_peak"] - run.summary["rss_before"],
        }
        for run in runs
    }


# --- running ---------------------------------------------------------------------------------------------------------


async def run_all(params: Params, modes: list[str]) -> list[Run]:
    customers = SlowCustomers(params.workers)
    runs = []
    async with serve(customers, lifespan="off") as base_url:
        for mode in modes:
            emit(f"domino: flow control {mode} ...")
            runs.append(await run_mode(params, mode, customers, f"{base_url}/soap/customers"))
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.domino", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds per mode; a smoke test, not a measurement")
    parser.add_argument("--out", type=Path, help=f"folder for the report and plot (default: {RESULTS})")
    parser.add_argument("--mode", choices=MODES, action="append", help="run only these modes (repeatable)")
    add_scale_option(parser, SCALES)
    parser.add_argument(
        "--serve-workorders", nargs=3, metavar=("MODE", "CUSTOMERS_URL", "SCHEMA"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.serve_workorders:
        serve_workorders(*args.serve_workorders)
        return 0
    scale = scale_of(parser, args)
    params = QUICK if args.quick else FULL.scaled(scale)
    started = time.monotonic()
    runs = asyncio.run(run_all(params, args.mode or list(QUICK_MODES if args.quick else MODES)))
    out = args.out or (None if args.quick else RESULTS)
    plot_path = None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        plot_path = plot(runs, params, out)
    text = report(runs, params, plot_path, args.quick, time.monotonic() - started)
    print(text)
    if out is not None:
        (out / REPORT.name).write_text(text)
        (out / "domino.json").write_text(json.dumps(headline(runs), indent=1))
        print(f"report written to {out / REPORT.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
