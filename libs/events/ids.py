"""Event ids: deterministic for meter data (a resent reading or alarm keeps its id), random for the rest.

A deterministic id is the 16-byte BLAKE2b digest of the natural key, with the version nibble set to 8
(RFC 9562 "custom") and the RFC 4122 variant bits, printed as a UUID. It costs a fraction of ``uuid.uuid5``
(PERFORMANCE.md: uuid5 costs more than validating the reading). The natural key is spelled out in
contracts/events/README.md so that producers in other languages compute the same ids:

    reading: "reading|<meterpoint_id>|<register>|<interval_end as integer µs since 1970-01-01T00:00:00Z>|<source>"
    alarm:   "alarm|<meterpoint_id>|<alarm>|<raised_at as integer µs since 1970-01-01T00:00:00Z>|<source>"

hashed as UTF-8 with BLAKE2b (digest_size=16, no key). Epoch microseconds make the id independent of the
UTC offset the timestamp was written with; the leading kind keeps a reading and an alarm apart.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from hashlib import blake2b

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def epoch_micros(moment: datetime) -> int:
    """Whole microseconds since the Unix epoch of a timezone-aware datetime (same instant -> same number)."""
    if moment.utcoffset() is None:
        raise ValueError(f"a timezone-aware datetime is required, got naive {moment.isoformat()}")
    return (moment - _EPOCH) // _MICROSECOND


def digest_uuid(natural_key: str) -> str:
    """The BLAKE2b-128 digest of ``natural_key`` as a version-8 UUID string (lower-case, hyphenated)."""
    digest = bytearray(blake2b(natural_key.encode(), digest_size=16).digest())
    digest[6] = (digest[6] & 0x0F) | 0x80  # version 8
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def reading_id(meterpoint_id: str, register: str, interval_end: datetime, source: str) -> str:
    """Deterministic id of a reading: same meterpoint, register, interval end (any offset) and source."""
    return digest_uuid(f"reading|{meterpoint_id}|{register}|{epoch_micros(interval_end)}|{source}")


def alarm_id(meterpoint_id: str, alarm: str, raised_at: datetime, source: str) -> str:
    """Deterministic id of a meter alarm: same meterpoint, alarm, raise time (any offset) and source."""
    return digest_uuid(f"alarm|{meterpoint_id}|{alarm}|{epoch_micros(raised_at)}|{source}")


def new_event_id() -> str:
    """A random (version 4) UUID string for events that have no natural key."""
    return str(uuid.uuid4())
