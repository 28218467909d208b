"""Test helpers for the customers service: the service as a real process, and zeep clients from the contract.

Unit, contract and integration tests import them from here (``tests.integration.customers.support``); product
code never does. zeep is always built from the committed WSDL (contracts/wsdl/customers.wsdl, the file the service
serves), with the address overridden, so the tests exercise exactly what other systems read.
"""

# mypy: disable-error-code="no-untyped-call"
# (zeep has no type hints)

from __future__ import annotations

import contextlib
import functools
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import requests
import zeep
from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from starlette.types import ASGIApp
from zeep.proxy import AsyncServiceProxy
from zeep.transports import AsyncTransport, Transport

from services.customers.app import create_app
from services.customers.entrypoints.soap_codec import WSDL_PATH
from services.customers.settings import CustomersSettings

REPO = Path(__file__).resolve().parents[3]
BINDING = "{urn:gridhub:customers:v1}CustomerServiceBinding"
FAULT_ELEMENT = "{urn:gridhub:customers:v1}CustomerServiceFault"


AARHUS = {"street": "Vestergade 12", "postcode": "8000", "city": "Aarhus C", "country": "DK"}


def person(name: str = "Mette Hansen", email: str | None = "mette@example.dk") -> dict[str, Any]:
    """RegisterCustomer arguments for a person in Aarhus."""
    return {"kind": "person", "name": name, "contact": {"email": email, "address": dict(AARHUS)}}


def consumption_point(
    meterpoint_id: str, *, source: tuple[str, str] | None = ("head_end", "hes-north"), **changes: Any
) -> dict[str, Any]:
    """RegisterMeterpoint arguments for a connected 15-minute consumption point in grid area 804 (``changes`` win)."""
    arguments: dict[str, Any] = {
        "meterpointId": meterpoint_id,
        "gridArea": "804",
        "type": "consumption",
        "resolution": "PT15M",
        "settlementMethod": "flex",
        "connection": {"state": "connected", "since": "2024-06-01"},
        "dataSource": None if source is None else {"kind": source[0], "id": source[1]},
    }
    return {**arguments, **changes}


def dev_password(client: str) -> str:
    """The dev-only password of a dev client system (see ``settings.DEV_CLIENTS``)."""
    return f"{client}-dev-only-password"


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class ServiceProcess:
    """``python -m services.customers`` as a child process with the given ``CUSTOMERS_*`` variables."""

    def __init__(self, env: Mapping[str, str], log_path: Path, *, port: int | None = None) -> None:
        self.port = port or free_port()
        self.env = {**os.environ, **env, "CUSTOMERS_HTTP_PORT": str(self.port), "CUSTOMERS_HTTP_HOST": "127.0.0.1"}
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def soap_url(self) -> str:
        return f"{self.base_url}/soap/customers"

    @property
    def pid(self) -> int:
        assert self.process is not None, "not started"
        return self.process.pid

    def start(self, timeout: float = 30.0) -> ServiceProcess:
        """Start the process and wait until /readyz answers 200."""
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "services.customers"], cwd=REPO, env=self.env, stdout=log, stderr=log
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the service exited with {self.process.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.base_url}/readyz", timeout=1.0).status_code == 200:
                    return self
            time.sleep(0.05)
        self.kill()
        raise TimeoutError(f"the service was not ready within {timeout}s:\n{self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs (what a crash or an OOM kill looks like)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.process.returncode

    def peak_rss_kib(self) -> int:
        """The process's peak resident memory so far (VmHWM), in KiB."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        raise RuntimeError("no VmHWM in /proc status")

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""


def dev_clients(**extra: tuple[str, str | None]) -> dict[str, Any]:
    """``CUSTOMERS_CLIENTS`` entries: the dev clients plus ``name=(role, tenant)`` ones, each with the password of
    the dev client billing (``billing-dev-only-password``), so tests pay for no scrypt hashing of their own."""
    from services.customers.settings import DEV_CLIENTS

    clients: dict[str, Any] = {name: client.model_dump(mode="json") for name, client in DEV_CLIENTS.items()}
    billing_hash = DEV_CLIENTS["billing"].password_hash
    for name, (role, tenant) in extra.items():
        clients[name.replace("_", "-")] = {"password_hash": billing_hash, "role": role, "tenant": tenant}
    return clients


def soap_service(address: str, client: str = "billing", password: str | None = None) -> Any:
    """A synchronous zeep service proxy from the committed WSDL, calling ``address`` with HTTP Basic."""
    session = requests.Session()
    session.auth = (client, dev_password(client) if password is None else password)
    zeep_client = zeep.Client(str(WSDL_PATH), transport=Transport(session=session, operation_timeout=30))
    return zeep_client.create_service(BINDING, address)


@contextlib.asynccontextmanager
async def in_process_soap(
    app: ASGIApp, client: str = "billing", password: str | None = None, *, path: str = "/soap/customers"
) -> AsyncIterator[Any]:
    """An async zeep service proxy calling ``app`` in process (httpx ASGITransport; run the lifespan yourself)."""
    http = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        auth=(client, dev_password(client) if password is None else password),
        timeout=30,
    )
    wsdl_http = httpx.Client()  # unused: the WSDL is a local file; zeep insists on having one
    try:
        zeep_client = zeep.AsyncClient(str(WSDL_PATH), transport=AsyncTransport(client=http, wsdl_client=wsdl_http))
        # AsyncClient.create_service returns a synchronous proxy (zeep 4.3), so build the async one directly.
        binding = zeep_client.wsdl.bindings[BINDING]
        yield AsyncServiceProxy(zeep_client, binding, address=f"http://customers.test{path}")
    finally:
        await http.aclose()
        wsdl_http.close()


@functools.cache
def _contract_client() -> zeep.Client:
    return zeep.Client(str(WSDL_PATH))


def fault_detail(fault: zeep.exceptions.Fault) -> Any:
    """The typed ``CustomerServiceFault`` detail of a zeep Fault."""
    client = _contract_client()
    element = client.get_element(FAULT_ELEMENT)
    assert fault.detail is not None, "the fault has no detail"
    (node,) = list(fault.detail)
    return element.parse(node, client.wsdl.types)


@contextlib.asynccontextmanager
async def running_app(settings: CustomersSettings) -> AsyncIterator[FastAPI]:
    """The app with its lifespan running (pool, migrations, relay when enabled) and a registry of its own."""
    app = create_app(settings, registry=CollectorRegistry())
    async with app.router.lifespan_context(app):
        yield app
