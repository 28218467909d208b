"""The customers SOAP edge over real sockets (issue 14): login limits keyed by the real client, and a fuzz.

13: password checks are limited per client address before authentication. Behind the ingress every caller's peer
is the ingress, so the address must come from ``X-Forwarded-For``, and only when the peer is a trusted proxy:
one client guessing passwords spends its own checks, not its neighbour's, and a client connecting directly cannot
spend someone else's by naming them in the header.
Fuzz: malformed envelopes (generated, not hand-picked) are answered with SOAP faults only, never a 5xx page
outside a fault, and the service keeps answering.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable

import asyncpg
import httpx
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from lxml import etree
from prometheus_client import CollectorRegistry

from libs.flowcontrol.policy import QuotaSettings
from services.customers.app import create_app
from services.customers.entrypoints.soap import OPERATIONS
from services.customers.settings import CustomersSettings
from tests.integration.customers.support import dev_password
from tests.integration.http_support import free_port, served, service_process

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


# --- the fuzz: a module-scoped service process, since Hypothesis drives a blocking client --------------------------

VALID = ENVELOPE.format(FIND).encode()
TNS = "urn:gridhub:customers:v1"
# Characters XML 1.0 can carry (no controls, surrogates or non-characters), so the trees below are well formed.
XML_TEXT = st.characters(blacklist_categories=("Cs", "Cc", "Cn"))
XML_NAME = st.from_regex(r"[A-Za-z_][A-Za-z0-9._-]{0,12}", fullmatch=True)
NAMESPACES = st.sampled_from(
    [
        "",
        "http://schemas.xmlsoap.org/soap/envelope/",
        "urn:gridhub:customers:v1",
        "http://www.w3.org/2003/05/soap-envelope",
        "urn:x",
    ]
)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """The valid envelope with a few bytes deleted, inserted or replaced, or cut short."""
    body = bytearray(VALID)
    for _ in range(draw(st.integers(1, 6))):
        position = draw(st.integers(0, len(body) - 1))
        match draw(st.sampled_from(["delete", "insert", "replace", "truncate"])):
            case "delete":
                del body[position]
            case "insert":
                body[position:position] = draw(st.binary(min_size=1, max_size=8))
            case "replace":
                body[position] = draw(st.integers(0, 255))
            case _:
                del body[position:]
        if not body:
            body = bytearray(b"<")
    return bytes(body)


@st.composite
def foreign_trees(draw: st.DrawFn) -> bytes:
    """Well-formed XML that is no envelope of ours: other names, namespaces, nesting, text and attributes."""

    def element(depth: int) -> etree._Element:
        namespace = draw(NAMESPACES)
        name = draw(XML_NAME)
        node = etree.Element(f"{{{namespace}}}{name}" if namespace else name)
        for attribute in draw(st.lists(XML_NAME, max_size=2, unique=True)):
            node.set(attribute, draw(st.text(XML_TEXT, max_size=10)))
        node.text = draw(st.text(XML_TEXT, max_size=20))
        if depth < 4:
            for _ in range(draw(st.integers(0, 3))):
                node.append(element(depth + 1))
        return node

    root = element(0)
    if draw(st.booleans()):
        # Inside a real Envelope/Body, so the dispatch and the schema check see it.
        envelope = etree.fromstring(ENVELOPE.format("").encode())
        envelope[0].append(root)
        root = envelope
    return bytes(etree.tostring(root, xml_declaration=draw(st.booleans()), encoding="utf-8"))


@st.composite
def operations_with_junk(draw: st.DrawFn) -> bytes:
    """A real operation of ours with made-up children: the dispatch accepts it, the schema check must refuse it."""
    operation = etree.Element(f"{{{TNS}}}{draw(st.sampled_from(sorted(OPERATIONS)))}")
    for _ in range(draw(st.integers(0, 4))):
        child = etree.SubElement(operation, f"{{{TNS}}}{draw(XML_NAME)}")
        child.text = draw(st.text(XML_TEXT, max_size=30))
    envelope = etree.fromstring(ENVELOPE.format("").encode())
    envelope[0].append(operation)
    return bytes(etree.tostring(envelope, encoding="utf-8"))


HEADERS = st.fixed_dictionaries(
    {"Content-Type": st.sampled_from(["text/xml; charset=utf-8", "text/xml", "application/xml", "text/plain"])},
    optional={
        "SOAPAction": st.sampled_from(['""', '"urn:gridhub:customers:v1#FindCustomers"', '"urn:x#Nope"', "garbage"])
    },
)
BODIES = st.one_of(st.binary(max_size=512), mutated(), foreign_trees(), operations_with_junk())


@pytest.fixture(scope="module")
async def soap_url(pg_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    schema = f"t_{uuid.uuid4().hex[:12]}"
    port = free_port()
    env = {
        "CUSTOMERS_POSTGRES_DSN": pg_dsn,
        "CUSTOMERS_POSTGRES_SCHEMA": schema,
        "CUSTOMERS_RELAY_ENABLED": "false",
        "CUSTOMERS_HTTP_PORT": str(port),
        # One client sending as fast as it can: the quota is not what the fuzz is about.
        "CUSTOMERS_BOUNDARIES__SOAP_INGRESS__QUOTA__RATE": "100000",
        "CUSTOMERS_BOUNDARIES__SOAP_INGRESS__QUOTA__BURST": "100000",
    }
    conn = await asyncpg.connect(pg_dsn)
    log = tmp_path_factory.mktemp("customers") / "service.log"
    try:
        async with service_process("customers", env, port, log) as base_url:
            yield base_url + SOAP_PATH
    finally:
        await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await conn.close()


@given(body=BODIES, headers=HEADERS)
@settings(max_examples=300, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_malformed_envelopes_are_answered_with_soap_faults_only(
    soap_url: str, body: bytes, headers: dict[str, str]
) -> None:
    response = httpx.post(
        soap_url, content=body, headers=headers, auth=("billing", dev_password("billing")), timeout=10
    )
    if response.status_code == 200:
        # A mutation that left a valid call (a changed letter of the name): a real answer, no fault.
        root = etree.fromstring(response.content)
        assert root.tag == "{http://schemas.xmlsoap.org/soap/envelope/}Envelope"
        assert root.find("{*}Body/{*}Fault") is None
        event("200 answered")
        return
    code, reason = fault_of(response)
    event(f"{response.status_code} {code} {reason}")  # --hypothesis-show-statistics: what the fuzz reached
    assert response.status_code in (413, 500), (response.status_code, code, reason)
    # The request's fault, never the server's: nothing malformed reaches an internal error.
    assert code.startswith(("soap:Client", "soap:VersionMismatch")), (code, reason, body[:200])
    assert reason, "every fault names its reason"
    assert "Traceback" not in response.text
