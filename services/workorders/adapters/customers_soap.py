"""The customers service over SOAP: a zeep client built from the committed WSDL, behind flow control.

    httpx.AsyncClient(transport=FlowControlTransport(httpx.AsyncHTTPTransport(), boundary=customers_soap))
      -> zeep.transports.AsyncTransport(client=...) -> zeep.AsyncClient(contracts/wsdl/customers.wsdl)

The ``customers_soap`` boundary gives every call a breaker (failure rate and slow calls, half-open probes), a
bulkhead and a timeout covering the whole exchange. SOAP 1.1 sends every fault with HTTP 500, so `is_failure`
reads the faultcode: ``Client.*`` faults (e.g. nobody holds the meterpoint) are answers, not failures; ``Server.*``
faults, other 5xx and 429 count against the breaker. Outcomes map to the `handlers.CustomerDirectory` port: a
customer, None (``Client.NotFound``), `CustomersRefused` (``Client.Validation``: this request will not work) or
`CustomersUnavailable` (everything that says "not now"); the breaker's and bulkhead's own refusals propagate as
`Refused`, so callers can fall back at once.
"""

# mypy: disable-error-code="no-untyped-call"
# (zeep has no type hints)

from __future__ import annotations

import re
from datetime import date
from pathlib import Path
from typing import Any

import httpx
import zeep
import zeep.exceptions
from lxml import etree  # type: ignore[import-untyped]
from zeep.proxy import AsyncServiceProxy
from zeep.transports import AsyncTransport

from libs.flowcontrol.httpx import FlowControlTransport
from libs.flowcontrol.policy import Boundary
from services.workorders.domain import Address, Customer
from services.workorders.handlers import CustomersRefused, CustomersUnavailable

WSDL_PATH = Path(__file__).resolve().parents[3] / "contracts" / "wsdl" / "customers.wsdl"
BINDING = "{urn:gridhub:customers:v1}CustomerServiceBinding"
_CLIENT_FAULT = re.compile(rb"<faultcode>[^<]*Client\.")


def soap_failure(response: httpx.Response) -> bool:
    """Whether a response counts against the breaker: 429, and 5xx other than a SOAP Client.* fault."""
    if response.status_code == 429:
        return True
    if response.status_code < 500:
        return False
    response.read()  # the transport has the whole body in memory already
    return _CLIENT_FAULT.search(response.content[:4096]) is None


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _customer_of(reply: Any) -> Customer:
    customer = reply.customer
    contact = customer.contact
    address = contact.address
    return Customer(
        customer_id=str(customer.customerId),
        name=str(customer.name),
        email=_text(getattr(contact, "email", None)),
        phone=_text(getattr(contact, "phone", None)),
        address=Address(str(address.street), str(address.postcode), str(address.city), str(address.country)),
    )


class SoapCustomerDirectory:
    """`handlers.CustomerDirectory` calling ``GetMeterpointCustomer`` of the customers service."""

    def __init__(
        self,
        address: str,
        *,
        client: str,
        password: str,
        boundary: Boundary,
        inner: httpx.AsyncBaseTransport | None = None,
        wsdl: Path = WSDL_PATH,
    ) -> None:
        inner = inner or httpx.AsyncHTTPTransport()
        transport = FlowControlTransport(inner, boundary=boundary, is_failure=soap_failure)
        self.transport = transport
        # The boundary's timeout covers the whole exchange; httpx's own is only a backstop above it.
        backstop = (boundary.policy.timeout or 10.0) + 5.0
        self._http = httpx.AsyncClient(transport=transport, auth=(client, password), timeout=backstop)
        # zeep insists on a client for remote WSDLs; ours is a local file, so this one never connects.
        self._wsdl_http = httpx.Client()
        soap = zeep.AsyncClient(str(wsdl), transport=AsyncTransport(client=self._http, wsdl_client=self._wsdl_http))
        # zeep 4.3's AsyncClient.create_service returns a synchronous proxy; build the async one directly.
        self._service = AsyncServiceProxy(soap, soap.wsdl.bindings[BINDING], address=address)

    async def customer_at(self, meterpoint_id: str, on: date) -> Customer | None:
        """Who holds ``meterpoint_id`` on ``on``; None when nobody does."""
        try:
            reply = await self._service.GetMeterpointCustomer(meterpointId=meterpoint_id, onDate=on)
        except zeep.exceptions.Fault as fault:
            code = str(fault.code or "")
            if code.endswith("Client.NotFound"):
                return None
            if code.endswith("Client.Validation"):
                raise CustomersRefused(f"customers service refused the request ({code})") from fault
            raise CustomersUnavailable(f"customers service fault {code}") from fault
        except (httpx.HTTPError, zeep.exceptions.Error, etree.LxmlError, OSError) as error:
            raise CustomersUnavailable(f"customers service not reachable ({type(error).__name__})") from error
        return _customer_of(reply)

    async def aclose(self) -> None:
        """Close the HTTP clients."""
        await self._http.aclose()
        self._wsdl_http.close()  # it never connected (the WSDL is a local file)


__all__ = ["BINDING", "WSDL_PATH", "SoapCustomerDirectory", "soap_failure"]
