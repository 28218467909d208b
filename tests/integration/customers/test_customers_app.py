"""The composition root: a background part that dies reports through on_fatal; a failed start leaves nothing."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from prometheus_client import CollectorRegistry

from services.customers import app as app_module
from services.customers.app import create_app
from services.customers.settings import CustomersSettings

pytestmark = [pytest.mark.postgres]


async def test_a_relay_that_dies_calls_on_fatal(
    settings_for: Callable[..., CustomersSettings], monkeypatch: pytest.MonkeyPatch
) -> None:
    async def dying_relay(*args: object, **kwargs: object) -> None:
        raise RuntimeError("the relay broke")

    monkeypatch.setattr(app_module, "run_outbox_relay", dying_relay)
    fatal: list[BaseException] = []
    reported = asyncio.Event()

    def on_fatal(error: BaseException) -> None:
        fatal.append(error)
        reported.set()

    app = create_app(settings_for(relay_enabled=True), on_fatal=on_fatal, registry=CollectorRegistry())
    async with app.router.lifespan_context(app):
        await asyncio.wait_for(reported.wait(), timeout=5)
        parts = app.state.parts
        assert parts.relay is not None
        assert parts.relay.done()
        assert parts.backlog is not None
        assert not parts.backlog.done()  # the rest keeps running until the app stops
    assert [str(error) for error in fatal] == ["the relay broke"]
    assert parts.backlog.done()


async def test_a_clean_stop_reports_nothing_and_stops_every_part(
    settings_for: Callable[..., CustomersSettings], kafka_bootstrap: str
) -> None:
    fatal: list[BaseException] = []
    settings = settings_for(relay_enabled=True, kafka_bootstrap_servers=kafka_bootstrap, relay_poll_interval=0.2)
    app = create_app(settings, on_fatal=fatal.append, registry=CollectorRegistry())
    async with app.router.lifespan_context(app):
        parts = app.state.parts
        assert parts.pool is not None
        assert parts.relay is not None
        assert parts.backlog is not None
    assert parts.relay.done()
    assert parts.backlog.done()
    assert parts.pool.is_closing()
    assert fatal == []


async def test_a_failed_start_closes_what_had_started(
    settings_for: Callable[..., CustomersSettings], monkeypatch: pytest.MonkeyPatch
) -> None:
    class Broken(Exception):
        pass

    def broken_endpoint(**kwargs: object) -> None:
        raise Broken

    monkeypatch.setattr(app_module, "SoapEndpoint", broken_endpoint)
    app = create_app(settings_for(), registry=CollectorRegistry())
    with pytest.raises(Broken):
        async with app.router.lifespan_context(app):
            pass
    parts = app.state.parts
    assert parts.pool is not None
    assert parts.pool.is_closing()
    assert parts.backlog is None
