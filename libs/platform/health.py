"""Liveness (``/healthz``) and readiness (``/readyz``) endpoints.

Liveness says only that the process answers; a failing dependency must not get the pod restarted.
Readiness runs the service's fixed set of checks (Kafka, PostgreSQL, ...) concurrently, each with its own
timeout, and answers 503 with a problem body naming every failing check while any of them fails. A check made
with ``critical=False`` is reported but never takes the service out of rotation: ``/readyz`` answers 200 with
status ``degraded`` (e.g. the read side keeps serving its views, marked stale, while Kafka is down).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from fastapi import APIRouter
from starlette.responses import JSONResponse, Response

from libs.platform.problems import Problem, problem_response

DEFAULT_TIMEOUT = 2.0
_MAX_ERROR_LENGTH = 300


class ReadinessCheck(Protocol):
    """One dependency the service needs to do its work. ``check`` raises (or returns False) when not ready."""

    @property
    def name(self) -> str:
        """Short, stable name shown in the readiness report ("kafka", "postgres")."""
        ...

    @property
    def timeout(self) -> float:
        """Seconds after which the check counts as failed."""
        ...

    async def check(self) -> object:
        """Probe the dependency once; raise or return False when it is not usable."""
        ...


@dataclass(frozen=True)
class ProbeCheck:
    """A `ReadinessCheck` around an async callable, e.g. ``lambda: pool.fetchval("SELECT 1")``."""

    name: str
    probe: Callable[[], Awaitable[object]]
    timeout: float = DEFAULT_TIMEOUT
    critical: bool = True

    async def check(self) -> object:
        """Await the probe and pass its result on."""
        return await self.probe()


def probe_check(
    name: str, probe: Callable[[], Awaitable[object]], *, timeout: float = DEFAULT_TIMEOUT, critical: bool = True
) -> ProbeCheck:
    """Build a readiness check from an async callable; it fails when the callable raises or returns False.

    A failing non-critical check makes the service ``degraded``, not unready.
    """
    if timeout <= 0:
        raise ValueError("timeout must be positive")
    return ProbeCheck(name=name, probe=probe, timeout=timeout, critical=critical)


def tcp_check(name: str, host: str, port: int, *, timeout: float = DEFAULT_TIMEOUT) -> ProbeCheck:
    """Build a check that passes when a TCP connection to ``host:port`` opens within ``timeout``."""

    async def connect() -> None:
        _, writer = await asyncio.open_connection(host, port)
        writer.close()
        await writer.wait_closed()

    return probe_check(name, connect, timeout=timeout)


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one check in one readiness run."""

    name: str
    ok: bool
    duration_ms: float
    error: str | None = None
    critical: bool = True


@dataclass(frozen=True)
class ReadinessReport:
    """The outcomes of all checks of one readiness run."""

    results: tuple[CheckResult, ...]

    @property
    def ready(self) -> bool:
        """True when every critical check passed (and trivially when there are none)."""
        return all(result.ok for result in self.results if result.critical)

    @property
    def failing(self) -> tuple[CheckResult, ...]:
        """The critical checks that failed."""
        return tuple(result for result in self.results if not result.ok and result.critical)

    @property
    def degraded(self) -> tuple[CheckResult, ...]:
        """The non-critical checks that failed: reported, but the service stays ready."""
        return tuple(result for result in self.results if not result.ok and not result.critical)


async def _run_one(check: ReadinessCheck) -> CheckResult:
    started = time.perf_counter()
    error: str | None = None
    try:
        async with asyncio.timeout(check.timeout):
            outcome = await check.check()
        if outcome is False:
            error = "check returned False"
    except TimeoutError:
        error = f"timed out after {check.timeout:g}s"
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"[:_MAX_ERROR_LENGTH]
    duration_ms = round((time.perf_counter() - started) * 1000, 3)
    critical = bool(getattr(check, "critical", True))
    return CheckResult(name=check.name, ok=error is None, duration_ms=duration_ms, error=error, critical=critical)


class ReadinessRegistry:
    """The fixed set of readiness checks of one service, run concurrently.

    Concurrent callers share one run in progress, so a burst of probes costs the database or broker at
    most one connection attempt per check at a time.
    """

    def __init__(self, checks: Iterable[ReadinessCheck] = ()) -> None:
        self._checks: list[ReadinessCheck] = []
        self._inflight: asyncio.Task[ReadinessReport] | None = None
        for check in checks:
            self.add(check)

    def add(self, check: ReadinessCheck) -> None:
        """Register a check; names must be unique because the report is keyed by them."""
        if any(existing.name == check.name for existing in self._checks):
            raise ValueError(f"duplicate readiness check name: {check.name!r}")
        self._checks.append(check)

    @property
    def names(self) -> tuple[str, ...]:
        """The names of the registered checks, in registration order."""
        return tuple(check.name for check in self._checks)

    async def run(self) -> ReadinessReport:
        """Run every check (or join the run in progress) and return the report."""
        loop = asyncio.get_running_loop()
        task = self._inflight
        if task is None or task.done() or task.get_loop() is not loop:
            task = loop.create_task(self._run_all())
            self._inflight = task
        # shield: one probe giving up must not cancel the run the other probes are waiting on.
        return await asyncio.shield(task)

    async def _run_all(self) -> ReadinessReport:
        results = await asyncio.gather(*(_run_one(check) for check in self._checks))
        return ReadinessReport(results=tuple(results))


def readiness_response(report: ReadinessReport, **details: object) -> Response:
    """200 with each check's result when ready (status ``degraded`` when a non-critical check fails); otherwise a
    503 problem listing the failing checks. ``details`` are added to either body."""
    checks = [
        {
            "name": r.name,
            "ok": r.ok,
            "duration_ms": r.duration_ms,
            **({"error": r.error} if r.error else {}),
            **({} if r.critical else {"critical": False}),
        }
        for r in report.results
    ]
    if report.ready:
        return JSONResponse({"status": "degraded" if report.degraded else "ready", "checks": checks, **details})
    failing = ", ".join(result.name for result in report.failing)
    problem = Problem.from_status(503, f"not ready: {failing}", checks=checks, **details)
    return problem_response(problem)


def health_router(
    readiness: ReadinessRegistry,
    *,
    liveness_path: str = "/healthz",
    readiness_path: str = "/readyz",
    include_in_schema: bool = False,
) -> APIRouter:
    """Build a router with the liveness and readiness endpoints for ``app.include_router``."""
    router = APIRouter(tags=["health"], include_in_schema=include_in_schema)

    @router.get(liveness_path, operation_id="healthz")
    async def healthz() -> Response:
        # Answering at all is the proof: the event loop runs.
        return JSONResponse({"status": "ok"})

    @router.get(readiness_path, operation_id="readyz")
    async def readyz() -> Response:
        return readiness_response(await readiness.run())

    return router
