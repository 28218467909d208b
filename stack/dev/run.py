"""``python -m stack.dev.run`` (``make run``): the stack, the services and the meter simulator, until Ctrl-C.

1. Brings the local stack up (``stack.up``: Kafka, PostgreSQL, Mosquitto; idempotent).
2. Starts ``python -m services.<name>`` for collection, customers, workorders, readside and vee with dev settings (the
   stack's DSNs, broker and ports; each service migrates its own database on start-up), logging to
   ``<run dir>/<name>.log``, and waits for every ``/readyz`` with a deadline.
3. Provisions two grid companies (A 5790000000012 "Nordgrid", B 5790000000029 "Sydnet"): per grid company a
   head-end source key, reader keys for the read side and work orders, an operator key for work orders, an FTP
   partner and a SOAP client, and the simulator's MQTT devices under A, with the services' own tools
   (``stack.dev.provision``); then starts ``python -m stack.dev.simulator`` (it delivers for A) and prints where
   everything is, with every grid company's keys.
4. On Ctrl-C or SIGTERM: the simulator stops first, then the services get SIGTERM in the order of the data flow
   (collection and customers, then workorders, then readside and vee), so in-flight requests finish, consumers commit
   and the outbox relays publish what they hold. Each phase has a deadline, after which a service is killed
   (and reported). The stack stays up: ``make stack-down`` stops it.

Children run in their own sessions (so a terminal's Ctrl-C reaches only this runner, which stops them in order)
and get SIGTERM from the kernel if the runner itself dies (``PR_SET_PDEATHSIG``), so none is left behind.

Variables: ``GRIDHUB_RUN_DIR`` (default ``.stack/run``), ``GRIDHUB_RUN_NAME`` (names the provisioned identities,
default ``sim``), the services' own (``COLLECTION_HTTP_PORT``, ...), the simulator's ``GRIDHUB_SIM_*``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import os
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import httpx

from ops.services import (
    COLLECTION,
    CUSTOMERS,
    READSIDE,
    SERVICES,
    VEE,
    WORKORDERS,
    Service,
    ftp_enabled,
    ftp_port,
    soap_url,
)
from stack.config import REPO, StackConfig
from stack.dev.provision import Credentials, customers_clients, provision
from stack.dev.simulator import SimulatorSettings, run_dir
from stack.environment import service_environment
from stack.process import StackError

PR_SET_PDEATHSIG = 1
# Stop order: the entry points first, so nothing new comes in while the consumers finish what is in flight.
STOP_PHASES: tuple[tuple[Service, ...], ...] = ((COLLECTION, CUSTOMERS), (WORKORDERS,), (READSIDE, VEE))


class StartupError(RuntimeError):
    """A service did not come up; the message names it and its log."""


def _stop_with_parent() -> None:
    """Runs in the child before exec: SIGTERM when the runner dies, whatever killed it."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _relative(path: Path) -> str:
    with contextlib.suppress(ValueError):
        return str(path.relative_to(REPO))
    return str(path)


def _tail(path: Path, lines: int = 20) -> str:
    if not path.exists():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _fresh_log(log: Path) -> BinaryIO:
    """``log`` opened empty; the previous run's log is kept as ``<log>.1``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    if log.exists():
        log.replace(log.with_name(log.name + ".1"))
    return log.open("wb")


@dataclass
class Child:
    """A process the runner started."""

    name: str
    process: asyncio.subprocess.Process
    log: Path
    started: float
    killed: bool = False
    stop_seconds: float | None = None

    @property
    def running(self) -> bool:
        """True until the process has exited."""
        return self.process.returncode is None

    @property
    def clean(self) -> bool:
        """Exited 0, or by the SIGTERM it was sent (uvicorn re-raises it after its graceful shutdown)."""
        return not self.killed and self.process.returncode in (0, -signal.SIGTERM)


async def spawn(name: str, args: Sequence[str], env: Mapping[str, str], log: Path) -> Child:
    """Start ``python -m <args>`` with stdout and stderr in ``log`` (the previous log becomes ``<log>.1``)."""
    with _fresh_log(log) as out:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            *args,
            cwd=REPO,
            env=dict(env),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
            # Only a prctl call between fork and exec: safe although this process has threads.
            preexec_fn=_stop_with_parent,
        )
    return Child(name, process, log, time.monotonic())


async def wait_ready(child: Child, service: Service, env: Mapping[str, str], timeout: float) -> None:
    """Poll ``/readyz`` until 200; `StartupError` naming the service and its log if it exits or the deadline passes."""
    url = f"{service.url(env)}/readyz"
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=2.0) as http:
        while True:
            if not child.running:
                raise StartupError(
                    f"{child.name} exited with {child.process.returncode} while starting; "
                    f"its log {_relative(child.log)} ends with:\n{_tail(child.log)}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if (await http.get(url)).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise StartupError(
                    f"{child.name} was not ready within {timeout:.0f}s ({url}); "
                    f"its log {_relative(child.log)} ends with:\n{_tail(child.log)}"
                )
            await asyncio.sleep(0.25)


async def stop_children(children: Sequence[Child], timeout: float, force: asyncio.Event) -> None:
    """SIGTERM each running child, wait for all until ``timeout`` (or ``force``), then SIGKILL the rest."""
    running = [child for child in children if child.running]
    if not running:
        return
    began = time.monotonic()

    async def exited(child: Child) -> None:
        await child.process.wait()
        child.stop_seconds = time.monotonic() - began

    for child in running:
        with contextlib.suppress(ProcessLookupError):
            child.process.send_signal(signal.SIGTERM)
    every: asyncio.Future[Any] = asyncio.gather(*(exited(child) for child in running))
    forced: asyncio.Future[Any] = asyncio.ensure_future(force.wait())
    await asyncio.wait([every, forced], timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    forced.cancel()
    for child in running:
        if child.running:
            child.killed = True
            with contextlib.suppress(ProcessLookupError):
                child.process.kill()
    await every


def describe_exit(child: Child) -> str:
    """One line on how a child ended."""
    took = f" in {child.stop_seconds:.1f}s" if child.stop_seconds is not None else ""
    if child.killed:
        return f"  {child.name:<11} killed after the deadline{took}: see {_relative(child.log)}"
    if child.clean:
        return f"  {child.name:<11} stopped{took}"
    return f"  {child.name:<11} exited with {child.process.returncode}{took}: see {_relative(child.log)}"


def write_run_file(path: Path, children: Mapping[str, Child]) -> None:
    """``run.json``: pid, exit status and stop time of every child (for tools and the end-to-end test)."""
    document = {
        name: {
            "pid": child.process.pid,
            "log": str(child.log),
            "returncode": child.process.returncode,
            "killed": child.killed,
            "clean": None if child.running else child.clean,
            "stop_seconds": child.stop_seconds,
        }
        for name, child in children.items()
    }
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(document, indent=2))
    partial.replace(path)


def grid_company_lines(credentials: Credentials) -> list[str]:
    """Per grid company (tenant): its keys by service and role, its FTP partner and SOAP client."""
    lines = []
    for company in credentials.grid_companies:
        simulated = " (the simulator's, with its MQTT devices)" if company is credentials.grid_companies[0] else ""
        lines.append(f"  grid company {company.tenant} {company.name}{simulated}")
        for label, key in (
            ("collection source", company.head_end_key),
            ("readside reader", company.readside_key),
            ("workorders reader", company.workorders_reader_key),
            ("workorders operator", company.workorders_key),
        ):
            if key is not None:
                lines.append(f"      {label:<20} {key.client:<32} {key.key}")
        lines.append(f"      {'FTP partner':<20} {company.ftp_login}")
        lines.append(f"      {'SOAP client (admin)':<20} {company.soap_client}")
    return lines


def print_summary(
    env: Mapping[str, str], config: StackConfig, credentials: Credentials, sim: SimulatorSettings | None, folder: Path
) -> None:
    """Where everything is."""
    c, cu, w, r = (service.url(env) for service in (COLLECTION, CUSTOMERS, WORKORDERS, READSIDE))
    read_key = credentials.readside_key.key if credentials.readside_key else "<read key>"
    lines = [
        "",
        "GridHub is running. Ctrl-C stops the simulator and the services (gracefully); the stack stays up.",
        "",
        f"  collection  REST  {c}/v1/readings, {c}/v1/meter-events    OpenAPI {c}/docs",
        f"              MQTT  mqtt://{config.host}:{config.mqtt_port}  gridhub/meters/<gsrn>/readings|events   "
        "AsyncAPI contracts/asyncapi/collection.yaml",
    ]
    if ftp_enabled(env):
        partner = f" (partner {credentials.ftp_login})" if sim is not None and sim.ftp else ""
        lines.append(
            f"              FTP   ftp://{config.host}:{ftp_port(env)}  CSV into /inbox, receipts in /outbox{partner}"
        )
    lines += [
        f"  customers   SOAP  {cu}/soap/customers    WSDL {cu}/soap/customers?wsdl",
        f"  workorders  REST  {w}/v1/work-orders    OpenAPI {w}/docs",
        f"  readside    REST  {r}/v1/meterpoints/<gsrn>, /consumption, /v1/customers/<id>/overview, /v1/workorders"
        f"    OpenAPI {r}/docs",
        f"  metrics     {c}/metrics  {cu}/metrics  {w}/metrics  {r}/metrics   (health: /healthz, /readyz)",
        f"  logs        {_relative(folder)}/<service>.log" + (f", {_relative(folder)}/simulator.log" if sim else ""),
    ]
    lines.append(
        f"  credentials {_relative(folder / 'credentials.json')} (dev only: API keys, FTP/SOAP logins, devices)"
    )
    lines += grid_company_lines(credentials)
    if sim is not None:
        plan = sim.plan()
        example = (plan.mqtt or plan.rest or plan.ftp or ["<gsrn>"])[0]
        lines += [
            f"  simulator   {len(plan.mqtt)} MQTT meters, {len(plan.rest)} head-end meters (REST), "
            f"{len(plan.ftp)} FTP meters; state in {_relative(sim.state)}",
            "",
            f'  try: curl -s -H "Authorization: Bearer {read_key}" {r}/v1/meterpoints/{example}',
        ]
    commands = "status | lag | breakers | dlq replay <topic> | rebuild | apikey list | audit list"
    lines += [f"       uv run gridhub {commands}", ""]
    print("\n".join(lines), flush=True)


@dataclass
class Options:
    """Command line of the runner."""

    simulator: bool
    ready_timeout: float
    stop_timeout: float


class Runner:
    """One ``make run``: owns the children and the stop signals."""

    def __init__(self, options: Options, env: Mapping[str, str]) -> None:
        self.options = options
        self.run_dir = run_dir()
        self.run_name = env.get("GRIDHUB_RUN_NAME") or "sim"
        self.stop = asyncio.Event()
        self.force = asyncio.Event()
        self.stopped_at = 0.0
        self.stack_up = False
        self.services: dict[str, Child] = {}
        self.simulator: Child | None = None

    def on_signal(self) -> None:
        """First Ctrl-C/SIGTERM: stop gracefully; another one later: do not wait for the deadlines.

        A terminal's Ctrl-C reaches the whole foreground group and ``uv run`` forwards it once more, so a repeat
        within a second is the same Ctrl-C.
        """
        now = time.monotonic()
        if not self.stop.is_set():
            self.stopped_at = now
            print("\nstopping gracefully: the simulator, then the services (Ctrl-C again to kill them)", flush=True)
            self.stop.set()
        elif now - self.stopped_at >= 1.0 and not self.force.is_set():
            print("stopping without waiting any longer", flush=True)
            self.force.set()

    @property
    def children(self) -> dict[str, Child]:
        """Every child in stop order: the simulator, then the services."""
        return {**({"simulator": self.simulator} if self.simulator else {}), **self.services}

    async def until_stopped(self, work: Any) -> Any:
        """Run ``work`` unless a stop signal comes first (then None)."""
        task = asyncio.ensure_future(work)
        stopped = asyncio.ensure_future(self.stop.wait())
        await asyncio.wait([task, stopped], return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            return None
        return task.result()

    async def start(self) -> bool:
        """Stack, services, provisioning, simulator; False when stopped or failed on the way."""
        from stack.__main__ import up

        try:
            sim = SimulatorSettings() if self.options.simulator else None
            plan = sim.plan() if sim is not None else None
        except ValueError as error:  # pydantic's ValidationError is a ValueError
            print(f"simulator settings (GRIDHUB_SIM_*): {error}", file=sys.stderr)
            return False
        config = StackConfig()
        print("GridHub: bringing the stack up (Kafka, PostgreSQL, Mosquitto)", flush=True)
        try:
            await asyncio.to_thread(up, config)
        except StackError as error:
            print(f"the stack did not come up: {error}", file=sys.stderr)
            return False
        self.stack_up = True
        if self.stop.is_set():
            return False
        # The services, the provisioning tools and this process all read the same settings.
        os.environ.update(service_environment(config, os.environ))
        # make run routes the validation stage's re-reads to the simulator's sources (off for a bare service).
        os.environ.setdefault("COLLECTION_GAPFILL__ENABLED", "true")
        env = dict(os.environ)
        ftp_on = ftp_enabled(env)
        credentials_file = self.run_dir / "credentials.json"
        credentials = Credentials.load(credentials_file, self.run_name)
        service_env = {**env, "CUSTOMERS_CLIENTS": customers_clients(credentials, env)}
        print("starting " + ", ".join(s.name for s in SERVICES) + f" (logs in {_relative(self.run_dir)})", flush=True)
        for service in SERVICES:
            log = self.run_dir / f"{service.name}.log"
            self.services[service.name] = await spawn(service.name, [service.module], service_env, log)
        write_run_file(self.run_dir / "run.json", self.children)
        readiness = asyncio.gather(
            *(wait_ready(self.services[s.name], s, env, self.options.ready_timeout) for s in SERVICES)
        )
        try:
            if await self.until_stopped(readiness) is None:
                return False
        except StartupError as error:
            readiness.cancel()  # the others' waits end with their processes
            print(f"\n{error}", file=sys.stderr)
            return False
        print(f"all {len(SERVICES)} services are ready", flush=True)
        # Both grid companies' keys, partners and SOAP clients, with or without the simulator; devices for its meters.
        meters = plan.mqtt if sim is not None and plan is not None else []
        try:
            async with asyncio.timeout(120):
                provisioned = await self.until_stopped(provision(credentials, meters, ftp=ftp_on))
        except (RuntimeError, ValueError, OSError, TimeoutError) as error:
            print(f"provisioning the grid companies' credentials failed: {error}", file=sys.stderr)
            return False
        if provisioned is None:
            return False
        credentials = provisioned
        credentials.save(credentials_file)
        if sim is None or plan is None:
            print_summary(env, config, credentials, None, self.run_dir)
            return True
        args = [
            "stack.dev.simulator",
            f"--credentials={credentials_file}",
            f"--state={self.run_dir / 'simulator.json'}",
            f"--collection-url={COLLECTION.url(env)}",
            f"--customers-url={soap_url(env)}",
            f"--mqtt-port={config.mqtt_port}",
            f"--ftp-port={ftp_port(env)}",
            *([] if ftp_on else ["--no-ftp"]),
        ]
        self.simulator = await spawn("simulator", args, env, self.run_dir / "simulator.log")
        write_run_file(self.run_dir / "run.json", self.children)
        shown = sim.model_copy(update={"state": self.run_dir / "simulator.json"})
        print_summary(env, config, credentials, shown, self.run_dir)
        return True

    async def watch(self) -> bool:
        """Until a stop signal (True) or a service's death (False); a dead simulator is only reported."""
        while not self.stop.is_set():
            running = [child for child in self.children.values() if child.running]
            exits = {asyncio.ensure_future(child.process.wait()): child for child in running}
            stopped = asyncio.ensure_future(self.stop.wait())
            done, _ = await asyncio.wait([stopped, *exits], return_when=asyncio.FIRST_COMPLETED)
            for future in (stopped, *exits):
                future.cancel()
            for future in done:
                child = exits.get(future)
                if child is None:
                    continue
                print(
                    f"{child.name} exited with {child.process.returncode}; its log {_relative(child.log)} ends with:\n"
                    f"{_tail(child.log)}",
                    file=sys.stderr,
                    flush=True,
                )
                if child is not self.simulator:
                    return False
        return True

    async def shutdown(self) -> bool:
        """Simulator first, then the services phase by phase; True when every one stopped cleanly."""
        if self.simulator is not None:
            await stop_children([self.simulator], 10.0, self.force)
        for phase in STOP_PHASES:
            await stop_children(
                [self.services[s.name] for s in phase if s.name in self.services], self.options.stop_timeout, self.force
            )
        write_run_file(self.run_dir / "run.json", self.children)
        if self.children:
            print("\n".join(["stopped:", *(describe_exit(child) for child in self.children.values())]), flush=True)
        if self.stack_up:
            print("The stack (Kafka, PostgreSQL, Mosquitto) is still up; `make stack-down` stops it.", flush=True)
        services_clean = all(child.clean for child in self.services.values())
        return services_clean and (self.simulator is None or self.simulator.clean)

    async def run(self) -> int:
        """The whole run; the exit code of ``make run``."""
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, self.on_signal)
        ok = False
        try:
            # Stopped by the operator while starting is no failure; anything else that ends the start is.
            ok = await self.watch() if await self.start() else self.stop.is_set()
        finally:
            clean = await asyncio.shield(self.shutdown())
        return 0 if ok and clean else 1


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m stack.dev.run [--no-simulator] [--ready-timeout S] [--stop-timeout S]``."""
    parser = argparse.ArgumentParser(prog="python -m stack.dev.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-simulator", dest="simulator", action="store_false", help="the services only")
    parser.add_argument("--ready-timeout", type=float, default=float(os.environ.get("GRIDHUB_RUN_READY_TIMEOUT", 90)))
    parser.add_argument("--stop-timeout", type=float, default=float(os.environ.get("GRIDHUB_RUN_STOP_TIMEOUT", 30)))
    args = parser.parse_args(argv)
    options = Options(simulator=args.simulator, ready_timeout=args.ready_timeout, stop_timeout=args.stop_timeout)
    return asyncio.run(Runner(options, os.environ).run())


if __name__ == "__main__":
    sys.exit(main())
