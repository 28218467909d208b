"""FTP partner accounts: login and scrypt password hash, in the service's own database (table ``ftp_users``).

`PostgresFtpUserStore` is the production store; `InMemoryFtpUserStore` holds tests and tools to the same
protocol. Neither ever sees a plain password after `new_ftp_user` hashed it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import asyncpg

from libs.platform.passwords import hash_password

FTP_USERS_MIGRATIONS = Path(__file__).resolve().parents[1] / "migrations"
FTP_USERS_COMPONENT = "collection.ftp_users"
LOGIN = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
"""A partner's login: also the name of its home folder, so nothing that could climb out of one."""
RESERVED_LOGINS = frozenset({"anonymous", "ftp", "guest"})


@dataclass(frozen=True, slots=True)
class FtpUser:
    """One partner account."""

    login: str
    password_hash: str
    created_at: datetime
    disabled_at: datetime | None = None

    @property
    def active(self) -> bool:
        """False once the account was disabled."""
        return self.disabled_at is None


def check_login(login: str) -> str:
    """``login`` if it may be a partner's login; ValueError otherwise (format, or an anonymous alias)."""
    if not LOGIN.fullmatch(login) or login in RESERVED_LOGINS or set(login) <= {"."}:
        raise ValueError(
            "a login is 1-63 characters of a-z, 0-9, '.', '_' and '-', starting with a letter or digit, "
            f"and none of {sorted(RESERVED_LOGINS)}"
        )
    return login


def new_ftp_user(login: str, password: str, *, now: datetime | None = None) -> FtpUser:
    """An account for ``login`` with ``password`` hashed (scrypt); the plain password is not kept."""
    if len(password) < 12:
        raise ValueError("an FTP password has at least 12 characters")
    return FtpUser(check_login(login), hash_password(password), now or datetime.now(UTC))


class FtpUserStore(Protocol):
    """Where partner accounts live."""

    async def get(self, login: str) -> FtpUser | None:
        """The account of ``login`` (disabled ones too), or None."""
        ...

    async def add(self, user: FtpUser) -> None:
        """Store a new account; ValueError when the login exists."""
        ...

    async def set_password_hash(self, login: str, password_hash: str) -> bool:
        """Replace an account's password hash (and enable it); False when there is no such login."""
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
        self._users[login] = FtpUser(login, password_hash, user.created_at, None)
        return True

    async def disable(self, login: str, *, at: datetime | None = None) -> bool:
        user = self._users.get(login)
        if user is None:
            return False
        if user.disabled_at is None:
            self._users[login] = FtpUser(login, user.password_hash, user.created_at, at or datetime.now(UTC))
        return True


class PostgresFtpUserStore:
    """An `FtpUserStore` over the ``ftp_users`` table (see ``FTP_USERS_MIGRATIONS``)."""

    def __init__(self, pool: asyncpg.Pool[Any]) -> None:
        self._pool = pool

    async def get(self, login: str) -> FtpUser | None:
        row = await self._pool.fetchrow(
            "SELECT login, password_hash, created_at, disabled_at FROM ftp_users WHERE login = $1", login
        )
        if row is None:
            return None
        return FtpUser(row["login"], row["password_hash"], row["created_at"], row["disabled_at"])

    async def add(self, user: FtpUser) -> None:
        try:
            await self._pool.execute(
                "INSERT INTO ftp_users (login, password_hash, created_at, disabled_at) VALUES ($1, $2, $3, $4)",
                user.login,
                user.password_hash,
                user.created_at,
                user.disabled_at,
            )
        except asyncpg.UniqueViolationError:
            raise ValueError(f"FTP user {user.login} already exists") from None

    async def set_password_hash(self, login: str, password_hash: str) -> bool:
        status = await self._pool.execute(
            "UPDATE ftp_users SET password_hash = $2, disabled_at = NULL WHERE login = $1", login, password_hash
        )
        return bool(status == "UPDATE 1")

    async def disable(self, login: str, *, at: datetime | None = None) -> bool:
        status = await self._pool.execute(
            "UPDATE ftp_users SET disabled_at = coalesce(disabled_at, $2) WHERE login = $1",
            login,
            at or datetime.now(UTC),
        )
        return bool(status == "UPDATE 1")
