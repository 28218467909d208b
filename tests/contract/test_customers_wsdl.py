"""The committed WSDL is the contract: zeep, built from it, calls every operation and meets every fault."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import zeep
from lxml import etree

import services.customers
from libs.events import with_check_digit
from services.customers.entrypoints.soap_codec import WSDL_PATH, load_request_schema
from tests.integration.customers.support import (
    ServiceProcess,
    consumption_point,
    dev_clients,
    dev_password,
    fault_detail,
    person,
    soap_service,
)
from tests.tenants import TENANT_A

pytestmark = [pytest.mark.postgres]

GSRN = with_check_digit("57131318040000002")
EXCHANGE_GSRN = with_check_digit("57131318040000917")
SCHEMA = load_request_schema()


@pytest.fixture(scope="module")
async def service(pg_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ServiceProcess]:
    schema = f"t_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(pg_dsn)
    await conn.execute(f"CREATE SCHEMA {schema}")
    policy = {
        "quota": {"rate": 100, "burst": 100, "overrides": {"workorders": {"rate": 0.001, "burst": 1}}},
        "bulkhead": {"max_concurrent": 10, "max_wait": 0.5},
        "timeout": 10,
        "max_body_bytes": 262144,
    }
    env = {
        "CUSTOMERS_POSTGRES_DSN": pg_dsn,
        "CUSTOMERS_POSTGRES_SCHEMA": schema,
        "CUSTOMERS_RELAY_ENABLED": "false",
        "CUSTOMERS_POSTGRES_COMMAND_TIMEOUT": "1.0",
        "CUSTOMERS_BOUNDARIES__SOAP_INGRESS": json.dumps(policy),
        "CUSTOMERS_CLIENTS": json.dumps(dev_clients(a_reader=("reader", TENANT_A))),
    }
    process = ServiceProcess(env, tmp_path_factory.mktemp("customers") / "service.log")
    try:
        await asyncio.to_thread(process.start)
        process.env["TEST_SCHEMA"] = schema
        yield process
    finally:
        process.stop()
        await conn.execute(f"DROP SCHEMA {schema} CASCADE")
        await conn.close()


def test_the_service_serves_the_committed_wsdl_found_relative_to_its_package() -> None:
    # The wheel carries contracts/ beside the packages (pyproject.toml), so this path holds when installed too.
    package = Path(services.customers.__file__).resolve().parent
    assert package.parents[1] / "contracts" / "wsdl" / "customers.wsdl" == WSDL_PATH
    assert WSDL_PATH.is_file()


def test_the_served_wsdl_is_the_committed_one(service: ServiceProcess) -> None:
    served = httpx.get(f"{service.soap_url}?wsdl")
    assert served.status_code == 200
    assert served.headers["content-type"].startswith("text/xml")
    assert served.content == WSDL_PATH.read_bytes()
    zeep.Client(f"{service.soap_url}?wsdl")  # and a client can be built from the served one too


def test_every_operation_round_trips(service: ServiceProcess) -> None:
    soap = soap_service(service.soap_url)
    registered = soap.RegisterCustomer(
        kind="organisation",
        name="Fjordvarme A/S",
        contact={
            "email": "drift@Fjordvarme.DK",
            "phone": "+45 98 12 34 56",
            "address": {"street": "Havnevej 4", "postcode": "9000", "city": "Aalborg", "country": "DK"},
        },
    )
    assert registered.customerId.startswith("C-")
    assert registered.gridCompany == TENANT_A  # the grid company of the client that registered it
    assert (registered.version, registered.contact.email, registered.contact.phone) == (
        1,
        "drift@fjordvarme.dk",
        "+4598123456",
    )

    updated = soap.UpdateCustomer(customerId=registered.customerId, expectedVersion=1, **person("Fjordvarme ApS"))
    assert (updated.name, updated.version, updated.kind) == ("Fjordvarme ApS", 2, "person")

    meterpoint = soap.RegisterMeterpoint(**consumption_point(GSRN))
    assert (meterpoint.meterpointId, meterpoint.gridCompany, meterpoint.version) == (GSRN, TENANT_A, 1)
    assert (meterpoint.timeZone, meterpoint.dataSource.kind, meterpoint.dataSource.id) == (
        "Europe/Copenhagen",
        "head_end",
        "hes-north",
    )
    exchange = consumption_point(
        EXCHANGE_GSRN, type="exchange", settlementMethod=None, neighbourGridArea="791", resolution="PT1H"
    )
    moved = soap.UpdateMeterpoint(
        **{**consumption_point(GSRN, source=("ftp_partner", "mdm-partner")), "expectedVersion": 1}
    )
    assert (moved.version, moved.dataSource.kind) == (2, "ftp_partner")
    assert soap.GetMeterpoint(meterpointId=GSRN).version == 2
    soap.RegisterMeterpoint(**exchange)
    first = soap.ListMeterpoints(pageSize=1)
    assert ([m.meterpointId for m in first.meterpoint], first.nextAfterMeterpointId) == ([GSRN], GSRN)
    rest = soap.ListMeterpoints(afterMeterpointId=GSRN, pageSize=1)
    assert ([m.meterpointId for m in rest.meterpoint], rest.nextAfterMeterpointId) == ([EXCHANGE_GSRN], None)
    assert rest.meterpoint[0].neighbourGridArea == "791"
    assert rest.meterpoint[0].settlementMethod is None

    linked = soap.LinkMeterpoint(customerId=registered.customerId, meterpointId=GSRN, moveIn="2025-04-01")
    assert (linked.meterpointId, str(linked.moveIn), linked.moveOut) == (GSRN, "2025-04-01", None)

    holder = soap.GetMeterpointCustomer(meterpointId=GSRN, onDate="2025-05-01")
    assert holder.customer.customerId == registered.customerId

    unlinked = soap.UnlinkMeterpoint(customerId=registered.customerId, meterpointId=GSRN, moveOut="2025-09-30")
    assert str(unlinked.moveOut) == "2025-09-30"

    fetched = soap.GetCustomer(customerId=registered.customerId)
    assert fetched.customer.version == 2
    assert [(str(link.moveIn), str(link.moveOut)) for link in fetched.meterpointLink] == [("2025-04-01", "2025-09-30")]
    assert fetched.meterpointLinksTruncated is False

    for n in range(3):
        soap.RegisterCustomer(**person(f"Fjordvarme Kunde {n}"))
    page = soap.FindCustomers(name="fjordVARME", pageNumber=2, pageSize=2)
    assert (page.totalCount, page.pageNumber, page.pageSize, len(page.customer)) == (4, 2, 2, 2)
    by_postcode = soap.FindCustomers(postcode="8000")
    assert by_postcode.totalCount == 4


def expect_fault(call: Any, code: str, category: str) -> Any:
    with pytest.raises(zeep.exceptions.Fault) as fault:
        call()
    assert fault.value.code == f"soap:{code}"
    assert fault.value.message
    assert "Traceback" not in fault.value.message
    (node,) = list(fault.value.detail)
    assert SCHEMA.validate(node), SCHEMA.error_log  # the detail is the typed element the WSDL declares
    detail = fault_detail(fault.value)
    assert detail.category == category
    assert detail.correlationId
    return detail


async def test_every_fault_is_a_typed_soap_fault(service: ServiceProcess, pg_dsn: str) -> None:
    soap = soap_service(service.soap_url)
    customer = await asyncio.to_thread(soap.RegisterCustomer, **person())
    bad_postcode = {**person(), "contact": {"address": {**person()["contact"]["address"], "postcode": "80000"}}}

    def client_faults() -> None:
        detail = expect_fault(lambda: soap.RegisterCustomer(**bad_postcode), "Client.Validation", "Validation")
        assert [(v.field, v.message) for v in detail.violation] == [
            ("contact.address.postcode", "is not a valid DK postcode (expected e.g. 8000)")
        ]
        wrong_digit = GSRN[:17] + str((int(GSRN[17]) + 1) % 10)
        detail = expect_fault(
            lambda: soap.LinkMeterpoint(customerId=customer.customerId, meterpointId=wrong_digit, moveIn="2025-01-01"),
            "Client.Validation",
            "Validation",
        )
        assert "check digit" in detail.violation[0].message
        expect_fault(lambda: soap.GetCustomer(customerId="C-999999"), "Client.NotFound", "NotFound")
        detail = expect_fault(
            lambda: soap.UpdateCustomer(customerId=customer.customerId, expectedVersion=5, **person("Stale")),
            "Client.Conflict",
            "Conflict",
        )
        assert (detail.reason, detail.currentVersion) == ("version_conflict", 1)
        reader = soap_service(service.soap_url, "a-reader", password=dev_password("billing"))
        assert reader.GetCustomer(customerId=customer.customerId).customer.customerId == customer.customerId
        detail = expect_fault(
            lambda: reader.RegisterMeterpoint(**consumption_point(GSRN)), "Client.Authorization", "Authorization"
        )
        assert detail.reason == "role_required"
        intruder = soap_service(service.soap_url, password="wrong")
        expect_fault(
            lambda: intruder.GetCustomer(customerId=customer.customerId), "Client.Authentication", "Authentication"
        )
        throttled = soap_service(service.soap_url, "workorders")
        throttled.GetCustomer(customerId=customer.customerId)
        detail = expect_fault(lambda: throttled.GetCustomer(customerId=customer.customerId), "Server.Busy", "Busy")
        assert detail.reason == "quota_exceeded"
        assert detail.retryAfterSeconds >= 1

    await asyncio.to_thread(client_faults)

    blocker = await asyncpg.connect(pg_dsn, server_settings={"search_path": service.env["TEST_SCHEMA"]})
    try:
        async with blocker.transaction():
            # The database "hangs": the service gives up after its command timeout instead of hanging too.
            await blocker.execute("LOCK TABLE customers IN ACCESS EXCLUSIVE MODE")
            detail = await asyncio.to_thread(
                expect_fault,
                lambda: soap.GetCustomer(customerId=customer.customerId),
                "Server.Unavailable",
                "Unavailable",
            )
            assert detail.retryAfterSeconds == 1
    finally:
        await blocker.close()
    assert (await asyncio.to_thread(soap.GetCustomer, customerId=customer.customerId)).customer.version == 1


def test_faults_use_the_http_status_of_their_kind(service: ServiceProcess) -> None:
    envelope = (
        '<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/" xmlns:c="urn:gridhub:customers:v1">'
        "<soap:Body><c:GetCustomer><c:customerId>C-999999</c:customerId></c:GetCustomer></soap:Body></soap:Envelope>"
    )
    not_found = httpx.post(service.soap_url, content=envelope, auth=("billing", "billing-dev-only-password"))
    assert not_found.status_code == 500  # SOAP 1.1 / WS-I Basic Profile: faults travel with 500
    assert etree.fromstring(not_found.content).find("{*}Body/{*}Fault/faultcode").text == "soap:Client.NotFound"
    anonymous = httpx.post(service.soap_url, content=envelope)
    assert anonymous.status_code == 401
    update = envelope.replace("GetCustomer>", "UpdateCustomer>")
    forbidden = httpx.post(service.soap_url, content=update, auth=("a-reader", "billing-dev-only-password"))
    assert forbidden.status_code == 403  # authenticated, but the role may not write
    assert etree.fromstring(forbidden.content).find("{*}Body/{*}Fault/faultcode").text == "soap:Client.Authorization"
