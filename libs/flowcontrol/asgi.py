"""ASGI middleware for REST ingress: per-client quota (429), body size (413), bounded in-flight (429/503).

`FlowControlMiddleware(app, boundary=boundaries["rest_ingress"])` applies a boundary's `Quota`,
`PerClientLimit`, `Bulkhead` or `AdaptiveLimiter`, `max_body_bytes` and body timeouts to every HTTP
request, in that order:

1. quota per client key -> 429 with `Retry-After` (whole seconds, rounded up from the exact
   `retry_after`); a request costing more than the burst can never pass -> 413;
2. declared `Content-Length` above `max_body_bytes` -> 413 before the app runs;
3. the client key already has `max_per_client` requests in flight -> 429 with `Retry-After`, so one
   client cannot take the permits every client shares;
4. no concurrency permit -> 503 with `Retry-After`;
5. the app runs with a `receive` that counts body bytes, so a chunked body without a length still
   gets 413 once it passes the limit (if the app has not started its response yet), and that times
   the body: it must arrive within `body_timeout` seconds plus one second per `min_body_rate` bytes
   received, else 408 with `Connection: close` and the permits go back (a slow-body client holds a
   permit for `body_timeout` at most, however slowly it trickles).

Refusals are RFC 9457 `application/problem+json` bodies, rendered here with orjson rather than
through `libs.platform.problems`, which would put pydantic and FastAPI on the refusal path that
overload makes hot. Quota answers (admitted or not) carry the IETF `RateLimit-Policy` and
`RateLimit` fields (draft-ietf-httpapi-ratelimit-headers-10).
"""

from __future__ import annotations

import asyncio
import functools
import math
import re
from collections.abc import Callable, Collection, Iterable
from http import HTTPStatus
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from libs.flowcontrol.bulkhead import Bulkhead
from libs.flowcontrol.clock import Clock, MonotonicClock, wait_future
from libs.flowcontrol.errors import BulkheadFull, ClientBusy, LimitExceeded, Refused
from libs.flowcontrol.limits import AdaptiveLimiter
from libs.flowcontrol.observer import NULL_OBSERVER, Observer
from libs.flowcontrol.perclient import PerClientLimit
from libs.flowcontrol.policy import Boundary
from libs.flowcontrol.quota import Quota, QuotaDecision
from libs.platform.logging import get_correlation_id

__all__ = [
    "BODY_TIMEOUT",
    "BODY_TOO_LARGE",
    "DEFAULT_EXEMPT_PATHS",
    "PROBLEM_JSON",
    "FlowControlMiddleware",
    "client_key_resolver",
    "default_client_key",
    "ratelimit_headers",
    "retry_after_seconds",
]

PROBLEM_JSON = "application/problem+json"
BODY_TOO_LARGE = "body_too_large"
BODY_TIMEOUT = "body_timeout"
# Probes and scrapes must answer under overload too: a liveness probe refused by a full bulkhead
# would get a busy pod restarted, which is the opposite of shedding load.
DEFAULT_EXEMPT_PATHS: frozenset[str] = frozenset({"/healthz", "/readyz", "/metrics"})

_EPSILON = 1e-9
_CLIENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,63}")
_POLICY_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
# The status phrase as title, as `libs.platform.problems.Problem.from_status` writes it.
_TITLES = {status: HTTPStatus(status).phrase for status in (408, 413, 429, 503)}

Headers = list[tuple[bytes, bytes]]


class _BodyTooLarge(Exception):
    """Raised out of the counting `receive` once a streamed body passes `max_body_bytes`."""


class _BodyTimeout(Exception):
    """Raised out of the timed `receive` once the body has not arrived within its time."""


def retry_after_seconds(retry_after: float) -> int:
    """`Retry-After` in whole seconds: rounded up, never 0 (a 0 invites a tight retry loop)."""
    return max(1, math.ceil(retry_after - _EPSILON))


def ratelimit_headers(decision: QuotaDecision, policy: str = "default") -> Headers:
    """`RateLimit-Policy` and `RateLimit` for a token-bucket decision.

    The policy's quota `q` is the burst and its window `w` the time a bucket takes to refill from
    empty (`burst / rate`, rounded up); `r` is the whole tokens left and `t` the seconds until the
    bucket is full again (rounded up; 0 when full).
    """
    remaining = max(0, math.floor(decision.remaining + _EPSILON))
    reset = max(0, math.ceil(decision.reset_after - _EPSILON))
    return [
        (b"ratelimit-policy", _policy_field(policy, decision.limit, decision.rate)),
        (b"ratelimit", b'"%s";r=%d;t=%d' % (policy.encode("latin-1"), remaining, reset)),
    ]


@functools.lru_cache(maxsize=256)
def _policy_field(policy: str, limit: float, rate: float) -> bytes:
    # Few distinct (burst, rate) pairs exist at a time (the default, overrides, the admission scale).
    quota = math.floor(limit + _EPSILON)
    window = max(1, math.ceil(limit / rate - _EPSILON))
    return f'"{policy}";q={quota};w={window}'.encode("latin-1")


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value  # type: ignore[no-any-return]
    return None


def client_key_resolver(header: str | None = "X-Client-Id") -> Callable[[Scope], str]:
    """Build a `client_key(scope)`: the API key's client, else `header`, else `ip:<peer address>`.

    The API key is read from `scope["state"]["api_key"]` (`request.state.api_key`), which only an
    authentication step *before* this middleware can have set. `header` is declared by the caller
    and so can be forged: pass `header=None` where clients are untrusted and unauthenticated.
    Header values that are not a plain client id fall through to the peer address.
    """
    header_key = header.lower().encode("latin-1") if header else None

    def client_key(scope: Scope) -> str:
        state: Any = scope.get("state")
        if state:
            client = getattr(state.get("api_key"), "client", None)
            if isinstance(client, str) and client:
                return client
        if header_key is not None:
            raw = _header(scope, header_key)
            if raw is not None:
                value = raw.decode("latin-1")
                if _CLIENT_ID.fullmatch(value):
                    return value
        peer = scope.get("client")
        return f"ip:{peer[0]}" if peer else "ip:unknown"

    return client_key


default_client_key = client_key_resolver()


class FlowControlMiddleware:
    """Plain ASGI middleware applying one boundary's admission policies to HTTP requests.

    Pass a `Boundary` (from `build_boundary`) and/or the policies themselves; explicit arguments
    win. `cost(scope)` prices a request in quota tokens (default 1). Paths in `exempt_paths` and
    non-HTTP scopes pass untouched. The admitted request's client key is left in
    `scope["state"]["client_key"]`, so an endpoint can charge more (e.g. per item of a batch).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        boundary: Boundary | None = None,
        quota: Quota | None = None,
        bulkhead: Bulkhead | None = None,
        per_client: PerClientLimit | None = None,
        limiter: AdaptiveLimiter | None = None,
        max_body_bytes: int | None = None,
        body_timeout: float | None = None,
        min_body_rate: float | None = None,
        clock: Clock | None = None,
        client_key: Callable[[Scope], str] = default_client_key,
        cost: Callable[[Scope], float] | None = None,
        exempt_paths: Collection[str] = DEFAULT_EXEMPT_PATHS,
        policy_name: str = "default",
        observer: Observer | None = None,
    ) -> None:
        if boundary is not None:
            # `is None`, not `or`: an empty `Quota` is falsy (it has a length).
            quota = boundary.quota if quota is None else quota
            bulkhead = boundary.bulkhead if bulkhead is None else bulkhead
            per_client = boundary.per_client if per_client is None else per_client
            limiter = boundary.limiter if limiter is None else limiter
            max_body_bytes = boundary.policy.max_body_bytes if max_body_bytes is None else max_body_bytes
            body_timeout = boundary.policy.body_timeout if body_timeout is None else body_timeout
            min_body_rate = boundary.policy.min_body_rate if min_body_rate is None else min_body_rate
            clock = boundary.clock if clock is None else clock
            observer = boundary.observer if observer is None else observer
        if bulkhead is not None and limiter is not None:
            raise ValueError("give a boundary one concurrency policy: a bulkhead or a limiter")
        if max_body_bytes is not None and max_body_bytes < 1:
            raise ValueError("max_body_bytes must be at least 1")
        if body_timeout is not None and body_timeout <= 0:
            raise ValueError("body_timeout must be positive")
        if min_body_rate is not None and (min_body_rate <= 0 or body_timeout is None):
            raise ValueError("min_body_rate must be positive and comes with a body_timeout")
        if not _POLICY_NAME.fullmatch(policy_name):
            raise ValueError("policy_name must be 1-64 letters, digits, '.', '_' or '-'")
        self.app = app
        self.quota = quota
        self.bulkhead = bulkhead
        self.per_client = per_client
        self.limiter = limiter
        self.max_body_bytes = max_body_bytes
        self.body_timeout = body_timeout
        self.min_body_rate = min_body_rate
        self.clock: Clock = MonotonicClock() if clock is None else clock
        self.client_key = client_key
        self.cost = cost
        self.exempt_paths = frozenset(exempt_paths)
        self.policy_name = policy_name
        self._observer = NULL_OBSERVER if observer is None else observer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Admit or refuse one request; lifespan, websockets and exempt paths pass through."""
        if scope["type"] != "http" or scope["path"] in self.exempt_paths:
            await self.app(scope, receive, send)
            return
        extra: Headers = []
        key = self.client_key(scope) if self.quota is not None or self.per_client is not None else ""
        if self.quota is not None:
            cost = 1.0 if self.cost is None else self.cost(scope)
            decision = self.quota.try_acquire(key, cost)
            extra = ratelimit_headers(decision, self.policy_name)
            if not decision.allowed:
                await self._refuse_quota(scope, send, decision, cost, extra)
                return
            scope.setdefault("state", {})["client_key"] = key
        limit = self.max_body_bytes
        if limit is not None:
            declared = _content_length(scope)
            if declared is not None and declared > limit:
                await self._refuse_body(scope, send, extra)
                return
        if self.per_client is None:
            await self._through_concurrency(scope, receive, send, extra)
            return
        try:
            self.per_client.acquire(key)
        except ClientBusy as refused:
            await self._refuse_client_busy(scope, send, refused, extra)
            return
        try:
            await self._through_concurrency(scope, receive, send, extra)
        finally:
            self.per_client.release(key)

    async def _through_concurrency(self, scope: Scope, receive: Receive, send: Send, extra: Headers) -> None:
        if self.bulkhead is not None:
            await self._through_bulkhead(self.bulkhead, scope, receive, send, extra)
        elif self.limiter is not None:
            await self._through_limiter(self.limiter, scope, receive, send, extra)
        else:
            await self._forward(scope, receive, send, extra)

    async def _through_bulkhead(
        self, bulkhead: Bulkhead, scope: Scope, receive: Receive, send: Send, extra: Headers
    ) -> None:
        try:
            await bulkhead.acquire()
        except BulkheadFull as refused:
            await self._refuse_busy(scope, send, refused, extra)
            return
        try:
            await self._forward(scope, receive, send, extra)
        finally:
            bulkhead.release()

    async def _through_limiter(
        self, limiter: AdaptiveLimiter, scope: Scope, receive: Receive, send: Send, extra: Headers
    ) -> None:
        try:
            ticket = await limiter.acquire()
        except LimitExceeded as refused:
            await self._refuse_busy(scope, send, refused, extra)
            return
        try:
            await self._forward(scope, receive, send, extra)
        except BaseException as error:
            limiter.on_exception(ticket, error)
            raise
        limiter.on_success(ticket)

    async def _forward(self, scope: Scope, receive: Receive, send: Send, extra: Headers) -> None:
        if self.max_body_bytes is not None or self.body_timeout is not None:
            await self._forward_guarded(scope, receive, send, extra)
            return
        if not extra:
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), *extra]}
            await send(message)

        await self.app(scope, receive, send_with_headers)

    async def _forward_guarded(self, scope: Scope, receive: Receive, send: Send, extra: Headers) -> None:
        limit = self.max_body_bytes
        timeout = self.body_timeout
        rate = self.min_body_rate
        clock = self.clock
        started_at = clock.now()
        received = 0
        body_done = started = answered = False
        failure: str | None = None

        async def timed_receive() -> Message:
            if timeout is None or body_done:
                return await receive()
            # The body's time grows with what arrived: `timeout` plus a second per `rate` bytes.
            allowed = timeout + (received / rate if rate else 0.0)
            pending = asyncio.ensure_future(receive())
            if not await wait_future(pending, clock, started_at + allowed - clock.now()):
                pending.cancel()
                raise _BodyTimeout
            return pending.result()

        async def guarded_receive() -> Message:
            nonlocal received, body_done, failure
            if failure is not None:
                raise _BodyTimeout if failure == BODY_TIMEOUT else _BodyTooLarge
            try:
                message = await timed_receive()
            except _BodyTimeout:
                failure = BODY_TIMEOUT
                raise
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if not message.get("more_body", False):
                    body_done = True
                if limit is not None and received > limit:
                    failure = BODY_TOO_LARGE
                    raise _BodyTooLarge
            return message

        async def refuse() -> None:
            nonlocal answered
            if not answered:
                answered = True
                if failure == BODY_TIMEOUT:
                    await self._refuse_slow_body(scope, send, extra)
                else:
                    await self._refuse_body(scope, send, extra)

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if failure is not None and not started:
                # The app answered its failed body read in its own way (FastAPI: 400, Starlette: 500);
                # the client gets the 413 or 408 instead, whatever the app's exception handlers made of it.
                await refuse()
                return
            if message["type"] == "http.response.start":
                started = True
                if extra:
                    message = {**message, "headers": [*message.get("headers", ()), *extra]}
            await send(message)

        try:
            await self.app(scope, guarded_receive, guarded_send)
        except Exception:
            if failure is None or started:
                raise  # not ours, or too late for a 413/408 (the server drops the connection)
        if failure is not None and not started:
            await refuse()

    async def _refuse_quota(
        self, scope: Scope, send: Send, decision: QuotaDecision, cost: float, extra: Headers
    ) -> None:
        if math.isinf(decision.retry_after):
            detail = f"the request costs {cost:g} quota units, more than the burst of {decision.limit:g}"
            await _send_problem(scope, send, 413, detail, "quota", extra)
            return
        seconds = retry_after_seconds(decision.retry_after)
        detail = f"quota exceeded; retry after {seconds} s"
        await _send_problem(scope, send, 429, detail, "quota", [(b"retry-after", b"%d" % seconds), *extra])

    async def _refuse_body(self, scope: Scope, send: Send, extra: Headers) -> None:
        self._observer.rejected(BODY_TOO_LARGE)
        detail = f"the request body is larger than {self.max_body_bytes} bytes"
        await _send_problem(scope, send, 413, detail, BODY_TOO_LARGE, extra)

    async def _refuse_slow_body(self, scope: Scope, send: Send, extra: Headers) -> None:
        self._observer.rejected(BODY_TIMEOUT)
        detail = f"the request body did not arrive within {self.body_timeout:g} s"
        if self.min_body_rate is not None:
            detail += f" plus 1 s per {self.min_body_rate:g} bytes"
        # Close: the rest of the body may still be on its way, and nobody reads it.
        await _send_problem(scope, send, 408, detail, BODY_TIMEOUT, [(b"connection", b"close"), *extra])

    async def _refuse_client_busy(self, scope: Scope, send: Send, refused: Refused, extra: Headers) -> None:
        seconds = retry_after_seconds(refused.retry_after or 1.0)
        detail = f"too many requests of this client in progress; retry after {seconds} s"
        await _send_problem(scope, send, 429, detail, refused.reason, [(b"retry-after", b"%d" % seconds), *extra])

    async def _refuse_busy(self, scope: Scope, send: Send, refused: Refused, extra: Headers) -> None:
        headers = list(extra)
        detail = "too many requests in progress"
        if refused.retry_after is not None:
            seconds = retry_after_seconds(refused.retry_after)
            headers.insert(0, (b"retry-after", b"%d" % seconds))
            detail = f"{detail}; retry after {seconds} s"
        await _send_problem(scope, send, 503, detail, refused.reason, headers)


def _content_length(scope: Scope) -> int | None:
    raw = _header(scope, b"content-length")
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        return None  # the server rejects a malformed length before the app sees it


async def _send_problem(
    scope: Scope, send: Send, status: int, detail: str, reason: str, headers: Iterable[tuple[bytes, bytes]]
) -> None:
    problem: dict[str, object] = {
        "type": "about:blank",
        "title": _TITLES[status],
        "status": status,
        "detail": detail,
        "reason": reason,
    }
    state = scope.get("state") or {}
    correlation_id = get_correlation_id() or state.get("correlation_id")
    if correlation_id is not None:
        problem["correlation_id"] = correlation_id
    body = orjson.dumps(problem)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", PROBLEM_JSON.encode("latin-1")),
                (b"content-length", b"%d" % len(body)),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
