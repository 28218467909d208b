"""The `gridhub` command line: every command has help, and the script is installed."""

from __future__ import annotations

import asyncio
import json
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from libs.events.gsrn import with_check_digit
from libs.platform.apikeys import ApiKeyRecord, parse_key_id, verify_api_key
from libs.platform.apikeys_store import PostgresKeyStore
from libs.platform.db import create_pool
from libs.platform.passwords import verify_password
from ops.cli import app
from services.collection.adapters.ftpusers import FtpUser, PostgresFtpUserStore
from stack.config import StackConfig
from stack.mosquitto import Mosquitto
from tests.tenants import TENANT_A

COMMANDS = [
    [],
    ["device", "add"],
    ["device", "passwd"],
    ["device", "remove"],
    ["device", "list"],
    ["device", "prune"],
    ["apikey", "add"],
    ["apikey", "rotate"],
    ["apikey", "revoke"],
    ["apikey", "list"],
    ["ftpuser", "add"],
    ["ftpuser", "rotate"],
    ["ftpuser", "passwd"],
    ["ftpuser", "disable"],
    ["ftpuser", "list"],
    ["tenant", "list"],
    ["audit", "list"],
    ["lag"],
    ["breakers"],
    ["outbox"],
    ["status"],
    ["dlq", "replay"],
    ["rebuild"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "gridhub")
def test_every_command_has_help(command: list[str]) -> None:
    result = CliRunner().invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


def test_the_gridhub_script_is_installed() -> None:
    script = shutil.which("gridhub", path=str(Path(sys.executable).parent))
    assert script is not None, "the [project.scripts] entry is not installed in the virtualenv"
    result = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert "dlq" in result.stdout
    assert "rebuild" in result.stdout


def test_customers_has_logins_not_api_keys() -> None:
    result = CliRunner().invoke(app, ["apikey", "add", "customers", "billing"])
    assert result.exit_code == 2
    assert "CUSTOMERS_CLIENTS" in result.output


def test_breakers_names_services_it_cannot_reach() -> None:
    closed = {f"{name}_HTTP_PORT": "9" for name in ("COLLECTION", "CUSTOMERS", "WORKORDERS", "READSIDE")}
    result = CliRunner().invoke(app, ["breakers", "--json"], env=closed)
    assert result.exit_code == 0, result.output
    states = json.loads(result.output)
    assert {state["service"] for state in states} == {"collection", "customers", "workorders", "readside", "vee"}
    assert all(state["state"] is None and state["detail"].startswith("unreachable") for state in states)


@pytest.mark.mqtt
def test_a_device_is_added_and_removed(stack: StackConfig) -> None:
    meterpoint = with_check_digit("5713131" + "".join(secrets.choice("0123456789") for _ in range(10)))
    added = CliRunner().invoke(app, ["device", "add", meterpoint, "--tenant", TENANT_A])
    assert added.exit_code == 0, added.output
    assert "password (shown once)" in added.output
    assert f"{meterpoint}:" in Path(Mosquitto(stack).passwd).read_text()
    removed = CliRunner().invoke(app, ["device", "remove", meterpoint])
    assert removed.exit_code == 0, removed.output
    assert f"{meterpoint}:" not in Path(Mosquitto(stack).passwd).read_text()


@pytest.mark.postgres
@pytest.mark.parametrize(
    ("service", "schema", "role"),
    [("readside", "readside", "reader"), ("collection", None, "source"), ("workorders", None, "operator")],
)
def test_a_key_is_made_in_the_services_database_and_revoked(
    stack: StackConfig, service: str, schema: str | None, role: str
) -> None:
    client = f"test-{secrets.token_hex(4)}"
    added = CliRunner().invoke(app, ["apikey", "add", service, client, "--tenant", TENANT_A])
    assert added.exit_code == 0, added.output
    key = added.output.split("API key (shown once): ")[1].split()[0]
    key_id = parse_key_id(key)
    assert key_id is not None
    assert f"role {role}" in added.output
    record = asyncio.run(_stored(stack, service, schema, key_id))
    assert record is not None
    assert (record.client, record.tenant) == (client, TENANT_A)
    assert verify_api_key(key, record)
    revoked = CliRunner().invoke(app, ["apikey", "revoke", service, key_id])
    assert revoked.exit_code == 0, revoked.output
    after = asyncio.run(_stored(stack, service, schema, key_id))
    assert after is not None
    assert not after.active


async def _stored(stack: StackConfig, database: str, schema: str | None, key_id: str) -> ApiKeyRecord | None:
    pool = await create_pool(stack.postgres_dsn(database), schema=schema, max_size=1)
    try:
        return await PostgresKeyStore(pool).get(key_id)
    finally:
        await pool.close()


@pytest.mark.postgres
def test_a_partner_password_may_begin_with_a_dash(stack: StackConfig) -> None:
    login, password = f"p{secrets.token_hex(4)}", "-" + secrets.token_urlsafe(16)
    added = CliRunner().invoke(app, ["ftpuser", "add", login, "--tenant", TENANT_A, "--password", password])
    assert added.exit_code == 0, added.output
    assert password not in added.output, "a password the operator chose is not printed back"
    user = asyncio.run(_partner(stack, login))
    assert user is not None
    assert verify_password(password, user.password_hash)


@pytest.mark.mqtt
def test_a_device_password_may_begin_with_a_dash(stack: StackConfig) -> None:
    meterpoint = with_check_digit("5713131" + "".join(secrets.choice("0123456789") for _ in range(10)))
    password = "-x" + secrets.token_urlsafe(12)
    added = CliRunner().invoke(app, ["device", "add", meterpoint, "--tenant", TENANT_A, "--password", password])
    try:
        assert added.exit_code == 0, added.output
        assert f"{meterpoint}:" in Path(Mosquitto(stack).passwd).read_text()
    finally:
        CliRunner().invoke(app, ["device", "remove", meterpoint])


async def _partner(stack: StackConfig, login: str) -> FtpUser | None:
    pool = await create_pool(stack.postgres_dsn("collection"), max_size=1)
    try:
        return await PostgresFtpUserStore(pool).get(login)
    finally:
        await pool.close()


@pytest.mark.postgres
def test_a_key_without_a_tenant_is_refused_unless_it_is_the_platform_s() -> None:
    refused = CliRunner().invoke(app, ["apikey", "add", "readside", f"t-{secrets.token_hex(4)}"])
    assert refused.exit_code == 2
    assert "belongs to a tenant" in refused.output
    refused = CliRunner().invoke(
        app, ["apikey", "add", "readside", f"t-{secrets.token_hex(4)}", "--role", "platform", "--tenant", TENANT_A]
    )
    assert refused.exit_code == 2
    assert "no tenant" in refused.output
