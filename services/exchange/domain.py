"""What the exchange sends, decided without I/O: which validated series can go to the datahub, how they are bundled
into documents, the documents' ids, and the typed answer of the datahub's asynchronous acknowledgements.

The wire format (Energinet DataHub 3's CIM JSON) is not here: adapters/datahub.py maps these decisions to it, so an
Elhub (ebIX) adapter can be added beside it without touching the rules.

Decisions (each tested in tests/unit/exchange):
- **A negative quantity is never sent.** The datahub takes quantities >= 0. On consumption and production points
  the validation stage already replaces a negative reading by an estimate (rule ``sign``), so a negative value in
  a validated series is an exchange point's flow against its registered direction; the direction is master data
  (``in_Domain`` / ``out_Domain``), so the series is held for an operator instead of being flipped silently.
- **A05 (incomplete) and A06 (calculated) are never sent.** DataHub 3 takes A02, A03 and A04 for metered data;
  re-coding a calculated value as estimated or measured would change what it claims, so the series is held.
- **Reactive registers are not sent** (the document's unit is KWH): held.
- **An exchange point (E20) needs its two grid areas**, which the series does not carry: without them it is held.
- **A day that does not start and end on a whole minute is held**: it is never rounded onto the wire.
- **The latest version wins within one plan**: an older version of the same meterpoint, register and day in the
  same batch is superseded (not sent), so one document never holds two versions of a day.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from enum import StrEnum

from libs.events.ids import digest_uuid
from libs.events.meter import Register
from libs.events.meterpoints import MeterpointType
from libs.events.parties import CodingScheme, coding_scheme
from libs.events.series import MeterSeriesValidated, QuantityQuality

MAX_DOCUMENT_BYTES = 50 * 1024 * 1024
"""The datahub refuses a request body above 50 MB."""

MAX_MRID_LENGTH = 36
"""A document's and a series' mRID are at most 36 characters."""

SENDABLE_QUALITIES = frozenset({QuantityQuality.NOT_AVAILABLE, QuantityQuality.ESTIMATED, QuantityQuality.AS_PROVIDED})
"""The qualities DataHub 3 takes for metered data (A02, A03, A04)."""

_REGISTER_OF = {
    MeterpointType.CONSUMPTION: frozenset({Register.ACTIVE_IMPORT}),
    MeterpointType.PRODUCTION: frozenset({Register.ACTIVE_EXPORT}),
    MeterpointType.EXCHANGE: frozenset({Register.ACTIVE_IMPORT, Register.ACTIVE_EXPORT}),
}


class HoldReason(StrEnum):
    """Why a validated series is not sent: each is operator work, never a silent drop."""

    NEGATIVE_QUANTITY = "negative_quantity"
    """A point's quantity is below zero (the datahub takes >= 0)."""
    QUALITY_NOT_SENDABLE = "quality_not_sendable"
    """A point is A05 (incomplete) or A06 (calculated)."""
    REGISTER_NOT_SENDABLE = "register_not_sendable"
    """A reactive register, or a register that does not fit the meterpoint type (import on production, ...)."""
    MISSING_EXCHANGE_DOMAINS = "missing_exchange_domains"
    """An exchange point whose two grid areas (in and out) are not known."""
    PERIOD_NOT_AT_MINUTE = "period_not_at_minute"
    """The day's start or end has seconds (the datahub's time intervals are at minute precision)."""
    TOO_LARGE = "too_large"
    """The series alone is larger than a document may be."""


class ReasonCode(StrEnum):
    """The datahub's business validation codes the exchange handles (RSM-009 ``Reason.code``)."""

    UNKNOWN_METERPOINT = "E10"
    """The metering point is not known to the datahub (master data)."""
    NOT_GRID_COMPANY = "D50"
    """The sender is not the metering point's grid company (master data)."""
    UNIT_MISMATCH = "E73"
    """The unit differs from the metering point's."""
    RESOLUTION_MISMATCH = "D23"
    """The resolution differs from the metering point's."""
    QUALITY_NOT_ALLOWED = "D12"
    """A quality code the datahub does not take for this data."""
    QUANTITY_BELOW_RANGE = "E86"
    """A quantity out of range (negative)."""
    QUANTITY_ABOVE_RANGE = "E89"
    """A quantity out of range (too large or too precise)."""
    POSITIONS_WRONG = "E87"
    """Positions are not 1..N, or N does not match the period and resolution."""
    PERIOD_NOT_ALIGNED = "D66"
    """The period's start or end is not aligned (to the resolution, or end before start)."""
    TOO_OLD = "E17"
    """The data is older than 3 years."""

    @property
    def master_data(self) -> bool:
        """True when the fix is in master data (ours or the datahub's), not in the values sent."""
        return self in {ReasonCode.UNKNOWN_METERPOINT, ReasonCode.NOT_GRID_COMPANY}


@dataclass(frozen=True)
class ExchangeDomains:
    """The two grid areas of an exchange meterpoint: energy flows from ``out_area`` into ``in_area``."""

    in_area: str
    out_area: str


@dataclass(frozen=True)
class Party:
    """A market participant by its id (GLN-13 or EIC-16, check character included)."""

    mrid: str

    def __post_init__(self) -> None:
        coding_scheme(self.mrid)  # ValueError for anything that is neither

    @property
    def scheme(self) -> CodingScheme:
        """A10 for a GLN, A01 for an EIC."""
        return coding_scheme(self.mrid)


@dataclass(frozen=True)
class DocumentLimits:
    """How much one document may carry: the datahub's body limit, and a count that keeps one rejection small."""

    max_series: int = 1000
    max_bytes: int = MAX_DOCUMENT_BYTES

    def __post_init__(self) -> None:
        if not 1 <= self.max_series <= 100_000:
            raise ValueError("a document carries 1 to 100000 series")
        if not 1 <= self.max_bytes <= MAX_DOCUMENT_BYTES:
            raise ValueError(f"a document is at most {MAX_DOCUMENT_BYTES} bytes")


@dataclass(frozen=True)
class Held:
    """A series that is not sent, and why."""

    series_id: str
    meterpoint_id: str
    day: date
    reason: HoldReason


@dataclass(frozen=True)
class Bundle:
    """One document to send: its deterministic mRID, its parties, and the series in the order they came."""

    document_mrid: str
    sender: Party
    receiver: Party
    series: tuple[MeterSeriesValidated, ...]


@dataclass(frozen=True)
class Plan:
    """The documents of a batch of series, the series held back, and the older versions left out."""

    bundles: tuple[Bundle, ...]
    held: tuple[Held, ...]
    superseded: tuple[str, ...]


def document_mrid(sender: Party, series_ids: Iterable[str]) -> str:
    """The document's mRID: a UUID (36 characters) of the sender and the set of series ids it bundles.

    The same series from the same sender give the same mRID (a re-send is recognised as the same document); a new
    version of a day has a new series id and so makes a new document.
    """
    ids = sorted(set(series_ids))
    if not ids:
        raise ValueError("a document bundles at least one series")
    return digest_uuid(f"rsm012|{sender.mrid}|" + "|".join(ids))


def hold_reason(series: MeterSeriesValidated, domains: ExchangeDomains | None) -> HoldReason | None:
    """Why ``series`` cannot be sent as it is, or None when it can."""
    if series.register not in _REGISTER_OF[series.meterpoint_type]:
        return HoldReason.REGISTER_NOT_SENDABLE
    if any(point.quality not in SENDABLE_QUALITIES for point in series.points):
        return HoldReason.QUALITY_NOT_SENDABLE
    if any(point.quantity < 0 for point in series.points):
        return HoldReason.NEGATIVE_QUANTITY
    if series.meterpoint_type is MeterpointType.EXCHANGE and domains is None:
        return HoldReason.MISSING_EXCHANGE_DOMAINS
    if not (minute_precision(series.start) and minute_precision(series.end)):
        return HoldReason.PERIOD_NOT_AT_MINUTE
    return None


def _latest_versions(series: Iterable[MeterSeriesValidated]) -> tuple[list[MeterSeriesValidated], list[str]]:
    latest: dict[tuple[str, str, date], MeterSeriesValidated] = {}
    order: list[tuple[str, str, date]] = []
    superseded: list[str] = []
    seen: set[str] = set()
    for item in series:
        if item.series_id in seen:
            continue  # the same event twice (a redelivery) is one series
        seen.add(item.series_id)
        key = (item.meterpoint_id, item.register.value, item.day)
        current = latest.get(key)
        if current is None:
            latest[key] = item
            order.append(key)
        elif item.version > current.version:
            superseded.append(current.series_id)
            latest[key] = item
        else:
            superseded.append(item.series_id)
    return [latest[key] for key in order], superseded


def plan_documents(
    series: Iterable[MeterSeriesValidated],
    *,
    receiver: Party,
    limits: DocumentLimits,
    size_of: Callable[[MeterSeriesValidated], int],
    envelope_bytes: int,
    exchange_domains: Mapping[str, ExchangeDomains] | None = None,
) -> Plan:
    """Bundle ``series`` into documents per sender (the grid company), in the order they came.

    A document takes series while it stays within ``limits``: ``size_of(series)`` is a series' encoded size (its
    separator included) and ``envelope_bytes`` the document without series, both from the wire adapter.
    """
    domains = exchange_domains or {}
    candidates, superseded = _latest_versions(series)
    held: list[Held] = []
    per_sender: dict[str, list[list[MeterSeriesValidated]]] = {}
    open_size: dict[str, int] = {}
    for item in candidates:
        reason = hold_reason(item, domains.get(item.meterpoint_id))
        size = size_of(item) if reason is None else 0
        if reason is None and envelope_bytes + size > limits.max_bytes:
            reason = HoldReason.TOO_LARGE
        if reason is not None:
            held.append(Held(item.series_id, item.meterpoint_id, item.day, reason))
            continue
        groups = per_sender.setdefault(item.grid_company, [[]])
        current = groups[-1]
        used = open_size.get(item.grid_company, envelope_bytes)
        if current and (len(current) >= limits.max_series or used + size > limits.max_bytes):
            current = []
            groups.append(current)
            used = envelope_bytes
        current.append(item)
        open_size[item.grid_company] = used + size
    bundles = []
    for sender_id, groups in per_sender.items():
        sender = Party(sender_id)
        for group in groups:
            ids = [item.series_id for item in group]
            bundles.append(Bundle(document_mrid(sender, ids), sender, receiver, tuple(group)))
    return Plan(tuple(bundles), tuple(held), tuple(superseded))


def minute_precision(moment: datetime) -> bool:
    """True when ``moment`` has no seconds (the datahub's time intervals are at minute precision)."""
    return moment.second == 0 and moment.microsecond == 0


@dataclass(frozen=True)
class Reason:
    """One reason of a rejection: the datahub's code (``known`` when it is one the exchange handles) and text."""

    code: str
    text: str

    @property
    def known(self) -> ReasonCode | None:
        """The code as a ``ReasonCode``, or None for a code the exchange does not know (kept as it came)."""
        try:
            return ReasonCode(self.code)
        except ValueError:
            return None


@dataclass(frozen=True)
class SeriesRejection:
    """A rejected series of a received document: its mRID (our series id) and the datahub's reasons."""

    series_mrid: str
    reasons: tuple[Reason, ...]


@dataclass(frozen=True)
class Acknowledgement:
    """An RSM-009: the datahub's answer about one received document."""

    mrid: str
    received_document_mrid: str
    created: datetime
    sender: Party
    reasons: tuple[Reason, ...]
    """Reasons about the document as a whole."""
    rejected_series: tuple[SeriesRejection, ...]

    @property
    def accepted(self) -> bool:
        """True when the datahub names no reason at all: the whole document is accepted."""
        return not self.reasons and not self.rejected_series
