# mypy: disable-error-code="no-untyped-call"
# (zeep has no type hints)
"""The simulator's senders: meters over MQTT, a head-end system over REST, a partner over FTP, a registrar over SOAP.

Each sender keeps what it could not deliver yet in a bounded backlog (as a real meter or head-end does) and tries
again on the next tick; nothing here waits longer than its timeout, so the simulator always stops promptly.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import PurePosixPath
from typing import Any

import aioftp
import httpx
import orjson
import paho.mqtt.client as paho
import requests
import zeep
import zeep.exceptions
from paho.mqtt.enums import CallbackAPIVersion
from zeep.transports import Transport

from stack.config import REPO

logger = logging.getLogger("stack.dev.simulator")

Reading = dict[str, Any]
Alarm = dict[str, Any]

WSDL = REPO / "contracts" / "wsdl" / "customers.wsdl"
BINDING = "{urn:gridhub:customers:v1}CustomerServiceBinding"
CSV_HEADER = "meterpoint_id,register,interval_end,resolution,value,unit,quality"
MAX_READINGS_PER_MESSAGE = 200  # contracts/asyncapi/collection.yaml


MAX_PENDING_REREADS = 100  # re-read commands a meter keeps before it answers them (older ones are dropped)


@dataclass(frozen=True)
class Reread:
    """A re-read request: send the readings of ``register`` with ``interval_end`` in (``start``, ``end``] again."""

    request_id: str
    meterpoint_id: str
    start: datetime
    end: datetime
    register: str


def parse_reread(payload: bytes) -> Reread | None:
    """The re-read in ``payload`` (contracts/asyncapi/collection.yaml, RereadCommand), or None if it is none."""
    try:
        document = orjson.loads(payload)
        if not isinstance(document, dict) or document.get("command") != "reread":
            return None
        return Reread(
            request_id=str(document["request_id"]),
            meterpoint_id=str(document["meterpoint_id"]),
            start=datetime.fromisoformat(document["start"]).astimezone(UTC),
            end=datetime.fromisoformat(document["end"]).astimezone(UTC),
            register=str(document["register"]),
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None


def csv_line(reading: Reading) -> str:
    """One reading as a line of the readings CSV format (columns as in `CSV_HEADER`)."""
    columns = ("meterpoint_id", "register", "interval_end", "resolution")
    value = f"{reading['value']:.3f}"
    return ",".join([*(str(reading[name]) for name in columns), value, reading["unit"], reading["quality"]])


class MqttMeter:
    """One smart meter: its own MQTT 5 login (user = meterpoint id), QoS 1, publishing its own readings."""

    def __init__(self, meterpoint_id: str, password: str, host: str, port: int, topic_prefix: str) -> None:
        self.meterpoint_id = meterpoint_id
        self._host, self._port = host, port
        self._readings_topic = f"{topic_prefix}/{meterpoint_id}/readings"
        self._events_topic = f"{topic_prefix}/{meterpoint_id}/events"
        # A meter remembers one message worth of readings while it cannot reach the broker; older ones go first.
        self.backlog: deque[Reading] = deque(maxlen=MAX_READINGS_PER_MESSAGE)
        self.published = 0
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"sim-{meterpoint_id}", protocol=paho.MQTTv5)
        self.client.username_pw_set(meterpoint_id, password)
        self.client.max_queued_messages_set(4)
        self.client.reconnect_delay_set(min_delay=1, max_delay=10)
        self._commands_topic = f"{topic_prefix}/{meterpoint_id}/commands"
        self._rereads: deque[Reread] = deque(maxlen=MAX_PENDING_REREADS)
        self._rereads_lock = threading.Lock()
        self.rereads = 0
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if not reason_code.is_failure:
            client.subscribe(self._commands_topic, qos=1)  # the broker's ACL lets it read its own commands only

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        command = parse_reread(bytes(message.payload))
        if command is not None:
            with self._rereads_lock:
                self._rereads.append(command)

    def take_rereads(self) -> list[Reread]:
        """The re-reads received since the last call (paho's thread queues them)."""
        with self._rereads_lock:
            taken = list(self._rereads)
            self._rereads.clear()
        return taken

    def resend(self, readings: Sequence[Reading]) -> None:
        """Publish ``readings`` from its history again, one message per 200; skipped while offline (asked again)."""
        if not self.client.is_connected():
            return
        for first in range(0, len(readings), MAX_READINGS_PER_MESSAGE):
            batch = list(readings[first : first + MAX_READINGS_PER_MESSAGE])
            info = self.client.publish(self._readings_topic, orjson.dumps(batch), qos=1)
            if info.rc != paho.MQTT_ERR_SUCCESS:
                return
            self.published += len(batch)
        self.rereads += 1

    def start(self) -> None:
        """Connect in paho's network thread (it retries by itself, e.g. until the broker reloaded its users)."""
        self.client.connect_async(self._host, self._port, keepalive=60)
        self.client.loop_start()

    def send(self, readings: Sequence[Reading]) -> None:
        """Publish the backlog plus ``readings`` as one message when connected; never blocks the event loop."""
        self.backlog.extend(readings)
        if not self.backlog or not self.client.is_connected():
            return
        batch = list(self.backlog)
        info = self.client.publish(self._readings_topic, orjson.dumps(batch), qos=1)
        if info.rc == paho.MQTT_ERR_SUCCESS:
            self.backlog.clear()
            self.published += len(batch)

    def alarm(self, alarm: Alarm) -> bool:
        """Publish one alarm; False when the meter is offline (an alarm is not worth remembering here)."""
        if not self.client.is_connected():
            return False
        return self.client.publish(self._events_topic, orjson.dumps(alarm), qos=1).rc == paho.MQTT_ERR_SUCCESS

    def stop(self) -> None:
        """Disconnect and end the network thread."""
        self.client.disconnect()
        self.client.loop_stop()


class HeadEnd:
    """A head-end system posting batches of its meters' readings to ``POST /v1/readings`` with its API key."""

    def __init__(self, base_url: str, api_key: str, *, max_batch: int = 1000, max_backlog: int = 20_000) -> None:
        self.http = httpx.AsyncClient(
            base_url=base_url,
            headers={"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"},
            timeout=10.0,
        )
        self.backlog: deque[Reading] = deque(maxlen=max_backlog)
        self._max_batch = max_batch
        self._not_before = 0.0
        self.accepted = self.rejected = self.refused = 0
        self.rereads = 0

    async def answer_rereads(self, readings_of: Callable[[Reread], list[Reading]]) -> None:
        """Poll ``GET /v1/reread-requests``; post each range (``readings_of``), then acknowledge it with DELETE."""
        try:
            response = await self.http.get("/v1/reread-requests")
            if response.status_code != 200:
                return
            requests_ = response.json().get("requests", [])
            for document in requests_:
                command = parse_reread(orjson.dumps(document))
                if command is None:
                    continue
                readings = readings_of(command)
                for first in range(0, len(readings), self._max_batch):
                    if await self._post("/v1/readings", readings[first : first + self._max_batch]) is None:
                        return  # not delivered: the request stays open and is answered on a later poll
                await self.http.delete(f"/v1/reread-requests/{command.request_id}")
                self.rereads += 1
        except (httpx.HTTPError, ValueError) as error:
            logger.warning("head-end: re-read poll failed: %s %s", type(error).__name__, error)

    async def send(self, readings: Sequence[Reading]) -> None:
        """Post the oldest backlog first; 429/503 or a network error keep it for later (after Retry-After)."""
        self.backlog.extend(readings)
        if not self.backlog or time.monotonic() < self._not_before:
            return
        batch = [self.backlog.popleft() for _ in range(min(len(self.backlog), self._max_batch))]
        body = await self._post("/v1/readings", batch)
        if body is None:
            self.backlog.extendleft(reversed(batch))
            return
        self.accepted += int(body.get("accepted", 0))
        self.rejected += int(body.get("rejected", 0))

    async def alarm(self, alarm: Alarm) -> bool:
        """Post one alarm to ``POST /v1/meter-events``."""
        return await self._post("/v1/meter-events", [alarm]) is not None

    async def _post(self, path: str, items: list[dict[str, Any]]) -> dict[str, Any] | None:
        try:
            response = await self.http.post(path, content=orjson.dumps(items))
        except httpx.HTTPError as error:
            logger.warning("head-end: %s failed: %s %s", path, type(error).__name__, error)
            self._not_before = time.monotonic() + 2.0
            return None
        if response.status_code == 202:
            body: dict[str, Any] = response.json()
            return body
        if response.status_code in (429, 503):
            self.refused += 1
            self._not_before = time.monotonic() + float(response.headers.get("Retry-After", "1"))
            return None
        # 401/403/4xx: retrying the same request cannot help; say so loudly and keep the data for a fixed setup.
        logger.error("head-end: %s answered %s: %s", path, response.status_code, response.text[:300])
        self._not_before = time.monotonic() + 10.0
        return None

    async def close(self) -> None:
        """Close the HTTP client."""
        await self.http.aclose()


@dataclass
class ReceiptCounts:
    """What the partner learned from the receipts in its outbox."""

    files: int = 0
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0


class Partner:
    """A partner dropping CSV files into ``/inbox`` over FTP, and collecting (then deleting) the receipts."""

    def __init__(
        self,
        host: str,
        port: int,
        login: str,
        password: str,
        *,
        max_backlog: int = 50_000,
        on_rereads: Callable[[list[Reread]], list[Reading]] | None = None,
    ) -> None:
        self._host, self._port, self._login, self._password = host, port, login, password
        self._on_rereads = on_rereads
        self.rereads = 0
        self.backlog: deque[str] = deque(maxlen=max_backlog)
        self.uploaded_files = 0
        self.uploaded_lines = 0
        self.receipts = ReceiptCounts()

    def add(self, readings: Sequence[Reading]) -> None:
        """Queue readings as CSV lines for the next file."""
        self.backlog.extend(csv_line(reading) for reading in readings)

    async def upload(self, name: str) -> None:
        """Upload the backlog as one file ``/inbox/<name>``; on failure it stays queued for the next upload."""
        if not self.backlog:
            return
        lines = list(self.backlog)
        body = "\n".join([CSV_HEADER, *lines]).encode() + b"\n"
        client = aioftp.Client(socket_timeout=10, path_timeout=10)
        try:
            async with asyncio.timeout(30):
                await client.connect(self._host, self._port)
                await client.login(self._login, self._password)
                await self._collect_receipts(client)
                async with client.upload_stream(f"/inbox/{name}") as stream:
                    await stream.write(body)
                await client.quit()
        except (aioftp.StatusCodeError, OSError, TimeoutError) as error:
            logger.warning("partner: upload of %s failed: %s %s", name, type(error).__name__, error)
            return
        finally:
            client.close()
        for _ in lines:
            self.backlog.popleft()
        self.uploaded_files += 1
        self.uploaded_lines += len(lines)

    async def _collect_receipts(self, client: aioftp.Client) -> None:
        for path, info in await client.list("/outbox"):
            name = PurePosixPath(path).name
            if info.get("type") == "file" and name.startswith("reread-") and name.endswith(".json"):
                await self._take_reread(client, PurePosixPath("/outbox") / name)
                continue
            if info.get("type") != "file" or not str(path).endswith(".receipt.json"):
                continue
            chunks: list[bytes] = []
            async with client.download_stream(PurePosixPath("/outbox") / PurePosixPath(path).name) as stream:
                async for block in stream.iter_by_block():
                    chunks.append(block)
            try:
                receipt = orjson.loads(b"".join(chunks))
            except orjson.JSONDecodeError:
                receipt = {}
            self.receipts.files += 1
            self.receipts.accepted += int(receipt.get("accepted", 0))
            self.receipts.duplicates += int(receipt.get("duplicates", 0))
            self.receipts.rejected += int(receipt.get("rejected", 0))
            await client.remove_file(PurePosixPath("/outbox") / PurePosixPath(path).name)

    async def _take_reread(self, client: aioftp.Client, path: PurePosixPath) -> None:
        # The range joins the backlog (uploaded in the file being sent now), then the request file is deleted.
        chunks: list[bytes] = []
        async with client.download_stream(path) as stream:
            async for block in stream.iter_by_block():
                chunks.append(block)
        command = parse_reread(b"".join(chunks))
        if command is not None and self._on_rereads is not None:
            self.add(self._on_rereads([command]))
            self.rereads += 1
        await client.remove_file(path)


FIRST_NAMES = ("Mette", "Jens", "Anne", "Lars", "Sofie", "Mikkel", "Ida", "Rasmus", "Freja", "Anders")
LAST_NAMES = ("Hansen", "Jensen", "Nielsen", "Pedersen", "Andersen", "Christensen", "Larsen", "Holm", "Lund", "Berg")


def person(index: int) -> dict[str, Any]:
    """RegisterCustomer arguments for simulated customer number ``index``."""
    first, last = FIRST_NAMES[index % 10], LAST_NAMES[(index // 10 + index) % 10]
    return {
        "kind": "person",
        "name": f"{first} {last}",
        "contact": {
            "email": f"{first.lower()}.{last.lower()}{index}@example.dk",
            "address": {"street": f"Vestergade {index + 1}", "postcode": "8000", "city": "Aarhus C", "country": "DK"},
        },
    }


class Registrar:
    """The customer centre over SOAP (zeep, from the committed WSDL): one customer per simulated meterpoint."""

    def __init__(self, url: str, client: str, password: str, *, attempts: int = 5) -> None:
        session = requests.Session()
        session.auth = (client, password)
        transport = Transport(session=session, timeout=10, operation_timeout=10)
        self._service: Any = zeep.Client(str(WSDL), transport=transport).create_service(BINDING, url)
        self._attempts = attempts

    def ensure_customer(self, meterpoint_id: str, index: int, today: date) -> str:
        """The id of the customer at ``meterpoint_id`` today; registered and linked first if there is none."""
        try:
            found = self._call("GetMeterpointCustomer", meterpointId=meterpoint_id, onDate=today)
            return str(found.customer.customerId)
        except zeep.exceptions.Fault as fault:
            if "Client.NotFound" not in str(fault.code):
                raise
        customer = self._call("RegisterCustomer", **person(index))
        move_in = today - timedelta(days=30)
        self._call("LinkMeterpoint", customerId=customer.customerId, meterpointId=meterpoint_id, moveIn=move_in)
        return str(customer.customerId)

    def ensure_meterpoint(self, meterpoint_id: str, source_kind: str, source_id: str, since: date) -> int:
        """Register ``meterpoint_id`` in the login's grid company, delivered by the given source; the version stored.

        A meterpoint registered by an earlier run with another source (a new run name means a new head-end client
        and FTP login) is updated to this one, so the collection's scope check lets this run's readings in."""
        record: dict[str, Any] = {
            "meterpointId": meterpoint_id,
            "gridArea": "804",
            "type": "consumption",
            "resolution": "PT15M",
            "settlementMethod": "flex",
            "connection": {"state": "connected", "since": since},
            "dataSource": {"kind": source_kind, "id": source_id},
        }
        try:
            return int(self._call("RegisterMeterpoint", **record).version)
        except zeep.exceptions.Fault as fault:
            if "Client.Conflict" not in str(fault.code):
                raise
        current = self._call("GetMeterpoint", meterpointId=meterpoint_id)
        return int(self._call("UpdateMeterpoint", expectedVersion=current.version, **record).version)

    def _call(self, operation: str, **arguments: Any) -> Any:
        # Server.Busy (quota, bulkhead) and Server.Unavailable say "later": wait a little and try again, bounded.
        for attempt in range(1, self._attempts + 1):
            try:
                return getattr(self._service, operation)(**arguments)
            except zeep.exceptions.Fault as fault:
                if "Server.Busy" not in str(fault.code) and "Server.Unavailable" not in str(fault.code):
                    raise
                error: Exception = fault
            except (zeep.exceptions.TransportError, requests.RequestException) as failure:
                error = failure
            if attempt == self._attempts:
                raise error
            logger.info("customers: %s refused (%s), retrying", operation, error)
            time.sleep(min(0.5 * 2**attempt, 5.0))
        raise AssertionError("unreachable")
