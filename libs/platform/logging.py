"""Structured JSON logging: one object per line, tagged with the service and the current correlation id.

The correlation id lives in a contextvar, so it follows a request (or a consumed Kafka record) through every
``await`` and into thread-pool work without being passed around by hand.
"""

from __future__ import annotations

import logging
import re
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from datetime import UTC, datetime
from typing import Any, TextIO

import orjson
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CORRELATION_ID_HEADER = "X-Correlation-ID"

# Bounded and limited to characters that cannot break a log line, a header or a Kafka header value:
# the id comes from the caller, so it is untrusted input.
_VALID_CORRELATION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")

_correlation_id: ContextVar[str | None] = ContextVar("gridhub_correlation_id", default=None)

# Attributes every LogRecord has; anything else on a record came from `extra=` and is logged as a field.
_RECORD_ATTRIBUTES = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}
_CORE_FIELDS = ("time", "level", "logger", "message", "service", "correlation_id")


def new_correlation_id() -> str:
    """Return a fresh correlation id (a random UUID in hex)."""
    return uuid.uuid4().hex


def is_valid_correlation_id(value: str) -> bool:
    """Tell whether a caller-supplied correlation id is safe to adopt (1-128 chars of ``[A-Za-z0-9._:-]``)."""
    return _VALID_CORRELATION_ID.fullmatch(value) is not None


def get_correlation_id() -> str | None:
    """Return the correlation id of the current context, or None outside any request or message."""
    return _correlation_id.get()


def set_correlation_id(value: str | None) -> Token[str | None]:
    """Set the correlation id of the current context; pass the token to `reset_correlation_id` to undo."""
    return _correlation_id.set(value)


def reset_correlation_id(token: Token[str | None]) -> None:
    """Restore the correlation id that was current before `set_correlation_id` returned ``token``."""
    _correlation_id.reset(token)


@contextmanager
def bind_correlation_id(value: str | None = None) -> Iterator[str]:
    """Run a block under ``value`` (a new id when None or invalid) and restore the previous id after it."""
    correlation_id = value if value is not None and is_valid_correlation_id(value) else new_correlation_id()
    token = _correlation_id.set(correlation_id)
    try:
        yield correlation_id
    finally:
        _correlation_id.reset(token)


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object: the core fields first, then the record's extra fields."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        """Render ``record`` as a single line of JSON (newlines inside values are escaped)."""
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "service": self.service,
            "correlation_id": get_correlation_id() or record.__dict__.get("correlation_id"),
        }
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRIBUTES and key not in _CORE_FIELDS:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        try:
            return orjson.dumps(entry, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
        except TypeError:
            # e.g. an int beyond 64 bits in an extra field: losing its type beats losing the line.
            safe = {key: value if key in _CORE_FIELDS else str(value) for key, value in entry.items()}
            return orjson.dumps(safe, default=str).decode()


class _GridHubHandler(logging.StreamHandler[TextIO]):
    """Marks the handler `configure_logging` installs, so a second call replaces it instead of adding one."""


def configure_logging(service: str, level: str | int = "INFO", *, stream: TextIO | None = None) -> None:
    """Send all logging (including uvicorn's) as JSON lines to ``stream`` (stdout by default).

    Idempotent: calling it again replaces the handler it installed and leaves other handlers (e.g. pytest's
    capture) alone. Run uvicorn with ``log_config=None`` so it does not install its own handlers afterwards.
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, _GridHubHandler):
            root.removeHandler(handler)
    handler = _GridHubHandler(stream if stream is not None else sys.stdout)
    handler.setFormatter(JsonFormatter(service))
    root.addHandler(handler)
    root.setLevel(level)
    # uvicorn attaches plain-text handlers to its own loggers; route them through the root handler instead.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers.clear()
        uvicorn_logger.propagate = True


class CorrelationIdMiddleware:
    """ASGI middleware: adopt a valid ``X-Correlation-ID`` from the request or make one, and echo it back.

    The id is set in the contextvar for the whole request and stored in ``request.state.correlation_id``
    (error handlers outside this middleware read it from there).
    """

    def __init__(self, app: ASGIApp, *, header_name: str = CORRELATION_ID_HEADER) -> None:
        self.app = app
        self.header_name = header_name
        self._header_key = header_name.lower().encode("latin-1")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI connection; lifespan events pass through untouched."""
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        correlation_id = self._from_headers(scope) or new_correlation_id()
        scope.setdefault("state", {})["correlation_id"] = correlation_id

        async def send_with_header(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)[self.header_name] = correlation_id
            await send(message)

        token = _correlation_id.set(correlation_id)
        try:
            await self.app(scope, receive, send_with_header)
        finally:
            _correlation_id.reset(token)

    def _from_headers(self, scope: Scope) -> str | None:
        for key, raw in scope.get("headers", ()):
            if key == self._header_key:
                # The first occurrence decides; an invalid one is replaced, never echoed or logged.
                value: str = raw.decode("latin-1")
                return value if is_valid_correlation_id(value) else None
        return None
