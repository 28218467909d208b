"""The path template of the route a request matched ("/v1/meterpoints/{meterpoint_id}"), not its raw path.

Metric labels (and quotas keyed per route) need the template: raw paths carry ids and would make the label
set unbounded. Starlette leaves the matched route in ``scope["route"]``, but with nested routers or mounts
that route knows only its own part of the path, so the full templates are indexed once per app.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from typing import Any

import fastapi.routing
from starlette.routing import BaseRoute, Mount, compile_path
from starlette.types import Scope

# Newer FastAPI keeps included routers nested and offers this to list each route with its full path;
# older versions flatten included routers, so their routes carry full paths themselves.
_iter_route_contexts: Any = getattr(fastapi.routing, "iter_route_contexts", None)


def _with_templates(routes: Sequence[BaseRoute]) -> Iterator[tuple[BaseRoute, str]]:
    if _iter_route_contexts is not None:
        for context in _iter_route_contexts(routes):
            template = context.path_format
            if isinstance(template, str):
                yield context.original_route, template
        return
    for route in routes:  # pragma: no cover - older FastAPI
        template = getattr(route, "path_format", None)
        if isinstance(template, str):
            yield route, template


def _route_path(scope: Scope) -> str:
    path: str = scope.get("path", "")
    root_path: str = scope.get("root_path", "")
    return path[len(root_path) :] if root_path and path.startswith(root_path) else path


class RouteTemplates:
    """Resolves the full template of the route a request was routed to.

    Call `route_path` before handing the request on and `resolve` after it returned.
    """

    def __init__(self) -> None:
        self._app: object | None = None
        self._index: dict[int, list[tuple[re.Pattern[str], str]]] = {}

    @staticmethod
    def route_path(scope: Scope) -> str:
        """The request path relative to the app's root path, taken before routing changes the scope."""
        return _route_path(scope)

    def resolve(self, app: object, scope: Scope, route_path: str) -> str | None:
        """Template of ``scope["route"]`` within ``app``; None when no route matched (e.g. a 404)."""
        route = scope.get("route")
        if route is None:
            return None
        if app is not self._app:
            # Routes are fixed once the app serves, so one index per app is built on first use.
            self._index = {}
            self._add(getattr(app, "routes", ()), "")
            self._app = app
        candidates = self._index.get(id(route))
        if not candidates:
            fallback: Any = getattr(route, "path_format", None)
            return fallback if isinstance(fallback, str) else None
        if len(candidates) > 1:  # the same route included under several prefixes
            for pattern, template in candidates:
                if pattern.match(route_path):
                    return template
        return candidates[0][1]

    def _add(self, routes: Sequence[BaseRoute], prefix: str) -> None:
        for route, template in _with_templates(routes):
            full = prefix + template
            self._index.setdefault(id(route), []).append((compile_path(full)[0], full))
            if isinstance(route, Mount):
                self._add(route.routes, prefix + template.removesuffix("/{path}"))
