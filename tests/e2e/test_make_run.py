"""End to end: ``python -m ops.run`` (what ``make run`` runs) with a small simulator, on the real stack.

The platform is started exactly as ``make run`` starts it, on free ports and with identities of its own (run
name, meterpoint ids, MQTT client id and share group, FTP folder), so it can run beside a developer's ``make run``
and the services' own tests. Through the read side's API it must show readings of a meter of every channel
(MQTT, REST, FTP) and the customer the simulator registered over SOAP; then SIGTERM must stop every process
gracefully within the deadline.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from stack.config import REPO, StackConfig

pytestmark = [pytest.mark.kafka, pytest.mark.postgres, pytest.mark.mqtt, pytest.mark.timeout(240)]

SERVICES = ("collection", "customers", "workorders", "readside")
STARTUP_SECONDS = 90  # stack + four services + provisioning + the first readings through to the read side
STOP_SECONDS = 60
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def tail(path: Path, chars: int = 3000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else "(no output)"


class Platform:
    """The ``ops.run`` process and how to wait on it."""

    def __init__(self, process: subprocess.Popen[bytes], output: Path, run_dir: Path) -> None:
        self.process, self.output, self.run_dir = process, output, run_dir

    def wait_for(self, condition: Callable[[], T | None], timeout: float, what: str) -> T:
        """Poll ``condition`` until it returns a value; fail with the runner's output on death or deadline."""
        deadline = time.monotonic() + timeout
        while True:
            result = condition()
            if result:
                return result
            if self.process.poll() is not None:
                pytest.fail(f"ops.run exited with {self.process.returncode} before {what}:\n{tail(self.output)}")
            if time.monotonic() > deadline:
                pytest.fail(f"no {what} within {timeout:.0f}s; ops.run said:\n{tail(self.output)}")
            time.sleep(0.25)

    def json(self, name: str) -> Any:
        path = self.run_dir / name
        return json.loads(path.read_text()) if path.exists() else None


def _environment(tmp_path: Path, tag: str) -> dict[str, str]:
    ports = {f"{name.upper()}_HTTP_PORT": str(free_port()) for name in SERVICES}
    return {
        **os.environ,
        **ports,
        "GRIDHUB_RUN_DIR": str(tmp_path / "run"),
        "GRIDHUB_RUN_NAME": f"e2e-{tag}",
        "GRIDHUB_RUN_READY_TIMEOUT": "60",
        "COLLECTION_FTP__PORT": str(free_port()),
        "COLLECTION_FTP__PASSIVE_PORT_FIRST": "0",
        "COLLECTION_FTP__PASSIVE_PORT_LAST": "0",
        "COLLECTION_FTP__ROOT": str(tmp_path / "ftp"),
        # A session of our own that ends with the process: nothing is queued for it after the test.
        "COLLECTION_MQTT__CLIENT_ID": f"e2e-{tag}",
        "COLLECTION_MQTT__SHARE_GROUP": f"e2e-{tag}",
        "COLLECTION_MQTT__SESSION_EXPIRY_SECONDS": "0",
        "GRIDHUB_SIM_METERS": "2",
        "GRIDHUB_SIM_HEAD_END_METERS": "1",
        "GRIDHUB_SIM_FTP_METERS": "1",
        "GRIDHUB_SIM_ID_BASE": "5713139" + "".join(secrets.choice("0123456789") for _ in range(6)),
        "GRIDHUB_SIM_HISTORY_HOURS": "1",
        "GRIDHUB_SIM_TICK_SECONDS": "0.5",
        "GRIDHUB_SIM_FTP_EVERY_TICKS": "2",
        "GRIDHUB_SIM_ALARMS": "1",
        "GRIDHUB_SIM_ALARM_EVERY_TICKS": "1",
    }


def test_make_run_shows_every_channel_and_customers_then_stops_cleanly(stack: StackConfig, tmp_path: Path) -> None:
    tag = secrets.token_hex(4)
    env = _environment(tmp_path, tag)
    output = tmp_path / "ops-run.log"
    with output.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "ops.run"], cwd=REPO, env=env, stdout=sink, stderr=subprocess.STDOUT
        )
    platform = Platform(process, output, tmp_path / "run")
    started = time.monotonic()
    try:
        state = platform.wait_for(
            lambda: (s := platform.json("simulator.json")) and len(s["customers"]) == 4 and s,
            STARTUP_SECONDS,
            "customers registered over SOAP by the simulator",
        )
        credentials = platform.json("credentials.json")
        readside = f"http://127.0.0.1:{env['READSIDE_HTTP_PORT']}"
        headers = {"Authorization": f"Bearer {credentials['readside_key']['key']}"}
        with httpx.Client(base_url=readside, headers=headers, timeout=5.0) as http:

            def overview(meterpoint: str) -> dict[str, Any] | None:
                answer = http.get(f"/v1/meterpoints/{meterpoint}")
                body: dict[str, Any] | None = answer.json() if answer.status_code == 200 else None
                ready = body is not None and body["latest_readings"] and body["customer"]
                return body if ready else None

            remaining = STARTUP_SECONDS - (time.monotonic() - started)
            for channel in ("mqtt", "rest", "ftp"):
                meterpoint = state["meterpoints"][channel][0]
                shown = platform.wait_for(
                    lambda m=meterpoint: overview(m), remaining, f"readings and the customer of {channel} {meterpoint}"
                )
                assert shown["latest_readings"][0]["unit"] == "kWh"
                assert shown["customer"]["customer_id"] == state["customers"][meterpoint]
            alarmed = state["meterpoints"]["mqtt"][0]  # the simulator's first alarm is a tamper on its first meter
            customer = state["customers"][alarmed]
            answer = http.get(f"/v1/customers/{customer}/overview")
            assert answer.status_code == 200, answer.text
            assert answer.json()["meterpoints"][0]["meterpoint_id"] == alarmed
            inspection = platform.wait_for(
                lambda: http.get(f"/v1/meterpoints/{alarmed}").json()["open_work_orders"],
                STARTUP_SECONDS - (time.monotonic() - started),
                "the inspection order of the tamper alarm on the read side",
            )
            assert inspection[0]["type"] == "inspect_meter"

        workorders = f"http://127.0.0.1:{env['WORKORDERS_HTTP_PORT']}"
        planner = {"Authorization": f"Bearer {credentials['workorders_key']['key']}"}
        with httpx.Client(base_url=workorders, headers=planner, timeout=5.0) as http:
            order = http.get("/v1/work-orders", params={"meterpoint_id": alarmed}).json()["items"][0]
            assert order["customer"]["status"] == "known", order
            assert order["customer"]["customer_id"] == customer

        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_SECONDS)
        except subprocess.TimeoutExpired:
            pytest.fail(f"ops.run did not stop within {STOP_SECONDS}s:\n{tail(output)}")
        assert process.returncode == 0, tail(output)
        ended = platform.json("run.json")
        for name in SERVICES:
            child = ended[name]
            # uvicorn re-raises the SIGTERM after its graceful shutdown, so -15 is a clean stop too (not a kill).
            assert child["returncode"] in (0, -signal.SIGTERM), (name, child, tail(Path(child["log"])))
            assert not child["killed"], (name, tail(Path(child["log"])))
            assert "Application shutdown complete" in Path(child["log"]).read_text(), (name, "no graceful shutdown")
            assert not _alive(child["pid"]), name
        assert ended["simulator"]["returncode"] == 0, tail(platform.run_dir / "simulator.log")
        assert "still up; `make stack-down`" in output.read_text()
    finally:
        if process.poll() is None:
            process.kill()  # the services get SIGTERM from the kernel (PR_SET_PDEATHSIG)
            process.wait(timeout=30)
        _forget_identities(platform)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _forget_identities(platform: Platform) -> None:
    """Remove the run's devices, disable its FTP partner and revoke its keys: nothing of it stays usable."""
    credentials = platform.json("credentials.json")
    if not credentials:
        return
    from services.collection.devices import remove_device

    for meterpoint in credentials["devices"]:
        remove_device(meterpoint)
    asyncio.run(_revoke(credentials))


async def _revoke(credentials: dict[str, Any]) -> None:
    from libs.platform.apikeys import parse_key_id
    from libs.platform.apikeys_store import PostgresKeyStore
    from libs.platform.db import create_pool
    from services.collection.adapters.ftpusers import PostgresFtpUserStore

    config = StackConfig()
    places = {"collection_key": ("collection", None), "workorders_key": ("workorders", None)}
    places["readside_key"] = ("readside", "readside")
    for field, (database, schema) in places.items():
        key_id = parse_key_id(credentials[field]["key"]) if credentials.get(field) else None
        pool = await create_pool(config.postgres_dsn(database), schema=schema, max_size=1)
        try:
            if key_id is not None:
                await PostgresKeyStore(pool).revoke(key_id)
            if database == "collection":
                await PostgresFtpUserStore(pool).disable(credentials["ftp_login"])
        finally:
            await pool.close()
