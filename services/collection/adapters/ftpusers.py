"""FTP partner accounts: login and scrypt password hash, in the service's own database (table ``ftp_users``).

`PostgresFtpUserStore` is the production store; `InMemoryFtpUserStore` holds tests and tools to the same
protocol. Neither ever sees a plain password after `new_ftp_user` hashed it.

A partner is a principal (`libs.platform.tenancy`): it belongs to one grid company (``tenant``) and delivers as a
``source``; it may end by itself (``expires_at``). A password rotation keeps the previous hash valid until
``previous_valid_until``, so the partner can switch its upload job without a refused login; a disabled or expired
account, or one without a tenant (from before tenancy), opens no session.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

import asyncpg

from libs.platform.apikeys import check_expiry
from libs.platform.db import Connection
from libs.platform.passwords import hash_password, verify_password
from libs.platform.tenancy import Principal, PrincipalKind, Role, validate_tenant

FTP_USERS_MIGRATIONS = Path(__file__).resolve().parents[1] / "migrations"
FTP_USERS_COMPONENT = "collection.ftp_users"
LOGIN = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
"""A partner's login: also the name of its home folder, so nothing that could climb out of one."""
RESERVED_LOGINS = frozenset({"anonymous", "ftp", "guest"})
MIN_PASSWORD_LENGTH = 12


class PartnerState(StrEnum):
    """Where an account is in its life at a given moment."""

    ACTIVE = "active"
    EXPIRED = "expired"
    DISABLED = "disabled"


@dataclass(frozen=True, slots=True)
class FtpUser:
    """One partner account: a source of grid company ``tenant`` (None only for accounts from before tenancy)."""

    login: str
    password_hash: str
    created_at: datetime
    disabled_at: datetime | None = None
    tenant: str | None = None
    expires_at: datetime | None = None
    previous_password_hash: str | None = None
    previous_valid_until: datetime | None = None

    def state(self, now: datetime) -> PartnerState:
        """Disabled (also: no tenant), expired (its end is not after ``now``) or active."""
        if self.disabled_at is not None or self.tenant is None:
            return PartnerState.DISABLED
        if self.expires_at is not None and self.expires_at <= now:
            return PartnerState.EXPIRED
        return PartnerState.ACTIVE

    def valid_at(self, now: datetime) -> bool:
        """Whether the account may open a session at ``now``."""
        return self.state(now) is PartnerState.ACTIVE

    @property
    def active(self) -> bool:
        """Whether the account may open a session now (wall clock): enabled, with a tenant, not expired."""
        return self.valid_at(datetime.now(UTC))

    def password_hashes(self, now: datetime) -> tuple[str, ...]:
        """The hashes a password may match at ``now``: the current one, and the previous one during an overlap."""
        previous, until = self.previous_password_hash, self.previous_valid_until
        if previous is not None and until is not None and now < until:
            return (self.password_hash, previous)
        return (self.password_hash,)

    @property
    def principal(self) -> Principal:
        """The partner as a principal: its login, kind ``ftp_partner``, role ``source``, its tenant."""
        return Principal(self.login, PrincipalKind.FTP_PARTNER, Role.SOURCE, self.tenant)


def matching_hash(password: str, hashes: Sequence[str], dummy_hash: str) -> str | None:
    """The first of ``hashes`` that ``password`` matches, or None; with no hashes it checks ``dummy_hash`` anyway,
    so an unknown login costs what a wrong password does (scrypt: run it in a thread)."""
    if not hashes:
        verify_password(password, dummy_hash)
        return None
    for encoded in hashes:
        if verify_password(password, encoded):
            return encoded
    return None


def check_password(password: str) -> str:
    """``password`` if it is long enough for a partner; ValueError otherwise."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ValueError(f"an FTP password has at least {MIN_PASSWORD_LENGTH} characters")
    return password


def check_login(login: str) -> str:
    """``login`` if it may be a partner's login; ValueError otherwise (format, or an anonymous alias)."""
    if not LOGIN.fullmatch(login) or login in RESERVED_LOGINS or set(login) <= {"."}:
        raise ValueError(
            "a login is 1-63 characters of a-z, 0-9, '.', '_' and '-', starting with a letter or digit, "
            f"and none of {sorted(RESERVED_LOGINS)}"
        )
    return login


def new_ftp_user(
    login: str, password: str, *, tenant: str, expires_at: datetime | None = None, now: datetime | None = None
) -> FtpUser:
    """An account for ``login`` of grid company ``tenant`` with ``password`` hashed (scrypt); the plain password is
    not kept. ``expires_at`` ends the account by itself."""
    check_password(password)
    validate_tenant(tenant, Role.SOURCE)
    created_at = now or datetime.now(UTC)
    if expires_at is not None:
        check_expiry(expires_at, created_at)
    return FtpUser(check_login(login), hash_password(password), created_at, tenant=tenant, expires_at=expires_at)


class FtpUserStore(Protocol):
    """Where partner accounts live."""

    async def get(self, login: str) -> FtpUser | None:
        """The account of ``login`` (disabled ones too), or None."""
        ...

    async def add(self, user: FtpUser) -> None:
        """Store a new account; ValueError when the login exists."""
        ...

    async def set_password_hash(self, login: str, password_hash: str) -> bool:
        """Replace an account's password hash at once (and enable it); False when there is no such login."""
        ...

    async def rotate_password_hash(self, login: str, password_hash: str, *, previous_valid_until: datetime) -> bool:
        """Make ``password_hash`` current and keep the current one valid until ``previous_valid_until``."""
        ...

    async def disable(self, login: str, *, at: datetime | None = None) -> bool:
        """Disable an account; False when there is no such login."""
        ...


class InMemoryFtpUserStore:
    """An `FtpUserStore` in a dict (tests, single-process tools)."""

    def __init__(self, users: list[FtpUser] | None = None) -> None:
        self._users = {user.login: user for user in users or []}

    async def get(self, login: str) -> FtpUser | None:
        return self._users.get(login)

    async def add(self, user: FtpUser) -> None:
        if user.login in self._users:
            raise ValueError(f"FTP user {user.login} already exists")
        self._users[user.login] = user

    async def set_password_hash(self, login: str, password_hash: str) -> bool:
        user = self._users.get(login)
        if user is None:
            return False
        self._users[login] = replace(
            user, password_hash=password_hash, disabled_at=None, previous_password_hash=None, previous_valid_until=None
        )
        return True

    async def rotate_password_hash(self, login: str, password_hash: str, *, previous_valid_until: datetime) -> bool:
        user = self._users.get(login)
        if user is None:
            return False
        self._users[login] = replace(
            user,
            password_hash=password_hash,
            previous_password_hash=user.password_hash,
            previous_valid_until=previous_valid_until,
        )
        return True

    async def disable(self, login: str, *, at: datetime | None = None) -> bool:
        user = self._users.get(login)
        if user is None:
            return False
        if user.disabled_at is None:
            self._users[login] = replace(user, disabled_at=at or datetime.now(UTC))
        return True


class PostgresFtpUserStore:
    """An `FtpUserStore` over the ``ftp_users`` table (see ``FTP_USERS_MIGRATIONS``).

    Every change can run on a caller's ``connection``, so the operator command writes it and its audit event in one
    transaction (`libs.platform.audit.record_audit`).
    """

    def __init__(self, pool: asyncpg.Pool[Any]) -> None:
        self._pool = pool

    def _on(self, connection: Connection | None) -> Connection | asyncpg.Pool[Any]:
        return self._pool if connection is None else connection

    async def get(self, login: str, *, connection: Connection | None = None) -> FtpUser | None:
        row = await self._on(connection).fetchrow(_SELECT_ONE, login)
        return None if row is None else _user(row)

    async def add(self, user: FtpUser, *, connection: Connection | None = None) -> None:
        try:
            await self._on(connection).execute(
                "INSERT INTO ftp_users (login, password_hash, created_at, disabled_at, tenant, expires_at) "
                "VALUES ($1, $2, $3, $4, $5, $6)",
                user.login,
                user.password_hash,
                user.created_at,
                user.disabled_at,
                user.tenant,
                user.expires_at,
            )
        except asyncpg.UniqueViolationError:
            raise ValueError(f"FTP user {user.login} already exists") from None

    async def set_password_hash(
        self, login: str, password_hash: str, *, tenant: str | None = None, connection: Connection | None = None
    ) -> bool:
        """Replace the hash at once, end any overlap and enable the account (``tenant``: also give it one)."""
        try:
            status = await self._on(connection).execute(
                "UPDATE ftp_users SET password_hash = $2, disabled_at = NULL, previous_password_hash = NULL, "
                "previous_valid_until = NULL, tenant = coalesce($3, tenant) WHERE login = $1",
                login,
                password_hash,
                tenant,
            )
        except asyncpg.CheckViolationError:
            raise ValueError(f"FTP user {login} has no tenant: give it one with --tenant") from None
        return bool(status == "UPDATE 1")

    async def rotate_password_hash(
        self, login: str, password_hash: str, *, previous_valid_until: datetime, connection: Connection | None = None
    ) -> bool:
        status = await self._on(connection).execute(
            "UPDATE ftp_users SET previous_password_hash = password_hash, previous_valid_until = $3, "
            "password_hash = $2 WHERE login = $1",
            login,
            password_hash,
            previous_valid_until,
        )
        return bool(status == "UPDATE 1")

    async def set_expiry(
        self, login: str, expires_at: datetime | None, *, connection: Connection | None = None
    ) -> bool:
        """Give the account a new end (None: none); False when there is no such login."""
        status = await self._on(connection).execute(
            "UPDATE ftp_users SET expires_at = $2 WHERE login = $1", login, expires_at
        )
        return bool(status == "UPDATE 1")

    async def disable(self, login: str, *, at: datetime | None = None, connection: Connection | None = None) -> bool:
        status = await self._on(connection).execute(
            "UPDATE ftp_users SET disabled_at = coalesce(disabled_at, $2) WHERE login = $1",
            login,
            at or datetime.now(UTC),
        )
        return bool(status == "UPDATE 1")

    async def list(self, *, tenant: str | None = None, connection: Connection | None = None) -> list[FtpUser]:
        """Accounts (of ``tenant`` if given) by login, disabled ones too; at most `MAX_LISTED_USERS`."""
        rows = await self._on(connection).fetch(_SELECT_MANY, tenant, MAX_LISTED_USERS)
        return [_user(row) for row in rows]


MAX_LISTED_USERS = 10_000
_SELECT_ONE = (
    "SELECT login, password_hash, created_at, disabled_at, tenant, expires_at, previous_password_hash, "
    "previous_valid_until FROM ftp_users WHERE login = $1"
)
_SELECT_MANY = (
    "SELECT login, password_hash, created_at, disabled_at, tenant, expires_at, previous_password_hash, "
    "previous_valid_until FROM ftp_users WHERE ($1::text IS NULL OR tenant = $1) ORDER BY login LIMIT $2"
)


def _user(row: asyncpg.Record) -> FtpUser:
    return FtpUser(
        row["login"],
        row["password_hash"],
        row["created_at"],
        row["disabled_at"],
        tenant=row["tenant"],
        expires_at=row["expires_at"],
        previous_password_hash=row["previous_password_hash"],
        previous_valid_until=row["previous_valid_until"],
    )
