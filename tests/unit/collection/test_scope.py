"""The scope view and check (no I/O): versions, capacity, bytes per meterpoint, the check per item, record parsing."""

from __future__ import annotations

import tracemalloc
from datetime import UTC, datetime

import orjson
import pytest

from libs.events.envelope import make_event
from libs.events.gsrn import with_check_digit
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
from services.collection.adapters.meterpoints import parse_meterpoint
from services.collection.domain import (
    Accepted,
    Held,
    ItemOutcome,
    ReadingInput,
    Rejected,
    RejectReason,
    ValidationRules,
    check_readings,
)
from services.collection.scope import Applied, Deliverer, ScopeView
from tests.tenants import EIC_TENANT, TENANT_A, TENANT_B

A_METER = "571313180400000025"
B_METER = with_check_digit("57131318040000003")
UNKNOWN = with_check_digit("57131318040000004")
NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
HES = Deliverer(SourceKind.HEAD_END, "hes-north", TENANT_A)


def view() -> ScopeView:
    subject = ScopeView(capacity=10)
    subject.apply(A_METER, grid_company=TENANT_A, source=("head_end", "hes-north"), version=1)
    subject.apply(B_METER, grid_company=TENANT_B, source=("head_end", "hes-north"), version=1)
    return subject


def accepted(*meterpoints: str) -> list[ItemOutcome]:
    items = [
        ReadingInput.model_validate(
            {
                "meterpoint_id": meterpoint,
                "register": "active_import",
                "interval_end": f"2025-03-01T10:{15 * (index % 4):02d}:00Z",
                "resolution": "PT15M",
                "value": 1.0,
                "unit": "kWh",
                "quality": "measured",
            },
            strict=False,
        )
        for index, meterpoint in enumerate(meterpoints)
    ]
    return list(check_readings(items, now=NOW, rules=ValidationRules()))


def test_newest_version_wins_and_older_ones_are_skipped() -> None:
    subject = ScopeView()
    assert subject.apply(A_METER, grid_company=TENANT_A, source=("head_end", "a"), version=2) is Applied.ADDED
    assert subject.apply(A_METER, grid_company=TENANT_B, source=("head_end", "b"), version=1) is Applied.STALE
    assert subject.apply(A_METER, grid_company=TENANT_B, source=("head_end", "b"), version=2) is Applied.STALE
    entry = subject.get(A_METER)
    assert entry is not None
    assert (entry.grid_company, entry.source_id, entry.version) == (TENANT_A, "a", 2)
    assert subject.apply(A_METER, grid_company=TENANT_B, source=None, version=3) is Applied.UPDATED
    entry = subject.get(A_METER)
    assert entry is not None
    assert (entry.grid_company, entry.source_kind, entry.version) == (TENANT_B, None, 3)
    assert subject.stale == 2


def test_a_full_view_refuses_new_meterpoints_but_keeps_updating_its_own() -> None:
    subject = ScopeView(capacity=2)
    for number in range(2):
        meterpoint = with_check_digit(f"5713131804000010{number}")
        assert subject.apply(meterpoint, grid_company=TENANT_A, source=None, version=1) is Applied.ADDED
    assert subject.full
    assert subject.apply(A_METER, grid_company=TENANT_A, source=None, version=1) is Applied.REFUSED
    assert subject.refused == 1
    assert len(subject) == 2
    assert subject.get(A_METER) is None
    first = with_check_digit("57131318040000100")
    assert subject.apply(first, grid_company=TENANT_B, source=("device", first), version=2) is Applied.UPDATED


def test_the_check_rejects_another_tenants_and_another_sources_meterpoints_and_holds_unknown_ones() -> None:
    outcomes = view().check(accepted(A_METER, B_METER, UNKNOWN, A_METER), HES)
    assert type(outcomes[0]) is Accepted
    assert type(outcomes[3]) is Accepted
    rejected, held = outcomes[1], outcomes[2]
    assert isinstance(rejected, Rejected)
    assert rejected.reason is RejectReason.NOT_IN_SCOPE
    # The detail names nothing of the owner: not its grid company, not its source.
    assert TENANT_B not in rejected.detail
    assert "hes-north" not in rejected.detail
    assert isinstance(held, Held)
    assert held.reason is RejectReason.UNKNOWN_METERPOINT
    assert held.event.meterpoint_id == UNKNOWN
    other_source = view().check(accepted(A_METER), Deliverer(SourceKind.HEAD_END, "mdm-south", TENANT_A))
    assert isinstance(other_source[0], Rejected)
    assert other_source[0].reason is RejectReason.NOT_IN_SCOPE
    # The same client name as an FTP login is another source.
    as_ftp = view().check(accepted(A_METER), Deliverer(SourceKind.FTP_PARTNER, "hes-north"))
    assert isinstance(as_ftp[0], Rejected)


def test_a_deliverer_without_a_tenant_is_checked_by_its_source_and_a_meterpoint_without_source_by_nobody() -> None:
    subject = view()
    device = with_check_digit("57131318040000005")
    subject.apply(device, grid_company=EIC_TENANT, source=("device", device), version=1)
    subject.apply(UNKNOWN, grid_company=TENANT_A, source=None, version=1)
    outcomes = subject.check(accepted(device), Deliverer(SourceKind.DEVICE, device))
    assert type(outcomes[0]) is Accepted
    nobody = subject.check(accepted(UNKNOWN), HES)
    assert isinstance(nobody[0], Rejected)
    assert nobody[0].reason is RejectReason.NOT_IN_SCOPE
    assert subject.in_scope(A_METER, HES) is True
    assert subject.in_scope(B_METER, HES) is False
    assert subject.in_scope(with_check_digit("57131318040000009"), HES) is None


def test_bytes_per_meterpoint_stay_small() -> None:
    """The figure in scope.py and the settings: about 110 bytes per meterpoint (2,000,000 in ~220 MB)."""
    count = 200_000
    ids = [with_check_digit(f"57131319{number:09d}") for number in range(count)]
    tracemalloc.start()
    try:
        subject = ScopeView(capacity=count)
        for number, meterpoint in enumerate(ids):
            subject.apply(
                meterpoint, grid_company=TENANT_A, source=("head_end", f"hes-{number % 50}"), version=1 + number % 500
            )
        used, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(subject) == count
    assert used / count < 140, f"{used / count:.0f} bytes per meterpoint"


def registered(**changes: object) -> bytes:
    data = MeterpointRegistered(
        meterpoint_id=A_METER,
        grid_company=TENANT_A,
        grid_area="804",
        type=MeterpointType.CONSUMPTION,
        resolution=Resolution.PT15M,
        settlement_method=SettlementMethod.FLEX,
        connection=Connection(state=ConnectionState.CONNECTED, since=datetime(2025, 1, 1).date()),
        data_source=DataSource(kind=SourceKind.HEAD_END, id="hes-north"),
        version=1,
    )
    value = to_record(make_event(data, source="/gridhub/customers")).value
    if not changes:
        return value
    envelope = orjson.loads(value)
    envelope["data"].update(changes)
    return orjson.dumps(envelope)


def test_parse_meterpoint_takes_the_registry_event_and_skips_anything_else() -> None:
    assert parse_meterpoint(registered()) == (A_METER, TENANT_A, ("head_end", "hes-north"), 1)
    assert parse_meterpoint(registered(data_source=None, version=4)) == (A_METER, TENANT_A, None, 4)
    for broken in (
        b"not json",
        b"[]",
        orjson.dumps({"type": "gridhub.reading.received", "data": {}}),
        registered(meterpoint_id="571313180400000024"),  # check digit
        registered(grid_company="5790000000013"),
        registered(version=0),
        registered(version=True),
        registered(version=2**31),  # beyond the events' 32-bit versions
        registered(data_source={"kind": "carrier_pigeon", "id": "x"}),
        registered(data_source={"kind": "head_end", "id": ""}),
    ):
        assert parse_meterpoint(broken) is None, broken


@pytest.mark.parametrize("capacity", [0, -1])
def test_capacity_must_be_positive(capacity: int) -> None:
    with pytest.raises(ValueError, match="capacity"):
        ScopeView(capacity)
