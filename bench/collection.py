"""Collection ingest: REST batches and MQTT messages into Kafka in readings/s, each against a raw aiokafka batch
producer sending the same readings; and the service's memory while it is offered ten times what it sustains.

    uv run python -m bench.collection            # about three minutes; writes bench/results/collection.md
    uv run python -m bench.collection --scale 3  # 3x the readings per round, MQTT messages and overload seconds
    uv run python -m bench.collection --quick    # under a minute, a smoke test; writes nothing unless --out
    uv run python -m bench.collection --fairness # part 5 alone (about half a minute); writes nothing unless --out

Needs the local stack (``make stack-up``). All in one run, on the same machine and the same topic (the run's
own ``bench-<run>.meter.readings.v1``, created for the run and deleted after it, through the service's
``COLLECTION_KAFKA_TOPIC_PREFIX``), with the service as ``python -m services.collection`` runs it (uvicorn, one
worker, MQTT ingress; FTP off) in its own process, quotas raised so that they do not limit:

1. baseline: a raw aiokafka producer with the service's producer settings (acks=all, idempotence, linger 5 ms,
   256 KiB batches) sending the records of the same readings, pre-built, with ``create_batch``/``send_batch`` per
   partition, as many batches in flight as the REST client has requests: no HTTP, no validation;
2. REST: ``POST /v1/readings`` with batches of readings (pre-encoded bodies), a fixed number of requests in
   flight; readings/s = accepted readings / time, 202 meaning Kafka acknowledged them. Rounds alternate with
   the baseline's, and each reports its median;
3. MQTT: several publisher processes (one Python publisher tops out near 8k messages/s), each a device with its
   own login, QoS 1, messages of a few readings; readings/s = the service's accepted MQTT readings (counted
   after Kafka acked them, read from /metrics) over the time from the first publish to the last one in Kafka;
   the baseline sends the same readings' records;
4. overload: REST requests offered open-loop at ten times the REST rate measured in 2 for a while, by several
   client processes; the service's RSS (``/proc/<pid>/status``) sampled throughout, with the answers counted
   (202 / 429 / 503). Bounded means: the bulkhead and the back-pressured body reads keep what it holds at once
   fixed, so RSS levels off instead of growing with the offered load;
5. MQTT fairness: a second service with a real per-device quota (5 readings/s); nine devices each publish two
   messages of one reading a second, first alone, then as long again beside a tenth device sending twenty times
   its quota. The figure is the nine's readings in Kafka in time (by the end of their phase plus 1 s) beside the
   noisy device over alone; every reading the broker acknowledged to the noisy device is counted in the readings
   topic or the DLQ.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import platform
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx
import orjson

from bench.common import add_scale_option, private_topics, scale_line, scale_of, scaled_count
from libs.events import topics
from libs.events.gsrn import with_check_digit
from libs.events.records import KafkaRecord
from libs.platform.kafka import start_producer
from stack.config import REPO, StackConfig

RESULTS = Path(__file__).parent / "results" / "collection.md"
START = datetime(2020, 1, 1, tzinfo=UTC)
QUARTER = timedelta(minutes=15)
LINGER_MS = 5  # the service's default (COLLECTION_KAFKA_LINGER_MS)


@dataclass(frozen=True)
class Params:
    """How much each measurement sends."""

    rest_readings: int
    batch: int
    concurrency: int
    rounds: int
    mqtt_processes: int
    mqtt_messages: int  # per process
    readings_per_message: int
    overload_seconds: float
    overload_factor: float
    overload_processes: int
    fairness_seconds: float
    scale: float = 1.0

    def scaled(self, factor: float) -> Params:
        """``factor`` times the readings per REST round (whole batches), the messages per MQTT publisher and the
        overload's seconds; batch and message sizes, requests in flight, processes, rounds and the 10x stay."""
        return replace(
            self,
            rest_readings=scaled_count(self.rest_readings, factor, multiple=self.batch),
            mqtt_messages=scaled_count(self.mqtt_messages, factor),
            overload_seconds=self.overload_seconds * factor,
            scale=factor,
        )


SCALES = "readings per REST round, messages per MQTT publisher and the overload's seconds"
FULL = Params(
    rest_readings=200_000,
    batch=1000,
    concurrency=8,
    rounds=3,
    mqtt_processes=4,
    mqtt_messages=6000,
    readings_per_message=4,
    overload_seconds=60.0,
    overload_factor=10.0,
    overload_processes=3,
    fairness_seconds=10.0,
)
QUICK = Params(
    rest_readings=20_000,
    batch=1000,
    concurrency=8,
    rounds=1,
    mqtt_processes=2,
    mqtt_messages=500,
    readings_per_message=4,
    overload_seconds=4.0,
    overload_factor=10.0,
    overload_processes=2,
    fairness_seconds=2.0,
)


# --- readings ----------------------------------------------------------------------------------------------


def meterpoints(count: int, prefix: str) -> list[str]:
    """``count`` valid GSRNs of this run (17 digits: the run's prefix and a number, then the check digit)."""
    return [with_check_digit(f"{prefix}{number:06d}") for number in range(count)]


def readings(meters: Sequence[str], count: int, *, offset: int = 0) -> list[dict[str, Any]]:
    """``count`` readings spread over ``meters``, each meter's intervals one after another from 2020 on."""
    items = []
    for n in range(offset, offset + count):
        meter = meters[n % len(meters)]
        end = START + (n // len(meters) + 1) * QUARTER
        items.append(
            {
                "meterpoint_id": meter,
                "register": "active_import",
                "interval_end": end.isoformat().replace("+00:00", "Z"),
                "resolution": "PT15M",
                "value": round((n % 1000) * 0.125, 3),
                "unit": "kWh",
                "quality": "measured",
                "source": "bench",
            }
        )
    return items


def records_of(items: Sequence[dict[str, Any]], event_source: str, prefix: str = "") -> list[KafkaRecord]:
    """The records the service would publish for ``items`` (built once, outside the measurement), on the topics
    with ``prefix`` as the service's ``COLLECTION_KAFKA_TOPIC_PREFIX`` makes them."""
    from services.collection.adapters.kafka import reading_record
    from services.collection.domain import Accepted, ReadingInput, ValidationRules, check_readings

    now = datetime.now(UTC)
    parsed = [ReadingInput.model_validate(item, strict=False) for item in items]
    return [
        record._replace(topic=prefix + record.topic)
        for record in (
            reading_record(outcome.event, time=now, event_source=event_source)
            for outcome in check_readings(parsed, now=now, rules=ValidationRules())
            if isinstance(outcome, Accepted)
        )
    ]


# --- the raw producer baseline -----------------------------------------------------------------------------


async def baseline(bootstrap: str, records: Sequence[KafkaRecord], *, batch: int, concurrency: int) -> float:
    """Readings/s of a raw aiokafka batch producer sending ``records`` (``batch`` per call, ``concurrency`` calls
    in flight), waiting for every ack: the same work as the service's publisher minus HTTP and validation."""
    producer = await start_producer(bootstrap, "bench-baseline", linger_ms=LINGER_MS)
    try:
        partitions = sorted(await producer.partitions_for(records[0].topic))
        from aiokafka.partitioner import murmur2

        def partition_of(key: bytes) -> int:
            return partitions[(int(murmur2(key)) & 0x7FFFFFFF) % len(partitions)]

        # One lock per partition, as the service's publisher has (see adapters/kafka.py: aiokafka's slot wait).
        slots = {partition: asyncio.Lock() for partition in partitions}
        chunks = [records[i : i + batch] for i in range(0, len(records), batch)]
        queue: asyncio.Queue[Sequence[KafkaRecord]] = asyncio.Queue()
        for chunk in chunks:
            queue.put_nowait(chunk)

        async def send(chunk: Sequence[KafkaRecord]) -> None:
            groups: dict[int, list[KafkaRecord]] = {}
            for record in chunk:
                groups.setdefault(partition_of(record.key), []).append(record)
            acks = []
            for partition, group in groups.items():
                built = producer.create_batch()
                for record in group:
                    if built.append(key=record.key, value=record.value, timestamp=None, headers=record.headers) is None:
                        built.close()
                        async with slots[partition]:
                            acks.append(await producer.send_batch(built, record.topic, partition=partition))
                        built = producer.create_batch()
                        built.append(key=record.key, value=record.value, timestamp=None, headers=record.headers)
                built.close()
                async with slots[partition]:
                    acks.append(await producer.send_batch(built, chunk[0].topic, partition=partition))
            await asyncio.gather(*acks)

        async def worker() -> None:
            while not queue.empty():
                await send(queue.get_nowait())

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return len(records) / (time.perf_counter() - started)
    finally:
        await producer.stop()


# --- the service in its own process ------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Service:
    """``python -m services.collection`` with this run's settings."""

    process: subprocess.Popen[bytes]
    port: int
    client_id: str
    event_source: str
    log: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS")


def start_service(
    stack: StackConfig,
    run_id: str,
    log: Path,
    topic_prefix: str,
    overrides: dict[str, str | None] | None = None,
    tree: Path = REPO,
) -> Service:
    """The collection service of the checkout at ``tree`` (this one by default) with this run's settings, ready;
    an override of None leaves a variable unset (one that an earlier revision does not know)."""
    port = free_port()
    client_id = f"bench-{run_id}"
    event_source = f"/gridhub/collection-bench-{run_id}"
    environment = {
        **os.environ,
        "COLLECTION_HTTP_PORT": str(port),
        "COLLECTION_KAFKA_BOOTSTRAP_SERVERS": stack.kafka_bootstrap,
        "COLLECTION_EVENT_SOURCE": event_source,
        "COLLECTION_KAFKA_TOPIC_PREFIX": topic_prefix,
        "COLLECTION_LOG_LEVEL": "WARNING",
        "COLLECTION_FTP__ENABLED": "false",
        "COLLECTION_MQTT__HOST": stack.host,
        "COLLECTION_MQTT__PORT": str(stack.mqtt_service_port),
        "COLLECTION_MQTT__PASSWORD": stack.password("collection"),
        "COLLECTION_MQTT__CLIENT_ID": client_id,
        "COLLECTION_MQTT__SHARE_GROUP": client_id,
        "COLLECTION_MQTT__SESSION_EXPIRY_SECONDS": "60",
        "COLLECTION_POSTGRES_DSN": stack.postgres_dsn("collection"),
        # Quotas out of the way: the measurement is of the pipeline; the bulkhead and Kafka are the limits.
        "COLLECTION_BOUNDARIES__REST_INGRESS__QUOTA__RATE": "1000000000",
        "COLLECTION_BOUNDARIES__REST_INGRESS__QUOTA__BURST": "1000000000",
        # One client here: its cap on requests in flight (a per-client policy like the quota) out of the way too.
        "COLLECTION_BOUNDARIES__REST_INGRESS__PER_CLIENT__MAX_PER_CLIENT": "1000",
        "COLLECTION_BOUNDARIES__MQTT_INGRESS__QUOTA__RATE": "1000000000",
        "COLLECTION_BOUNDARIES__MQTT_INGRESS__QUOTA__BURST": "1000000000",
    }
    for name, value in (overrides or {}).items():
        if value is None:
            environment.pop(name, None)
        else:
            environment[name] = value
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "services.collection"], cwd=tree, env=environment, stdout=sink, stderr=sink
        )
    service = Service(process, port, client_id, event_source, log)
    deadline = time.monotonic() + 60.0
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"the service exited ({process.returncode}); see {log}")
        try:
            ready = httpx.get(f"{service.base_url}/readyz", timeout=2.0).status_code == 200
            connected = metric(service, "gridhub_collection_mqtt_connected") == 1
            if ready and connected:
                return service
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"the service did not get ready; see {log}")
        time.sleep(0.2)


def stop_service(service: Service, stack: StackConfig) -> None:
    service.process.send_signal(signal.SIGTERM)
    try:
        service.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        service.process.kill()
        service.process.wait()
    end_mqtt_session(stack, service.client_id)


def end_mqtt_session(stack: StackConfig, client_id: str) -> None:
    """Connect once more with clean start and session expiry 0, so the broker stops queueing for this id."""
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
    client.username_pw_set("collection", stack.password("collection"))
    properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    properties.SessionExpiryInterval = 0
    client.connect(stack.host, stack.mqtt_service_port, keepalive=5, clean_start=True, properties=properties)
    client.loop_start()
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline and not client.is_connected():
        time.sleep(0.02)
    client.disconnect()
    client.loop_stop()


def metric(service: Service, name: str, **labels: str) -> float:
    """One sample of the service's /metrics (0 when absent)."""
    text = httpx.get(f"{service.base_url}/metrics", timeout=5.0).text
    wanted = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        series, _, value = line.rpartition(" ")
        metric_name, _, label_text = series.partition("{")
        if metric_name != name:
            continue
        present = ",".join(sorted(label_text.rstrip("}").split(","))) if label_text else ""
        if all(part in present.split(",") for part in wanted.split(",") if part):
            return float(value)
    return 0.0


async def add_api_key(stack: StackConfig) -> tuple[str, str]:
    """A write key for this run in the service's database; (plain key, key id)."""
    from bench.common import BENCH_TENANT
    from libs.platform.apikeys import Role, generate_api_key
    from libs.platform.apikeys_store import PostgresKeyStore
    from libs.platform.db import create_pool

    pool = await create_pool(stack.postgres_dsn("collection"), max_size=1)
    try:
        key = generate_api_key("bench", Role.SOURCE, tenant=BENCH_TENANT)
        await PostgresKeyStore(pool).add(key.record)
        return key.plain_key, key.record.key_id
    finally:
        await pool.close()


async def revoke_api_key(stack: StackConfig, key_id: str) -> None:
    from libs.platform.apikeys_store import PostgresKeyStore
    from libs.platform.db import create_pool

    pool = await create_pool(stack.postgres_dsn("collection"), max_size=1)
    try:
        await PostgresKeyStore(pool).revoke(key_id)
    finally:
        await pool.close()


# --- REST --------------------------------------------------------------------------------------------------


async def rest_round(service: Service, api_key: str, bodies: Sequence[bytes], batch: int, concurrency: int) -> float:
    """Readings/s accepted over ``POST /v1/readings`` with ``concurrency`` requests in flight."""
    headers = {"X-API-Key": api_key, "Content-Type": "application/json"}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    accepted = 0
    statuses: Counter[int] = Counter()
    async with httpx.AsyncClient(base_url=service.base_url, limits=limits, timeout=60.0) as client:

        async def worker() -> None:
            nonlocal accepted
            while not queue.empty():
                body = queue.get_nowait()
                response = await client.post("/v1/readings", content=body, headers=headers)
                statuses[response.status_code] += 1
                if response.status_code == 202:
                    accepted += orjson.loads(response.content)["accepted"]
                else:
                    queue.put_nowait(body)  # 503 / 429: send it again

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    if accepted != len(bodies) * batch:
        raise RuntimeError(f"the service accepted {accepted} of {len(bodies) * batch} readings ({dict(statuses)})")
    return accepted / elapsed


# --- MQTT --------------------------------------------------------------------------------------------------


def mqtt_publisher(
    host: str, port: int, meterpoint: str, password: str, payloads: list[bytes], out: Any, go: Any
) -> None:
    """One device in its own process: publish every payload with QoS 1 (up to 1000 in flight), wait for the PUBACKs."""
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    lock = threading.Lock()
    all_acked = threading.Event()
    acked = 0
    failures: Counter[int] = Counter()
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-{meterpoint}", protocol=paho.MQTTv5)
    client.username_pw_set(meterpoint, password)
    client.max_inflight_messages_set(1000)

    def on_publish(client: Any, userdata: Any, mid: int, reason_code: Any, properties: Any) -> None:
        nonlocal acked
        with lock:
            acked += 1
            if reason_code.value:
                failures[reason_code.value] += 1
            if acked == len(payloads):
                all_acked.set()

    client.on_publish = on_publish
    client.connect(host, port, keepalive=30)
    client.loop_start()
    while not client.is_connected():
        time.sleep(0.01)
    go.wait()
    topic = f"gridhub/meters/{meterpoint}/readings"
    started = time.perf_counter()
    for payload in payloads:
        client.publish(topic, payload, qos=1)  # paho keeps 1000 in flight and queues the rest
    all_acked.wait(timeout=300)
    out.put((meterpoint, time.perf_counter() - started, dict(failures)))
    client.disconnect()
    client.loop_stop()


@contextlib.contextmanager
def devices(stack: StackConfig, meters: Sequence[str]) -> Iterator[dict[str, str]]:
    """Broker logins for ``meters`` (removed afterwards)."""
    from stack.mosquitto import Mosquitto
    from stack.process import run

    broker = Mosquitto(stack)
    passwords = {meter: secrets.token_urlsafe(16) for meter in meters}
    for meter, password in passwords.items():
        broker.add_user(meter, password, reload=False)
    pid = broker.pid()
    if pid is not None:
        os.kill(pid, signal.SIGHUP)
    time.sleep(0.5)  # the broker rereads its password file after SIGHUP
    try:
        yield passwords
    finally:
        for meter in meters:
            run(["mosquitto_passwd", "-D", str(broker.passwd), meter], timeout=30)
        if pid is not None:
            os.kill(pid, signal.SIGHUP)


def mqtt_round(
    stack: StackConfig, service: Service, params: Params, meters: Sequence[str]
) -> tuple[float, float, list[dict[str, Any]]]:
    """(readings/s into Kafka, messages/s the publishers got PUBACKs for, the readings sent)."""
    context = multiprocessing.get_context("spawn")
    out, go = context.Queue(), context.Event()
    total = params.mqtt_processes * params.mqtt_messages * params.readings_per_message
    before = metric(service, "gridhub_collection_items_total", channel="mqtt", kind="reading", outcome="accepted")
    sent: list[dict[str, Any]] = []
    with devices(stack, meters) as passwords:
        workers = []
        for meter in meters:
            items = readings([meter], params.mqtt_messages * params.readings_per_message)
            sent += items
            step = params.readings_per_message
            payloads = [orjson.dumps(items[i : i + step]) for i in range(0, len(items), step)]
            worker = context.Process(
                target=mqtt_publisher,
                args=(stack.host, stack.mqtt_port, meter, passwords[meter], payloads, out, go),
                daemon=True,
            )
            worker.start()
            workers.append(worker)
        time.sleep(1.0)  # let every publisher connect before the start signal
        started = time.perf_counter()
        go.set()
        publish_seconds = max(out.get(timeout=300)[1] for _ in workers)
        deadline = time.monotonic() + 300
        while True:
            done = metric(service, "gridhub_collection_items_total", channel="mqtt", kind="reading", outcome="accepted")
            if done - before >= total:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {done - before} of {total} MQTT readings reached Kafka")
            time.sleep(0.05)
        elapsed = time.perf_counter() - started
        for worker in workers:
            worker.join(timeout=10)
    messages = params.mqtt_processes * params.mqtt_messages
    return total / elapsed, messages / publish_seconds, sent


# --- overload ----------------------------------------------------------------------------------------------


def overload_client(base_url: str, api_key: str, bodies: list[bytes], rate: float, seconds: float, out: Any) -> None:
    """Offer ``rate`` requests/s open-loop for ``seconds`` (each request on its own task, at most 512 open)."""

    async def main() -> None:
        headers = {"X-API-Key": api_key, "Content-Type": "application/json"}
        limits = httpx.Limits(max_connections=512, max_keepalive_connections=512)
        statuses: Counter[str] = Counter()
        open_requests = asyncio.Semaphore(512)
        async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=30.0) as client:

            async def send(body: bytes) -> None:
                try:
                    response = await client.post("/v1/readings", content=body, headers=headers)
                    statuses[str(response.status_code)] += 1
                except httpx.HTTPError as error:
                    statuses[type(error).__name__] += 1
                finally:
                    open_requests.release()

            tasks = set()
            started = time.perf_counter()
            sent = skipped = 0
            while (now := time.perf_counter() - started) < seconds:
                due = int(now * rate) + 1
                while sent + skipped < due:
                    if open_requests.locked():
                        skipped += 1  # the client cannot offer more: counted, not hidden
                        continue
                    await open_requests.acquire()
                    task = asyncio.create_task(send(bodies[sent % len(bodies)]))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                    sent += 1
                await asyncio.sleep(max(0.0, (due / rate) - (time.perf_counter() - started)))
            offering = time.perf_counter() - started
            await asyncio.gather(*tasks)
            statuses["offered"] = sent
            statuses["skipped"] = skipped
            statuses["offering_ms"] = round(offering * 1000)
            statuses["elapsed_ms"] = round((time.perf_counter() - started) * 1000)
        out.put(dict(statuses))

    asyncio.run(main())


def overload(service: Service, api_key: str, bodies: list[bytes], rate: float, params: Params) -> dict[str, Any]:
    """Offer ``rate`` requests/s for ``overload_seconds``; RSS samples and answers."""
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    share = rate / params.overload_processes
    before = service.rss_mib()
    workers = [
        context.Process(
            target=overload_client,
            args=(service.base_url, api_key, bodies, share, params.overload_seconds, out),
            daemon=True,
        )
        for _ in range(params.overload_processes)
    ]
    for worker in workers:
        worker.start()
    samples: list[tuple[float, float]] = []
    started = time.perf_counter()
    results: list[dict[str, int]] = []
    while len(results) < len(workers):
        samples.append((time.perf_counter() - started, service.rss_mib()))
        with contextlib.suppress(Exception):
            results.append(out.get(timeout=0.25))
    for worker in workers:
        worker.join(timeout=10)
    answers: Counter[str] = Counter()
    for result in results:
        answers.update({name: count for name, count in result.items() if not name.endswith("_ms")})
    elapsed = max(result["elapsed_ms"] for result in results) / 1000
    offering = max(result["offering_ms"] for result in results) / 1000
    time.sleep(1.0)  # what the process keeps once the load is gone
    return {
        "before": before,
        "samples": samples,
        "after": service.rss_mib(),
        "answers": answers,
        "elapsed": elapsed,
        "offering": offering,
    }


# --- MQTT fairness -----------------------------------------------------------------------------------------

FAIR_QUOTA = 5  # readings/s per device (burst 5) in the fairness part
FAIR_NORMAL_DEVICES = 9
FAIR_NORMAL_RATE = 2.0  # messages of one reading per second, per normal device
FAIR_NOISY_FACTOR = 20  # the noisy device sends this many times its quota
FAIR_GRACE = 1.0  # seconds after its phase in which a reading still counts as delivered in time
UNSCOPED_SERVICE = {"COLLECTION_SCOPE__ENFORCE": "false"}
"""The scope check off (development only), to measure what the check costs."""

FAIR_SERVICE = {
    "COLLECTION_BOUNDARIES__MQTT_INGRESS__QUOTA__RATE": str(FAIR_QUOTA),
    "COLLECTION_BOUNDARIES__MQTT_INGRESS__QUOTA__BURST": str(FAIR_QUOTA),
    "COLLECTION_MQTT__MAX_READINGS_PER_MESSAGE": str(FAIR_QUOTA),
}


@dataclass
class Fairness:
    """The normal devices' readings/s into Kafka in time, alone and beside the noisy one; the noisy one's account."""

    alone: float = 0.0
    beside: float = 0.0
    noisy_acked: int = 0
    noisy_in_readings: int = 0
    noisy_in_dlq: int = 0
    noisy_reasons: dict[str, int] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        return self.beside / self.alone if self.alone else 0.0


def fair_payload(meterpoint: str, quarter: int) -> bytes:
    end = START + QUARTER * (quarter + 1)
    item = {
        "meterpoint_id": meterpoint,
        "register": "active_import",
        "interval_end": end.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "resolution": "PT15M",
        "value": 0.25,
        "unit": "kWh",
        "quality": "measured",
    }
    return orjson.dumps(item)


def quarter_of(reading: dict[str, Any]) -> int:
    end = datetime.strptime(reading["interval_end"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    return int((end - START) / QUARTER) - 1


def paced(clients: dict[str, Any], rate: float, seconds: float, first: int, sent: dict[str, dict[int, int]]) -> None:
    """Each client publishes one reading per message at ``rate`` per second for ``seconds`` (quarters from first)."""
    started = time.perf_counter()
    for n in range(int(rate * seconds)):
        delay = started + n / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)  # pacing an open-loop sender, not waiting for a condition
        for meter, client in clients.items():
            info = client.publish(f"gridhub/meters/{meter}/readings", fair_payload(meter, first + n), qos=1)
            sent[meter][info.mid] = first + n


async def fairness(stack: StackConfig, service: Service, prefix: str, params: Params, digits: str) -> Fairness:
    """Part 5 (see the module doc) against ``service``, whose device quota is FAIR_QUOTA."""
    import paho.mqtt.client as paho
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from paho.mqtt.enums import CallbackAPIVersion

    normal = meterpoints(FAIR_NORMAL_DEVICES, f"57131317{digits}")
    noisy = meterpoints(1, f"57131316{digits}")[0]
    names = [prefix + topics.READINGS, prefix + topics.dlq(topics.READINGS)]
    consumer = AIOKafkaConsumer(bootstrap_servers=stack.kafka_bootstrap, enable_auto_commit=False, group_id=None)
    await consumer.start()
    partitions = [TopicPartition(name, p) for name in names for p in range(6)]
    consumer.assign(partitions)
    for partition, offset in (await consumer.end_offsets(partitions)).items():
        consumer.seek(partition, offset)
    sent: dict[str, dict[int, int]] = {meter: {} for meter in [*normal, noisy]}
    acks: dict[str, dict[int, int]] = {meter: {} for meter in [*normal, noisy]}
    phase = params.fairness_seconds
    result = Fairness()
    try:
        with devices(stack, [*normal, noisy]) as passwords:
            clients: dict[str, Any] = {}
            for meter in [*normal, noisy]:
                client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-{meter}", protocol=paho.MQTTv5)
                client.username_pw_set(meter, passwords[meter])
                client.max_inflight_messages_set(1000)
                client.on_publish = lambda c, u, mid, code, props, meter=meter: acks[meter].__setitem__(mid, code.value)
                client.connect(stack.host, stack.mqtt_port, keepalive=30)
                client.loop_start()
                clients[meter] = client
            deadline = time.monotonic() + 10
            while not all(client.is_connected() for client in clients.values()):
                if time.monotonic() > deadline:
                    raise RuntimeError("the fairness devices could not log in")
                await asyncio.sleep(0.02)
            others = {meter: clients[meter] for meter in normal}
            await asyncio.to_thread(paced, others, FAIR_NORMAL_RATE, phase, 0, sent)
            alone_ended = time.time()
            await asyncio.gather(
                asyncio.to_thread(paced, others, FAIR_NORMAL_RATE, phase, 100_000, sent),
                asyncio.to_thread(paced, {noisy: clients[noisy]}, FAIR_QUOTA * FAIR_NOISY_FACTOR, phase, 0, sent),
            )
            beside_ended = time.time()
            deadline = time.monotonic() + 30
            while not all(mid in acks[meter] for meter in sent for mid in sent[meter]):
                if time.monotonic() > deadline:
                    raise RuntimeError("the broker did not acknowledge every fairness message")
                await asyncio.sleep(0.05)
            for client in clients.values():
                client.disconnect()
                client.loop_stop()
        noisy_acked = {quarter for mid, quarter in sent[noisy].items() if acks[noisy][mid] == 0}
        per_phase = int(FAIR_NORMAL_RATE * phase) * FAIR_NORMAL_DEVICES
        normal_keys = {meter.encode() for meter in normal}
        alone_ids: set[tuple[bytes, int]] = set()
        beside_ids: set[tuple[bytes, int]] = set()
        in_readings: set[int] = set()
        in_dlq: dict[int, str] = {}
        deadline = time.monotonic() + 60
        while len(alone_ids | beside_ids) < 2 * per_phase or not noisy_acked <= in_readings | set(in_dlq):
            if time.monotonic() > deadline:
                break  # reported as found: a shortfall shows in the figures
            batches = await consumer.getmany(timeout_ms=200)
            for record in (r for records in batches.values() for r in records):
                if record.topic.endswith(".dlq"):
                    if record.key == noisy.encode():
                        headers = dict(record.headers)
                        in_dlq[quarter_of(orjson.loads(record.value))] = headers.get("dlq.reason", b"?").decode()
                    continue
                quarter = quarter_of(orjson.loads(record.value)["data"])
                if record.key == noisy.encode():
                    in_readings.add(quarter)
                elif record.key in normal_keys:
                    beside = quarter >= 100_000
                    if record.timestamp / 1000 <= (beside_ended if beside else alone_ended) + FAIR_GRACE:
                        (beside_ids if beside else alone_ids).add((record.key, quarter))
        result = Fairness(
            alone=len(alone_ids) / phase,
            beside=len(beside_ids) / phase,
            noisy_acked=len(noisy_acked),
            noisy_in_readings=len(noisy_acked & in_readings),
            noisy_in_dlq=len(noisy_acked & set(in_dlq)),
            noisy_reasons=dict(Counter(in_dlq.values())),
        )
    finally:
        await consumer.stop()
    return result


# --- report ------------------------------------------------------------------------------------------------


def others() -> str:
    """GridHub services of other sessions running now (they compete for the cores and, for MQTT, the messages)."""
    found: Counter[str] = Counter()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            command = (entry / "cmdline").read_bytes().split(b"\0")
            if b"-m" in command:
                module = command[command.index(b"-m") + 1].decode(errors="replace")
                if module.startswith("services."):
                    found[module] += 1
    return ", ".join(f"{module} x{count}" for module, count in sorted(found.items())) or "none"


def machine() -> dict[str, str]:
    memory, cpu = "?", platform.processor() or "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = ", ".join(
        f"{name} {metadata.version(name)}"
        for name in ("aiokafka", "fastapi", "uvicorn", "httpx", "paho-mqtt", "orjson")
    )
    return {
        "cores": f"{os.cpu_count()} ({len(os.sched_getaffinity(0))} usable)",
        "memory": memory,
        "cpu": cpu,
        "python": platform.python_version(),
        "packages": versions,
    }


@dataclass
class Results:
    params: Params
    baseline_rest: list[float] = field(default_factory=list)
    rest: list[float] = field(default_factory=list)
    rest_unscoped: list[float] = field(default_factory=list)
    baseline_mqtt: list[float] = field(default_factory=list)
    mqtt: list[float] = field(default_factory=list)
    mqtt_publish: list[float] = field(default_factory=list)
    overload: dict[str, Any] = field(default_factory=dict)
    offered_rate: float = 0.0
    fairness: Fairness = field(default_factory=Fairness)
    others: str = "none"


def _k(value: float) -> str:
    return f"{value / 1000:,.1f}k"


def scope_lines(results: Results) -> list[str]:
    """The scope check's cost: the checked service's REST rate over the same service's without the check."""
    if not results.rest_unscoped:
        return []
    per_round = [on / off for on, off in zip(results.rest, results.rest_unscoped, strict=True)]
    with_check = statistics.median(results.rest)
    ratio = with_check / statistics.median(results.rest_unscoped)
    return [
        f"Scope check (each reading against the local view of meterpoints.v1): REST {_k(with_check)}"
        f" readings/s with it, {_k(statistics.median(results.rest_unscoped))} without it (the same service with"
        f" COLLECTION_SCOPE__ENFORCE=false, rounds alternating, each going first in turn): **ratio {ratio:.2f}**"
        " (per round " + ", ".join(f"{r:.2f}" for r in per_round) + ").",
        "",
    ]


def report(results: Results, command: str, quick: bool = False) -> str:
    p = results.params
    rest, base_rest = statistics.median(results.rest), statistics.median(results.baseline_rest)
    mqtt, base_mqtt = statistics.median(results.mqtt), statistics.median(results.baseline_mqtt)
    over = results.overload
    peak = max(rss for _, rss in over["samples"])
    last = [rss for t, rss in over["samples"] if t >= p.overload_seconds / 2]
    answers = over["answers"]
    offered = answers.get("offered", 0)
    shown = over["samples"][:: max(1, len(over["samples"]) // 12)]
    lines = [
        "# Collection ingest",
        "",
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC with `{command}`.",
        "",
        "## Machine",
        "",
        *(f"- {key}: {value}" for key, value in machine().items()),
        "- Kafka, PostgreSQL, Mosquitto, the service and the load generators share these cores.",
        "",
        "## Parameters",
        "",
        f"- REST: {p.rest_readings:,} readings per round in batches of {p.batch}, {p.concurrency} requests in flight,"
        f" {p.rounds} round(s) alternating with the baseline's",
        f"- MQTT: {p.mqtt_processes} publisher processes (one device each), {p.mqtt_messages:,} messages each of"
        f" {p.readings_per_message} readings, QoS 1, up to 1000 in flight per publisher",
        f"- baseline: aiokafka {metadata.version('aiokafka')} producer, acks=all, idempotence, linger {LINGER_MS} ms,"
        f" 256 KiB batches, create_batch/send_batch per partition, {p.batch} records per call, {p.concurrency} calls"
        " in flight, records pre-built from the same readings",
        f"- overload: {p.overload_factor:g} x the REST rate measured above, offered open-loop for"
        f" {p.overload_seconds:g} s by {p.overload_processes} client processes (at most 512 requests open each)",
        "- the service: `python -m services.collection` (uvicorn, 1 worker), quotas raised out of the way, bulkhead 8"
        " in flight (wait 0.5 s, 64 waiting), 4 MiB bodies, FTP off",
        scale_line(p.scale, quick, SCALES),
        "",
        "## Throughput into Kafka (readings/s, median of rounds)",
        "",
        "| path | service | raw aiokafka batch producer, same readings | ratio service / raw |",
        "|---|---:|---:|---:|",
        f"| REST `POST /v1/readings`, batches of {p.batch} | {_k(rest)} | {_k(base_rest)} | {rest / base_rest:.2f} |",
        f"| MQTT, messages of {p.readings_per_message} readings | {_k(mqtt)} | {_k(base_mqtt)} |"
        f" {mqtt / base_mqtt:.2f} |",
        "",
        *scope_lines(results),
        f"MQTT publishers got PUBACKs from the broker for {_k(statistics.median(results.mqtt_publish))} messages/s"
        f" ({_k(statistics.median(results.mqtt_publish) * p.readings_per_message)} readings/s) in total; the service's"
        " rate above counts a reading once Kafka acknowledged it (the service acknowledges the broker after that).",
        "",
        "MQTT is bound by the service's one Python process: paho's network thread (packet parsing, PUBACKs) and the"
        " per-message handoff to asyncio share the GIL with validation, so messages of a few readings cost most of"
        " the time; more readings per message or more replicas in the shared subscription raise the rate.",
        "",
        "Rounds (readings/s): REST "
        + ", ".join(_k(v) for v in results.rest)
        + "; baseline "
        + ", ".join(_k(v) for v in results.baseline_rest)
        + "; MQTT "
        + ", ".join(_k(v) for v in results.mqtt)
        + "; baseline "
        + ", ".join(_k(v) for v in results.baseline_mqtt)
        + ".",
        "",
        "## Memory under overload",
        "",
        f"Aimed at {results.offered_rate * p.batch / 1000:,.0f}k readings/s ({results.offered_rate:,.1f} requests/s"
        f" of {p.batch}) for {p.overload_seconds:g} s, {p.overload_factor:g} x the measured REST rate.",
        "",
        "| RSS of the service | MiB |",
        "|---|---:|",
        f"| before | {over['before']:.0f} |",
        f"| peak during the overload | {peak:.0f} |",
        f"| peak in the second half | {max(last) if last else peak:.0f} |",
        f"| after (1 s later) | {over['after']:.0f} |",
        "",
        "| answers | requests |",
        "|---|---:|",
        *(f"| {name} | {count:,} |" for name, count in sorted(answers.items()) if name not in ("offered", "skipped")),
        f"| offered (sent) | {offered:,} |",
        f"| not offered: the client had 512 open requests per process | {answers.get('skipped', 0):,} |",
        "",
        f"Offered in fact: {offered / over['offering']:,.1f} requests/s (the clients share the cores with the"
        f" service and Kafka); the last answer came {over['elapsed']:.1f} s after the start. Accepted meanwhile:"
        f" {answers.get('202', 0) * p.batch / over['elapsed'] / 1000:,.1f}k readings/s. The rest were refused (503"
        " bulkhead full, with Retry-After) without the service reading their bodies, so it holds at most the"
        " bulkhead's requests and the bounded waiting queue, whatever the offered rate.",
        "",
        f"Other GridHub processes on the machine when the run started: {results.others}. (Another collection"
        " instance would consume the same MQTT topics in its own share group and compete for the cores.)",
        "",
        "RSS samples (s: MiB): " + ", ".join(f"{t:.0f}: {rss:.0f}" for t, rss in shown),
        "",
        *fairness_lines(results.fairness, p),
    ]
    return "\n".join(lines)


def fairness_lines(fair: Fairness, p: Params) -> list[str]:
    unaccounted = fair.noisy_acked - fair.noisy_in_readings - fair.noisy_in_dlq
    reasons = ", ".join(f"{reason} {count:,}" for reason, count in sorted(fair.noisy_reasons.items())) or "none"
    return [
        "## MQTT fairness: one noisy device",
        "",
        f"A second service with a per-device quota of {FAIR_QUOTA} readings/s (burst {FAIR_QUOTA})."
        f" {FAIR_NORMAL_DEVICES} devices publish {FAIR_NORMAL_RATE:g} messages of one reading a second each, for"
        f" {p.fairness_seconds:g} s alone, then {p.fairness_seconds:g} s beside a device sending"
        f" {FAIR_NOISY_FACTOR} x its quota ({FAIR_QUOTA * FAIR_NOISY_FACTOR} messages/s). A reading counts when it"
        f" is in Kafka by the end of its phase plus {FAIR_GRACE:g} s.",
        "",
        "| the other devices' readings/s into Kafka | |",
        "|---|---:|",
        f"| alone | {fair.alone:.1f} |",
        f"| beside the noisy device | {fair.beside:.1f} |",
        f"| **fairness: beside / alone** | **{fair.ratio:.2f}** |",
        "",
        f"The noisy device's readings the broker acknowledged: {fair.noisy_acked:,}; in the readings topic"
        f" {fair.noisy_in_readings:,} (its quota, some from its lane), in the DLQ {fair.noisy_in_dlq:,} (reasons:"
        f" {reasons}), unaccounted {unaccounted:,}.",
        "",
    ]


# --- the run's meterpoints --------------------------------------------------------------------------------------


def run_topics(prefix: str) -> list[str]:
    """The run's own topics: readings and events with their DLQs, and the meterpoints topic the scope view reads."""
    bases = (topics.READINGS, topics.METER_EVENTS)
    return [prefix + name for base in bases for name in (base, topics.dlq(base))] + [prefix + topics.METERPOINTS]


async def register_meterpoints(bootstrap: str, prefix: str, assignments: Sequence[tuple[str, str, str]]) -> None:
    """Register ``(meterpoint, source kind, source id)`` on the run's meterpoints topic, as the customers service
    would (MeterpointRegistered, the bench's grid company), before the service starts: the scope check then finds
    every meterpoint of the run assigned to the source that delivers it, and the service's readiness waits for its
    view to have read them."""
    from bench.common import BENCH_TENANT
    from libs.events.envelope import make_event
    from libs.events.meter import Resolution
    from libs.events.meterpoints import (
        Connection,
        ConnectionState,
        DataSource,
        MeterpointRegistered,
        MeterpointType,
        SettlementMethod,
        SourceKind,
    )
    from libs.events.records import to_record
    from libs.platform.kafka import start_producer

    producer = await start_producer(bootstrap, "bench-registry")
    try:
        acks = []
        for meterpoint, kind, source_id in assignments:
            data = MeterpointRegistered(
                meterpoint_id=meterpoint,
                grid_company=BENCH_TENANT,
                grid_area="804",
                type=MeterpointType.CONSUMPTION,
                resolution=Resolution.PT15M,
                settlement_method=SettlementMethod.FLEX,
                connection=Connection(state=ConnectionState.CONNECTED, since=datetime(2025, 1, 1).date()),
                data_source=DataSource(kind=SourceKind(kind), id=source_id),
                version=1,
            )
            record = to_record(make_event(data, source="/gridhub/bench"))
            topic = prefix + record.topic
            acks.append(await producer.send(topic, record.value, key=record.key, headers=record.headers))
        await asyncio.gather(*acks)
    finally:
        await producer.stop()


# --- main --------------------------------------------------------------------------------------------------


async def run(params: Params, stack: StackConfig, log: Path) -> Results:
    run_id = secrets.token_hex(4)
    prefix = f"bench-{run_id}."
    async with private_topics(stack.kafka_bootstrap, run_topics(prefix)):
        return await _run(params, stack, log, run_id, prefix)


async def _run(params: Params, stack: StackConfig, log: Path, run_id: str, prefix: str) -> Results:
    results = Results(params, others=others())
    digits = f"{int(run_id, 16) % 1000:03d}"
    meters = meterpoints(1000, f"57131318{digits}")
    devices_of_run = meterpoints(params.mqtt_processes, f"57131319{digits}")
    # The REST readings' meterpoints are the bench key's (client "bench"); each MQTT device delivers its own.
    await register_meterpoints(
        stack.kafka_bootstrap,
        prefix,
        [(m, "head_end", "bench") for m in meters] + [(m, "device", m) for m in devices_of_run],
    )
    service = start_service(stack, run_id, log, prefix)
    # The same service with the scope check off, for the check's cost in this run (its rounds alternate with the
    # checked service's); stopped before the MQTT rounds, where it would compete for the shared subscription.
    unscoped: Service | None = start_service(
        stack, f"{run_id}-unscoped", log.with_suffix(".unscoped.log"), prefix, UNSCOPED_SERVICE
    )
    api_key, key_id = await add_api_key(stack)
    try:
        items = readings(meters, params.rest_readings)
        bodies = [orjson.dumps(items[i : i + params.batch]) for i in range(0, len(items), params.batch)]
        records = records_of(items, service.event_source, prefix)
        # Warm up both (connections, metadata, JIT-free but cache-warm): a few batches each, not measured.
        await baseline(stack.kafka_bootstrap, records[: params.batch * 4], batch=params.batch, concurrency=4)
        await rest_round(service, api_key, bodies[:4], params.batch, 4)
        assert unscoped is not None
        await rest_round(unscoped, api_key, bodies[:4], params.batch, 4)
        for round_number in range(params.rounds):
            results.baseline_rest.append(
                await baseline(stack.kafka_bootstrap, records, batch=params.batch, concurrency=params.concurrency)
            )
            # Which of the two goes first alternates: the first after the baseline meets Kafka still writing its
            # segments, which would otherwise count against one of them every round.
            for checked in (True, False) if round_number % 2 == 0 else (False, True):
                target, rates = (service, results.rest) if checked else (unscoped, results.rest_unscoped)
                rates.append(await rest_round(target, api_key, bodies, params.batch, params.concurrency))
            print(
                f"round {round_number + 1}: REST {_k(results.rest[-1])}/s, without the scope check"
                f" {_k(results.rest_unscoped[-1])}/s, baseline {_k(results.baseline_rest[-1])}/s"
            )
        stop_service(unscoped, stack)
        unscoped = None

        for round_number in range(params.rounds):
            rate, publish_rate, mqtt_items = await asyncio.to_thread(mqtt_round, stack, service, params, devices_of_run)
            results.mqtt.append(rate)
            results.mqtt_publish.append(publish_rate)
            results.baseline_mqtt.append(
                await baseline(
                    stack.kafka_bootstrap,
                    records_of(mqtt_items, service.event_source, prefix),
                    batch=params.batch,
                    concurrency=params.concurrency,
                )
            )
            print(f"round {round_number + 1}: MQTT {_k(rate)}/s, baseline {_k(results.baseline_mqtt[-1])}/s")

        sustainable = statistics.median(results.rest) / params.batch  # requests/s
        results.offered_rate = sustainable * params.overload_factor
        results.overload = await asyncio.to_thread(overload, service, api_key, bodies, results.offered_rate, params)
        peak = max(rss for _, rss in results.overload["samples"])
        before, answers = results.overload["before"], dict(results.overload["answers"])
        print(f"overload: RSS {before:.0f} -> peak {peak:.0f} MiB; {answers}")
    finally:
        await revoke_api_key(stack, key_id)
        if unscoped is not None:
            stop_service(unscoped, stack)
        stop_service(service, stack)
    results.fairness = await fairness_part(params, stack, log, run_id, prefix)
    return results


async def fairness_part(params: Params, stack: StackConfig, log: Path, run_id: str, prefix: str) -> Fairness:
    digits = f"{int(run_id, 16) % 1000:03d}"
    fair_devices = meterpoints(FAIR_NORMAL_DEVICES, f"57131317{digits}") + meterpoints(1, f"57131316{digits}")
    await register_meterpoints(stack.kafka_bootstrap, prefix, [(m, "device", m) for m in fair_devices])
    service = start_service(stack, f"{run_id}-fair", log.with_suffix(".fair.log"), prefix, FAIR_SERVICE)
    try:
        fair = await fairness(stack, service, prefix, params, digits)
    finally:
        stop_service(service, stack)
    print(f"fairness: {fair.beside:.1f} / {fair.alone:.1f} readings/s = {fair.ratio:.2f}")
    return fair


async def run_fairness(params: Params, stack: StackConfig, log: Path) -> Fairness:
    run_id = secrets.token_hex(4)
    prefix = f"bench-{run_id}."
    async with private_topics(stack.kafka_bootstrap, run_topics(prefix)):
        return await fairness_part(params, stack, log, run_id, prefix)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.collection", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds per part, a smoke test")
    parser.add_argument("--fairness", action="store_true", help="only the MQTT fairness part (5)")
    parser.add_argument("--out", type=Path, help=f"write the report here (default without --quick: {RESULTS})")
    add_scale_option(parser, SCALES)
    args = parser.parse_args(argv)
    scale = scale_of(parser, args)
    params = QUICK if args.quick else FULL.scaled(scale)
    out = args.out or (None if args.quick else RESULTS)
    stack = StackConfig()
    log = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-collection-{os.getpid()}.log"
    if args.fairness:
        text = "\n".join(fairness_lines(asyncio.run(run_fairness(params, stack, log)), params))
        print(text)
        if args.out is not None:
            args.out.write_text(text)
        return 0
    results = asyncio.run(run(params, stack, log))
    command = "python -m bench.collection" + (" --quick" if args.quick else "" if scale == 1 else f" --scale {scale:g}")
    text = report(results, command, args.quick)
    print(text)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
