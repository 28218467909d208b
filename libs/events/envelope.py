"""The CloudEvents 1.0 envelope (structured JSON mode) around every event payload, and how to build one.

One envelope class per payload type is derived here, with ``type`` and ``schemaversion`` as literals, so that a
record's bytes are validated in one pass by a union that dispatches on ``type`` (see ``libs.events.catalog``).
Build envelopes with :func:`make_event`: it uses those classes, so a built event equals its parsed copy.
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import cache
from typing import Annotated, Any, Final, Generic, Literal, Self, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, WithJsonSchema, create_model, model_validator

from libs.events.base import EventData
from libs.events.fields import Timestamp, as_utc
from libs.events.ids import new_event_id

DataT = TypeVar("DataT", bound=EventData)

SPECVERSION: Final = "1.0"
DATACONTENTTYPE: Final = "application/json"
EVENT_TYPE_PATTERN = r"^gridhub(\.[a-z]+)+$"

EventId = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^\S+$")]
EventSource = Annotated[
    str,
    StringConstraints(min_length=1, max_length=256, pattern=r"^\S+$"),
    WithJsonSchema(
        {"type": "string", "format": "uri-reference", "minLength": 1, "maxLength": 256, "pattern": r"^\S+$"}
    ),
]


class CloudEvent(BaseModel, Generic[DataT]):
    """A CloudEvents 1.0 event in structured JSON mode: context attributes plus the typed ``data``.

    ``schemaversion`` is a CloudEvents extension attribute: the payload's schema version (a breaking change
    means a new version on a new topic). ``subject`` is the Kafka key.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    specversion: Literal["1.0"] = Field(description="CloudEvents specification version.")
    id: EventId = Field(
        description="Event id; with source unique per event. Deterministic for readings and alarms (redelivery "
        "and resends keep it), a random UUID otherwise."
    )
    type: str = Field(pattern=EVENT_TYPE_PATTERN, description="Event type, gridhub.<entity>.<past-tense verb>.")
    source: EventSource = Field(description="The producing service, e.g. /gridhub/collection (URI reference).")
    time: Timestamp = Field(description="When the event happened (RFC 3339, producers write UTC).")
    subject: str = Field(min_length=1, description="The Kafka key: meterpoint, customer or work order id.")
    datacontenttype: Literal["application/json"] = Field(description="Media type of data.")
    schemaversion: int = Field(ge=1, description="Version of the data schema (CloudEvents extension attribute).")
    data: DataT

    @model_validator(mode="after")
    def _agrees_with_data(self) -> Self:
        data = self.data
        if self.subject != data.subject:
            raise ValueError(f"subject does not match data.{data.subject_field}")
        if self.type != data.event_type or self.schemaversion != data.schema_version:
            raise ValueError(f"type and schemaversion must be {data.event_type} and {data.schema_version}")
        return self


@cache
def envelope_class(payload: type[DataT]) -> type[CloudEvent[DataT]]:
    """The envelope class for ``payload``, with its ``type`` and ``schemaversion`` fixed as literals."""
    # Literal of a runtime value: mypy cannot follow it, pydantic needs it for the discriminated union.
    event_type: Any = Literal[payload.event_type]
    version: Any = Literal[payload.schema_version]
    return create_model(
        f"{payload.__name__}Event",
        __base__=CloudEvent[payload],  # type: ignore[valid-type]
        __doc__=f"CloudEvents envelope of {payload.__name__}: {payload.__doc__}",
        __module__=payload.__module__,
        type=(event_type, Field(description="Event type.")),
        schemaversion=(version, Field(description="Version of the data schema (CloudEvents extension).")),
    )


def make_event(
    data: DataT,
    *,
    source: str,
    id: str | None = None,
    time: datetime | None = None,
) -> CloudEvent[DataT]:
    """Wrap ``data`` in its envelope.

    ``id`` defaults to the payload's natural id (readings, alarms) or a random UUID; ``time`` to now. Both are
    parameters so that an outbox row id or a clock can be passed in.
    """
    return envelope_class(type(data))(
        specversion=SPECVERSION,
        id=id or data.natural_event_id() or new_event_id(),
        type=data.event_type,
        source=source,
        time=datetime.now(UTC) if time is None else as_utc(time),
        subject=data.subject,
        datacontenttype=DATACONTENTTYPE,
        schemaversion=data.schema_version,
        data=data,
    )
