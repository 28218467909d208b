"""Reading a SOAP request's body: a caller that gives up mid-request is a Client fault, not an unhandled error."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.requests import Request

from services.customers.entrypoints.soap import SoapEndpoint
from services.customers.entrypoints.soap_xml import SoapFault


async def test_a_caller_that_disconnects_mid_request_gets_a_client_fault() -> None:
    partial = {"type": "http.request", "body": b"<soapenv:Envelope", "more_body": True}
    messages = iter([partial, {"type": "http.disconnect"}])

    async def receive() -> dict[str, Any]:
        return next(messages)

    headers = [(b"content-type", b"text/xml; charset=utf-8")]
    request = Request({"type": "http", "method": "POST", "path": "/soap/customers", "headers": headers}, receive)
    endpoint = SoapEndpoint.__new__(SoapEndpoint)  # only the body limit matters here
    endpoint._max_body_bytes = 4096
    with pytest.raises(SoapFault) as raised:
        await endpoint._read_body(request)
    # SOAP 1.1 sends every fault with HTTP 500; the fault code says whose fault it is.
    assert (raised.value.code, raised.value.status, raised.value.reason) == (
        "Client.Validation",
        500,
        "client_disconnected",
    )
