"""Hostile requests against the real service process: faults, no expansion, no file access, no memory growth."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import httpx
import pytest
import zeep
from lxml import etree

from tests.integration.customers.support import ServiceProcess, dev_password, fault_detail, person, soap_service

pytestmark = [pytest.mark.postgres]

AUTH = ("billing", dev_password("billing"))
ENVELOPE = (
    '<?xml version="1.0" encoding="utf-8"?>'
    '<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/" xmlns:c="urn:gridhub:customers:v1">'
    "<soap:Body>{}</soap:Body></soap:Envelope>"
)
FIND = "<c:FindCustomers><c:name>Hansen</c:name></c:FindCustomers>"
MIB = 1024 * 1024


@pytest.fixture(scope="module")
async def service(pg_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ServiceProcess]:
    schema = f"t_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(pg_dsn)
    await conn.execute(f"CREATE SCHEMA {schema}")
    env = {"CUSTOMERS_POSTGRES_DSN": pg_dsn, "CUSTOMERS_POSTGRES_SCHEMA": schema, "CUSTOMERS_RELAY_ENABLED": "false"}
    process = ServiceProcess(env, tmp_path_factory.mktemp("customers") / "service.log")
    try:
        await asyncio.to_thread(process.start)
        yield process
    finally:
        process.stop()
        await conn.execute(f"DROP SCHEMA {schema} CASCADE")
        await conn.close()


@pytest.fixture
async def http(service: ServiceProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=service.base_url, timeout=30) as client:
        yield client


def fault_of(response: httpx.Response) -> tuple[str, str, str]:
    """(faultcode, faultstring, detail reason) of a fault response."""
    root = etree.fromstring(response.content)
    fault = root.find("{*}Body/{*}Fault")
    assert fault is not None, response.text[:500]
    reason = fault.findtext("detail/{*}CustomerServiceFault/{*}reason")
    return fault.findtext("faultcode") or "", fault.findtext("faultstring") or "", reason or ""


async def still_answers(http: httpx.AsyncClient) -> None:
    response = await http.post("/soap/customers", content=ENVELOPE.format(FIND), auth=AUTH)
    assert response.status_code == 200, response.text[:500]
    assert b"FindCustomersResponse" in response.content


def billion_laughs() -> bytes:
    entities = '<!ENTITY lol0 "lol">' + "".join(f'<!ENTITY lol{i} "{f"&lol{i - 1};" * 10}">' for i in range(1, 10))
    return (
        f'<?xml version="1.0"?><!DOCTYPE lolz [{entities}]>'.encode()
        + ENVELOPE.format("<c:GetCustomer><c:customerId>&lol9;</c:customerId></c:GetCustomer>")
        .split("?>", 1)[1]
        .encode()
    )


def xxe(secret: Path) -> bytes:
    return (
        f'<?xml version="1.0"?><!DOCTYPE e [<!ENTITY xxe SYSTEM "file://{secret}">]>'
        + ENVELOPE.format("<c:GetCustomer><c:customerId>&xxe;</c:customerId></c:GetCustomer>").split("?>", 1)[1]
    ).encode()


def xxe_parameter_entity(secret: Path) -> bytes:
    return (
        f'<?xml version="1.0"?><!DOCTYPE e [<!ENTITY % p SYSTEM "file://{secret}"> %p;]>'
        + ENVELOPE.format(FIND).split("?>", 1)[1]
    ).encode()


def ten_mib_envelope() -> bytes:
    padding = "A" * (10 * MIB)
    return ENVELOPE.format(f"<c:FindCustomers><c:name>{padding}</c:name></c:FindCustomers>").encode()


async def in_chunks(data: bytes, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    """The body as a stream without Content-Length (chunked transfer encoding)."""
    for offset in range(0, len(data), size):
        yield data[offset : offset + size]


async def test_hostile_payloads_get_faults_and_the_service_keeps_answering(
    service: ServiceProcess, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    secret = tmp_path / "secret.txt"
    marker = f"XXE-MARKER-{uuid.uuid4().hex}"
    secret.write_text(marker)
    for _ in range(20):  # warm up, so that the peak memory below measures the attacks only
        await still_answers(http)
    await http.post("/soap/customers", content=b"<not-xml", auth=AUTH)
    baseline = service.peak_rss_kib()

    big = ten_mib_envelope()
    deep = ENVELOPE.format("<c:x>" * 5000 + "</c:x>" * 5000).encode()
    cases: list[tuple[str, bytes | AsyncIterator[bytes], int, str]] = [
        ("billion laughs", billion_laughs(), 500, "dtd_forbidden"),
        ("XXE", xxe(secret), 500, "dtd_forbidden"),
        ("XXE via a parameter entity", xxe_parameter_entity(secret), 500, "dtd_forbidden"),
        ("10 MiB with Content-Length", big, 413, "request_too_large"),
        ("10 MiB chunked", in_chunks(big), 413, "request_too_large"),
        ("5000 levels deep", deep, 500, "too_deep"),
    ]
    for name, body, status, reason in cases:
        response = await http.post("/soap/customers", content=body, auth=AUTH, headers={"Content-Type": "text/xml"})
        assert response.status_code == status, name
        code, _, detail_reason = fault_of(response)
        assert (code, detail_reason) == ("soap:Client.Validation", reason), name
        assert marker not in response.text, name
        assert "lollollol" not in response.text, name
        assert "Traceback" not in response.text, name
        await still_answers(http)

    growth_mib = (service.peak_rss_kib() - baseline) / 1024
    assert growth_mib < 8, f"peak memory grew by {growth_mib:.1f} MiB"  # a buffered 10 MiB body would show


async def test_unauthenticated_calls_are_refused(service: ServiceProcess, http: httpx.AsyncClient) -> None:
    wrong = [None, ("billing", "wrong-password"), ("nobody", dev_password("nobody")), ("bad name", "x")]
    for auth in wrong:
        response = await http.post("/soap/customers", content=ENVELOPE.format(FIND), auth=auth)
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"].startswith("Basic ")
        assert fault_of(response)[0] == "soap:Client.Authentication"
    # Refused before the body is read: an anonymous 10 MiB upload costs nothing to refuse.
    response = await http.post("/soap/customers", content=in_chunks(ten_mib_envelope()))
    assert response.status_code == 401
    # The contract itself is public.
    assert (await http.get("/soap/customers?wsdl")).status_code == 200

    def zeep_with_a_wrong_password() -> None:
        soap = soap_service(service.soap_url, password="not-the-password")
        with pytest.raises(zeep.exceptions.Fault) as refused:
            soap.RegisterCustomer(**person())
        assert refused.value.code == "soap:Client.Authentication"
        assert fault_detail(refused.value).category == "Authentication"

    await asyncio.to_thread(zeep_with_a_wrong_password)
    await still_answers(http)
