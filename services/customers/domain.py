"""Customers and who is at which meterpoint when: the rules, with no I/O.

Input arrives as raw strings (from the SOAP codec); the functions here validate and normalise them into typed
values or raise `InvalidRequest` listing every violation at once, so a caller fixes a request in one round trip.
Field names in violations are the element paths of the WSDL (``contact.address.postcode``).

Every customer belongs to one grid company (``grid_company``, the tenant), the one of the client that registered
it; customers from before tenancy belong to none and only the platform sees them. Whether a caller sees a record
is `libs.platform.tenancy.Principal.sees`, and a record it does not see is answered like one that does not exist.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date

from libs.events.customers import CustomerKind
from libs.events.gsrn import GSRN_LENGTH, gsrn_check_digit
from libs.events.parties import eic_check_character, gln_check_digit, is_valid_eic, is_valid_gln
from libs.platform.tenancy import Principal

CUSTOMER_ID_PREFIX = "C-"
CUSTOMER_ID_PATTERN = re.compile(r"C-[0-9]{6,12}")
MAX_LINKS_IN_RESPONSE = 500
MAX_TEXT = 200
MAX_PAGE_SIZE = 100
MAX_PAGE_NUMBER = 1000
DEFAULT_PAGE_SIZE = 20
MIN_NAME_SEARCH = 2

# The same rules as the event contract (libs.events.customers), so an accepted customer always makes a valid event.
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
_E164 = re.compile(r"\+[1-9][0-9]{6,14}")
_PHONE_SEPARATORS = str.maketrans("", "", " -.()/")
_COUNTRY = re.compile(r"[A-Z]{2}")
_GENERIC_POSTCODE = re.compile(r"[A-Z0-9][A-Z0-9 -]{1,8}[A-Z0-9]")


@dataclass(frozen=True, slots=True)
class _PostcodeRule:
    pattern: re.Pattern[str]
    template: str
    example: str


# Countries whose format we know; any other country gets the generic rule (3-10 letters, digits, spaces, dashes).
# Danish postcodes first: the operator's customers live in Denmark, the others are neighbours' formats.
POSTCODE_RULES: dict[str, _PostcodeRule] = {
    "DK": _PostcodeRule(re.compile(r"([0-9]{4})"), "{0}", "8000"),
    "NO": _PostcodeRule(re.compile(r"([0-9]{4})"), "{0}", "0150"),
    "DE": _PostcodeRule(re.compile(r"([0-9]{5})"), "{0}", "24937"),
    "FI": _PostcodeRule(re.compile(r"([0-9]{5})"), "{0}", "00100"),
    "SE": _PostcodeRule(re.compile(r"([0-9]{3}) ?([0-9]{2})"), "{0} {1}", "114 55"),
    "NL": _PostcodeRule(re.compile(r"([1-9][0-9]{3}) ?([A-Z]{2})"), "{0} {1}", "1012 AB"),
}


# --- errors -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Violation:
    """One broken rule: the field (element path) and a readable message that never echoes the value."""

    field: str
    message: str


class DomainError(Exception):
    """A request the rules refuse; ``reason`` is a stable code for clients, the message is for people."""

    reason = "domain_error"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason


class InvalidRequest(DomainError):
    """The request breaks format or value rules; every violation is listed."""

    reason = "invalid_request"

    def __init__(self, violations: Iterable[Violation], *, reason: str | None = None) -> None:
        self.violations = tuple(violations)
        summary = "; ".join(f"{v.field}: {v.message}" for v in self.violations[:5])
        more = len(self.violations) - 5
        super().__init__(f"invalid request: {summary}" + (f" (and {more} more)" if more > 0 else ""), reason=reason)


class NotFound(DomainError):
    """The customer or link does not exist."""

    reason = "not_found"


class NotAllowed(DomainError):
    """The caller's role or grid company does not allow this (Client.Authorization); never says whether an id exists."""

    reason = "not_allowed"


class Conflict(DomainError):
    """The request contradicts the current state (stale version, overlapping period)."""

    reason = "conflict"

    def __init__(self, message: str, *, reason: str | None = None, current_version: int | None = None) -> None:
        super().__init__(message, reason=reason)
        self.current_version = current_version


# --- values -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Address:
    street: str
    postcode: str
    city: str
    country: str


@dataclass(frozen=True, slots=True)
class Contact:
    email: str | None
    phone: str | None
    address: Address


@dataclass(frozen=True, slots=True)
class CustomerDetails:
    """What a client may set: kind, name and contact (the id and version belong to the service)."""

    kind: CustomerKind
    name: str
    contact: Contact


@dataclass(frozen=True, slots=True)
class Customer:
    customer_id: str
    details: CustomerDetails
    version: int
    grid_company: str | None = None
    """The tenant that owns the customer; None for customers registered before tenancy (platform only)."""


@dataclass(frozen=True, slots=True)
class MeterpointLink:
    """The customer holds the meterpoint from ``move_in`` to ``move_out``, both days included (None: open)."""

    customer_id: str
    meterpoint_id: str
    move_in: date
    move_out: date | None = None

    def covers(self, day: date) -> bool:
        """True when the customer holds the meterpoint on ``day``."""
        return self.move_in <= day and (self.move_out is None or day <= self.move_out)

    def overlaps(self, other: MeterpointLink) -> bool:
        """True when both periods share at least one day (and so cannot both hold one meterpoint)."""
        ends_before_other = self.move_out is not None and self.move_out < other.move_in
        starts_after_other = other.move_out is not None and other.move_out < self.move_in
        return not (ends_before_other or starts_after_other)


@dataclass(frozen=True, slots=True)
class DetailsInput:
    """Raw customer details as a client sent them (strings, optional parts None)."""

    kind: str
    name: str
    email: str | None
    phone: str | None
    street: str
    postcode: str
    city: str
    country: str


# --- commands and results -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RegisterCustomer:
    details: CustomerDetails
    grid_company: str | None = None
    """The owner asked for: None means the caller's own grid company (the platform must name one)."""


@dataclass(frozen=True, slots=True)
class GetCustomer:
    customer_id: str


@dataclass(frozen=True, slots=True)
class UpdateCustomer:
    customer_id: str
    expected_version: int
    details: CustomerDetails
    grid_company: str | None = None
    """None keeps the owner; another owner only the platform may give (e.g. to adopt a customer from before tenancy)."""


@dataclass(frozen=True, slots=True)
class CustomerSearch:
    """Validated search criteria: a LIKE-ready name fragment and/or a postcode key (upper case, no spaces)."""

    name_contains: str | None
    postcode_key: str | None
    page_number: int
    page_size: int

    @property
    def offset(self) -> int:
        return (self.page_number - 1) * self.page_size


@dataclass(frozen=True, slots=True)
class FindCustomers:
    search: CustomerSearch


@dataclass(frozen=True, slots=True)
class LinkMeterpoint:
    customer_id: str
    meterpoint_id: str
    move_in: date


@dataclass(frozen=True, slots=True)
class UnlinkMeterpoint:
    customer_id: str
    meterpoint_id: str
    move_out: date


@dataclass(frozen=True, slots=True)
class GetMeterpointCustomer:
    meterpoint_id: str
    on_date: date


@dataclass(frozen=True, slots=True)
class CustomerWithLinks:
    customer: Customer
    links: tuple[MeterpointLink, ...]
    truncated: bool


@dataclass(frozen=True, slots=True)
class CustomerPage:
    customers: tuple[Customer, ...]
    page_number: int
    page_size: int
    total: int


@dataclass(frozen=True, slots=True)
class MeterpointHolder:
    customer: Customer
    link: MeterpointLink


# --- validation ---------------------------------------------------------------------------------------------------


class _Violations:
    def __init__(self) -> None:
        self.found: list[Violation] = []

    def add(self, field: str, message: str) -> None:
        self.found.append(Violation(field, message))

    def raise_if_any(self) -> None:
        if self.found:
            raise InvalidRequest(self.found)


def _has_control_characters(value: str) -> bool:
    return any(unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp") for char in value)


def _text(value: str, field: str, found: _Violations) -> str:
    text = value.strip()
    if not text:
        found.add(field, "must not be empty or blank")
    elif len(text) > MAX_TEXT:
        found.add(field, f"must be at most {MAX_TEXT} characters")
    elif _has_control_characters(text):
        found.add(field, "must not contain control characters or line breaks")
    return text


def normalise_email(value: str) -> str:
    """``local@domain.tld`` with the domain in lower case; ValueError when it is no plausible address."""
    email = value.strip()
    if len(email) > 254 or not _EMAIL.fullmatch(email):
        raise ValueError("must be an e-mail address like name@example.dk")
    local, _, domain = email.rpartition("@")
    return f"{local}@{domain.lower()}"


def normalise_phone(value: str) -> str:
    """E.164 (``+4520123456``): separators removed, a leading ``00`` read as ``+``; ValueError otherwise."""
    phone = value.strip().translate(_PHONE_SEPARATORS)
    if phone.startswith("00"):
        phone = "+" + phone[2:]
    if not _E164.fullmatch(phone):
        raise ValueError("must be an international number in E.164 form, e.g. +4520123456")
    return phone


def normalise_postcode(postcode: str, country: str) -> str:
    """The postcode written the way ``country`` writes it; ValueError naming the expected format otherwise."""
    text = " ".join(postcode.upper().split())
    rule = POSTCODE_RULES.get(country)
    if rule is not None:
        match = rule.pattern.fullmatch(text)
        if match is None:
            raise ValueError(f"is not a valid {country} postcode (expected e.g. {rule.example})")
        return rule.template.format(*match.groups())
    if not _GENERIC_POSTCODE.fullmatch(text):
        raise ValueError("must be 3-10 letters, digits, spaces or dashes, starting and ending with a letter or digit")
    return text


def postcode_key(postcode: str) -> str:
    """The form postcodes are searched by: upper case without spaces (``114 55`` and ``11455`` match)."""
    return "".join(postcode.upper().split())


def validate_details(raw: DetailsInput, *, prefix: str = "") -> CustomerDetails:
    """Validate and normalise customer details; raise `InvalidRequest` with every violation."""
    found = _Violations()
    try:
        kind = CustomerKind(raw.kind.strip())
    except ValueError:
        found.add(f"{prefix}kind", "must be 'person' or 'organisation'")
        kind = CustomerKind.PERSON
    name = _text(raw.name, f"{prefix}name", found)
    email = phone = None
    if raw.email is not None and raw.email.strip():
        try:
            email = normalise_email(raw.email)
        except ValueError as error:
            found.add(f"{prefix}contact.email", str(error))
    if raw.phone is not None and raw.phone.strip():
        try:
            phone = normalise_phone(raw.phone)
        except ValueError as error:
            found.add(f"{prefix}contact.phone", str(error))
    where = f"{prefix}contact.address."
    street = _text(raw.street, f"{where}street", found)
    city = _text(raw.city, f"{where}city", found)
    country = raw.country.strip()
    postcode = raw.postcode
    if not _COUNTRY.fullmatch(country):
        found.add(f"{where}country", "must be an ISO 3166-1 alpha-2 code in upper case, e.g. DK")
    else:
        try:
            postcode = normalise_postcode(raw.postcode, country)
        except ValueError as error:
            found.add(f"{where}postcode", str(error))
    found.raise_if_any()
    return CustomerDetails(kind, name, Contact(email, phone, Address(street, postcode, city, country)))


def validate_customer_id(value: str, field: str = "customerId") -> str:
    """A customer id as this service assigns them (``C-`` and 6-12 digits)."""
    customer_id = value.strip()
    if not CUSTOMER_ID_PATTERN.fullmatch(customer_id):
        raise InvalidRequest([Violation(field, "must be a customer id like C-100234")])
    return customer_id


def format_customer_id(number: int) -> str:
    """The customer id of the ``number``-th customer (from the database sequence)."""
    return f"{CUSTOMER_ID_PREFIX}{number:06d}"


def validate_meterpoint_id(value: str, field: str = "meterpointId") -> str:
    """A GSRN-18 with a correct GS1 check digit; the message says which digit was expected."""
    gsrn = value.strip()
    if len(gsrn) != GSRN_LENGTH or not (gsrn.isascii() and gsrn.isdigit()):
        raise InvalidRequest([Violation(field, "must be a GSRN of exactly 18 digits")])
    expected = gsrn_check_digit(gsrn[:17])
    if int(gsrn[17]) != expected:
        message = f"GSRN check digit is {gsrn[17]} but the GS1 mod-10 check digit of the first 17 digits is {expected}"
        raise InvalidRequest([Violation(field, message)])
    return gsrn


def validate_grid_company(value: str, field: str = "gridCompany") -> str:
    """A market participant id (GLN-13 or EIC-16) with a correct check character; the message says which is wrong."""
    text = value.strip()
    if len(text) == 13 and text.isascii() and text.isdigit():
        if not is_valid_gln(text):
            expected = gln_check_digit(text[:12])
            message = f"GLN check digit is {text[12]} but the GS1 mod-10 check digit of the first 12 is {expected}"
            raise InvalidRequest([Violation(field, message)])
        return text
    if len(text) == 16 and not is_valid_eic(text):
        try:
            expected_char = eic_check_character(text[:15])
        except ValueError:
            raise InvalidRequest([Violation(field, "an EIC has only 0-9, A-Z and '-'")]) from None
        message = f"EIC check character is {text[15]!r} but the first 15 characters give {expected_char!r}"
        raise InvalidRequest([Violation(field, message)])
    if not is_valid_eic(text):
        raise InvalidRequest([Violation(field, "must be a grid company's GLN-13 or EIC-16 (market participant id)")])
    return text


def owning_tenant(caller: Principal, requested: str | None, field: str = "gridCompany") -> str:
    """The grid company a new record belongs to: the caller's own; the platform names one, nobody names another."""
    if requested is None:
        if caller.tenant is None:
            raise InvalidRequest([Violation(field, "the platform operator names the grid company of the record")])
        return caller.tenant
    if not caller.is_platform and requested != caller.tenant:
        raise NotAllowed(
            f"client {caller.name} acts for grid company {caller.tenant} only", reason="other_grid_company"
        )
    return requested


def parse_date(value: str, field: str) -> date:
    """A calendar date ``YYYY-MM-DD`` (the schema checks the shape; this catches impossible days)."""
    try:
        return date.fromisoformat(value.strip())
    except ValueError:
        raise InvalidRequest([Violation(field, "must be a real calendar date, YYYY-MM-DD")]) from None


def customer_search(name: str | None, postcode: str | None, page_number: int, page_size: int) -> CustomerSearch:
    """Validate FindCustomers criteria: at least one of name (2+ characters) and postcode; bounded pages."""
    found = _Violations()
    name_contains = postcode_search = None
    if name is not None and name.strip():
        name_contains = name.strip()
        if len(name_contains) < MIN_NAME_SEARCH:
            found.add("name", f"must have at least {MIN_NAME_SEARCH} characters")
        elif len(name_contains) > MAX_TEXT or _has_control_characters(name_contains):
            found.add("name", f"must be at most {MAX_TEXT} characters without control characters")
    if postcode is not None and postcode.strip():
        postcode_search = postcode_key(postcode)
        if not _GENERIC_POSTCODE.fullmatch(postcode_search):
            found.add("postcode", "must be 3-10 letters, digits or dashes")
    if name_contains is None and postcode_search is None:
        found.add("name", "give a name, a postcode or both")
    if not 1 <= page_number <= MAX_PAGE_NUMBER:
        found.add("pageNumber", f"must be between 1 and {MAX_PAGE_NUMBER}")
    if not 1 <= page_size <= MAX_PAGE_SIZE:
        found.add("pageSize", f"must be between 1 and {MAX_PAGE_SIZE}")
    found.raise_if_any()
    return CustomerSearch(name_contains, postcode_search, page_number, page_size)


# --- rules on state -----------------------------------------------------------------------------------------------


def apply_update(
    current: Customer, expected_version: int, details: CustomerDetails, grid_company: str | None = None
) -> Customer | None:
    """The customer after the update, or None when nothing changes; `Conflict` when the version is stale.

    ``grid_company`` None keeps the owner (the caller checked it may give another one)."""
    if current.version != expected_version:
        raise Conflict(
            f"customer {current.customer_id} is at version {current.version}, not {expected_version}; "
            "read it again and reapply the change",
            reason="version_conflict",
            current_version=current.version,
        )
    owner = current.grid_company if grid_company is None else grid_company
    if current.details == details and current.grid_company == owner:
        return None
    return Customer(current.customer_id, details, current.version + 1, owner)


def new_link(candidate: MeterpointLink, existing: Iterable[MeterpointLink]) -> MeterpointLink | None:
    """Check ``candidate`` against the meterpoint's other links.

    Returns the candidate to store, or None when the same customer already holds the same open link from the
    same day (a client's retry: nothing to do). Any other overlap is a `Conflict`: a meterpoint has at most one
    customer on any date.
    """
    for link in existing:
        if link.meterpoint_id != candidate.meterpoint_id or not link.overlaps(candidate):
            continue
        if link.customer_id == candidate.customer_id and link.move_in == candidate.move_in and link.move_out is None:
            return None
        until = f"until {link.move_out.isoformat()}" if link.move_out else "with no move-out date"
        holder = "this customer" if link.customer_id == candidate.customer_id else "another customer"
        raise Conflict(
            f"meterpoint {candidate.meterpoint_id} is held by {holder} from {link.move_in.isoformat()} {until}, "
            f"which overlaps a move-in on {candidate.move_in.isoformat()}",
            reason="overlapping_link",
        )
    return candidate


def close_link(link: MeterpointLink, move_out: date) -> MeterpointLink:
    """The link ended on ``move_out`` (its last day), which must not be before the move-in."""
    if move_out < link.move_in:
        raise InvalidRequest(
            [Violation("moveOut", f"must not be before the move-in on {link.move_in.isoformat()}")],
            reason="move_out_before_move_in",
        )
    return MeterpointLink(link.customer_id, link.meterpoint_id, link.move_in, move_out)
