"""One plain function per command: the command first, then the store and the caller; a change and its events commit
together.

The store is a port (`CustomerStore`); the PostgreSQL adapter implements it. A unit of work is one database
transaction: the state change and its events (written to the outbox) commit together or not at all.

The caller (a `Caller`: its `Principal`, with role and grid company, and where it called from) scopes every
command: a customer or meterpoint it does not see (`Principal.sees`) raises exactly the `NotFound` of an id that
does not exist, so nobody learns another grid company's ids by probing. Whether the caller's role may run the
operation at all is checked before (soap.py). Changes of an owner or of a meterpoint's data source (scope and
assignment) write an audit event (`libs.platform.audit`) in the transaction of the change.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import date
from typing import Protocol, TypeVar

from libs.events import Address as EventAddress
from libs.events import (
    Connection,
    CustomerRegistered,
    CustomerUpdated,
    DataSource,
    EventData,
    MeterpointLinked,
    MeterpointRegistered,
    MeterpointUnlinked,
    MeterpointUpdated,
)
from libs.events import Contact as EventContact
from libs.platform.audit import Actor, DetailValue
from libs.platform.tenancy import Principal
from services.customers.domain import (
    MAX_LINKS_IN_RESPONSE,
    Conflict,
    Customer,
    CustomerDetails,
    CustomerPage,
    CustomerSearch,
    CustomerWithLinks,
    FindCustomers,
    GetCustomer,
    GetMeterpointCustomer,
    LinkMeterpoint,
    MeterpointHolder,
    MeterpointLink,
    NotAllowed,
    NotFound,
    RegisterCustomer,
    UnlinkMeterpoint,
    UpdateCustomer,
    apply_update,
    close_link,
    new_link,
    owning_tenant,
)
from services.customers.registry import (
    GetMeterpoint,
    ListMeterpoints,
    Meterpoint,
    MeterpointPage,
    RegisterMeterpoint,
    UpdateMeterpoint,
    apply_meterpoint_update,
    check_registration,
)

_Owned = TypeVar("_Owned", Customer, Meterpoint)


@dataclass(frozen=True, slots=True)
class Caller:
    """Who calls (its principal) and from where (its remote address, for the audit trail)."""

    principal: Principal
    origin: str = "unknown"

    @property
    def name(self) -> str:
        return self.principal.name

    @property
    def tenant(self) -> str | None:
        return self.principal.tenant

    @property
    def is_platform(self) -> bool:
        return self.principal.is_platform

    @property
    def scope(self) -> str | None:
        """The grid company whose rows the store returns: the caller's own, or None (every row) for the platform."""
        return None if self.principal.is_platform else self.principal.tenant

    def sees(self, tenant: str | None) -> bool:
        """`Principal.sees`: the one tenant test."""
        return self.principal.sees(tenant)

    def actor(self) -> Actor:
        """The caller as the audit trail names it."""
        return Actor.of_principal(self.principal, origin=self.origin)


class StoreUnavailable(Exception):
    """The database did not answer in time or at all; retrying later may help (Server.Unavailable)."""


class UnitOfWork(Protocol):
    """The writes of one transaction; leaving the block commits, an exception rolls everything back."""

    async def new_customer_id(self) -> str: ...

    async def insert_customer(self, customer: Customer) -> None: ...

    async def lock_customer(self, customer_id: str, grid_company: str | None) -> Customer | None:
        """The customer if it belongs to ``grid_company`` (None: to any), locked until commit: writers of one customer
        (one Kafka key) go one at a time. Another grid company's row is neither returned nor locked."""
        ...

    async def save_customer(self, customer: Customer) -> None: ...

    async def links_reaching(self, meterpoint_id: str, day: date) -> list[MeterpointLink]:
        """Links of the meterpoint that are open or end on or after ``day``."""
        ...

    async def insert_link(self, link: MeterpointLink) -> None:
        """Store a link; raises `Conflict` when PostgreSQL finds an overlap the check before missed (a race)."""
        ...

    async def lock_open_link(self, customer_id: str, meterpoint_id: str) -> MeterpointLink | None: ...

    async def save_move_out(self, link: MeterpointLink) -> None: ...

    async def insert_meterpoint(self, meterpoint: Meterpoint) -> bool:
        """Store a new meterpoint; False (nothing stored) when its id is registered already."""
        ...

    async def lock_meterpoint(self, meterpoint_id: str, grid_company: str | None) -> Meterpoint | None:
        """The meterpoint if it belongs to ``grid_company`` (None: to any), locked until commit (its writers, one
        Kafka key, go one at a time)."""
        ...

    async def share_meterpoint(self, meterpoint_id: str, grid_company: str | None) -> Meterpoint | None:
        """The meterpoint if it belongs to ``grid_company`` (None: to any), kept from changing until commit (a link
        reads its grid company)."""
        ...

    async def save_meterpoint(self, meterpoint: Meterpoint) -> None: ...

    async def audit(
        self, actor: Actor, action: str, subject: str, tenant: str | None, detail: Mapping[str, DetailValue]
    ) -> None:
        """Write an audit event (`libs.platform.audit.record_audit`), in this transaction."""
        ...

    async def publish(self, events: Sequence[EventData]) -> None:
        """Write events to the outbox, in this transaction."""
        ...


class CustomerStore(Protocol):
    """Reads, and units of work for changes."""

    def unit_of_work(self) -> AbstractAsyncContextManager[UnitOfWork]: ...

    async def get_customer(self, customer_id: str, grid_company: str | None) -> Customer | None:
        """The customer if it belongs to ``grid_company`` (None: to any)."""
        ...

    async def links_of_customer(self, customer_id: str, limit: int) -> list[MeterpointLink]: ...

    async def find_customers(self, search: CustomerSearch, grid_company: str | None) -> tuple[list[Customer], int]:
        """A page of matches and the total; of one grid company, or of all for None (the platform)."""
        ...

    async def holder_on(self, meterpoint_id: str, day: date, grid_company: str | None) -> MeterpointHolder | None:
        """Who holds the meterpoint on ``day``, if that customer belongs to ``grid_company`` (None: to any)."""
        ...

    async def get_meterpoint(self, meterpoint_id: str, grid_company: str | None) -> Meterpoint | None:
        """The meterpoint if it belongs to ``grid_company`` (None: to any)."""
        ...

    async def list_meterpoints(
        self, grid_company: str | None, grid_area: str | None, after: str | None, limit: int
    ) -> list[Meterpoint]:
        """Up to ``limit`` meterpoints in id order after ``after``; of one grid company, or of all for None."""
        ...


def _contact_event(details: CustomerDetails) -> EventContact:
    contact = details.contact
    address = contact.address
    return EventContact(
        email=contact.email,
        phone=contact.phone,
        address=EventAddress(
            street=address.street, postcode=address.postcode, city=address.city, country=address.country
        ),
    )


def _not_found(customer_id: str) -> NotFound:
    return NotFound(f"there is no customer {customer_id}", reason="customer_not_found")


def _no_meterpoint(meterpoint_id: str) -> NotFound:
    return NotFound(f"there is no meterpoint {meterpoint_id}", reason="meterpoint_not_found")


def _visible(record: _Owned | None, caller: Caller) -> _Owned | None:
    """``record`` when the caller may see it; None (as if it did not exist) otherwise.

    The store already filters by `Caller.scope` in the statement that finds the row (so another grid company's row
    is never locked, and its answer takes the time of a missing one); this is the same rule, checked once more."""
    return record if record is not None and caller.sees(record.grid_company) else None


def _may_reassign(caller: Caller, grid_company: str | None, current: str | None) -> None:
    """Only the platform moves a record to another grid company (or adopts one from before tenancy)."""
    if grid_company is not None and grid_company != current and not caller.is_platform:
        message = f"client {caller.name} cannot move records to another grid company"
        raise NotAllowed(message, reason="other_grid_company")


def _customer_event(
    event_type: type[CustomerRegistered] | type[CustomerUpdated], customer: Customer
) -> CustomerRegistered | CustomerUpdated:
    details = customer.details
    return event_type(
        customer_id=customer.customer_id,
        kind=details.kind,
        name=details.name,
        contact=_contact_event(details),
        version=customer.version,
        grid_company=customer.grid_company,
    )


async def register_customer(command: RegisterCustomer, store: CustomerStore, caller: Caller) -> Customer:
    owner = owning_tenant(caller.principal, command.grid_company)
    async with store.unit_of_work() as uow:
        customer = Customer(await uow.new_customer_id(), command.details, version=1, grid_company=owner)
        await uow.insert_customer(customer)
        await uow.publish([_customer_event(CustomerRegistered, customer)])
    return customer


async def get_customer(command: GetCustomer, store: CustomerStore, caller: Caller) -> CustomerWithLinks:
    customer = _visible(await store.get_customer(command.customer_id, caller.scope), caller)
    if customer is None:
        raise _not_found(command.customer_id)
    links = await store.links_of_customer(command.customer_id, MAX_LINKS_IN_RESPONSE + 1)
    return CustomerWithLinks(customer, tuple(links[:MAX_LINKS_IN_RESPONSE]), len(links) > MAX_LINKS_IN_RESPONSE)


async def update_customer(command: UpdateCustomer, store: CustomerStore, caller: Caller) -> Customer:
    async with store.unit_of_work() as uow:
        current = _visible(await uow.lock_customer(command.customer_id, caller.scope), caller)
        if current is None:
            raise _not_found(command.customer_id)
        _may_reassign(caller, command.grid_company, current.grid_company)
        updated = apply_update(current, command.expected_version, command.details, command.grid_company)
        if updated is None:
            return current  # nothing changed: no new version, no event
        await uow.save_customer(updated)
        await uow.publish([_customer_event(CustomerUpdated, updated)])
        if updated.grid_company != current.grid_company:
            detail = {"from_grid_company": current.grid_company, "version": updated.version}
            await uow.audit(caller.actor(), "customer.move", updated.customer_id, updated.grid_company, detail)
    return updated


async def find_customers(command: FindCustomers, store: CustomerStore, caller: Caller) -> CustomerPage:
    search = command.search
    customers, total = await store.find_customers(search, caller.scope)
    return CustomerPage(tuple(customers), search.page_number, search.page_size, total)


async def link_meterpoint(command: LinkMeterpoint, store: CustomerStore, caller: Caller) -> MeterpointLink:
    candidate = MeterpointLink(command.customer_id, command.meterpoint_id, command.move_in)
    async with store.unit_of_work() as uow:
        customer = _visible(await uow.lock_customer(command.customer_id, caller.scope), caller)
        if customer is None:
            raise _not_found(command.customer_id)
        meterpoint = _visible(await uow.share_meterpoint(command.meterpoint_id, caller.scope), caller)
        if meterpoint is None:
            raise _no_meterpoint(command.meterpoint_id)
        if meterpoint.grid_company != customer.grid_company:
            # Only the platform sees both sides of such a pair; a tenant's client never gets here.
            raise Conflict(
                f"customer {customer.customer_id} and meterpoint {meterpoint.meterpoint_id} belong to different "
                "grid companies",
                reason="other_grid_company",
            )
        link = new_link(candidate, await uow.links_reaching(command.meterpoint_id, command.move_in))
        if link is None:
            return candidate  # the same link exists already (a retried request)
        await uow.insert_link(link)
        event = MeterpointLinked(customer_id=link.customer_id, meterpoint_id=link.meterpoint_id, move_in=link.move_in)
        await uow.publish([event])
    return link


async def unlink_meterpoint(command: UnlinkMeterpoint, store: CustomerStore, caller: Caller) -> MeterpointLink:
    async with store.unit_of_work() as uow:
        if _visible(await uow.lock_customer(command.customer_id, caller.scope), caller) is None:
            raise _not_found(command.customer_id)
        open_link = await uow.lock_open_link(command.customer_id, command.meterpoint_id)
        if open_link is None:
            raise NotFound(
                f"customer {command.customer_id} has no open link to meterpoint {command.meterpoint_id}",
                reason="link_not_found",
            )
        closed = close_link(open_link, command.move_out)
        await uow.save_move_out(closed)
        assert closed.move_out is not None
        event = MeterpointUnlinked(
            customer_id=closed.customer_id, meterpoint_id=closed.meterpoint_id, move_out=closed.move_out
        )
        await uow.publish([event])
    return closed


async def get_meterpoint_customer(
    command: GetMeterpointCustomer, store: CustomerStore, caller: Caller
) -> MeterpointHolder:
    holder = await store.holder_on(command.meterpoint_id, command.on_date, caller.scope)
    if holder is None or not caller.sees(holder.customer.grid_company):
        raise NotFound(
            f"nobody holds meterpoint {command.meterpoint_id} on {command.on_date.isoformat()}",
            reason="no_customer_on_date",
        )
    return holder


# --- meterpoint master data ---------------------------------------------------------------------------------------


def _meterpoint_event(
    event_type: type[MeterpointRegistered] | type[MeterpointUpdated], meterpoint: Meterpoint
) -> MeterpointRegistered | MeterpointUpdated:
    spec = meterpoint.spec
    source = spec.data_source
    return event_type(
        meterpoint_id=meterpoint.meterpoint_id,
        grid_company=meterpoint.grid_company,
        grid_area=spec.grid_area,
        time_zone=spec.time_zone,
        type=spec.type,
        neighbour_grid_area=spec.neighbour_grid_area,
        resolution=spec.resolution,
        settlement_method=spec.settlement_method,
        connection=Connection(state=spec.connection_state, since=spec.connection_since),
        data_source=None if source is None else DataSource(kind=source.kind, id=source.id),
        version=meterpoint.version,
    )


async def register_meterpoint(command: RegisterMeterpoint, store: CustomerStore, caller: Caller) -> Meterpoint:
    owner = owning_tenant(caller.principal, command.grid_company)
    candidate = Meterpoint(command.meterpoint_id, owner, command.spec, 1)
    event = _meterpoint_event(MeterpointRegistered, candidate)  # built first: a record it refuses is never stored
    async with store.unit_of_work() as uow:
        if await uow.insert_meterpoint(candidate):
            await uow.publish([event])
            detail = {"data_source": _source_text(candidate), "version": 1}
            await uow.audit(caller.actor(), "meterpoint.register", candidate.meterpoint_id, owner, detail)
            return candidate
    # Registered already, by whoever: compared, never shown (and read without a lock on another grid company's row).
    existing = await store.get_meterpoint(command.meterpoint_id, None)
    if existing is None:  # unreachable while nothing deletes meterpoints; kept so a deletion cannot crash this
        raise _no_meterpoint(command.meterpoint_id)
    return check_registration(existing, candidate)


async def update_meterpoint(command: UpdateMeterpoint, store: CustomerStore, caller: Caller) -> Meterpoint:
    async with store.unit_of_work() as uow:
        current = _visible(await uow.lock_meterpoint(command.meterpoint_id, caller.scope), caller)
        if current is None:
            raise _no_meterpoint(command.meterpoint_id)
        _may_reassign(caller, command.grid_company, current.grid_company)
        updated = apply_meterpoint_update(current, command.expected_version, command.grid_company, command.spec)
        if updated is None:
            return current  # nothing changed: no new version, no event
        event = _meterpoint_event(MeterpointUpdated, updated)
        await uow.save_meterpoint(updated)
        await uow.publish([event])
        await _audit_scope(uow, caller, current, updated)
    return updated


def _source_text(meterpoint: Meterpoint) -> str | None:
    source = meterpoint.spec.data_source
    return None if source is None else f"{source.kind.value}:{source.id}"


async def _audit_scope(uow: UnitOfWork, caller: Caller, before: Meterpoint, after: Meterpoint) -> None:
    """Audit what changes who may deliver or see the meterpoint: its data source and its owner."""
    subject, version = after.meterpoint_id, after.version
    if before.spec.data_source != after.spec.data_source:
        detail: dict[str, DetailValue] = {
            "data_source": _source_text(after),
            "previous_data_source": _source_text(before),
            "version": version,
        }
        await uow.audit(caller.actor(), "meterpoint.assign", subject, after.grid_company, detail)
    if before.grid_company != after.grid_company:
        detail = {"from_grid_company": before.grid_company, "version": version}
        await uow.audit(caller.actor(), "meterpoint.move", subject, after.grid_company, detail)


async def get_meterpoint(command: GetMeterpoint, store: CustomerStore, caller: Caller) -> Meterpoint:
    meterpoint = _visible(await store.get_meterpoint(command.meterpoint_id, caller.scope), caller)
    if meterpoint is None:
        raise _no_meterpoint(command.meterpoint_id)
    return meterpoint


async def list_meterpoints(command: ListMeterpoints, store: CustomerStore, caller: Caller) -> MeterpointPage:
    if caller.is_platform:
        grid_company = command.grid_company
    elif command.grid_company not in (None, caller.tenant):
        return MeterpointPage((), None)  # another grid company's list: nothing of it is visible
    else:
        grid_company = caller.tenant
    found = await store.list_meterpoints(grid_company, command.grid_area, command.after, command.page_size + 1)
    page = tuple(found[: command.page_size])
    more = len(found) > command.page_size
    return MeterpointPage(page, page[-1].meterpoint_id if more else None)
