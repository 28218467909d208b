"""Dev credentials for ``make run``: two grid companies (tenants), each with its sources, readers and logins.

Grid company A (``5790000000012``, "Nordgrid") and B (``5790000000029``, "Sydnet") each get:

- a head-end API key for collection (role ``source``; its client name is the data source the head-end's
  meterpoints are assigned to), an FTP partner (``source``, its login likewise),
- a reader key for the read side and one for work orders, and an operator key for work orders,
- a SOAP client for the customers service (role ``admin``: it registers its meterpoints, customers and links).

A's are the simulator's (it delivers for A only): its MQTT devices are A's too. Everything is made with the
services' own tools, so every change is audited like an operator's: ``python -m services.<service>.commands.apikeys``
(collection, workorders, readside), ``services.collection.commands.ftpusers`` and ``.devices`` (run as commands, in
parallel where they allow it), and the customers service's scrypt ``hash_password`` for ``CUSTOMERS_CLIENTS``.

The credentials are kept in ``<run dir>/credentials.json`` (mode 0600, dev only, inside the git-ignored stack
folder) and reused by the next run while they still work, so keys do not pile up and a developer's curl
commands keep working. ``make clean`` deletes the folder together with the databases that know the keys. The file's
top-level ``soap_client``, ``ftp_login``, ``collection_key``, ``workorders_key``, ``readside_key`` and ``devices``
are grid company A's (what the simulator and the end-to-end test read); ``grid_companies`` holds both.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import asyncpg
from pydantic import BaseModel

from libs.platform.apikeys import Role, parse_key_id, verify_api_key
from libs.platform.apikeys_store import PostgresKeyStore
from libs.platform.db import create_pool
from stack.config import REPO

DEV_GRID_COMPANY = "5790000000012"
"""Grid company A, the simulator's: its devices, head-end and partner deliver the simulated readings."""
GRID_COMPANIES: tuple[tuple[str, str, str], ...] = (
    (DEV_GRID_COMPANY, "Nordgrid", ""),
    ("5790000000029", "Sydnet", "sydnet-"),
)
"""(tenant, name, prefix of its principals' names) of the grid companies ``make run`` provisions; A first."""
_KEY_LINE = re.compile(r"API key \(shown once\): (\S+)")


class ApiKey(BaseModel):
    """A plain API key (``ghk_<id>_<secret>``) and the client it was made for."""

    client: str
    key: str


class GridCompany(BaseModel):
    """One tenant's dev principals."""

    tenant: str
    name: str
    soap_client: str
    soap_password: str
    ftp_login: str
    ftp_password: str
    head_end_key: ApiKey | None = None
    """collection, role source"""
    readside_key: ApiKey | None = None
    """read side, role reader"""
    workorders_reader_key: ApiKey | None = None
    """work orders, role reader"""
    workorders_key: ApiKey | None = None
    """work orders, role operator"""

    @classmethod
    def fresh(cls, run_name: str, tenant: str, name: str, prefix: str) -> GridCompany:
        """New passwords for this grid company in run ``run_name`` (no keys yet)."""
        return cls(
            tenant=tenant,
            name=name,
            soap_client=f"{run_name}-{prefix.rstrip('-')}" if prefix else run_name,
            soap_password=secrets.token_urlsafe(24),
            ftp_login=f"{run_name}-{prefix}partner",
            ftp_password=secrets.token_urlsafe(24),
        )


class Credentials(BaseModel):
    """What ``make run`` provisioned; the simulator reads it, the summary prints it.

    The top-level logins and keys are grid company A's (``grid_companies[0]``), mirrored by `with_companies`.
    """

    run_name: str
    soap_client: str
    soap_password: str
    ftp_login: str
    ftp_password: str
    collection_key: ApiKey | None = None
    workorders_key: ApiKey | None = None
    readside_key: ApiKey | None = None
    devices: dict[str, str] = {}
    grid_companies: list[GridCompany] = []

    @classmethod
    def fresh(cls, run_name: str) -> Credentials:
        """New passwords for a run called ``run_name`` (no keys yet)."""
        companies = [GridCompany.fresh(run_name, *company) for company in GRID_COMPANIES]
        first = companies[0]
        return cls(
            run_name=run_name,
            soap_client=first.soap_client,
            soap_password=first.soap_password,
            ftp_login=first.ftp_login,
            ftp_password=first.ftp_password,
            grid_companies=companies,
        )

    @classmethod
    def load(cls, path: Path, run_name: str) -> Credentials:
        """The credentials of an earlier run with the same name and the same grid companies, or fresh ones."""
        if path.exists():
            try:
                earlier = cls.model_validate_json(path.read_bytes())
            except ValueError:
                earlier = None
            tenants = [company.tenant for company in earlier.grid_companies] if earlier is not None else []
            if earlier is not None and earlier.run_name == run_name and tenants == [t for t, _, _ in GRID_COMPANIES]:
                return earlier
        return cls.fresh(run_name)

    def with_companies(self, companies: list[GridCompany]) -> Credentials:
        """These grid companies, A's logins and keys mirrored at the top level."""
        first = companies[0]
        return self.model_copy(
            update={
                "grid_companies": companies,
                "soap_client": first.soap_client,
                "soap_password": first.soap_password,
                "ftp_login": first.ftp_login,
                "ftp_password": first.ftp_password,
                "collection_key": first.head_end_key,
                "workorders_key": first.workorders_key,
                "readside_key": first.readside_key,
            }
        )

    def save(self, path: Path) -> None:
        """Write atomically with mode 0600 (dev secrets, but secrets)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as file:
            file.write(self.model_dump_json(indent=2))
        partial.replace(path)


def customers_clients(credentials: Credentials, env: Mapping[str, str]) -> str:
    """``CUSTOMERS_CLIENTS``: the configured (or dev) client systems plus each grid company's SOAP client.

    Each grid company's client has the ``admin`` role of its tenant: it registers the meterpoints (master data),
    customers and links of that grid company only.
    """
    from libs.platform.passwords import hash_password
    from services.customers.settings import DEV_CLIENTS

    raw = env.get("CUSTOMERS_CLIENTS", "").strip()
    clients: dict[str, Any] = (
        json.loads(raw) if raw else {name: client.model_dump(mode="json") for name, client in DEV_CLIENTS.items()}
    )
    for company in credentials.grid_companies:
        clients[company.soap_client] = {
            "password_hash": hash_password(company.soap_password),
            "role": Role.ADMIN.value,
            "tenant": company.tenant,
        }
    return json.dumps(clients)


async def run_module(module: str, args: Sequence[str], env: Mapping[str, str] | None = None) -> tuple[int, str]:
    """Run ``python -m module args``; return its exit code and its combined output."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        module,
        *args,
        cwd=REPO,
        env=dict(os.environ if env is None else env),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await process.communicate()
    return process.returncode or 0, output.decode(errors="replace")


async def _key_works(dsn: str, schema: str | None, key: ApiKey | None, tenant: str, role: Role) -> bool:
    """True when ``key`` is stored, matches, works now and has ``tenant`` and ``role``."""
    key_id = parse_key_id(key.key) if key is not None else None
    if key is None or key_id is None:
        return False
    pool = await create_pool(dsn, schema=schema, min_size=1, max_size=1, application_name="gridhub-ops")
    try:
        record = await PostgresKeyStore(pool).get(key_id)
    except asyncpg.UndefinedTableError:
        return False
    except asyncpg.UndefinedColumnError:  # a database from before the key lifecycle; the tool migrates it
        return False
    finally:
        await pool.close()
    if record is None or not record.active or not verify_api_key(key.key, record):
        return False
    return (record.tenant, record.role) == (tenant, role)


async def _service_key(service: str, client: str, role: Role, tenant: str) -> ApiKey:
    arguments = ["add", client, "--role", role.value, "--tenant", tenant]
    code, output = await run_module(f"services.{service}.commands.apikeys", arguments)
    match = _KEY_LINE.search(output)
    if code != 0 or match is None:
        raise RuntimeError(
            f"python -m services.{service}.commands.apikeys add {client} failed ({code}): {output.strip()}"
        )
    return ApiKey(client=client, key=match.group(1))


async def ensure_keys(credentials: Credentials) -> Credentials:
    """Per grid company: the head-end's source key (collection), reader keys (read side, work orders) and an
    operator key (work orders); a key from an earlier run is kept while it works."""
    from services.collection.settings import CollectionSettings
    from services.readside.settings import ReadsideSettings
    from services.workorders.settings import WorkordersSettings

    places = {
        "collection": (CollectionSettings().postgres_dsn.get_secret_value(), CollectionSettings().postgres_schema),
        "workorders": (WorkordersSettings().postgres_dsn.get_secret_value(), WorkordersSettings().postgres_schema),
        "readside": (ReadsideSettings().postgres_dsn.get_secret_value(), ReadsideSettings().postgres_schema),
    }
    name = credentials.run_name

    async def key(company: GridCompany, field: str, service: str, client: str, role: Role) -> ApiKey:
        earlier: ApiKey | None = getattr(company, field)
        dsn, schema = places[service]
        if earlier is not None and await _key_works(dsn, schema, earlier, company.tenant, role):
            return earlier
        return await _service_key(service, client, role, company.tenant)

    async def company_keys(company: GridCompany, prefix: str) -> GridCompany:
        wanted = {
            "head_end_key": ("collection", f"{name}-{prefix}head-end", Role.SOURCE),
            "readside_key": ("readside", f"{name}-{prefix}web", Role.READER),
            "workorders_reader_key": ("workorders", f"{name}-{prefix}web", Role.READER),
            "workorders_key": ("workorders", f"{name}-{prefix}work-planning", Role.OPERATOR),
        }
        made = await asyncio.gather(*(key(company, field, *spec) for field, spec in wanted.items()))
        return company.model_copy(update=dict(zip(wanted, made, strict=True)))

    prefixes = {tenant: prefix for tenant, _, prefix in GRID_COMPANIES}
    companies = await asyncio.gather(
        *(company_keys(company, prefixes.get(company.tenant, "")) for company in credentials.grid_companies)
    )
    return credentials.with_companies(list(companies))


async def ensure_ftp_user(company: GridCompany) -> None:
    """The grid company's FTP partner with its password (``ftpusers passwd``, or ``add`` the first time)."""
    login, password = company.ftp_login, company.ftp_password
    module = "services.collection.commands.ftpusers"
    # One word each: a generated password may begin with '-'.
    code, output = await run_module(module, ["passwd", login, f"--password={password}", f"--tenant={company.tenant}"])
    if code == 1 and "no FTP user" in output:
        code, output = await run_module(module, ["add", login, f"--password={password}", f"--tenant={company.tenant}"])
    if code != 0:
        raise RuntimeError(f"python -m {module} for {login} failed ({code}): {output.strip()}")


async def ensure_devices(credentials: Credentials, meterpoints: Sequence[str]) -> Credentials:
    """Each simulated meter a device of grid company A with its own password (``commands.devices add``)."""
    from libs.platform.audit import Actor
    from services.collection.commands.devices import add
    from services.collection.settings import CollectionSettings

    settings, actor = CollectionSettings(), Actor.operator()
    tenant = credentials.grid_companies[0].tenant
    devices = dict(credentials.devices)
    for meterpoint in meterpoints:  # one at a time: the broker's password file takes one writer
        password = devices.get(meterpoint) or secrets.token_urlsafe(18)
        devices[meterpoint] = await add(settings, meterpoint, tenant=tenant, actor=actor, password=password)
    return credentials.model_copy(update={"devices": devices})


async def provision(credentials: Credentials, mqtt_meters: Sequence[str], *, ftp: bool) -> Credentials:
    """Keys, FTP partners and SOAP clients of both grid companies, and A's devices, in parallel where they allow it."""
    devices = ensure_devices(credentials, mqtt_meters)
    keys = ensure_keys(credentials)
    partners = [ensure_ftp_user(company) for company in credentials.grid_companies] if ftp else []
    with_devices, with_keys = await asyncio.gather(devices, keys)
    await asyncio.gather(*partners)
    return with_keys.model_copy(update={"devices": with_devices.devices})


def summary(credentials: Credentials) -> dict[str, Any]:
    """What the run summary shows per grid company (no passwords, only the keys a developer pastes into curl)."""

    def plain(key: ApiKey | None) -> str | None:
        return key.key if key is not None else None

    return {
        company.tenant: {
            "name": company.name,
            "collection (source)": plain(company.head_end_key),
            "readside (reader)": plain(company.readside_key),
            "workorders (reader)": plain(company.workorders_reader_key),
            "workorders (operator)": plain(company.workorders_key),
            "ftp partner": company.ftp_login,
            "soap client (admin)": company.soap_client,
        }
        for company in credentials.grid_companies
    }
