"""Meterpoint master data on ``meterpoints.v1``, keyed by meterpoint id: who owns a meterpoint and who delivers it.

The customers service is the registry; every change publishes the full record at its new version (not a patch),
so a consumer keeps the latest per meterpoint and the topic is compacted (the newest record per key is kept for
good). Collection builds its scope view from it (which source may deliver which meterpoint, for which grid
company); the read side and work orders scope their queries by ``grid_company``.
"""

from __future__ import annotations

from datetime import date
from enum import StrEnum
from typing import ClassVar, Self

from pydantic import Field, model_validator

from libs.events import topics
from libs.events.base import EventData, EventPart
from libs.events.fields import MAX_VERSION, OpaqueId
from libs.events.gsrn import Gsrn
from libs.events.meter import Resolution
from libs.events.parties import MarketParticipantId

GRID_AREA_PATTERN = r"^[A-Z0-9][A-Z0-9-]{0,15}$"


class MeterpointType(StrEnum):
    """What the meterpoint measures: a customer's consumption, a plant's production, or a grid-area border."""

    CONSUMPTION = "consumption"
    PRODUCTION = "production"
    EXCHANGE = "exchange"


class SettlementMethod(StrEnum):
    """How the meterpoint is settled: hourly/quarterly values (``flex``, ``non_profiled``) or a load profile."""

    FLEX = "flex"
    NON_PROFILED = "non_profiled"
    PROFILED = "profiled"


class ConnectionState(StrEnum):
    """The meterpoint's physical state: ``new`` (created, not yet connected), then connected/disconnected."""

    NEW = "new"
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    CLOSED_DOWN = "closed_down"


class SourceKind(StrEnum):
    """The kind of principal that delivers a meterpoint's readings."""

    HEAD_END = "head_end"
    """A head-end system posting over REST with an API key (the id is the key's client name)."""
    FTP_PARTNER = "ftp_partner"
    """A metering partner uploading CSV files (the id is its FTP login)."""
    DEVICE = "device"
    """A meter publishing over MQTT itself (the id is its device account)."""


class DataSource(EventPart):
    """The one source assigned to deliver a meterpoint's readings; readings from anybody else are refused."""

    kind: SourceKind
    id: OpaqueId


class Connection(EventPart):
    """The connection state and the day it took effect (local calendar date of the grid area)."""

    state: ConnectionState
    since: date


class _MeterpointState(EventData):
    topic: ClassVar[str] = topics.METERPOINTS
    subject_field: ClassVar[str] = "meterpoint_id"

    meterpoint_id: Gsrn
    grid_company: MarketParticipantId = Field(description="The grid company that owns the meterpoint (the tenant).")
    grid_area: str = Field(pattern=GRID_AREA_PATTERN, description="The grid area the meterpoint is in, e.g. 804.")
    time_zone: str = Field(
        default="Europe/Copenhagen",
        pattern=r"^[A-Za-z_]+(/[A-Za-z0-9_+-]+){0,2}$",
        description="IANA time zone of the grid area: local days and hours are counted in it.",
    )
    type: MeterpointType
    neighbour_grid_area: str | None = Field(
        default=None,
        pattern=GRID_AREA_PATTERN,
        description="For an exchange point only: the grid area on the other side of the border.",
    )
    resolution: Resolution
    settlement_method: SettlementMethod | None = Field(
        default=None, description="Consumption and production points only; none for an exchange point."
    )
    connection: Connection
    data_source: DataSource | None = Field(
        default=None, description="Who delivers the readings; none assigned means nobody may deliver them yet."
    )
    version: int = Field(
        ge=1,
        le=MAX_VERSION,
        description="Version of the meterpoint record after this change; consumers skip versions they passed.",
    )

    @model_validator(mode="after")
    def _exchange_has_neighbour(self) -> Self:
        if self.type is MeterpointType.EXCHANGE:
            if self.neighbour_grid_area is None:
                raise ValueError("an exchange meterpoint names its neighbour_grid_area")
            if self.neighbour_grid_area == self.grid_area:
                raise ValueError("an exchange meterpoint's neighbour_grid_area differs from its grid_area")
            if self.settlement_method is not None:
                raise ValueError("an exchange meterpoint has no settlement_method")
        elif self.neighbour_grid_area is not None:
            raise ValueError("only an exchange meterpoint has a neighbour_grid_area")
        return self


class MeterpointRegistered(_MeterpointState):
    """A meterpoint entered the registry (version 1 of its master data)."""

    event_type: ClassVar[str] = "gridhub.meterpoint.registered"


class MeterpointUpdated(_MeterpointState):
    """A meterpoint's master data changed (owner, type, resolution, connection, source); the full record."""

    event_type: ClassVar[str] = "gridhub.meterpoint.updated"
