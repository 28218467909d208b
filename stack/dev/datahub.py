"""``python -m stack.dev.datahub --port N``: a stand-in for Energinet DataHub 3's B2B API, over real HTTP.

It implements GridHub's contract of the datahub (contracts/datahub/, written from the public description):

- ``POST /oauth2/token``: OAuth2 client credentials (form fields or HTTP Basic) -> a bearer token that expires.
- ``POST /v1.0/cim/notifyvalidatedmeasuredata``: an RSM-012 document; 202 on receipt, 400 with ``{"Error": ...}``
  when it fails the schema (or is no JSON), 409 with ``{"Error": {"Code": "DuplicateDocument"}}`` for an mRID the
  sender used before (counted), 413 above the body limit (50 MB). A received document is validated against the
  business rules (E10, D50, E73, D23, D12, E86, E89, E87, D66, E17); a document with a rejected series queues an
  RSM-009 naming each rejected series and its reasons.
- ``GET /v1.0/cim/measuredata``: peek the sender's queue: 200 with a ``MessageId`` header and the oldest message
  (the same one until it is dequeued), 204 when empty. ``DELETE /v1.0/cim/dequeue/{messageId}``: 200, or 404 when
  that is not the oldest message.
- A quota per client (a token bucket): past it, 429 with ``Retry-After`` in whole seconds (counted).
- Switches, for the tests and ``make run``: ``POST /admin/switches`` ``{"outage": true}`` (503 on every datahub
  endpoint), ``{"delay_seconds": 2.5}`` (slow answers), ``POST /admin/rejections`` ``{"meterpoint": ..., "code":
  "E10"}`` (forced asynchronous rejections), ``POST /admin/meterpoints`` (the datahub's master data: without any,
  every meterpoint is known and of its sender); ``GET /admin/counters``. A document whose sender is not the
  token's market participant is 403 (no grid company sends for another). The admin endpoints take no token: the
  stand-in is dev-only and listens on 127.0.0.1.

In a test, build ``DatahubStandIn(...)`` and serve ``create_app(standin)``: the switches and counters are its
attributes, and its clocks (monotonic for tokens and quota, wall for "older than 3 years") can be fakes.
Never imported by the services (the import contract).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import json
import math
import secrets
import sys
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qs

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from jsonschema import Draft202012Validator  # type: ignore[import-untyped]  # no stubs; dev-only code

from stack.config import REPO

SCHEMAS = REPO / "contracts" / "datahub"
MAX_BODY_BYTES = 50 * 1024 * 1024
REASON_CODES = ("E10", "D50", "E73", "D23", "D12", "E86", "E89", "E87", "D66", "E17")
ALLOWED_QUALITIES = frozenset({"A02", "A03", "A04"})
_STEP = {"PT15M": 900, "PT1H": 3600}
_MINUTE = "%Y-%m-%dT%H:%MZ"


def _validator(name: str) -> Draft202012Validator:
    return Draft202012Validator(json.loads((SCHEMAS / name).read_text()))


@dataclass(frozen=True)
class Client:
    """An OAuth2 client of the datahub: its credentials and the market participant (GLN/EIC) it acts for."""

    client_id: str
    secret: str
    party: str


@dataclass(frozen=True)
class RegisteredMeterpoint:
    """The datahub's master data of a metering point."""

    grid_company: str
    resolution: str


@dataclass
class Counters:
    """What the stand-in saw; tests read these (or ``GET /admin/counters``)."""

    accepted_documents: int = 0
    rejected_documents: int = 0
    accepted_series: int = 0
    rejected_series: int = 0
    duplicates: int = 0
    over_quota: int = 0
    schema_failures: int = 0
    unauthorized: int = 0
    outage_answers: int = 0


@dataclass
class _Bucket:
    tokens: float
    at: float


@dataclass
class DatahubStandIn:
    """The stand-in's state: clients, master data, switches, queues and counters."""

    clients: Sequence[Client]
    party: str = "5790001330583"
    """The datahub's own GLN (the receiver of documents, the sender of acknowledgements)."""
    quota_per_second: float = 10.0
    quota_burst: int = 20
    token_ttl: float = 3600.0
    max_body_bytes: int = MAX_BODY_BYTES
    max_quantity: Decimal = Decimal("1000000")
    """The largest quantity per interval (kWh) it takes (E89 above)."""
    max_tokens: int = 1000
    monotonic: Callable[[], float] = time.monotonic
    wall: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    outage: bool = False
    delay_seconds: float = 0.0
    meterpoints: dict[str, RegisteredMeterpoint] = field(default_factory=dict)
    forced: dict[str, str] = field(default_factory=dict)
    counters: Counters = field(default_factory=Counters)
    accepted_mrids: list[str] = field(default_factory=list)
    accepted_series_mrids: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._clients = {client.client_id: client for client in self.clients}
        self._tokens: dict[str, tuple[str, float]] = {}
        self._buckets: dict[str, _Bucket] = {}
        self._received: set[tuple[str, str]] = set()
        self._queues: dict[str, deque[tuple[str, bytes]]] = {}
        self._document = _validator("notify-validated-measure-data.rsm012.schema.json")

    # -- tokens and quota ------------------------------------------------------------------------------------------

    def issue_token(self, client_id: str, secret: str) -> str | None:
        """A new bearer token for valid credentials, else None."""
        client = self._clients.get(client_id)
        if client is None or not secrets.compare_digest(client.secret.encode(), secret.encode()):
            return None
        now = self.monotonic()
        if len(self._tokens) >= self.max_tokens:
            self._tokens = {token: held for token, held in self._tokens.items() if held[1] > now}
            while len(self._tokens) >= self.max_tokens:  # still full: the oldest goes
                del self._tokens[next(iter(self._tokens))]
        token = secrets.token_urlsafe(32)
        self._tokens[token] = (client_id, now + self.token_ttl)
        return token

    def client_of(self, authorization: str | None) -> Client | None:
        """The client of a valid, unexpired ``Bearer`` token."""
        if not authorization or not authorization.startswith("Bearer "):
            return None
        held = self._tokens.get(authorization.removeprefix("Bearer ").strip())
        if held is None or held[1] <= self.monotonic():
            return None
        return self._clients[held[0]]

    def take_quota(self, client: Client) -> float | None:
        """None when the request is within the client's quota, else the seconds until it would be."""
        now = self.monotonic()
        bucket = self._buckets.setdefault(client.client_id, _Bucket(float(self.quota_burst), now))
        bucket.tokens = min(float(self.quota_burst), bucket.tokens + (now - bucket.at) * self.quota_per_second)
        bucket.at = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return None
        return (1.0 - bucket.tokens) / self.quota_per_second

    # -- documents -------------------------------------------------------------------------------------------------

    def schema_errors(self, document: Any) -> list[dict[str, str]]:
        """The document's schema failures as error details (at most 20)."""
        errors = []
        for error in self._document.iter_errors(document):
            target = "/".join(str(part) for part in error.absolute_path) or None
            errors.append({"Code": str(error.validator), "Message": error.message[:500], "Target": target})
            if len(errors) >= 20:
                break
        return errors

    def receive(self, client: Client, document: dict[str, Any]) -> bool:
        """Take a schema-valid document: False for a repeated mRID (counted), else validate and queue rejections."""
        body = document["NotifyValidatedMeasureData_MarketDocument"]
        sender = body["sender_MarketParticipant.mRID"]["value"]
        key = (sender, body["mRID"])
        if key in self._received:
            self.counters.duplicates += 1
            return False
        self._received.add(key)
        rejected = []
        for series in body["Series"]:
            reasons = self.series_reasons(sender, series)
            if reasons:
                rejected.append({"mRID": series["mRID"], "Reason": reasons})
            else:
                self.accepted_series_mrids.append(series["mRID"])
        self.counters.rejected_series += len(rejected)
        self.counters.accepted_series += len(body["Series"]) - len(rejected)
        if rejected:
            self.counters.rejected_documents += 1
            self._queue(client).append((str(uuid.uuid4()), self._acknowledgement(body, rejected)))
        else:
            self.counters.accepted_documents += 1
            self.accepted_mrids.append(body["mRID"])
        return True

    def series_reasons(self, sender: str, series: dict[str, Any]) -> list[dict[str, Any]]:
        """The business validation of one series: its reasons, empty when accepted."""
        codes: list[tuple[str, str]] = []
        meterpoint = series["marketEvaluationPoint.mRID"]["value"]
        period = series["Period"]
        if self.meterpoints:
            registered = self.meterpoints.get(meterpoint)
            if registered is None:
                codes.append(("E10", f"Unknown metering point {meterpoint}"))
            else:
                if registered.grid_company != sender:
                    codes.append(("D50", f"{sender} is not the grid company of {meterpoint}"))
                if registered.resolution != period["resolution"]:
                    codes.append(("D23", f"The metering point's resolution is {registered.resolution}"))
        if series["quantity_Measure_Unit.name"]["value"] != "KWH":
            codes.append(("E73", "The unit of a metering point's energy is KWH"))
        points = period["Point"]
        if any(point["quality"]["value"] not in ALLOWED_QUALITIES for point in points):
            codes.append(("D12", "Quality is A02, A03 or A04"))
        quantities = [Decimal(str(point["quantity"])) for point in points]
        if any(quantity < 0 for quantity in quantities):
            codes.append(("E86", "A quantity is below 0"))
        if any(q > self.max_quantity or q != round(q, 3) for q in quantities):
            codes.append(("E89", f"A quantity is above {self.max_quantity} or has more than 3 decimals"))
        start = datetime.strptime(period["timeInterval"]["start"]["value"], _MINUTE).replace(tzinfo=UTC)
        end = datetime.strptime(period["timeInterval"]["end"]["value"], _MINUTE).replace(tzinfo=UTC)
        step = _STEP[period["resolution"]]
        if end <= start or int(start.timestamp()) % step or int(end.timestamp()) % step:
            codes.append(("D66", f"The period is not aligned to {period['resolution']}"))
        else:
            expected = int((end - start).total_seconds()) // step
            if [point["position"]["value"] for point in points] != list(range(1, expected + 1)):
                codes.append(("E87", f"Positions are not 1..{expected}"))
        if end < self.wall() - timedelta(days=3 * 365 + 1):  # 3 years, a leap day included
            codes.append(("E17", "The data is older than 3 years"))
        if meterpoint in self.forced and all(code != self.forced[meterpoint] for code, _ in codes):
            codes.append((self.forced[meterpoint], "Forced by the stand-in"))
        return [{"code": {"value": code}, "text": text} for code, text in codes]

    def _acknowledgement(self, received: dict[str, Any], rejected: list[dict[str, Any]]) -> bytes:
        sender = received["sender_MarketParticipant.mRID"]
        document = {
            "mRID": str(uuid.uuid4()),
            "createdDateTime": self.wall().astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "sender_MarketParticipant.mRID": {"codingScheme": "A10", "value": self.party},
            "sender_MarketParticipant.marketRole.type": {"value": "DGL"},
            "receiver_MarketParticipant.mRID": {"codingScheme": sender["codingScheme"], "value": sender["value"]},
            "receiver_MarketParticipant.marketRole.type": {"value": "MDR"},
            "received_MarketDocument.mRID": received["mRID"],
            "received_MarketDocument.process.processType": {"value": "E23"},
            "Series": rejected,
        }
        return json.dumps({"Acknowledgement_MarketDocument": document}).encode()

    # -- the outbound queue ----------------------------------------------------------------------------------------

    def _queue(self, client: Client) -> deque[tuple[str, bytes]]:
        return self._queues.setdefault(client.party, deque())

    def enqueue(self, party: str, body: bytes) -> str:
        """Put a message (an RSM-009 or anything a test wants peeked) in ``party``'s queue; its MessageId."""
        message_id = str(uuid.uuid4())
        self._queues.setdefault(party, deque()).append((message_id, body))
        return message_id

    def peek(self, client: Client) -> tuple[str, bytes] | None:
        """The oldest message of the client's party, left in the queue."""
        queue = self._queue(client)
        return queue[0] if queue else None

    def dequeue(self, client: Client, message_id: str) -> bool:
        """Remove the oldest message when ``message_id`` names it."""
        queue = self._queue(client)
        if queue and queue[0][0] == message_id:
            queue.popleft()
            return True
        return False

    def queued(self, party: str) -> int:
        """How many messages wait for ``party``."""
        return len(self._queues.get(party, ()))


def error_body(code: str, message: str, target: str | None = None, details: list[dict[str, str]] | None = None) -> Any:
    """The datahub's error body (contracts/datahub/error.schema.json)."""
    error: dict[str, Any] = {"Code": code, "Message": message, "Target": target}
    if details is not None:
        error["Details"] = {"Errors": details}
    return {"Error": error}


def _error(status: int, code: str, message: str, **extra: Any) -> JSONResponse:
    headers = extra.pop("headers", None)
    return JSONResponse(error_body(code, message, **extra), status_code=status, headers=headers)


def _credentials(request: Request, form: dict[str, list[str]]) -> tuple[str, str]:
    authorization = request.headers.get("authorization", "")
    if authorization.startswith("Basic "):
        try:
            client_id, _, secret = base64.b64decode(authorization[6:], validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return "", ""
        return client_id, secret
    return form.get("client_id", [""])[0], form.get("client_secret", [""])[0]


async def _read_limited(request: Request, limit: int) -> bytes | None:
    """The body, or None as soon as it passes ``limit`` bytes (never buffered past it)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        return None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _unreadable_times(document: dict[str, Any]) -> list[str]:
    """Times that match the schema's pattern but are no real moment (2025-02-30, 24:00), at most 20."""
    body = document["NotifyValidatedMeasureData_MarketDocument"]
    moments = [(body["createdDateTime"], "%Y-%m-%dT%H:%M:%SZ")]
    for series in body["Series"]:
        moments.append((series["registration_DateAndOrTime.dateTime"], "%Y-%m-%dT%H:%M:%SZ"))
        interval = series["Period"]["timeInterval"]
        moments += [(interval["start"]["value"], _MINUTE), (interval["end"]["value"], _MINUTE)]
    bad = []
    for value, pattern in moments:
        try:
            datetime.strptime(value, pattern)
        except ValueError:
            bad.append(value)
    return bad[:20]


async def _admin_json(request: Request) -> dict[str, Any] | None:
    try:
        body = await request.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def create_app(standin: DatahubStandIn) -> FastAPI:
    """The stand-in's HTTP API over ``standin``."""
    app = FastAPI(title="DataHub stand-in", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.standin = standin

    async def gate(request: Request, *, quota: bool = True) -> Client | Response:
        if standin.delay_seconds > 0:
            await asyncio.sleep(standin.delay_seconds)
        if standin.outage:
            standin.counters.outage_answers += 1
            return _error(503, "ServiceUnavailable", "The datahub is down (stand-in outage switch)")
        client = standin.client_of(request.headers.get("authorization"))
        if client is None:
            standin.counters.unauthorized += 1
            return _error(
                401,
                "Unauthorized",
                "A valid bearer token is required",
                headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )
        if quota:
            wait = standin.take_quota(client)
            if wait is not None:
                standin.counters.over_quota += 1
                return _error(
                    429, "TooManyRequests", "Over the quota", headers={"Retry-After": str(max(1, math.ceil(wait)))}
                )
        return client

    @app.post("/oauth2/token")
    async def token(request: Request) -> Response:
        if standin.outage:
            standin.counters.outage_answers += 1
            return _error(503, "ServiceUnavailable", "The datahub is down (stand-in outage switch)")
        raw = await _read_limited(request, 4096)
        form = parse_qs((raw or b"").decode("utf-8", "replace"))
        if form.get("grant_type", [""])[0] != "client_credentials":
            return JSONResponse({"error": "unsupported_grant_type"}, status_code=400)
        issued = standin.issue_token(*_credentials(request, form))
        if issued is None:
            return JSONResponse({"error": "invalid_client"}, status_code=401)
        return JSONResponse({"access_token": issued, "token_type": "Bearer", "expires_in": int(standin.token_ttl)})

    @app.post("/v1.0/cim/notifyvalidatedmeasuredata")
    async def notify(request: Request) -> Response:
        client = await gate(request)
        if isinstance(client, Response):
            return client
        raw = await _read_limited(request, standin.max_body_bytes)
        if raw is None:
            return _error(413, "PayloadTooLarge", f"The body is above {standin.max_body_bytes} bytes")
        try:
            document = json.loads(raw, parse_float=Decimal)
        except ValueError as error:
            standin.counters.schema_failures += 1
            return _error(400, "InvalidJson", f"The body is no JSON: {error}"[:500], details=[])
        errors = standin.schema_errors(document)
        if errors:
            standin.counters.schema_failures += 1
            return _error(
                400,
                "SchemaValidationError",
                "The document does not match the RSM-012 schema",
                target="NotifyValidatedMeasureData_MarketDocument",
                details=errors,
            )
        bad_times = _unreadable_times(document)
        if bad_times:
            standin.counters.schema_failures += 1
            return _error(
                400,
                "SchemaValidationError",
                "A time is no calendar date and time",
                target="NotifyValidatedMeasureData_MarketDocument",
                details=[
                    {"Code": "format", "Message": f"{value!r} is no date-time", "Target": None} for value in bad_times
                ],
            )
        sender = document["NotifyValidatedMeasureData_MarketDocument"]["sender_MarketParticipant.mRID"]["value"]
        if sender != client.party:
            return _error(403, "Forbidden", "The sender is not the market participant of the token", target="sender")
        if not standin.receive(client, document):
            mrid = document["NotifyValidatedMeasureData_MarketDocument"]["mRID"]
            return _error(409, "DuplicateDocument", f"The document mRID {mrid} was received before", target="mRID")
        return Response(status_code=202)

    @app.get("/v1.0/cim/measuredata")
    async def peek(request: Request) -> Response:
        client = await gate(request)
        if isinstance(client, Response):
            return client
        message = standin.peek(client)
        if message is None:
            return Response(status_code=204)
        return Response(message[1], media_type="application/json", headers={"MessageId": message[0]})

    @app.delete("/v1.0/cim/dequeue/{message_id}")
    async def dequeue(message_id: str, request: Request) -> Response:
        client = await gate(request)
        if isinstance(client, Response):
            return client
        if not standin.dequeue(client, message_id):
            return _error(404, "NotFound", "No such message at the head of the queue", target="messageId")
        return Response(status_code=200)

    @app.post("/admin/switches")
    async def switches(request: Request) -> Response:
        body = await _admin_json(request)
        if body is None:
            return JSONResponse({"error": "a JSON object"}, status_code=400)
        if "outage" in body:
            standin.outage = bool(body["outage"])
        if "delay_seconds" in body:
            standin.delay_seconds = max(0.0, min(60.0, float(body["delay_seconds"])))
        return JSONResponse({"outage": standin.outage, "delay_seconds": standin.delay_seconds})

    @app.post("/admin/rejections")
    async def force_rejection(request: Request) -> Response:
        body = await _admin_json(request)
        if body is None or body.get("code") not in REASON_CODES or "meterpoint" not in body:
            return JSONResponse({"error": f"code is one of {', '.join(REASON_CODES)}"}, status_code=400)
        standin.forced[str(body["meterpoint"])] = body["code"]
        return JSONResponse({"forced": len(standin.forced)})

    @app.delete("/admin/rejections")
    async def clear_rejections() -> Response:
        standin.forced.clear()
        return Response(status_code=204)

    @app.post("/admin/meterpoints")
    async def register_meterpoint(request: Request) -> Response:
        body = await _admin_json(request)
        if body is None or "meterpoint" not in body or "grid_company" not in body:
            return JSONResponse({"error": "meterpoint and grid_company"}, status_code=400)
        standin.meterpoints[str(body["meterpoint"])] = RegisteredMeterpoint(
            grid_company=str(body["grid_company"]), resolution=str(body.get("resolution", "PT15M"))
        )
        return JSONResponse({"meterpoints": len(standin.meterpoints)})

    @app.get("/admin/counters")
    async def counters() -> Response:
        return JSONResponse(vars(standin.counters))

    return app


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m stack.dev.datahub --port N [--client-id ID --client-secret S --party GLN] [--quota R --burst B]``."""
    import uvicorn

    parser = argparse.ArgumentParser(prog="python -m stack.dev.datahub", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--client-id", default="gridhub-dev")
    parser.add_argument("--client-secret", default="gridhub-dev-secret")
    parser.add_argument("--party", default="5790000000012", help="the GLN/EIC the client acts for")
    parser.add_argument("--quota", type=float, default=10.0, help="requests per second per client")
    parser.add_argument("--burst", type=int, default=20)
    parser.add_argument("--token-ttl", type=float, default=3600.0)
    args = parser.parse_args(argv)
    standin = DatahubStandIn(
        clients=[Client(args.client_id, args.client_secret, args.party)],
        quota_per_second=args.quota,
        quota_burst=args.burst,
        token_ttl=args.token_ttl,
    )
    uvicorn.run(create_app(standin), host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
