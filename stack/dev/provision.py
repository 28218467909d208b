"""Dev credentials for ``make run``: MQTT devices, API keys, the FTP partner and the SOAP login of the simulator.

Everything is made with the services' own tools: ``services.collection.commands.devices`` (Mosquitto's
password file), ``python -m services.<service>.commands.apikeys`` (collection, workorders, readside) and
``services.collection.commands.ftpusers`` (run as commands, in parallel), the customers service's scrypt
``hash_password`` (its ``auth`` command only asks interactively).

The credentials are kept in ``<run dir>/credentials.json`` (mode 0600, dev only, inside the git-ignored stack
folder) and reused by the next run while they still work, so keys do not pile up and a developer's curl
commands keep working. ``make clean`` deletes the folder together with the databases that know the keys.
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
"""The grid company (tenant) the dev stack's principals belong to."""
_KEY_LINE = re.compile(r"API key \(shown once\): (\S+)")


class ApiKey(BaseModel):
    """A plain API key (``ghk_<id>_<secret>``) and the client it was made for."""

    client: str
    key: str


class Credentials(BaseModel):
    """What ``make run`` provisioned; the simulator reads it, the summary prints where it is."""

    run_name: str
    soap_client: str
    soap_password: str
    ftp_login: str
    ftp_password: str
    collection_key: ApiKey | None = None
    workorders_key: ApiKey | None = None
    readside_key: ApiKey | None = None
    devices: dict[str, str] = {}

    @classmethod
    def fresh(cls, run_name: str) -> Credentials:
        """New passwords for a run called ``run_name`` (no keys yet)."""
        return cls(
            run_name=run_name,
            soap_client=run_name,
            soap_password=secrets.token_urlsafe(24),
            ftp_login=f"{run_name}-partner",
            ftp_password=secrets.token_urlsafe(24),
        )

    @classmethod
    def load(cls, path: Path, run_name: str) -> Credentials:
        """The credentials of an earlier run with the same name, or fresh ones."""
        if path.exists():
            try:
                earlier = cls.model_validate_json(path.read_bytes())
            except ValueError:
                earlier = None
            if earlier is not None and earlier.run_name == run_name:
                return earlier
        return cls.fresh(run_name)

    def save(self, path: Path) -> None:
        """Write atomically with mode 0600 (dev secrets, but secrets)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as file:
            file.write(self.model_dump_json(indent=2))
        partial.replace(path)


def customers_clients(credentials: Credentials, env: Mapping[str, str]) -> str:
    """``CUSTOMERS_CLIENTS``: the configured (or dev) client systems plus the simulator's login."""
    from libs.platform.passwords import hash_password
    from services.customers.settings import DEV_CLIENTS

    raw = env.get("CUSTOMERS_CLIENTS", "").strip()
    dev = {name: client.model_dump(mode="json") for name, client in DEV_CLIENTS.items()}
    clients: dict[str, Any] = json.loads(raw) if raw else dev
    # The simulator registers its grid company's meterpoints and customers: an admin of that tenant.
    password_hash = hash_password(credentials.soap_password)
    clients[credentials.soap_client] = {"password_hash": password_hash, "role": "admin", "tenant": DEV_GRID_COMPANY}
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


async def _key_works(dsn: str, schema: str | None, key: ApiKey | None) -> bool:
    """True when ``key`` is stored, matches and is not revoked."""
    key_id = parse_key_id(key.key) if key is not None else None
    if key is None or key_id is None:
        return False
    pool = await create_pool(dsn, schema=schema, min_size=1, max_size=1, application_name="gridhub-ops")
    try:
        record = await PostgresKeyStore(pool).get(key_id)
    except asyncpg.UndefinedTableError:
        return False
    finally:
        await pool.close()
    return record is not None and record.active and verify_api_key(key.key, record)


async def _service_key(service: str, client: str, role: Role, tenant: str = DEV_GRID_COMPANY) -> ApiKey:
    arguments = ["add", client, "--role", role.value, "--tenant", tenant]
    code, output = await run_module(f"services.{service}.commands.apikeys", arguments)
    match = _KEY_LINE.search(output)
    if code != 0 or match is None:
        raise RuntimeError(
            f"python -m services.{service}.commands.apikeys add {client} failed ({code}): {output.strip()}"
        )
    return ApiKey(client=client, key=match.group(1))


async def ensure_keys(credentials: Credentials) -> Credentials:
    """Keys for the head-end (collection, write), work planning (work orders, write) and the web (read side, read)."""
    from services.collection.settings import CollectionSettings
    from services.readside.settings import ReadsideSettings
    from services.workorders.settings import WorkordersSettings

    collection, workorders, readside = CollectionSettings(), WorkordersSettings(), ReadsideSettings()
    name = credentials.run_name

    async def collection_key() -> ApiKey:
        dsn = collection.postgres_dsn.get_secret_value()
        if await _key_works(dsn, collection.postgres_schema, credentials.collection_key):
            assert credentials.collection_key is not None
            return credentials.collection_key
        return await _service_key("collection", f"{name}-head-end", Role.SOURCE)

    async def workorders_key() -> ApiKey:
        dsn = workorders.postgres_dsn.get_secret_value()
        if await _key_works(dsn, workorders.postgres_schema, credentials.workorders_key):
            assert credentials.workorders_key is not None
            return credentials.workorders_key
        return await _service_key("workorders", f"{name}-work-planning", Role.OPERATOR)

    async def readside_key() -> ApiKey:
        dsn = readside.postgres_dsn.get_secret_value()
        if await _key_works(dsn, readside.postgres_schema, credentials.readside_key):
            assert credentials.readside_key is not None
            return credentials.readside_key
        return await _service_key("readside", f"{name}-web", Role.READER)

    keys = await asyncio.gather(collection_key(), workorders_key(), readside_key())
    return credentials.model_copy(
        update={"collection_key": keys[0], "workorders_key": keys[1], "readside_key": keys[2]}
    )


async def ensure_ftp_user(credentials: Credentials) -> None:
    """The simulator's FTP partner with its password (``ftpusers passwd``, or ``add`` the first time)."""
    login, password = credentials.ftp_login, credentials.ftp_password
    module = "services.collection.commands.ftpusers"
    code, output = await run_module(module, ["passwd", login, "--password", password])
    if code == 1 and "no FTP user" in output:
        code, output = await run_module(module, ["add", login, "--password", password])
    if code != 0:
        raise RuntimeError(f"python -m {module} for {login} failed ({code}): {output.strip()}")


def ensure_devices(credentials: Credentials, meterpoints: Sequence[str]) -> Credentials:
    """Let each simulated meter log in to Mosquitto with its own password (``services.collection.commands.devices``)."""
    from services.collection.commands.devices import add_device

    devices = dict(credentials.devices)
    for meterpoint in meterpoints:
        devices[meterpoint] = add_device(meterpoint, devices.get(meterpoint) or secrets.token_urlsafe(18))
    return credentials.model_copy(update={"devices": devices})


async def provision(credentials: Credentials, mqtt_meters: Sequence[str], *, ftp: bool) -> Credentials:
    """Devices, keys and the FTP partner, in parallel where the tools allow it (the password file does not)."""
    devices = asyncio.to_thread(ensure_devices, credentials, mqtt_meters)
    keys = ensure_keys(credentials)
    partner = ensure_ftp_user(credentials) if ftp else asyncio.sleep(0)
    with_devices, with_keys, _ = await asyncio.gather(devices, keys, partner)
    return with_keys.model_copy(update={"devices": with_devices.devices})


def summary(credentials: Credentials) -> dict[str, Any]:
    """What the run summary shows (no passwords, only the keys a developer pastes into curl)."""
    return {
        "collection": credentials.collection_key.key if credentials.collection_key else None,
        "workorders": credentials.workorders_key.key if credentials.workorders_key else None,
        "readside": credentials.readside_key.key if credentials.readside_key else None,
    }
