"""Gap fill at the edge: where a ``GapFillRequested`` goes and what its source receives. Pure: no I/O.

The validation stage asks a meterpoint's source to send a range again (``meter.commands.v1``); collection routes
each request by its ``data_source.kind``, and only within the request's grid company (the scope view must say the
meterpoint belongs to that grid company and is delivered by that source, otherwise the request is refused):

- ``device``: an MQTT command (QoS 1) on ``gridhub/meters/<meterpoint>/commands``, the JSON of `reread_payload`;
- ``head_end``: a stored request its key's client lists (``GET /v1/reread-requests``) and acknowledges (``DELETE``);
- ``ftp_partner``: a file ``reread-<request_id>.json`` (the same JSON) in the partner's ``/outbox``.

A request sent twice (the same ``request_id``) is one command, one stored request, one file.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from libs.events.meterpoints import SourceKind
from libs.events.series import GapFillRequested
from services.collection.scope import Entry

REREAD = "reread"
"""The ``command`` of a re-read: send the readings with ``interval_end`` in (``start``, ``end``] again."""

NOT_IN_SCOPE = "not_in_scope"
UNKNOWN_METERPOINT = "unknown_meterpoint"


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a request is not routed (dead-lettered with this reason: routing it again cannot help)."""

    reason: str
    detail: str


def reread_document(request: GapFillRequested) -> dict[str, Any]:
    """What the source receives: command, request id, the range (start exclusive, end inclusive), register."""
    return {
        "command": REREAD,
        "request_id": request.request_id,
        "meterpoint_id": request.meterpoint_id,
        "start": request.start,
        "end": request.end,
        "register": request.register.value,
        "resolution": request.resolution.value,
        "requested_at": request.requested_at,
    }


def reread_payload(request: GapFillRequested) -> bytes:
    """`reread_document` as UTF-8 JSON, timestamps in RFC 3339 UTC (``Z``)."""
    return orjson.dumps(reread_document(request), option=orjson.OPT_UTC_Z)


def command_topic(prefix: str, meterpoint_id: str) -> str:
    """``<prefix>/<meterpoint>/commands`` (the meterpoint is a GSRN: digits only, checked by the event's model)."""
    return f"{prefix}/{meterpoint_id}/commands"


def outbox_name(request_id: str) -> str:
    """``reread-<request_id>.json`` (the id is a UUID, checked by the event's model: a safe file name)."""
    return f"reread-{request_id}.json"


def check_route(request: GapFillRequested, entry: Entry | None, *, enforced: bool) -> Refusal | None:
    """None when ``request`` may go to its ``data_source``: the scope view's entry of the meterpoint names the same
    grid company and source. Without the scope check (``enforced`` false) every request goes where it says."""
    if not enforced:
        return None
    if entry is None:
        return Refusal(UNKNOWN_METERPOINT, "meterpoint_id: not in the meterpoint view")
    source = request.data_source
    if entry.grid_company != request.grid_company:
        return Refusal(NOT_IN_SCOPE, "grid_company: the meterpoint belongs to another grid company")
    if (entry.source_kind, entry.source_id) != (source.kind.value, source.id):
        return Refusal(NOT_IN_SCOPE, "data_source: the meterpoint is delivered by another source")
    return None


def kind_of(request: GapFillRequested) -> SourceKind:
    """The route: device, head_end or ftp_partner."""
    return request.data_source.kind


@dataclass(frozen=True, slots=True)
class StoredRequest:
    """A head-end system's open re-read request, as ``GET /v1/reread-requests`` lists it."""

    request_id: str
    meterpoint_id: str
    register: str
    resolution: str
    start: datetime
    end: datetime
    requested_at: datetime

    def document(self) -> dict[str, Any]:
        """The JSON of one listed request (the same fields as the device command)."""
        return {
            "command": REREAD,
            "request_id": self.request_id,
            "meterpoint_id": self.meterpoint_id,
            "start": self.start,
            "end": self.end,
            "register": self.register,
            "resolution": self.resolution,
            "requested_at": self.requested_at,
        }
