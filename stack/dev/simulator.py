"""``python -m stack.dev.simulator``: meters, a head-end system and a partner feeding GridHub, at a modest, steady rate.

- **Meters over MQTT**: each logs in with its meterpoint id and its own password and publishes its 15-minute
  readings to ``gridhub/meters/<gsrn>/readings`` (contracts/asyncapi/collection.yaml).
- **A head-end system over REST**: posts its meters' readings in batches to ``POST /v1/readings`` with its API key
  (contracts/openapi/collection.json).
- **A partner over FTP**: uploads its meters' readings as CSV files into ``/inbox`` and collects the receipts
  (contracts/files/readings-csv.md; switch off with ``--no-ftp``).
- **A few alarms** (a tamper first, which opens an inspection order), over MQTT or REST.
- **Meterpoints over SOAP, first**: each meterpoint in the registry of the login's grid company, assigned to the
  source that delivers it (MQTT meters: the device, i.e. its own GSRN; the head-end's: its API key's client name;
  the partner's: its FTP login), so collection's scope check lets the readings in. Readings start after this.
- **Customers over SOAP**: one customer per meterpoint, registered and linked unless the meterpoint has one already.

- **Re-reads (gap fill)**: the meters subscribe to ``gridhub/meters/<gsrn>/commands`` and publish a requested range
  again; the head-end polls ``GET /v1/reread-requests``, resends each range and acknowledges it; the partner picks up
  ``/outbox/reread-*.json`` and uploads the range with its next file. A meter's history is its value function from
  its first interval on (the same readings, the same ids), so whatever a broker lost is sent again.

Time: readings start ``history_hours`` back (aligned to 15 minutes); every tick delivers the next interval of every
meter until the clock is reached, then one interval per 15 minutes, as real meters do. Values are deterministic per
meterpoint and interval, so a restarted simulator resends the same readings (the same events, by their ids).
Meterpoint ids are ``id_base`` + a serial + the GS1 check digit, stable between runs.

Settings: ``GRIDHUB_SIM_*`` variables or the options below; credentials come from the file ``make run`` writes.
SIGTERM or Ctrl-C stops it after the current tick.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import logging
import math
import os
import signal
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson
from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from libs.events.gsrn import with_check_digit
from stack.config import StackConfig
from stack.dev.channels import Alarm, HeadEnd, MqttMeter, Partner, Reading, Registrar, Reread, parse_reread
from stack.dev.provision import Credentials

logger = logging.getLogger("stack.dev.simulator")

__all__ = ["Simulation", "SimulatorSettings", "history", "parse_reread", "reading", "reading_value", "simulate"]

INTERVAL = timedelta(minutes=15)
LOCAL = ZoneInfo("Europe/Copenhagen")
ALARMS = ("tamper", "power_failure", "power_restored", "clock_error", "voltage_sag")


def run_dir() -> Path:
    """Where ``make run`` keeps logs, credentials and state: ``GRIDHUB_RUN_DIR``, else ``<stack dir>/run``."""
    configured = os.environ.get("GRIDHUB_RUN_DIR")
    return Path(configured).absolute() if configured else StackConfig().root.absolute() / "run"


class SimulatorSettings(BaseSettings):
    """How many meters of each kind, how fast, and where GridHub listens (``GRIDHUB_SIM_*``)."""

    model_config = SettingsConfigDict(env_prefix="GRIDHUB_SIM_", frozen=True)

    meters: int = Field(default=6, ge=0, le=10_000, description="meters publishing over MQTT")
    head_end_meters: int = Field(default=4, ge=0, le=100_000, description="meters read by the head-end (REST)")
    ftp_meters: int = Field(default=2, ge=0, le=100_000, description="meters delivered by the partner (FTP)")
    ftp: bool = True
    id_base: str = Field(default="57131318000", description="first digits of every simulated meterpoint id")
    history_hours: float = Field(default=24.0, ge=0, le=24 * 7)
    tick_seconds: float = Field(default=1.0, gt=0, le=3600)
    ftp_every_ticks: int = Field(default=30, ge=1)
    alarms: int = Field(default=3, ge=0, le=1000, description="alarms raised in total")
    alarm_every_ticks: int = Field(default=20, ge=1)
    reread_poll_ticks: int = Field(default=10, ge=1, description="ticks between the head-end's re-read polls")
    customers: bool = True
    max_ticks: int | None = Field(default=None, ge=1)

    collection_url: str = "http://127.0.0.1:8001"
    customers_url: str = "http://127.0.0.1:8082/soap/customers"
    mqtt_host: str = "127.0.0.1"
    mqtt_port: int = 1883
    mqtt_topic_prefix: str = "gridhub/meters"
    ftp_host: str = "127.0.0.1"
    ftp_port: int = 2121
    credentials: Path = Field(default_factory=lambda: run_dir() / "credentials.json")
    state: Path = Field(default_factory=lambda: run_dir() / "simulator.json")

    @field_validator("id_base")
    @classmethod
    def _check_base(cls, value: str) -> str:
        if not (value.isascii() and value.isdigit() and 1 <= len(value) <= 13):
            raise ValueError("id_base: 1-13 digits (the rest of the 17 is the serial)")
        return value

    def plan(self) -> MeterPlan:
        """The meterpoint ids per channel, numbered across channels so none is shared."""
        width = 17 - len(self.id_base)
        counts = (self.meters, self.head_end_meters, self.ftp_meters if self.ftp else 0)
        if sum(counts) > 10**width:
            raise ValueError(f"id_base {self.id_base!r} leaves room for {10**width} meterpoints only")
        ids = [with_check_digit(f"{self.id_base}{serial:0{width}d}") for serial in range(sum(counts))]
        return MeterPlan(
            mqtt=ids[: counts[0]], rest=ids[counts[0] : counts[0] + counts[1]], ftp=ids[counts[0] + counts[1] :]
        )


@dataclass(frozen=True)
class MeterPlan:
    """Which meterpoints each channel delivers."""

    mqtt: list[str]
    rest: list[str]
    ftp: list[str]

    @property
    def all(self) -> list[str]:
        """Every simulated meterpoint."""
        return [*self.mqtt, *self.rest, *self.ftp]


def _unit_interval(*parts: str) -> float:
    """A deterministic number in [0, 1) from ``parts``."""
    digest = hashlib.blake2b("|".join(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def reading_value(meterpoint_id: str, interval_end: datetime) -> float:
    """kWh in the quarter hour ending at ``interval_end``: a household's day curve, per-meter scale, some noise."""
    start = (interval_end - INTERVAL).astimezone(LOCAL)
    hour = start.hour + start.minute / 60
    curve = 0.04 + 0.10 * math.exp(-(((hour - 7.5) / 1.5) ** 2)) + 0.22 * math.exp(-(((hour - 18.5) / 2.0) ** 2))
    scale = 0.6 + _unit_interval(meterpoint_id)
    noise = 0.8 + 0.4 * _unit_interval(meterpoint_id, interval_end.isoformat())
    return round(curve * scale * noise, 3)


def reading(meterpoint_id: str, interval_end: datetime) -> Reading:
    """One 15-minute active-import reading as every channel's contract spells it."""
    return {
        "meterpoint_id": meterpoint_id,
        "register": "active_import",
        "interval_end": interval_end.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "resolution": "PT15M",
        "value": reading_value(meterpoint_id, interval_end),
        "unit": "kWh",
        "quality": "measured",
    }


def history(
    meterpoint_id: str, start: datetime, end: datetime, *, first_end: datetime, last_end: datetime
) -> list[Reading]:
    """The readings a meter holds with ``interval_end`` in (``start``, ``end``], within what it has produced: from its
    first interval end to its latest one (values are a function of meterpoint and interval, so this is its history).
    """
    step = INTERVAL
    begin = max(start + step, first_end)
    # Interval ends on the 15-minute grid only (a range from another resolution is rounded inwards).
    offset = (begin - first_end) % step
    if offset:
        begin += step - offset
    stop = min(end, last_end)
    readings: list[Reading] = []
    current = begin
    while current <= stop:
        readings.append(reading(meterpoint_id, current))
        current += step
    return readings


def first_interval_end(now: datetime, history: timedelta) -> datetime:
    """The first interval end to send: ``history`` before ``now``, on a 15-minute boundary (UTC)."""
    start = now.astimezone(UTC) - history
    return start.replace(second=0, microsecond=0) - timedelta(minutes=start.minute % 15)


@dataclass
class Simulation:
    """One run: the senders, the simulated clock and what has been sent (written to the state file)."""

    settings: SimulatorSettings
    credentials: Credentials
    plan: MeterPlan
    meters: list[MqttMeter] = field(default_factory=list)
    head_end: HeadEnd | None = None
    partner: Partner | None = None
    customers: dict[str, str] = field(default_factory=dict)
    alarms: list[dict[str, str]] = field(default_factory=list)
    next_end: datetime = field(default_factory=lambda: datetime.now(UTC))
    first_end: datetime = field(default_factory=lambda: datetime.now(UTC))
    tick: int = 0
    stopping: threading.Event = field(default_factory=threading.Event)
    registered: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        """Connect the meters, open the head-end's client and set the clock back by the history."""
        settings, credentials = self.settings, self.credentials
        for meterpoint in self.plan.mqtt:
            password = credentials.devices.get(meterpoint)
            if password is None:
                raise SystemExit(f"no MQTT password for meter {meterpoint} in {settings.credentials}")
            meter = MqttMeter(meterpoint, password, settings.mqtt_host, settings.mqtt_port, settings.mqtt_topic_prefix)
            meter.start()
            self.meters.append(meter)
        if self.plan.rest:
            if credentials.collection_key is None:
                raise SystemExit(f"no collection API key in {settings.credentials}")
            self.head_end = HeadEnd(settings.collection_url, credentials.collection_key.key)
        if self.plan.ftp:
            self.partner = Partner(
                settings.ftp_host,
                settings.ftp_port,
                credentials.ftp_login,
                credentials.ftp_password,
                on_rereads=self.partner_rereads,
            )
        self.next_end = first_interval_end(datetime.now(UTC), timedelta(hours=settings.history_hours))
        self.first_end = self.next_end

    def answer_rereads(self) -> int:
        """Meters publish the ranges they were asked for (their history up to the latest interval); the count."""
        answered = 0
        last_end = self.next_end - INTERVAL
        for meter in self.meters:
            for command in meter.take_rereads():
                if command.meterpoint_id != meter.meterpoint_id or command.register != "active_import":
                    continue
                meter.resend(
                    history(
                        meter.meterpoint_id, command.start, command.end, first_end=self.first_end, last_end=last_end
                    )
                )
                answered += 1
        return answered

    async def answer_head_end_rereads(self) -> None:
        """The head-end's open requests: resend each range, then acknowledge it."""
        if self.head_end is None:
            return
        last_end = self.next_end - INTERVAL
        known = set(self.plan.rest)

        def readings_of(command: Reread) -> list[Reading]:
            if command.meterpoint_id not in known or command.register != "active_import":
                return []
            return history(
                command.meterpoint_id, command.start, command.end, first_end=self.first_end, last_end=last_end
            )

        await self.head_end.answer_rereads(readings_of)

    def partner_rereads(self, commands: list[Reread]) -> list[Reading]:
        """What the partner resends for the requests it found in its outbox."""
        known, last_end = set(self.plan.ftp), self.next_end - INTERVAL
        readings: list[Reading] = []
        for command in commands:
            if command.meterpoint_id in known and command.register == "active_import":
                readings += history(
                    command.meterpoint_id, command.start, command.end, first_end=self.first_end, last_end=last_end
                )
        return readings

    async def step(self) -> None:
        """One tick: the next interval if it is complete, re-reads, a file now and then, an alarm now and then."""
        self.tick += 1
        now = datetime.now(UTC)
        self.answer_rereads()
        if self.tick % self.settings.reread_poll_ticks == 0:
            await self.answer_head_end_rereads()
        if self.next_end <= now:
            end, self.next_end = self.next_end, self.next_end + INTERVAL
            for meter in self.meters:
                meter.send([reading(meter.meterpoint_id, end)])
            if self.head_end is not None:
                await self.head_end.send([reading(meterpoint, end) for meterpoint in self.plan.rest])
            if self.partner is not None:
                self.partner.add([reading(meterpoint, end) for meterpoint in self.plan.ftp])
        elif self.head_end is not None and self.head_end.backlog:
            await self.head_end.send([])
        if self.partner is not None and self.tick % self.settings.ftp_every_ticks == 0:
            name = f"{self.credentials.run_name}-{now:%Y%m%dT%H%M%S}-{self.tick:06d}.csv"
            await self.partner.upload(name)
        # Alarms wait for the customers, so that the inspection orders they open can name the customer.
        customers_known = self.registered.is_set() or not self.settings.customers
        if (
            customers_known
            and len(self.alarms) < self.settings.alarms
            and self.tick % self.settings.alarm_every_ticks == 0
        ):
            await self.raise_alarm(now)

    async def raise_alarm(self, now: datetime) -> None:
        """The next alarm of `ALARMS`, from the meters in turn (MQTT meters over MQTT, the head-end's over REST)."""
        candidates = [*self.plan.mqtt, *self.plan.rest]
        if not candidates:
            return
        number = len(self.alarms)
        meterpoint = candidates[number % len(candidates)]
        kind = ALARMS[number % len(ALARMS)]
        alarm: Alarm = {"meterpoint_id": meterpoint, "alarm": kind, "raised_at": now.strftime("%Y-%m-%dT%H:%M:%SZ")}
        meter = next((m for m in self.meters if m.meterpoint_id == meterpoint), None)
        if meter is not None:
            sent, channel = meter.alarm(alarm), "mqtt"
        else:
            assert self.head_end is not None
            sent, channel = await self.head_end.alarm(alarm), "rest"
        if sent:
            self.alarms.append({**alarm, "channel": channel})
            logger.info("alarm %s raised by %s over %s", kind, meterpoint, channel)

    def sources(self) -> dict[str, tuple[str, str]]:
        """Meterpoint -> (data source kind, id): who delivers each simulated meterpoint."""
        sources = {meterpoint: ("device", meterpoint) for meterpoint in self.plan.mqtt}
        if self.plan.rest:
            assert self.credentials.collection_key is not None  # start() refuses to run without it
            sources |= {
                meterpoint: ("head_end", self.credentials.collection_key.client) for meterpoint in self.plan.rest
            }
        sources |= {meterpoint: ("ftp_partner", self.credentials.ftp_login) for meterpoint in self.plan.ftp}
        return sources

    def register_meterpoints(self) -> None:
        """Every meterpoint in the registry with its data source, before any reading (zeep: run in a thread)."""
        registrar = Registrar(self.settings.customers_url, self.credentials.soap_client, self.credentials.soap_password)
        since = datetime.now(LOCAL).date() - timedelta(days=30)
        for meterpoint, (kind, source_id) in self.sources().items():
            if self.stopping.is_set():
                return
            registrar.ensure_meterpoint(meterpoint, kind, source_id, since)
        logger.info("%d meterpoints registered with their data source", len(self.plan.all))

    def register_customers(self) -> None:
        """One customer per meterpoint over SOAP (runs in a thread: zeep is synchronous)."""
        registrar = Registrar(self.settings.customers_url, self.credentials.soap_client, self.credentials.soap_password)
        today = datetime.now(LOCAL).date()
        for index, meterpoint in enumerate(self.plan.all):
            if self.stopping.is_set():
                return
            self.customers[meterpoint] = registrar.ensure_customer(meterpoint, index, today)
        self.registered.set()
        logger.info("%d meterpoints have their customer", len(self.customers))

    def counts(self) -> dict[str, int]:
        """What was delivered so far, per channel."""
        counts = {
            "ticks": self.tick,
            "mqtt_readings": sum(meter.published for meter in self.meters),
            "mqtt_rereads": sum(meter.rereads for meter in self.meters),
            "alarms": len(self.alarms),
        }
        if self.head_end is not None:
            counts |= {
                "rest_accepted": self.head_end.accepted,
                "rest_rejected": self.head_end.rejected,
                "rest_rereads": self.head_end.rereads,
            }
        if self.partner is not None:
            receipts = self.partner.receipts
            counts |= {
                "ftp_files": self.partner.uploaded_files,
                "ftp_lines": self.partner.uploaded_lines,
                "ftp_receipts": receipts.files,
                "ftp_accepted": receipts.accepted,
                "ftp_rejected": receipts.rejected,
                "ftp_rereads": self.partner.rereads,
            }
        return counts

    def write_state(self) -> None:
        """The state file: meterpoints per channel, their customers, alarms and counts (atomically replaced)."""
        state: dict[str, Any] = {
            "updated_at": datetime.now(UTC).isoformat(),
            "next_interval_end": self.next_end.isoformat(),
            "meterpoints": {"mqtt": self.plan.mqtt, "rest": self.plan.rest, "ftp": self.plan.ftp},
            "customers": self.customers,
            "alarms": self.alarms,
            "counts": self.counts(),
        }
        path = self.settings.state
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        partial.write_bytes(orjson.dumps(state, option=orjson.OPT_INDENT_2))
        partial.replace(path)

    async def close(self) -> None:
        """Disconnect everything."""
        for meter in self.meters:
            await asyncio.to_thread(meter.stop)
        if self.head_end is not None:
            await self.head_end.close()


async def simulate(settings: SimulatorSettings, credentials: Credentials, stop: asyncio.Event) -> Simulation:
    """Run until ``stop`` is set (or ``max_ticks``); return the finished simulation."""
    simulation = Simulation(settings, credentials, settings.plan())
    simulation.start()
    # Before the first reading: a reading for a meterpoint the collection does not know yet is held back.
    meterpoints = asyncio.create_task(asyncio.to_thread(simulation.register_meterpoints), name="register-meterpoints")
    stopped = asyncio.create_task(stop.wait())
    await asyncio.wait({meterpoints, stopped}, return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    if not meterpoints.done():
        simulation.stopping.set()  # the registration stops after its current call (zeep's calls have a timeout)
        await asyncio.wait({meterpoints}, timeout=15)
    elif meterpoints.exception() is not None:
        # Keep simulating: held readings can be redriven once the meterpoints are registered.
        logger.error("registering the meterpoints failed", exc_info=meterpoints.exception())
    registering: asyncio.Task[None] | None = None
    if settings.customers:
        registering = asyncio.create_task(asyncio.to_thread(simulation.register_customers), name="register-customers")
    simulation.write_state()
    logger.info(
        "simulating %d MQTT meters, %d head-end meters, %d FTP meters; first interval %s",
        len(simulation.plan.mqtt),
        len(simulation.plan.rest),
        len(simulation.plan.ftp),
        simulation.next_end.isoformat(),
    )
    try:
        while not stop.is_set() and (settings.max_ticks is None or simulation.tick < settings.max_ticks):
            await simulation.step()
            if registering is not None and registering.done():
                if registering.exception() is not None:
                    logger.error("registering customers failed", exc_info=registering.exception())
                    simulation.registered.set()  # alarms need not wait for customers that will not come
                registering = None
                simulation.write_state()
            if simulation.tick % 10 == 0:
                simulation.write_state()
            if simulation.tick % 60 == 0:
                logger.info("tick %d: %s", simulation.tick, simulation.counts())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=settings.tick_seconds)
    finally:
        simulation.stopping.set()
        if registering is not None and not registering.done():
            # zeep's calls cannot be cancelled; each has a timeout, so waiting is bounded.
            await asyncio.wait({registering}, timeout=15)
        await simulation.close()
        simulation.write_state()
        logger.info("stopped after %d ticks: %s", simulation.tick, simulation.counts())
    return simulation


def parse_settings(argv: Sequence[str] | None) -> SimulatorSettings:
    """Settings from ``GRIDHUB_SIM_*``, overridden by the command line."""
    parser = argparse.ArgumentParser(prog="python -m stack.dev.simulator", description=__doc__.split("\n\n")[0])
    parser.add_argument("--meters", type=int, help="meters publishing over MQTT")
    parser.add_argument("--head-end-meters", type=int, help="meters the head-end posts over REST")
    parser.add_argument("--ftp-meters", type=int, help="meters the partner uploads over FTP")
    parser.add_argument("--no-ftp", dest="ftp", action="store_false", default=None, help="no FTP partner")
    parser.add_argument("--no-customers", dest="customers", action="store_false", default=None)
    parser.add_argument("--id-base", help="first digits of the meterpoint ids")
    parser.add_argument("--history-hours", type=float)
    parser.add_argument("--tick-seconds", type=float)
    parser.add_argument("--alarms", type=int, help="alarms raised in total")
    parser.add_argument("--max-ticks", type=int)
    parser.add_argument("--collection-url")
    parser.add_argument("--customers-url")
    parser.add_argument("--mqtt-port", type=int)
    parser.add_argument("--ftp-port", type=int)
    parser.add_argument("--credentials", type=Path)
    parser.add_argument("--state", type=Path)
    given = {name: value for name, value in vars(parser.parse_args(argv)).items() if value is not None}
    return SimulatorSettings(**given)


def main(argv: Sequence[str] | None = None) -> int:
    """Run until SIGTERM/SIGINT."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stdout)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request drowns the simulator's own
    settings = parse_settings(argv)
    if not settings.credentials.exists():
        print(f"no credentials at {settings.credentials}: start it with `make run`", file=sys.stderr)
        return 2
    credentials = Credentials.model_validate_json(settings.credentials.read_bytes())

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await simulate(settings, credentials, stop)

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
