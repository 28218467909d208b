"""Liveness and readiness: concurrent checks, per-check timeouts, 503 problems naming what failed."""

import asyncio
import socket
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI

from libs.platform.health import (
    ReadinessCheck,
    ReadinessRegistry,
    health_router,
    probe_check,
    tcp_check,
)
from libs.platform.problems import PROBLEM_JSON, install_problem_handlers


async def passes() -> None:
    await asyncio.sleep(0)


async def refuses() -> None:
    raise ConnectionRefusedError("connect to 127.0.0.1:5432 refused")


async def hangs() -> None:
    await asyncio.Event().wait()


def build_app(*checks: ReadinessCheck) -> FastAPI:
    app = FastAPI()
    install_problem_handlers(app)
    app.include_router(health_router(ReadinessRegistry(checks)))
    return app


def client(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://workorders.test")


async def test_healthz_answers_while_dependencies_are_down() -> None:
    async with client(build_app(probe_check("postgres", refuses))) as http:
        response = await http.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_readyz_is_200_with_details_when_all_checks_pass() -> None:
    async with client(build_app(probe_check("kafka", passes), probe_check("postgres", passes))) as http:
        response = await http.get("/readyz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ready"
    assert [(check["name"], check["ok"]) for check in body["checks"]] == [("kafka", True), ("postgres", True)]


async def test_readyz_is_503_naming_the_failing_check() -> None:
    async with client(build_app(probe_check("kafka", passes), probe_check("postgres", refuses))) as http:
        response = await http.get("/readyz")
    assert response.status_code == 503
    assert response.headers["content-type"] == PROBLEM_JSON
    body = response.json()
    assert body["title"] == "Service Unavailable"
    assert body["detail"] == "not ready: postgres"
    failing = [check for check in body["checks"] if not check["ok"]]
    assert failing == [
        {
            "name": "postgres",
            "ok": False,
            "duration_ms": failing[0]["duration_ms"],
            "error": "ConnectionRefusedError: connect to 127.0.0.1:5432 refused",
        }
    ]


async def test_a_hanging_check_times_out_and_does_not_hold_up_the_others() -> None:
    app = build_app(probe_check("kafka", hangs, timeout=0.05), probe_check("postgres", passes))
    started = time.monotonic()
    async with client(app) as http:
        response = await http.get("/readyz")
    assert time.monotonic() - started < 2
    assert response.status_code == 503
    body = response.json()
    assert body["detail"] == "not ready: kafka"
    kafka = next(check for check in body["checks"] if check["name"] == "kafka")
    assert kafka["error"] == "timed out after 0.05s"


async def test_a_probe_returning_false_fails() -> None:
    async def says_no() -> bool:
        return False

    report = await ReadinessRegistry([probe_check("mosquitto", says_no)]).run()
    assert not report.ready
    assert report.failing[0].error == "check returned False"


async def test_checks_run_concurrently() -> None:
    # Each check waits for the other to have started: this only passes when they run at the same time.
    first_started, second_started = asyncio.Event(), asyncio.Event()

    async def first() -> None:
        first_started.set()
        await second_started.wait()

    async def second() -> None:
        second_started.set()
        await first_started.wait()

    registry = ReadinessRegistry([probe_check("a", first, timeout=1), probe_check("b", second, timeout=1)])
    report = await registry.run()
    assert report.ready


async def test_concurrent_callers_share_one_run() -> None:
    calls = 0
    gate = asyncio.Event()

    async def counted() -> None:
        nonlocal calls
        calls += 1
        await gate.wait()

    registry = ReadinessRegistry([probe_check("postgres", counted)])
    waiting = [asyncio.create_task(registry.run()) for _ in range(5)]
    await asyncio.sleep(0.01)
    gate.set()
    reports = await asyncio.gather(*waiting)
    assert calls == 1
    assert all(report.ready for report in reports)
    await registry.run()
    assert calls == 2  # a finished run is not reused


async def test_no_checks_means_ready() -> None:
    assert (await ReadinessRegistry().run()).ready


def test_duplicate_check_names_are_refused() -> None:
    registry = ReadinessRegistry([probe_check("kafka", passes)])
    with pytest.raises(ValueError, match="duplicate"):
        registry.add(probe_check("kafka", passes))
    assert registry.names == ("kafka",)


def test_timeout_must_be_positive() -> None:
    with pytest.raises(ValueError, match="timeout"):
        probe_check("kafka", passes, timeout=0)


@pytest.fixture
async def listening_port() -> AsyncIterator[int]:
    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()


async def test_tcp_check_passes_against_a_listening_port(listening_port: int) -> None:
    report = await ReadinessRegistry([tcp_check("kafka", "127.0.0.1", listening_port)]).run()
    assert report.ready


async def test_tcp_check_fails_against_a_closed_port() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    report = await ReadinessRegistry([tcp_check("kafka", "127.0.0.1", closed_port, timeout=1)]).run()
    assert not report.ready
    assert report.failing[0].name == "kafka"
    assert report.failing[0].error is not None


async def test_a_failing_non_critical_check_degrades_but_stays_ready() -> None:
    checks = (probe_check("postgres", passes), probe_check("kafka", refuses, critical=False))
    async with client(build_app(*checks)) as http:
        response = await http.get("/readyz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "degraded"
    assert [(c["name"], c["ok"], c.get("critical", True)) for c in body["checks"]] == [
        ("postgres", True, True),
        ("kafka", False, False),
    ]
    assert body["checks"][1]["error"] == "ConnectionRefusedError: connect to 127.0.0.1:5432 refused"


async def test_a_failing_critical_check_still_fails_beside_a_degraded_one() -> None:
    checks = (probe_check("postgres", refuses), probe_check("kafka", refuses, critical=False))
    async with client(build_app(*checks)) as http:
        response = await http.get("/readyz")
    assert response.status_code == 503
    assert response.json()["detail"] == "not ready: postgres"
