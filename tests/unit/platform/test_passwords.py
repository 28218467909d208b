"""Password hashes: what `hash_password` makes passes `check_hash_format`; weak parameters are refused (issue 14)."""

from __future__ import annotations

import base64

import pytest
from pydantic import ValidationError

from libs.platform.passwords import check_hash_format, hash_password, verify_password
from services.customers.settings import CustomersSettings

REAL_DSN = "postgresql://customers:Zq8v4Lw2pR7kT1xN@db.internal:5432/customers"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


SALT, DIGEST = _b64(b"s" * 16), _b64(b"d" * 32)


def test_what_hash_password_makes_is_accepted_and_verifies() -> None:
    encoded = hash_password("a partner's password")
    assert check_hash_format(encoded) == encoded
    assert verify_password("a partner's password", encoded)


@pytest.mark.parametrize(
    ("encoded", "message"),
    [
        (f"scrypt$1024$8$1${SALT}${DIGEST}", "scrypt parameters"),  # cost below 2**14
        (f"scrypt$20000$8$1${SALT}${DIGEST}", "scrypt parameters"),  # not a power of two
        (f"scrypt$16384$1$1${SALT}${DIGEST}", "scrypt parameters"),  # block size below 8
        (f"scrypt$16384$8$0${SALT}${DIGEST}", "scrypt parameters"),  # no parallelism
        (f"scrypt$16384$8$1${_b64(b's' * 8)}${DIGEST}", "salt must be >= 16 bytes"),
        (f"scrypt$16384$8$1${SALT}${_b64(b'd')}", "hash >= 32 bytes"),  # one byte: a wrong password matches 1 in 256
        ("pbkdf2$1000$abc$def", "must be 'scrypt"),
    ],
)
def test_weak_or_foreign_hashes_are_refused(encoded: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_hash_format(encoded)


def test_production_customers_settings_refuse_a_weak_client_hash() -> None:
    weak = f"scrypt$16384$8$1${SALT}${_b64(b'd' * 4)}"
    with pytest.raises(ValidationError, match="hash >= 32 bytes"):
        CustomersSettings(environment="production", postgres_dsn=REAL_DSN, clients={"billing": _client(weak)})
    strong = hash_password("billing's production password")
    settings = CustomersSettings(environment="production", postgres_dsn=REAL_DSN, clients={"billing": _client(strong)})
    assert settings.clients["billing"].password_hash == strong


def _client(password_hash: str) -> dict[str, str]:
    """A customers client system entry (since tenancy: a role and a tenant beside the hash)."""
    return {"password_hash": password_hash, "role": "reader", "tenant": "5790000000012"}
