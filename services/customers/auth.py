"""HTTP Basic authentication of client systems (billing, customer centre, work orders), passwords hashed at rest.

Each client system has a name, a password, a role and a tenant (`ClientSystem`): an authenticated caller is a
`libs.platform.tenancy.Principal` of kind ``soap_client``, whose role decides which operations it may call and
whose tenant (grid company) decides which customers and meterpoints it sees. Settings hold only
``scrypt$n$r$p$salt$hash`` strings for the passwords. scrypt
because people may choose these passwords, so a leaked hash must be slow to guess. Its cost (about 50 ms and
16 MiB) is paid once per client and process: a verified password is remembered as an HMAC under a key that
lives only in memory. Uncached checks (first call, wrong passwords, unknown clients) run in a thread and are
limited per remote address by a quota, so guessing, or burning our CPU with bad passwords, is refused early.

Make a hash: ``python -m services.customers.commands.auth <client>`` (reads the password from the terminal).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import re
import secrets
from collections.abc import Mapping
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from libs.flowcontrol.errors import QuotaExceeded
from libs.flowcontrol.quota import Quota
from libs.platform import passwords
from libs.platform.passwords import hash_password, verify_password
from libs.platform.tenancy import Principal, PrincipalKind, Role, validate_tenant

CLIENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_MAX_REMEMBERED = 4  # per client: the current password and a few during a rotation
_REALM = 'Basic realm="gridhub-customers", charset="UTF-8"'


class CredentialChecksExceeded(QuotaExceeded):
    """Too many uncached password checks from one address (Server.Busy, 429)."""

    reason = "credential_checks_exceeded"


class AuthenticationFailed(Exception):
    """No, malformed or wrong credentials (HTTP 401, Client.Authentication)."""

    challenge = _REALM


def check_hash_format(encoded: str) -> str:
    """Return ``encoded`` when it is a hash `verify_password` can use; ValueError otherwise."""
    try:
        return passwords.check_hash_format(encoded)
    except ValueError as error:
        raise ValueError(f"{error} (make one with python -m services.customers.commands.auth)") from None


class ClientSystem(BaseModel):
    """One client system in ``CUSTOMERS_CLIENTS``: its password's hash, its role and its grid company.

    ``{"password_hash": "scrypt$...", "role": "admin", "tenant": "5790000000012"}``; the platform role (the hub's
    own systems, e.g. work orders' enrichment across grid companies) has no tenant, every other role has one.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    password_hash: str
    role: Role
    tenant: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _refuse_bare_hash(cls, value: Any) -> Any:
        if isinstance(value, str):
            raise ValueError(
                'a client system is {"password_hash": "scrypt$...", "role": "...", "tenant": "..."}: '
                "a bare hash says nothing about whom the client works for"
            )
        return value

    @field_validator("password_hash")
    @classmethod
    def _check_hash(cls, value: str) -> str:
        return check_hash_format(value)

    @field_validator("role")
    @classmethod
    def _no_source(cls, value: Role) -> Role:
        if value is Role.SOURCE:
            raise ValueError("role source delivers readings; no SOAP operation does (use reader, operator or admin)")
        return value

    @model_validator(mode="after")
    def _tenant_fits_role(self) -> Self:
        validate_tenant(self.tenant, self.role)
        return self

    def principal(self, name: str) -> Principal:
        """The principal a caller authenticated as this client system is."""
        return Principal(name, PrincipalKind.SOAP_CLIENT, self.role, self.tenant)


def parse_basic(authorization: str | None) -> tuple[str, str] | None:
    """(client, password) from an ``Authorization: Basic ...`` header, or None when there is none usable."""
    if not authorization:
        return None
    scheme, _, encoded = authorization.partition(" ")
    if scheme.lower() != "basic" or not encoded or len(encoded) > 1024:
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    client, sep, password = decoded.partition(":")
    if not sep or not CLIENT_NAME.fullmatch(client):
        return None
    return client, password


class ClientAuthenticator:
    """Verifies Basic credentials against the configured client systems; returns the caller's principal."""

    def __init__(self, clients: Mapping[str, ClientSystem], attempts: Quota) -> None:
        self._clients = dict(clients)
        self._principals = {name: client.principal(name) for name, client in self._clients.items()}
        self._attempts = attempts
        self._memory_key = secrets.token_bytes(32)
        self._verified: dict[str, set[bytes]] = {}
        # Compared against when the client is unknown, so a miss costs as much as a wrong password.
        self._dummy = hash_password(secrets.token_urlsafe(16))

    async def authenticate(self, authorization: str | None, remote: str) -> Principal:
        """The client's principal; `AuthenticationFailed` or `CredentialChecksExceeded` otherwise."""
        credentials = parse_basic(authorization)
        if credentials is None:
            raise AuthenticationFailed("HTTP Basic credentials of a client system are required")
        client, password = credentials
        token = hmac.new(self._memory_key, f"{client}:{password}".encode(), hashlib.sha256).digest()
        if token in self._verified.get(client, ()):
            return self._principals[client]
        decision = self._attempts.try_acquire(remote)
        if not decision.allowed:
            raise CredentialChecksExceeded(
                "too many credential checks from this address", retry_after=decision.retry_after
            )
        system = self._clients.get(client)
        encoded = system.password_hash if system is not None else None
        ok = await asyncio.to_thread(verify_password, password, encoded or self._dummy)
        if not ok or encoded is None:
            raise AuthenticationFailed("unknown client or wrong password")
        remembered = self._verified.setdefault(client, set())
        if len(remembered) >= _MAX_REMEMBERED:
            remembered.clear()
        remembered.add(token)
        return self._principals[client]
