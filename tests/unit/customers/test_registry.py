"""The meterpoint registry's rules without I/O: validation naming fields, exchange rules, versions, ownership."""

from __future__ import annotations

from dataclasses import replace
from datetime import date

import pytest

from libs.events import MeterpointRegistered, make_event, with_check_digit
from libs.events.meter import Resolution
from libs.events.meterpoints import ConnectionState, MeterpointType, SettlementMethod, SourceKind
from libs.platform.tenancy import Principal, PrincipalKind, Role
from services.customers import handlers
from services.customers.domain import (
    Conflict,
    InvalidRequest,
    NotAllowed,
    owning_tenant,
    validate_grid_company,
)
from services.customers.registry import (
    DataSourceRef,
    Meterpoint,
    SpecInput,
    apply_meterpoint_update,
    check_registration,
    validate_list_filters,
    validate_spec,
)
from tests.tenants import EIC_TENANT, TENANT_A, TENANT_B

GSRN = with_check_digit("57131318040000002")
RAW = SpecInput(
    grid_area=" 804 ",
    time_zone=None,
    type="consumption",
    neighbour_grid_area=None,
    resolution="PT15M",
    settlement_method="flex",
    connection_state="connected",
    connection_since="2024-06-01",
    data_source_kind="head_end",
    data_source_id="hes-north",
)
A_ADMIN = Principal("a-admin", PrincipalKind.SOAP_CLIENT, Role.ADMIN, TENANT_A)
PLATFORM = Principal("ops", PrincipalKind.SOAP_CLIENT, Role.PLATFORM, None)


def fields_of(error: pytest.ExceptionInfo[InvalidRequest]) -> list[str]:
    return [violation.field for violation in error.value.violations]


def test_a_valid_spec_is_normalised_with_the_default_time_zone() -> None:
    spec = validate_spec(GSRN, RAW)
    assert (spec.grid_area, spec.time_zone, spec.type, spec.resolution) == (
        "804",
        "Europe/Copenhagen",
        MeterpointType.CONSUMPTION,
        Resolution.PT15M,
    )
    assert (spec.settlement_method, spec.connection_state, spec.connection_since) == (
        SettlementMethod.FLEX,
        ConnectionState.CONNECTED,
        date(2024, 6, 1),
    )
    assert spec.data_source == DataSourceRef(SourceKind.HEAD_END, "hes-north")


@pytest.mark.parametrize(
    ("changes", "fields"),
    [
        ({"type": "exchange", "settlement_method": None}, ["neighbourGridArea"]),
        ({"type": "exchange", "settlement_method": None, "neighbour_grid_area": "804"}, ["neighbourGridArea"]),
        ({"type": "exchange", "neighbour_grid_area": "791"}, ["settlementMethod"]),
        ({"type": "production", "neighbour_grid_area": "791"}, ["neighbourGridArea"]),
        ({"settlement_method": None}, ["settlementMethod"]),
        ({"settlement_method": "monthly"}, ["settlementMethod"]),
        ({"grid_area": "north"}, ["gridArea"]),
        ({"time_zone": "Europe/Atlantis"}, ["timeZone"]),
        ({"time_zone": "../../etc/passwd"}, ["timeZone"]),
        ({"type": "storage"}, ["type"]),
        ({"resolution": "P1D"}, ["resolution"]),
        ({"connection_state": "on"}, ["connection.state"]),
        ({"connection_since": "2025-02-30"}, ["connection.since"]),
        ({"data_source_kind": "email"}, ["dataSource.kind"]),
        ({"data_source_id": "with space"}, ["dataSource.id"]),
        ({"data_source_kind": "device"}, ["dataSource.id"]),
        (
            {"grid_area": "x", "resolution": "P1D", "settlement_method": None},
            ["gridArea", "resolution", "settlementMethod"],
        ),
    ],
)
def test_every_broken_rule_is_named_by_its_field(changes: dict[str, str | None], fields: list[str]) -> None:
    with pytest.raises(InvalidRequest) as error:
        validate_spec(GSRN, replace(RAW, **changes))
    assert fields_of(error) == fields


def test_an_exchange_point_has_a_neighbour_and_no_settlement_and_a_device_delivers_itself() -> None:
    exchange = validate_spec(GSRN, replace(RAW, type="exchange", neighbour_grid_area="791", settlement_method=None))
    assert (exchange.neighbour_grid_area, exchange.settlement_method) == ("791", None)
    device = validate_spec(GSRN, replace(RAW, data_source_kind="device", data_source_id=GSRN))
    assert device.data_source == DataSourceRef(SourceKind.DEVICE, GSRN)
    assert validate_spec(GSRN, replace(RAW, data_source_kind=None, data_source_id=None)).data_source is None


def test_every_accepted_spec_makes_a_valid_event() -> None:
    for raw in (RAW, replace(RAW, type="exchange", neighbour_grid_area="791", settlement_method=None)):
        meterpoint = Meterpoint(GSRN, TENANT_A, validate_spec(GSRN, raw), 1)
        event = handlers._meterpoint_event(MeterpointRegistered, meterpoint)
        assert make_event(event, source="/gridhub/customers").subject == GSRN


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("5790000000013", "GLN check digit is 3"),
        ("10X-GRIDHUB-A--8", "EIC check character is '8'"),
        ("10x-gridhub-a--9", "only 0-9, A-Z and '-'"),
        ("579000000001", "GLN-13 or EIC-16"),
    ],
)
def test_grid_companies_are_checked_to_their_last_character(value: str, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message) as error:
        validate_grid_company(value)
    assert fields_of(error) == ["gridCompany"]


def test_valid_grid_companies_pass() -> None:
    assert [validate_grid_company(f" {v} ") for v in (TENANT_A, EIC_TENANT)] == [TENANT_A, EIC_TENANT]


def test_a_client_owns_what_it_registers_and_only_the_platform_names_another_owner() -> None:
    assert owning_tenant(A_ADMIN, None) == TENANT_A
    assert owning_tenant(A_ADMIN, TENANT_A) == TENANT_A
    with pytest.raises(NotAllowed):
        owning_tenant(A_ADMIN, TENANT_B)
    assert owning_tenant(PLATFORM, TENANT_B) == TENANT_B
    with pytest.raises(InvalidRequest):
        owning_tenant(PLATFORM, None)


def test_a_repeated_registration_is_a_retry_and_a_different_one_a_conflict() -> None:
    stored = Meterpoint(GSRN, TENANT_A, validate_spec(GSRN, RAW), 3)
    assert check_registration(stored, replace(stored, version=1)) is stored
    with pytest.raises(Conflict, match="registered already"):
        check_registration(stored, replace(stored, grid_company=TENANT_B, version=1))
    with pytest.raises(Conflict):
        check_registration(stored, Meterpoint(GSRN, TENANT_A, validate_spec(GSRN, replace(RAW, resolution="PT1H")), 1))


def test_updates_need_the_current_version_and_raise_it_only_for_a_change() -> None:
    current = Meterpoint(GSRN, TENANT_A, validate_spec(GSRN, RAW), 2)
    with pytest.raises(Conflict) as stale:
        apply_meterpoint_update(current, 1, None, current.spec)
    assert stale.value.current_version == 2
    assert apply_meterpoint_update(current, 2, None, current.spec) is None
    assert apply_meterpoint_update(current, 2, TENANT_A, current.spec) is None
    moved = apply_meterpoint_update(current, 2, TENANT_B, current.spec)
    assert moved is not None
    assert (moved.grid_company, moved.version) == (TENANT_B, 3)
    hourly = apply_meterpoint_update(current, 2, None, replace(current.spec, resolution=Resolution.PT1H))
    assert hourly is not None
    assert (hourly.grid_company, hourly.version) == (TENANT_A, 3)


def test_list_filters_are_bounded() -> None:
    assert validate_list_filters(None, 100) is None
    assert validate_list_filters(" 804 ", 500) == "804"
    with pytest.raises(InvalidRequest) as error:
        validate_list_filters("north", 501)
    assert fields_of(error) == ["gridArea", "pageSize"]
