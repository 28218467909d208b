"""Serving a service: the one launch every ``python -m services.<name>`` goes through.

A service's ``__main__.py`` is a few lines::

    def main(argv: list[str] | None = None) -> int:
        return serve(create_app, CollectionSettings, prog="python -m services.collection", description=__doc__)

`serve` parses the command line (``--help``, ``--check-settings``), reads the settings once (a bad or
placeholder value exits 2 naming the field, never a traceback), configures logging, and runs uvicorn with the
options every service shares: no server header, ``X-Forwarded-For`` trusted only from ``trusted_proxies`` (the
rightmost address not in that list becomes the client, so quotas and login limits key on the real client behind
an ingress), no access log (the request metrics and the correlation-id logs replace it), the app's lifespan on,
the same graceful-shutdown window, a header timeout (a connection that has not sent its request line and
headers within ``http_header_timeout_seconds`` is closed; uvicorn itself only times idle keep-alive connections)
and a drain timeout (a body still trickling in ``http_drain_timeout_seconds`` after its answer was sent is cut
off), see `EdgeTimeoutProtocol`.
With ``internal_http_port`` set (the default in production) the same server also listens there, and
`libs.platform.internal.InternalPortGate` keeps ``/metrics`` and the API documents on that port only. The app factory
is called as ``create_app(settings, on_fatal=...)``: a background part (an ingress, a consumer) that dies calls
``on_fatal`` and the process exits 1, so the orchestrator restarts a replica that no longer does its work instead
of leaving it answering HTTP.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import logging
import socket
import sys
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

import uvicorn
from prometheus_client import REGISTRY, Counter
from pydantic import ValidationError
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from libs.platform.internal import InternalPortGate
from libs.platform.logging import configure_logging
from libs.platform.settings import ServiceSettings

GRACEFUL_SHUTDOWN_SECONDS = 15
"""How long in-flight requests get after SIGTERM; below Kubernetes' default 30 s termination grace period."""

S = TypeVar("S", bound=ServiceSettings)
S_contra = TypeVar("S_contra", bound=ServiceSettings, contravariant=True)

logger = logging.getLogger(__name__)


class AppFactory(Protocol[S_contra]):
    """``create_app(settings, on_fatal=...)`` of a service's composition root."""

    def __call__(self, settings: S_contra, /, *, on_fatal: Callable[[BaseException], object] | None = ...) -> Any:
        """Build the ASGI app (no I/O: the lifespan starts the parts)."""
        ...


class EdgeTimeoutProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with two deadlines uvicorn lacks (it only times idle keep-alive connections).

    Headers: a request's line and headers must arrive within ``header_timeout`` of the connection opening or of
    the first byte of a further request (slowloris); else the connection is closed without an answer, as a
    half-sent request cannot be answered sensibly. The body is the flow-control middleware's to time while the
    app reads it.

    Unread body: once the answer is sent, a body still arriving (the app answered without reading it all: a
    refusal, or a query that takes no body) must end within ``drain_timeout``, else the connection is closed.
    uvicorn discards such a body as it comes and restarts its keep-alive timer at every byte, so without this a
    client trickling one byte a second would keep the connection for as long as it likes. A client that sends its
    body at a normal pace finishes, reads the answer and keeps its connection.
    """

    header_timeout: float = 10.0
    drain_timeout: float = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._in_request = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self.header_timeout, "header_timeout")

    def on_message_begin(self) -> None:
        self._in_request = True
        super().on_message_begin()
        self._arm(self.header_timeout, "header_timeout")

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._in_request = False
        self._disarm()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._in_request and not self.transport.is_closing():
            self._arm(self.drain_timeout, "drain_timeout")

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self, seconds: float, reason: str) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, self._too_slow, reason)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self, reason: str) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            connections_cut().labels(reason).inc()
            self.transport.close()


@functools.cache
def connections_cut() -> Counter:
    """``gridhub_http_connections_cut_total{reason}``: connections `EdgeTimeoutProtocol` closed, by deadline."""
    return Counter(
        "gridhub_http_connections_cut",
        "HTTP connections closed by the server: headers too slow (header_timeout) or a body still trickling after "
        "its answer (drain_timeout).",
        ["reason"],
        registry=REGISTRY,
    )


def _edge_protocol(settings: ServiceSettings) -> type[EdgeTimeoutProtocol]:
    timeouts = {
        "header_timeout": settings.http_header_timeout_seconds,
        "drain_timeout": settings.http_drain_timeout_seconds,
    }
    return type("EdgeTimeoutProtocol", (EdgeTimeoutProtocol,), timeouts)


def server_app(app: Any, settings: ServiceSettings) -> Any:
    """``app`` behind the internal-port gate when ``internal_http_port`` is set, else ``app`` itself."""
    if settings.internal_http_port is None:
        return app
    return InternalPortGate(app, internal_port=settings.internal_http_port)


def server_config(app: Any, settings: ServiceSettings) -> uvicorn.Config:
    """The uvicorn configuration every service runs with (serve it on `listen_sockets`)."""
    proxies = [str(network) for network in settings.trusted_proxies]
    return uvicorn.Config(
        server_app(app, settings),
        host=settings.http_host,
        port=settings.http_port,
        http=_edge_protocol(settings),
        log_config=None,
        lifespan="on",
        access_log=False,
        server_header=False,
        # uvicorn's ProxyHeadersMiddleware takes the rightmost X-Forwarded-For address not in the list.
        proxy_headers=bool(proxies),
        forwarded_allow_ips=proxies,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
    )


def listen_sockets(settings: ServiceSettings) -> list[socket.socket]:
    """The bound listening sockets: the main port, and the internal port when it is set."""
    ports = [settings.http_port]
    if settings.internal_http_port is not None:
        ports.append(settings.internal_http_port)
    family = socket.AF_INET6 if ":" in settings.http_host else socket.AF_INET
    sockets: list[socket.socket] = []
    try:
        for port in ports:
            sockets.append(socket.create_server((settings.http_host, port), family=family, backlog=2048))
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    for sock in sockets:
        sock.set_inheritable(True)
    return sockets


def load_settings(settings_type: Callable[[], S]) -> S:
    """Read the settings, or exit 2 with the fields at fault (values hidden: they may be secrets)."""
    try:
        return settings_type()
    except ValidationError as error:
        lines = [f"  {'.'.join(str(part) for part in e['loc']) or '(settings)'}: {e['msg']}" for e in error.errors()]
        print("invalid settings:\n" + "\n".join(lines), file=sys.stderr)
        raise SystemExit(2) from None


def tune_garbage_collector() -> None:
    """Keep the collector off the objects that live as long as the process (call once, after start-up).

    A consumer allocates several objects per record that all die with their batch; with the default thresholds
    the collector runs every few hundred allocations and its full passes walk every module, model and route too.
    Freezing what exists after start-up and collecting the young generation less often cut the read side's CPU
    per record by about a quarter (measured with the bench).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 50, 100)


def serve(
    create_app: AppFactory[S],
    settings_type: Callable[[], S],
    *,
    prog: str,
    description: str | None,
    argv: Sequence[str] | None = None,
    freeze_gc: bool = False,
) -> int:
    """Run the service until SIGTERM/SIGINT. Exit 0 after a clean stop, 1 when a background part died."""
    parser = argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--check-settings", action="store_true", help="read and check the settings from the environment, then exit"
    )
    args = parser.parse_args(argv)
    settings = load_settings(settings_type)
    if args.check_settings:
        print(f"{settings.service_name}: settings are valid")
        return 0
    configure_logging(settings.service_name, settings.log_level)
    failures: list[BaseException] = []
    server: uvicorn.Server | None = None

    def stop(error: BaseException) -> None:
        failures.append(error)
        if server is not None:
            server.should_exit = True

    app = create_app(settings, on_fatal=stop)
    if freeze_gc:
        tune_garbage_collector()
    server = uvicorn.Server(server_config(app, settings))
    sockets = listen_sockets(settings)
    logger.info(
        "listening on %s:%s%s",
        settings.http_host,
        settings.http_port,
        f" (internal: {settings.internal_http_port})" if settings.internal_http_port else "",
    )
    try:
        server.run(sockets=sockets)
    finally:
        for sock in sockets:
            sock.close()
    if failures:
        logger.critical("stopped because a background part died: %r", failures[0])
    return 1 if failures else 0


__all__ = [
    "GRACEFUL_SHUTDOWN_SECONDS",
    "AppFactory",
    "EdgeTimeoutProtocol",
    "connections_cut",
    "listen_sockets",
    "load_settings",
    "serve",
    "server_app",
    "server_config",
    "tune_garbage_collector",
]
