"""The SOAP 1.1 entry point: authenticate, admit, read within limits, parse safely, validate, call the handler,
answer with a response or a Fault.

Flow control is applied here, not by the shared ASGI middleware: that middleware answers with problem+json,
which a SOAP client cannot read, and it keys quotas before authentication, while ours are per authenticated
client system. The same `Quota` and `Bulkhead` objects (built by `build_boundary` from settings, with the same
metrics) are used directly, and their refusals become Server.Busy faults with 429 or 503 and ``Retry-After``.

HTTP status codes: 500 for faults about the request or the data (SOAP 1.1 / WS-I Basic Profile), 401 for
missing credentials, 403 for a role that may not run the operation or a record of another grid company named in a
write (Client.Authorization), 413 for a body over the limit, 429 for a spent quota, 503 for a full bulkhead or an
unavailable database.

Each operation declares the role it needs (`OPERATIONS`): reads ``reader``; customer changes and move-ins
``operator`` (the customer centre's daily work); meterpoint master data ``admin`` (it decides who may deliver
readings, so it is the grid company's administrators' part). The check runs right after the operation is known
and before its payload is validated, so a caller without the role learns nothing about its request.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Generic, TypeVar

from fastapi import APIRouter, Depends, Request
from lxml import etree  # type: ignore[import-untyped]
from starlette.requests import ClientDisconnect
from starlette.responses import Response

from libs.flowcontrol.errors import BulkheadFull, QuotaExceeded, Refused
from libs.flowcontrol.policy import Boundary
from libs.platform.logging import get_correlation_id
from libs.platform.tenancy import Principal, Role
from services.customers import handlers
from services.customers.auth import AuthenticationFailed, ClientAuthenticator
from services.customers.domain import Conflict, DomainError, InvalidRequest, NotAllowed, NotFound
from services.customers.entrypoints import soap_codec
from services.customers.entrypoints.soap_xml import (
    CONTENT_TYPE,
    TNS,
    FaultViolation,
    SoapFault,
    fault_envelope,
    invalid_xml,
    open_envelope,
    parse_document,
    response_envelope,
)
from services.customers.handlers import Caller, CustomerStore, StoreUnavailable

log = logging.getLogger(__name__)

C = TypeVar("C")
R = TypeVar("R")

_SOAP_ACTION_PREFIX = f"{TNS}#"


@dataclass(frozen=True)
class Operation(Generic[C, R]):
    """One WSDL operation: the role it needs, and payload -> command -> handler (with the caller) -> payload."""

    role: Role
    decode: Callable[[etree._Element], C]
    handle: Callable[[C, CustomerStore, Caller], Awaitable[R]]
    encode: Callable[[R], etree._Element]

    async def run(self, payload: etree._Element, store: CustomerStore, caller: Caller) -> etree._Element:
        return self.encode(await self.handle(self.decode(payload), store, caller))


OPERATIONS: dict[str, Operation[Any, Any]] = {
    "RegisterCustomer": Operation(
        Role.OPERATOR,
        soap_codec.decode_register,
        handlers.register_customer,
        soap_codec.encode_customer_response("RegisterCustomer"),
    ),
    "GetCustomer": Operation(
        Role.READER, soap_codec.decode_get_customer, handlers.get_customer, soap_codec.encode_customer_with_links
    ),
    "UpdateCustomer": Operation(
        Role.OPERATOR,
        soap_codec.decode_update,
        handlers.update_customer,
        soap_codec.encode_customer_response("UpdateCustomer"),
    ),
    "FindCustomers": Operation(Role.READER, soap_codec.decode_find, handlers.find_customers, soap_codec.encode_page),
    "LinkMeterpoint": Operation(
        Role.OPERATOR,
        soap_codec.decode_link,
        handlers.link_meterpoint,
        soap_codec.encode_link_response("LinkMeterpoint"),
    ),
    "UnlinkMeterpoint": Operation(
        Role.OPERATOR,
        soap_codec.decode_unlink,
        handlers.unlink_meterpoint,
        soap_codec.encode_link_response("UnlinkMeterpoint"),
    ),
    "GetMeterpointCustomer": Operation(
        Role.READER, soap_codec.decode_meterpoint_customer, handlers.get_meterpoint_customer, soap_codec.encode_holder
    ),
    "RegisterMeterpoint": Operation(
        Role.ADMIN,
        soap_codec.decode_register_meterpoint,
        handlers.register_meterpoint,
        soap_codec.encode_meterpoint_response("RegisterMeterpoint"),
    ),
    "UpdateMeterpoint": Operation(
        Role.ADMIN,
        soap_codec.decode_update_meterpoint,
        handlers.update_meterpoint,
        soap_codec.encode_meterpoint_response("UpdateMeterpoint"),
    ),
    "GetMeterpoint": Operation(
        Role.READER,
        soap_codec.decode_get_meterpoint,
        handlers.get_meterpoint,
        soap_codec.encode_meterpoint_response("GetMeterpoint"),
    ),
    "ListMeterpoints": Operation(
        Role.READER, soap_codec.decode_list_meterpoints, handlers.list_meterpoints, soap_codec.encode_meterpoint_page
    ),
}


def retry_after_seconds(seconds: float | None) -> int:
    """Whole seconds for ``Retry-After``: rounded up, at least 1 (0 invites a tight retry loop)."""
    if seconds is None or math.isinf(seconds):
        return 1
    return max(1, math.ceil(seconds - 1e-9))


def to_fault(error: Exception) -> SoapFault:
    """The fault for anything a request can end in; unknown errors become a generic soap:Server fault."""
    match error:
        case SoapFault():
            return error
        case InvalidRequest():
            violations = [FaultViolation(v.field, v.message) for v in error.violations]
            return SoapFault("Client.Validation", 500, "Validation", error.reason, error.message, violations)
        case NotFound():
            return SoapFault("Client.NotFound", 500, "NotFound", error.reason, error.message)
        case NotAllowed():
            return SoapFault("Client.Authorization", 403, "Authorization", error.reason, error.message)
        case Conflict():
            return SoapFault(
                "Client.Conflict", 500, "Conflict", error.reason, error.message, current_version=error.current_version
            )
        case DomainError():
            return SoapFault("Client.Validation", 500, "Validation", error.reason, error.message)
        case AuthenticationFailed():
            return SoapFault(
                "Client.Authentication",
                401,
                "Authentication",
                "unauthenticated",
                "authentication required: HTTP Basic credentials of a registered client system",
                headers={"WWW-Authenticate": error.challenge},
            )
        case Refused():
            seconds = retry_after_seconds(error.retry_after)
            status = 429 if isinstance(error, QuotaExceeded) else 503
            reason = {QuotaExceeded: "quota_exceeded", BulkheadFull: "too_many_concurrent_calls"}.get(
                type(error), error.reason
            )
            return SoapFault(
                "Server.Busy",
                status,
                "Busy",
                reason,
                f"the service is busy ({reason.replace('_', ' ')}); retry after {seconds} s",
                retry_after=seconds,
                headers={"Retry-After": str(seconds)},
            )
        case StoreUnavailable() | TimeoutError():
            reason = "timeout" if isinstance(error, TimeoutError) else "database_unavailable"
            return SoapFault(
                "Server.Unavailable",
                503,
                "Unavailable",
                reason,
                "the customer database is unavailable or too slow right now; retry later",
                retry_after=1,
                headers={"Retry-After": "1"},
            )
    return SoapFault("Server", 500, "Internal", "internal_error", "internal error; quote the correlation id")


class SoapEndpoint:
    """The customers SOAP endpoint over the committed WSDL."""

    def __init__(
        self,
        *,
        store: CustomerStore,
        authenticator: ClientAuthenticator,
        boundary: Boundary,
        wsdl_path: Path = soap_codec.WSDL_PATH,
        max_body_bytes: int,
        max_depth: int,
    ) -> None:
        self.store = store
        self._authenticator = authenticator
        self._boundary = boundary
        self._wsdl = wsdl_path.read_bytes()
        self._schema = soap_codec.load_request_schema(wsdl_path)
        self._max_body_bytes = max_body_bytes
        self._max_depth = max_depth
        self._timeout = boundary.policy.timeout

    def wsdl(self) -> Response:
        return Response(self._wsdl, media_type=CONTENT_TYPE)

    async def post(self, request: Request) -> Response:
        operation = "-"
        client = "-"
        try:
            remote = _remote(request)
            principal = await self._authenticator.authenticate(request.headers.get("authorization"), remote)
            client = principal.name
            self._admit(client)
            async with self._concurrency():
                body = await self._read_body(request)
                payload = open_envelope(parse_document(body, max_depth=self._max_depth))
                operation, handler = self._dispatch(payload, request.headers.get("soapaction"))
                _authorize(principal, operation, handler.role)
                soap_codec.check_schema(self._schema, payload)
                async with asyncio.timeout(self._timeout):
                    result = await handler.run(payload, self.store, Caller(principal, remote))
            return Response(response_envelope(result), media_type=CONTENT_TYPE)
        except Exception as error:
            fault = to_fault(error)
            if fault.category == "Internal":
                log.exception("SOAP call failed", extra={"operation": operation, "client": client})
            else:
                log.info(
                    "SOAP fault",
                    extra={"operation": operation, "client": client, "faultcode": fault.code, "reason": fault.reason},
                )
            return self._fault_response(fault)

    def _admit(self, client: str) -> None:
        quota = self._boundary.quota
        if quota is not None:
            decision = quota.try_acquire(client)
            if not decision.allowed:
                raise QuotaExceeded(f"quota of {client} exceeded", retry_after=decision.retry_after)

    def _concurrency(self) -> _Permit:
        return _Permit(self._boundary)

    async def _read_body(self, request: Request) -> bytes:
        content_type = request.headers.get("content-type", "text/xml").lower()
        if content_type.startswith("application/soap+xml"):
            raise SoapFault(
                "VersionMismatch", 500, "Validation", "soap_version_mismatch", "only SOAP 1.1 (text/xml) is accepted"
            )
        charset = content_type.partition("charset=")[2].strip(" \"';")
        if charset and charset not in ("utf-8", "utf8", "us-ascii"):
            raise invalid_xml("unsupported_encoding", "only UTF-8 encoded requests are accepted")
        limit = self._max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            raise self._too_large()
        chunks = []
        size = 0
        # Counted while streaming, so a chunked body (no Content-Length) is cut off at the limit too.
        try:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise self._too_large()
                chunks.append(chunk)
        except ClientDisconnect:  # the caller gave up (its timeout, a crash): ordinary, not a server error
            detail = "the client disconnected before the request was complete"
            raise invalid_xml("client_disconnected", detail) from None
        return b"".join(chunks)

    def _too_large(self) -> SoapFault:
        # No "Connection: close": closing with unread bytes in the socket makes the kernel reset the connection,
        # and the client never reads this fault. On a kept-alive connection uvicorn discards the rest of the body
        # as it arrives (no buffering) until its keep-alive timeout, which bounds a slow upload.
        return SoapFault(
            "Client.Validation",
            413,
            "Validation",
            "request_too_large",
            f"the request body exceeds {self._max_body_bytes} bytes",
        )

    def _dispatch(self, payload: etree._Element, soap_action: str | None) -> tuple[str, Operation[Any, Any]]:
        name = etree.QName(payload)
        handler = OPERATIONS.get(name.localname) if name.namespace == TNS else None
        if handler is None:
            raise invalid_xml("unknown_operation", f"{name.localname} is not an operation of this service")
        action = (soap_action or "").strip().strip('"')
        if action and action != f"{_SOAP_ACTION_PREFIX}{name.localname}":
            raise invalid_xml("soap_action_mismatch", f"SOAPAction does not match the operation {name.localname}")
        return name.localname, handler

    def _fault_response(self, fault: SoapFault) -> Response:
        return Response(
            fault_envelope(fault, get_correlation_id()),
            status_code=fault.status,
            media_type=CONTENT_TYPE,
            headers=fault.headers,
        )


class _Permit:
    """A bulkhead permit for one call (or nothing, when the boundary has no bulkhead)."""

    def __init__(self, boundary: Boundary) -> None:
        self._bulkhead = boundary.bulkhead

    async def __aenter__(self) -> None:
        if self._bulkhead is not None:
            await self._bulkhead.acquire()

    async def __aexit__(self, *exc_info: object) -> None:
        if self._bulkhead is not None:
            self._bulkhead.release()


def _authorize(caller: Principal, operation: str, role: Role) -> None:
    if not caller.may(role):
        raise NotAllowed(
            f"{operation} needs the {role} role; client {caller.name} has {caller.role}", reason="role_required"
        )


def _remote(request: Request) -> str:
    return request.client.host if request.client is not None else "unknown"


def endpoint_of(request: Request) -> SoapEndpoint:
    """The endpoint the app's lifespan built (routes exist before the pool does)."""
    endpoint: SoapEndpoint = request.app.state.soap_endpoint
    return endpoint


EndpointDep = Annotated[SoapEndpoint, Depends(endpoint_of)]


def soap_router(path: str) -> APIRouter:
    """POST ``path`` for calls, GET ``path?wsdl`` for the contract."""
    router = APIRouter(include_in_schema=False)

    @router.post(path)
    async def call(request: Request, endpoint: EndpointDep) -> Response:
        return await endpoint.post(request)

    @router.get(path)
    async def wsdl(request: Request, endpoint: EndpointDep) -> Response:
        if not any(key.lower() == "wsdl" for key in request.query_params):
            return Response("GET ?wsdl for the contract; POST SOAP 1.1 envelopes\n", status_code=400)
        return endpoint.wsdl()

    return router
