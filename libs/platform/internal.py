"""The internal listener: ``/metrics`` and the API documents answer on the internal port only, when it is set.

A scrape or an API browser needs no public address, and both tell an attacker what runs inside (routes, versions,
client counts in the metrics' labels). With ``internal_http_port`` set (the default in production), `serve` opens a
second socket on the same server and wraps the app in `InternalPortGate`: on the public port the internal paths are
404, on the internal port everything but them (and the probes) is 404. Without it (dev) the app runs unwrapped and
everything stays on the main port.
"""

from __future__ import annotations

from collections.abc import Collection

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

INTERNAL_PATHS: frozenset[str] = frozenset({"/metrics", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})
"""What only the internal port serves."""
BOTH_PORTS: frozenset[str] = frozenset({"/healthz", "/readyz"})
"""What both ports serve: the kubelet probes the main port, an operator may probe the internal one."""


class InternalPortGate:
    """Route ``INTERNAL_PATHS`` to the listener on ``internal_port`` only; the rest to the others only."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        internal_port: int,
        internal_paths: Collection[str] = INTERNAL_PATHS,
        both_ports: Collection[str] = BOTH_PORTS,
    ) -> None:
        self.app = app
        self.internal_port = internal_port
        self.internal_paths = frozenset(internal_paths)
        self.both_ports = frozenset(both_ports)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer 404 for a path on the wrong listener; pass everything else (and lifespan) through."""
        if scope["type"] in ("http", "websocket"):
            path: str = scope["path"]
            server = scope.get("server")
            on_internal = server is not None and server[1] == self.internal_port
            if path not in self.both_ports and (path in self.internal_paths) != on_internal:
                await _not_found(scope, send)
                return
        await self.app(scope, receive, send)


async def _not_found(scope: Scope, send: Send) -> None:
    if scope["type"] != "http":
        await send({"type": "websocket.close", "code": 1008})
        return
    body = orjson.dumps({"type": "about:blank", "title": "Not Found", "status": 404, "detail": "no such resource"})
    await send(
        {
            "type": "http.response.start",
            "status": 404,
            "headers": [(b"content-type", b"application/problem+json"), (b"content-length", b"%d" % len(body))],
        }
    )
    await send({"type": "http.response.body", "body": body})


__all__ = ["BOTH_PORTS", "INTERNAL_PATHS", "InternalPortGate"]
