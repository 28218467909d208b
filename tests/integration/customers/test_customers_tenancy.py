"""Tenancy over real HTTP: the customers service as a process, two grid companies' client systems, zeep from the WSDL.

Grid company A has an admin (a-admin), an operator (a-operator) and a reader (a-reader); B has an admin (b-admin);
the platform operator (platform) sees both. Meterpoint master data goes to a Kafka topic of this module's own,
read back with aiokafka and checked against the committed event schemas.
"""

# mypy: disable-error-code="no-untyped-call"

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import pytest
import zeep
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from libs.events import with_check_digit
from libs.platform.audit import list_audit
from tests.integration.customers.support import (
    ServiceProcess,
    consumption_point,
    dev_clients,
    dev_password,
    fault_detail,
    person,
    soap_service,
)
from tests.integration.customers.test_customers_outbox import check_against_contract
from tests.tenants import EIC_TENANT, TENANT_A, TENANT_B

pytestmark = [pytest.mark.postgres, pytest.mark.kafka]

CLIENTS = dev_clients(
    a_admin=("admin", TENANT_A),
    a_operator=("operator", TENANT_A),
    a_reader=("reader", TENANT_A),
    b_admin=("admin", TENANT_B),
    eic_admin=("admin", EIC_TENANT),
    platform=("platform", None),
)
_serials = iter(range(10_000, 100_000))


def new_gsrn() -> str:
    """A meterpoint id no other test of this module uses."""
    return with_check_digit(f"5713131899{next(_serials):07d}")


class Tenancy:
    """The running service, its topics and a zeep proxy per client system."""

    def __init__(self, service: ServiceProcess, meterpoints_topic: str, customers_topic: str, bootstrap: str) -> None:
        self.service = service
        self.meterpoints_topic = meterpoints_topic
        self.customers_topic = customers_topic
        self.bootstrap = bootstrap
        self._proxies: dict[str, Any] = {}

    def soap(self, client: str) -> Any:
        if client not in self._proxies:
            self._proxies[client] = soap_service(self.service.soap_url, client, password=dev_password("billing"))
        return self._proxies[client]


@pytest.fixture(scope="module")
async def tenancy(
    pg_dsn: str, kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Tenancy]:
    schema = f"t_{uuid.uuid4().hex[:12]}"
    suffix = uuid.uuid4().hex[:10]
    topics = [f"meterpoints.{suffix}", f"customers.{suffix}"]
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    await admin.create_topics([NewTopic(name=name, num_partitions=6, replication_factor=1) for name in topics])
    conn = await asyncpg.connect(pg_dsn)
    await conn.execute(f"CREATE SCHEMA {schema}")
    env = {
        "CUSTOMERS_POSTGRES_DSN": pg_dsn,
        "CUSTOMERS_POSTGRES_SCHEMA": schema,
        "GRIDHUB_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "CUSTOMERS_RELAY_POLL_INTERVAL": "0.2",
        "CUSTOMERS_METERPOINTS_TOPIC": topics[0],
        "CUSTOMERS_EVENTS_TOPIC": topics[1],
        "CUSTOMERS_CLIENTS": json.dumps(CLIENTS),
        # A generous quota: this module calls a lot from few clients.
        "CUSTOMERS_BOUNDARIES__SOAP_INGRESS__QUOTA": json.dumps({"rate": 1000, "burst": 1000}),
    }
    process = ServiceProcess(env, tmp_path_factory.mktemp("customers-tenancy") / "service.log")
    try:
        await asyncio.to_thread(process.start)
        process.env["TEST_SCHEMA"] = schema
        yield Tenancy(process, topics[0], topics[1], kafka_bootstrap)
    finally:
        process.stop()
        await conn.execute(f"DROP SCHEMA {schema} CASCADE")
        await conn.close()
        await admin.delete_topics(topics)
        await admin.close()


async def events_of(tenancy: Tenancy, topic: str, done: Callable[[list[dict[str, Any]]], bool]) -> list[Any]:
    """Every event on ``topic`` (from the start, checked against its committed schema) once ``done`` holds."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=tenancy.bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    events: list[dict[str, Any]] = []
    try:
        async with asyncio.timeout(30):
            while not done(events):
                for records in (await consumer.getmany(timeout_ms=200)).values():
                    events.extend(check_against_contract(record.value) for record in records)
    finally:
        await consumer.stop()
    return events


def fault_of(call: Callable[[], Any]) -> tuple[str, Any, str]:
    """(faultcode, typed detail, message) of a call that must fail."""
    with pytest.raises(zeep.exceptions.Fault) as raised:
        call()
    return raised.value.code, fault_detail(raised.value), raised.value.message


def same_fault_as_unknown(call_for: Callable[[str], Any], hidden: str, unknown: str) -> None:
    """A call naming ``hidden`` (another grid company's id) fails exactly as one naming the ``unknown`` id."""
    code, detail, message = fault_of(lambda: call_for(hidden))
    unknown_code, unknown_detail, unknown_message = fault_of(lambda: call_for(unknown))
    assert (code, detail.category, detail.reason) == (unknown_code, unknown_detail.category, unknown_detail.reason)
    assert code == "soap:Client.NotFound"
    assert message.replace(hidden, "<id>") == unknown_message.replace(unknown, "<id>")
    assert detail.violation == unknown_detail.violation == []


async def test_meterpoints_are_registered_updated_read_and_listed_and_published_in_full(tenancy: Tenancy) -> None:
    consumption, exchange = new_gsrn(), new_gsrn()
    admin = tenancy.soap("a-admin")

    def calls() -> tuple[Any, ...]:
        registered = admin.RegisterMeterpoint(**consumption_point(consumption, timeZone="Europe/Copenhagen"))
        again = admin.RegisterMeterpoint(**consumption_point(consumption, timeZone="Europe/Copenhagen"))
        border = admin.RegisterMeterpoint(
            **consumption_point(
                exchange,
                type="exchange",
                settlementMethod=None,
                neighbourGridArea="791",
                source=None,
                resolution="PT1H",
            )
        )
        updated = admin.UpdateMeterpoint(
            expectedVersion=1,
            **consumption_point(
                consumption,
                source=("device", consumption),
                connection={"state": "disconnected", "since": "2025-02-01"},
            ),
        )
        unchanged = admin.UpdateMeterpoint(
            expectedVersion=2,
            **consumption_point(
                consumption,
                source=("device", consumption),
                connection={"state": "disconnected", "since": "2025-02-01"},
            ),
        )
        fetched = tenancy.soap("a-reader").GetMeterpoint(meterpointId=consumption)
        return registered, again, border, updated, unchanged, fetched

    registered, again, border, updated, unchanged, fetched = await asyncio.to_thread(calls)
    assert (registered.gridCompany, registered.version, registered.type) == (TENANT_A, 1, "consumption")
    assert again.version == 1  # the same registration again: a retry, answered with the stored record
    assert (border.neighbourGridArea, border.settlementMethod, border.dataSource) == ("791", None, None)
    assert (updated.version, updated.connection.state, updated.dataSource.kind) == (2, "disconnected", "device")
    assert unchanged.version == 2  # nothing changed: no new version
    assert (fetched.version, fetched.dataSource.id, str(fetched.connection.since)) == (2, consumption, "2025-02-01")

    mine = {consumption, exchange}
    events = await events_of(
        tenancy, tenancy.meterpoints_topic, lambda seen: len([e for e in seen if e["subject"] in mine]) >= 3
    )
    ours = [event for event in events if event["subject"] in mine]
    assert [(e["type"], e["subject"], e["data"]["version"]) for e in ours if e["subject"] == consumption] == [
        ("gridhub.meterpoint.registered", consumption, 1),
        ("gridhub.meterpoint.updated", consumption, 2),
    ]
    latest = next(e["data"] for e in ours if e["subject"] == consumption and e["data"]["version"] == 2)
    assert latest == {
        "meterpoint_id": consumption,
        "grid_company": TENANT_A,
        "grid_area": "804",
        "time_zone": "Europe/Copenhagen",
        "type": "consumption",
        "neighbour_grid_area": None,
        "resolution": "PT15M",
        "settlement_method": "flex",
        "connection": {"state": "disconnected", "since": "2025-02-01"},
        "data_source": {"kind": "device", "id": consumption},
        "version": 2,
    }
    border_event = next(e["data"] for e in ours if e["subject"] == exchange)
    assert (border_event["type"], border_event["neighbour_grid_area"], border_event["data_source"]) == (
        "exchange",
        "791",
        None,
    )
    assert len([e for e in ours if e["subject"] == consumption]) == 2  # the retry and the no-op published nothing


async def test_lists_hold_only_the_callers_grid_company_and_the_platform_sees_both(tenancy: Tenancy) -> None:
    a_points = sorted(new_gsrn() for _ in range(3))
    b_point = new_gsrn()

    def calls() -> None:
        for gsrn in a_points:
            tenancy.soap("a-admin").RegisterMeterpoint(**consumption_point(gsrn, gridArea="A-LIST"))
        tenancy.soap("b-admin").RegisterMeterpoint(**consumption_point(b_point, gridArea="A-LIST"))

        reader = tenancy.soap("a-reader")
        first = reader.ListMeterpoints(gridArea="A-LIST", pageSize=2)
        assert [m.meterpointId for m in first.meterpoint] == a_points[:2]
        assert first.nextAfterMeterpointId == a_points[1]
        rest = reader.ListMeterpoints(gridArea="A-LIST", afterMeterpointId=first.nextAfterMeterpointId, pageSize=2)
        assert [m.meterpointId for m in rest.meterpoint] == a_points[2:]
        assert rest.nextAfterMeterpointId is None
        # Naming B's grid company does not open B's list: it is simply empty.
        assert reader.ListMeterpoints(gridCompany=TENANT_B, gridArea="A-LIST").meterpoint == []

        platform = tenancy.soap("platform")
        both = platform.ListMeterpoints(gridArea="A-LIST")
        assert sorted(m.meterpointId for m in both.meterpoint) == sorted([*a_points, b_point])
        only_b = platform.ListMeterpoints(gridArea="A-LIST", gridCompany=TENANT_B)
        assert [(m.meterpointId, m.gridCompany) for m in only_b.meterpoint] == [(b_point, TENANT_B)]

        name = f"Tenancy {uuid.uuid4().hex[:8]}"
        a_customer = tenancy.soap("a-operator").RegisterCustomer(**person(f"{name} A"))
        b_customer = tenancy.soap("b-admin").RegisterCustomer(**person(f"{name} B"))
        assert (a_customer.gridCompany, b_customer.gridCompany) == (TENANT_A, TENANT_B)
        found = reader.FindCustomers(name=name)
        assert (found.totalCount, [c.customerId for c in found.customer]) == (1, [a_customer.customerId])
        assert platform.FindCustomers(name=name).totalCount == 2

    await asyncio.to_thread(calls)


async def test_another_grid_companys_records_answer_exactly_like_unknown_ids(tenancy: Tenancy) -> None:
    b_point, b_linked, a_point, unknown_point = new_gsrn(), new_gsrn(), new_gsrn(), new_gsrn()

    def calls() -> None:
        b_admin = tenancy.soap("b-admin")
        b_admin.RegisterMeterpoint(**consumption_point(b_point))
        b_admin.RegisterMeterpoint(**consumption_point(b_linked))
        b_customer = b_admin.RegisterCustomer(**person("Sydnet Kunde"))
        b_admin.LinkMeterpoint(customerId=b_customer.customerId, meterpointId=b_linked, moveIn="2025-01-01")
        tenancy.soap("a-admin").RegisterMeterpoint(**consumption_point(a_point))
        a_customer = tenancy.soap("a-operator").RegisterCustomer(**person("Nordgrid Kunde"))
        hidden, unknown = b_customer.customerId, "C-999999999"

        reader, operator, admin = tenancy.soap("a-reader"), tenancy.soap("a-operator"), tenancy.soap("a-admin")
        same_fault_as_unknown(lambda gsrn: reader.GetMeterpoint(meterpointId=gsrn), b_point, unknown_point)
        same_fault_as_unknown(lambda cid: reader.GetCustomer(customerId=cid), hidden, unknown)
        same_fault_as_unknown(
            lambda gsrn: reader.GetMeterpointCustomer(meterpointId=gsrn, onDate="2025-06-01"), b_linked, unknown_point
        )
        same_fault_as_unknown(
            lambda cid: operator.UpdateCustomer(customerId=cid, expectedVersion=1, **person("X")), hidden, unknown
        )
        same_fault_as_unknown(
            lambda cid: operator.LinkMeterpoint(customerId=cid, meterpointId=a_point, moveIn="2025-01-01"),
            hidden,
            unknown,
        )
        same_fault_as_unknown(
            lambda cid: operator.UnlinkMeterpoint(customerId=cid, meterpointId=b_linked, moveOut="2025-12-31"),
            hidden,
            unknown,
        )
        # A's own customer cannot be moved in at B's meterpoint: to A, B's meterpoint does not exist.
        same_fault_as_unknown(
            lambda gsrn: operator.LinkMeterpoint(
                customerId=a_customer.customerId, meterpointId=gsrn, moveIn="2025-01-01"
            ),
            b_point,
            unknown_point,
        )
        # Even with a version that would be stale, B's meterpoint is "not found", not "conflict".
        same_fault_as_unknown(
            lambda gsrn: admin.UpdateMeterpoint(expectedVersion=9, **consumption_point(gsrn)), b_point, unknown_point
        )
        # And B's data is untouched.
        assert b_admin.GetMeterpoint(meterpointId=b_point).version == 1
        assert b_admin.GetMeterpointCustomer(meterpointId=b_linked, onDate="2025-06-01").customer.customerId == hidden

    await asyncio.to_thread(calls)


async def test_a_client_acts_for_its_own_grid_company_only(tenancy: Tenancy) -> None:
    a_point, b_point, platform_point = new_gsrn(), new_gsrn(), new_gsrn()

    def calls() -> None:
        admin = tenancy.soap("a-admin")
        code, detail, _ = fault_of(lambda: admin.RegisterMeterpoint(gridCompany=TENANT_B, **consumption_point(b_point)))
        assert (code, detail.category, detail.reason) == (
            "soap:Client.Authorization",
            "Authorization",
            "other_grid_company",
        )
        code, detail, _ = fault_of(lambda: admin.RegisterCustomer(gridCompany=TENANT_B, **person()))
        assert (code, detail.reason) == ("soap:Client.Authorization", "other_grid_company")
        # Naming its own grid company is fine.
        assert admin.RegisterMeterpoint(gridCompany=TENANT_A, **consumption_point(a_point)).gridCompany == TENANT_A
        code, detail, _ = fault_of(
            lambda: admin.UpdateMeterpoint(expectedVersion=1, gridCompany=TENANT_B, **consumption_point(a_point))
        )
        assert (code, detail.reason) == ("soap:Client.Authorization", "other_grid_company")

        # The platform names the grid company, and may move a meterpoint to another one.
        platform = tenancy.soap("platform")
        code, detail, _ = fault_of(lambda: platform.RegisterMeterpoint(**consumption_point(platform_point)))
        assert (code, [v.field for v in detail.violation]) == ("soap:Client.Validation", ["gridCompany"])
        assert platform.RegisterMeterpoint(gridCompany=EIC_TENANT, **consumption_point(platform_point)).gridCompany == (
            EIC_TENANT
        )
        assert tenancy.soap("eic-admin").GetMeterpoint(meterpointId=platform_point).gridCompany == EIC_TENANT
        moved = platform.UpdateMeterpoint(expectedVersion=1, gridCompany=TENANT_A, **consumption_point(platform_point))
        assert (moved.gridCompany, moved.version) == (TENANT_A, 2)
        assert tenancy.soap("a-reader").GetMeterpoint(meterpointId=platform_point).version == 2

        # Only the platform sees both sides of a cross-company pair, and it cannot link them either.
        b_customer = tenancy.soap("b-admin").RegisterCustomer(**person("Sydnet Kunde"))
        code, detail, _ = fault_of(
            lambda: platform.LinkMeterpoint(customerId=b_customer.customerId, meterpointId=a_point, moveIn="2025-01-01")
        )
        assert (code, detail.reason) == ("soap:Client.Conflict", "other_grid_company")

    await asyncio.to_thread(calls)


async def test_a_reader_gets_an_authorization_fault_on_every_write_and_an_operator_on_master_data(
    tenancy: Tenancy,
) -> None:
    gsrn = new_gsrn()

    def calls() -> None:
        tenancy.soap("a-admin").RegisterMeterpoint(**consumption_point(gsrn))
        customer = tenancy.soap("a-operator").RegisterCustomer(**person())
        reader = tenancy.soap("a-reader")
        writes: list[Callable[[], Any]] = [
            lambda: reader.RegisterCustomer(**person()),
            lambda: reader.UpdateCustomer(customerId=customer.customerId, expectedVersion=1, **person("Y")),
            lambda: reader.LinkMeterpoint(customerId=customer.customerId, meterpointId=gsrn, moveIn="2025-01-01"),
            lambda: reader.UnlinkMeterpoint(customerId=customer.customerId, meterpointId=gsrn, moveOut="2025-01-01"),
            lambda: reader.RegisterMeterpoint(**consumption_point(new_gsrn())),
            lambda: reader.UpdateMeterpoint(expectedVersion=1, **consumption_point(gsrn)),
        ]
        for write in writes:
            code, detail, message = fault_of(write)
            assert (code, detail.category, detail.reason) == (
                "soap:Client.Authorization",
                "Authorization",
                "role_required",
            )
            assert "needs the" in message
        operator = tenancy.soap("a-operator")
        code, detail, _ = fault_of(lambda: operator.UpdateMeterpoint(expectedVersion=1, **consumption_point(gsrn)))
        assert (code, detail.reason) == ("soap:Client.Authorization", "role_required")
        # ... while it may move customers in: its daily work.
        operator.LinkMeterpoint(customerId=customer.customerId, meterpointId=gsrn, moveIn="2025-01-01")
        assert reader.GetMeterpointCustomer(meterpointId=gsrn, onDate="2025-02-01").customer.customerId == (
            customer.customerId
        )
        assert (
            tenancy.soap("a-admin").GetMeterpoint(meterpointId=gsrn).version == 1
        )  # the refused writes changed nothing

    await asyncio.to_thread(calls)


@pytest.mark.parametrize(
    ("changes", "fields"),
    [
        ({"type": "exchange", "settlementMethod": None}, ["neighbourGridArea"]),
        ({"type": "exchange", "settlementMethod": None, "neighbourGridArea": "804"}, ["neighbourGridArea"]),
        ({"type": "exchange", "neighbourGridArea": "791"}, ["settlementMethod"]),
        ({"neighbourGridArea": "791"}, ["neighbourGridArea"]),
        ({"settlementMethod": None}, ["settlementMethod"]),
        ({"gridArea": "north"}, ["gridArea"]),
        ({"timeZone": "Europe/Atlantis"}, ["timeZone"]),
        ({"dataSource": {"kind": "device", "id": "571313180400000025"}}, ["dataSource.id"]),
        ({"dataSource": {"kind": "head_end", "id": "no spaces"}}, ["dataSource.id"]),
        ({"connection": {"state": "connected", "since": "2025-02-30"}}, ["connection.since"]),
        ({"resolution": "P1D"}, ["resolution"]),
    ],
)
async def test_invalid_master_data_is_refused_naming_the_field(
    tenancy: Tenancy, changes: dict[str, Any], fields: list[str]
) -> None:
    gsrn = new_gsrn()
    admin = tenancy.soap("a-admin")
    code, detail, _ = await asyncio.to_thread(
        fault_of, lambda: admin.RegisterMeterpoint(**consumption_point(gsrn, **changes))
    )
    assert (code, detail.category) == ("soap:Client.Validation", "Validation")
    assert [violation.field for violation in detail.violation] == fields
    code, _, _ = await asyncio.to_thread(fault_of, lambda: admin.GetMeterpoint(meterpointId=gsrn))
    assert code == "soap:Client.NotFound"  # nothing was stored


async def test_check_digits_of_gsrns_and_grid_companies_are_refused(tenancy: Tenancy) -> None:
    gsrn = new_gsrn()
    wrong_gsrn = gsrn[:17] + str((int(gsrn[17]) + 1) % 10)
    admin, platform = tenancy.soap("a-admin"), tenancy.soap("platform")

    def calls() -> None:
        code, detail, _ = fault_of(lambda: admin.RegisterMeterpoint(**consumption_point(wrong_gsrn)))
        assert (code, [v.field for v in detail.violation]) == ("soap:Client.Validation", ["meterpointId"])
        assert "check digit" in detail.violation[0].message
        code, detail, _ = fault_of(lambda: admin.GetMeterpoint(meterpointId=wrong_gsrn))
        assert (code, detail.violation[0].field) == ("soap:Client.Validation", "meterpointId")
        for bad, expected in [("5790000000013", "GLN check digit"), ("10X-GRIDHUB-A--8", "EIC check character")]:
            code, detail, _ = fault_of(
                lambda bad=bad: platform.RegisterMeterpoint(gridCompany=bad, **consumption_point(gsrn))
            )
            assert (code, detail.violation[0].field) == ("soap:Client.Validation", "gridCompany")
            assert expected in detail.violation[0].message
        code, detail, _ = fault_of(lambda: platform.RegisterCustomer(gridCompany="5790000000013", **person()))
        assert (code, detail.violation[0].field) == ("soap:Client.Validation", "gridCompany")
        # Every violation of one request at once: a wrong GSRN and a missing neighbour area together.
        exchange = consumption_point(wrong_gsrn, type="exchange", settlementMethod=None)
        code, detail, _ = fault_of(lambda: admin.RegisterMeterpoint(**exchange))
        assert sorted(v.field for v in detail.violation) == ["meterpointId", "neighbourGridArea"]

    await asyncio.to_thread(calls)


async def test_a_second_registration_and_a_stale_update_are_conflicts(tenancy: Tenancy) -> None:
    gsrn, b_gsrn = new_gsrn(), new_gsrn()

    def calls() -> None:
        admin = tenancy.soap("a-admin")
        admin.RegisterMeterpoint(**consumption_point(gsrn))
        code, detail, _ = fault_of(lambda: admin.RegisterMeterpoint(**consumption_point(gsrn, resolution="PT1H")))
        assert (code, detail.reason) == ("soap:Client.Conflict", "meterpoint_already_registered")
        # The same answer for a GSRN another grid company registered (a GSRN is unique, and nothing of it is shown).
        tenancy.soap("b-admin").RegisterMeterpoint(**consumption_point(b_gsrn))
        code, detail, message = fault_of(lambda: admin.RegisterMeterpoint(**consumption_point(b_gsrn)))
        assert (code, detail.reason) == ("soap:Client.Conflict", "meterpoint_already_registered")
        assert TENANT_B not in message
        admin.UpdateMeterpoint(expectedVersion=1, **consumption_point(gsrn, resolution="PT1H"))
        code, detail, _ = fault_of(lambda: admin.UpdateMeterpoint(expectedVersion=1, **consumption_point(gsrn)))
        assert (code, detail.reason, detail.currentVersion) == ("soap:Client.Conflict", "version_conflict", 2)

    await asyncio.to_thread(calls)


async def test_customers_from_before_tenancy_are_the_platforms_until_it_assigns_them(
    tenancy: Tenancy, pg_dsn: str
) -> None:
    conn = await asyncpg.connect(pg_dsn, server_settings={"search_path": tenancy.service.env["TEST_SCHEMA"]})
    try:
        # What migration 002 leaves of a customer registered before it: no grid company.
        customer_id = f"C-{next(_serials):09d}"
        await conn.execute(
            "INSERT INTO customers (customer_id, kind, name, street, postcode, city, country, version) "
            "VALUES ($1, 'person', 'Gammel Kunde', 'Vestergade 1', '8000', 'Aarhus C', 'DK', 1)",
            customer_id,
        )
    finally:
        await conn.close()

    def calls() -> None:
        code, _, _ = fault_of(lambda: tenancy.soap("a-reader").GetCustomer(customerId=customer_id))
        assert code == "soap:Client.NotFound"
        platform = tenancy.soap("platform")
        legacy = platform.GetCustomer(customerId=customer_id).customer
        assert legacy.gridCompany is None
        code, _, _ = fault_of(
            lambda: tenancy.soap("a-admin").UpdateCustomer(
                customerId=customer_id, expectedVersion=1, gridCompany=TENANT_A, **person("Gammel Kunde")
            )
        )
        assert code == "soap:Client.NotFound"  # not even an admin of A may claim it: A does not see it
        adopted = platform.UpdateCustomer(
            customerId=customer_id, expectedVersion=1, gridCompany=TENANT_A, **person("Gammel Kunde")
        )
        assert (adopted.gridCompany, adopted.version) == (TENANT_A, 2)
        assert tenancy.soap("a-reader").GetCustomer(customerId=customer_id).customer.gridCompany == TENANT_A

    await asyncio.to_thread(calls)
    events = await events_of(
        tenancy, tenancy.customers_topic, lambda seen: any(e["subject"] == customer_id for e in seen)
    )
    (updated,) = [e for e in events if e["subject"] == customer_id]
    conn = await asyncpg.connect(pg_dsn, server_settings={"search_path": tenancy.service.env["TEST_SCHEMA"]})
    try:
        (audited,) = [event for event in await list_audit(conn) if event.subject == customer_id]
    finally:
        await conn.close()
    assert (audited.action, audited.actor, audited.tenant, dict(audited.detail)) == (
        "customer.move",
        "platform",
        TENANT_A,
        {"from_grid_company": None, "version": 2},
    )
    assert (updated["type"], updated["data"]["grid_company"], updated["data"]["version"]) == (
        "gridhub.customer.updated",
        TENANT_A,
        2,
    )


async def test_owners_and_data_source_assignments_are_audited_in_the_change_s_transaction(
    tenancy: Tenancy, pg_dsn: str
) -> None:
    gsrn = new_gsrn()

    def calls() -> None:
        admin, platform = tenancy.soap("a-admin"), tenancy.soap("platform")
        admin.RegisterMeterpoint(**consumption_point(gsrn))
        admin.UpdateMeterpoint(expectedVersion=1, **consumption_point(gsrn, source=("ftp_partner", "mdm-partner")))
        admin.UpdateMeterpoint(
            expectedVersion=2, **consumption_point(gsrn, source=("ftp_partner", "mdm-partner"), resolution="PT1H")
        )
        platform.UpdateMeterpoint(
            expectedVersion=3, gridCompany=TENANT_B, **consumption_point(gsrn, source=None, resolution="PT1H")
        )
        # A refused change leaves no audit event behind.
        with pytest.raises(zeep.exceptions.Fault):
            admin.UpdateMeterpoint(expectedVersion=4, **consumption_point(gsrn))

    await asyncio.to_thread(calls)
    conn = await asyncpg.connect(pg_dsn, server_settings={"search_path": tenancy.service.env["TEST_SCHEMA"]})
    try:
        events = [event for event in await list_audit(conn) if event.subject == gsrn]
    finally:
        await conn.close()
    summary = [(e.action, e.actor, e.actor_kind, e.tenant, dict(e.detail)) for e in events]
    assert summary == [
        (
            "meterpoint.register",
            "a-admin",
            "soap_client",
            TENANT_A,
            {"data_source": "head_end:hes-north", "version": 1},
        ),
        (
            "meterpoint.assign",
            "a-admin",
            "soap_client",
            TENANT_A,
            {"data_source": "ftp_partner:mdm-partner", "previous_data_source": "head_end:hes-north", "version": 2},
        ),
        # Version 3 (the resolution) changed neither the source nor the owner: not audited.
        (
            "meterpoint.assign",
            "platform",
            "soap_client",
            TENANT_B,
            {"data_source": None, "previous_data_source": "ftp_partner:mdm-partner", "version": 4},
        ),
        ("meterpoint.move", "platform", "soap_client", TENANT_B, {"from_grid_company": TENANT_A, "version": 4}),
    ]
    assert {event.origin for event in events} == {"127.0.0.1"}


async def test_another_grid_company_s_locked_row_neither_blocks_nor_tells_a_probe(
    tenancy: Tenancy, pg_dsn: str
) -> None:
    b_point = new_gsrn()

    def register() -> str:
        tenancy.soap("b-admin").RegisterMeterpoint(**consumption_point(b_point))
        return str(tenancy.soap("b-admin").RegisterCustomer(**person("Sydnet Kunde")).customerId)

    b_customer = await asyncio.to_thread(register)
    conn = await asyncpg.connect(pg_dsn, server_settings={"search_path": tenancy.service.env["TEST_SCHEMA"]})
    try:
        async with conn.transaction():
            # B's own system is in the middle of changing both rows (it holds their locks).
            await conn.execute("SELECT 1 FROM customers WHERE customer_id = $1 FOR UPDATE", b_customer)
            await conn.execute("SELECT 1 FROM meterpoints WHERE meterpoint_id = $1 FOR UPDATE", b_point)

            def probes() -> list[str]:
                operator, admin = tenancy.soap("a-operator"), tenancy.soap("a-admin")
                calls: list[Callable[[], Any]] = [
                    lambda: operator.UpdateCustomer(customerId=b_customer, expectedVersion=1, **person("X")),
                    lambda: operator.UnlinkMeterpoint(
                        customerId=b_customer, meterpointId=b_point, moveOut="2025-01-01"
                    ),
                    lambda: admin.UpdateMeterpoint(expectedVersion=1, **consumption_point(b_point)),
                ]
                return [fault_of(call)[0] for call in calls]

            # Answered at once as unknown ids: a probe that waited for B's lock would learn that the id exists.
            codes = await asyncio.wait_for(asyncio.to_thread(probes), timeout=3)
            assert codes == ["soap:Client.NotFound"] * 3
    finally:
        await conn.close()
