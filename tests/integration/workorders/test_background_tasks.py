"""A background task of the work orders service that dies is reported to ``on_fatal`` (``serve`` then exits 1)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from libs.platform.apikeys import InMemoryKeyStore
from services.workorders import app as composition
from services.workorders.settings import WorkordersSettings
from tests.integration.workorders.conftest import Running
from tests.integration.workorders.support import FakeDirectory, wait_for

pytestmark = pytest.mark.postgres


async def _fails(*_: Any) -> None:
    raise RuntimeError("the backlog watcher broke")


async def _returns(*_: Any) -> None:
    return None


@pytest.mark.parametrize(("work", "message"), [(_fails, "broke"), (_returns, "ended while the service runs")])
async def test_a_background_task_that_dies_calls_on_fatal(
    monkeypatch: pytest.MonkeyPatch,
    settings_for: Callable[..., WorkordersSettings],
    start_app: Callable[..., Awaitable[Running]],
    work: Callable[..., Awaitable[None]],
    message: str,
) -> None:
    monkeypatch.setattr(composition, "watch_outbox_backlog", work)
    fatal: list[BaseException] = []
    running = await start_app(settings_for(), customers=FakeDirectory(), on_fatal=fatal.append)

    async def reported() -> bool:
        return bool(fatal)

    await wait_for(reported, 5, "on_fatal to be called")
    assert message in str(fatal[0])
    assert running.parts.tasks["outbox-backlog"].done()


async def test_tasks_stopped_with_the_service_are_not_fatal(settings_for: Callable[..., WorkordersSettings]) -> None:
    fatal: list[BaseException] = []
    app = composition.create_app(
        settings_for(enrichment_enabled=True),
        on_fatal=fatal.append,
        registry=CollectorRegistry(),
        customers=FakeDirectory(),
        key_store=InMemoryKeyStore(),
    )
    parts: composition.Parts = app.state.parts
    async with app.router.lifespan_context(app):
        tasks = list(parts.tasks.values())
        assert {task.get_name() for task in tasks} == {"outbox-backlog", "enricher"}
        await asyncio.sleep(0.1)
        assert not any(task.done() for task in tasks)
    assert all(task.done() and not task.cancelled() for task in tasks), "they stopped on the stop event"
    assert fatal == []
