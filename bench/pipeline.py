"""Overload and latency across the pipeline: REST ingress -> Kafka -> read side -> queryable.

    uv run python -m bench.pipeline                        # about 2.5 minutes; writes pipeline.md and pipeline.png
    uv run python -m bench.pipeline --scale 5              # every phase 5x as long (the knob for larger runs)
    uv run python -m bench.pipeline --overload-seconds 300 # only the overload longer (wins over the scale's)
    uv run python -m bench.pipeline --quick                # a smoke test; writes nothing unless --out

The collection service's REST ingress (the real app in a process of its own, publishing to a topic of the run's own,
see bench.ingress) and the read side (``python -m services.readside``, its own process, views in a schema of the
run's own) on the local stack; this process offers the load and watches. Topic and schema names come from
bench.readside (``Names``).

1. sustainable rate: closed-loop REST batches as fast as the ingress takes them (no quota in the way); the
   sustainable rate S is the lower of what the ingress accepted and what the read side materialized per second
   over the same window, all on the same cores;
2. latency: readings offered open loop at 25 %, 50 % and 80 % of S, each phase drained before the next; for every
   reading, the time from its arrival at the ingress (the events' ``time``) to the read side's commit that makes it
   queryable (its stored offsets, polled every 20 ms): p50 / p95 / p99;
3. overload: ten times S, open loop, for ``overload_seconds``, against the ingress's shipped REST policy with its
   per-client quota sized to 1.25 S (its per-client cap on requests in flight lifted: one client stands for all)
   and lag-aware admission on the read side's group (shipped admission defaults,
   the lag read every 5 s): the memory of both services, zero loss of acknowledged readings (every id a 202 named
   must be in the read side's readings table), the latency of what was admitted, and the time to recover: half
   of S offered afterwards until everything admitted is queryable and the ingress admits without refusals.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import json
import os
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from bench.common import RESULTS, add_scale_option, emit, machine_line, pyplot, rates, rss_mib, scale_line, scale_of
from bench.ingress import PARTITIONS, Chunk, LagAdmission, running_ingress
from bench.readside import Names
from libs.events.gsrn import with_check_digit
from libs.flowcontrol.policy import QuotaSettings
from services.collection.settings import Boundaries
from stack.config import StackConfig

REPORT = RESULTS / "pipeline.md"
MAX_IN_FLIGHT = 128
MAX_LATE = 0.05  # seconds behind schedule after which a due batch is counted as not sent
CLIENT_TIMEOUT = 10.0
START = datetime(2024, 1, 1, tzinfo=UTC)
ROOT = Path(__file__).parent.parent


@dataclass(frozen=True)
class Params:
    batch: int  # readings per request (one per meterpoint, one interval per request)
    capacity_seconds: float
    capacity_senders: int
    latency_seconds: float
    latency_shares: tuple[float, ...]
    overload_factor: float
    overload_seconds: float
    recovery_max: float
    sample_every: float
    scale: float = 1.0

    def scaled(self, factor: float) -> Params:
        """The capacity, each latency and the overload phase ``factor`` times as long; the batch, the senders, the
        shares of S, the overload factor and the recovery limit stay (the rates are measured)."""
        return replace(
            self,
            capacity_seconds=self.capacity_seconds * factor,
            latency_seconds=self.latency_seconds * factor,
            overload_seconds=self.overload_seconds * factor,
            scale=factor,
        )


SCALES = "the seconds of the capacity, each latency and the overload phase"
FULL = Params(
    batch=1_000,
    capacity_seconds=8.0,
    capacity_senders=8,
    latency_seconds=8.0,
    latency_shares=(0.25, 0.5, 0.8),
    overload_factor=10.0,
    overload_seconds=60.0,
    recovery_max=30.0,
    sample_every=0.5,
)
QUICK = Params(
    batch=200,
    capacity_seconds=1.5,
    capacity_senders=4,
    latency_seconds=1.0,
    latency_shares=(0.25, 0.5, 0.8),
    overload_factor=10.0,
    overload_seconds=2.0,
    recovery_max=3.0,
    sample_every=0.25,
)


# --- the ingress, in a process of its own --------------------------------------------------------------------------


class BenchEndpoints:
    """ASGI layer around the ingress: ``/_bench/chunks`` hands over (and forgets) the acknowledged batches,
    ``/_bench/stats`` the process's memory and the quota's admission scale."""

    def __init__(self, app: FastAPI, chunks: list[Chunk]) -> None:
        self.app = app
        self.chunks = chunks

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith("/_bench/"):
            await self.app(scope, receive, send)
            return
        if path == "/_bench/chunks":
            body, self.chunks[:] = orjson.dumps(self.chunks), []
        else:
            quota = self.app.state.parts.boundaries["rest_ingress"].quota
            body = orjson.dumps({"rss_mib": rss_mib(), "quota_scale": quota.scale if quota is not None else 1.0})
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})


async def _serve_ingress(config: dict[str, Any]) -> None:
    chunks: list[Chunk] = []
    shipped = Boundaries().rest_ingress
    # One benchmark client stands for every head-end here, so the per-client cap on requests in flight (there for one
    # client among many) is lifted; the quota is sized for it instead.
    quota = QuotaSettings(rate=config["quota"], burst=config["quota"])
    rest = shipped.model_copy(update={"quota": quota, "per_client": None})
    admission = LagAdmission(**config["admission"]) if config["admission"] else None

    def wrap(app: FastAPI) -> ASGIApp:
        return BenchEndpoints(app, chunks)

    async with running_ingress(config["topic"], rest, admission=admission, chunks=chunks, wrap=wrap) as gate:
        print(json.dumps({"base_url": gate.base_url, "api_key": gate.api_key}), flush=True)
        await asyncio.to_thread(sys.stdin.read)  # until the parent closes our stdin


@dataclass
class Child:
    process: asyncio.subprocess.Process
    base_url: str
    api_key: str = ""


@contextlib.asynccontextmanager
async def ingress_child(topic: str, quota: float, admission: LagAdmission | None) -> AsyncIterator[Child]:
    config = {"topic": topic, "quota": quota, "admission": None if admission is None else admission.__dict__}
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "bench.pipeline", "--serve-ingress", json.dumps(config)),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        cwd=ROOT,
    )
    assert process.stdout is not None
    assert process.stdin is not None
    try:
        line = await asyncio.wait_for(process.stdout.readline(), 60)
        if not line.startswith(b"{"):
            raise RuntimeError("the ingress did not start")
        started = json.loads(line)
        yield Child(process, started["base_url"], started["api_key"])
    finally:
        process.stdin.close()
        try:
            await asyncio.wait_for(process.wait(), 20)
        except TimeoutError:
            process.kill()
            await process.wait()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextlib.asynccontextmanager
async def readside_child(names: Names, group: str) -> AsyncIterator[Child]:
    """``python -m services.readside`` (consumer and API) on the run's topics and schema."""
    stack = StackConfig()
    readings, events, customers, workorders, meterpoints, series = names.topics
    port = _free_port()
    env = {
        **os.environ,
        "READSIDE_POSTGRES_DSN": stack.postgres_dsn("readside"),
        "READSIDE_KAFKA_BOOTSTRAP_SERVERS": stack.kafka_bootstrap,
        "READSIDE_POSTGRES_SCHEMA": names.schema,
        "READSIDE_READINGS_TOPIC": readings,
        "READSIDE_METER_EVENTS_TOPIC": events,
        "READSIDE_CUSTOMERS_TOPIC": customers,
        "READSIDE_WORKORDERS_TOPIC": workorders,
        "READSIDE_METERPOINTS_TOPIC": meterpoints,
        "READSIDE_SERIES_TOPIC": series,
        "READSIDE_GROUP_ID": group,
        "READSIDE_REQUIRE_API_KEY": "false",
        "READSIDE_HTTP_PORT": str(port),
        "READSIDE_LOG_LEVEL": "WARNING",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.readside", env=env, cwd=ROOT, stdout=asyncio.subprocess.DEVNULL
    )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=2) as client:
            deadline = time.monotonic() + 60
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get("/readyz")).status_code == 200:
                        break
                if time.monotonic() > deadline or process.returncode is not None:
                    raise RuntimeError("the read side did not become ready")
                await asyncio.sleep(0.1)
        yield Child(process, f"http://127.0.0.1:{port}")
    finally:
        if process.returncode is None:
            process.terminate()
        await asyncio.wait_for(process.wait(), 30)


# --- watching the read side ----------------------------------------------------------------------------------------


class Watcher:
    """Polls the read side's stored offsets (committed with its views) every 20 ms; knows when each offset applied."""

    def __init__(self, conn: asyncpg.Connection[Any], schema: str, topic: str) -> None:
        self.conn = conn
        self.query = f'SELECT partition, next_offset FROM "{schema}_v1".consumer_offsets WHERE topic = $1'
        self.topic = topic
        self.timeline: dict[int, tuple[list[float], list[int]]] = {p: ([], []) for p in range(PARTITIONS)}
        self.next_offsets = dict.fromkeys(range(PARTITIONS), 0)

    @property
    def applied(self) -> int:
        return sum(self.next_offsets.values())

    async def run(self) -> None:
        while True:
            now = time.time()
            for row in await self.conn.fetch(self.query, self.topic):
                partition, offset = row["partition"], row["next_offset"] or 0
                if offset > self.next_offsets[partition]:
                    self.next_offsets[partition] = offset
                    times, offsets = self.timeline[partition]
                    times.append(now)
                    offsets.append(offset)
            await asyncio.sleep(0.02)

    def seen_at(self, partition: int, last_offset: int) -> float | None:
        """When the read side had applied ``last_offset`` of ``partition`` (None: not yet)."""
        times, offsets = self.timeline[partition]
        index = bisect.bisect_right(offsets, last_offset)
        return times[index] if index < len(times) else None

    def applied_all(self, chunks: list[Chunk]) -> bool:
        return all(self.next_offsets[partition] > last for partition, last, _, _ in chunks)


# --- load ----------------------------------------------------------------------------------------------------------


@dataclass
class Load:
    """The readings this run offered and what became of them."""

    batch: int
    meterpoints: list[str]
    acked_ids: bytearray = field(default_factory=bytearray)
    offered: int = 0
    accepted: int = 0
    refused: int = 0
    failed: int = 0  # readings of requests whose connection failed or timed out (never acknowledged)
    not_sent: int = 0  # readings due while every client connection was busy
    unexpected: list[str] = field(default_factory=list)
    next_interval: int = 0
    requests: list[tuple[float, int]] = field(default_factory=list)  # (wall time sent, status)
    chunks: list[Chunk] = field(default_factory=list)

    def __post_init__(self) -> None:
        fragments = [
            b'{"meterpoint_id":"%s","register":"active_import","interval_end":"@T@","resolution":"PT15M",'
            b'"value":%d.%03d,"unit":"kWh","quality":"measured"}' % (gsrn.encode(), n % 3, n % 1000)
            for n, gsrn in enumerate(self.meterpoints)
        ]
        self.template = b"[" + b",".join(fragments) + b"]"

    def body(self) -> bytes:
        """The next batch: every meterpoint's reading of the next quarter hour (never sent before)."""
        end = START + timedelta(minutes=15 * (self.next_interval + 1))
        self.next_interval += 1
        return self.template.replace(b"@T@", end.strftime("%Y-%m-%dT%H:%M:%SZ").encode())

    async def send(self, client: RawClient) -> int:
        """One batch; returns the status (0: the connection failed or timed out, nothing acknowledged)."""
        body = self.body()
        sent = time.time()
        try:
            status, content = await asyncio.wait_for(client.post(body), CLIENT_TIMEOUT)
        except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError):
            # Under overload the server may close a connection whose request it refused before reading the body;
            # a client gives up after CLIENT_TIMEOUT.
            self.requests.append((sent, 0))
            self.failed += self.batch
            return 0
        self.requests.append((sent, status))
        if status == 202:
            for result in orjson.loads(content)["results"]:
                self.acked_ids += bytes.fromhex(result["id"].replace("-", ""))
            self.accepted += self.batch
        elif status in (429, 503):
            self.refused += self.batch
        else:
            self.unexpected.append(f"{status}: {content[:300]!r}")
        return status


class RawClient:
    """A lean HTTP/1.1 client for ``POST /v1/readings`` (keep-alive connections, pre-built request head).

    httpx costs this process more CPU per request than the ingress spends refusing one, so it could not offer
    ten times the sustainable rate on two shared cores; this writes the request bytes and reads status, headers
    and a Content-Length body, nothing else.
    """

    def __init__(self, base_url: str, api_key: str) -> None:
        host, port = base_url.removeprefix("http://").split(":")
        self.host, self.port = host, int(port)
        self.head = (
            f"POST /v1/readings HTTP/1.1\r\nhost: {host}:{port}\r\nauthorization: Bearer {api_key}\r\n"
            "content-type: application/json\r\ncontent-length: "
        ).encode()
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def post(self, body: bytes) -> tuple[int, bytes]:
        reader, writer = self.idle.pop() if self.idle else await asyncio.open_connection(self.host, self.port)
        keep = False
        try:
            writer.write(self.head + str(len(body)).encode() + b"\r\n\r\n" + body)
            await writer.drain()
            status = int((await reader.readuntil(b"\r\n")).split(b" ", 2)[1])
            length, keep = 0, True
            while (line := await reader.readuntil(b"\r\n")) != b"\r\n":
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"connection" and value.strip().lower() == b"close":
                    keep = False
            content = await reader.readexactly(length)
            return status, content
        except BaseException:
            keep = False
            raise
        finally:
            if keep:
                self.idle.append((reader, writer))
            else:
                writer.close()

    def close(self) -> None:
        for _, writer in self.idle:
            writer.close()
        self.idle.clear()


async def closed_loop(load: Load, child: Child, senders: int, seconds: float) -> None:
    client = RawClient(child.base_url, child.api_key)
    until = time.monotonic() + seconds

    async def sender() -> None:
        while time.monotonic() < until:
            load.offered += load.batch
            await load.send(client)

    try:
        await asyncio.gather(*(sender() for _ in range(senders)))
    finally:
        client.close()
    if load.unexpected:
        raise RuntimeError(f"the ingress answered {load.unexpected[0]}")


async def open_loop(load: Load, child: Child, rate: float, seconds: float) -> None:
    """``rate`` readings/s in batches for ``seconds`` of wall time, whatever the answers; a refused batch is not sent
    again.

    At most `MAX_IN_FLIGHT` requests are open at once (each a connection, as from many clients). A batch that falls
    due while all are busy, or while this process is behind its schedule by more than `MAX_LATE` seconds (it shares
    the cores with everything else), is counted as not sent instead of being sent late in a burst: the offered rate
    stays what it says, and what could not even be delivered is reported.
    """
    client = RawClient(child.base_url, child.api_key)
    tasks: set[asyncio.Task[int]] = set()
    interval = load.batch / rate
    started, due, total = time.monotonic(), 0, max(1, round(seconds / interval))
    try:
        while due < total:
            elapsed = time.monotonic() - started
            should = min(total, int(elapsed / interval) + 1)
            while due < should:
                late = elapsed - due * interval
                due += 1
                load.offered += load.batch
                if len(tasks) >= MAX_IN_FLIGHT or late > MAX_LATE:
                    load.not_sent += load.batch
                    continue
                task = asyncio.create_task(load.send(client))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if due < total:
                await asyncio.sleep(max(0.0, started + due * interval - time.monotonic()))
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        client.close()
    if load.unexpected:
        raise RuntimeError(f"the ingress answered {load.unexpected[0]}")


async def fetch_chunks(child: Child, load: Load) -> None:
    async with httpx.AsyncClient(base_url=child.base_url, timeout=10) as client:
        load.chunks += [tuple(chunk) for chunk in orjson.loads((await client.get("/_bench/chunks")).content)]


async def drain(load: Load, child: Child, watcher: Watcher, limit: float) -> float:
    """Wait until the read side applied every acknowledged batch; seconds waited."""
    started = time.monotonic()
    await fetch_chunks(child, load)
    while not watcher.applied_all(load.chunks) and time.monotonic() - started < limit:  # noqa: ASYNC110 - polls
        await asyncio.sleep(0.05)
    return time.monotonic() - started


def latencies(load: Load, watcher: Watcher, since: float, until: float) -> list[tuple[float, int]]:
    """(seconds from arrival to queryable, readings) of every batch that arrived in [since, until)."""
    return [(latency, count) for _, latency, count in arrivals(load, watcher, since, until)]


def arrivals(load: Load, watcher: Watcher, since: float, until: float) -> list[tuple[float, float, int]]:
    """(arrival, seconds to queryable, readings) of every applied batch that arrived in [since, until)."""
    found = []
    for partition, last, count, arrival in load.chunks:
        if since <= arrival < until:
            seen = watcher.seen_at(partition, last)
            if seen is not None:
                found.append((arrival, max(0.0, seen - arrival), count))
    return found


def weighted_percentile(values: list[tuple[float, int]], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    total = sum(count for _, count in ordered)
    running = 0
    for value, count in ordered:
        running += count
        if running >= fraction * total:
            return value
    return ordered[-1][0]


# --- the run -------------------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    params: Params
    capacity: dict[str, float] = field(default_factory=dict)
    latency: list[dict[str, float]] = field(default_factory=list)
    overload: dict[str, Any] = field(default_factory=dict)
    samples: list[dict[str, float]] = field(default_factory=list)
    timeline: list[tuple[float, float, float]] = field(default_factory=list)  # arrival s, p50, p99 per second


async def run(params: Params) -> Outcome:
    stack = StackConfig()
    names = Names(f"pl{uuid.uuid4().hex[:8]}")
    topic, group = names.topics[0], f"bench-pipeline-{names.tag}"
    meterpoints = [with_check_digit(f"57131318{n:09d}") for n in range(params.batch)]
    load = Load(params.batch, meterpoints)
    outcome = Outcome(params)
    admin = AIOKafkaAdminClient(bootstrap_servers=stack.kafka_bootstrap)
    await admin.start()
    all_topics = [*names.topics, *(f"{t}.dlq" for t in names.topics)]
    await admin.create_topics([NewTopic(name=t, num_partitions=PARTITIONS, replication_factor=1) for t in all_topics])
    conn = await asyncpg.connect(stack.postgres_dsn("readside"))
    try:
        async with readside_child(names, group) as readside:
            watcher = Watcher(conn, names.schema, topic)
            watching = asyncio.create_task(watcher.run())
            try:
                await _measure(params, load, watcher, readside, topic, group, outcome)
            finally:
                watching.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watching
        outcome.overload["lost"] = await _reconcile(conn, names.schema, load)
        outcome.overload["acked_total"] = len(load.acked_ids) // 16
    finally:
        for row in await conn.fetch("SELECT nspname FROM pg_namespace WHERE nspname LIKE $1 || '%'", names.schema):
            await conn.execute(f'DROP SCHEMA "{row["nspname"]}" CASCADE')
        await conn.close()
        await admin.delete_topics(all_topics)
        await admin.close()
    return outcome


async def _measure(
    params: Params, load: Load, watcher: Watcher, readside: Child, topic: str, group: str, outcome: Outcome
) -> None:
    # 1. What the pipeline sustains on this machine.
    async with ingress_child(topic, quota=1e6, admission=None) as gate:
        emit("pipeline: sustainable rate ...")
        accepted0, started = load.accepted, time.monotonic()
        measure = asyncio.create_task(closed_loop(load, gate, params.capacity_senders, params.capacity_seconds))
        await asyncio.sleep(min(1.0, params.capacity_seconds / 3))  # past the start
        accepted1, applied1, at1 = load.accepted, watcher.applied, time.monotonic()
        await measure
        at2 = time.monotonic()
        ingress_rate = (load.accepted - accepted1) / (at2 - at1)
        readside_rate = (watcher.applied - applied1) / (at2 - at1)
        drained = await drain(load, gate, watcher, 120)
    sustainable = min(ingress_rate, readside_rate)
    outcome.capacity = {
        "ingress": ingress_rate,
        "readside": readside_rate,
        "sustainable": sustainable,
        "drain_seconds": drained,
        "readings": load.accepted - accepted0,
        "seconds": time.monotonic() - started,
    }
    # 2. and 3., with the shipped REST policy sized for it.
    admission = LagAdmission(group, low=sustainable, high=5 * sustainable, interval=5.0)
    async with ingress_child(topic, quota=1.25 * sustainable / params.batch, admission=admission) as gate:
        for share in params.latency_shares:
            emit(f"pipeline: latency at {share:.0%} ...")
            since = time.time()
            accepted = load.accepted
            await open_loop(load, gate, share * sustainable, params.latency_seconds)
            until = time.time()
            await drain(load, gate, watcher, 60)
            found = latencies(load, watcher, since, until)
            outcome.latency.append(
                {
                    "share": share,
                    "rate": (load.accepted - accepted) / (until - since),
                    "p50": weighted_percentile(found, 0.5),
                    "p95": weighted_percentile(found, 0.95),
                    "p99": weighted_percentile(found, 0.99),
                    "max": max((value for value, _ in found), default=float("nan")),
                    "readings": sum(count for _, count in found),
                }
            )
        emit(f"pipeline: overload at {params.overload_factor:g}x for {params.overload_seconds:g} s ...")
        await _overload(params, load, watcher, readside, gate, sustainable, outcome)


async def _overload(
    params: Params, load: Load, watcher: Watcher, readside: Child, gate: Child, sustainable: float, outcome: Outcome
) -> None:
    start_wall, start = time.time(), time.monotonic()
    requests_before = len(load.requests)
    counters0 = (load.offered, load.accepted, load.refused, load.not_sent)
    stats_client = httpx.AsyncClient(base_url=gate.base_url, timeout=5)

    async def sample() -> None:
        while True:
            row: dict[str, float] = {"t": round(time.monotonic() - start, 2)}
            row["offered"], row["accepted"], row["refused"], row["not_sent"] = (
                load.offered - counters0[0],
                load.accepted - counters0[1],
                load.refused - counters0[2],
                load.not_sent - counters0[3],
            )
            row["applied"] = watcher.applied
            row["acked"] = load.accepted
            with contextlib.suppress(httpx.HTTPError, ValueError):
                stats = orjson.loads((await stats_client.get("/_bench/stats")).content)
                row["ingress_rss"], row["quota_scale"] = stats["rss_mib"], stats["quota_scale"]
            with contextlib.suppress(OSError):
                row["readside_rss"] = rss_mib(readside.process.pid)
            outcome.samples.append(row)
            await asyncio.sleep(params.sample_every)

    async def chunks_often() -> None:
        while True:
            await fetch_chunks(gate, load)
            await asyncio.sleep(0.5)

    sampler, fetcher = asyncio.create_task(sample()), asyncio.create_task(chunks_often())
    try:
        await open_loop(load, gate, params.overload_factor * sustainable, params.overload_seconds)
        end_wall, end = time.time(), time.monotonic()
        admitted = {
            "offered": load.offered - counters0[0],
            "accepted": load.accepted - counters0[1],
            "not_sent": load.not_sent - counters0[3],
        }
        # Recovery: half of S, until everything admitted is queryable and nothing is refused for 2 s.
        await fetch_chunks(gate, load)
        overload_chunks = [chunk for chunk in load.chunks if chunk[3] < end_wall]
        normal = asyncio.create_task(open_loop(load, gate, 0.5 * sustainable, params.recovery_max))
        caught_up = None
        while not normal.done():
            now = time.monotonic()
            if caught_up is None and watcher.applied_all(overload_chunks):
                caught_up = now - end
            refusals = [sent for sent, status in load.requests[requests_before:] if status != 202]
            last_refusal = max(refusals, default=start_wall) - end_wall
            if caught_up is not None and time.time() - end_wall - max(last_refusal, 0.0) >= 2.0:
                normal.cancel()
                break
            await asyncio.sleep(0.1)
        with contextlib.suppress(asyncio.CancelledError):
            await normal
        await drain(load, gate, watcher, 60)
    finally:
        sampler.cancel()
        fetcher.cancel()
        await asyncio.gather(sampler, fetcher, return_exceptions=True)
        await stats_client.aclose()
    during = load.requests[requests_before:]
    statuses = [status for sent, status in during if sent < end_wall]
    refusals_after = [sent - end_wall for sent, status in during if sent >= end_wall and status != 202]
    found = latencies(load, watcher, start_wall, end_wall)
    inside = [s for s in outcome.samples if s["t"] <= end - start]
    half = [s for s in inside if s["t"] >= (end - start) / 2]
    outcome.overload.update(
        {
            "offered": admitted["offered"],
            "accepted": admitted["accepted"],
            "not_sent": admitted["not_sent"],
            "overload_took": end - start,
            "requests": len(statuses),
            "refused_429": statuses.count(429),
            "refused_503": statuses.count(503),
            "connection_failed": statuses.count(0),
            "p50": weighted_percentile(found, 0.5),
            "p99": weighted_percentile(found, 0.99),
            "max_backlog": max((s["acked"] - s["applied"] for s in inside), default=0),
            "caught_up_after": caught_up,
            "last_refusal_after": max(refusals_after, default=0.0),
            "recovered_after": max(caught_up or float("nan"), max(refusals_after, default=0.0)),
            **{
                f"{service}_rss_{which}": value
                for service in ("ingress", "readside")
                for which, value in (
                    ("start", inside[0].get(f"{service}_rss", float("nan")) if inside else float("nan")),
                    ("peak_first_half", max((s.get(f"{service}_rss", 0) for s in inside if s not in half), default=0)),
                    ("peak_second_half", max((s.get(f"{service}_rss", 0) for s in half), default=0)),
                )
            },
        }
    )
    by_second: dict[int, list[tuple[float, int]]] = {}
    for arrival, latency, count in arrivals(load, watcher, start_wall, time.time()):
        by_second.setdefault(int(arrival - start_wall), []).append((latency, count))
    outcome.timeline = [
        (second + 0.5, weighted_percentile(values, 0.5), weighted_percentile(values, 0.99))
        for second, values in sorted(by_second.items())
    ]


async def _reconcile(conn: asyncpg.Connection[Any], schema: str, load: Load) -> int:
    """Acknowledged reading ids missing from the read side's readings table (0 means nothing was lost)."""
    ids = [(uuid.UUID(bytes=bytes(load.acked_ids[i : i + 16])),) for i in range(0, len(load.acked_ids), 16)]
    async with conn.transaction():
        await conn.execute("CREATE TEMP TABLE bench_acked (reading_id uuid) ON COMMIT DROP")
        await conn.copy_records_to_table("bench_acked", records=ids)
        missing: int = await conn.fetchval(
            f'SELECT count(*) FROM bench_acked a WHERE NOT EXISTS (SELECT 1 FROM "{schema}_v1".readings r '
            "WHERE r.reading_id = a.reading_id)"
        )
    return missing


# --- report ----------------------------------------------------------------------------------------------------------


def _ms(seconds: float | None) -> str:
    if seconds is None or seconds != seconds:
        return "n/a"
    return f"{seconds * 1000:,.0f} ms" if seconds < 10 else f"{seconds:,.1f} s"


def _rss(overload: dict[str, Any], service: str) -> str:
    start, first, second = (
        overload[f"{service}_rss_{which}"] for which in ("start", "peak_first_half", "peak_second_half")
    )
    return f"{start:.0f} / {first:.0f} / {second:.0f} MiB"


def plot(outcome: Outcome, out: Path) -> Path:
    plt = pyplot()
    params, samples = outcome.params, outcome.samples
    figure, axes = plt.subplots(4, 1, figsize=(10, 11), sharex=True)
    t = [s["t"] for s in samples]
    rate_axis, backlog_axis, latency_axis, rss_axis = axes
    for name, label, colour in (
        ("offered", "offered", "tab:gray"),
        ("accepted", "admitted (202)", "black"),
        ("refused", "refused (429 / 503)", "tab:red"),
        ("not_sent", "not sent (client saturated)", "tab:orange"),
    ):
        rate_axis.plot(t, rates(t, [s[name] for s in samples]), label=label, color=colour)
    applied = [s["applied"] - samples[0]["applied"] for s in samples] if samples else []
    rate_axis.plot(t, rates(t, applied), label="materialized by the read side", color="tab:blue")
    rate_axis.set_ylabel("readings/s")
    rate_axis.set_title(
        f"{params.overload_factor:g}x the sustainable rate ({outcome.capacity['sustainable']:,.0f} readings/s) for "
        f"{params.overload_seconds:g} s, then half of it",
        fontsize=10,
    )
    backlog_axis.plot(
        t, [s["acked"] - s["applied"] for s in samples], label="admitted, not yet queryable", color="tab:purple"
    )
    backlog_axis.set_ylabel("readings")
    scale_axis = backlog_axis.twinx()
    scale_axis.plot(
        t,
        [s.get("quota_scale", float("nan")) for s in samples],
        label="ingress quota scale",
        color="tab:green",
        linestyle="--",
    )
    scale_axis.set_ylim(0, 1.05)
    scale_axis.legend(fontsize=7, loc="lower right")
    latency_axis.plot(
        [x for x, _, _ in outcome.timeline], [p50 for _, p50, _ in outcome.timeline], label="p50 of admitted"
    )
    latency_axis.plot(
        [x for x, _, _ in outcome.timeline], [p99 for _, _, p99 in outcome.timeline], label="p99 of admitted"
    )
    latency_axis.set_ylabel("arrival -> queryable, s")
    rss_axis.plot(t, [s.get("ingress_rss", float("nan")) for s in samples], label="collection (ingress)")
    rss_axis.plot(t, [s.get("readside_rss", float("nan")) for s in samples], label="read side")
    rss_axis.set_ylabel("RSS MiB")
    rss_axis.set_ylim(bottom=0)
    rss_axis.set_xlabel("seconds since the overload began (shaded)")
    for axis in axes:
        axis.axvspan(0, params.overload_seconds, color="gold", alpha=0.12, linewidth=0)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7, loc="upper right")
    figure.tight_layout()
    path = out / "pipeline.png"
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return path


def report(outcome: Outcome, plot_path: Path | None, quick: bool, took: float) -> str:
    p, c, o = outcome.params, outcome.capacity, outcome.overload
    lines = [
        "# The pipeline under load: REST ingress -> Kafka -> read side" + (" (quick smoke run)" if quick else ""),
        "",
        machine_line(),
        "",
        "## Parameters",
        "",
        f"- batches of {p.batch:,} readings (one interval of {p.batch:,} meterpoints) to `POST /v1/readings` of the "
        "collection app (own process, topic of the run's own); the read side is `python -m services.readside` "
        "(own process, own schema); this process offers the load",
        f"- sustainable rate: {p.capacity_senders} requests in flight, closed loop, {p.capacity_seconds:g} s",
        f"- latency: open loop at {', '.join(f'{share:.0%}' for share in p.latency_shares)} of it, "
        f"{p.latency_seconds:g} s each; arrival at the ingress -> the read side's commit (stored offsets polled "
        "every 20 ms)",
        f"- overload: {p.overload_factor:g}x, open loop, {p.overload_seconds:g} s; the shipped REST policy "
        "(bulkhead 8, 0.5 s wait, 64 waiting) with its quota at 1.25x the sustainable rate and lag-aware admission "
        "on the read side's group (low = 1 s of it, high = 5 s; shipped admission defaults; lag read every 5 s); "
        f"then half the sustainable rate until recovered (at most {p.recovery_max:g} s)",
        scale_line(p.scale, quick, SCALES),
        "",
        "## Sustainable rate",
        "",
        "| ingress accepted | read side materialized | **sustainable** |",
        "|---:|---:|---:|",
        f"| {c['ingress']:,.0f} readings/s | {c['readside']:,.0f} readings/s | "
        f"**{c['sustainable']:,.0f} readings/s** |",
        "",
        "## Latency, arrival -> queryable",
        "",
        "| offered | admitted readings/s | p50 | p95 | p99 | max |",
        "|---|---:|---:|---:|---:|---:|",
        *(
            f"| {row['share']:.0%} of sustainable | {row['rate']:,.0f} | {_ms(row['p50'])} | {_ms(row['p95'])} | "
            f"{_ms(row['p99'])} | {_ms(row['max'])} |"
            for row in outcome.latency
        ),
        "",
        f"## Overload: {p.overload_factor:g}x for {p.overload_seconds:g} s",
        "",
        "| offered readings | not sent (client saturated) | admitted | requests refused 429 / 503 / failed | "
        "max backlog | p50 / p99 of admitted | "
        "ingress RSS start / peak 1st half / peak 2nd half | read side RSS start / peak 1st half / peak 2nd half | "
        "**lost** | recovered after |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| {o['offered']:,} | {o['not_sent']:,} | {o['accepted']:,} ({o['accepted'] / max(o['offered'], 1):.0%}) | "
        f"{o['refused_429']:,} / {o['refused_503']:,} / {o['connection_failed']:,} of {o['requests']:,} | "
        f"{o['max_backlog']:,.0f} | "
        f"{_ms(o['p50'])} / {_ms(o['p99'])} | "
        f"{_rss(o, 'ingress')} | {_rss(o, 'readside')} | "
        f"**{o['lost']:,}** of {o['acked_total']:,} acknowledged | {_ms(o['recovered_after'])} |",
        "",
        f"Lost = reading ids named in 202 answers (all phases: {o['acked_total']:,}) missing from the read side's "
        "readings table, checked in SQL after the run. Recovered = the later of: everything admitted during the "
        f"overload queryable ({_ms(o['caught_up_after'])} after it ended) and the last refusal of the half-rate "
        f"load ({_ms(o['last_refusal_after'])}).",
        "",
        "Reading it: the ingress refuses what it cannot pass on (429 from the per-client quota, scaled down further "
        "by lag-aware admission while the read side's lag is high) instead of buffering it, so the backlog between "
        "ingress and read side, the latency of what was admitted and both services' memory stay bounded for the "
        f"whole overload, and it ends without a backlog to work off. Refusing is not free: over the overload the "
        f"pipeline admitted {o['accepted'] / max(o['overload_took'], 1e-9):,.0f} readings/s, "
        f"{o['accepted'] / max(o['overload_took'], 1e-9) / max(c['sustainable'], 1):.0%} of the sustainable rate, "
        "because reading and refusing ten times as many requests takes CPU from the same two cores.",
        "",
    ]
    if plot_path is not None:
        lines += [f"Plot: [{plot_path.name}]({plot_path.name}).", ""]
    lines += [f"Took {took:.0f} s.", ""]
    return "\n".join(lines)


def headline(outcome: Outcome) -> dict[str, Any]:
    return {
        "sustainable": outcome.capacity["sustainable"],
        "latency": outcome.latency,
        "overload": {k: v for k, v in outcome.overload.items() if isinstance(v, int | float) or v is None},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pipeline", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="seconds per phase; a smoke test, not a measurement")
    parser.add_argument("--out", type=Path, help=f"folder for the report and plot (default: {RESULTS})")
    add_scale_option(parser, SCALES)
    parser.add_argument(
        "--overload-seconds", type=float, help="how long the overload lasts (default 60 x the scale; wins over it)"
    )
    parser.add_argument("--serve-ingress", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_ingress:
        asyncio.run(_serve_ingress(json.loads(args.serve_ingress)))
        return 0
    scale = scale_of(parser, args)
    params = QUICK if args.quick else FULL.scaled(scale)
    if args.overload_seconds:
        params = replace(params, overload_seconds=args.overload_seconds)
    started = time.monotonic()
    outcome = asyncio.run(run(params))
    out = args.out or (None if args.quick else RESULTS)
    plot_path = None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        plot_path = plot(outcome, out)
    text = report(outcome, plot_path, args.quick, time.monotonic() - started)
    print(text)
    if out is not None:
        (out / REPORT.name).write_text(text)
        (out / "pipeline.json").write_text(json.dumps(headline(outcome), indent=1))
        print(f"report written to {out / REPORT.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
