"""Per-client cap on calls in flight: no one client (API key, device, address) holds more than its share.

A `Bulkhead` bounds the calls of everybody together, so one client that opens many slow calls takes every
permit and the others get 503. `PerClientLimit` is checked before the bulkhead: each key may hold at most
`max_per_client` permits at once, the next one is refused at once with `ClientBusy` (its `retry_after` for a
`429 Retry-After`). Memory is bounded: a key is in the map only while it holds a permit (so the map never
outgrows the calls in flight), and at most `max_clients` keys are tracked; a new key beyond that is refused
too (`ClientBusy` with reason ``clients_full``), which only happens when that many clients are in flight.
"""

from __future__ import annotations

from libs.flowcontrol.errors import ClientBusy
from libs.flowcontrol.observer import NULL_OBSERVER, Observer

__all__ = ["PerClientLimit"]


class PerClientLimit:
    """At most `max_per_client` calls in flight per key and `max_clients` keys in flight at once."""

    def __init__(
        self,
        max_per_client: int,
        *,
        max_clients: int = 10_000,
        retry_after: float = 1.0,
        observer: Observer | None = None,
    ) -> None:
        if max_per_client < 1 or max_clients < 1:
            raise ValueError("max_per_client and max_clients must be at least 1")
        if retry_after < 0:
            raise ValueError("retry_after must not be negative")
        self._max_per_client = max_per_client
        self._max_clients = max_clients
        self._retry_after = retry_after
        self._observer = observer or NULL_OBSERVER
        self._in_flight: dict[str, int] = {}
        self._total = 0

    @property
    def max_per_client(self) -> int:
        """Calls one key may have in flight."""
        return self._max_per_client

    def __len__(self) -> int:
        """Keys holding at least one permit."""
        return len(self._in_flight)

    def in_flight(self, key: str) -> int:
        """Permits ``key`` holds now."""
        return self._in_flight.get(key, 0)

    def acquire(self, key: str) -> None:
        """Take a permit for ``key`` or raise `ClientBusy` at once (never waits)."""
        held = self._in_flight.get(key, 0)
        if held >= self._max_per_client:
            self._observer.rejected(ClientBusy.reason)
            raise ClientBusy(f"client has {held} requests in flight, the most allowed", retry_after=self._retry_after)
        if held == 0 and len(self._in_flight) >= self._max_clients:
            self._observer.rejected("clients_full")
            refused = ClientBusy(f"{self._max_clients} clients in flight", retry_after=self._retry_after)
            refused.reason = "clients_full"
            raise refused
        self._in_flight[key] = held + 1
        self._total += 1
        self._observer.admitted()
        self._observer.in_flight(self._total)

    def release(self, key: str) -> None:
        """Give back one permit of ``key``; the key leaves the map with its last permit."""
        held = self._in_flight.get(key, 0)
        if held <= 0:
            raise RuntimeError(f"release without acquire for {key!r}")
        if held == 1:
            del self._in_flight[key]
        else:
            self._in_flight[key] = held - 1
        self._total -= 1
        self._observer.in_flight(self._total)
