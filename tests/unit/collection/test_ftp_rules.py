"""The FTP server's rules without sockets: the jail's path check and partner logins."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import pytest
from prometheus_client import CollectorRegistry

from libs.flowcontrol.quota import Quota
from libs.flowcontrol.testing import FakeClock
from services.collection.adapters.ftpusers import InMemoryFtpUserStore, check_login, new_ftp_user
from services.collection.entrypoints.ftp import PartnerUser, PartnerUsers, escapes_home, server_tls_context
from services.collection.filedrop import Spool
from services.collection.metrics import CollectionMetrics
from services.collection.settings import FtpSettings
from tests.tenants import TENANT_A

ROOT = PurePosixPath("/")


@pytest.mark.parametrize(
    ("current", "argument"),
    [
        (ROOT, ".."),
        (ROOT, "../etc/passwd"),
        (ROOT, "/.."),
        (ROOT, "/inbox/../../x"),
        (PurePosixPath("/inbox"), "../.."),
        (PurePosixPath("/inbox"), "a/../../../b"),
    ],
)
def test_paths_climbing_above_the_home_escape(current: PurePosixPath, argument: str) -> None:
    assert escapes_home(current, argument)


@pytest.mark.parametrize(
    ("current", "argument"),
    [
        (ROOT, ""),
        (ROOT, "inbox"),
        (ROOT, "/outbox/a.csv.receipt.json"),
        (PurePosixPath("/inbox"), ".."),
        (PurePosixPath("/inbox"), "../outbox"),
        (ROOT, "/inbox/../outbox/./x"),
        (ROOT, "..file.csv"),
    ],
)
def test_paths_inside_the_home_do_not(current: PurePosixPath, argument: str) -> None:
    assert not escapes_home(current, argument)


@pytest.mark.parametrize("login", ["anonymous", "ftp", "Upper", "../x", "a/b", "", "x" * 64, "."])
def test_logins_that_could_be_anonymous_or_climb_are_refused(login: str) -> None:
    with pytest.raises(ValueError, match="login"):
        check_login(login)


def test_a_partner_password_is_stored_as_an_scrypt_hash_only() -> None:
    user = new_ftp_user("hes-north", "correct horse battery staple", tenant=TENANT_A)
    assert user.password_hash.startswith("scrypt$")
    assert "correct horse" not in user.password_hash
    with pytest.raises(ValueError, match="12 characters"):
        new_ftp_user("hes-north", "short", tenant=TENANT_A)


async def test_logins_anonymous_refused_wrong_refused_sessions_capped(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    store = InMemoryFtpUserStore([new_ftp_user("hes-north", "correct horse battery staple", tenant=TENANT_A)])
    users = PartnerUsers(
        store,
        Spool(tmp_path),
        max_connections_per_user=1,
        checks=Quota(1, 3, clock=FakeClock()),
        metrics=CollectionMetrics(registry),
    )
    state, _, info = await users.get_user("anonymous")
    assert state is users.GetUserResponse.ERROR
    assert "anonymous" in info
    _, unknown, _ = await users.get_user("nobody")
    assert unknown is not None
    assert await users.check(unknown, "whatever-password", "10.0.0.1") == "login incorrect"

    _, first, _ = await users.get_user("hes-north")
    assert first is not None
    assert await users.check(first, "wrong password here", "10.0.0.1") == "login incorrect"
    assert await users.check(first, "correct horse battery staple", "10.0.0.1") is None
    assert (tmp_path / "users" / "hes-north" / "inbox").is_dir()
    _, second, _ = await users.get_user("hes-north")
    assert second is not None
    # Remembered: no scrypt (and no check from the address's budget), but one session at a time.
    assert "too many sessions" in (await users.check(second, "correct horse battery staple", "10.0.0.1") or "")
    await users.notify_logout(first)
    assert await users.check(second, "correct horse battery staple", "10.0.0.1") is None
    assert isinstance(second, PartnerUser)
    assert second.authenticated

    # Guessing from one address runs out of uncached checks (3 used: unknown, wrong, first right one).
    _, third, _ = await users.get_user("hes-north")
    assert third is not None
    assert "too many login attempts" in (await users.check(third, "another wrong one", "10.0.0.1") or "")
    assert registry.get_sample_value("gridhub_collection_ftp_logins_total", {"outcome": "throttled"}) == 1


@pytest.mark.parametrize("login", ["../../x", "a/b", "..", "x" * 64, "A", "a\\b", "a\x00b"])
async def test_a_login_that_could_become_a_path_is_refused_at_user(login: str, tmp_path: Path) -> None:
    metrics = CollectionMetrics(CollectorRegistry())
    users = PartnerUsers(
        InMemoryFtpUserStore(), Spool(tmp_path), max_connections_per_user=4, checks=Quota(2, 20), metrics=metrics
    )
    state, user, _ = await users.get_user(login)
    assert (state, user) == (PartnerUsers.GetUserResponse.ERROR, None)
    assert not (tmp_path / "users").exists()
    with pytest.raises(ValueError, match="a login is"):
        Spool(tmp_path).home(login)


def test_missing_tls_files_stop_the_server_at_start_naming_them(tmp_path: Path) -> None:
    settings = FtpSettings(tls_cert_file=tmp_path / "missing.crt", tls_key_file=tmp_path / "missing.key")
    with pytest.raises(ValueError, match=r"ftp TLS: cannot load the certificate .*missing\.crt"):
        server_tls_context(settings)
    assert server_tls_context(FtpSettings()) is None
