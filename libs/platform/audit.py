"""The audit trail: who changed a principal, a scope or an assignment, what, when and from where.

Each service keeps its own ``audit_events`` table (migrations: ``AUDIT_COMPONENT`` / ``AUDIT_MIGRATIONS``, applied
into the service's schema like its other components), written **in the same transaction as the change** it
records, so a change without its audit row (or the reverse) cannot be committed. ``gridhub audit list`` reads the
tables of every service and merges them by time.

Calling it from a service (the customers service for meterpoint assignments, say)::

    async with pool.acquire() as connection, connection.transaction():
        ...  # the change itself, on the same connection
        await record_audit(
            connection,
            actor=Actor.of_principal(principal, origin=remote_address),
            action="meterpoint.assign",
            subject=meterpoint_id,
            tenant=grid_company,
            detail={"data_source": "head_end:hes-north", "version": 3},
        )

``detail`` holds facts about the change, never a secret: keys that name one (password, secret, hash, token, ...)
are refused, and values are short scalars.
"""

from __future__ import annotations

import getpass
import json
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from libs.events.parties import is_valid_eic, is_valid_gln
from libs.platform.db import Connection
from libs.platform.tenancy import Principal

__all__ = [
    "AUDIT_COMPONENT",
    "AUDIT_MIGRATIONS",
    "Actor",
    "AuditEvent",
    "DetailValue",
    "list_audit",
    "record_audit",
]

AUDIT_MIGRATIONS = Path(__file__).parent / "sql" / "audit"
AUDIT_COMPONENT = "platform.audit"

DetailValue = str | int | float | bool | None
_ACTION = re.compile(r"[a-z][a-z_]{0,31}\.[a-z][a-z_]{0,31}")
_KIND = re.compile(r"[a-z][a-z_]{0,31}")
_DETAIL_KEY = re.compile(r"[a-z][a-z0-9_]{0,47}")
_SECRET_WORDS = ("password", "passwd", "secret", "hash", "token", "plain", "credential")
_MAX_TEXT = 200
_MAX_DETAIL_ITEMS = 20
MAX_LISTED = 10_000
"""The most events one `list_audit` call returns (the CLI pages with ``--since``)."""


@dataclass(frozen=True, slots=True)
class Actor:
    """Who made a change: ``name`` (an operator's ``user@host``, or a principal's name), ``kind`` (``operator`` or a
    `libs.platform.tenancy.PrincipalKind` value) and ``origin`` (the host or remote address it came from)."""

    name: str
    kind: str
    origin: str

    def __post_init__(self) -> None:
        if not 1 <= len(self.name) <= _MAX_TEXT or not 1 <= len(self.origin) <= _MAX_TEXT:
            raise ValueError(f"an actor's name and origin are 1-{_MAX_TEXT} characters")
        if not _KIND.fullmatch(self.kind):
            raise ValueError(f"an actor kind is a lowercase word, not {self.kind!r}")

    @classmethod
    def operator(cls, *, user: str | None = None, host: str | None = None) -> Actor:
        """The person running a command here: the OS user at this host (``alice@ops-1``), from this host."""
        host = host or socket.gethostname() or "localhost"
        try:
            user = user or getpass.getuser()
        except (KeyError, OSError):  # no passwd entry for the uid (some containers)
            user = "uid-unknown"
        return cls(f"{user}@{host}"[:_MAX_TEXT], "operator", host[:_MAX_TEXT])

    @classmethod
    def of_principal(cls, principal: Principal, *, origin: str) -> Actor:
        """An authenticated caller (an admin's API key, a SOAP client) acting from ``origin`` (its address)."""
        return cls(principal.name, principal.kind.value, origin or "unknown")


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One row of a service's ``audit_events`` (``service`` is filled in by whoever read it)."""

    occurred_at: datetime
    actor: str
    actor_kind: str
    origin: str
    action: str
    subject: str
    tenant: str | None
    detail: Mapping[str, DetailValue] = field(default_factory=dict)
    audit_id: int | None = None
    service: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "service": self.service,
            "audit_id": self.audit_id,
            "occurred_at": self.occurred_at.isoformat(),
            "actor": self.actor,
            "actor_kind": self.actor_kind,
            "origin": self.origin,
            "action": self.action,
            "subject": self.subject,
            "tenant": self.tenant,
            "detail": dict(self.detail),
        }


def _checked_detail(detail: Mapping[str, DetailValue] | None) -> dict[str, DetailValue]:
    checked: dict[str, DetailValue] = {}
    for key, value in (detail or {}).items():
        if not _DETAIL_KEY.fullmatch(key):
            raise ValueError(f"audit detail keys are lowercase identifiers, not {key!r}")
        if any(word in key for word in _SECRET_WORDS):
            raise ValueError(f"audit detail {key!r} names a secret: record that it changed, never its value")
        if not isinstance(value, str | int | float | bool) and value is not None:
            raise ValueError(f"audit detail {key!r} must be a string, number, boolean or null")
        if isinstance(value, str) and len(value) > _MAX_TEXT:
            raise ValueError(f"audit detail {key!r} is longer than {_MAX_TEXT} characters")
        checked[key] = value
    if len(checked) > _MAX_DETAIL_ITEMS:
        raise ValueError(f"at most {_MAX_DETAIL_ITEMS} audit detail items")
    return checked


async def record_audit(
    connection: Connection,
    *,
    actor: Actor,
    action: str,
    subject: str,
    tenant: str | None,
    detail: Mapping[str, DetailValue] | None = None,
    at: datetime | None = None,
) -> None:
    """Write one audit event on ``connection``; call it inside the transaction of the change it records.

    ``action`` is ``<thing>.<verb>`` (``apikey.rotate``, ``ftp_partner.add``, ``meterpoint.assign``); ``subject``
    names what changed (a key id, a login, a GSRN); ``tenant`` is the grid company it belongs to (GLN-13 or
    EIC-16; None for the platform's own); ``detail`` a few scalars, never a secret. ``at`` defaults to now (UTC).
    Raises ValueError for anything malformed, before writing, so the caller's transaction rolls back with it.
    The table must exist: apply ``(AUDIT_COMPONENT, AUDIT_MIGRATIONS)`` with the service's migrations.
    """
    if not _ACTION.fullmatch(action):
        raise ValueError(f"an audit action is '<thing>.<verb>' in lowercase, not {action!r}")
    if not 1 <= len(subject) <= _MAX_TEXT:
        raise ValueError(f"an audit subject is 1-{_MAX_TEXT} characters")
    if tenant is not None and not (is_valid_gln(tenant) or is_valid_eic(tenant)):
        raise ValueError("an audit event's tenant is a grid company's GLN-13 or EIC-16")
    checked = _checked_detail(detail)
    when = at or datetime.now(UTC)
    if when.tzinfo is None:
        raise ValueError("an audit time needs a timezone")
    await connection.execute(
        "INSERT INTO audit_events (occurred_at, actor, actor_kind, origin, action, subject, tenant, detail) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb)",
        when,
        actor.name,
        actor.kind,
        actor.origin,
        action,
        subject,
        tenant,
        json.dumps(checked),
    )


async def list_audit(
    connection: Connection,
    *,
    tenant: str | None = None,
    since: datetime | None = None,
    limit: int = 1_000,
    service: str | None = None,
) -> list[AuditEvent]:
    """The newest ``limit`` events (oldest first) of this database's ``audit_events``, of ``tenant`` if given, at or
    after ``since`` if given; ``service`` is copied into each event. No table yet (nothing audited): empty."""
    if not 1 <= limit <= MAX_LISTED:
        raise ValueError(f"limit is 1-{MAX_LISTED}")
    exists = await connection.fetchval("SELECT to_regclass('audit_events') IS NOT NULL")
    if not exists:
        return []
    rows = await connection.fetch(
        "SELECT * FROM (SELECT audit_id, occurred_at, actor, actor_kind, origin, action, subject, tenant, detail "
        "FROM audit_events WHERE ($1::text IS NULL OR tenant = $1) AND ($2::timestamptz IS NULL OR occurred_at >= $2) "
        "ORDER BY occurred_at DESC, audit_id DESC LIMIT $3) newest ORDER BY occurred_at, audit_id",
        tenant,
        since,
        limit,
    )
    return [
        AuditEvent(
            occurred_at=row["occurred_at"],
            actor=row["actor"],
            actor_kind=row["actor_kind"],
            origin=row["origin"],
            action=row["action"],
            subject=row["subject"],
            tenant=row["tenant"],
            detail=json.loads(row["detail"]) if isinstance(row["detail"], str) else dict(row["detail"]),
            audit_id=row["audit_id"],
            service=service,
        )
        for row in rows
    ]
