"""The ``gridhub`` command: operator tasks on a running GridHub (see docs/operations.md).

Each command uses the same settings as the services (``GRIDHUB_KAFKA_BOOTSTRAP``, ``<SERVICE>_HTTP_PORT``,
``<SERVICE>_POSTGRES_DSN``, ...), so it talks to whatever ``make run`` or a deployment started.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
from enum import StrEnum
from typing import Annotated

import typer
from dotenv import load_dotenv
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from libs.platform.apikeys import Role
from ops import services
from ops.dlq import replay_dlq, replay_group
from ops.health import breakers as scrape_breakers
from ops.health import readiness
from ops.lag import consumer_lag, kafka_bootstrap

app = typer.Typer(
    name="gridhub",
    help="Operate GridHub: devices, API keys, FTP partners, consumer lag, breakers, dead letters, view rebuilds.",
    no_args_is_help=True,
    add_completion=False,
)
device_app = typer.Typer(help="Meters allowed to publish over MQTT (collection).", no_args_is_help=True)
apikey_app = typer.Typer(help="API keys of client systems (collection, workorders, readside).", no_args_is_help=True)
ftpuser_app = typer.Typer(help="FTP partner accounts (collection).", no_args_is_help=True)
dlq_app = typer.Typer(help="Dead-letter topics.", no_args_is_help=True)
app.add_typer(device_app, name="device")
app.add_typer(apikey_app, name="apikey")
app.add_typer(ftpuser_app, name="ftpuser")
app.add_typer(dlq_app, name="dlq")

console = Console()
errors = Console(stderr=True)

DEV_ENV_FILE = ".stack/dev.env"


@app.callback()
def _settings_from_the_env_file() -> None:
    """Default every setting the environment leaves unset from the env file (the local stack's, in dev).

    ``GRIDHUB_ENV_FILE`` names it; by default ``.stack/dev.env`` in the current folder, written by
    ``python -m stack up``. A deployment's own settings always win.
    """
    load_dotenv(os.environ.get("GRIDHUB_ENV_FILE") or DEV_ENV_FILE, override=False)


class KeyService(StrEnum):
    """Services with API keys (customers uses HTTP Basic logins instead)."""

    collection = "collection"
    workorders = "workorders"
    readside = "readside"
    customers = "customers"


DEFAULT_ROLES = {
    KeyService.collection: Role.SOURCE,
    KeyService.workorders: Role.OPERATOR,
    KeyService.readside: Role.READER,
}
CUSTOMERS_LOGINS = (
    "customers authenticates client systems with HTTP Basic, not API keys: run "
    "`python -m services.customers.commands.auth <client> --role <role> --tenant <grid company>` and add the "
    "printed entry to CUSTOMERS_CLIENTS."
)
JsonOption = Annotated[bool, typer.Option("--json", help="print JSON instead of a table")]


# --- devices, keys, partners ------------------------------------------------------------------------------------


@device_app.command("add")
def device_add(
    meterpoint_id: Annotated[str, typer.Argument(help="the meter's GSRN-18 (its MQTT user name)")],
    password: Annotated[str | None, typer.Option(help="default: a new random one, printed once")] = None,
) -> None:
    """Let a meter publish to gridhub/meters/<meterpoint>/readings and /events."""
    from services.collection.commands.devices import main as devices_main

    raise typer.Exit(devices_main(["add", meterpoint_id, *_password_option(password)]))


@device_app.command("remove")
def device_remove(meterpoint_id: str) -> None:
    """Take a meter's credentials away (its next login is refused)."""
    from services.collection.commands.devices import main as devices_main

    raise typer.Exit(devices_main(["remove", meterpoint_id]))


@apikey_app.command("add")
def apikey_add(
    service: Annotated[KeyService, typer.Argument(help="whose key")],
    client: Annotated[str, typer.Argument(help="the client system, e.g. hes-north")],
    tenant: Annotated[
        str | None, typer.Option(help="the grid company (GLN-13 or EIC-16) it belongs to; none for --role platform")
    ] = None,
    role: Annotated[
        Role | None, typer.Option(help="default: source (collection), operator (workorders), reader (readside)")
    ] = None,
) -> None:
    """Create an API key (printed once)."""
    if service is KeyService.customers:
        errors.print(CUSTOMERS_LOGINS)
        raise typer.Exit(2)
    chosen = role or DEFAULT_ROLES[service]
    scope = [] if tenant is None else ["--tenant", tenant]
    raise typer.Exit(_service_apikeys(service, ["add", client, "--role", chosen.value, *scope]))


@apikey_app.command("revoke")
def apikey_revoke(service: KeyService, key_id: str) -> None:
    """Revoke a key (services notice within their key cache time, 30 s by default)."""
    if service is KeyService.customers:
        errors.print(CUSTOMERS_LOGINS)
        raise typer.Exit(2)
    raise typer.Exit(_service_apikeys(service, ["revoke", key_id]))


def _service_apikeys(service: KeyService, argv: list[str]) -> int:
    module = importlib.import_module(f"services.{service.value}.commands.apikeys")
    code: int = module.main(argv)
    return code


def _password_option(password: str | None) -> list[str]:
    """``--password=<value>`` in one word, so a password beginning with '-' is not read as an option."""
    return [f"--password={password}"] if password else []


@ftpuser_app.command("add")
def ftpuser_add(
    login: Annotated[str, typer.Argument(help="1-63 of a-z, 0-9, '.', '_', '-'")],
    password: Annotated[
        str | None, typer.Option(help="at least 12 characters; default: a new one, printed once")
    ] = None,
) -> None:
    """Create a partner account: uploads into /inbox, receipts in /outbox."""
    from services.collection.commands.ftpusers import main as ftpusers_main

    raise typer.Exit(ftpusers_main(["add", login, *_password_option(password)]))


@ftpuser_app.command("disable")
def ftpuser_disable(login: str) -> None:
    """Lock a partner out."""
    from services.collection.commands.ftpusers import main as ftpusers_main

    raise typer.Exit(ftpusers_main(["disable", login]))


holds_app = typer.Typer(help="Readings and alarms held for unknown meterpoints (collection).", no_args_is_help=True)
app.add_typer(holds_app, name="holds")


@holds_app.command("redrive")
def holds_redrive(
    batch: Annotated[int, typer.Option(help="DLQ records per publish and commit (1-10000)")] = 500,
    group: Annotated[str, typer.Option(help="consumer group holding the redrive's DLQ progress")] = "collection-holds",
) -> None:
    """Publish held items whose meterpoints are registered now; hold the others again; print the counts."""
    from services.collection.commands.holds import main as holds_main

    raise typer.Exit(holds_main(["redrive", f"--batch={batch}", f"--group={group}"]))


# --- observing ----------------------------------------------------------------------------------------------------


@app.command()
def lag(
    group: Annotated[list[str] | None, typer.Option(help="consumer group (repeatable); default: the services'")] = None,
    topic: Annotated[list[str] | None, typer.Option(help="only these topics, every partition (repeatable)")] = None,
    as_json: JsonOption = False,
) -> None:
    """Consumer-group lag per partition: committed offset against the end offset."""
    groups = group or services.consumer_groups()
    rows = asyncio.run(consumer_lag(kafka_bootstrap(), groups, topics=topic or []))
    if as_json:
        print(json.dumps([row.as_dict() for row in rows], indent=2))
        return
    table = Table("group", "topic", "partition", "committed", "end", "lag", title="consumer lag")
    for row in rows:
        committed = "-" if row.committed is None else f"{row.committed:,}"
        table.add_row(row.group, row.topic, str(row.partition), committed, f"{row.end:,}", f"{row.lag:,}")
    console.print(table)
    shown = {row.group for row in rows}
    for missing in (g for g in groups if g not in shown):
        console.print(f"group {missing}: no committed offsets")
    console.print(f"total lag: {sum(row.lag for row in rows):,}")


@app.command()
def breakers(as_json: JsonOption = False) -> None:
    """Circuit breaker states of every service (gridhub_flow_breaker_state in /metrics)."""
    states = asyncio.run(scrape_breakers())
    if as_json:
        print(json.dumps([state.__dict__ for state in states], indent=2))
        return
    table = Table("service", "boundary", "state", "", title="circuit breakers")
    colours = {"closed": "green", "half-open": "yellow", "open": "red"}
    for state in states:
        shown = f"[{colours[state.state]}]{state.state}[/]" if state.state in colours else (state.state or "-")
        table.add_row(state.service, state.boundary, shown, state.detail)
    console.print(table)


@app.command()
def outbox(as_json: JsonOption = False) -> None:
    """Events customers and workorders committed but not yet published to Kafka (grows while Kafka is down)."""
    from ops.outbox import outbox_backlog

    backlogs = asyncio.run(outbox_backlog())
    if as_json:
        print(json.dumps([{**b.__dict__, "oldest": b.oldest and b.oldest.isoformat()} for b in backlogs], indent=2))
        return
    table = Table("service", "unpublished", "oldest", "", title="outbox backlog")
    for backlog in backlogs:
        count = "-" if backlog.unpublished is None else f"{backlog.unpublished:,}"
        table.add_row(backlog.service, count, str(backlog.oldest or "-"), backlog.error)
    console.print(table)


@app.command()
def status() -> None:
    """Every service's readiness (the local stack's own processes: ``make stack-status``)."""
    answers = asyncio.run(readiness())
    table = Table("service", "readiness", "url", "detail", title="services")
    colours = {"ready": "green", "not ready": "yellow", "down": "red"}
    for answer in answers:
        table.add_row(answer.service, f"[{colours[answer.status]}]{answer.status}[/]", answer.url, answer.detail)
    console.print(table)
    raise typer.Exit(0 if all(a.status == "ready" for a in answers) else 1)


# --- repairing ----------------------------------------------------------------------------------------------------


@dlq_app.command("replay")
def dlq_replay(
    topic: Annotated[str, typer.Argument(help="the source topic, e.g. meter.events.v1 (reads <topic>.dlq)")],
    limit: Annotated[int | None, typer.Option(min=1, help="replay at most this many records")] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="count and show reasons; publish and commit nothing")
    ] = False,
) -> None:
    """Republish dead letters to their source topic (dlq.* headers removed), from where the last replay stopped."""
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=errors, transient=False) as bar:
        task = bar.add_task(f"{'checking' if dry_run else 'replaying'} {topic}.dlq", total=None)

        def advance(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        report = asyncio.run(replay_dlq(kafka_bootstrap(), topic, limit=limit, dry_run=dry_run, progress=advance))
        bar.update(task, completed=report.replayed + report.skipped, total=report.planned)
    verb = "would replay" if dry_run else "replayed"
    console.print(f"{verb} {report.replayed} record(s) to {report.topic}; skipped {report.skipped} (not from it)")
    for reason, count in report.reasons.most_common(10):
        console.print(f"  {count:>6}  {reason}")
    for source, count in report.skipped_sources.most_common(5):
        console.print(f"  skipped {count} from {source}: resend from the source system instead")
    if not dry_run:
        console.print(f"progress kept in consumer group {replay_group(report.topic)}")


@app.command()
def rebuild(
    rate: Annotated[float | None, typer.Option(help="records per second (default: the read side's settings)")] = None,
    keep_old: Annotated[bool, typer.Option("--keep-old", help="keep the old view version's schema")] = False,
) -> None:
    """Rebuild the read side's views from the topics into a new version, then switch (progress on stderr)."""
    from services.readside.commands.rebuild import main as rebuild_main

    rebuild_main([*([f"--rate={rate}"] if rate is not None else []), *(["--keep-old"] if keep_old else [])])


def main() -> None:
    """Entry point of the ``gridhub`` script."""
    app()


if __name__ == "__main__":
    main()
