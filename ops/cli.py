"""The ``gridhub`` command: operator tasks on a running GridHub (see docs/operations.md).

Each command uses the same settings as the services (``GRIDHUB_KAFKA_BOOTSTRAP``, ``<SERVICE>_HTTP_PORT``,
``<SERVICE>_POSTGRES_DSN``, ...), so it talks to whatever ``make run`` or a deployment started.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
from datetime import UTC, datetime
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
    help=(
        "Operate GridHub: devices, API keys, FTP partners, tenants, the audit trail, consumer lag, breakers, "
        "dead letters, view rebuilds."
    ),
    no_args_is_help=True,
    add_completion=False,
)
device_app = typer.Typer(help="Meters allowed to publish over MQTT (collection).", no_args_is_help=True)
apikey_app = typer.Typer(help="API keys of client systems (collection, workorders, readside).", no_args_is_help=True)
ftpuser_app = typer.Typer(help="FTP partner accounts (collection).", no_args_is_help=True)
tenant_app = typer.Typer(help="Grid companies (tenants) and their principals.", no_args_is_help=True)
audit_app = typer.Typer(help="Changes to principals, scopes and assignments (every service).", no_args_is_help=True)
dlq_app = typer.Typer(help="Dead-letter topics.", no_args_is_help=True)
app.add_typer(device_app, name="device")
app.add_typer(apikey_app, name="apikey")
app.add_typer(ftpuser_app, name="ftpuser")
app.add_typer(tenant_app, name="tenant")
app.add_typer(audit_app, name="audit")
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
ExpiresOption = Annotated[
    str | None, typer.Option(help="a duration (90d, 12h) or a date (2027-03-31); default: no expiry")
]
TenantFilter = Annotated[str | None, typer.Option(help="only this grid company (GLN-13 or EIC-16)")]


# --- devices, keys, partners ------------------------------------------------------------------------------------


@device_app.command("add")
def device_add(
    meterpoint_id: Annotated[str, typer.Argument(help="the meter's GSRN-18 (its MQTT user name)")],
    tenant: Annotated[str, typer.Option(help="the grid company (GLN-13 or EIC-16) the meter delivers for")],
    password: Annotated[str | None, typer.Option(help="default: a new random one, printed once")] = None,
    expires_in: ExpiresOption = None,
) -> None:
    """Let a meter publish to gridhub/meters/<meterpoint>/readings and /events, as a source of its tenant."""
    from services.collection.commands.devices import main as devices_main

    argv = ["add", meterpoint_id, "--tenant", tenant, *_password_option(password), *_expiry_option(expires_in)]
    raise typer.Exit(devices_main(argv))


@device_app.command("passwd")
def device_passwd(
    meterpoint_id: str,
    password: Annotated[str | None, typer.Option(help="default: a new random one, printed once")] = None,
    expires_in: ExpiresOption = None,
) -> None:
    """Rotate a meter's password: only the new one logs in, at once (no overlap: give the meter it first)."""
    from services.collection.commands.devices import main as devices_main

    raise typer.Exit(devices_main(["passwd", meterpoint_id, *_password_option(password), *_expiry_option(expires_in)]))


@device_app.command("remove")
def device_remove(meterpoint_id: str) -> None:
    """Take a meter's credentials away (its next login is refused)."""
    from services.collection.commands.devices import main as devices_main

    raise typer.Exit(devices_main(["remove", meterpoint_id]))


@device_app.command("list")
def device_list(tenant: TenantFilter = None) -> None:
    """Device accounts: tenant, password age, expiry and state."""
    from services.collection.commands.devices import main as devices_main

    raise typer.Exit(devices_main(["list", *(["--tenant", tenant] if tenant else [])]))


@device_app.command("prune")
def device_prune() -> None:
    """Take every device past its expiry out of the broker (run it from cron: the broker knows no end dates)."""
    from services.collection.commands.devices import main as devices_main

    raise typer.Exit(devices_main(["prune"]))


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
    expires_in: ExpiresOption = None,
) -> None:
    """Create an API key (printed once)."""
    if service is KeyService.customers:
        errors.print(CUSTOMERS_LOGINS)
        raise typer.Exit(2)
    chosen = role or DEFAULT_ROLES[service]
    scope = [] if tenant is None else ["--tenant", tenant]
    argv = ["add", client, "--role", chosen.value, *scope, *_expiry_option(expires_in)]
    raise typer.Exit(_service_apikeys(service, argv))


@apikey_app.command("rotate")
def apikey_rotate(
    service: KeyService,
    key_id: str,
    overlap: Annotated[str, typer.Option(help="how long the old key keeps working: 7d, 12h, 0s")] = "7d",
    expires_in: Annotated[
        str | None, typer.Option(help="the new key's expiry (default: as long as the old key was made to live)")
    ] = None,
) -> None:
    """Issue a successor for the same client, tenant and role; the old key works until the overlap ends."""
    if service is KeyService.customers:
        errors.print(CUSTOMERS_LOGINS)
        raise typer.Exit(2)
    raise typer.Exit(_service_apikeys(service, ["rotate", key_id, f"--overlap={overlap}", *_expiry_option(expires_in)]))


@apikey_app.command("revoke")
def apikey_revoke(service: KeyService, key_id: str) -> None:
    """Revoke a key (every service refuses it within its key cache time, 5 s by default)."""
    if service is KeyService.customers:
        errors.print(CUSTOMERS_LOGINS)
        raise typer.Exit(2)
    raise typer.Exit(_service_apikeys(service, ["revoke", key_id]))


@apikey_app.command("list")
def apikey_list(
    service: Annotated[list[KeyService] | None, typer.Option(help="only these services (repeatable)")] = None,
    tenant: TenantFilter = None,
    as_json: JsonOption = False,
) -> None:
    """Keys of every service with tenant, role, expiry and state (never a secret)."""
    from libs.platform.apikeys_cli import list_keys
    from ops.principals import service_settings

    chosen = [s for s in (service or list(DEFAULT_ROLES)) if s is not KeyService.customers]
    now = datetime.now(UTC)
    rows: list[dict[str, str | None]] = []
    for name in chosen:
        for record in asyncio.run(list_keys(service_settings(name.value), tenant=tenant)):
            rows.append(
                {
                    "service": name.value,
                    "key_id": record.key_id,
                    "client": record.client,
                    "tenant": record.tenant,
                    "role": record.role.value,
                    "created_at": record.created_at.isoformat(),
                    "expires_at": record.expires_at.isoformat() if record.expires_at else None,
                    "state": record.state(now).value,
                    "rotated_from": record.rotated_from,
                }
            )
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table("service", "key id", "client", "tenant", "role", "expires", "state", title="API keys")
    for row in rows:
        expires = row["expires_at"] or "never"
        table.add_row(
            row["service"],
            row["key_id"],
            row["client"],
            row["tenant"] or "platform",
            row["role"],
            expires,
            row["state"],
        )
    console.print(table)


def _service_apikeys(service: KeyService, argv: list[str]) -> int:
    module = importlib.import_module(f"services.{service.value}.commands.apikeys")
    code: int = module.main(argv)
    return code


def _password_option(password: str | None) -> list[str]:
    """``--password=<value>`` in one word, so a password beginning with '-' is not read as an option."""
    return [f"--password={password}"] if password else []


def _expiry_option(expires_in: str | None) -> list[str]:
    return [f"--expires-in={expires_in}"] if expires_in else []


@ftpuser_app.command("add")
def ftpuser_add(
    login: Annotated[str, typer.Argument(help="1-63 of a-z, 0-9, '.', '_', '-'")],
    tenant: Annotated[str, typer.Option(help="the partner's grid company (GLN-13 or EIC-16)")],
    password: Annotated[
        str | None, typer.Option(help="at least 12 characters; default: a new one, printed once")
    ] = None,
    expires_in: ExpiresOption = None,
) -> None:
    """Create a partner account (a source of its tenant): uploads into /inbox, receipts in /outbox."""
    from services.collection.commands.ftpusers import main as ftpusers_main

    argv = ["add", login, "--tenant", tenant, *_password_option(password), *_expiry_option(expires_in)]
    raise typer.Exit(ftpusers_main(argv))


@ftpuser_app.command("rotate")
def ftpuser_rotate(
    login: str,
    overlap: Annotated[str, typer.Option(help="how long the old password keeps working: 7d, 12h, 0s")] = "7d",
    password: Annotated[
        str | None, typer.Option(help="at least 12 characters; default: a new one, printed once")
    ] = None,
    expires_in: ExpiresOption = None,
) -> None:
    """A new password for a partner; the old one keeps working until the overlap ends."""
    from services.collection.commands.ftpusers import main as ftpusers_main

    argv = ["rotate", login, f"--overlap={overlap}", *_password_option(password), *_expiry_option(expires_in)]
    raise typer.Exit(ftpusers_main(argv))


@ftpuser_app.command("passwd")
def ftpuser_passwd(
    login: str,
    password: Annotated[
        str | None, typer.Option(help="at least 12 characters; default: a new one, printed once")
    ] = None,
    tenant: Annotated[str | None, typer.Option(help="give an account from before tenancy its grid company")] = None,
    expires_in: ExpiresOption = None,
) -> None:
    """Replace a partner's password at once (the old one stops working; enables a disabled account)."""
    from services.collection.commands.ftpusers import main as ftpusers_main

    scope = ["--tenant", tenant] if tenant else []
    raise typer.Exit(ftpusers_main(["passwd", login, *_password_option(password), *scope, *_expiry_option(expires_in)]))


@ftpuser_app.command("disable")
def ftpuser_disable(login: str) -> None:
    """Lock a partner out."""
    from services.collection.commands.ftpusers import main as ftpusers_main

    raise typer.Exit(ftpusers_main(["disable", login]))


@ftpuser_app.command("list")
def ftpuser_list(tenant: TenantFilter = None) -> None:
    """Partner accounts: tenant, expiry, a rotation's overlap and state."""
    from services.collection.commands.ftpusers import main as ftpusers_main

    raise typer.Exit(ftpusers_main(["list", *(["--tenant", tenant] if tenant else [])]))


@tenant_app.command("list")
def tenant_list(as_json: JsonOption = False) -> None:
    """Tenants (grid companies) with a working principal somewhere: keys, FTP partners, devices, SOAP clients."""
    from ops.principals import tenants

    found, failed = asyncio.run(tenants())
    if as_json:
        print(json.dumps({"tenants": [e.__dict__ for e in found], "unreachable": failed}, indent=2))
        return
    table = Table("tenant", "principals", "of which", title="tenants")
    for entry in found:
        table.add_row(entry.tenant, str(entry.total), ", ".join(f"{k} {n}" for k, n in sorted(entry.counts.items())))
    console.print(table)
    for label, problem in failed.items():
        errors.print(f"{label}: not read ({problem})")


@audit_app.command("list")
def audit_list(
    tenant: TenantFilter = None,
    since: Annotated[str | None, typer.Option(help="a duration back (24h, 7d), a date or an ISO datetime")] = None,
    service: Annotated[list[str] | None, typer.Option(help="only these services (repeatable)")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="the newest this many events")] = 200,
    as_json: JsonOption = False,
) -> None:
    """Who changed which principal, scope or assignment, when and from where, across the services."""
    from ops.principals import AUDITED_SERVICES, audit_events, parse_since

    chosen = tuple(service or AUDITED_SERVICES)
    unknown = [name for name in chosen if name not in AUDITED_SERVICES]
    if unknown:
        errors.print(f"no such service: {', '.join(unknown)} (one of {', '.join(AUDITED_SERVICES)})")
        raise typer.Exit(2)
    try:
        start = parse_since(since, now=datetime.now(UTC)) if since else None
    except ValueError as error:
        errors.print(str(error))
        raise typer.Exit(2) from None
    listing = asyncio.run(audit_events(tenant=tenant, since=start, services=chosen, limit=limit))
    if as_json:
        print(json.dumps({"events": [e.as_dict() for e in listing.events], "unreachable": listing.unreachable}))
        return
    table = Table("when", "service", "action", "subject", "tenant", "who", "from", "detail", title="audit")
    for event in listing.events:
        detail = ", ".join(f"{k}={v}" for k, v in event.detail.items() if v is not None)
        table.add_row(
            event.occurred_at.isoformat(timespec="seconds"),
            event.service or "-",
            event.action,
            event.subject,
            event.tenant or "platform",
            event.actor,
            event.origin,
            detail,
        )
    console.print(table)
    for name, problem in listing.unreachable.items():
        errors.print(f"{name}: audit not read ({problem})")


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
