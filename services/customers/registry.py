"""Meterpoint master data: the rules of the registry, with no I/O.

A meterpoint (GSRN-18) belongs to one grid company (its tenant) and is in one grid area; it measures consumption,
production or the exchange with a neighbouring grid area; it is read every 15 minutes or every hour; and one data
source (a head-end system, an FTP partner or the meter itself) is assigned to deliver its readings. Every change
publishes the full record at a new version on ``meterpoints.v1`` (`libs.events.meterpoints`), from which
collection builds its scope view: the rules here mirror the event model, so an accepted record always makes a
valid event.

Input arrives as raw strings from the SOAP codec; `validate_spec` lists every violation at once, with the WSDL's
element paths as field names (``connection.since``, ``dataSource.id``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from enum import StrEnum
from typing import TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from libs.events.fields import OPAQUE_ID_PATTERN
from libs.events.meter import Resolution
from libs.events.meterpoints import (
    GRID_AREA_PATTERN,
    ConnectionState,
    MeterpointType,
    SettlementMethod,
    SourceKind,
)
from services.customers.domain import Conflict, InvalidRequest, Violation

E = TypeVar("E", bound=StrEnum)

DEFAULT_TIME_ZONE = "Europe/Copenhagen"
MAX_LIST_PAGE = 500
DEFAULT_LIST_PAGE = 100

_GRID_AREA = re.compile(GRID_AREA_PATTERN)
_TIME_ZONE = re.compile(r"^[A-Za-z_]+(/[A-Za-z0-9_+-]+){0,2}$")
_SOURCE_ID = re.compile(OPAQUE_ID_PATTERN)


@dataclass(frozen=True, slots=True)
class DataSourceRef:
    """The principal assigned to deliver a meterpoint's readings: its kind and its name (key client, login, GSRN)."""

    kind: SourceKind
    id: str


@dataclass(frozen=True, slots=True)
class MeterpointSpec:
    """Everything about a meterpoint a client sets, except its owner (the grid company) and its version."""

    grid_area: str
    time_zone: str
    type: MeterpointType
    neighbour_grid_area: str | None
    resolution: Resolution
    settlement_method: SettlementMethod | None
    connection_state: ConnectionState
    connection_since: date
    data_source: DataSourceRef | None


@dataclass(frozen=True, slots=True)
class Meterpoint:
    meterpoint_id: str
    grid_company: str
    spec: MeterpointSpec
    version: int


@dataclass(frozen=True, slots=True)
class SpecInput:
    """A meterpoint's fields as a client sent them (strings; optional parts None)."""

    grid_area: str
    time_zone: str | None
    type: str
    neighbour_grid_area: str | None
    resolution: str
    settlement_method: str | None
    connection_state: str
    connection_since: str
    data_source_kind: str | None
    data_source_id: str | None


# --- commands and results -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RegisterMeterpoint:
    meterpoint_id: str
    grid_company: str | None
    """None: the caller's own grid company (the platform must name one)."""
    spec: MeterpointSpec


@dataclass(frozen=True, slots=True)
class UpdateMeterpoint:
    meterpoint_id: str
    expected_version: int
    grid_company: str | None
    """None keeps the owner; moving a meterpoint to another grid company is the platform's."""
    spec: MeterpointSpec


@dataclass(frozen=True, slots=True)
class GetMeterpoint:
    meterpoint_id: str


@dataclass(frozen=True, slots=True)
class ListMeterpoints:
    """One page in meterpoint id order after ``after`` (keyset paging: as cheap on page 5,000 as on page 1)."""

    grid_company: str | None
    grid_area: str | None
    after: str | None
    page_size: int


@dataclass(frozen=True, slots=True)
class MeterpointPage:
    meterpoints: tuple[Meterpoint, ...]
    next_after: str | None
    """The last id of this page when more follow (pass it as ``afterMeterpointId``), else None."""


# --- validation ---------------------------------------------------------------------------------------------------


def _enum(kind: type[E], value: str, field: str, found: list[Violation]) -> E | None:
    try:
        return kind(value.strip())
    except ValueError:
        found.append(Violation(field, "must be one of " + ", ".join(member.value for member in kind)))
        return None


def _grid_area(value: str, field: str, found: list[Violation]) -> str:
    area = value.strip()
    if not _GRID_AREA.fullmatch(area):
        found.append(Violation(field, "must be 1-16 upper-case letters, digits or '-', starting with one, e.g. 804"))
    return area


def _time_zone(value: str | None, found: list[Violation]) -> str:
    if value is None or not value.strip():
        return DEFAULT_TIME_ZONE
    zone = value.strip()
    if not _TIME_ZONE.fullmatch(zone):
        found.append(Violation("timeZone", "must be an IANA time zone like Europe/Copenhagen"))
        return zone
    try:
        ZoneInfo(zone)  # the system's tz database: the same one the read side counts local days with
    except (ZoneInfoNotFoundError, ValueError):
        found.append(Violation("timeZone", "is not a time zone of the IANA database (e.g. Europe/Copenhagen)"))
    return zone


def validate_spec(meterpoint_id: str, raw: SpecInput) -> MeterpointSpec:
    """Validate and normalise a meterpoint's fields; `InvalidRequest` with every violation."""
    found: list[Violation] = []
    grid_area = _grid_area(raw.grid_area, "gridArea", found)
    time_zone = _time_zone(raw.time_zone, found)
    kind = _enum(MeterpointType, raw.type, "type", found)
    resolution = _enum(Resolution, raw.resolution, "resolution", found)
    state = _enum(ConnectionState, raw.connection_state, "connection.state", found)
    try:
        since = date.fromisoformat(raw.connection_since.strip())
    except ValueError:
        found.append(Violation("connection.since", "must be a real calendar date, YYYY-MM-DD"))
        since = date.min
    neighbour = raw.neighbour_grid_area.strip() if raw.neighbour_grid_area and raw.neighbour_grid_area.strip() else None
    settlement_text = raw.settlement_method.strip() if raw.settlement_method else ""
    settlement = _enum(SettlementMethod, settlement_text, "settlementMethod", found) if settlement_text else None
    if kind is MeterpointType.EXCHANGE:
        if neighbour is None:
            found.append(Violation("neighbourGridArea", "an exchange meterpoint names the grid area on the other side"))
        elif _grid_area(neighbour, "neighbourGridArea", found) == grid_area:
            found.append(Violation("neighbourGridArea", "must differ from gridArea (an exchange is between two areas)"))
        if settlement_text:
            found.append(Violation("settlementMethod", "an exchange meterpoint is not settled: leave it out"))
    elif kind is not None:
        if neighbour is not None:
            found.append(Violation("neighbourGridArea", "only an exchange meterpoint has a neighbouring grid area"))
        if not settlement_text:
            found.append(Violation("settlementMethod", f"a {kind.value} meterpoint needs one, e.g. flex"))
    data_source = _data_source(meterpoint_id, raw, found)
    if found:
        raise InvalidRequest(found)
    assert kind is not None
    assert resolution is not None
    assert state is not None
    return MeterpointSpec(grid_area, time_zone, kind, neighbour, resolution, settlement, state, since, data_source)


def _data_source(meterpoint_id: str, raw: SpecInput, found: list[Violation]) -> DataSourceRef | None:
    kind_text = (raw.data_source_kind or "").strip()
    source_id = (raw.data_source_id or "").strip()
    if not kind_text and not source_id:
        return None
    kind = _enum(SourceKind, kind_text, "dataSource.kind", found)
    if not _SOURCE_ID.fullmatch(source_id):
        found.append(Violation("dataSource.id", "must be 1-64 letters, digits, '.', '_' or '-' (the source's name)"))
    elif kind is SourceKind.DEVICE and source_id != meterpoint_id:
        # A meter's MQTT account is its own GSRN, so a device can only ever deliver its own meterpoint.
        found.append(Violation("dataSource.id", "a device delivers its own meterpoint: its id is that GSRN"))
    return None if kind is None else DataSourceRef(kind, source_id)


def validate_list_filters(grid_area: str | None, page_size: int) -> str | None:
    """ListMeterpoints' grid area filter (normalised; None for none) and page size; `InvalidRequest` otherwise."""
    found: list[Violation] = []
    area = _grid_area(grid_area, "gridArea", found) if grid_area is not None and grid_area.strip() else None
    if not 1 <= page_size <= MAX_LIST_PAGE:
        found.append(Violation("pageSize", f"must be between 1 and {MAX_LIST_PAGE}"))
    if found:
        raise InvalidRequest(found)
    return area


# --- rules on state -----------------------------------------------------------------------------------------------


def check_registration(existing: Meterpoint, candidate: Meterpoint) -> Meterpoint:
    """A second registration of one GSRN: the same record again is a client's retry (answered with the stored one),
    anything else a `Conflict`. The same answer whichever grid company holds it: a GSRN is unique in the world, so
    "already registered" says no more than the id itself, and nothing of the other record is shown."""
    if existing.grid_company == candidate.grid_company and existing.spec == candidate.spec:
        return existing
    raise Conflict(
        f"meterpoint {candidate.meterpoint_id} is registered already; change it with UpdateMeterpoint",
        reason="meterpoint_already_registered",
    )


def apply_meterpoint_update(
    current: Meterpoint, expected_version: int, grid_company: str | None, spec: MeterpointSpec
) -> Meterpoint | None:
    """The meterpoint after the update, or None when nothing changes; `Conflict` when the version is stale."""
    if current.version != expected_version:
        raise Conflict(
            f"meterpoint {current.meterpoint_id} is at version {current.version}, not {expected_version}; "
            "read it again and reapply the change",
            reason="version_conflict",
            current_version=current.version,
        )
    owner = current.grid_company if grid_company is None else grid_company
    if owner == current.grid_company and spec == current.spec:
        return None
    return Meterpoint(current.meterpoint_id, owner, spec, current.version + 1)
