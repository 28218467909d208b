"""Who may deliver what: the local view of meterpoint -> (grid company, data source), and the check per item.

The view is fed from ``meterpoints.v1`` (``adapters/meterpoints.py``) inside the process, so the check costs one
dict lookup per item and no remote call. It keeps the newest version per meterpoint and skips older ones.

Compact by design (2,000,000 meterpoints by default, ``scope.capacity``): a meterpoint is the key as an ``int``
(its 18 digits) and the value one ``int`` packing the record's version and the index of its *scope* (the triple
grid company, source kind, source id, stored once however many meterpoints share it). Measured in
``tests/unit/collection/test_scope.py``: about 110 bytes per meterpoint (220 MB at 2,000,000) on CPython 3.11.
Full, the view refuses new meterpoints (their readings are held as ``unknown_meterpoint``, nothing is lost),
keeps updating the ones it has, and says so (`ScopeView.refused`, a metric and a log line in the feed).

The check (`ScopeView.check`): for each accepted item, meterpoint missing -> `Held` (``unknown_meterpoint``);
assigned to another source (kind and id), to another grid company than the deliverer's, or to no source ->
`Rejected` (``not_in_scope``, a detail that names nothing of the owner). A deliverer without a tenant (an MQTT
device, which is its own meterpoint; an FTP partner whose account could not be read; a platform key) is checked
by its source alone: its id is unique in the hub, and the view says which grid company the meterpoint belongs to.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from enum import StrEnum
from typing import NamedTuple

from libs.events.meterpoints import SourceKind
from services.collection.domain import Accepted, Held, ItemOutcome, Rejected, RejectReason

SCOPE_BITS = 20
MAX_SCOPES = 1 << SCOPE_BITS
"""Distinct (grid company, source) pairs the view can name: a bound on a table fed from outside."""
_SCOPE_MASK = MAX_SCOPES - 1
_NO_SOURCE = ""
NOT_IN_SCOPE_DETAIL = "meterpoint_id: this meterpoint is not assigned to this source"
UNKNOWN_DETAIL = "meterpoint_id: the meterpoint is not registered; held, and redriven once it is"


class Deliverer(NamedTuple):
    """Who delivers a batch: a REST key's client (head_end), an FTP login, an MQTT device; and its tenant if known."""

    kind: str
    id: str
    tenant: str | None = None


class Applied(StrEnum):
    """What `ScopeView.apply` did with a record."""

    ADDED = "added"
    UPDATED = "updated"
    STALE = "stale"  # a version the view already has or passed
    REMOVED = "removed"
    REFUSED = "refused"  # the view is full (or its scope table is)


@dataclass(frozen=True, slots=True)
class Entry:
    """One meterpoint as the view knows it (for tests and tools; the hot path never builds one)."""

    grid_company: str
    source_kind: str | None
    source_id: str | None
    version: int


class ScopeView:
    """meterpoint -> (grid company, data source, version), bounded by ``capacity`` (see the module doc)."""

    def __init__(self, capacity: int = 2_000_000) -> None:
        if capacity < 1:
            raise ValueError("capacity must be positive")
        self.capacity = capacity
        self._entries: dict[int, int] = {}
        self._scopes: list[tuple[str, str, str]] = []
        self._scope_index: dict[tuple[str, str, str], int] = {}
        self._by_source: dict[tuple[str, str], list[int]] = {}
        self.refused = 0  # new meterpoints not taken because the view was full
        self.stale = 0
        # Set once the feed has read meterpoints.v1 to its end offsets at start: before that, an unknown meterpoint
        # may just not have been read yet, so nothing is checked (REST answers 503; MQTT and FTP wait).
        self.ready = False

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def full(self) -> bool:
        """True when a new meterpoint would be refused."""
        return len(self._entries) >= self.capacity

    def _scope(self, grid_company: str, kind: str, source_id: str) -> int | None:
        triple = (grid_company, kind, source_id)
        index = self._scope_index.get(triple)
        if index is None:
            if len(self._scopes) >= MAX_SCOPES:
                return None
            triple = (sys.intern(grid_company), sys.intern(kind), sys.intern(source_id))
            index = len(self._scopes)
            self._scopes.append(triple)
            self._scope_index[triple] = index
            self._by_source.setdefault((triple[1], triple[2]), []).append(index)
        return index

    def apply(self, meterpoint_id: str, *, grid_company: str, source: tuple[str, str] | None, version: int) -> Applied:
        """Take one record of ``meterpoints.v1`` (already validated) unless the view has this version or a newer one."""
        key = int(meterpoint_id)
        current = self._entries.get(key)
        if current is not None and current >> SCOPE_BITS >= version:
            self.stale += 1
            return Applied.STALE
        if current is None and len(self._entries) >= self.capacity:
            self.refused += 1
            return Applied.REFUSED
        kind, source_id = source if source is not None else (_NO_SOURCE, _NO_SOURCE)
        index = self._scope(grid_company, kind, source_id)
        if index is None:
            self.refused += 1
            return Applied.REFUSED
        self._entries[key] = version << SCOPE_BITS | index
        return Applied.ADDED if current is None else Applied.UPDATED

    def remove(self, meterpoint_id: str) -> Applied:
        """Forget a meterpoint (a tombstone on the compacted topic)."""
        self._entries.pop(int(meterpoint_id), None)
        return Applied.REMOVED

    def get(self, meterpoint_id: str) -> Entry | None:
        """What the view knows of ``meterpoint_id``."""
        value = self._entries.get(int(meterpoint_id))
        if value is None:
            return None
        grid_company, kind, source_id = self._scopes[value & _SCOPE_MASK]
        return Entry(grid_company, kind or None, source_id or None, value >> SCOPE_BITS)

    def allowed(self, deliverer: Deliverer) -> frozenset[int]:
        """The scope indices ``deliverer`` may deliver for (usually one, or none)."""
        if deliverer.tenant is not None:
            index = self._scope_index.get((deliverer.tenant, deliverer.kind, deliverer.id))
            return frozenset() if index is None else frozenset((index,))
        return frozenset(self._by_source.get((deliverer.kind, deliverer.id), ()))

    def in_scope(self, meterpoint_id: str, deliverer: Deliverer) -> bool | None:
        """True/False for a known meterpoint, None for an unknown one (the redrive asks this one by one)."""
        value = self._entries.get(int(meterpoint_id))
        if value is None:
            return None
        return value & _SCOPE_MASK in self.allowed(deliverer)

    def check(self, outcomes: list[ItemOutcome], deliverer: Deliverer) -> list[ItemOutcome]:
        """``outcomes`` with each accepted item out of ``deliverer``'s scope turned `Rejected` or `Held`, in place."""
        entries = self._entries
        allowed = self.allowed(deliverer)
        last_id: str | None = None
        last_value: int | None = None
        for position, outcome in enumerate(outcomes):
            if type(outcome) is not Accepted:
                continue
            meterpoint_id = outcome.event.meterpoint_id
            if meterpoint_id != last_id:  # a batch usually carries many readings of one meterpoint in a row
                last_id, last_value = meterpoint_id, entries.get(int(meterpoint_id))
            if last_value is None:
                outcomes[position] = Held(outcome.index, RejectReason.UNKNOWN_METERPOINT, UNKNOWN_DETAIL, outcome.event)
            elif last_value & _SCOPE_MASK not in allowed:
                outcomes[position] = Rejected(outcome.index, RejectReason.NOT_IN_SCOPE, NOT_IN_SCOPE_DETAIL)
        return outcomes


__all__ = [
    "MAX_SCOPES",
    "NOT_IN_SCOPE_DETAIL",
    "UNKNOWN_DETAIL",
    "Applied",
    "Deliverer",
    "Entry",
    "ScopeView",
    "SourceKind",
]
