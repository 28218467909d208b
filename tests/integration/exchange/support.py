"""The datahub stand-in served in the test's own event loop over a real socket, with a clock the test moves."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import uvicorn

from stack.dev.datahub import DatahubStandIn, create_app
from tests.integration.http_support import free_port, running


@dataclass
class ManualClock:
    """Monotonic seconds that only move when the test says so (token expiry, the quota's refill)."""

    now: float = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@contextlib.asynccontextmanager
async def serving(standin: DatahubStandIn, *, timeout: float = 20.0) -> AsyncIterator[str]:
    """Serve the stand-in on 127.0.0.1 until the block ends; yields its base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(standin), host="127.0.0.1", port=port, log_level="warning"))
    async with running(server, timeout=timeout):
        yield f"http://127.0.0.1:{port}"


async def token(client: httpx.AsyncClient, client_id: str, secret: str) -> str:
    """A bearer token over client credentials (form fields)."""
    answer = await client.post(
        "/oauth2/token", data={"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret}
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["token_type"] == "Bearer"
    access: str = answer.json()["access_token"]
    return access
