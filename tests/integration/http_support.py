"""Serving an app in the test's own event loop over real sockets, the way ``python -m services.<name>`` does.

`served(app, settings)` runs uvicorn with `libs.platform.serve.server_config` on `listen_sockets(settings)` (the
main port and, when set, the internal one), so the header timeout, the proxy headers and the internal-port gate
are the production ones; `SlowClient` is a raw socket that sends a request a byte at a time. `service_process`
runs ``python -m services.<name>`` itself, for clients that block (Schemathesis).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from libs.platform.serve import listen_sockets, server_config
from libs.platform.settings import ServiceSettings
from stack.config import REPO


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextlib.asynccontextmanager
async def served(app: Any, settings: ServiceSettings, *, timeout: float = 30.0) -> AsyncIterator[str]:
    """Run ``app`` (its lifespan included) on ``settings``' ports until the block ends; yields the base URL."""
    sockets = listen_sockets(settings)
    try:
        async with running(uvicorn.Server(server_config(app, settings)), sockets=sockets, timeout=timeout):
            yield f"http://{settings.http_host}:{settings.http_port}"
    finally:
        for sock in sockets:
            sock.close()


@contextlib.asynccontextmanager
async def running(
    server: uvicorn.Server, *, sockets: list[socket.socket] | None = None, timeout: float = 30.0
) -> AsyncIterator[None]:
    """``server`` serving (on ``sockets``, else its configured port) from when it started until the block ends."""
    task = asyncio.create_task(server.serve(sockets=sockets))
    try:
        deadline = time.monotonic() + timeout
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("the server stopped before it started")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the server did not start within {timeout} s")
            await asyncio.sleep(0.01)
        yield
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 20.0)


class SlowClient:
    """One connection sending a request's head at once and then its body one byte per ``interval`` seconds."""

    def __init__(self, host: str, port: int, head: bytes, body_length: int, *, interval: float = 1.0) -> None:
        self.host, self.port, self.head, self.body_length, self.interval = host, port, head, body_length, interval
        self.status: int | None = None
        self.closed_by_server = False
        self.answer = b""
        self.bytes_sent = 0

    async def run(self, deadline: float) -> None:
        """Trickle until the server answers and closes, all bytes are sent, or ``deadline`` (monotonic) passes."""
        reader, writer = await asyncio.open_connection(self.host, self.port)
        try:
            writer.write(self.head)
            await writer.drain()
            reading = asyncio.create_task(self._read_until_closed(reader))
            while not reading.done() and self.bytes_sent < self.body_length and time.monotonic() < deadline:
                with contextlib.suppress(ConnectionError):
                    writer.write(b"0")
                    await writer.drain()
                    self.bytes_sent += 1
                await asyncio.wait({reading}, timeout=self.interval)
            await asyncio.wait({reading}, timeout=max(0.0, deadline - time.monotonic()))
            reading.cancel()
            if self.answer.startswith(b"HTTP/1.1 "):
                self.status = int(self.answer[9:12])
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _read_until_closed(self, reader: asyncio.StreamReader) -> None:
        try:
            while chunk := await reader.read(65536):
                self.answer += chunk
        except ConnectionError:
            pass
        self.closed_by_server = True


@contextlib.asynccontextmanager
async def service_process(
    service: str, env: Mapping[str, str], port: int, log: Path, *, timeout: float = 30.0
) -> AsyncIterator[str]:
    """``python -m services.<service>`` with ``env`` until the block ends; yields its base URL once it is ready.

    On the way out the process is stopped (SIGTERM, then SIGKILL after 15 s) and its log must hold no traceback.
    """
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", f"services.{service}"], cwd=REPO, env={**os.environ, **env}, stdout=out, stderr=out
        )
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(timeout=1.0) as client:
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"{service} exited with {process.returncode}:\n{log.read_text()[-3000:]}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(f"{base_url}/readyz")).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{service} was not ready within {timeout} s:\n{log.read_text()[-3000:]}")
                await asyncio.sleep(0.05)
        yield base_url
    finally:
        process.terminate()
        try:
            await asyncio.to_thread(process.wait, 15)
        except subprocess.TimeoutExpired:
            process.kill()
            await asyncio.to_thread(process.wait)
    log_text = log.read_text(errors="replace")
    assert "Traceback" not in log_text, log_text[-4000:]
