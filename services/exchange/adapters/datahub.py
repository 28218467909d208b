"""Energinet DataHub 3's wire format: RSM-012 documents out, RSM-009 acknowledgements in (CIM JSON).

The only module that knows the datahub's JSON: field names with dots (``marketEvaluationPoint.mRID``), coded values
wrapped as ``{"value": ...}``, times at minute precision in UTC. The schemas are contracts/datahub/*.schema.json
(tests/contract/test_datahub_schemas.py checks built documents against them). Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import orjson

from libs.events.meterpoints import MeterpointType
from libs.events.parties import is_valid_eic, is_valid_gln
from libs.events.series import MeterSeriesValidated
from services.exchange.domain import (
    MAX_MRID_LENGTH,
    Acknowledgement,
    Bundle,
    DocumentLimits,
    ExchangeDomains,
    Party,
    Plan,
    Reason,
    SeriesRejection,
    minute_precision,
    plan_documents,
)

NOTIFY_PATH = "/v1.0/cim/notifyvalidatedmeasuredata"
PEEK_PATH = "/v1.0/cim/measuredata"
DEQUEUE_PATH = "/v1.0/cim/dequeue/{message_id}"
OAUTH2_PATH = "/oauth2/token"

DOCUMENT_ROOT = "NotifyValidatedMeasureData_MarketDocument"
ACKNOWLEDGEMENT_ROOT = "Acknowledgement_MarketDocument"

EVALUATION_POINT_TYPE = {
    MeterpointType.CONSUMPTION: "E17",
    MeterpointType.PRODUCTION: "E18",
    MeterpointType.EXCHANGE: "E20",
}
GRID_AREA_SCHEME = "NDK"
"""The coding scheme of a Danish grid area (in_Domain / out_Domain)."""
METERPOINT_SCHEME = "A10"
"""A GSRN metering point id is coded as a GS1 id."""


class InvalidAcknowledgement(ValueError):
    """An inbound message that is no RSM-009 this adapter can read (kept raw in quarantine by the poller)."""


def _coded(value: str) -> dict[str, str]:
    return {"value": value}


def _party(party: Party) -> dict[str, str]:
    return {"codingScheme": party.scheme.value, "value": party.mrid}


def _seconds(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _minute(moment: datetime) -> str:
    if not minute_precision(moment):
        raise ValueError(f"{moment.isoformat()} is not at minute precision")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%MZ")


def series_json(
    series: MeterSeriesValidated, registered: datetime, domains: ExchangeDomains | None = None
) -> dict[str, Any]:
    """One ``Series`` entry: its mRID is the series id (36 characters), quantities rounded to 3 decimals."""
    entry: dict[str, Any] = {
        "mRID": series.series_id,
        "marketEvaluationPoint.mRID": {"codingScheme": METERPOINT_SCHEME, "value": series.meterpoint_id},
        "marketEvaluationPoint.type": _coded(EVALUATION_POINT_TYPE[series.meterpoint_type]),
        "registration_DateAndOrTime.dateTime": _seconds(registered),
    }
    if domains is not None and series.meterpoint_type is MeterpointType.EXCHANGE:
        entry["in_Domain.mRID"] = {"codingScheme": GRID_AREA_SCHEME, "value": domains.in_area}
        entry["out_Domain.mRID"] = {"codingScheme": GRID_AREA_SCHEME, "value": domains.out_area}
    entry["quantity_Measure_Unit.name"] = _coded("KWH")
    entry["Period"] = {
        "resolution": series.resolution.value,
        "timeInterval": {"start": _coded(_minute(series.start)), "end": _coded(_minute(series.end))},
        "Point": [
            {
                "position": {"value": point.position},
                "quantity": round(point.quantity, 3) + 0.0,  # + 0.0: never "-0.0" on the wire
                "quality": _coded(point.quality.value),
            }
            for point in series.points
        ],
    }
    return entry


def _header(mrid: str, sender: Party, receiver: Party, created: datetime) -> dict[str, Any]:
    return {
        "mRID": mrid,
        "type": _coded("E66"),
        "process.processType": _coded("E23"),
        "businessSector.type": _coded("23"),
        "sender_MarketParticipant.mRID": _party(sender),
        "sender_MarketParticipant.marketRole.type": _coded("MDR"),
        "receiver_MarketParticipant.mRID": _party(receiver),
        "receiver_MarketParticipant.marketRole.type": _coded("DGL"),
        "createdDateTime": _seconds(created),
    }


def document_json(
    bundle: Bundle, created: datetime, exchange_domains: Mapping[str, ExchangeDomains] | None = None
) -> dict[str, Any]:
    """The RSM-012 document of ``bundle``, created (and its values registered) at ``created``."""
    domains = exchange_domains or {}
    header = _header(bundle.document_mrid, bundle.sender, bundle.receiver, created)
    header["Series"] = [series_json(item, created, domains.get(item.meterpoint_id)) for item in bundle.series]
    return {DOCUMENT_ROOT: header}


def encode_document(
    bundle: Bundle, created: datetime, exchange_domains: Mapping[str, ExchangeDomains] | None = None
) -> bytes:
    """The request body of ``bundle``."""
    return orjson.dumps(document_json(bundle, created, exchange_domains))


_SIZE_PROBE = datetime(2000, 1, 1, tzinfo=UTC)  # every timestamp has a fixed width, so any moment sizes alike


def plan(
    series: Iterable[MeterSeriesValidated],
    *,
    receiver: Party,
    limits: DocumentLimits,
    exchange_domains: Mapping[str, ExchangeDomains] | None = None,
) -> Plan:
    """The documents of ``series`` for the datahub, sized by this wire format."""
    domains = exchange_domains or {}
    # The envelope with an empty Series list; each series adds its JSON and a comma.
    envelope = len(
        orjson.dumps({DOCUMENT_ROOT: {**_header("0" * MAX_MRID_LENGTH, receiver, receiver, _SIZE_PROBE), "Series": []}})
    )
    sender_slack = 16 - 13  # an EIC sender is 3 characters longer than a GLN receiver

    def size_of(item: MeterSeriesValidated) -> int:
        return len(orjson.dumps(series_json(item, _SIZE_PROBE, domains.get(item.meterpoint_id)))) + 1

    return plan_documents(
        series,
        receiver=receiver,
        limits=limits,
        size_of=size_of,
        envelope_bytes=envelope + sender_slack,
        exchange_domains=domains,
    )


def _require(mapping: Any, key: str, kind: type) -> Any:
    if not isinstance(mapping, dict) or key not in mapping or not isinstance(mapping[key], kind):
        raise InvalidAcknowledgement(f"{key}: missing or not a {kind.__name__}")
    return mapping[key]


def _mrid(mapping: Any, key: str) -> str:
    value: str = _require(mapping, key, str)
    if not 1 <= len(value) <= MAX_MRID_LENGTH:
        raise InvalidAcknowledgement(f"{key}: not 1 to {MAX_MRID_LENGTH} characters")
    return value


def _reasons(entries: Any, where: str) -> tuple[Reason, ...]:
    if not isinstance(entries, list) or len(entries) > 20:
        raise InvalidAcknowledgement(f"{where}.Reason: not a list of at most 20")
    reasons = []
    for entry in entries:
        code = _require(_require(entry, "code", dict), "value", str)
        if not (len(code) == 3 and code.isascii() and code.isalnum()):
            raise InvalidAcknowledgement(f"{where}.Reason: {code[:10]!r} is no reason code")
        text = entry.get("text", "")
        if not isinstance(text, str):
            raise InvalidAcknowledgement(f"{where}.Reason.text: not a string")
        reasons.append(Reason(code=code, text=text[:512]))
    return tuple(reasons)


def _sender(document: Any) -> Party:
    party = _require(document, "sender_MarketParticipant.mRID", dict)
    value = _require(party, "value", str)
    if not (is_valid_gln(value) or is_valid_eic(value)):
        raise InvalidAcknowledgement("sender_MarketParticipant.mRID: no GLN-13 or EIC-16")
    return Party(value)


def parse_acknowledgement(body: bytes) -> Acknowledgement:
    """The typed RSM-009 in ``body``; ``InvalidAcknowledgement`` for anything else (never another error)."""
    try:
        message = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise InvalidAcknowledgement(f"not JSON: {error}") from None
    document = _require(message, ACKNOWLEDGEMENT_ROOT, dict)
    try:
        created = datetime.strptime(_require(document, "createdDateTime", str), "%Y-%m-%dT%H:%M:%SZ")
    except ValueError:
        raise InvalidAcknowledgement("createdDateTime: not YYYY-MM-DDTHH:MM:SSZ") from None
    rejected = []
    series_entries = document.get("Series", [])
    if not isinstance(series_entries, list):
        raise InvalidAcknowledgement("Series: not a list")
    for entry in series_entries:
        reasons = _reasons(_require(entry, "Reason", list), "Series")
        if not reasons:
            raise InvalidAcknowledgement("Series: a rejected series names at least one reason")
        rejected.append(SeriesRejection(series_mrid=_mrid(entry, "mRID"), reasons=reasons))
    return Acknowledgement(
        mrid=_mrid(document, "mRID"),
        received_document_mrid=_mrid(document, "received_MarketDocument.mRID"),
        created=created.replace(tzinfo=UTC),
        sender=_sender(document),
        reasons=_reasons(document.get("Reason", []), "document"),
        rejected_series=tuple(rejected),
    )
