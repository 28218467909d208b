"""Use cases of the work orders service: one function per command or message, dependencies by name.

The ports they need (`WorkOrderStore`, `CustomerDirectory`) are protocols here; `adapters/` implements them over
asyncpg and zeep. Entry points (`api.py`, `consumers.py`, `enricher.py`) build a command, call a handler and map
the outcome: an HTTP status, an ack/nack, a log line.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol
from zoneinfo import ZoneInfo

import orjson

from libs.events import (
    CloudEvent,
    CustomerRegistered,
    CustomerUpdated,
    EventData,
    MeterAlarm,
    MeterAlarmRaised,
    MeterpointLinked,
    MeterpointUnlinked,
    WorkOrderStatus,
    WorkOrderType,
)
from libs.events.gsrn import is_valid_gsrn
from libs.events.meterpoints import MeterpointRegistered, MeterpointUpdated
from libs.flowcontrol.errors import Refused
from libs.platform.tenancy import Principal
from services.workorders import domain
from services.workorders.domain import Command, Customer, CustomerInfo, OpenWorkOrder, Rules, WorkOrder
from services.workorders.metrics import WorkordersMetrics

logger = logging.getLogger(__name__)

Now = Callable[[], datetime]
Build = Callable[[str], tuple[WorkOrder, EventData]]
Change = Callable[[WorkOrder], tuple[WorkOrder, EventData]]
Versions = frozenset[int] | None
"""The versions an ``If-Match`` names; None for ``*`` (any current version will do)."""


class NotFound(LookupError):
    """No work order with that id, or none the caller may see (the same answer: no enumeration)."""

    def __init__(self, work_order_id: str) -> None:
        super().__init__(f"there is no work order {work_order_id}")
        self.work_order_id = work_order_id


class VersionMismatch(Exception):
    """The caller's version (If-Match) is not the current one (HTTP 412)."""

    def __init__(self, current: WorkOrder) -> None:
        super().__init__(f"work order {current.work_order_id} is at version {current.version}")
        self.current = current


class IdempotencyKeyReused(Exception):
    """The idempotency key was used before with a different request (HTTP 422)."""


class ClaimTaken(Exception):
    """The idempotency key was claimed by another request meanwhile; its transaction was rolled back."""


class CustomersUnavailable(Exception):
    """The customers service could not answer now (down, slow, refused by our breaker or bulkhead)."""


class CustomersRefused(Exception):
    """The customers service refused this request for a reason other than an outage; retrying soon won't help."""


@dataclass(frozen=True, slots=True)
class IdempotencyClaim:
    """An ``Idempotency-Key`` of one client and the fingerprint of the request it was sent with."""

    client: str
    key: str
    request_hash: str


@dataclass(frozen=True, slots=True)
class Created:
    """The outcome of a create: the order, and whether it is a replay of an earlier request with the same key."""

    order: WorkOrder
    replayed: bool = False


@dataclass(frozen=True, slots=True)
class ListQuery:
    """Filters and a page of the list of work orders (newest first)."""

    statuses: tuple[WorkOrderStatus, ...] = ()
    types: tuple[WorkOrderType, ...] = ()
    meterpoint_id: str | None = None
    created_from: datetime | None = None
    created_to: datetime | None = None
    limit: int = 50
    after: int | None = None
    """Position of the last order of the previous page (exclusive), from the cursor."""

    def fingerprint(self) -> str:
        """A short hash of the filters (not the page), so a cursor cannot be used with other filters."""
        parts = [
            sorted(self.statuses),
            sorted(self.types),
            self.meterpoint_id,
            self.created_from.isoformat() if self.created_from else None,
            self.created_to.isoformat() if self.created_to else None,
        ]
        return hashlib.blake2b(orjson.dumps(parts), digest_size=6).hexdigest()


@dataclass(frozen=True, slots=True)
class Page:
    """A page of orders and the position to continue after (None on the last page)."""

    orders: Sequence[WorkOrder]
    next_after: int | None


@dataclass(frozen=True, slots=True)
class PendingEnrichment:
    """An order whose customer is still pending."""

    work_order_id: str
    meterpoint_id: str
    created_at: datetime
    attempts: int


class AlarmOutcome(StrEnum):
    """What an alarm that calls for an inspection did (the ``outcome`` of its row in ``work_order_alarms``)."""

    OPENED = "opened"
    # The meterpoint already has an open order for this alarm type: the alarm is recorded against it.
    ATTACHED = "attached"
    # The meterpoint had its limit of alarm orders in the window: recorded, no order opened.
    RATE_LIMITED = "rate_limited"
    # The same alarm id seen before (a redelivery): nothing changes.
    REPEATED = "repeated"


@dataclass(frozen=True, slots=True)
class AlarmLimit:
    """At most ``max_orders`` orders opened from alarms per meterpoint within ``window``."""

    max_orders: int
    window: timedelta


@dataclass(frozen=True, slots=True)
class AlarmResult:
    """An alarm's outcome; ``order`` is the order it opened, ``work_order_id`` the one it opened or joined."""

    outcome: AlarmOutcome
    work_order_id: str | None = None
    order: WorkOrder | None = None


class WorkOrderStore(Protocol):
    """Work orders, idempotency keys and the customer replica in the service's database.

    Every write of an order puts its event into the outbox in the same transaction.
    """

    # ``tenant``: the caller's grid company, None for the platform role (every order, owned or not yet).
    async def get(self, work_order_id: str, tenant: str | None) -> WorkOrder | None: ...
    async def page(self, query: ListQuery, tenant: str | None) -> Page: ...
    async def find_claim(self, client: str, key: str) -> tuple[str, WorkOrder | None] | None: ...
    async def meterpoint_owner(self, meterpoint_id: str) -> str | None: ...
    async def create(self, build: Build, claim: IdempotencyClaim | None, grid_company: str | None) -> WorkOrder: ...
    async def create_for_alarm(
        self, alarm: MeterAlarmRaised, build: Build, limit: AlarmLimit, now: datetime
    ) -> AlarmResult: ...
    async def change(self, work_order_id: str, expected: Versions, change: Change, tenant: str | None) -> WorkOrder: ...
    async def replica_customer(self, meterpoint_id: str, on: date) -> Customer | None: ...
    async def apply_customer_event(self, event: CloudEvent[Any]) -> None: ...
    async def apply_meterpoint_event(self, event: CloudEvent[Any]) -> None: ...
    async def pending_enrichment(self, limit: int) -> list[PendingEnrichment]: ...
    async def enrich(self, work_order_id: str, customer: CustomerInfo) -> bool: ...
    async def postpone_enrichment(self, work_order_id: str, delay: timedelta) -> None: ...
    async def purge_idempotency_keys(self, older_than: timedelta) -> int: ...


class CustomerDirectory(Protocol):
    """Who holds a meterpoint on a date, asked of the customers service."""

    async def customer_at(self, meterpoint_id: str, on: date) -> Customer | None:
        """The customer, or None when nobody holds it; raises `CustomersUnavailable` or `CustomersRefused`."""
        ...


@dataclass
class Context:
    """What the handlers need, built once by the composition root."""

    store: WorkOrderStore
    customers: CustomerDirectory
    rules: Rules
    timezone: ZoneInfo
    now: Now
    on_pending: Callable[[], None] = field(default=lambda: None)
    """Called when an order was stored with its customer pending (wakes the enricher)."""
    metrics: WorkordersMetrics | None = None

    def local_date(self, moment: datetime) -> date:
        """The grid's calendar date of ``moment``."""
        return moment.astimezone(self.timezone).date()


def tenant_of(caller: Principal) -> str | None:
    """The grid company a caller's orders are limited to; None for the platform role (every tenant)."""
    if caller.is_platform:
        return None
    # Every other role has a tenant (Principal refuses one without), so None never widens a scope by mistake.
    assert caller.tenant is not None
    return caller.tenant


def idempotency_client(caller: Principal) -> str:
    """Whose Idempotency-Keys a caller shares: its client system within its tenant (two grid companies may each
    have a client called ``planning``; a replay must never hand one the other's order)."""
    return f"{caller.tenant or 'platform'}/{caller.name}"


def request_hash(command: OpenWorkOrder) -> str:
    """The fingerprint of a create request: its validated content, not its bytes (whitespace does not count)."""
    body = {"meterpoint_id": command.meterpoint_id, "type": str(command.type), "description": command.description}
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


async def look_up_customer(ctx: Context, meterpoint_id: str, on: date) -> CustomerInfo:
    """Ask the customers service; when it cannot answer, a pending customer (provisionally from the replica)."""
    try:
        customer = await ctx.customers.customer_at(meterpoint_id, on)
    except (CustomersUnavailable, CustomersRefused, Refused) as error:
        logger.info("customer of %s pending: %s", meterpoint_id, error)
        return CustomerInfo.pending(await ctx.store.replica_customer(meterpoint_id, on))
    if customer is None:
        return CustomerInfo.vacant(ctx.now())
    return CustomerInfo.known(customer, ctx.now())


async def create_work_order(
    ctx: Context, command: OpenWorkOrder, claim: IdempotencyClaim | None, caller: Principal
) -> Created:
    """Open a work order; a retried request (same client and key, same content) returns the first order.

    The order belongs to the grid company that owns the meterpoint: a tenant's caller may open orders only at its
    own meterpoints (another grid company's and an unknown one are refused alike, as a rule on ``meterpoint_id``);
    the platform may open one at a meterpoint not registered yet (its tenant is filled in when it is). The
    customers service is asked before the transaction (never hold a transaction across a network call), and
    only for a meterpoint the caller may use; a replay found at that point skips the call.
    """
    if claim is not None:
        replay = await _replay(ctx, claim)
        if replay is not None:
            return replay
    grid_company: str | None = None
    if is_valid_gsrn(command.meterpoint_id):  # an invalid one is refused by the domain's rules below
        grid_company = await ctx.store.meterpoint_owner(command.meterpoint_id)
        tenant = tenant_of(caller)
        if tenant is not None and grid_company != tenant:
            message = "is not a meterpoint of your grid company (unknown, or its master data has not arrived)"
            raise domain.InvalidCommand([domain.Violation("meterpoint_id", message)])
    now = ctx.now()
    customer = await look_up_customer(ctx, command.meterpoint_id, ctx.local_date(now))

    def build(work_order_id: str) -> tuple[WorkOrder, EventData]:
        return domain.open_work_order(work_order_id, command, now=now, customer=customer)

    try:
        order = await ctx.store.create(build, claim, grid_company)
    except ClaimTaken:
        # A concurrent request with the same key committed first (its insert made ours wait, then give way).
        assert claim is not None
        replay = await _replay(ctx, claim)
        if replay is None:  # pragma: no cover - the key was there a moment ago and keys are never deleted early
            raise
        return replay
    if customer.status is domain.CustomerStatus.PENDING:
        ctx.on_pending()
    if ctx.metrics is not None:
        ctx.metrics.created.labels(order.origin, customer.status).inc()
    return Created(order)


async def _replay(ctx: Context, claim: IdempotencyClaim) -> Created | None:
    found = await ctx.store.find_claim(claim.client, claim.key)
    if found is None:
        return None
    stored_hash, order = found
    if stored_hash != claim.request_hash:
        raise IdempotencyKeyReused(f"idempotency key {claim.key!r} was used with a different request")
    if order is None:  # pragma: no cover - the key and its order are written in one transaction
        raise NotFound(claim.key)
    return Created(order, replayed=True)


async def get_work_order(ctx: Context, work_order_id: str, caller: Principal) -> WorkOrder:
    """The order, or `NotFound` (also for an order of another grid company)."""
    order = await ctx.store.get(work_order_id, tenant_of(caller))
    if order is None:
        raise NotFound(work_order_id)
    return order


async def list_work_orders(ctx: Context, query: ListQuery, caller: Principal) -> Page:
    """A page of the caller's orders matching ``query``, newest first."""
    return await ctx.store.page(query, tenant_of(caller))


async def change_work_order(
    ctx: Context, work_order_id: str, expected: Versions, command: Command, caller: Principal
) -> WorkOrder:
    """Perform a transition if the caller holds the current version (``expected`` None: any version).

    Raises `NotFound` (also for an order of another grid company), `VersionMismatch` (412),
    `domain.InvalidTransition` (409) or `domain.InvalidCommand` (422), checked in that order: a precondition is
    evaluated before the request's semantics (RFC 9110 13.2.2).
    """
    now = ctx.now()

    def change(order: WorkOrder) -> tuple[WorkOrder, EventData]:
        return domain.apply(order, command, now=now, rules=ctx.rules)

    order = await ctx.store.change(work_order_id, expected, change, tenant_of(caller))
    if ctx.metrics is not None:
        ctx.metrics.transitions.labels(domain.action_of(command)).inc()
    return order


async def on_meter_alarm(
    ctx: Context,
    alarm: MeterAlarmRaised,
    *,
    inspection_alarms: frozenset[MeterAlarm],
    max_age: timedelta,
    limit: AlarmLimit,
) -> AlarmOutcome | None:
    """Open an inspect_meter order for an alarm that calls for one, unless one is open already; the outcome.

    One open order per meterpoint and alarm type: a later alarm of the same type attaches to it, and a meterpoint
    opens at most ``limit.max_orders`` alarm orders per ``limit.window`` (a meter that keeps raising alarms after
    its orders were closed is recorded, not sent a crew each time). Every alarm is recorded once by its id, in
    the same transaction as the order it opens, so a redelivered alarm changes nothing. The customer comes from
    the local replica (no network call inside a consumer) and stays pending until the enricher asks the
    customers service. None: the alarm calls for no inspection (its type, or its age).
    """
    if alarm.alarm not in inspection_alarms:
        return None
    now = ctx.now()
    if now - alarm.raised_at > max_age:
        logger.info("alarm %s is older than %s; no inspection opened", alarm.alarm_id, max_age)
        return None
    command = domain.inspection_for(alarm)
    provisional = await ctx.store.replica_customer(alarm.meterpoint_id, ctx.local_date(alarm.raised_at))
    customer = CustomerInfo.pending(provisional)

    def build(work_order_id: str) -> tuple[WorkOrder, EventData]:
        return domain.open_work_order(work_order_id, command, now=now, customer=customer, alarm=alarm)

    result = await ctx.store.create_for_alarm(alarm, build, limit, now)
    if ctx.metrics is not None:
        ctx.metrics.alarms.labels(result.outcome.value).inc()
    if result.outcome is AlarmOutcome.OPENED:
        ctx.on_pending()
        if ctx.metrics is not None and result.order is not None:
            ctx.metrics.created.labels(result.order.origin, customer.status).inc()
    elif result.outcome is AlarmOutcome.RATE_LIMITED:
        logger.warning(
            "alarm %s (%s) of meterpoint %s: %d alarm orders in the last %s already; recorded, no order opened",
            alarm.alarm_id,
            alarm.alarm,
            alarm.meterpoint_id,
            limit.max_orders,
            limit.window,
        )
    else:
        logger.info("alarm %s %s (work order %s)", alarm.alarm_id, result.outcome.value, result.work_order_id)
    return result.outcome


CUSTOMER_EVENTS = (CustomerRegistered, CustomerUpdated, MeterpointLinked, MeterpointUnlinked)


async def on_customer_event(ctx: Context, event: CloudEvent[Any]) -> None:
    """Keep the local replica of customers and who holds which meterpoint (idempotent per event)."""
    await ctx.store.apply_customer_event(event)


METERPOINT_EVENTS = (MeterpointRegistered, MeterpointUpdated)


async def on_meterpoint_event(ctx: Context, event: CloudEvent[Any]) -> None:
    """Keep the local view of who owns which meterpoint, and so its orders (idempotent; newest version wins)."""
    await ctx.store.apply_meterpoint_event(event)


@dataclass(frozen=True, slots=True)
class EnrichmentRound:
    """What one enrichment round did."""

    enriched: int = 0
    postponed: int = 0
    interrupted: bool = False
    """The customers service became unavailable during the round; the rest waits for the next one."""


async def enrich_pending(ctx: Context, *, batch_size: int, max_backoff: timedelta) -> EnrichmentRound:
    """Ask the customers service for orders whose customer is pending, oldest first.

    An outage ends the round (every other order would fail the same way; the breaker answers at once anyway). A
    refusal of one order (not an outage) postpones that order with exponential backoff.
    """
    enriched = postponed = 0
    for pending in await ctx.store.pending_enrichment(batch_size):
        on = ctx.local_date(pending.created_at)
        try:
            customer = await ctx.customers.customer_at(pending.meterpoint_id, on)
        except (CustomersUnavailable, Refused) as error:
            logger.info("enrichment interrupted: %s", error)
            return EnrichmentRound(enriched, postponed, interrupted=True)
        except CustomersRefused as error:
            delay = min(max_backoff, timedelta(seconds=30) * 2 ** min(pending.attempts, 20))
            logger.warning("customer of %s not available (%s); next try in %s", pending.work_order_id, error, delay)
            await ctx.store.postpone_enrichment(pending.work_order_id, delay)
            postponed += 1
            continue
        info = CustomerInfo.known(customer, ctx.now()) if customer else CustomerInfo.vacant(ctx.now())
        if await ctx.store.enrich(pending.work_order_id, info):
            enriched += 1
    return EnrichmentRound(enriched, postponed)
