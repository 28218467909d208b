"""Passwords hashed at rest with scrypt: ``scrypt$n$r$p$salt$hash`` strings, verified in constant time.

For secrets people (or partners' administrators) choose, such as FTP logins: a leaked hash must be slow to
guess, so the KDF is slow by design (about 50 ms and 16 MiB per check). Run `verify_password` in a thread
(``asyncio.to_thread``) and limit how often an unauthenticated caller may make the service run it.
API keys do not need this: they are 256 random bits, hashed fast (``libs.platform.apikeys``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets

__all__ = ["check_hash_format", "hash_password", "verify_password"]

SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
_MAXMEM = 64 * 1024 * 1024
_DKLEN = 32
_MIN_SALT_BYTES = 16
_HASH = re.compile(r"scrypt\$(\d+)\$(\d+)\$(\d+)\$([A-Za-z0-9_-]+)\$([A-Za-z0-9_-]+)")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """Return ``scrypt$n$r$p$salt$hash`` of ``password`` with a random 16-byte salt (or ``salt``)."""
    salt = secrets.token_bytes(16) if salt is None else salt
    digest = hashlib.scrypt(
        password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, maxmem=_MAXMEM, dklen=_DKLEN
    )
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def check_hash_format(encoded: str) -> str:
    """Return ``encoded`` when it is a hash as strong as `hash_password` makes; raise ValueError otherwise.

    Weak parameters are refused: scrypt cost ``n`` below 2**14 (or not a power of two), block size ``r`` below 8,
    parallelism ``p`` below 1, more than 32 MiB per check, a salt under 16 bytes (a precomputed table covers it) or a
    digest under 32 bytes (a short digest lets a wrong password match by chance: one byte, one guess in 256).
    """
    match = _HASH.fullmatch(encoded)
    if match is None:
        raise ValueError("a password hash must be 'scrypt$n$r$p$salt$hash'")
    n, r, p = (int(group) for group in match.groups()[:3])
    if n < 2**14 or n & (n - 1) or r < 8 or p < 1 or 128 * r * n * p > _MAXMEM // 2:
        raise ValueError("scrypt parameters must be n >= 2**14 (a power of two), r >= 8, p >= 1 and fit 32 MiB")
    try:
        salt, digest = _unb64(match.group(4)), _unb64(match.group(5))
    except (binascii.Error, ValueError):
        raise ValueError("the salt and hash of a password hash must be base64url") from None
    if len(salt) < _MIN_SALT_BYTES or len(digest) < _DKLEN:
        raise ValueError(f"scrypt salt must be >= {_MIN_SALT_BYTES} bytes and the hash >= {_DKLEN} bytes")
    return encoded


def verify_password(password: str, encoded: str) -> bool:
    """Check ``password`` against a `hash_password` string in constant time; False for a malformed hash."""
    match = _HASH.fullmatch(encoded)
    if match is None:
        return False
    n, r, p = (int(group) for group in match.groups()[:3])
    if n < 2 or n & (n - 1) or 128 * r * n * p > _MAXMEM // 2:
        return False
    try:
        salt, expected = _unb64(match.group(4)), _unb64(match.group(5))
    except (binascii.Error, ValueError):
        return False
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, maxmem=_MAXMEM, dklen=len(expected))
    return hmac.compare_digest(digest, expected)
