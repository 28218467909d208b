"""What the service does with a batch of readings or alarms, whichever door it came through.

Plain functions, message first, dependencies by name. Validation and record building (`prepare_batch`,
`prepare_message`) are synchronous and pure; publishing is the caller's `Publisher`, which returns only after
Kafka acknowledged every record. Accepted items become events on ``meter.readings.v1`` / ``meter.events.v1``;
refused ones are recorded on the topic's ``.dlq`` with their reason, in the same publish.

Every door passes `prepare_batch`, and with it the scope check (``scope.py``) of the delivering source (a
`Deliverer`): an item for a meterpoint assigned to someone else is rejected ``not_in_scope``; one for an
unregistered meterpoint is held (``unknown_meterpoint``: its validated event goes to the DLQ, to be redriven).

- REST: `submit_batch` (parse the body, validate, publish, report per item).
- MQTT: `prepare_message` per message; the ingress publishes many messages' records at once, then acks them.
- FTP: `prepare_lines` per bounded chunk of a file's lines (CSV, ``csvformat.py``); the file drop publishes
  them, then writes the receipt from `Prepared.outcomes` (``filedrop.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from pydantic_core import to_json

from libs.events import topics
from libs.events.gsrn import is_valid_gsrn
from libs.events.meterpoints import SourceKind
from libs.events.records import KafkaRecord
from services.collection import csvformat
from services.collection.adapters.kafka import (
    Publisher,
    alarm_record,
    dead_letter_record,
    held_record,
    reading_record,
)
from services.collection.domain import (
    Accepted,
    Duplicate,
    Held,
    ItemOutcome,
    MalformedBatch,
    Rejected,
    RejectReason,
    ValidationRules,
    check_alarms,
    check_readings,
    foreign_meterpoint,
    parse_alarms,
    parse_readings,
    raw_items,
)
from services.collection.metrics import CollectionMetrics
from services.collection.scope import Deliverer, ScopeView


@dataclass(frozen=True, slots=True)
class Kind:
    """What differs between readings and alarms: parser, validator, record and topic."""

    name: Literal["reading", "alarm"]
    topic: str
    parse: Callable[..., list[Any]]
    check: Callable[..., list[ItemOutcome]]
    encode: Callable[..., KafkaRecord]

    @property
    def dlq(self) -> str:
        """The dead-letter topic of this kind."""
        return topics.dlq(self.topic)


READINGS = Kind("reading", topics.READINGS, parse_readings, check_readings, reading_record)
ALARMS = Kind("alarm", topics.METER_EVENTS, parse_alarms, check_alarms, alarm_record)


@dataclass(frozen=True, slots=True)
class Pipeline:
    """The settings every handler needs (built once in ``app.py``)."""

    rules: ValidationRules
    event_source: str
    max_batch_items: int
    dead_letter_rejections: bool = True
    scope: ScopeView | None = None
    """The scope view the check runs against; None when ``scope.enforce`` is off (a migration period only)."""


class ScopeNotReady(Exception):
    """The scope view has not caught up with meterpoints.v1 yet: nothing can be checked (retry shortly)."""


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a batch came from, for dead letters and metrics.

    ``name`` becomes ``dlq.source.topic`` (``rest:/v1/readings``, ``mqtt:<topic>``, ``ftp:<user>/<file>``);
    ``record_id`` prefixes ``dlq.record_id`` (a correlation id, an MQTT message, a file).
    """

    channel: Literal["rest", "mqtt", "ftp"]
    name: str
    record_id: str
    client: str

    def headers(self) -> list[tuple[str, bytes]]:
        """Headers a dead letter carries about its origin."""
        return [("gridhub.ingress", self.channel.encode()), ("gridhub.client", self.client.encode())]


@dataclass(frozen=True, slots=True)
class Prepared:
    """A validated batch: one outcome per item, and the records (events and dead letters) to publish."""

    outcomes: list[ItemOutcome]
    records: list[KafkaRecord]

    @property
    def accepted(self) -> int:
        """Items published as events."""
        return sum(1 for outcome in self.outcomes if type(outcome) is Accepted)

    @property
    def held(self) -> int:
        """Items held in the DLQ (unknown meterpoint)."""
        return sum(1 for outcome in self.outcomes if type(outcome) is Held)


def _key_of(element: object) -> bytes | None:
    meterpoint_id = element.get("meterpoint_id") if isinstance(element, dict) else None
    return meterpoint_id.encode() if isinstance(meterpoint_id, str) and len(meterpoint_id) <= 64 else None


def prepare_batch(
    items: Sequence[Any],
    *,
    kind: Kind,
    origin: Origin,
    deliverer: Deliverer,
    received_at: datetime,
    pipeline: Pipeline,
    original: Callable[[int], tuple[bytes | None, bytes]] | None = None,
) -> Prepared:
    """Validate ``items`` (typed items or `Rejection`s) into outcomes and records, and check ``deliverer``'s scope.

    ``original(index)`` gives a refused item's key and bytes as the sender wrote them; each refused item then
    becomes a dead letter (if ``pipeline.dead_letter_rejections``). A held item always becomes one (its validated
    event, so it can be redriven). ``received_at`` (UTC) is the events' time.
    """
    outcomes = kind.check(items, now=received_at, rules=pipeline.rules)
    scope = pipeline.scope
    if scope is not None:
        outcomes = scope.check(outcomes, deliverer)
    encode, source = kind.encode, pipeline.event_source
    records = [encode(o.event, time=received_at, event_source=source) for o in outcomes if type(o) is Accepted]
    if scope is not None and len(records) < len(outcomes):
        for outcome in outcomes:
            if type(outcome) is Held:
                records.append(
                    held_record(
                        encode(outcome.event, time=received_at, event_source=source),
                        topic=kind.dlq,
                        origin=origin.name,
                        record_id=f"{origin.record_id}#{outcome.index}",
                        reason=outcome.reason,
                        detail=f"item {outcome.index}: {outcome.detail}",
                        failed_at=received_at,
                        deliverer=deliverer,
                        headers=origin.headers(),
                    )
                )
    if original is not None and pipeline.dead_letter_rejections:
        for outcome in outcomes:
            if type(outcome) is Rejected:
                key, value = original(outcome.index)
                records.append(
                    dead_letter_record(
                        topic=kind.dlq,
                        origin=origin.name,
                        record_id=f"{origin.record_id}#{outcome.index}",
                        key=key,
                        value=value,
                        reason=outcome.reason,
                        detail=f"item {outcome.index}: {outcome.detail}",
                        failed_at=received_at,
                        headers=origin.headers(),
                    )
                )
    return Prepared(outcomes, records)


# --- REST ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SubmitBatch:
    """A client system's batch: the raw JSON body of ``POST /v1/readings`` or ``/v1/meter-events``."""

    kind: Kind
    body: bytes
    origin: Origin
    deliverer: Deliverer
    received_at: datetime


async def submit_batch(
    command: SubmitBatch, *, publisher: Publisher, pipeline: Pipeline, metrics: CollectionMetrics
) -> list[ItemOutcome]:
    """Validate, publish accepted items and dead letters, return one outcome per item once Kafka acked them.

    Raises `MalformedBatch` for an unusable body, `ScopeNotReady` while the scope view catches up, and what the
    publisher raises (``Refused`` while the breaker is open, `PublishFailed`) when Kafka did not take everything.
    """
    if pipeline.scope is not None and not pipeline.scope.ready:
        raise ScopeNotReady("the meterpoint view is catching up")
    kind = command.kind
    items = kind.parse(command.body, max_items=pipeline.max_batch_items)
    elements: list[Any] | None = None

    def original(index: int) -> tuple[bytes | None, bytes]:
        nonlocal elements
        if elements is None:  # parsed again only when something was refused
            elements = raw_items(command.body)
        return _key_of(elements[index]), to_json(elements[index])

    prepared = prepare_batch(
        items,
        kind=kind,
        origin=command.origin,
        deliverer=command.deliverer,
        received_at=command.received_at,
        pipeline=pipeline,
        original=original,
    )
    with metrics.publish_seconds.labels(command.origin.channel).time():
        await publisher.publish(prepared.records)
    metrics.count(command.origin.channel, kind.name, prepared.outcomes)
    return prepared.outcomes


# --- MQTT ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MqttMessage:
    """One message as the broker delivered it."""

    topic: str
    payload: bytes
    received_at: datetime
    record_id: str


@dataclass(frozen=True, slots=True)
class PreparedMessage:
    """What to publish for one MQTT message before acknowledging it.

    ``device`` (the meterpoint of the topic) keys the device quota and ``cost`` is what the message charges it
    (its number of items). ``dead_lettered`` is True when the message (or part of it) goes to the DLQ.
    """

    device: str
    kind: Kind
    cost: int
    records: list[KafkaRecord]
    outcomes: list[ItemOutcome]
    dead_lettered: bool


def _parse_topic(topic: str, prefix: str) -> tuple[str, Kind] | None:
    head = prefix + "/"
    if not topic.startswith(head):
        return None
    parts = topic[len(head) :].split("/")
    if len(parts) != 2:
        return None
    kind = {"readings": READINGS, "events": ALARMS}.get(parts[1])
    return None if kind is None else (parts[0], kind)


def prepare_message(
    message: MqttMessage,
    *,
    pipeline: Pipeline,
    topic_prefix: str,
    max_items: int,
    max_payload_bytes: int,
) -> PreparedMessage:
    """Validate one MQTT message (a JSON object, or an array of at most ``max_items``) into records.

    The topic names the device: ``<prefix>/<meterpoint>/readings`` or ``.../events``. A message that names another
    meterpoint, is too large or is not a usable batch is refused as a whole; otherwise its valid items are
    published and its refused items recorded. Either way the original payload goes to the DLQ when anything was
    refused, so the message can be acknowledged and is not redelivered forever.
    """
    origin = Origin("mqtt", f"mqtt:{message.topic}", message.record_id, "")
    parsed = _parse_topic(message.topic, topic_prefix)
    device, kind = parsed if parsed is not None else ("", READINGS)
    origin = Origin("mqtt", origin.name, origin.record_id, device)

    def refuse(reason: str, detail: str, outcomes: list[ItemOutcome] | None = None) -> PreparedMessage:
        payload = message.payload
        letter = dead_letter_record(
            topic=kind.dlq,
            origin=origin.name,
            record_id=origin.record_id,
            key=device.encode() or None,
            value=payload[:max_payload_bytes],
            reason=reason,
            detail=detail,
            failed_at=message.received_at,
            headers=origin.headers(),
        )
        if len(payload) > max_payload_bytes:
            letter.headers.append(("dlq.truncated_from", str(len(payload)).encode()))
        return PreparedMessage(device, kind, 1, [letter], outcomes or [], True)

    if parsed is None:
        return refuse("unknown_topic", f"topic must be {topic_prefix}/<meterpoint>/readings or .../events")
    if not is_valid_gsrn(device):
        return refuse(RejectReason.INVALID_METERPOINT, "the topic's meterpoint is no valid GSRN-18")
    if len(message.payload) > max_payload_bytes:
        return refuse("too_large", f"the payload is larger than {max_payload_bytes} bytes")
    try:
        items = kind.parse(message.payload, max_items=max_items, allow_single=True)
    except MalformedBatch as malformed:
        return refuse(malformed.reason, malformed.detail)
    foreign = foreign_meterpoint(items, device)
    if foreign is not None:
        return refuse(
            RejectReason.METERPOINT_MISMATCH,
            f"item {foreign}: meterpoint_id differs from the topic's; a device may only send for its own meterpoint",
        )
    # The device account is its meterpoint (the broker's ACL holds it to its own topic); it has no tenant of its own.
    deliverer = Deliverer(SourceKind.DEVICE, device)
    prepared = prepare_batch(
        items, kind=kind, origin=origin, deliverer=deliverer, received_at=message.received_at, pipeline=pipeline
    )
    rejected = [outcome for outcome in prepared.outcomes if type(outcome) is Rejected]
    records = prepared.records
    if rejected:
        detail = "; ".join(f"item {r.index}: {r.reason}: {r.detail}" for r in rejected[:5])
        letter = refuse(rejected[0].reason, detail).records[0]
        letter.headers.append(("dlq.rejected_items", ",".join(str(r.index) for r in rejected).encode()))
        records = [*records, letter]
    dead_lettered = bool(rejected) or prepared.held > 0
    return PreparedMessage(device, kind, max(1, len(items)), records, prepared.outcomes, dead_lettered)


# --- FTP -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FileLine:
    """One line of a dropped file: its 1-based number, its bytes without the line end (cut at the limit when
    ``too_long``)."""

    number: int
    content: bytes
    too_long: bool = False


def prepare_lines(
    lines: Sequence[FileLine],
    *,
    columns: csvformat.Columns,
    origin: Origin,
    deliverer: Deliverer,
    received_at: datetime,
    pipeline: Pipeline,
    max_line_bytes: int,
) -> Prepared:
    """Validate a chunk of CSV lines into outcomes (one per line, in order) and records.

    Accepted lines become reading events; every refused line becomes a dead letter (its bytes as written, keyed
    by its meterpoint cell when it has one) whose ``dlq.detail`` names the line number. Duplicates are found
    within the chunk.
    """
    items: list[Any] = [
        csvformat.too_long(max_line_bytes) if line.too_long else csvformat.parse_line(line.content, columns)
        for line in lines
    ]
    prepared = prepare_batch(
        items, kind=READINGS, origin=origin, deliverer=deliverer, received_at=received_at, pipeline=pipeline
    )
    records = prepared.records
    for outcome in prepared.outcomes:
        if type(outcome) is Rejected:
            line = lines[outcome.index]
            records.append(
                dead_letter_record(
                    topic=READINGS.dlq,
                    origin=origin.name,
                    record_id=f"{origin.record_id}#{line.number}",
                    key=csvformat.meterpoint_of(line.content, columns),
                    value=line.content,
                    reason=outcome.reason,
                    detail=f"line {line.number}: {outcome.detail}",
                    failed_at=received_at,
                    headers=[*origin.headers(), ("gridhub.line", str(line.number).encode())],
                )
            )
    return prepared


def count_outcomes(outcomes: Sequence[ItemOutcome]) -> tuple[int, int, int, int]:
    """(accepted, duplicates, rejected, held) of a batch."""
    accepted = duplicates = rejected = held = 0
    for outcome in outcomes:
        if type(outcome) is Accepted:
            accepted += 1
        elif type(outcome) is Duplicate:
            duplicates += 1
        elif type(outcome) is Held:
            held += 1
        else:
            rejected += 1
    return accepted, duplicates, rejected, held


__all__ = [
    "ALARMS",
    "READINGS",
    "FileLine",
    "Kind",
    "MqttMessage",
    "Origin",
    "Pipeline",
    "Prepared",
    "PreparedMessage",
    "ScopeNotReady",
    "SubmitBatch",
    "count_outcomes",
    "prepare_batch",
    "prepare_lines",
    "prepare_message",
    "submit_batch",
]
