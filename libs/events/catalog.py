"""Every event type GridHub publishes, looked up by type name or topic, and the union that parses any of them."""

from __future__ import annotations

from typing import Annotated, Any, Union

from pydantic import Field, TypeAdapter

from libs.events.base import EventData
from libs.events.customers import CustomerRegistered, CustomerUpdated, MeterpointLinked, MeterpointUnlinked
from libs.events.envelope import CloudEvent, envelope_class
from libs.events.meter import MeterAlarmRaised, MeterReadingReceived
from libs.events.meterpoints import MeterpointRegistered, MeterpointUpdated
from libs.events.series import GapFillRequested, MeterSeriesValidated
from libs.events.workorders import (
    WorkOrderCancelled,
    WorkOrderCompleted,
    WorkOrderCreated,
    WorkOrderScheduled,
    WorkOrderStarted,
)

EVENT_CLASSES: tuple[type[EventData], ...] = (
    MeterReadingReceived,
    MeterAlarmRaised,
    CustomerRegistered,
    CustomerUpdated,
    MeterpointLinked,
    MeterpointUnlinked,
    WorkOrderCreated,
    WorkOrderScheduled,
    WorkOrderStarted,
    WorkOrderCompleted,
    WorkOrderCancelled,
    MeterpointRegistered,
    MeterpointUpdated,
    MeterSeriesValidated,
    GapFillRequested,
)
"""All payload classes; a new event is added here (and gets its schema from ``python -m libs.events.schemas``)."""

_BY_TYPE: dict[str, type[EventData]] = {cls.event_type: cls for cls in EVENT_CLASSES}
if len(_BY_TYPE) != len(EVENT_CLASSES):
    raise RuntimeError("two event classes share an event type")

EVENT_TYPES: tuple[str, ...] = tuple(_BY_TYPE)
"""All event type names."""


def event_class(event_type: str) -> type[EventData]:
    """The payload class of ``event_type`` (KeyError when unknown)."""
    return _BY_TYPE[event_type]


def events_on(topic: str) -> tuple[type[EventData], ...]:
    """The payload classes published on ``topic``."""
    return tuple(cls for cls in EVENT_CLASSES if cls.topic == topic)


# Tagged on "type": pydantic-core reads the tag from the parsed JSON and validates against that one envelope
# only, so any event costs one pass over its bytes, with no Python-side peek at the type.
_ANY_ENVELOPE: Any = Annotated[
    Union[tuple(envelope_class(cls) for cls in EVENT_CLASSES)],  # noqa: UP007 - a runtime-built union
    Field(discriminator="type"),
]
ANY_EVENT: TypeAdapter[CloudEvent[Any]] = TypeAdapter(_ANY_ENVELOPE)
"""Validates the bytes of any GridHub event into its typed envelope (``ANY_EVENT.validate_json(value)``)."""
