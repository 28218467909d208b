"""One plain function per command: the command first, the store by name; every change and its events commit together.

The store is a port (`CustomerStore`); the PostgreSQL adapter implements it. A unit of work is one database
transaction: the state change and its events (written to the outbox) commit together or not at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from datetime import date
from typing import Protocol

from libs.events import Address as EventAddress
from libs.events import Contact as EventContact
from libs.events import (
    CustomerRegistered,
    CustomerUpdated,
    EventData,
    MeterpointLinked,
    MeterpointUnlinked,
)
from services.customers.domain import (
    MAX_LINKS_IN_RESPONSE,
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
    NotFound,
    RegisterCustomer,
    UnlinkMeterpoint,
    UpdateCustomer,
    apply_update,
    close_link,
    new_link,
)


class StoreUnavailable(Exception):
    """The database did not answer in time or at all; retrying later may help (Server.Unavailable)."""


class UnitOfWork(Protocol):
    """The writes of one transaction; leaving the block commits, an exception rolls everything back."""

    async def new_customer_id(self) -> str: ...

    async def insert_customer(self, customer: Customer) -> None: ...

    async def lock_customer(self, customer_id: str) -> Customer | None:
        """The customer, locked until commit: writers of one customer (one Kafka key) go one at a time."""
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

    async def publish(self, events: Sequence[EventData]) -> None:
        """Write events to the outbox, in this transaction."""
        ...


class CustomerStore(Protocol):
    """Reads, and units of work for changes."""

    def unit_of_work(self) -> AbstractAsyncContextManager[UnitOfWork]: ...

    async def get_customer(self, customer_id: str) -> Customer | None: ...

    async def links_of_customer(self, customer_id: str, limit: int) -> list[MeterpointLink]: ...

    async def find_customers(self, search: CustomerSearch) -> tuple[list[Customer], int]: ...

    async def holder_on(self, meterpoint_id: str, day: date) -> MeterpointHolder | None: ...


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


async def register_customer(command: RegisterCustomer, store: CustomerStore) -> Customer:
    async with store.unit_of_work() as uow:
        customer = Customer(await uow.new_customer_id(), command.details, version=1)
        await uow.insert_customer(customer)
        details = customer.details
        event = CustomerRegistered(
            customer_id=customer.customer_id,
            kind=details.kind,
            name=details.name,
            contact=_contact_event(details),
            version=customer.version,
        )
        await uow.publish([event])
    return customer


async def get_customer(command: GetCustomer, store: CustomerStore) -> CustomerWithLinks:
    customer = await store.get_customer(command.customer_id)
    if customer is None:
        raise _not_found(command.customer_id)
    links = await store.links_of_customer(command.customer_id, MAX_LINKS_IN_RESPONSE + 1)
    return CustomerWithLinks(customer, tuple(links[:MAX_LINKS_IN_RESPONSE]), len(links) > MAX_LINKS_IN_RESPONSE)


async def update_customer(command: UpdateCustomer, store: CustomerStore) -> Customer:
    async with store.unit_of_work() as uow:
        current = await uow.lock_customer(command.customer_id)
        if current is None:
            raise _not_found(command.customer_id)
        updated = apply_update(current, command.expected_version, command.details)
        if updated is None:
            return current  # nothing changed: no new version, no event
        await uow.save_customer(updated)
        details = updated.details
        event = CustomerUpdated(
            customer_id=updated.customer_id,
            kind=details.kind,
            name=details.name,
            contact=_contact_event(details),
            version=updated.version,
        )
        await uow.publish([event])
    return updated


async def find_customers(command: FindCustomers, store: CustomerStore) -> CustomerPage:
    search = command.search
    customers, total = await store.find_customers(search)
    return CustomerPage(tuple(customers), search.page_number, search.page_size, total)


async def link_meterpoint(command: LinkMeterpoint, store: CustomerStore) -> MeterpointLink:
    candidate = MeterpointLink(command.customer_id, command.meterpoint_id, command.move_in)
    async with store.unit_of_work() as uow:
        if await uow.lock_customer(command.customer_id) is None:
            raise _not_found(command.customer_id)
        link = new_link(candidate, await uow.links_reaching(command.meterpoint_id, command.move_in))
        if link is None:
            return candidate  # the same link exists already (a retried request)
        await uow.insert_link(link)
        event = MeterpointLinked(customer_id=link.customer_id, meterpoint_id=link.meterpoint_id, move_in=link.move_in)
        await uow.publish([event])
    return link


async def unlink_meterpoint(command: UnlinkMeterpoint, store: CustomerStore) -> MeterpointLink:
    async with store.unit_of_work() as uow:
        if await uow.lock_customer(command.customer_id) is None:
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


async def get_meterpoint_customer(command: GetMeterpointCustomer, store: CustomerStore) -> MeterpointHolder:
    holder = await store.holder_on(command.meterpoint_id, command.on_date)
    if holder is None:
        raise NotFound(
            f"nobody holds meterpoint {command.meterpoint_id} on {command.on_date.isoformat()}",
            reason="no_customer_on_date",
        )
    return holder
