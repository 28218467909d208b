"""FTP partner credentials over a real FTP socket, managed with the real `gridhub` entry point.

An expired partner cannot log in; a rotated password overlaps (old and new both open a session until the old one's
end, then only the new one); a disabled partner cannot log in. The partner's end and overlap come from the database
the command wrote, so the tests wait for that moment on the clock and try once: a failed login costs the address a
back-off (`FailureBackoff`), which polling failures would only lengthen.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import aioftp
import pytest
from typer.testing import CliRunner

from ops.cli import app as gridhub
from tests.integration.collection.conftest import FtpFactory, FtpService
from tests.integration.collection.support import ftp_login
from tests.tenants import TENANT_A

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]


def _invoke(argv: list[str]) -> str:
    result = CliRunner().invoke(gridhub, argv, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


async def gridhub_cli(*argv: str) -> str:
    """``gridhub argv`` in a thread (it runs an event loop of its own; the service runs in this one)."""
    return await asyncio.to_thread(_invoke, list(argv))


@pytest.fixture
async def service(ftp_service: FtpFactory, pg_dsn: str, pg_schema: str) -> AsyncIterator[FtpService]:
    """The collection app with its FTP server; `gridhub` writes partners into the app's own schema."""
    saved = {name: os.environ.get(name) for name in ("COLLECTION_POSTGRES_DSN", "COLLECTION_POSTGRES_SCHEMA")}
    os.environ["COLLECTION_POSTGRES_DSN"], os.environ["COLLECTION_POSTGRES_SCHEMA"] = pg_dsn, pg_schema
    try:
        async with ftp_service() as running:
            yield running
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


async def logs_in(service: FtpService, login: str, password: str) -> bool:
    """One login attempt: True when the server opened the session, False for its 530."""
    try:
        client = await ftp_login(service.port, login, password)
    except aioftp.StatusCodeError as error:
        if "530" not in str(error.received_codes):
            raise  # anything but "login incorrect" is not the answer these tests look for
        return False
    await client.quit()
    return True


async def until(moment: datetime, timeout: float = 30.0) -> None:
    """Wait (with a deadline) until the wall clock has passed ``moment``."""
    async with asyncio.timeout(timeout):
        while datetime.now(UTC) <= moment:
            await asyncio.sleep(0.05)


def new_login() -> str:
    return f"p{secrets.token_hex(4)}"


async def test_an_expired_partner_cannot_log_in(service: FtpService) -> None:
    login, password = new_login(), secrets.token_urlsafe(16)
    await gridhub_cli("ftpuser", "add", login, "--tenant", TENANT_A, "--password", password, "--expires-in", "3s")
    assert await logs_in(service, login, password)
    account = await service.users.get(login)
    assert account is not None
    assert account.expires_at is not None
    assert account.tenant == TENANT_A
    await until(account.expires_at)
    assert not await logs_in(service, login, password), "an expired partner opened a session"


async def test_a_rotated_password_overlaps_then_only_the_new_one_logs_in(service: FtpService) -> None:
    login, old = new_login(), "-" + secrets.token_urlsafe(16)  # a password may begin with '-'
    await gridhub_cli("ftpuser", "add", login, "--tenant", TENANT_A, "--password", old)
    assert await logs_in(service, login, old)
    new = secrets.token_urlsafe(16)
    output = await gridhub_cli("ftpuser", "rotate", login, "--password", new, "--overlap", "4s")
    assert "the old one works until" in output
    assert old not in output
    assert new not in output, "a password the operator chose is not printed back"
    assert await logs_in(service, login, old), "the old password works during the overlap"
    assert await logs_in(service, login, new), "the new password works at once"
    account = await service.users.get(login)
    assert account is not None
    assert account.previous_valid_until is not None
    await until(account.previous_valid_until)
    assert await logs_in(service, login, new)
    assert not await logs_in(service, login, old), "the old password outlived its overlap"


async def test_a_disabled_partner_cannot_log_in_and_every_change_is_audited(service: FtpService) -> None:
    login, password = new_login(), secrets.token_urlsafe(16)
    await gridhub_cli("ftpuser", "add", login, "--tenant", TENANT_A, "--password", password)
    assert await logs_in(service, login, password)
    await gridhub_cli("ftpuser", "disable", login)
    assert not await logs_in(service, login, password)
    listing = await gridhub_cli("ftpuser", "list", "--tenant", TENANT_A)
    assert f"{login}  {TENANT_A}  source" in listing
    assert "disabled" in listing
    from libs.platform.audit import list_audit

    assert service.app.state.parts.pool is not None
    async with service.app.state.parts.pool.acquire() as connection:
        events = await list_audit(connection, tenant=TENANT_A)
    assert [e.action for e in events if e.subject == login] == ["ftp_partner.add", "ftp_partner.disable"]
    assert all(password not in str(e.as_dict()) for e in events)
