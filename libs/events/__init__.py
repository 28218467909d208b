"""GridHub's event contracts: CloudEvents envelope, topics, typed payloads, Kafka records, GSRN and ids.

Producing::

    event = make_event(MeterReadingReceived.create(...), source="/gridhub/collection")
    record = to_record(event)  # topic, key, value, headers

Consuming::

    event = from_record(msg.value, msg.headers, msg.key)  # raises InvalidEvent -> dead-letter it
    match event.data:
        case MeterReadingReceived(): ...

The JSON Schemas in contracts/events are generated from these models (``python -m libs.events.schemas``).
"""

from libs.events.base import EventData, EventPart
from libs.events.catalog import ANY_EVENT, EVENT_CLASSES, EVENT_TYPES, event_class, events_on
from libs.events.customers import (
    Address,
    Contact,
    CustomerKind,
    CustomerRegistered,
    CustomerUpdated,
    MeterpointLinked,
    MeterpointUnlinked,
)
from libs.events.envelope import CloudEvent, envelope_class, make_event
from libs.events.gsrn import Gsrn, gsrn_check_digit, is_valid_gsrn, with_check_digit
from libs.events.ids import alarm_id, new_event_id, reading_id
from libs.events.meter import (
    MeterAlarm,
    MeterAlarmRaised,
    MeterReadingReceived,
    Quality,
    Register,
    Resolution,
    Unit,
)
from libs.events.meterpoints import (
    Connection,
    ConnectionState,
    DataSource,
    MeterpointRegistered,
    MeterpointType,
    MeterpointUpdated,
    SettlementMethod,
    SourceKind,
)
from libs.events.parties import MarketParticipantId
from libs.events.records import (
    CONTENT_TYPE,
    HEADER_CE_TYPE,
    HEADER_CONTENT_TYPE,
    InvalidEvent,
    InvalidReason,
    KafkaRecord,
    decode,
    encode,
    from_record,
    to_record,
)
from libs.events.workorders import (
    TimeWindow,
    WorkOrderCancelled,
    WorkOrderCompleted,
    WorkOrderCreated,
    WorkOrderResult,
    WorkOrderScheduled,
    WorkOrderStarted,
    WorkOrderStatus,
    WorkOrderType,
)

__all__ = [
    "ANY_EVENT",
    "CONTENT_TYPE",
    "EVENT_CLASSES",
    "EVENT_TYPES",
    "HEADER_CE_TYPE",
    "HEADER_CONTENT_TYPE",
    "Address",
    "CloudEvent",
    "Connection",
    "ConnectionState",
    "Contact",
    "CustomerKind",
    "CustomerRegistered",
    "CustomerUpdated",
    "DataSource",
    "EventData",
    "EventPart",
    "Gsrn",
    "InvalidEvent",
    "InvalidReason",
    "KafkaRecord",
    "MarketParticipantId",
    "MeterAlarm",
    "MeterAlarmRaised",
    "MeterReadingReceived",
    "MeterpointLinked",
    "MeterpointRegistered",
    "MeterpointType",
    "MeterpointUnlinked",
    "MeterpointUpdated",
    "Quality",
    "Register",
    "Resolution",
    "SettlementMethod",
    "SourceKind",
    "TimeWindow",
    "Unit",
    "WorkOrderCancelled",
    "WorkOrderCompleted",
    "WorkOrderCreated",
    "WorkOrderResult",
    "WorkOrderScheduled",
    "WorkOrderStarted",
    "WorkOrderStatus",
    "WorkOrderType",
    "alarm_id",
    "decode",
    "encode",
    "envelope_class",
    "event_class",
    "events_on",
    "from_record",
    "gsrn_check_digit",
    "is_valid_gsrn",
    "make_event",
    "new_event_id",
    "reading_id",
    "to_record",
    "with_check_digit",
]
