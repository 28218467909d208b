"""HTTP Basic authentication of client systems (billing, customer centre, work orders), passwords hashed at rest.

Each client system has a name and a password; settings hold only ``scrypt$n$r$p$salt$hash`` strings. scrypt
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

from libs.flowcontrol.errors import QuotaExceeded
from libs.flowcontrol.quota import Quota
from libs.platform import passwords
from libs.platform.passwords import hash_password, verify_password

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
    """Verifies Basic credentials against the configured client systems; returns the client's name."""

    def __init__(self, clients: Mapping[str, str], attempts: Quota) -> None:
        self._clients = dict(clients)
        self._attempts = attempts
        self._memory_key = secrets.token_bytes(32)
        self._verified: dict[str, set[bytes]] = {}
        # Compared against when the client is unknown, so a miss costs as much as a wrong password.
        self._dummy = hash_password(secrets.token_urlsafe(16))

    async def authenticate(self, authorization: str | None, remote: str) -> str:
        """The client's name; `AuthenticationFailed` or `CredentialChecksExceeded` otherwise."""
        credentials = parse_basic(authorization)
        if credentials is None:
            raise AuthenticationFailed("HTTP Basic credentials of a client system are required")
        client, password = credentials
        token = hmac.new(self._memory_key, f"{client}:{password}".encode(), hashlib.sha256).digest()
        if token in self._verified.get(client, ()):
            return client
        decision = self._attempts.try_acquire(remote)
        if not decision.allowed:
            raise CredentialChecksExceeded(
                "too many credential checks from this address", retry_after=decision.retry_after
            )
        encoded = self._clients.get(client)
        ok = await asyncio.to_thread(verify_password, password, encoded or self._dummy)
        if not ok or encoded is None:
            raise AuthenticationFailed("unknown client or wrong password")
        remembered = self._verified.setdefault(client, set())
        if len(remembered) >= _MAX_REMEMBERED:
            remembered.clear()
        remembered.add(token)
        return client
