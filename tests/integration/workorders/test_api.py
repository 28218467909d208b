"""The REST API against the real PostgreSQL: lifecycle, 409, ETag/If-Match (412/428), Idempotency-Key, lists."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from libs.events import decode
from libs.platform.apikeys import Role
from tests.integration.workorders.conftest import OTHER_WRITER, Running, auth
from tests.integration.workorders.support import new_meterpoint

pytestmark = pytest.mark.postgres

BASE = "/v1/work-orders"


def window(days: int = 1) -> dict[str, str]:
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(days=days)
    return {"start": start.isoformat(), "end": (start + timedelta(hours=2)).isoformat()}


async def create(api: Running, *, key: str | None = None, **body: Any) -> httpx.Response:
    """Open an order as grid company A's operator, at a new meterpoint of A unless ``body`` names one."""
    payload = {"type": "replace_meter", **body}
    if "meterpoint_id" not in payload:
        payload["meterpoint_id"] = await api.register(new_meterpoint())
    headers = {**auth(), "Idempotency-Key": key or str(uuid.uuid4())}
    return await api.client.post(BASE, json=payload, headers=headers)


async def act(
    client: httpx.AsyncClient, order: dict[str, Any], action: str, body: Any, etag: str | None
) -> httpx.Response:
    headers = auth() | ({"If-Match": etag} if etag is not None else {})
    return await client.post(f"{BASE}/{order['work_order_id']}/{action}", json=body, headers=headers)


async def events_in_outbox(db: asyncpg.Connection[Any], work_order_id: str) -> list[str]:
    rows = await db.fetch("SELECT value FROM outbox WHERE key = $1 ORDER BY id", work_order_id.encode())
    return [decode(row["value"]).type for row in rows]


async def test_an_order_goes_through_its_lifecycle_and_publishes_each_step(
    api: Running, db: asyncpg.Connection[Any]
) -> None:
    created = await create(api, description="Meter cabinet behind the garage")
    assert created.status_code == 201, created.text
    order = created.json()
    assert order["status"] == "created"
    assert order["customer"]["status"] == "none", "the directory knows nobody at this meterpoint"
    assert created.headers["ETag"] == '"1"'
    assert created.headers["Location"] == f"{BASE}/{order['work_order_id']}"

    fetched = await api.client.get(created.headers["Location"], headers=auth(Role.READER))
    assert fetched.status_code == 200
    assert fetched.json() == order
    assert fetched.headers["ETag"] == '"1"'

    etag = created.headers["ETag"]
    for action, body in (
        ("schedule", {"crew": "crew-7", "window": window()}),
        ("start", None),
        ("complete", {"result": "succeeded", "new_meter_serial": "KAM-99812"}),
    ):
        response = await act(api.client, order, action, body, etag)
        assert response.status_code == 200, response.text
        etag = response.headers["ETag"]
    final = response.json()
    assert (final["status"], final["version"], final["crew"], final["new_meter_serial"]) == (
        "completed",
        4,
        "crew-7",
        "KAM-99812",
    )
    assert etag == '"4"'
    assert await events_in_outbox(db, order["work_order_id"]) == [
        "gridhub.workorder.created",
        "gridhub.workorder.scheduled",
        "gridhub.workorder.started",
        "gridhub.workorder.completed",
    ]


async def test_invalid_transitions_get_409_and_change_nothing(api: Running, db: asyncpg.Connection[Any]) -> None:
    order = (await create(api)).json()
    for action, body in (("start", None), ("complete", {"result": "failed"})):
        response = await act(api.client, order, action, body, '"1"')
        assert response.status_code == 409, response.text
        problem = response.json()
        assert response.headers["content-type"] == "application/problem+json"
        assert (problem["reason"], problem["current_status"]) == ("invalid_transition", "created")

    cancelled = await act(api.client, order, "cancel", {"reason": "customer moved out"}, '"1"')
    assert cancelled.status_code == 200
    for action, body in (("schedule", {"crew": "c1", "window": window()}), ("cancel", {"reason": "again"})):
        response = await act(api.client, order, action, body, '"2"')
        assert response.status_code == 409, "cancelled is final"
    now = (await api.client.get(f"{BASE}/{order['work_order_id']}", headers=auth())).json()
    assert (now["status"], now["version"]) == ("cancelled", 2)
    assert await events_in_outbox(db, order["work_order_id"]) == [
        "gridhub.workorder.created",
        "gridhub.workorder.cancelled",
    ]


async def test_two_concurrent_updates_with_the_same_etag_one_wins_one_gets_412(
    api: Running, db: asyncpg.Connection[Any]
) -> None:
    order = (await create(api)).json()
    schedule = act(api.client, order, "schedule", {"crew": "crew-1", "window": window()}, '"1"')
    cancel = act(api.client, order, "cancel", {"reason": "duplicate order"}, '"1"')
    responses = await asyncio.gather(schedule, cancel)
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200, 412], [r.text for r in responses]
    winner = next(r for r in responses if r.status_code == 200)
    loser = next(r for r in responses if r.status_code == 412)
    assert loser.json()["reason"] == "version_mismatch"
    assert loser.headers["ETag"] == winner.headers["ETag"] == '"2"', "the 412 names the current version"
    events = await events_in_outbox(db, order["work_order_id"])
    assert len(events) == 2, "exactly one of the two changes was made and published"


async def test_if_match_is_required_and_must_be_current(api: Running) -> None:
    order = (await create(api)).json()
    missing = await act(api.client, order, "cancel", {"reason": "x"}, None)
    assert (missing.status_code, missing.json().get("reason")) == (428, "if_match_required"), missing.text
    for stale in ('"7"', 'W/"1"', "1"):
        response = await act(api.client, order, "cancel", {"reason": "x"}, stale)
        assert response.status_code == 412, stale
    anything = await act(api.client, order, "schedule", {"crew": "c1", "window": window()}, "*")
    assert anything.status_code == 200
    unknown = await api.client.post(
        f"{BASE}/WO-99999999/cancel", json={"reason": "x"}, headers=auth() | {"If-Match": "*"}
    )
    assert (unknown.status_code, unknown.json()["reason"]) == (404, "work_order_not_found")


async def test_a_retried_post_with_the_same_idempotency_key_returns_the_first_order(
    api: Running, db: asyncpg.Connection[Any]
) -> None:
    meterpoint = await api.register(new_meterpoint())
    body = {"meterpoint_id": meterpoint, "type": "disconnect", "description": "Unpaid; customer informed"}
    headers = auth() | {"Idempotency-Key": "planning-run-42/order-7"}
    first = await api.client.post(BASE, json=body, headers=headers)
    retried = await api.client.post(
        BASE, content=json.dumps(body, indent=4), headers=headers | {"content-type": "application/json"}
    )
    assert (first.status_code, retried.status_code) == (201, 201)
    assert retried.json()["work_order_id"] == first.json()["work_order_id"]
    assert retried.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers

    concurrent = await asyncio.gather(
        *(api.client.post(BASE, json=body, headers=auth() | {"Idempotency-Key": "burst-1"}) for _ in range(5))
    )
    assert {r.status_code for r in concurrent} == {201}
    assert len({r.json()["work_order_id"] for r in concurrent}) == 1, "concurrent retries still give one order"

    changed = await api.client.post(BASE, json={**body, "type": "reconnect"}, headers=headers)
    assert (changed.status_code, changed.json()["reason"]) == (422, "idempotency_key_reused")

    other_client = await api.client.post(
        BASE, json=body, headers={"X-API-Key": OTHER_WRITER.plain_key, "Idempotency-Key": "planning-run-42/order-7"}
    )
    assert other_client.status_code == 201
    assert other_client.json()["work_order_id"] != first.json()["work_order_id"], "keys are per client system"

    orders = await db.fetchval("SELECT count(*) FROM work_orders WHERE meterpoint_id = $1", meterpoint)
    assert orders == 3
    created_events = await db.fetchval("SELECT count(*) FROM outbox")
    assert created_events == 3

    missing = await api.client.post(BASE, json=body, headers=auth())
    assert (missing.status_code, missing.json()["reason"]) == (400, "idempotency_key_required")


async def test_keys_and_roles(api: Running) -> None:
    order = (await create(api)).json()
    anonymous = await api.client.get(f"{BASE}/{order['work_order_id']}")
    assert anonymous.status_code == 401
    assert anonymous.headers["content-type"] == "application/problem+json"
    reader = auth(Role.READER) | {"Idempotency-Key": "k1"}
    forbidden = await api.client.post(
        BASE, json={"meterpoint_id": new_meterpoint(), "type": "reconnect"}, headers=reader
    )
    assert forbidden.status_code == 403


async def test_validation_errors_are_problems_naming_the_fields(api: Running) -> None:
    bad_gsrn = await create(api, meterpoint_id="571313180400000026")
    assert bad_gsrn.status_code == 422
    assert bad_gsrn.json()["errors"][0]["loc"] == ["body", "meterpoint_id"]
    order = (await create(api, type="install_meter")).json()
    scheduled = await act(api.client, order, "schedule", {"crew": "c1", "window": window()}, '"1"')
    started = await act(api.client, order, "start", {}, scheduled.headers["ETag"])
    no_serial = await act(api.client, order, "complete", {"result": "succeeded"}, started.headers["ETag"])
    assert no_serial.status_code == 422
    assert no_serial.json()["reason"] == "invalid_command"
    assert no_serial.json()["errors"][0]["loc"] == ["body", "new_meter_serial"]
    past = {"start": "2020-01-01T08:00:00Z", "end": "2020-01-01T10:00:00Z"}
    assert (await act(api.client, order, "schedule", {"crew": "c1", "window": past}, "*")).status_code == 409


async def test_lists_filter_and_page_with_a_cursor(api: Running) -> None:
    meterpoint = await api.register(new_meterpoint())
    made = []
    for kind in ("install_meter", "inspect_meter", "inspect_meter", "disconnect", "inspect_meter"):
        made.append((await create(api, meterpoint_id=meterpoint, type=kind)).json())
    await act(api.client, made[1], "cancel", {"reason": "duplicate"}, '"1"')

    async def listing(**params: Any) -> dict[str, Any]:
        response = await api.client.get(BASE, params={"meterpoint_id": meterpoint, **params}, headers=auth(Role.READER))
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    everything = await listing()
    assert [o["work_order_id"] for o in everything["items"]] == [o["work_order_id"] for o in reversed(made)]
    assert everything["next_cursor"] is None

    inspections = await listing(type="inspect_meter", status=["created", "scheduled"])
    assert [o["work_order_id"] for o in inspections["items"]] == [made[4]["work_order_id"], made[2]["work_order_id"]]

    pages, cursor = [], None
    while True:
        page = await listing(limit=2, **({"cursor": cursor} if cursor else {}))
        pages.append([o["work_order_id"] for o in page["items"]])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert [len(p) for p in pages] == [2, 2, 1]
    assert [i for p in pages for i in p] == [o["work_order_id"] for o in everything["items"]]

    first = await listing(limit=2)
    other_filters = await api.client.get(
        BASE, params={"cursor": first["next_cursor"], "type": "disconnect"}, headers=auth(Role.READER)
    )
    assert (other_filters.status_code, other_filters.json()["reason"]) == (400, "invalid_cursor")

    since = datetime.now(UTC) + timedelta(minutes=1)
    assert (await listing(created_from=since.isoformat()))["items"] == []
    assert len((await listing(created_to=since.isoformat()))["items"]) == 5


async def test_metrics_show_the_events_waiting_in_the_outbox(api: Running) -> None:
    """The relay is off in these tests: what an order writes to the outbox waits there, and /metrics says so."""
    assert (await create(api)).status_code == 201
    deadline = asyncio.get_running_loop().time() + 15  # the backlog is read every 5 s
    while True:
        metrics = (await api.client.get("/metrics")).text
        waiting = [line for line in metrics.splitlines() if line.startswith("gridhub_outbox_unpublished_events ")]
        if waiting and float(waiting[0].split()[1]) >= 1:
            break
        assert asyncio.get_running_loop().time() < deadline, f"no outbox backlog in /metrics: {waiting}"
        await asyncio.sleep(0.2)
    assert "gridhub_outbox_oldest_unpublished_age_seconds " in metrics
