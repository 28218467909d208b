"""API-key authentication for the REST APIs: keys hashed at rest, one tenant and one role per key.

A key reads ``ghk_<key id>_<secret>``. The key id is not secret: it finds the stored record without a scan
and names the key in logs. Only the SHA-256 of the whole key is stored; the plain key is shown once, when
`generate_api_key` creates it.

Wiring: ``set_key_store(app, store)`` in the composition root, then protect a route with
``Depends(require_role(Role.SOURCE))``; the dependency returns the caller's `ApiKeyRecord`, whose
``principal`` (tenant and role, `libs.platform.tenancy`) scopes what the caller sees. 401/403 answers
are RFC 9457 problems once `libs.platform.problems.install_problem_handlers` is installed.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import cached_property
from typing import Annotated, NamedTuple, Protocol

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.applications import Starlette

from libs.platform.problems import Problem, ProblemError
from libs.platform.tenancy import Principal, PrincipalKind, Role, validate_tenant

__all__ = [
    "ApiKeyRecord",
    "InMemoryKeyStore",
    "KeyStore",
    "KeyStoreSlot",
    "NewApiKey",
    "Principal",
    "PrincipalKind",
    "Role",
    "authenticate",
    "generate_api_key",
    "get_key_store",
    "hash_api_key",
    "parse_key_id",
    "require_role",
    "set_key_store",
    "verify_api_key",
]

KEY_PREFIX = "ghk"
_KEY_FORMAT = re.compile(r"ghk_([0-9a-f]{16})_([A-Za-z0-9_-]{43})")
_CLIENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# Compared against when the key id is unknown, so a miss costs about as much as a wrong secret.
_DUMMY_HASH = hashlib.sha256(b"gridhub-no-such-key").hexdigest()
_REALM = 'Bearer realm="gridhub"'

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ApiKeyRecord:
    """A key as stored: no plain key, only its hash. ``client`` names the key holder (logs, quotas, and the
    data source a head-end delivers as); ``tenant`` is the grid company it belongs to (None: platform role)."""

    key_id: str
    key_hash: str
    role: Role
    client: str
    created_at: datetime
    revoked_at: datetime | None = None
    tenant: str | None = None

    @cached_property
    def principal(self) -> Principal:
        """Who the caller is for scoping: the key's client, tenant and role."""
        return Principal(self.client, PrincipalKind.API_KEY, self.role, self.tenant)

    @property
    def active(self) -> bool:
        """False once the key was revoked."""
        return self.revoked_at is None


class NewApiKey(NamedTuple):
    """A freshly generated key: hand ``plain_key`` to the client once, store ``record``."""

    plain_key: str
    record: ApiKeyRecord


def hash_api_key(plain_key: str) -> str:
    """Return the hex SHA-256 of a key.

    A plain fast hash is enough here, unlike for passwords: the secret is 256 random bits from `secrets`,
    so guessing it from a leaked hash is infeasible however fast the hash is, and a slow KDF (scrypt) on
    every request would hand callers a cheap way to burn our CPU.
    """
    return hashlib.sha256(plain_key.encode()).hexdigest()


def parse_key_id(plain_key: str) -> str | None:
    """Return the key id of a well-formed key, or None when the string is not a GridHub key."""
    match = _KEY_FORMAT.fullmatch(plain_key)
    return match.group(1) if match else None


def verify_api_key(plain_key: str, record: ApiKeyRecord) -> bool:
    """Check ``plain_key`` against the stored hash in constant time."""
    return hmac.compare_digest(hash_api_key(plain_key), record.key_hash)


def generate_api_key(
    client: str, role: Role | str, *, tenant: str | None = None, now: datetime | None = None
) -> NewApiKey:
    """Create a key for ``client`` of ``tenant`` with ``role``; the plain key exists only in the returned value.

    Every role but ``platform`` needs a tenant (a grid company's GLN-13 or EIC-16); ``platform`` has none.
    """
    if not _CLIENT_NAME.fullmatch(client):
        raise ValueError("client must be 1-64 characters of letters, digits, '.', '_' and '-'")
    role = Role(role)
    validate_tenant(tenant, role)
    key_id = secrets.token_hex(8)
    plain_key = f"{KEY_PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"
    record = ApiKeyRecord(
        key_id=key_id,
        key_hash=hash_api_key(plain_key),
        role=role,
        client=client,
        created_at=now or datetime.now(UTC),
        tenant=tenant,
    )
    return NewApiKey(plain_key, record)


class KeyStore(Protocol):
    """Where key records live; the PostgreSQL store implements the same protocol."""

    async def get(self, key_id: str) -> ApiKeyRecord | None:
        """Return the record of ``key_id`` (revoked ones too), or None."""
        ...

    async def add(self, record: ApiKeyRecord) -> None:
        """Store a new record; raise ValueError when its key id exists."""
        ...

    async def revoke(self, key_id: str, *, at: datetime | None = None) -> bool:
        """Mark a key revoked; return False when there is no such key."""
        ...


class InMemoryKeyStore:
    """A `KeyStore` in a dict, for tests and single-process tools."""

    def __init__(self, records: list[ApiKeyRecord] | None = None) -> None:
        self._records: dict[str, ApiKeyRecord] = {}
        for record in records or []:
            self._records[record.key_id] = record

    async def get(self, key_id: str) -> ApiKeyRecord | None:
        """Return the record of ``key_id`` (revoked ones too), or None."""
        return self._records.get(key_id)

    async def add(self, record: ApiKeyRecord) -> None:
        """Store a new record; raise ValueError when its key id exists."""
        if record.key_id in self._records:
            raise ValueError(f"API key id {record.key_id} already exists")
        self._records[record.key_id] = record

    async def revoke(self, key_id: str, *, at: datetime | None = None) -> bool:
        """Mark a key revoked; return False when there is no such key."""
        record = self._records.get(key_id)
        if record is None:
            return False
        if record.active:
            self._records[key_id] = replace(record, revoked_at=at or datetime.now(UTC))
        return True


async def authenticate(store: KeyStore, plain_key: str) -> ApiKeyRecord | None:
    """Return the active record matching ``plain_key``, or None (malformed, unknown, wrong or revoked)."""
    key_id = parse_key_id(plain_key)
    if key_id is None:
        return None
    record = await store.get(key_id)
    if record is None:
        hmac.compare_digest(hash_api_key(plain_key), _DUMMY_HASH)
        return None
    if not verify_api_key(plain_key, record) or not record.active:
        return None
    return record


class KeyStoreSlot:
    """The app's `KeyStore`, filled in by the lifespan: the middleware exists before the database pool does.

    Before the service started (and after it stopped) a lookup finds nothing and a change raises.
    """

    def __init__(self) -> None:
        self.store: KeyStore | None = None

    async def get(self, key_id: str) -> ApiKeyRecord | None:
        """The record of ``key_id``; None while no store is in the slot."""
        return None if self.store is None else await self.store.get(key_id)

    async def add(self, record: ApiKeyRecord) -> None:
        """Store a new record."""
        await self._store().add(record)

    async def revoke(self, key_id: str, *, at: datetime | None = None) -> bool:
        """Revoke a key."""
        return await self._store().revoke(key_id, at=at)

    def _store(self) -> KeyStore:
        if self.store is None:
            raise RuntimeError("the service has not started")
        return self.store


def set_key_store(app: Starlette, store: KeyStore) -> None:
    """Make ``store`` the key store `require_role` uses for this app."""
    app.state.api_key_store = store


def get_key_store(request: Request) -> KeyStore:
    """FastAPI dependency: the app's key store (override it in ``app.dependency_overrides`` if you like)."""
    store: KeyStore | None = getattr(request.app.state, "api_key_store", None)
    if store is None:
        raise RuntimeError("no API key store: call set_key_store(app, store) when building the app")
    return store


# auto_error=False: both are optional on their own; require_role decides and answers with a problem.
_bearer = HTTPBearer(auto_error=False, description="`Authorization: Bearer ghk_...`")
_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="`X-API-Key: ghk_...`")


def _unauthorized(detail: str, *, invalid: bool) -> ProblemError:
    challenge = f'{_REALM}, error="invalid_token"' if invalid else _REALM
    return ProblemError(Problem.from_status(401, detail), headers={"WWW-Authenticate": challenge})


def require_role(role: Role | str) -> Callable[..., Awaitable[ApiKeyRecord]]:
    """Build a dependency that admits callers whose key has ``role`` or above and returns their record.

    Missing, malformed, unknown or revoked key: 401 with ``WWW-Authenticate``; role too low: 403.
    """
    required = Role(role)

    async def api_key_with_role(
        request: Request,
        store: Annotated[KeyStore, Depends(get_key_store)],
        bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
        header_key: Annotated[str | None, Depends(_api_key_header)],
    ) -> ApiKeyRecord:
        # ApiKeyMiddleware may have authenticated the caller already (so quotas could key on the client).
        early: ApiKeyRecord | None = getattr(request.state, "api_key", None)
        if early is not None:
            return _with_role(early, required)
        plain_key = bearer.credentials if bearer is not None else header_key
        if not plain_key:
            raise _unauthorized("an API key is required", invalid=False)
        record = await authenticate(store, plain_key)
        if record is None:
            key_id = parse_key_id(plain_key)
            if key_id is not None:  # only ids, never secrets, reach the log
                logger.warning("api key rejected", extra={"key_id": key_id})
            raise _unauthorized("the API key is invalid or revoked", invalid=True)
        request.state.api_key = record
        return _with_role(record, required)

    return api_key_with_role


def _with_role(record: ApiKeyRecord, required: Role) -> ApiKeyRecord:
    if not record.role.allows(required):
        detail = f"role '{record.role}' may not do this; '{required}' is required"
        raise ProblemError(Problem.from_status(403, detail))
    return record
