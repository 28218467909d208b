"""Field types shared by the event payloads and the envelope, each with the JSON Schema the contracts publish."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from pydantic import AwareDatetime, StringConstraints, WithJsonSchema

# RFC 3339 with a mandatory offset: JSON Schema's "date-time" format is not asserted by every validator, and the
# pattern alone already refuses the naive timestamps the models refuse.
RFC3339_PATTERN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})$"
UUID_PATTERN = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
OPAQUE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
MAX_VERSION = 2**31 - 1
"""The largest record version an event may carry: consumers keep versions in 32-bit integer columns."""
SOURCE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$"


# Consumers take any offset and compare instants; producers write UTC (the factories normalise). Normalising in a
# validator would cost a Python call per timestamp on every consumer (~0.5 µs, PERFORMANCE.md).
Timestamp = Annotated[
    AwareDatetime,
    WithJsonSchema({"type": "string", "format": "date-time", "pattern": RFC3339_PATTERN}),
]
"""A timezone-aware timestamp (RFC 3339 with an offset on the wire); naive ones are refused."""

UuidStr = Annotated[
    str,
    StringConstraints(pattern=UUID_PATTERN),
    WithJsonSchema({"type": "string", "format": "uuid", "pattern": UUID_PATTERN}),
]
"""A UUID in its canonical lower-case hyphenated spelling."""

OpaqueId = Annotated[str, StringConstraints(pattern=OPAQUE_ID_PATTERN)]
"""An id owned by one service (customer, work order, crew): 1-64 letters, digits, '.', '_' or '-'."""

SourceId = Annotated[str, StringConstraints(pattern=SOURCE_ID_PATTERN)]
"""The system a reading or alarm came from (ingress channel or head-end id), e.g. ``collection.mqtt``."""


ShortText = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"\S")]
"""Free text of 1 to 200 characters, not blank (names, street lines, reasons)."""

LongText = Annotated[str, StringConstraints(min_length=1, max_length=2000, pattern=r"\S")]
"""Free text of 1 to 2000 characters, not blank (descriptions, alarm details)."""


def as_utc(moment: datetime) -> datetime:
    """``moment`` in UTC; refuses a naive datetime, which would otherwise be taken as the host's local time."""
    if moment.utcoffset() is None:
        raise ValueError(f"a timezone-aware datetime is required, got naive {moment.isoformat()}")
    return moment.astimezone(UTC)
