"""Flow control on the SOAP endpoint (per-client quota, bulkhead) and behaviour when the database is gone."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import asyncpg
import httpx
import pytest
import zeep

from libs.flowcontrol.policy import BoundaryPolicy, BulkheadSettings, QuotaSettings, RateSettings
from services.customers.settings import Boundaries, CustomersSettings
from tests.integration.customers.support import dev_password, fault_detail, in_process_soap, person, running_app

pytestmark = [pytest.mark.postgres]

FIND = (
    '<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/" xmlns:c="urn:gridhub:customers:v1">'
    "<soap:Body><c:FindCustomers><c:name>Hansen</c:name></c:FindCustomers></soap:Body></soap:Envelope>"
)


async def wait_for(condition: Callable[[], Awaitable[bool]], what: str, timeout: float = 10.0) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``timeout`` seconds."""
    try:
        async with asyncio.timeout(timeout):
            while not await condition():
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout}s waiting for {what}") from None


async def test_a_client_over_its_quota_gets_server_busy_with_retry_after(
    settings_for: Callable[..., CustomersSettings],
) -> None:
    policy = BoundaryPolicy(
        quota=QuotaSettings(rate=100, burst=100, overrides={"billing": RateSettings(rate=0.2, burst=2)})
    )
    async with running_app(settings_for(boundaries=Boundaries(soap_ingress=policy))) as app:
        async with in_process_soap(app) as billing, in_process_soap(app, "customer-centre") as centre:
            await billing.FindCustomers(name="Hansen")
            await billing.FindCustomers(name="Hansen")
            with pytest.raises(zeep.exceptions.Fault) as busy:
                await billing.FindCustomers(name="Hansen")
            assert busy.value.code == "soap:Server.Busy"
            detail = fault_detail(busy.value)
            assert (detail.reason, detail.retryAfterSeconds) == ("quota_exceeded", 5)
            await centre.FindCustomers(name="Hansen")  # another client system has its own bucket

        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://customers.test") as http:
            response = await http.post("/soap/customers", content=FIND, auth=("billing", dev_password("billing")))
        assert response.status_code == 429
        assert response.headers["Retry-After"] == "5"


async def test_a_full_bulkhead_answers_server_busy_at_once(
    settings_for: Callable[..., CustomersSettings], pg_dsn: str, pg_schema: str
) -> None:
    policy = BoundaryPolicy(bulkhead=BulkheadSettings(max_concurrent=1, max_wait=0, retry_after=2))
    async with (
        running_app(settings_for(boundaries=Boundaries(soap_ingress=policy))) as app,
        in_process_soap(app) as soap,
    ):
        customer = await soap.RegisterCustomer(**person())
        blocker = await asyncpg.connect(pg_dsn, server_settings={"search_path": pg_schema})
        try:
            async with blocker.transaction():
                await blocker.execute("LOCK TABLE customers IN ACCESS EXCLUSIVE MODE")
                slow = asyncio.create_task(soap.GetCustomer(customerId=customer.customerId))

                async def waiting_on_the_lock() -> bool:
                    return bool(
                        await blocker.fetchval(
                            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                            "AND application_name = 'customers'"
                        )
                    )

                await wait_for(waiting_on_the_lock, "the first call to hold the only permit")
                with pytest.raises(zeep.exceptions.Fault) as busy:
                    await soap.FindCustomers(name="Hansen")
                assert busy.value.code == "soap:Server.Busy"
                assert fault_detail(busy.value).reason == "too_many_concurrent_calls"
                transport = httpx.ASGITransport(app=app)
                async with httpx.AsyncClient(transport=transport, base_url="http://customers.test") as http:
                    response = await http.post(
                        "/soap/customers", content=FIND, auth=("billing", dev_password("billing"))
                    )
                assert (response.status_code, response.headers["Retry-After"]) == (503, "2")
            assert (await slow).customer.customerId == customer.customerId  # the lock is gone: it finishes
        finally:
            await blocker.close()
        await soap.FindCustomers(name="Hansen")  # the permit came back


async def test_a_slow_database_gives_server_unavailable(
    settings_for: Callable[..., CustomersSettings], pg_dsn: str, pg_schema: str
) -> None:
    async with running_app(settings_for(postgres_command_timeout=0.5)) as app, in_process_soap(app) as soap:
        blocker = await asyncpg.connect(pg_dsn, server_settings={"search_path": pg_schema})
        try:
            async with blocker.transaction():
                await blocker.execute("LOCK TABLE customers IN ACCESS EXCLUSIVE MODE")
                with pytest.raises(zeep.exceptions.Fault) as unavailable:
                    await soap.RegisterCustomer(**person())
        finally:
            await blocker.close()
        assert unavailable.value.code == "soap:Server.Unavailable"
        assert fault_detail(unavailable.value).retryAfterSeconds == 1
        await soap.RegisterCustomer(**person())
        assert await app.state.pool.fetchval("SELECT count(*) FROM outbox") == 1  # only the committed one


async def test_readiness_follows_the_database(settings_for: Callable[..., CustomersSettings]) -> None:
    async with running_app(settings_for()) as app, in_process_soap(app) as soap:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://customers.test") as http:
            assert (await http.get("/readyz")).status_code == 200
            await app.state.pool.close()  # the database is gone for this service
            not_ready = await http.get("/readyz")
            assert not_ready.status_code == 503
            assert "postgres" in not_ready.json()["detail"]
            assert (await http.get("/healthz")).status_code == 200
        with pytest.raises(zeep.exceptions.Fault) as unavailable:
            await soap.FindCustomers(name="Hansen")
        assert unavailable.value.code == "soap:Server.Unavailable"
