"""This checkout's collection service against an earlier revision's, in one run: REST and MQTT ingest in rounds that
alternate between the two (and with a raw aiokafka producer's baseline), so that a change's cost is measured
service against service on the same machine at the same moment instead of against a committed figure from another
day, when the baseline itself differs by a factor of two.

    uv run python -m bench.against d5e7dca            # about four minutes; prints the report
    uv run python -m bench.against d5e7dca --out F    # and writes it to F

Needs the local stack (``make stack-up``). The earlier revision is exported with ``git archive`` into a temporary
folder (removed afterwards; the checkout and its git state stay as they are) and run with this checkout's virtual
environment. It keeps its API keys in a schema of its own in the collection database (its migrations, dropped after
the run), so that neither revision reads rows of the other's format. Everything else is ``bench.collection``'s: the
readings, the run's own topics, the settings (quotas out of the way), the REST client and the MQTT publishers.

Each REST round sends the same readings through the baseline, then through both services, which of the two goes first
alternating. The MQTT rounds run one service at a time (each is the only subscriber of the readings while it is
measured), again in alternating order. The report gives the medians, each service's ratio to the baseline and the
ratio of the two services: the figure to judge a change by.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from bench.collection import (
    FULL,
    QUICK,
    Params,
    Service,
    _k,
    add_api_key,
    baseline,
    machine,
    meterpoints,
    mqtt_round,
    readings,
    records_of,
    register_meterpoints,
    rest_round,
    revoke_api_key,
    run_topics,
    start_service,
    stop_service,
)
from bench.common import private_topics
from stack.config import REPO, StackConfig


@dataclass
class Rates:
    """Readings/s per round of one side."""

    rest: list[float] = field(default_factory=list)
    mqtt: list[float] = field(default_factory=list)


@dataclass
class Comparison:
    revision: str
    commit: str
    head: str
    params: Params
    baseline_rest: list[float] = field(default_factory=list)
    baseline_mqtt: list[float] = field(default_factory=list)
    now: Rates = field(default_factory=Rates)
    then: Rates = field(default_factory=Rates)


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=REPO, check=True, capture_output=True, text=True).stdout.strip()


@contextlib.contextmanager
def exported(revision: str) -> Iterator[Path]:
    """The tree of ``revision`` in a temporary folder, gone afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="gridhub-against-"))
    try:
        archive = subprocess.run(["git", "archive", revision], cwd=REPO, check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


KEY_SCRIPT = """
import asyncio, sys
from libs.platform.apikeys import Role, generate_api_key
from libs.platform.apikeys_store import PostgresKeyStore
import asyncpg

async def main(dsn, schema):
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=1, server_settings={"search_path": schema})
    try:
        role = Role.SOURCE if hasattr(Role, "SOURCE") else Role.WRITE
        key = generate_api_key("bench", role)
        await PostgresKeyStore(pool).add(key.record)
        print(key.plain_key)
    finally:
        await pool.close()

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


PER_CLIENT = "COLLECTION_BOUNDARIES__REST_INGRESS__PER_CLIENT__MAX_PER_CLIENT"


def settings_of(tree: Path, schema: str) -> dict[str, str | None]:
    """The overrides for an exported revision: its own schema, and no setting it does not know."""
    settings = (tree / "services" / "collection" / "settings.py").read_text()
    return {"COLLECTION_POSTGRES_SCHEMA": schema, **({} if "per_client" in settings else {PER_CLIENT: None})}


@contextlib.asynccontextmanager
async def earlier_service(
    stack: StackConfig, tree: Path, run_id: str, log: Path, prefix: str
) -> AsyncIterator[tuple[Service, str]]:
    """The earlier revision's service with its own schema and a write key in it: (service, plain key)."""
    schema = f"bench_against_{run_id}"
    dsn = stack.postgres_dsn("collection")
    from libs.platform.db import create_pool

    async def on_database(statement: str) -> None:
        pool = await create_pool(dsn, max_size=1)
        try:
            await pool.execute(statement)
        finally:
            await pool.close()

    # Created here: an old enough revision expects a schema it is given to exist.
    await on_database(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
    service = start_service(stack, f"{run_id}-then", log, prefix, settings_of(tree, schema), tree=tree)
    try:
        command = [sys.executable, "-c", KEY_SCRIPT, dsn, schema]
        done = await asyncio.to_thread(subprocess.run, command, cwd=tree, check=True, capture_output=True, text=True)
        key = done.stdout.strip()
        yield service, key
    finally:
        stop_service(service, stack)
        await on_database(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


async def run(revision: str, params: Params, stack: StackConfig, log: Path, now: str | None = None) -> Comparison:
    """``revision``'s service against this checkout's (or, with ``now``, against that revision's)."""
    commit = git("rev-parse", "--short", revision)
    head = git("rev-parse", "--short", now or "HEAD")
    comparison = Comparison(revision, commit, head, params)
    run_id = secrets.token_hex(4)
    prefix = f"bench-{run_id}."
    async with private_topics(stack.kafka_bootstrap, run_topics(prefix)):
        with exported(commit) as tree, contextlib.ExitStack() as trees:
            now_tree = REPO if now is None else trees.enter_context(exported(head))
            await _run(comparison, tree, now_tree, stack, log, run_id, prefix)
    return comparison


async def _run(
    comparison: Comparison, tree: Path, now_tree: Path, stack: StackConfig, log: Path, run_id: str, prefix: str
) -> None:
    params = comparison.params
    digits = f"{int(run_id, 16) % 1000:03d}"
    meters = meterpoints(1000, f"57131318{digits}")
    devices_of_run = meterpoints(params.mqtt_processes, f"57131319{digits}")
    # This checkout's service checks its scope; an earlier revision without the check ignores the registry.
    await register_meterpoints(
        stack.kafka_bootstrap,
        prefix,
        [(m, "head_end", "bench") for m in meters] + [(m, "device", m) for m in devices_of_run],
    )
    items = readings(meters, params.rest_readings)
    now_log, then_log = log.with_suffix(".now.log"), log.with_suffix(".then.log")

    async with contextlib.AsyncExitStack() as exits:
        await _rounds(comparison, exits, tree, now_tree, stack, (now_log, then_log), run_id, prefix, items)


async def _rounds(
    comparison: Comparison,
    exits: contextlib.AsyncExitStack,
    tree: Path,
    now_tree: Path,
    stack: StackConfig,
    logs: tuple[Path, Path],
    run_id: str,
    prefix: str,
    items: list[dict[str, Any]],
) -> None:
    params = comparison.params
    now_log, then_log = logs
    bodies = [orjson.dumps(items[i : i + params.batch]) for i in range(0, len(items), params.batch)]
    digits = f"{int(run_id, 16) % 1000:03d}"
    devices_of_run = meterpoints(params.mqtt_processes, f"57131319{digits}")
    if now_tree == REPO:
        now = start_service(stack, f"{run_id}-now", now_log, prefix)
        key, key_id = await add_api_key(stack)
        exits.push_async_callback(revoke_api_key, stack, key_id)
    else:
        now, key = await exits.enter_async_context(earlier_service(stack, now_tree, f"{run_id}n", now_log, prefix))

    def start_now() -> Service:
        overrides = None if now_tree == REPO else settings_of(now_tree, f"bench_against_{run_id}n")
        return start_service(stack, f"{run_id}-now", now_log, prefix, overrides, tree=now_tree)

    try:
        async with earlier_service(stack, tree, run_id, then_log, prefix) as (then, then_key):
            sides = {"now": (now, key, comparison.now), "then": (then, then_key, comparison.then)}
            records = records_of(items, now.event_source, prefix)
            await baseline(stack.kafka_bootstrap, records[: params.batch * 4], batch=params.batch, concurrency=4)
            for service, api_key, _ in sides.values():
                await rest_round(service, api_key, bodies[:4], params.batch, 4)
            for number in range(params.rounds):
                comparison.baseline_rest.append(
                    await baseline(stack.kafka_bootstrap, records, batch=params.batch, concurrency=params.concurrency)
                )
                for name in ("now", "then") if number % 2 == 0 else ("then", "now"):
                    service, api_key, rates = sides[name]
                    rates.rest.append(await rest_round(service, api_key, bodies, params.batch, params.concurrency))
                print(
                    f"REST round {number + 1}: now {_k(comparison.now.rest[-1])}/s, then"
                    f" {_k(comparison.then.rest[-1])}/s, baseline {_k(comparison.baseline_rest[-1])}/s"
                )
        # MQTT: one subscriber at a time. The earlier one is started again for each of its rounds.
        for number in range(params.rounds):
            for name in ("now", "then") if number % 2 == 0 else ("then", "now"):
                if name == "now":
                    rate, _, sent = await asyncio.to_thread(mqtt_round, stack, now, params, devices_of_run)
                    comparison.now.mqtt.append(rate)
                    continue
                stop_service(now, stack)
                async with earlier_service(stack, tree, run_id, then_log, prefix) as (then, _):
                    rate, _, sent = await asyncio.to_thread(mqtt_round, stack, then, params, devices_of_run)
                comparison.then.mqtt.append(rate)
                now = start_now()
            comparison.baseline_mqtt.append(
                await baseline(
                    stack.kafka_bootstrap,
                    records_of(sent, now.event_source, prefix),
                    batch=params.batch,
                    concurrency=params.concurrency,
                )
            )
            print(
                f"MQTT round {number + 1}: now {_k(comparison.now.mqtt[-1])}/s, then"
                f" {_k(comparison.then.mqtt[-1])}/s, baseline {_k(comparison.baseline_mqtt[-1])}/s"
            )
    finally:
        stop_service(now, stack)


def report(comparison: Comparison, command: str) -> str:
    c, m = comparison, machine()
    lines = [
        f"# Collection ingest: {c.head} against {c.commit} ({c.revision})",
        "",
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC by `{command}` on {m['cores']} cores ({m['cpu']}), {m['memory']},"
        f" Python {m['python']}; Kafka, PostgreSQL, Mosquitto and the clients share the machine. REST rounds of"
        f" {c.params.rest_readings:,} readings in batches of {c.params.batch} with {c.params.concurrency} requests in"
        f" flight; MQTT rounds of {c.params.mqtt_processes} devices x {c.params.mqtt_messages:,} messages of"
        f" {c.params.readings_per_message} readings, QoS 1. Medians of {c.params.rounds} rounds each.",
        "",
        "| path | baseline | now | then | now / baseline | then / baseline | now / then | now / then per round |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for path, base, now, then in (
        ("REST", c.baseline_rest, c.now.rest, c.then.rest),
        ("MQTT", c.baseline_mqtt, c.now.mqtt, c.then.mqtt),
    ):
        b, n, t = statistics.median(base), statistics.median(now), statistics.median(then)
        rounds = ", ".join(f"{x / y:.2f}" for x, y in zip(now, then, strict=True))
        lines.append(
            f"| {path} | {_k(b)}/s | {_k(n)}/s | {_k(t)}/s | {n / b:.2f} | {t / b:.2f} | **{n / t:.2f}** | {rounds} |"
        )
    lines += [
        "",
        "now / then above 1 means this checkout is faster. The baseline is a raw aiokafka batch producer sending the",
        "same readings' records (bench.collection's part 1), measured before each round.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.against", description=__doc__.split("\n\n")[0])
    parser.add_argument("revision", help="the earlier revision (anything git rev-parse takes)")
    parser.add_argument("--now", help="measure this revision instead of the checkout (exported like the earlier one)")
    parser.add_argument("--quick", action="store_true", help="one small round, a smoke test")
    parser.add_argument("--rounds", type=int, default=None, help="rounds per path (default 5; 1 with --quick)")
    parser.add_argument("--out", type=Path, help="write the report here too")
    args = parser.parse_args(argv)
    params = QUICK if args.quick else FULL
    rounds = args.rounds or (1 if args.quick else 5)
    if rounds < 1:
        parser.error("--rounds must be at least 1")
    params = Params(**{**params.__dict__, "rounds": rounds})
    stack = StackConfig()
    log = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-against-{os.getpid()}.log"
    comparison = asyncio.run(run(args.revision, params, stack, log, args.now))
    text = report(comparison, "python -m bench.against " + " ".join(argv if argv is not None else sys.argv[1:]))
    print(text)
    if args.out is not None:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
