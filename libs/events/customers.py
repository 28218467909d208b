"""Customer events on ``customers.v1``, keyed by customer id: who the customer is and which meterpoints they hold."""

from __future__ import annotations

from datetime import date
from enum import StrEnum
from typing import Annotated, ClassVar

from pydantic import Field, StringConstraints, WithJsonSchema

from libs.events import topics
from libs.events.base import EventData, EventPart
from libs.events.fields import MAX_VERSION, OpaqueId, ShortText
from libs.events.gsrn import Gsrn
from libs.events.parties import MarketParticipantId

EMAIL_PATTERN = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"
PHONE_PATTERN = r"^\+[1-9][0-9]{6,14}$"
POSTCODE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9 -]{1,8}[A-Za-z0-9]$"
COUNTRY_PATTERN = r"^[A-Z]{2}$"

# A plain pattern rather than pydantic's EmailStr: that needs the email-validator package, and a grid operator
# only needs to refuse obvious garbage; the customers service owns the address and its confirmation.
Email = Annotated[
    str,
    StringConstraints(max_length=254, pattern=EMAIL_PATTERN),
    WithJsonSchema({"type": "string", "format": "email", "maxLength": 254, "pattern": EMAIL_PATTERN}),
]
Phone = Annotated[str, StringConstraints(pattern=PHONE_PATTERN)]
"""A phone number in E.164 form, e.g. ``+4512345678``."""
Postcode = Annotated[str, StringConstraints(pattern=POSTCODE_PATTERN)]
"""A postcode as the country writes it, 3-10 letters, digits, spaces or hyphens (``2100``, ``114 55``)."""
CountryCode = Annotated[str, StringConstraints(pattern=COUNTRY_PATTERN)]
"""ISO 3166-1 alpha-2 country code, e.g. ``DK``."""


class CustomerKind(StrEnum):
    """A private person or an organisation (company, housing association, public body)."""

    PERSON = "person"
    ORGANISATION = "organisation"


class Address(EventPart):
    """A postal address."""

    street: ShortText = Field(description="Street, house number and any floor or door, as one line.")
    postcode: Postcode
    city: ShortText
    country: CountryCode


class Contact(EventPart):
    """How to reach the customer; the postal address is always known, e-mail and phone may not be."""

    email: Email | None = None
    phone: Phone | None = Field(default=None, description="E.164, e.g. +4512345678.")
    address: Address


class _CustomerState(EventData):
    # The full state after the change, not a patch: a projection replaces the row without reading it first.
    topic: ClassVar[str] = topics.CUSTOMERS
    subject_field: ClassVar[str] = "customer_id"

    customer_id: OpaqueId
    kind: CustomerKind
    name: ShortText = Field(description="Full name of the person or the organisation.")
    contact: Contact
    version: int = Field(
        ge=1,
        le=MAX_VERSION,
        description="Version of the customer record after this change; consumers skip versions they have passed.",
    )
    # Optional (added after v1 shipped): customers registered before tenancy belong to no grid company, and a
    # consumer built before this field still parses events that leave it out.
    grid_company: MarketParticipantId | None = Field(
        default=None,
        description="The grid company the customer belongs to (the tenant); none for customers from before tenancy.",
    )


class CustomerRegistered(_CustomerState):
    """A new customer was registered (version 1 of the customer record)."""

    event_type: ClassVar[str] = "gridhub.customer.registered"


class CustomerUpdated(_CustomerState):
    """A customer's name, kind or contact details changed; carries the full record at its new version."""

    event_type: ClassVar[str] = "gridhub.customer.updated"


class MeterpointLinked(EventData):
    """A customer moves in at a meterpoint and becomes responsible for its consumption from ``move_in``."""

    event_type: ClassVar[str] = "gridhub.meterpoint.linked"
    topic: ClassVar[str] = topics.CUSTOMERS
    subject_field: ClassVar[str] = "customer_id"

    customer_id: OpaqueId
    meterpoint_id: Gsrn
    move_in: date = Field(description="First day (local calendar date) the customer holds the meterpoint.")


class MeterpointUnlinked(EventData):
    """A customer moves out of a meterpoint; ``move_out`` is the last day they hold it."""

    event_type: ClassVar[str] = "gridhub.meterpoint.unlinked"
    topic: ClassVar[str] = topics.CUSTOMERS
    subject_field: ClassVar[str] = "customer_id"

    customer_id: OpaqueId
    meterpoint_id: Gsrn
    move_out: date = Field(description="Last day (local calendar date) the customer holds the meterpoint.")
