"""Prometheus exposition (``/metrics``) and an HTTP request histogram with bounded labels.

Labels are method, route template and status class ("2xx"), never the raw path or exact status, so the
number of series stays fixed however many meterpoints or clients call the service.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Awaitable, Callable

from prometheus_client import REGISTRY, CollectorRegistry, Histogram
from prometheus_client.exposition import choose_encoder
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from libs.platform.routes import RouteTemplates

UNMATCHED_ROUTE = "<unmatched>"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Seconds; REST ingress answers in milliseconds, but a slow Kafka ack can stretch a request to seconds.
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def metrics_endpoint(registry: CollectorRegistry = REGISTRY) -> Callable[[Request], Awaitable[Response]]:
    """Build an endpoint that serves ``registry`` in the format the scraper asks for (text or OpenMetrics)."""

    async def metrics(request: Request) -> Response:
        encoder, content_type = choose_encoder(request.headers.get("accept", ""))
        return Response(encoder(registry), media_type=content_type)

    return metrics


def mount_metrics(app: Starlette, *, registry: CollectorRegistry = REGISTRY, path: str = "/metrics") -> None:
    """Serve ``registry`` at ``path`` on a FastAPI or Starlette app (GET, left out of the OpenAPI document)."""
    app.add_route(path, metrics_endpoint(registry), methods=["GET"], include_in_schema=False)


class HttpMetrics:
    """The HTTP server metrics of one registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.request_duration = Histogram(
            "http_request_duration_seconds",
            "Time to answer an HTTP request, by method, route template and status class.",
            ["method", "route", "status_class"],
            buckets=_BUCKETS,
            registry=registry,
        )


# A registry refuses a second metric of the same name; several apps (or tests) may share one registry.
_by_registry: weakref.WeakKeyDictionary[CollectorRegistry, HttpMetrics] = weakref.WeakKeyDictionary()


def http_metrics(registry: CollectorRegistry = REGISTRY) -> HttpMetrics:
    """Return the HTTP metrics registered in ``registry``, creating them on first use."""
    metrics = _by_registry.get(registry)
    if metrics is None:
        metrics = _by_registry[registry] = HttpMetrics(registry)
    return metrics


class RequestMetricsMiddleware:
    """ASGI middleware that observes every HTTP request in ``http_request_duration_seconds``."""

    def __init__(self, app: ASGIApp, *, registry: CollectorRegistry = REGISTRY) -> None:
        self.app = app
        self.metrics = http_metrics(registry)
        self._templates = RouteTemplates()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Time one request; a request that raised before answering counts as a 5xx."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        app = scope.get("app")
        route_path = RouteTemplates.route_path(scope)
        status = 500
        started = time.perf_counter()

        async def send_capturing_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_capturing_status)
        finally:
            method = scope["method"] if scope["method"] in _METHODS else "OTHER"
            route = self._templates.resolve(app, scope, route_path) or UNMATCHED_ROUTE
            self.metrics.request_duration.labels(method, route, f"{status // 100}xx").observe(
                time.perf_counter() - started
            )
