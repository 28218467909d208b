"""A meter that floods alarms gets one crew: one open order per meterpoint and alarm type, a limit on new ones.

Over the real Kafka and PostgreSQL: 1,000 tamper alarms from one meter open one inspection and attach the rest
to it; once that order is closed a new alarm opens the next one, up to the meterpoint's limit per window; past
the limit alarms are recorded and counted, and no order opens. Other meters and other alarm types are unaffected.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from libs.events import MeterAlarm, MeterAlarmRaised, make_event, to_record
from libs.platform.apikeys import Role
from services.workorders.settings import WorkordersSettings
from tests.integration.workorders.conftest import Running, auth
from tests.integration.workorders.support import new_meterpoint, produce, wait_for
from tests.integration.workorders.test_consumers import committed

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]

Record = tuple[bytes | None, bytes, list[tuple[str, bytes]]]


def alarms(meterpoint_id: str, alarm: MeterAlarm, count: int, start: datetime) -> list[Record]:
    """``count`` distinct alarms (one a second from ``start``), as meter.events.v1 records."""
    records: list[Record] = []
    for n in range(count):
        data = MeterAlarmRaised.create(
            meterpoint_id=meterpoint_id, alarm=alarm, raised_at=start + timedelta(seconds=n), source="hes-north"
        )
        record = to_record(make_event(data, source="/gridhub/collection"))
        records.append((record.key, record.value, record.headers))
    return records


async def outcomes(db: asyncpg.Connection[Any], meterpoint_id: str) -> dict[str, int]:
    rows = await db.fetch(
        "SELECT outcome, count(*) AS n FROM work_order_alarms WHERE meterpoint_id = $1 GROUP BY outcome",
        meterpoint_id,
    )
    return {row["outcome"]: row["n"] for row in rows}


async def orders_of(db: asyncpg.Connection[Any], meterpoint_id: str) -> list[asyncpg.Record]:
    return await db.fetch(
        "SELECT work_order_id, alarm, status FROM work_orders WHERE meterpoint_id = $1 ORDER BY seq", meterpoint_id
    )


async def cancel(running: Running, work_order_id: str, reason: str) -> None:
    headers = auth(Role.OPERATOR) | {"If-Match": "*"}
    response = await running.client.post(
        f"/v1/work-orders/{work_order_id}/cancel", json={"reason": reason}, headers=headers
    )
    assert response.status_code == 200, response.text


async def test_a_flood_of_alarms_opens_one_order_and_the_limit_holds_after_it_closes(
    kafka_bootstrap: str,
    new_topic: Callable[..., Awaitable[str]],
    settings_for: Callable[..., WorkordersSettings],
    start_app: Callable[..., Awaitable[Running]],
    db: asyncpg.Connection[Any],
) -> None:
    topics = {
        "meter_events_topic": await new_topic("wo.flood", partitions=2, with_dlq=True),
        "customers_topic": await new_topic("wo.flood-customers", partitions=1),
        "events_topic": await new_topic("wo.flood-orders", partitions=1),
        "meterpoints_topic": await new_topic("wo.flood-meterpoints", partitions=1),
    }
    settings = settings_for(consumers_enabled=True, max_alarm_orders_per_meterpoint=3, **topics)
    running = await start_app(settings)
    group = f"{settings.consumer_group_prefix}.meter-events"
    # Both meters are grid company A's, whose operator closes the orders below.
    noisy, quiet = await running.register(new_meterpoint()), await running.register(new_meterpoint())
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)

    # The flood: 1,000 tamper alarms from one meter, plus one clock error from it and a tamper from another meter.
    flood = alarms(noisy, MeterAlarm.TAMPER, 1000, start)
    others = alarms(noisy, MeterAlarm.CLOCK_ERROR, 1, start) + alarms(quiet, MeterAlarm.TAMPER, 1, start)
    await produce(kafka_bootstrap, topics["meter_events_topic"], [*flood, *others, flood[0], flood[-1]])
    sent = len(flood) + len(others) + 2

    async def handled(expected: int) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            return await committed(kafka_bootstrap, group) == expected

        return check

    await wait_for(await handled(sent), 60, "every alarm of the flood to be handled and committed")
    noisy_orders = await orders_of(db, noisy)
    assert [(row["alarm"], row["status"]) for row in noisy_orders] == [
        ("tamper", "created"),
        ("clock_error", "created"),
    ]
    assert len(await orders_of(db, quiet)) == 1, "another meter's alarm opens its own order"
    assert await outcomes(db, noisy) == {"opened": 2, "attached": 999}, "redeliveries add no rows"
    tamper_order = noisy_orders[0]["work_order_id"]
    attached = await db.fetchval(
        "SELECT count(*) FROM work_order_alarms WHERE work_order_id = $1 AND outcome = 'attached'", tamper_order
    )
    assert attached == 999

    # The crew closes the inspection; the meter goes on raising tamper alarms. Its limit is 3 alarm orders a day
    # and two are used: the next tamper alarm opens the third, the later ones attach to it.
    await cancel(running, tamper_order, "seal checked")
    later = alarms(noisy, MeterAlarm.TAMPER, 5, start + timedelta(minutes=30))
    await produce(kafka_bootstrap, topics["meter_events_topic"], later)
    sent += len(later)
    await wait_for(await handled(sent), 30, "the later alarms to be handled")
    assert [row["status"] for row in await orders_of(db, noisy)] == ["cancelled", "created", "created"]
    assert await outcomes(db, noisy) == {"opened": 3, "attached": 1003}

    # Both open orders closed: the meterpoint has had its 3 alarm orders in the window, so further alarms are
    # recorded as rate limited and open nothing.
    for row in (await orders_of(db, noisy))[1:]:
        await cancel(running, row["work_order_id"], "done")
    limited = alarms(noisy, MeterAlarm.TAMPER, 3, start + timedelta(minutes=40))
    await produce(kafka_bootstrap, topics["meter_events_topic"], limited)
    sent += len(limited)
    await wait_for(await handled(sent), 30, "the rate-limited alarms to be handled")
    assert len(await orders_of(db, noisy)) == 3
    assert await outcomes(db, noisy) == {"opened": 3, "attached": 1003, "rate_limited": 3}
    metrics = (await running.client.get("/metrics")).text
    assert 'gridhub_workorders_alarms_total{outcome="rate_limited"} 3.0' in metrics
    assert 'gridhub_workorders_alarms_total{outcome="repeated"} 2.0' in metrics
