"""Client systems' credentials: hashed at rest, checked once per process, guessing limited; dev defaults refused."""

from __future__ import annotations

import base64
import json

import pytest
from pydantic import ValidationError

from libs.flowcontrol.errors import QuotaExceeded
from libs.flowcontrol.quota import Quota
from libs.flowcontrol.testing import FakeClock
from libs.platform.tenancy import Principal, PrincipalKind, Role
from services.customers.auth import (
    AuthenticationFailed,
    ClientAuthenticator,
    ClientSystem,
    hash_password,
    parse_basic,
    verify_password,
)
from services.customers.commands import auth as auth_command
from services.customers.settings import DEV_CLIENTS, CustomersSettings
from tests.integration.customers.support import dev_password
from tests.tenants import TENANT_A

PROD_HASH = hash_password("a-real-generated-password-123456")
PROD_CLIENT = {"password_hash": PROD_HASH, "role": "admin", "tenant": TENANT_A}


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
    for client, system in DEV_CLIENTS.items():
        assert verify_password(dev_password(client), system.password_hash), client


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
    billing = Principal("billing", PrincipalKind.SOAP_CLIENT, Role.ADMIN, TENANT_A)
    assert await authenticator.authenticate(good, "10.0.0.1") == billing  # spends one check
    for _ in range(5):
        assert await authenticator.authenticate(good, "10.0.0.1") == billing  # remembered: no check spent
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
        CustomersSettings(environment="production", clients={"billing": PROD_CLIENT})
    real_dsn = "postgresql://customers:Zx9-real-secret@db:5432/customers"
    with pytest.raises(ValidationError, match="dev-only client credentials"):
        CustomersSettings(environment="production", postgres_dsn=real_dsn)
    settings = CustomersSettings(environment="production", postgres_dsn=real_dsn, clients={"billing": PROD_CLIENT})
    assert set(settings.clients) == {"billing"}


def test_client_credentials_must_be_scrypt_hashes() -> None:
    with pytest.raises(ValidationError, match="scrypt"):
        CustomersSettings(clients={"billing": {**PROD_CLIENT, "password_hash": "plain-text-password"}})
    with pytest.raises(ValidationError, match="scrypt parameters"):
        CustomersSettings(clients={"billing": {**PROD_CLIENT, "password_hash": "scrypt$1024$8$1$YWJj$YWJj"}})


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (PROD_HASH, "a bare hash says nothing"),
        ({"password_hash": PROD_HASH, "role": "reader"}, "role reader belongs to a tenant"),
        ({"password_hash": PROD_HASH, "role": "platform", "tenant": TENANT_A}, "platform role belongs to no tenant"),
        ({"password_hash": PROD_HASH, "role": "admin", "tenant": "5790000000013"}, "check character"),
        ({"password_hash": PROD_HASH, "role": "source", "tenant": TENANT_A}, "no SOAP operation does"),
        ({"password_hash": PROD_HASH, "role": "boss", "tenant": TENANT_A}, "role"),
        ({**PROD_CLIENT, "scopes": ["all"]}, "Extra inputs"),
    ],
)
def test_every_client_system_has_a_role_and_a_tenant_that_fits_it(entry: object, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        CustomersSettings(clients={"billing": entry})


def test_client_systems_are_read_from_json_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    entry = {"platform-ops": {"password_hash": PROD_HASH, "role": "platform"}}
    monkeypatch.setenv("CUSTOMERS_CLIENTS", json.dumps(entry))
    system = CustomersSettings().clients["platform-ops"]
    assert system.principal("platform-ops") == Principal("platform-ops", PrincipalKind.SOAP_CLIENT, Role.PLATFORM, None)


def test_the_auth_command_prints_a_settings_entry_with_a_verifiable_hash(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    password = "a-generated-password-0123456789"
    monkeypatch.setattr(auth_command.getpass, "getpass", lambda prompt: password)
    assert auth_command.main(["billing", "--role", "operator", "--tenant", TENANT_A]) == 0
    entries = json.loads("{" + capsys.readouterr().out.strip() + "}")
    assert list(entries) == ["billing"]
    system = ClientSystem.model_validate(entries["billing"])
    assert (system.role, system.tenant) == (Role.OPERATOR, TENANT_A)
    assert verify_password(password, system.password_hash)
    assert CustomersSettings(clients=entries).clients.keys() == {"billing"}


def test_the_auth_command_refuses_a_platform_entry_with_a_tenant(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(auth_command.getpass, "getpass", lambda prompt: "a-generated-password-0123456789")
    with pytest.raises(SystemExit, match="belongs to no tenant"):
        auth_command.main(["ops", "--role", "platform", "--tenant", TENANT_A])


def test_the_auth_command_refuses_short_passwords_and_bad_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(auth_command.getpass, "getpass", lambda prompt: "too-short")
    with pytest.raises(SystemExit, match="at least 16"):
        auth_command.main(["billing", "--role", "reader", "--tenant", TENANT_A])
    with pytest.raises(SystemExit, match="client names"):
        auth_command.main(["bad name", "--role", "reader", "--tenant", TENANT_A])
