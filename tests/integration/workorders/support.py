"""Helpers for the work orders integration tests: the customers service as a process, fakes, Kafka and polling."""

# mypy: disable-error-code="no-untyped-call"

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import date
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
import zeep
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from zeep.transports import Transport

from libs.events import CloudEvent, Resolution, make_event, to_record, with_check_digit
from libs.events.meterpoints import (
    Connection,
    ConnectionState,
    DataSource,
    MeterpointRegistered,
    MeterpointType,
    MeterpointUpdated,
    SettlementMethod,
    SourceKind,
)
from libs.platform.kafka import start_producer
from services.workorders.adapters.customers_soap import BINDING, WSDL_PATH
from services.workorders.domain import Address, Customer
from services.workorders.handlers import CustomersUnavailable
from stack.config import REPO


async def wait_for(condition: Callable[[], Awaitable[bool]], timeout: float, what: str, step: float = 0.05) -> None:
    """Poll ``condition`` until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(step)


def new_meterpoint() -> str:
    """A fresh GSRN-18 with a valid check digit."""
    return with_check_digit(f"5713131804{random.randrange(10**7):07d}")


def master_data(meterpoint_id: str, grid_company: str, *, version: int = 1) -> CloudEvent[Any]:
    """The customers service's event saying ``grid_company`` owns ``meterpoint_id`` (version 1 registers it)."""
    kind = MeterpointRegistered if version == 1 else MeterpointUpdated
    data = kind(
        meterpoint_id=meterpoint_id,
        grid_company=grid_company,
        grid_area="804",
        type=MeterpointType.CONSUMPTION,
        resolution=Resolution.PT15M,
        settlement_method=SettlementMethod.FLEX,
        connection=Connection(state=ConnectionState.CONNECTED, since=date(2025, 1, 1)),
        data_source=DataSource(kind=SourceKind.HEAD_END, id="hes-north"),
        version=version,
    )
    return make_event(data, source="/gridhub/customers")


def master_data_record(
    meterpoint_id: str, grid_company: str, *, version: int = 1
) -> tuple[bytes | None, bytes, list[tuple[str, bytes]]]:
    """`master_data` as the (key, value, headers) that `produce` sends."""
    record = to_record(master_data(meterpoint_id, grid_company, version=version))
    return record.key, record.value, list(record.headers)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class FakeDirectory:
    """A `CustomerDirectory` in memory: a fixed answer per meterpoint, or unavailable for all."""

    def __init__(self, customers: Mapping[str, Customer] | None = None, *, available: bool = True) -> None:
        self.customers = dict(customers or {})
        self.available = available
        self.calls = 0

    async def customer_at(self, meterpoint_id: str, on: date) -> Customer | None:
        self.calls += 1
        if not self.available:
            raise CustomersUnavailable("fake: down")
        return self.customers.get(meterpoint_id)


def customer(customer_id: str = "C-100001", name: str = "Mette Hansen") -> Customer:
    return Customer(
        customer_id, name, "mette@example.dk", "+4520123456", Address("Vestergade 12", "8000", "Aarhus C", "DK")
    )


class CountingTransport(httpx.AsyncBaseTransport):
    """The real network, counting the requests that reach it."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.requests = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


class CustomersProcess:
    """``python -m services.customers`` as a child process (the work orders service only talks SOAP to it)."""

    def __init__(self, env: Mapping[str, str], log_path: Path) -> None:
        self.port = free_port()
        self.env = {**os.environ, **env, "CUSTOMERS_HTTP_HOST": "127.0.0.1", "CUSTOMERS_HTTP_PORT": str(self.port)}
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def soap_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/soap/customers"

    async def start(self, timeout: float = 30.0) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "services.customers"], cwd=REPO, env=self.env, stdout=log, stderr=log
            )
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(timeout=1.0) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"customers exited with {self.process.returncode}:\n{self.log_tail()}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(f"http://127.0.0.1:{self.port}/readyz")).status_code == 200:
                        return
                await asyncio.sleep(0.05)
        self.stop()
        raise TimeoutError(f"customers not ready within {timeout}s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def soap(self, client: str = "billing") -> Any:
        """A synchronous zeep proxy (another client system, e.g. billing) built from the committed WSDL."""
        session = requests.Session()
        session.auth = (client, f"{client}-dev-only-password")
        soap = zeep.Client(str(WSDL_PATH), transport=Transport(session=session, operation_timeout=10))
        return soap.create_service(BINDING, self.soap_url)


async def produce(
    bootstrap: str, topic: str, records: list[tuple[bytes | None, bytes, list[tuple[str, bytes]]]]
) -> None:
    producer = await start_producer(bootstrap, "test-workorders")
    try:
        for key, value, headers in records:
            await producer.send_and_wait(topic, value, key=key, headers=headers)
    finally:
        await producer.stop()


async def read_topic(bootstrap: str, topic: str, partitions: int) -> list[ConsumerRecord[bytes, bytes]]:
    """Everything in ``topic`` now, read without a group."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        end = await consumer.end_offsets(tps)
        records: list[ConsumerRecord[bytes, bytes]] = []
        while [tp for tp in tps if await consumer.position(tp) < end[tp]]:
            for batch in (await consumer.getmany(timeout_ms=200)).values():
                records.extend(batch)
        return records
    finally:
        await consumer.stop()


class TcpProxy:
    """A TCP proxy in front of PostgreSQL whose link can be cut (connections reset, new ones refused) and restored."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.down = False
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._pipes: set[asyncio.Task[None]] = set()

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def cut(self) -> None:
        self.down = True
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    def restore(self) -> None:
        self.down = False

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for pipe in list(self._pipes):
            pipe.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        if self.down:
            client_writer.transport.abort()
            return
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        except OSError:
            client_writer.transport.abort()
            return
        self._writers.update((client_writer, upstream_writer))
        for source, sink in ((client_reader, upstream_writer), (upstream_reader, client_writer)):
            pipe = asyncio.create_task(self._pipe(source, sink))
            self._pipes.add(pipe)
            pipe.add_done_callback(self._pipes.discard)

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while chunk := await source.read(65536):
                sink.write(chunk)
                await sink.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self._writers.discard(sink)
            sink.transport.abort()
