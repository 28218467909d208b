"""The base of every event payload: immutable, strict, closed, and aware of its type name, topic and key."""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict


class EventData(BaseModel):
    """A typed event payload (the ``data`` of a CloudEvent).

    Subclasses set ``event_type`` (``gridhub.`` + the words of the class name in lower case, dot-separated),
    ``topic`` and ``subject_field``, the field whose value is the Kafka key and the CloudEvents ``subject``.
    Strict: the wire carries the JSON types the contract names, never strings that happen to parse.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    event_type: ClassVar[str]
    topic: ClassVar[str]
    subject_field: ClassVar[str]
    schema_version: ClassVar[int] = 1

    @property
    def subject(self) -> str:
        """The Kafka key and CloudEvents subject of this event (meterpoint, customer or work order id)."""
        value: str = getattr(self, self.subject_field)
        return value

    def natural_event_id(self) -> str | None:
        """A deterministic event id derived from the payload, or None when each event gets a random one."""
        return None


class EventPart(BaseModel):
    """A value nested in a payload (address, time window): as strict, closed and immutable as the payload."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)
