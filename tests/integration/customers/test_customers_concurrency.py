"""Rules that only the database can keep under concurrency: one customer per meterpoint and day, versions."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import date
from typing import Any

import asyncpg
import pytest
import zeep

from libs.events import with_check_digit
from services.customers.settings import CustomersSettings
from tests.integration.customers.support import consumption_point, fault_detail, in_process_soap, person, running_app

pytestmark = [pytest.mark.postgres]

GSRN = with_check_digit("57131318040000002")


def fault_code(outcome: BaseException | Any) -> str | None:
    return outcome.code if isinstance(outcome, zeep.exceptions.Fault) else None


async def test_overlapping_links_are_refused_and_dates_answer_who_is_there(
    settings_for: Callable[..., CustomersSettings],
) -> None:
    async with running_app(settings_for()) as app, in_process_soap(app) as soap:
        await soap.RegisterMeterpoint(**consumption_point(GSRN))
        first = await soap.RegisterCustomer(**person("Mette Hansen"))
        second = await soap.RegisterCustomer(**person("Jens Holm"))
        await soap.LinkMeterpoint(customerId=first.customerId, meterpointId=GSRN, moveIn="2025-01-01")

        with pytest.raises(zeep.exceptions.Fault) as overlap:
            await soap.LinkMeterpoint(customerId=second.customerId, meterpointId=GSRN, moveIn="2025-06-01")
        assert overlap.value.code == "soap:Client.Conflict"
        assert fault_detail(overlap.value).reason == "overlapping_link"

        with pytest.raises(zeep.exceptions.Fault) as too_early:
            await soap.UnlinkMeterpoint(customerId=first.customerId, meterpointId=GSRN, moveOut="2024-12-31")
        assert too_early.value.code == "soap:Client.Validation"
        assert fault_detail(too_early.value).reason == "move_out_before_move_in"

        await soap.UnlinkMeterpoint(customerId=first.customerId, meterpointId=GSRN, moveOut="2025-05-31")
        with pytest.raises(zeep.exceptions.Fault) as overlap_last_day:
            await soap.LinkMeterpoint(customerId=second.customerId, meterpointId=GSRN, moveIn="2025-05-31")
        assert overlap_last_day.value.code == "soap:Client.Conflict"
        await soap.LinkMeterpoint(customerId=second.customerId, meterpointId=GSRN, moveIn="2025-06-01")

        before = await soap.GetMeterpointCustomer(meterpointId=GSRN, onDate="2025-05-31")
        after = await soap.GetMeterpointCustomer(meterpointId=GSRN, onDate="2025-06-01")
        assert (before.customer.customerId, after.customer.customerId) == (first.customerId, second.customerId)
        with pytest.raises(zeep.exceptions.Fault) as nobody:
            await soap.GetMeterpointCustomer(meterpointId=GSRN, onDate="2024-12-31")
        assert nobody.value.code == "soap:Client.NotFound"
        with pytest.raises(zeep.exceptions.Fault) as no_open_link:
            await soap.UnlinkMeterpoint(customerId=first.customerId, meterpointId=GSRN, moveOut="2025-07-01")
        assert no_open_link.value.code == "soap:Client.NotFound"


async def test_of_concurrent_links_to_one_meterpoint_exactly_one_wins(
    settings_for: Callable[..., CustomersSettings], pg_schema: str, pg_dsn: str
) -> None:
    async with running_app(settings_for()) as app, in_process_soap(app) as soap:
        await soap.RegisterMeterpoint(**consumption_point(GSRN))
        customers = [await soap.RegisterCustomer(**person(f"Customer {n}")) for n in range(6)]
        outcomes = await asyncio.gather(
            *(
                soap.LinkMeterpoint(customerId=c.customerId, meterpointId=GSRN, moveIn=f"2025-0{1 + n % 6}-01")
                for n, c in enumerate(customers)
            ),
            return_exceptions=True,
        )
        codes = [fault_code(outcome) for outcome in outcomes]
        assert codes.count(None) == 1, outcomes
        assert codes.count("soap:Client.Conflict") == len(customers) - 1, outcomes
        pool = app.state.pool
        assert await pool.fetchval("SELECT count(*) FROM meterpoint_links") == 1
        assert await pool.fetchval("SELECT count(*) FROM outbox WHERE topic = 'customers.v1'") == len(customers) + 1


async def test_concurrent_registrations_of_one_gsrn_store_one_record_and_publish_once(
    settings_for: Callable[..., CustomersSettings],
) -> None:
    retried, contested = with_check_digit("57131318040000100"), with_check_digit("57131318040000200")
    async with running_app(settings_for()) as app, in_process_soap(app) as soap:
        # The same registration sent six times at once (a client's impatient retries): one record, one event.
        same = await asyncio.gather(*(soap.RegisterMeterpoint(**consumption_point(retried)) for _ in range(6)))
        assert {(point.meterpointId, point.version) for point in same} == {(retried, 1)}
        # Six different registrations at once: one wins, the others meet its primary key and are conflicts.
        outcomes = await asyncio.gather(
            *(
                soap.RegisterMeterpoint(**consumption_point(contested, source=("head_end", f"hes-{n}")))
                for n in range(6)
            ),
            return_exceptions=True,
        )
        codes = [fault_code(outcome) for outcome in outcomes]
        assert (codes.count(None), codes.count("soap:Client.Conflict")) == (1, 5), outcomes
        pool = app.state.pool
        assert await pool.fetchval("SELECT count(*) FROM meterpoints") == 2
        published = await pool.fetch("SELECT key FROM outbox WHERE topic = 'meterpoints.v1' ORDER BY id")
        assert sorted(bytes(row["key"]).decode() for row in published) == [retried, contested]


async def test_of_concurrent_updates_from_one_version_exactly_one_wins(
    settings_for: Callable[..., CustomersSettings],
) -> None:
    async with running_app(settings_for()) as app, in_process_soap(app) as soap:
        customer = await soap.RegisterCustomer(**person("Mette Hansen"))
        updates = [
            {**person(f"Mette Hansen {n}"), "customerId": customer.customerId, "expectedVersion": 1} for n in range(8)
        ]
        outcomes = await asyncio.gather(*(soap.UpdateCustomer(**update) for update in updates), return_exceptions=True)
        winners = [outcome for outcome in outcomes if fault_code(outcome) is None]
        losers = [outcome for outcome in outcomes if fault_code(outcome) == "soap:Client.Conflict"]
        assert len(winners) == 1, outcomes
        assert len(losers) == len(updates) - 1, outcomes
        assert {fault_detail(loser).currentVersion for loser in losers} == {2}
        assert {fault_detail(loser).reason for loser in losers} == {"version_conflict"}

        current = await soap.GetCustomer(customerId=customer.customerId)
        assert current.customer.version == 2
        assert current.customer.name == winners[0].name
        events = await app.state.pool.fetch("SELECT value FROM outbox ORDER BY id")
        assert [b'"gridhub.customer.updated"' in row["value"] for row in events] == [False, True]


async def test_the_database_itself_refuses_overlapping_periods(settings_for: Callable[..., CustomersSettings]) -> None:
    # The service checks first, but the exclusion constraint is what holds when two transactions check at once.
    async with running_app(settings_for()) as app, in_process_soap(app) as soap:
        first = await soap.RegisterCustomer(**person("Mette Hansen"))
        second = await soap.RegisterCustomer(**person("Jens Holm"))
        insert = "INSERT INTO meterpoint_links (customer_id, meterpoint_id, move_in, move_out) VALUES ($1, $2, $3, $4)"
        pool = app.state.pool
        await pool.execute(insert, first.customerId, GSRN, date(2025, 1, 1), date(2025, 3, 31))
        with pytest.raises(asyncpg.ExclusionViolationError):
            await pool.execute(insert, second.customerId, GSRN, date(2025, 3, 31), None)
        with pytest.raises((asyncpg.CheckViolationError, asyncpg.DataError)):  # move-out before move-in
            await pool.execute(insert, second.customerId, GSRN, date(2025, 5, 1), date(2025, 4, 30))
        await pool.execute(insert, second.customerId, GSRN, date(2025, 4, 1), None)
