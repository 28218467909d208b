"""Enrichment over SOAP against the real customers service: breaker, pending customers, enrichment after restart."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import date, timedelta
from typing import Any

import asyncpg
import pytest

from libs.flowcontrol.breaker import BreakerState
from libs.flowcontrol.policy import BoundaryPolicy, BreakerSettings, BulkheadSettings
from libs.platform.apikeys import Role
from services.workorders.settings import Boundaries, WorkordersSettings
from tests.integration.customers.support import consumption_point
from tests.integration.workorders.conftest import Running, auth
from tests.integration.workorders.support import CountingTransport, CustomersProcess, new_meterpoint, wait_for

pytestmark = pytest.mark.postgres

FAILURES_TO_OPEN = 3
CUSTOMERS_SOAP = BoundaryPolicy(
    # Opens when the last 3 calls all failed; one probe after 2 s decides.
    breaker=BreakerSettings(
        failure_rate_threshold=100,
        window_size=FAILURES_TO_OPEN,
        minimum_calls=FAILURES_TO_OPEN,
        wait_in_open=2.0,
        permitted_calls_in_half_open=1,
        slow_call_duration_threshold=2.0,
    ),
    bulkhead=BulkheadSettings(max_concurrent=4, max_wait=0.2),
    timeout=2.0,
)


async def register_at(customers: CustomersProcess, meterpoint: str, name: str) -> str:
    """Register a customer and move them in at ``meterpoint`` (as billing, another client system, would)."""

    def call() -> str:
        soap = customers.soap("billing")
        address = {"street": "Vestergade 12", "postcode": "8000", "city": "Aarhus C", "country": "DK"}
        reply = soap.RegisterCustomer(
            kind="person", name=name, contact={"email": "kunde@example.dk", "address": address}
        )
        customer_id = str(reply.customerId if hasattr(reply, "customerId") else reply.customer.customerId)
        # A link needs the meterpoint in the registry (of billing's grid company); registering again is a no-op.
        soap.RegisterMeterpoint(**consumption_point(meterpoint, source=None))
        soap.LinkMeterpoint(customerId=customer_id, meterpointId=meterpoint, moveIn=date.today() - timedelta(days=400))
        return customer_id

    return await asyncio.to_thread(call)


async def create(client: Any, meterpoint: str) -> tuple[dict[str, Any], float]:
    started = time.monotonic()
    response = await client.post(
        "/v1/work-orders",
        json={"meterpoint_id": meterpoint, "type": "inspect_meter"},
        headers=auth() | {"Idempotency-Key": str(uuid.uuid4())},
    )
    assert response.status_code == 201, response.text
    return response.json(), time.monotonic() - started


async def test_orders_are_created_while_the_customers_service_is_down_and_enriched_after_it_restarts(
    customers_service: CustomersProcess,
    settings_for: Callable[..., WorkordersSettings],
    start_app: Callable[..., Awaitable[Running]],
    db: asyncpg.Connection[Any],
) -> None:
    meterpoint, vacant = new_meterpoint(), new_meterpoint()
    customer_id = await register_at(customers_service, meterpoint, "Jens Jensen")
    settings = settings_for(
        customers_soap_url=customers_service.soap_url,
        enrichment_enabled=True,
        enrichment_interval=0.2,
        boundaries=Boundaries(customers_soap=CUSTOMERS_SOAP),
    )
    network = CountingTransport()
    running = await start_app(settings, soap_transport=network)
    breaker = running.parts.boundaries["customers_soap"].breaker
    assert breaker is not None
    for gsrn in (meterpoint, vacant):
        await running.register(gsrn)

    known, _ = await create(running.client, meterpoint)
    assert known["customer"]["status"] == "known"
    assert (known["customer"]["customer_id"], known["customer"]["name"]) == (customer_id, "Jens Jensen")
    assert known["customer"]["address"]["city"] == "Aarhus C"
    nobody, _ = await create(running.client, vacant)
    assert (nobody["customer"]["status"], nobody["customer"]["name"]) == ("none", None), "a Client.NotFound fault"
    assert breaker.state is BreakerState.CLOSED, "faults that answer are no failures"

    customers_service.stop()
    calls_before = network.requests
    pending = []
    while breaker.state is not BreakerState.OPEN:
        order, _ = await create(running.client, meterpoint)
        pending.append(order)
        assert len(pending) <= FAILURES_TO_OPEN, "the breaker opens after the configured failures"
    # The enricher woke for each pending order and asked too: every call counts. One admitted just before the
    # breaker opened may still go out; none after.
    assert FAILURES_TO_OPEN <= network.requests - calls_before <= FAILURES_TO_OPEN + 1

    open_at = network.requests
    for _ in range(3):
        order, elapsed = await create(running.client, meterpoint)
        pending.append(order)
        assert elapsed < 0.5, "an open breaker answers at once"
    assert network.requests == open_at, "while open, no call reaches the network"
    assert {o["customer"]["status"] for o in pending} == {"pending"}
    assert all(o["customer"]["name"] is None for o in pending), "the replica knows nobody here"

    await customers_service.start()

    async def enriched() -> bool:
        statuses = await db.fetch(
            "SELECT customer_status FROM work_orders WHERE work_order_id = ANY($1::text[])",
            [o["work_order_id"] for o in pending],
        )
        return {row["customer_status"] for row in statuses} == {"known"}

    await wait_for(enriched, 20, "the enricher to fill in every pending customer after the restart")
    assert breaker.state is BreakerState.CLOSED
    for order in pending:
        response = await running.client.get(f"/v1/work-orders/{order['work_order_id']}", headers=auth(Role.READER))
        now = response.json()
        assert (now["customer"]["status"], now["customer"]["source"]) == ("known", "customers_service")
        assert (now["customer"]["customer_id"], now["customer"]["name"]) == (customer_id, "Jens Jensen")
        assert now["version"] == order["version"] + 1, "the representation changed, so does the ETag"
        assert response.headers["ETag"] == f'"{order["version"] + 1}"'
