"""API-key authentication for the REST APIs: keys hashed at rest, one tenant and one role per key.

A key reads ``ghk_<key id>_<secret>``. The key id is not secret: it finds the stored record without a scan
and names the key in logs. Only the SHA-256 of the whole key is stored; the plain key is shown once, when
`generate_api_key` creates it.

Wiring: ``set_key_store(app, store)`` in the composition root, then protect a route with
``Depends(require_role(Role.SOURCE))``; the dependency returns the caller's `ApiKeyRecord`, whose
``principal`` (tenant and role, `libs.platform.tenancy`) scopes what the caller sees. 401/403 answers
are RFC 9457 problems once `libs.platform.problems.install_problem_handlers` is installed.

Lifecycle: a key may have an ``expires_at`` (set at creation, `parse_expiry`); `rotate_api_key` issues a new key
for the same client, tenant and role and moves the old key's end to now + the overlap, so both work until then.
An expired key is refused exactly like a revoked one (401). Expiry is checked against the clock on every request,
also for a cached record; a revocation or a rotation's new end reaches a service within its key-cache time
(`libs.platform.apikeys_asgi.CachedKeyStore`, 5 s by default in every service).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from functools import cached_property
from typing import Annotated, NamedTuple, Protocol

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.applications import Starlette

from libs.platform.problems import Problem, ProblemError
from libs.platform.tenancy import Principal, PrincipalKind, Role, validate_tenant

__all__ = [
    "MAX_LIFETIME",
    "ApiKeyRecord",
    "InMemoryKeyStore",
    "KeyState",
    "KeyStore",
    "KeyStoreSlot",
    "NewApiKey",
    "Principal",
    "PrincipalKind",
    "Role",
    "Rotation",
    "authenticate",
    "check_expiry",
    "generate_api_key",
    "get_key_store",
    "hash_api_key",
    "parse_duration",
    "parse_expiry",
    "parse_key_id",
    "require_role",
    "rotate_api_key",
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

_DURATION = re.compile(r"(\d{1,6})([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 7 * 86_400}
MAX_LIFETIME = timedelta(days=3 * 366)
"""The longest a credential may be made to live (or to overlap its successor): an expiry is a promise to rotate."""


class KeyState(StrEnum):
    """Where a key is in its life at a given moment."""

    ACTIVE = "active"
    EXPIRED = "expired"
    REVOKED = "revoked"


@dataclass(frozen=True)
class ApiKeyRecord:
    """A key as stored: no plain key, only its hash. ``client`` names the key holder (logs, quotas, and the
    data source a head-end delivers as); ``tenant`` is the grid company it belongs to (None: platform role).
    ``expires_at`` ends it without a revocation (None: it lives until revoked); ``rotated_from`` names the key
    it replaced."""

    key_id: str
    key_hash: str
    role: Role
    client: str
    created_at: datetime
    revoked_at: datetime | None = None
    tenant: str | None = None
    expires_at: datetime | None = None
    rotated_from: str | None = None

    @cached_property
    def principal(self) -> Principal:
        """Who the caller is for scoping: the key's client, tenant and role."""
        return Principal(self.client, PrincipalKind.API_KEY, self.role, self.tenant)

    def state(self, now: datetime) -> KeyState:
        """Revoked (whenever that was), expired (its end is not after ``now``) or active."""
        if self.revoked_at is not None:
            return KeyState.REVOKED
        if self.expires_at is not None and self.expires_at <= now:
            return KeyState.EXPIRED
        return KeyState.ACTIVE

    def valid_at(self, now: datetime) -> bool:
        """Whether the key opens a request at ``now``: neither revoked nor expired."""
        return self.state(now) is KeyState.ACTIVE

    @property
    def active(self) -> bool:
        """Whether the key works now (wall clock): not revoked, not expired."""
        return self.valid_at(datetime.now(UTC))


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
    client: str,
    role: Role | str,
    *,
    tenant: str | None = None,
    now: datetime | None = None,
    expires_at: datetime | None = None,
    rotated_from: str | None = None,
) -> NewApiKey:
    """Create a key for ``client`` of ``tenant`` with ``role``; the plain key exists only in the returned value.

    Every role but ``platform`` needs a tenant (a grid company's GLN-13 or EIC-16); ``platform`` has none.
    ``expires_at`` (timezone-aware, after ``now``, at most `MAX_LIFETIME` ahead) ends the key by itself.
    """
    if not _CLIENT_NAME.fullmatch(client):
        raise ValueError("client must be 1-64 characters of letters, digits, '.', '_' and '-'")
    role = Role(role)
    validate_tenant(tenant, role)
    created_at = now or datetime.now(UTC)
    if expires_at is not None:
        check_expiry(expires_at, created_at)
    key_id = secrets.token_hex(8)
    plain_key = f"{KEY_PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"
    record = ApiKeyRecord(
        key_id=key_id,
        key_hash=hash_api_key(plain_key),
        role=role,
        client=client,
        created_at=created_at,
        tenant=tenant,
        expires_at=expires_at,
        rotated_from=rotated_from,
    )
    return NewApiKey(plain_key, record)


class Rotation(NamedTuple):
    """A rotation's outcome: the new key (store it, hand ``new.plain_key`` over) and the old key's new end."""

    new: NewApiKey
    old_expires_at: datetime


def rotate_api_key(
    old: ApiKeyRecord, *, overlap: timedelta, now: datetime, expires_at: datetime | None = None
) -> Rotation:
    """A successor of ``old`` (same client, tenant and role) and the old key's end: ``now + overlap``.

    Both keys work until that end, so the client can switch without a gap; an old end that comes sooner is
    kept (a rotation never lengthens a key's life). The new key lives until ``expires_at``, by default as long as
    the old one was made to live (none: no end). A revoked or expired key is not rotated (ValueError): its
    client has no working key to overlap with; issue a new one with ``add``.
    """
    if overlap < timedelta(0) or overlap > MAX_LIFETIME:
        raise ValueError(f"the overlap must be between 0 and {MAX_LIFETIME.days} days")
    state = old.state(now)
    if state is not KeyState.ACTIVE:
        raise ValueError(f"key {old.key_id} is {state}: add a new key instead of rotating it")
    if expires_at is None and old.expires_at is not None:
        expires_at = now + max(old.expires_at - old.created_at, overlap + timedelta(seconds=1))
    old_end = now + overlap
    if old.expires_at is not None:
        old_end = min(old_end, old.expires_at)
    if expires_at is not None and expires_at <= old_end:
        raise ValueError("the new key must outlive the old key's overlap")
    new = generate_api_key(
        old.client, old.role, tenant=old.tenant, now=now, expires_at=expires_at, rotated_from=old.key_id
    )
    return Rotation(new, old_end)


def parse_duration(text: str) -> timedelta:
    """``90d``, ``12h``, ``30m``, ``45s``, ``2w`` (or several, ``1d12h``) as a timedelta; ValueError otherwise."""
    cleaned = text.strip().lower()
    parts = _DURATION.findall(cleaned)
    if not cleaned or "".join(number + unit for number, unit in parts) != cleaned:
        raise ValueError(f"{text!r} is no duration: use a number and a unit s/m/h/d/w, e.g. 90d, 12h, 1d12h")
    duration = timedelta(seconds=sum(int(number) * _UNITS[unit] for number, unit in parts))
    if duration > MAX_LIFETIME:
        raise ValueError(f"{text!r} is longer than {MAX_LIFETIME.days} days")
    return duration


def parse_expiry(text: str, *, now: datetime) -> datetime:
    """An expiry from ``text``: a duration from ``now`` (``90d``), a date (its midnight UTC) or an ISO datetime.

    A datetime without an offset is UTC. The result must lie after ``now`` and within `MAX_LIFETIME`.
    """
    cleaned = text.strip()
    try:
        expiry = now + parse_duration(cleaned)
    except ValueError:
        try:
            if len(cleaned) == 10:
                expiry = datetime.combine(date.fromisoformat(cleaned), time(0), tzinfo=UTC)
            else:
                expiry = datetime.fromisoformat(cleaned)
        except ValueError:
            raise ValueError(
                f"{text!r} is neither a duration (90d, 12h) nor a date (2027-03-31) or ISO datetime"
            ) from None
        if expiry.tzinfo is None:
            expiry = expiry.replace(tzinfo=UTC)
    return check_expiry(expiry, now)


def check_expiry(expires_at: datetime, now: datetime) -> datetime:
    """``expires_at`` if it is timezone-aware, after ``now`` and at most `MAX_LIFETIME` ahead; ValueError otherwise."""
    if expires_at.tzinfo is None:
        raise ValueError("an expiry needs a timezone")
    if expires_at <= now:
        raise ValueError(f"the expiry {expires_at.isoformat()} is not in the future")
    if expires_at - now > MAX_LIFETIME:
        raise ValueError(f"the expiry {expires_at.isoformat()} is more than {MAX_LIFETIME.days} days ahead")
    return expires_at


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
        if record.revoked_at is None:
            self._records[key_id] = replace(record, revoked_at=at or datetime.now(UTC))
        return True

    async def set_expiry(self, key_id: str, expires_at: datetime) -> bool:
        """Move a key's end to ``expires_at`` unless it ends sooner; False when there is no such key."""
        record = self._records.get(key_id)
        if record is None:
            return False
        if record.expires_at is None or expires_at < record.expires_at:
            self._records[key_id] = replace(record, expires_at=expires_at)
        return True

    def records(self) -> list[ApiKeyRecord]:
        """Every stored record, oldest first."""
        return sorted(self._records.values(), key=lambda record: record.created_at)


async def authenticate(store: KeyStore, plain_key: str, *, now: datetime | None = None) -> ApiKeyRecord | None:
    """Return the record matching ``plain_key`` if it is valid at ``now`` (default: the wall clock), or None
    (malformed, unknown, wrong, revoked or expired)."""
    key_id = parse_key_id(plain_key)
    if key_id is None:
        return None
    record = await store.get(key_id)
    if record is None:
        hmac.compare_digest(hash_api_key(plain_key), _DUMMY_HASH)
        return None
    if not verify_api_key(plain_key, record) or not record.valid_at(now or datetime.now(UTC)):
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

    Missing, malformed, unknown, revoked or expired key: 401 with ``WWW-Authenticate``; role too low: 403.
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
            raise _unauthorized("the API key is invalid, expired or revoked", invalid=True)
        request.state.api_key = record
        return _with_role(record, required)

    return api_key_with_role


def _with_role(record: ApiKeyRecord, required: Role) -> ApiKeyRecord:
    if not record.role.allows(required):
        detail = f"role '{record.role}' may not do this; '{required}' is required"
        raise ProblemError(Problem.from_status(403, detail))
    return record
