"""The dev simulator registers its meterpoints first, each assigned to the source that delivers it (real service)."""

# mypy: disable-error-code="no-untyped-call"

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from stack.dev.provision import DEV_GRID_COMPANY, ApiKey, Credentials
from stack.dev.simulator import Simulation, SimulatorSettings
from tests.integration.customers.support import ServiceProcess, dev_clients, dev_password, soap_service

pytestmark = [pytest.mark.postgres]


@pytest.fixture
async def service(pg_dsn: str, tmp_path: Path) -> AsyncIterator[ServiceProcess]:
    schema = f"t_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(pg_dsn)
    await conn.execute(f"CREATE SCHEMA {schema}")
    env = {
        "CUSTOMERS_POSTGRES_DSN": pg_dsn,
        "CUSTOMERS_POSTGRES_SCHEMA": schema,
        "CUSTOMERS_RELAY_ENABLED": "false",
        # The simulator's login is an admin of the dev grid company, as make run provisions it.
        "CUSTOMERS_CLIENTS": json.dumps(dev_clients(sim_run=("admin", DEV_GRID_COMPANY))),
    }
    process = ServiceProcess(env, tmp_path / "customers.log")
    try:
        await asyncio.to_thread(process.start)
        yield process
    finally:
        process.stop()
        await conn.execute(f"DROP SCHEMA {schema} CASCADE")
        await conn.close()


def simulation(service: ServiceProcess, run_name: str, tmp_path: Path) -> Simulation:
    settings = SimulatorSettings(
        meters=2,
        head_end_meters=2,
        ftp_meters=1,
        id_base=f"57131318{uuid.uuid4().int % 10**5:05d}",
        customers_url=service.soap_url,
        credentials=tmp_path / "credentials.json",
        state=tmp_path / "state.json",
    )
    credentials = Credentials(
        run_name=run_name,
        soap_client="sim-run",
        soap_password=dev_password("billing"),
        ftp_login=f"{run_name}-partner",
        ftp_password="unused",
        collection_key=ApiKey(client=f"{run_name}-head-end", key="unused"),
    )
    return Simulation(settings, credentials, settings.plan())


async def test_every_simulated_meterpoint_is_registered_with_the_source_that_delivers_it(
    service: ServiceProcess, tmp_path: Path
) -> None:
    first = simulation(service, "dev", tmp_path)
    await asyncio.to_thread(first.register_meterpoints)
    reader = soap_service(service.soap_url, "workorders")  # the platform's login reads every grid company

    def sources() -> dict[str, tuple[str, str, str, int]]:
        found = {}
        for gsrn in first.plan.all:
            meterpoint = reader.GetMeterpoint(meterpointId=gsrn)
            found[gsrn] = (
                meterpoint.gridCompany,
                meterpoint.dataSource.kind,
                meterpoint.dataSource.id,
                meterpoint.version,
            )
        return found

    plan = first.plan
    expected = {gsrn: (DEV_GRID_COMPANY, "device", gsrn, 1) for gsrn in plan.mqtt}
    expected |= {gsrn: (DEV_GRID_COMPANY, "head_end", "dev-head-end", 1) for gsrn in plan.rest}
    expected |= {gsrn: (DEV_GRID_COMPANY, "ftp_partner", "dev-partner", 1) for gsrn in plan.ftp}
    assert await asyncio.to_thread(sources) == expected

    # The same run again changes nothing; a run under another name moves the head-end's and partner's meterpoints
    # to its own sources (a new version each), so its readings are in scope.
    await asyncio.to_thread(first.register_meterpoints)
    assert await asyncio.to_thread(sources) == expected
    renamed = simulation(service, "other", tmp_path)
    renamed.plan = first.plan  # the same meterpoints
    await asyncio.to_thread(renamed.register_meterpoints)
    moved = await asyncio.to_thread(sources)
    assert {gsrn: moved[gsrn] for gsrn in plan.mqtt} == {gsrn: expected[gsrn] for gsrn in plan.mqtt}
    assert {moved[gsrn] for gsrn in plan.rest} == {(DEV_GRID_COMPANY, "head_end", "other-head-end", 2)}
    assert {moved[gsrn] for gsrn in plan.ftp} == {(DEV_GRID_COMPANY, "ftp_partner", "other-partner", 2)}
