"""Gap fill at the edge, without I/O: where a request goes, what its source receives, the bounds and the breaker."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from prometheus_client import CollectorRegistry

from libs.events.meter import Register, Resolution
from libs.events.meterpoints import DataSource, SourceKind
from libs.events.series import GapFillRequested
from libs.flowcontrol.breaker import CircuitBreaker
from libs.flowcontrol.buffer import BoundedBuffer
from libs.flowcontrol.delivery import Reject
from libs.flowcontrol.errors import CallNotPermitted
from libs.flowcontrol.throttle import Throttle
from services.collection.adapters.devicecommands import CommandNotDelivered, DeviceCommands
from services.collection.adapters.rereads import OutboxWriter
from services.collection.entrypoints.gapfill import GapFillRoutes
from services.collection.filedrop import Spool
from services.collection.gapfill import StoredRequest, check_route, outbox_name, reread_document
from services.collection.metrics import CollectionMetrics
from services.collection.scope import ScopeView
from tests.tenants import TENANT_A, TENANT_B

METERPOINT = "571313180400000025"
START = datetime(2025, 3, 1, 10, 0, tzinfo=UTC)
END = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def request(kind: SourceKind = SourceKind.DEVICE, source: str = METERPOINT, *, attempt: int = 1) -> GapFillRequested:
    register = Register.ACTIVE_IMPORT
    return GapFillRequested(
        request_id=GapFillRequested.id_of(METERPOINT, register, START, END, attempt),
        meterpoint_id=METERPOINT,
        grid_company=TENANT_A,
        data_source=DataSource(kind=kind, id=source),
        register=register,
        resolution=Resolution.PT15M,
        start=START,
        end=END,
        attempt=attempt,
        requested_at=datetime(2025, 3, 1, 13, 5, tzinfo=UTC),
    )


def view_with(kind: SourceKind, source: str, tenant: str = TENANT_A) -> ScopeView:
    view = ScopeView(10)
    view.apply(METERPOINT, grid_company=tenant, source=(kind.value, source), version=1)
    view.ready = True
    return view


def test_the_reread_document_names_the_range_register_and_request() -> None:
    gap = request()
    document = orjson.loads(orjson.dumps(reread_document(gap), option=orjson.OPT_UTC_Z))
    assert document == {
        "command": "reread",
        "request_id": gap.request_id,
        "meterpoint_id": METERPOINT,
        "start": "2025-03-01T10:00:00Z",
        "end": "2025-03-01T12:00:00Z",
        "register": "active_import",
        "resolution": "PT15M",
        "requested_at": "2025-03-01T13:05:00Z",
    }
    assert outbox_name(gap.request_id) == f"reread-{gap.request_id}.json"


def test_a_request_goes_only_to_the_source_of_its_grid_companys_meterpoint() -> None:
    gap = request(SourceKind.HEAD_END, "hes-north")
    mine = view_with(SourceKind.HEAD_END, "hes-north").get(METERPOINT)
    assert check_route(gap, mine, enforced=True) is None
    other_company = view_with(SourceKind.HEAD_END, "hes-north", TENANT_B).get(METERPOINT)
    refusal = check_route(gap, other_company, enforced=True)
    assert refusal is not None
    assert refusal.reason == "not_in_scope"
    other_source = view_with(SourceKind.HEAD_END, "hes-south").get(METERPOINT)
    refusal = check_route(gap, other_source, enforced=True)
    assert refusal is not None
    assert refusal.reason == "not_in_scope"
    refusal = check_route(gap, None, enforced=True)
    assert refusal is not None
    assert refusal.reason == "unknown_meterpoint"
    assert check_route(gap, None, enforced=False) is None


class FakeChannel:
    def __init__(self, *failures: BaseException) -> None:
        self.failures = list(failures)
        self.sent: list[tuple[str, bytes]] = []

    async def publish_command(self, topic: str, payload: bytes, *, timeout: float) -> None:
        if self.failures:
            raise self.failures.pop(0)
        self.sent.append((topic, payload))


def device_commands(channel: FakeChannel, breaker: CircuitBreaker | None = None) -> DeviceCommands:
    return DeviceCommands(
        channel,
        buffer=BoundedBuffer(4),
        throttle=Throttle(100.0, 10.0, max_wait=1.0),
        breaker=breaker or CircuitBreaker(window_size=2, minimum_calls=2, wait_in_open=60.0),
        timeout=1.0,
        topic_prefix="gridhub/meters",
    )


async def test_a_device_command_is_sent_once_per_request_id_on_its_own_topic() -> None:
    channel = FakeChannel()
    commands = device_commands(channel)
    sender = asyncio.create_task(commands.run())
    try:
        gap = request()
        await commands.send(gap)
        await commands.send(gap)  # a redelivered request: one command
        await commands.send(request(attempt=2))
    finally:
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
    assert [topic for topic, _ in channel.sent] == [f"gridhub/meters/{METERPOINT}/commands"] * 2
    assert orjson.loads(channel.sent[0][1])["request_id"] == gap.request_id
    assert (commands.sent, commands.skipped) == (2, 1)


async def test_an_unreachable_broker_opens_the_breaker_and_later_requests_are_refused_at_once() -> None:
    down = CommandNotDelivered("not connected")
    channel = FakeChannel(down, down)
    commands = device_commands(channel)
    sender = asyncio.create_task(commands.run())
    try:
        for attempt in (1, 2):
            with pytest.raises(CommandNotDelivered):
                await commands.send(request(attempt=attempt))
        with pytest.raises(CallNotPermitted):  # a Refused: the consumer pauses the partition, nothing is lost
            await commands.send(request(attempt=3))
    finally:
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
    assert channel.sent == []


def test_the_outbox_keeps_one_file_per_request_and_at_most_its_bound(tmp_path: Path) -> None:
    dropped: list[int] = []
    writer = OutboxWriter(Spool(tmp_path).outbox, max_files=2, on_dropped=dropped.append)
    first = writer.write(request(SourceKind.FTP_PARTNER, "partner1", attempt=1))
    assert writer.write(request(SourceKind.FTP_PARTNER, "partner1", attempt=1)) == first  # the same request
    assert orjson.loads(first.read_bytes())["command"] == "reread"
    writer.write(request(SourceKind.FTP_PARTNER, "partner1", attempt=2))
    third = writer.write(request(SourceKind.FTP_PARTNER, "partner1", attempt=3))
    outbox = tmp_path / "users" / "partner1" / "outbox"
    names = sorted(p.name for p in outbox.iterdir())
    assert len(names) == 2
    assert third.name in names
    assert first.name not in names
    assert dropped == [1]
    with pytest.raises(ValueError, match="a login is"):  # a source id that is no login never becomes a path
        writer.write(request(SourceKind.FTP_PARTNER, "ftp"))  # an anonymous alias


class FakeStore:
    def __init__(self) -> None:
        self.rows: dict[str, GapFillRequested] = {}

    async def add(self, request: GapFillRequested, *, max_open: int) -> int:
        self.rows.setdefault(request.request_id, request)
        return 0

    async def open_requests(self, tenant: str, client: str, *, limit: int) -> list[StoredRequest]:
        return []

    async def acknowledge(self, tenant: str, client: str, request_id: str) -> bool:
        return self.rows.pop(request_id, None) is not None


async def test_routes_by_source_kind_and_rejects_what_is_out_of_scope(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    store = FakeStore()
    channel = FakeChannel()
    commands = device_commands(channel)
    routes = GapFillRoutes(
        scope=view_with(SourceKind.HEAD_END, "hes-north"),
        metrics=CollectionMetrics(registry),
        devices=commands,
        head_ends=store,
        partners=OutboxWriter(Spool(tmp_path).outbox, max_files=10),
        max_open_per_client=10,
    )
    head_end = request(SourceKind.HEAD_END, "hes-north")
    await routes.route(head_end)
    await routes.route(head_end)
    assert list(store.rows) == [head_end.request_id]
    with pytest.raises(Reject, match="not_in_scope"):
        await routes.route(request(SourceKind.DEVICE, METERPOINT))  # the view says a head-end delivers it
    assert channel.sent == []
    routes.scope = view_with(SourceKind.FTP_PARTNER, "partner1")
    await routes.route(request(SourceKind.FTP_PARTNER, "partner1"))
    assert len(list((tmp_path / "users" / "partner1" / "outbox").iterdir())) == 1
    sample = registry.get_sample_value
    assert sample("gridhub_collection_gapfill_requests_total", {"route": "head_end", "outcome": "routed"}) == 2
    assert sample("gridhub_collection_gapfill_requests_total", {"route": "device", "outcome": "refused"}) == 1
