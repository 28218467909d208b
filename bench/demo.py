"""The talk's back-pressure demo on GridHub: a fast producer of readings through the real REST ingress and Kafka to
a fast and a slow consumer, in four scenarios, with plots.

    uv run python -m bench.demo            # about 2 minutes; writes bench/results/demo.md, demo.png, demo-[a-d].png
    uv run python -m bench.demo --scale 5  # the producer runs 5x as long in every scenario (rates unchanged)
    uv run python -m bench.demo --quick    # a few seconds, a smoke test; writes nothing unless --out

The talk (Reactive Patterns and Distributed Systems, OUGN 2018) showed with Akka Streams a fast producer with
(a) fast consumers, (b) a fast and a slow consumer, (c) a buffer with ``OverflowStrategy.dropNew`` in front of the
slow one, (d) ``OverflowStrategy.backpressure``. Here:

- the producer is a head-end system POSTing batches of readings to the collection service's REST ingress: the real
  app (API key, per-client quota, bulkhead, validation, the service's Kafka publisher with its breaker, acks=all),
  served by uvicorn on an ephemeral port in this process, publishing to a topic of the run's own instead of
  ``meter.readings.v1`` (so nobody else's consumers see the load);
- each consumer is an aiokafka consumer with its own group that polls into a ``BoundedBuffer`` and a handler
  that takes readings out of it; the slow handler spends a fixed time per reading.

(a) two fast consumers;
(b) a fast and a slow consumer; the slow one polls as fast as Kafka delivers into an unbounded in-memory queue
    and commits what it polled (the talk's "unchecked Kafka consumer");
(c) the same with a bounded buffer and ``drop_new``: memory stays flat, readings beyond it are dropped (counted);
(d) a bounded buffer with ``backpressure``: polling stops while it is full and offsets are committed only once
    handled, so the backlog stays in Kafka; the ingress's lag-aware admission (``COLLECTION_LAG_SIGNAL``) reads
    that group's lag and scales the producer's quota down: 429 + Retry-After slow the producer to what the slow
    consumer handles, as backpressure slows an Akka stream to its slowest stage. (The service's probe finds no
    partitions for a topic it is not subscribed to and reads lag 0; `bench.ingress.LagProbe` gives it them.)

Every reading carries its sequence number in its value (value = n / 1000 kWh), and the ingress answers each item
with its reading id; both consumers record the reading ids they handled, so the run reconciles by reading id what
the ingress acknowledged against what each consumer handled, dropped or still held at the end.
Each scenario runs in a process of its own (so memory figures do not leak between them), except with ``--quick`` or
``--in-process``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeAlias

import httpx
import orjson
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from bench.common import RESULTS, add_scale_option, emit, machine_line, pyplot, rates, rss_mib, scale_line, scale_of
from bench.ingress import PARTITIONS, Ingress, LagAdmission, running_ingress
from libs.events.gsrn import with_check_digit
from libs.flowcontrol.buffer import BoundedBuffer, OverflowStrategy
from libs.flowcontrol.policy import AdmissionSettings, BoundaryPolicy, BulkheadSettings, QuotaSettings
from stack.config import StackConfig

REPORT = RESULTS / "demo.md"
START = datetime(2025, 1, 1, tzinfo=UTC)
UNBOUNDED = 2**62
Record: TypeAlias = ConsumerRecord[bytes, bytes]


@dataclass(frozen=True)
class Params:
    """Scale of one run; the same for every scenario."""

    seconds: float  # the producer runs this long
    rate: int  # readings/s the producer offers
    batch: int  # readings per request
    senders: int  # requests the producer keeps in flight at most
    slow_rate: int  # readings/s the slow handler manages (its per-reading delay is 1 / slow_rate)
    capacity: int  # bounded buffers, readings
    quota_rate: float  # requests/s per client at the ingress: above rate / batch, so (a)-(c) are never refused
    lag_low: int  # (d): no pressure up to this lag of the slow group, readings
    lag_high: int  # (d): full pressure (quota x min_scale) from this lag on
    min_scale: float
    meterpoints: int
    sample_every: float  # seconds between samples
    drain_seconds: float  # after the producer stopped: how long consumers may take to catch up
    scale: float = 1.0

    @property
    def table_size(self) -> int:
        return int(self.rate * self.seconds * 1.5) + 10 * self.batch

    def scaled(self, factor: float) -> Params:
        """The producer runs ``factor`` times as long, so each scenario offers ``factor`` times the readings (and (b)
        holds that many more in memory); rates, buffers, lag thresholds and the drain limit stay."""
        return replace(self, seconds=self.seconds * factor, scale=factor)


SCALES = "the producer's seconds and with them the readings offered per scenario"


FULL = Params(
    seconds=12.0,
    rate=5_000,
    batch=200,
    senders=4,
    slow_rate=1_000,
    capacity=2_000,
    quota_rate=30.0,
    lag_low=2_000,
    lag_high=5_000,
    min_scale=0.02,
    meterpoints=1_000,
    sample_every=0.25,
    drain_seconds=20.0,
)
QUICK = Params(
    seconds=1.5,
    rate=2_000,
    batch=100,
    senders=2,
    slow_rate=500,
    capacity=200,
    quota_rate=30.0,
    lag_low=200,
    lag_high=600,
    min_scale=0.05,
    meterpoints=200,
    sample_every=0.1,
    drain_seconds=2.0,
)


class Slow(StrEnum):
    """The slow consumer of a scenario (none in (a))."""

    NONE = "none"
    UNBOUNDED = "unbounded"
    DROP_NEW = "drop_new"
    BACKPRESSURE = "backpressure"


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    slow: Slow


SCENARIOS = (
    Scenario("a", "(a) fast producer, fast consumers", Slow.NONE),
    Scenario("b", "(b) fast + slow consumer, unbounded queue", Slow.UNBOUNDED),
    Scenario("c", "(c) bounded buffer with drop_new", Slow.DROP_NEW),
    Scenario("d", "(d) backpressure + lag-aware admission", Slow.BACKPRESSURE),
)
BY_KEY = {scenario.key: scenario for scenario in SCENARIOS}


# --- reading ids by sequence number ----------------------------------------------------------------------------


class IdTable:
    """Reading ids (16 bytes each) by the reading's sequence number, preallocated so recording does not grow memory."""

    def __init__(self, size: int) -> None:
        self._ids = bytearray(size * 16)
        self._set = bytearray(size)

    def put(self, seq: int, reading_id: bytes) -> None:
        self._ids[seq * 16 : seq * 16 + 16] = reading_id
        self._set[seq] = 1

    def ids(self) -> set[bytes]:
        return {bytes(self._ids[seq * 16 : seq * 16 + 16]) for seq, flag in enumerate(self._set) if flag}


def decode(record: Record) -> tuple[int, bytes]:
    """The sequence number and reading id of a reading's record."""
    data = orjson.loads(record.value)["data"]
    return round(data["value"] * 1000), uuid.UUID(data["reading_id"]).bytes


# --- the ingress -------------------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def ingress(params: Params, scenario: Scenario, topic: str, slow_group: str) -> AsyncIterator[Ingress]:
    """The collection app on uvicorn, REST only, publishing to ``topic``; lag-aware admission in (d)."""
    rest = BoundaryPolicy(
        quota=QuotaSettings(rate=params.quota_rate, burst=params.quota_rate),
        bulkhead=BulkheadSettings(max_concurrent=8, max_wait=0.5, max_waiting=64, retry_after=1.0),
        admission=AdmissionSettings(min_scale=params.min_scale, recovery_per_second=0.2, interval=0.25),
        max_body_bytes=4 * 1024 * 1024,
    )
    admission = None
    if scenario.slow is Slow.BACKPRESSURE:
        admission = LagAdmission(slow_group, low=params.lag_low, high=params.lag_high)
    async with running_ingress(topic, rest, admission=admission) as gate:
        yield gate


# --- the producer --------------------------------------------------------------------------------------------------


class HeadEnd:
    """A fast producer: batches of readings at ``rate`` readings/s; a refused batch is sent again after Retry-After."""

    def __init__(self, params: Params, client: httpx.AsyncClient, api_key: str) -> None:
        self.params = params
        self.client = client
        self.headers = {"authorization": f"Bearer {api_key}", "content-type": "application/json"}
        self.gsrns = [with_check_digit(f"57131318{n:09d}") for n in range(params.meterpoints)]
        self.acked = IdTable(params.table_size)
        self.accepted = 0  # readings acknowledged (202)
        self.refused = 0  # readings in refused attempts (429 / 503), counted per attempt
        self.held = 0  # readings of batches still refused when the producer stopped (never acknowledged)
        self.statuses: Counter[int] = Counter()

    def body(self, first: int) -> bytes:
        meterpoints = self.params.meterpoints
        items = []
        for seq in range(first, first + self.params.batch):
            end = START + timedelta(minutes=15 * (seq // meterpoints + 1))
            items.append(
                {
                    "meterpoint_id": self.gsrns[seq % meterpoints],
                    "register": "active_import",
                    "interval_end": end.isoformat().replace("+00:00", "Z"),
                    "resolution": "PT15M",
                    "value": seq / 1000,
                    "unit": "kWh",
                    "quality": "measured",
                }
            )
        return orjson.dumps(items)

    async def run(self, until: float) -> None:
        """Send until the monotonic time ``until``; requests are paced, and never catch up in a burst."""
        interval = self.params.batch / self.params.rate
        next_at = time.monotonic()
        batches = 0

        async def sender() -> None:
            nonlocal next_at, batches
            while True:
                now = time.monotonic()
                slot = max(next_at, now)
                next_at = slot + interval
                if slot >= until:
                    return
                await asyncio.sleep(slot - now)
                first = batches * self.params.batch
                batches += 1
                body = self.body(first)
                while True:
                    try:
                        response = await self.client.post("/v1/readings", content=body, headers=self.headers)
                    except httpx.TransportError:  # a connection the server closed after refusing; send again
                        self.statuses[0] += 1
                        await asyncio.sleep(0.1)
                        continue
                    self.statuses[response.status_code] += 1
                    if response.status_code == 202:
                        self._acknowledged(first, response.content)
                        break
                    if response.status_code not in (429, 503):
                        raise RuntimeError(f"ingress answered {response.status_code}: {response.text[:300]}")
                    self.refused += self.params.batch
                    wait = float(response.headers.get("retry-after", "1"))
                    if time.monotonic() + wait >= until:
                        self.held += self.params.batch
                        return
                    await asyncio.sleep(wait)

        await asyncio.gather(*(sender() for _ in range(self.params.senders)))

    def _acknowledged(self, first: int, content: bytes) -> None:
        results = orjson.loads(content)["results"]
        for result in results:
            if result["status"] != "accepted":
                raise RuntimeError(f"the ingress did not accept a demo reading: {result}")
            self.acked.put(first + result["index"], uuid.UUID(result["id"]).bytes)
        self.accepted += len(results)


# --- the consumers -------------------------------------------------------------------------------------------------


class DemoConsumer:
    """An aiokafka consumer (own group, all partitions) polling into a buffer, and a handler taking readings out.

    ``per_reading`` seconds of work per reading (0 for a fast consumer). ``commit_polled``: commit what was polled
    (the readings in memory count as consumed) rather than what was handled.
    """

    def __init__(
        self,
        name: str,
        *,
        topic: str,
        group: str,
        per_reading: float,
        capacity: int,
        strategy: OverflowStrategy,
        commit_polled: bool,
        table_size: int,
    ) -> None:
        self.name = name
        self.topic = topic
        self.group = group
        self.per_reading = per_reading
        self.commit_polled = commit_polled
        self.buffer: BoundedBuffer[Record] = BoundedBuffer(capacity, strategy, on_drop=self._dropped)
        self.handled = IdTable(table_size)
        self.dropped = IdTable(table_size)
        self.polled_count = self.handled_count = self.dropped_count = 0
        self.max_depth = 0
        self._in_hand: list[Record] = []  # taken out of the buffer by the handler, not handled yet
        self._positions: dict[TopicPartition, int] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._consumer: AIOKafkaConsumer | None = None

    async def start(self, bootstrap: str) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, group_id=self.group, enable_auto_commit=False, auto_offset_reset="earliest"
        )
        await consumer.start()
        # Manual assignment: no group join (seconds of rebalance delay), offsets still committed to the group.
        consumer.assign([TopicPartition(self.topic, p) for p in range(PARTITIONS)])
        self._consumer = consumer
        self._tasks = [
            asyncio.create_task(self._poll(consumer), name=f"{self.name}-poll"),
            asyncio.create_task(self._handle(), name=f"{self.name}-handle"),
            asyncio.create_task(self._commit(consumer), name=f"{self.name}-commit"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._consumer is not None:
            await self._consumer.stop()

    def stop_handling(self) -> None:
        """Stop the handler only (what is still in the buffer stays there)."""
        self._tasks[1].cancel()

    def in_memory(self) -> list[Record]:
        """Readings polled but not handled: in the buffer or in the handler's hand."""
        return [*self._in_hand, *self.buffer.snapshot()]

    async def _poll(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            batches = await consumer.getmany(timeout_ms=100, max_records=500)
            for partition, records in batches.items():
                for record in records:
                    self.polled_count += 1
                    await self.buffer.put(record)  # waits while full (backpressure), or drops (drop_new)
                    self.max_depth = max(self.max_depth, len(self.buffer))
                if self.commit_polled:
                    self._positions[partition] = records[-1].offset + 1

    async def _handle(self) -> None:
        owed = 0.0
        batch = 64 if self.per_reading else 512
        while True:
            self._in_hand = await self.buffer.get_batch(batch, timeout=0.05)
            self._in_hand.reverse()
            while self._in_hand:
                record = self._in_hand[-1]
                seq, reading_id = decode(record)
                self.handled.put(seq, reading_id)
                self.handled_count += 1
                if not self.commit_polled:
                    self._positions[TopicPartition(record.topic, record.partition)] = record.offset + 1
                self._in_hand.pop()
                if self.per_reading:
                    # The delay per reading, slept in slices of >= 5 ms so the rate holds despite timer granularity.
                    owed += self.per_reading
                    if owed >= 0.005:
                        started = time.perf_counter()
                        await asyncio.sleep(owed)
                        owed -= time.perf_counter() - started

    async def _commit(self, consumer: AIOKafkaConsumer) -> None:
        committed: dict[TopicPartition, int] = {}
        while True:
            await asyncio.sleep(0.25)
            positions = dict(self._positions)
            if positions != committed:
                await consumer.commit(positions)
                committed = positions

    def _dropped(self, records: list[Record], strategy: OverflowStrategy) -> None:
        for record in records:
            seq, reading_id = decode(record)
            self.dropped.put(seq, reading_id)
            self.dropped_count += 1


# --- one scenario --------------------------------------------------------------------------------------------------

SAMPLE_FIELDS = (
    "t",
    "accepted",
    "refused",
    "fast_handled",
    "slow_polled",
    "slow_handled",
    "slow_dropped",
    "slow_depth",
    "rss_mib",
    "quota_scale",
)


@dataclass
class Outcome:
    """What one scenario measured: samples over time and the reconciliation at the end."""

    key: str
    title: str
    produce_seconds: float
    samples: list[list[float]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)


async def _wait(condition: Any, seconds: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(step)
    return True


async def run_scenario(params: Params, scenario: Scenario) -> Outcome:
    stack = StackConfig()
    bootstrap = stack.kafka_bootstrap
    tag = uuid.uuid4().hex[:8]
    topic = f"bench-demo.{tag}.{scenario.key}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    await admin.create_topics(
        [NewTopic(name=name, num_partitions=PARTITIONS, replication_factor=1) for name in (topic, f"{topic}.dlq")]
    )
    fast = DemoConsumer(
        "fast",
        topic=topic,
        group=f"bench-demo-{tag}-fast",
        per_reading=0.0,
        capacity=params.capacity,
        strategy=OverflowStrategy.BACKPRESSURE,
        commit_polled=False,
        table_size=params.table_size,
    )
    slow_kind = scenario.slow
    if slow_kind is Slow.NONE:
        slow = DemoConsumer(
            "fast-2",
            topic=topic,
            group=f"bench-demo-{tag}-fast2",
            per_reading=0.0,
            capacity=params.capacity,
            strategy=OverflowStrategy.BACKPRESSURE,
            commit_polled=False,
            table_size=params.table_size,
        )
    else:
        slow = DemoConsumer(
            "slow",
            topic=topic,
            group=f"bench-demo-{tag}-slow",
            per_reading=1 / params.slow_rate,
            capacity=UNBOUNDED if slow_kind is Slow.UNBOUNDED else params.capacity,
            strategy=OverflowStrategy.DROP_NEW if slow_kind is Slow.DROP_NEW else OverflowStrategy.BACKPRESSURE,
            commit_polled=slow_kind is not Slow.BACKPRESSURE,
            table_size=params.table_size,
        )
    outcome = Outcome(scenario.key, scenario.title, params.seconds)
    try:
        async with ingress(params, scenario, topic, slow.group) as gate:
            for consumer in (fast, slow):
                await consumer.start(bootstrap)
            limits = httpx.Limits(max_connections=params.senders, max_keepalive_connections=params.senders)
            async with httpx.AsyncClient(base_url=gate.base_url, limits=limits, timeout=30) as client:
                head_end = HeadEnd(params, client, gate.api_key)
                started = time.monotonic()

                async def sample() -> None:
                    while True:
                        outcome.samples.append(
                            [
                                round(time.monotonic() - started, 3),
                                head_end.accepted,
                                head_end.refused,
                                fast.handled_count,
                                slow.polled_count,
                                slow.handled_count,
                                slow.dropped_count,
                                len(slow.buffer),
                                round(rss_mib(), 1),
                                round(gate.quota_scale(), 3),
                            ]
                        )
                        await asyncio.sleep(params.sample_every)

                sampler = asyncio.create_task(sample())
                await head_end.run(started + params.seconds)
                produced_at = time.monotonic()
                summary = await _finish(params, scenario, head_end, fast, slow)
                summary["drain_seconds"] = round(time.monotonic() - produced_at, 1)
                sampler.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sampler
    finally:
        for consumer in (fast, slow):
            await consumer.stop()
        await admin.delete_topics([topic, f"{topic}.dlq"])
        await admin.close()
    outcome.summary = summary
    return outcome


async def _finish(
    params: Params, scenario: Scenario, head_end: HeadEnd, fast: DemoConsumer, slow: DemoConsumer
) -> dict[str, Any]:
    """Let the consumers catch up as far as their strategy lets them, then reconcile by reading id."""
    accepted = head_end.accepted
    fast_caught_up = await _wait(lambda: fast.handled_count >= accepted, params.drain_seconds)
    if scenario.slow in (Slow.UNBOUNDED, Slow.DROP_NEW):
        await _wait(lambda: slow.polled_count >= accepted, params.drain_seconds)
    if scenario.slow is Slow.UNBOUNDED:
        slow.stop_handling()  # draining the in-memory queue would take minutes: it is what is at risk
    else:
        await _wait(lambda: slow.handled_count + slow.dropped_count >= accepted, params.drain_seconds)
    acked = head_end.acked.ids()
    in_memory = {decode(record)[1] for record in slow.in_memory()}
    slow_handled, dropped, fast_handled = slow.handled.ids(), slow.dropped.ids(), fast.handled.ids()
    missing = acked - slow_handled - in_memory
    return {
        "accepted": accepted,
        "acked_ids": len(acked),
        "refused_attempts": head_end.refused,
        "held_by_producer": head_end.held,
        "statuses": dict(head_end.statuses),
        "fast_caught_up": fast_caught_up,
        "fast_handled": len(fast_handled),
        "fast_missing": len(acked - fast_handled),
        "slow_handled": len(slow_handled),
        "slow_duplicates": slow.handled_count - len(slow_handled),
        "slow_dropped": len(dropped),
        "slow_in_memory": len(in_memory),
        "slow_max_depth": slow.max_depth,
        # Neither handled, nor in memory, nor dropped: still in Kafka behind the group's committed offset (safe).
        "slow_in_kafka": len(missing - dropped),
        "lost": len(missing & dropped),
        "reconciled": (slow_handled | dropped | in_memory) <= acked and dropped <= acked,
    }


# --- report and plots ----------------------------------------------------------------------------------------------


def _series(outcome: Outcome) -> dict[str, list[float]]:
    columns = list(zip(*outcome.samples, strict=True)) if outcome.samples else [() for _ in SAMPLE_FIELDS]
    return {name: list(values) for name, values in zip(SAMPLE_FIELDS, columns, strict=True)}


def plot(outcomes: list[Outcome], params: Params, out_dir: Path) -> list[Path]:
    """One overview (rows: rates, depth and backlog, drops, RSS; one column per scenario) and one PNG per scenario."""
    plt = pyplot()
    written: list[Path] = []
    figure, axes = plt.subplots(4, len(outcomes), figsize=(4.2 * len(outcomes), 11), sharex="col", squeeze=False)
    for column, outcome in enumerate(outcomes):
        _draw(outcome, params, [axes[row][column] for row in range(4)], first_column=column == 0)
    for row in range(1, 4):
        top = max(axis.get_ylim()[1] for axis in axes[row])
        for axis in axes[row]:
            axis.set_ylim(0, top)
    figure.suptitle(
        f"Back pressure on GridHub: {params.rate:,} readings/s offered, slow consumer {params.slow_rate:,}/s"
    )
    figure.tight_layout()
    overview = out_dir / "demo.png"
    figure.savefig(overview, dpi=90)
    plt.close(figure)
    written.append(overview)
    for outcome in outcomes:
        figure, grid = plt.subplots(2, 2, figsize=(11, 7), sharex=True)
        _draw(outcome, params, [grid[0][0], grid[0][1], grid[1][0], grid[1][1]], first_column=True)
        figure.suptitle(outcome.title)
        figure.tight_layout()
        path = out_dir / f"demo-{outcome.key}.png"
        figure.savefig(path, dpi=90)
        plt.close(figure)
        written.append(path)
    return written


def _draw(outcome: Outcome, params: Params, axes: list[Any], *, first_column: bool) -> None:
    series = _series(outcome)
    t = series["t"]
    slow_name = "fast 2" if outcome.key == "a" else "slow"
    rate_axis, depth_axis, drop_axis, rss_axis = axes
    rate_axis.plot(t, rates(t, series["accepted"]), label="ingress accepted (202)", color="black", linewidth=1.5)
    rate_axis.plot(t, rates(t, series["refused"]), label="ingress refused (429)", color="tab:red", linewidth=1)
    rate_axis.plot(t, rates(t, series["fast_handled"]), label="fast out", color="tab:green", linestyle="--")
    rate_axis.plot(t, rates(t, series["slow_polled"]), label=f"{slow_name} in (polled)", color="tab:orange")
    rate_axis.plot(t, rates(t, series["slow_handled"]), label=f"{slow_name} out (handled)", color="tab:blue")
    rate_axis.set_title(outcome.title, fontsize=9)
    backlog = [a - p for a, p in zip(series["accepted"], series["slow_polled"], strict=True)]
    depth_axis.plot(t, series["slow_depth"], label="2nd consumer: buffer depth", color="tab:purple")
    depth_axis.plot(t, backlog, label="2nd consumer: Kafka backlog (not polled)", color="tab:gray")
    drop_axis.plot(t, series["slow_dropped"], label="dropped (cumulative)", color="tab:red")
    drop_axis.set_ylim(0, max(1.0, *series["slow_dropped"]) * 1.05)
    rss_axis.plot(t, series["rss_mib"], label="RSS of the process", color="tab:brown")
    for axis in axes:
        axis.axvline(outcome.produce_seconds, color="lightgray", linestyle=":", linewidth=1)
        axis.grid(alpha=0.3)
    rss_axis.set_xlabel("seconds (dotted: producer stops)")
    rate_axis.legend(fontsize=6, loc="center right")
    if first_column:
        rate_axis.set_ylabel("readings/s")
        depth_axis.set_ylabel("readings")
        drop_axis.set_ylabel("readings")
        rss_axis.set_ylabel("MiB")
        for axis in axes[1:]:
            axis.legend(fontsize=7, loc="upper left")


def report(outcomes: list[Outcome], params: Params, plots: list[Path], quick: bool, took: float) -> str:
    lines = [
        "# The talk's back-pressure demo on GridHub" + (" (quick smoke run: not a measurement)" if quick else ""),
        "",
        machine_line(),
        "",
        "## Parameters",
        "",
        f"- producer: a head-end system POSTing {params.batch} readings per request to the collection service's REST "
        f"ingress (uvicorn, in process), {params.rate:,} readings/s offered for {params.seconds:g} s, at most "
        f"{params.senders} requests in flight; a refused batch is sent again after Retry-After",
        f"- ingress: the real collection app (API key, quota {params.quota_rate:g} requests/s per client, bulkhead 8, "
        "validation, its Kafka publisher with breaker, acks=all) publishing to a 6-partition topic of the run's own",
        f"- consumers: aiokafka, one group each, polling into a `BoundedBuffer`; fast = no work per reading; slow = "
        f"{1000 / params.slow_rate:g} ms per reading ({params.slow_rate:,} readings/s); bounded buffers hold "
        f"{params.capacity:,} readings",
        f"- (d) lag-aware admission: the slow group's committed lag (read every 0.5 s) scales the ingress quota from "
        f"1 at {params.lag_low:,} readings down to {params.min_scale:g} at {params.lag_high:,}",
        scale_line(params.scale, quick, SCALES),
        "",
        "## Results",
        "",
        "| scenario | accepted by ingress | readings/s accepted | refused attempts (429) | fast: handled | "
        "slow: handled | slow: readings/s | dropped | in memory at end (at risk) | in Kafka at end (safe) | "
        "max buffer depth | peak RSS MiB | **lost** |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for outcome in outcomes:
        s = outcome.summary
        series = _series(outcome)
        slow_rate = _rate_during(series, "slow_handled", params.seconds)
        lines.append(
            f"| {outcome.title} | {s['accepted']:,} | {s['accepted'] / params.seconds:,.0f} | "
            f"{s['refused_attempts']:,} | {s['fast_handled']:,} | {s['slow_handled']:,} | {slow_rate:,.0f} | "
            f"{s['slow_dropped']:,} | {s['slow_in_memory']:,} | {s['slow_in_kafka']:,} | {s['slow_max_depth']:,} | "
            f"{max(series['rss_mib'], default=0):,.0f} | **{s['lost']:,}** |"
        )
    lines += [
        "",
        "Reconciled by reading id: the ids the ingress acknowledged (202, one id per accepted reading) against the "
        "ids each consumer handled, dropped or still held; *lost* = acknowledged and dropped. "
        + "; ".join(
            f"({o.key}) {'reconciled' if o.summary['reconciled'] else 'NOT reconciled'}, fast consumer missing "
            f"{o.summary['fast_missing']}, slow duplicates {o.summary['slow_duplicates']}"
            for o in outcomes
        )
        + ".",
        "",
        "Reading it:",
        "",
        "- (a) both consumers keep up with the producer; nothing waits anywhere.",
        "- (b) Kafka decouples the fast consumer from the slow one, but the slow one reads eagerly into memory: its "
        "queue and the process's memory grow for as long as the producer runs, and the readings in it are already "
        "committed, so a crash loses them (the talk's \"unchecked Kafka consumer is a DoS attack waiting to "
        'happen").',
        "- (c) a bounded buffer with drop_new keeps memory flat and the fast consumer unaffected; the slow consumer "
        "handles what it can and the rest is dropped (counted and reconciled: lost on purpose).",
        "- (d) with backpressure the slow consumer stops polling while its buffer is full and commits only what it "
        "handled, so its backlog waits in Kafka; lag-aware admission carries the pressure back to the edge: the "
        "ingress answers 429 and the producer slows to what the slow consumer handles. Nothing is lost and memory "
        "is bounded; the price is that the producer (and the fast consumer with it) runs at the slowest speed.",
        "",
        "Plots: " + ", ".join(f"[{path.name}]({path.name})" for path in plots) + ".",
        "",
        f"Took {took:.0f} s.",
        "",
    ]
    return "\n".join(lines)


def _rate_during(series: dict[str, list[float]], name: str, seconds: float) -> float:
    """Average rate of a counter while the producer ran."""
    inside = [(t, c) for t, c in zip(series["t"], series[name], strict=True) if t <= seconds]
    if len(inside) < 2 or inside[-1][0] <= inside[0][0]:
        return 0.0
    return (inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0])


def headline(outcomes: list[Outcome]) -> dict[str, Any]:
    """The figures the aggregator puts into bench/results/README.md."""
    return {o.key: {k: o.summary[k] for k in ("accepted", "lost", "slow_dropped", "slow_in_memory")} for o in outcomes}


# --- running ---------------------------------------------------------------------------------------------------------


def _in_child(key: str, quick: bool, scale: float) -> Outcome:
    """Run one scenario in a fresh process, so its memory is its own."""
    with tempfile.TemporaryDirectory() as folder:
        target = Path(folder) / "outcome.json"
        command = [sys.executable, "-m", "bench.demo", "--scenario", key, "--json", str(target)]
        command += ["--quick"] if quick else ["--scale", repr(scale)]
        subprocess.run(command, check=True, cwd=Path(__file__).parent.parent)
        data = json.loads(target.read_text())
    return Outcome(**data)


async def _run_all(params: Params, keys: list[str]) -> list[Outcome]:
    return [await run_scenario(params, BY_KEY[key]) for key in keys]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds; a smoke test, not a measurement")
    parser.add_argument("--out", type=Path, help=f"folder for the report and plots (default: {RESULTS})")
    parser.add_argument("--scenario", choices=sorted(BY_KEY), action="append", help="run only these (repeatable)")
    parser.add_argument("--json", type=Path, help=argparse.SUPPRESS)  # child mode: one scenario, outcome as JSON
    parser.add_argument("--in-process", action="store_true", help="run every scenario in this process")
    add_scale_option(parser, SCALES)
    args = parser.parse_args(argv)
    scale = scale_of(parser, args)
    params = QUICK if args.quick else FULL.scaled(scale)
    keys = args.scenario or [scenario.key for scenario in SCENARIOS]
    if args.json is not None:
        (outcome,) = asyncio.run(_run_all(params, keys[:1]))
        args.json.write_text(json.dumps(asdict(outcome)))
        return 0
    started = time.monotonic()
    outcomes: list[Outcome] = []
    if args.quick or args.in_process:
        outcomes = asyncio.run(_run_all(params, keys))
    else:
        for key in keys:
            emit(f"demo: scenario {key} ...")
            outcomes.append(_in_child(key, args.quick, scale))
    out_dir = args.out or (None if args.quick else RESULTS)
    plots: list[Path] = []
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        plots = plot(outcomes, params, out_dir)
    text = report(outcomes, params, plots, args.quick, time.monotonic() - started)
    print(text)
    if out_dir is not None:
        (out_dir / REPORT.name).write_text(text)
        (out_dir / "demo.json").write_text(json.dumps(headline(outcomes), indent=1))
        print(f"report written to {out_dir / REPORT.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
