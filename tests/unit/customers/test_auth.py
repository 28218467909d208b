"""Client systems' credentials: hashed at rest, checked once per process, guessing limited; dev defaults refused."""

from __future__ import annotations

import base64

import pytest
from pydantic import ValidationError

from libs.flowcontrol.errors import QuotaExceeded
from libs.flowcontrol.quota import Quota
from libs.flowcontrol.testing import FakeClock
from services.customers.auth import (
    AuthenticationFailed,
    ClientAuthenticator,
    hash_password,
    parse_basic,
    verify_password,
)
from services.customers.commands import auth as auth_command
from services.customers.settings import DEV_CLIENTS, CustomersSettings
from tests.integration.customers.support import dev_password

PROD_HASH = hash_password("a-real-generated-password-123456")


def basic(client: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{client}:{password}".encode()).decode()


def test_hashes_verify_only_their_password() -> None:
    encoded = hash_password("s3cret-pass-phrase")
    assert encoded.startswith("scrypt$16384$8$1$")
    assert verify_password("s3cret-pass-phrase", encoded)
    assert not verify_password("s3cret-pass-phrasE", encoded)
    assert not verify_password("s3cret-pass-phrase", "sha1$abc")
    assert hash_password("same") != hash_password("same")  # salted


def test_the_dev_clients_have_the_documented_dev_passwords() -> None:
    for client, encoded in DEV_CLIENTS.items():
        assert verify_password(dev_password(client), encoded), client


@pytest.mark.parametrize(
    "header",
    [None, "", "Bearer abc", "Basic !!!", "Basic " + base64.b64encode(b"no-colon").decode(), basic("bad name", "x")],
)
def test_unusable_authorization_headers(header: str | None) -> None:
    assert parse_basic(header) is None


def test_parse_basic_keeps_colons_in_passwords() -> None:
    assert parse_basic(basic("billing", "a:b")) == ("billing", "a:b")


async def test_a_verified_password_is_remembered_and_guessing_is_limited() -> None:
    attempts = Quota(rate=0.001, burst=2, clock=FakeClock())
    authenticator = ClientAuthenticator({"billing": DEV_CLIENTS["billing"]}, attempts)
    good = basic("billing", dev_password("billing"))
    assert await authenticator.authenticate(good, "10.0.0.1") == "billing"  # spends one check
    for _ in range(5):
        assert await authenticator.authenticate(good, "10.0.0.1") == "billing"  # remembered: no check spent
    with pytest.raises(AuthenticationFailed):
        await authenticator.authenticate(basic("billing", "guess"), "10.0.0.1")
    with pytest.raises(QuotaExceeded):
        await authenticator.authenticate(basic("billing", "guess-again"), "10.0.0.1")
    with pytest.raises(AuthenticationFailed):
        await authenticator.authenticate(basic("nobody", "guess"), "10.0.0.2")  # another address, its own quota
    with pytest.raises(AuthenticationFailed):
        await authenticator.authenticate(None, "10.0.0.3")


def test_production_refuses_dev_defaults() -> None:
    with pytest.raises(ValidationError, match="postgres_dsn"):
        CustomersSettings(environment="production", clients={"billing": PROD_HASH})
    real_dsn = "postgresql://customers:Zx9-real-secret@db:5432/customers"
    with pytest.raises(ValidationError, match="dev-only client credentials"):
        CustomersSettings(environment="production", postgres_dsn=real_dsn)
    settings = CustomersSettings(environment="production", postgres_dsn=real_dsn, clients={"billing": PROD_HASH})
    assert set(settings.clients) == {"billing"}


def test_client_credentials_must_be_scrypt_hashes() -> None:
    with pytest.raises(ValidationError, match="scrypt"):
        CustomersSettings(clients={"billing": "plain-text-password"})
    with pytest.raises(ValidationError, match="scrypt parameters"):
        CustomersSettings(clients={"billing": "scrypt$1024$8$1$YWJj$YWJj"})


def test_the_auth_command_prints_a_settings_entry_with_a_verifiable_hash(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    password = "a-generated-password-0123456789"
    monkeypatch.setattr(auth_command.getpass, "getpass", lambda prompt: password)
    assert auth_command.main(["billing"]) == 0
    client, _, encoded = capsys.readouterr().out.strip().partition(": ")
    assert client == '"billing"'
    assert verify_password(password, encoded.strip('"'))
    assert CustomersSettings(clients={"billing": encoded.strip('"')}).clients.keys() == {"billing"}


def test_the_auth_command_refuses_short_passwords_and_bad_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(auth_command.getpass, "getpass", lambda prompt: "too-short")
    with pytest.raises(SystemExit, match="at least 16"):
        auth_command.main(["billing"])
    with pytest.raises(SystemExit, match="client names"):
        auth_command.main(["bad name"])
