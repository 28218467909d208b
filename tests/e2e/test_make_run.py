"""End to end: ``python -m stack.dev.run`` (what ``make run`` runs) with a small simulator, on the real stack.

The platform is started exactly as ``make run`` starts it, on free ports and with identities of its own (run
name, meterpoint ids, MQTT client id and share group, FTP folder), so it can run beside a developer's ``make run``
and the services' own tests. Through the read side's API it must show readings of a meter of every channel
(MQTT, REST, FTP) and the customer the simulator registered over SOAP.

Then the test acts as a grid's own systems on meterpoints of its own: it registers meterpoints and customers and
links them over SOAP, sends readings over MQTT, REST and FTP (one reading twice, over two channels; the registry
moves the meterpoint's one data source from door to door) and raises tamper alarms. The
read side must show each meterpoint with its customer, the exact consumption, and an open inspection order
carrying the customer's name; the second alarm is raised while the customers service is stopped (SIGSTOP: it
accepts connections but never answers, the hardest outage for a caller), and its order must still open, with the
customer pending, and be enriched once the service is back (SIGCONT). A reading for a meterpoint nobody registered
is held (``unknown_meterpoint``) and reaches the views only after the meterpoint is registered and the holds are
redriven (``gridhub holds redrive``). Finally SIGTERM must stop every process
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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import httpx
import pytest

from services.collection.settings import DeviceSettings
from stack.config import REPO, StackConfig
from stack.environment import service_environment
from tests.e2e.support import (
    CustomerCentre,
    interval_ends,
    new_meterpoint,
    post,
    publish_over_mqtt,
    reading,
    upload_over_ftp,
)

pytestmark = [pytest.mark.kafka, pytest.mark.postgres, pytest.mark.mqtt, pytest.mark.timeout(300)]

SERVICES = ("collection", "customers", "workorders", "readside")
STARTUP_SECONDS = 90  # stack + five services + provisioning + the first readings through to the read side
STOP_SECONDS = 60
FLOW_SECONDS = 60  # from an acknowledgement to the read side (or an order), with the simulator running beside
LOCAL = ZoneInfo("Europe/Copenhagen")  # the read side's and the customers service's calendar
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def tail(path: Path, chars: int = 3000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else "(no output)"


class Platform:
    """The ``stack.dev.run`` process and how to wait on it."""

    def __init__(self, process: subprocess.Popen[bytes], output: Path, run_dir: Path) -> None:
        self.process, self.output, self.run_dir = process, output, run_dir
        self.stopped: list[int] = []  # pids the test stopped with SIGSTOP
        self.devices: list[str] = []  # MQTT devices the test added

    def wait_for(self, condition: Callable[[], T | None], timeout: float, what: str) -> T:
        """Poll ``condition`` until it returns a value; fail with the runner's output on death or deadline."""
        deadline = time.monotonic() + timeout
        while True:
            result = condition()
            if result:
                return result
            if self.process.poll() is not None:
                pytest.fail(f"stack.dev.run exited with {self.process.returncode} before {what}:\n{tail(self.output)}")
            if time.monotonic() > deadline:
                pytest.fail(f"no {what} within {timeout:.0f}s; stack.dev.run said:\n{tail(self.output)}")
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


def test_make_run_from_soap_and_three_channels_to_the_read_side_then_a_clean_stop(
    stack: StackConfig, tmp_path: Path
) -> None:
    tag = secrets.token_hex(4)
    env = _environment(tmp_path, tag)
    output = tmp_path / "ops-run.log"
    with output.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "stack.dev.run"], cwd=REPO, env=env, stdout=sink, stderr=subprocess.STDOUT
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
            # An order opened before its customer could be looked up (the customers.v1 copy or the SOAP call not
            # there yet) is created `pending` and filled in by the enrichment job: wait for that, with a deadline.
            def enriched() -> dict[str, Any] | None:
                found = http.get("/v1/work-orders", params={"meterpoint_id": alarmed}).json()["items"][0]
                return found if found["customer"]["status"] == "known" else None

            order = platform.wait_for(enriched, 60.0, "the inspection order's customer")
            assert order["customer"]["customer_id"] == customer

        with own_ftp_partner(env, tag) as partner:
            grid = Grid(platform, env, credentials, partner, tag)
            try:
                grid.readings_over_every_channel_give_the_exact_consumption_and_an_enriched_order()
                grid.an_alarm_while_customers_is_stopped_opens_an_order_enriched_after_it_returns()
                grid.a_held_reading_reaches_the_views_once_its_meterpoint_is_registered_and_redriven()
            finally:
                grid.close()

        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_SECONDS)
        except subprocess.TimeoutExpired:
            pytest.fail(f"stack.dev.run did not stop within {STOP_SECONDS}s:\n{tail(output)}")
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
        resume(platform)
        if process.poll() is None:
            process.kill()  # the services get SIGTERM from the kernel (PR_SET_PDEATHSIG)
            process.wait(timeout=30)
        _forget_identities(platform)


class Grid:
    """The grid's own systems and meters, acting on meterpoints of the test's own."""

    def __init__(
        self, platform: Platform, env: dict[str, str], credentials: dict[str, Any], partner: tuple[str, str], tag: str
    ) -> None:
        self.platform, self.env, self.credentials, self.partner, self.tag = platform, env, credentials, partner, tag
        self.collection = f"http://127.0.0.1:{env['COLLECTION_HTTP_PORT']}"
        self.centre = CustomerCentre(
            f"http://127.0.0.1:{env['CUSTOMERS_HTTP_PORT']}/soap/customers",
            credentials["soap_client"],
            credentials["soap_password"],
        )
        self.move_in = datetime.now(LOCAL).date() - timedelta(days=30)
        self.readside = httpx.Client(
            base_url=f"http://127.0.0.1:{env['READSIDE_HTTP_PORT']}",
            headers={"Authorization": f"Bearer {credentials['readside_key']['key']}"},
            timeout=5.0,
        )
        self.workorders = httpx.Client(
            base_url=f"http://127.0.0.1:{env['WORKORDERS_HTTP_PORT']}",
            headers={"Authorization": f"Bearer {credentials['workorders_key']['key']}"},
            timeout=5.0,
        )

    def close(self) -> None:
        self.centre.close()
        self.readside.close()
        self.workorders.close()

    def raise_tamper(self, meterpoint_id: str) -> None:
        """A tamper alarm from the head-end, sent again (same alarm, same id) until the collection's scope view
        has the meterpoint as the head-end's: the registry's change reaches it over Kafka a moment later."""
        alarm = {
            "meterpoint_id": meterpoint_id,
            "alarm": "tamper",
            "raised_at": f"{datetime.now(UTC):%Y-%m-%dT%H:%M:%SZ}",
        }
        key = self.credentials["collection_key"]["key"]
        self.platform.wait_for(
            lambda: post(self.collection, key, "/v1/meter-events", [alarm])["accepted"] == 1,
            FLOW_SECONDS,
            f"the tamper alarm of {meterpoint_id} accepted by the collection",
        )

    @property
    def head_end(self) -> tuple[str, str]:
        """The run's head-end as a data source: its API key's client."""
        return "head_end", str(self.credentials["collection_key"]["client"])

    def resend_until(self, send: Callable[[], object], arrived: Callable[[], bool], what: str) -> None:
        """``send`` again every few seconds (a meter or partner resending: ids are deterministic, so a resend is
        the same reading) until ``arrived``; the scope view learns a new assignment over Kafka, not at once."""
        deadline = time.monotonic() + FLOW_SECONDS
        while True:
            send()
            until = min(deadline, time.monotonic() + 5.0)
            while time.monotonic() < until:
                if arrived():
                    return
                time.sleep(0.25)
            if time.monotonic() >= deadline:
                pytest.fail(f"no {what} within {FLOW_SECONDS}s; stack.dev.run said:\n{tail(self.platform.output)}")

    def order(self, meterpoint_id: str) -> dict[str, Any] | None:
        items: list[dict[str, Any]] = self.workorders.get(
            "/v1/work-orders", params={"meterpoint_id": meterpoint_id}
        ).json()["items"]
        return items[0] if items else None

    def readings_over_every_channel_give_the_exact_consumption_and_an_enriched_order(self) -> None:
        meterpoint = new_meterpoint()
        name = f"Karen Blixen {self.tag}"
        password = add_device(meterpoint)
        self.platform.devices.append(meterpoint)
        # One source delivers a meterpoint at a time; the registry moves it from the meter itself (MQTT) to the
        # partner (FTP) to the head-end (REST), and each door's readings are in scope in their turn.
        customer = self.centre.register_and_link(name, meterpoint, self.move_in, source=("device", meterpoint))

        # Yesterday 10:00-11:00 UTC: four quarter hours, each sent over one channel; the first also over REST.
        yesterday = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=1)
        hour = yesterday + timedelta(hours=10)
        values = [Decimal("0.125"), Decimal("0.250"), Decimal("0.375"), Decimal("0.500")]
        ends = interval_ends(hour + timedelta(minutes=15), 4)
        readings = [reading(meterpoint, end, value) for end, value in zip(ends, values, strict=True)]

        def readings_in_the_hour() -> int:
            shown = self.consumption(meterpoint, hour, hour + timedelta(hours=1), "hour")
            return sum(point["readings"] for point in shown["points"]) if shown else 0

        self.resend_until(
            lambda: publish_over_mqtt(meterpoint, password, StackConfig().mqtt_port, readings[:2]),
            lambda: readings_in_the_hour() == 2,
            "MQTT readings on the read side",
        )
        login, secret = self.partner
        self.centre.assign(meterpoint, self.move_in, ("ftp_partner", login))
        receipts: list[Any] = []

        def upload() -> None:
            port = int(self.env["COLLECTION_FTP__PORT"])
            name = f"{meterpoint}-{len(receipts)}.csv"  # each try a file of its own
            receipts.append(asyncio.run(upload_over_ftp(port, login, secret, name, readings[3:])))

        self.resend_until(upload, lambda: receipts[-1]["accepted"] == 1, "the FTP reading accepted")
        assert receipts[-1]["rejected"] == 0, receipts[-1]
        self.centre.assign(meterpoint, self.move_in, self.head_end)
        key = self.credentials["collection_key"]["key"]
        answers: list[dict[str, Any]] = []
        self.resend_until(
            lambda: answers.append(post(self.collection, key, "/v1/readings", [readings[2], readings[0]])),
            lambda: answers[-1]["accepted"] == 2,
            "the REST readings accepted",
        )
        self.raise_tamper(meterpoint)

        expected = sum(values)  # 1.250 kWh: the reading sent twice counts once
        hourly = self.platform.wait_for(
            lambda: (
                (c := self.consumption(meterpoint, hour, hour + timedelta(hours=1), "hour"))
                and Decimal(c["total"]) == expected
                and c
            ),
            FLOW_SECONDS,
            f"{expected} kWh in the hour on the read side",
        )
        assert [(p["start"], Decimal(p["energy"]), p["readings"]) for p in hourly["points"]] == [
            (f"{hour:%Y-%m-%dT%H:%M:%SZ}", expected, 4)
        ]
        day = hour.astimezone(LOCAL).date()
        daily = self.consumption(meterpoint, day, day + timedelta(days=1), "day")
        assert daily is not None
        assert Decimal(daily["total"]) == expected

        overview = self.platform.wait_for(
            lambda: (o := self.overview(meterpoint)) and o["open_work_orders"] and named(o) and o,
            FLOW_SECONDS,
            "the inspection order of the test's tamper alarm on the read side",
        )
        assert overview["customer"]["customer_id"] == customer
        assert overview["customer"]["name"] == name
        [inspection] = overview["open_work_orders"]
        assert (inspection["type"], inspection["customer_id"], inspection["customer_name"]) == (
            "inspect_meter",
            customer,
            name,
        )
        order = self.platform.wait_for(
            lambda: (o := self.order(meterpoint)) and o["customer"]["status"] == "known" and o,
            FLOW_SECONDS,
            "the order enriched over SOAP",
        )
        assert order["customer"]["name"] == name

    def an_alarm_while_customers_is_stopped_opens_an_order_enriched_after_it_returns(self) -> None:
        meterpoint = new_meterpoint()
        name = f"Niels Bohr {self.tag}"
        customer = self.centre.register_and_link(name, meterpoint, self.move_in, source=self.head_end)
        # The registry publishes the meterpoint through its outbox: once the read side knows it, it is on Kafka and
        # reaches the collection's scope view even though the customers service is stopped next.
        self.platform.wait_for(
            lambda: self.readside.get(f"/v1/meterpoints/{meterpoint}").status_code == 200,
            FLOW_SECONDS,
            f"the read side knowing {meterpoint} from the registry",
        )
        pid = self.platform.json("run.json")["customers"]["pid"]
        os.kill(pid, signal.SIGSTOP)
        self.platform.stopped.append(pid)
        self.raise_tamper(meterpoint)
        pending = self.platform.wait_for(
            lambda: self.order(meterpoint), FLOW_SECONDS, "an inspection order while customers is stopped"
        )
        assert pending["type"] == "inspect_meter"
        assert pending["customer"]["status"] == "pending", pending

        resume(self.platform)
        order = self.platform.wait_for(
            lambda: (o := self.order(meterpoint)) and o["customer"]["status"] == "known" and o,
            FLOW_SECONDS,
            "the order enriched after customers returned",
        )
        assert (order["work_order_id"], order["customer"]["customer_id"]) == (pending["work_order_id"], customer)
        assert order["customer"]["name"] == name
        # The customer's link may reach the read side after the order: customers' outbox relay was stopped too.
        inspection = self.platform.wait_for(
            lambda: (o := self.overview(meterpoint)) and named(o) and o["open_work_orders"],
            FLOW_SECONDS,
            "the order and the customer on the read side",
        )
        assert [(i["work_order_id"], i["customer_name"]) for i in inspection] == [(order["work_order_id"], name)]

    def a_held_reading_reaches_the_views_once_its_meterpoint_is_registered_and_redriven(self) -> None:
        meterpoint = new_meterpoint()
        end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(days=1, hours=3)
        held = reading(meterpoint, end, Decimal("0.750"))
        key = self.credentials["collection_key"]["key"]
        answer = post(self.collection, key, "/v1/readings", [held])
        assert (answer["accepted"], answer["results"][0]["status"]) == (0, "held"), answer
        assert answer["results"][0]["reason"] == "unknown_meterpoint", answer

        self.centre.register_and_link(f"Inge Lehmann {self.tag}", meterpoint, self.move_in, source=self.head_end)
        self.platform.wait_for(
            lambda: self.readside.get(f"/v1/meterpoints/{meterpoint}").status_code == 200,
            FLOW_SECONDS,
            f"the read side knowing {meterpoint} from the registry",
        )
        before = self.consumption(meterpoint, end - timedelta(hours=1), end, "hour")
        assert before is None or Decimal(before["total"]) == 0, "a held reading is not in the views before its redrive"
        env = service_environment(StackConfig(), self.env)
        tool = [sys.executable, "-m", "services.collection.commands.holds", "redrive", f"--group=e2e-{self.tag}"]
        redrive = subprocess.run(tool, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
        assert redrive.returncode == 0, redrive.stdout + redrive.stderr
        shown = self.platform.wait_for(
            lambda: (
                (c := self.consumption(meterpoint, end - timedelta(hours=1), end, "hour"))
                and Decimal(c["total"]) == Decimal("0.750")
                and c
            ),
            FLOW_SECONDS,
            "the redriven reading on the read side",
        )
        assert sum(point["readings"] for point in shown["points"]) == 1

    def consumption(self, meterpoint_id: str, start: Any, end: Any, resolution: str) -> dict[str, Any] | None:
        params = {"from": start.isoformat(), "to": end.isoformat(), "resolution": resolution}
        answer = self.readside.get(f"/v1/meterpoints/{meterpoint_id}/consumption", params=params)
        body: dict[str, Any] | None = answer.json() if answer.status_code == 200 else None
        return body

    def overview(self, meterpoint_id: str) -> dict[str, Any] | None:
        answer = self.readside.get(f"/v1/meterpoints/{meterpoint_id}")
        body: dict[str, Any] | None = answer.json() if answer.status_code == 200 else None
        return body


def named(overview: dict[str, Any]) -> bool:
    """The read side has the meterpoint's customer with their name (link and record may arrive in either order)."""
    return bool(overview["customer"] and overview["customer"]["name"])


def add_device(meterpoint_id: str) -> str:
    from services.collection.commands.devices import add_device as add

    return add(meterpoint_id, settings=_stack_devices())


def _stack_devices() -> DeviceSettings:
    """Where this stack's broker keeps device credentials, as stack.dev.run gave it to the services."""
    env = service_environment(StackConfig(), {})
    return DeviceSettings(
        password_file=Path(env["COLLECTION_DEVICES__PASSWORD_FILE"]),
        broker_pid_file=Path(env["COLLECTION_DEVICES__BROKER_PID_FILE"]),
    )


@contextmanager
def own_ftp_partner(env: dict[str, str], tag: str) -> Iterator[tuple[str, str]]:
    """An FTP partner of the test's own (the simulator's partner collects and deletes its receipts)."""
    login, password = f"e2e-{tag}", secrets.token_urlsafe(18)
    tool = [sys.executable, "-m", "services.collection.commands.ftpusers"]
    env = service_environment(StackConfig(), env)  # the collection database of this stack, as stack.dev.run gave it
    argv = [*tool, "add", login, f"--password={password}", "--tenant=5790000000012"]  # grid company A
    added = subprocess.run(argv, env=env, capture_output=True, timeout=60)
    assert added.returncode == 0, added.stdout + added.stderr
    try:
        yield login, password
    finally:
        subprocess.run([*tool, "disable", login], env=env, capture_output=True, timeout=60, check=False)


def resume(platform: Platform) -> None:
    """SIGCONT every process the test stopped."""
    while platform.stopped:
        pid = platform.stopped.pop()
        if _alive(pid):
            os.kill(pid, signal.SIGCONT)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _forget_identities(platform: Platform) -> None:
    """Remove the run's devices, disable its FTP partner and revoke its keys: nothing of it stays usable."""
    from services.collection.commands.devices import remove_device

    devices = _stack_devices()
    for meterpoint in platform.devices:
        remove_device(meterpoint, settings=devices)
    credentials = platform.json("credentials.json")
    if not credentials:
        return
    for meterpoint in credentials["devices"]:
        remove_device(meterpoint, settings=devices)
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
