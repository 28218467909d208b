"""Operation payloads to commands and results to payloads, checked against the schema in the committed WSDL.

The WSDL is ``contracts/wsdl/customers.wsdl``, found relative to this package: the checkout and the wheel (which
carries ``contracts/`` beside the packages, see pyproject.toml) lay it out alike. The XML Schema inside it checks
structure, enumerations, lengths and dates; the domain then checks what a schema says badly (GSRN check digits,
postcodes per country, e-mail and phone) with messages people can act on.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

from lxml import etree  # type: ignore[import-untyped]

from services.customers.domain import (
    DEFAULT_PAGE_SIZE,
    Customer,
    CustomerPage,
    CustomerWithLinks,
    DetailsInput,
    FindCustomers,
    GetCustomer,
    GetMeterpointCustomer,
    InvalidRequest,
    LinkMeterpoint,
    MeterpointHolder,
    MeterpointLink,
    RegisterCustomer,
    UnlinkMeterpoint,
    UpdateCustomer,
    Violation,
    customer_search,
    parse_date,
    validate_customer_id,
    validate_details,
    validate_meterpoint_id,
)
from services.customers.entrypoints.soap_xml import TNS

WSDL_PATH = Path(__file__).resolve().parents[3] / "contracts" / "wsdl" / "customers.wsdl"
"""The WSDL the service validates against and serves byte for byte (``services/customers/entrypoints`` -> root)."""
_XSD = "http://www.w3.org/2001/XMLSchema"
_MAX_SCHEMA_VIOLATIONS = 20
_ELEMENT_PREFIX = re.compile(r"^Element '[^']*'(, attribute '[^']*')?: ")
_STEP = re.compile(r"^(?:[^:\[]+:)?([^\[]+)")


def _q(name: str) -> str:
    return f"{{{TNS}}}{name}"


def load_request_schema(wsdl_path: Path = WSDL_PATH) -> etree.XMLSchema:
    """The XML Schema embedded in the WSDL, compiled for validating operation payloads."""
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
    wsdl = etree.parse(str(wsdl_path), parser)
    schema = wsdl.find(f".//{{{_XSD}}}schema")
    if schema is None:
        raise RuntimeError(f"{wsdl_path} has no embedded XML Schema")
    return etree.XMLSchema(etree.ElementTree(copy.deepcopy(schema)))


def _field_path(path: str | None, operation: str) -> str:
    steps = [match.group(1) for step in (path or "").split("/") if (match := _STEP.match(step))]
    if operation in steps:
        steps = steps[steps.index(operation) + 1 :]
    return ".".join(steps) or operation


def check_schema(schema: etree.XMLSchema, payload: etree._Element) -> None:
    """Raise `InvalidRequest` with the schema's complaints (element paths as field names)."""
    if schema.validate(payload):
        return
    operation = etree.QName(payload).localname
    violations = []
    for error in list(schema.error_log)[:_MAX_SCHEMA_VIOLATIONS]:
        message = _ELEMENT_PREFIX.sub("", error.message).replace(f"{{{TNS}}}", "").strip()
        violations.append(Violation(_field_path(error.path, operation), message))
    raise InvalidRequest(violations, reason="schema_violation")


# --- reading payloads (already valid against the schema) ----------------------------------------------------------


def _text(parent: etree._Element, *path: str) -> str | None:
    node: etree._Element | None = parent
    for name in path:
        node = node.find(_q(name)) if node is not None else None
    if node is None:
        return None
    return node.text or ""


def _required(parent: etree._Element, *path: str) -> str:
    value = _text(parent, *path)
    if value is None:  # the schema makes this unreachable; kept so a schema edit cannot cause a crash
        raise InvalidRequest([Violation(".".join(path), "is required")])
    return value


def _int(parent: etree._Element, name: str, default: int) -> int:
    value = _text(parent, name)
    return default if value is None or not value.strip() else int(value)


def _details(payload: etree._Element) -> DetailsInput:
    return DetailsInput(
        kind=_required(payload, "kind"),
        name=_required(payload, "name"),
        email=_text(payload, "contact", "email"),
        phone=_text(payload, "contact", "phone"),
        street=_required(payload, "contact", "address", "street"),
        postcode=_required(payload, "contact", "address", "postcode"),
        city=_required(payload, "contact", "address", "city"),
        country=_required(payload, "contact", "address", "country"),
    )


def _validated(*checks: Callable[[], Any]) -> list[Any]:
    """Run each check, collecting every violation before failing."""
    results: list[Any] = []
    violations: list[Violation] = []
    for check in checks:
        try:
            results.append(check())
        except InvalidRequest as error:
            violations.extend(error.violations)
    if violations:
        raise InvalidRequest(violations)
    return results


def decode_register(payload: etree._Element) -> RegisterCustomer:
    return RegisterCustomer(validate_details(_details(payload)))


def decode_get_customer(payload: etree._Element) -> GetCustomer:
    return GetCustomer(validate_customer_id(_required(payload, "customerId")))


def decode_update(payload: etree._Element) -> UpdateCustomer:
    customer_id, details = _validated(
        lambda: validate_customer_id(_required(payload, "customerId")),
        lambda: validate_details(_details(payload)),
    )
    return UpdateCustomer(customer_id, int(_required(payload, "expectedVersion")), details)


def decode_find(payload: etree._Element) -> FindCustomers:
    search = customer_search(
        _text(payload, "name"),
        _text(payload, "postcode"),
        _int(payload, "pageNumber", 1),
        _int(payload, "pageSize", DEFAULT_PAGE_SIZE),
    )
    return FindCustomers(search)


def decode_link(payload: etree._Element) -> LinkMeterpoint:
    customer_id, meterpoint_id, move_in = _validated(
        lambda: validate_customer_id(_required(payload, "customerId")),
        lambda: validate_meterpoint_id(_required(payload, "meterpointId")),
        lambda: parse_date(_required(payload, "moveIn"), "moveIn"),
    )
    return LinkMeterpoint(customer_id, meterpoint_id, move_in)


def decode_unlink(payload: etree._Element) -> UnlinkMeterpoint:
    customer_id, meterpoint_id, move_out = _validated(
        lambda: validate_customer_id(_required(payload, "customerId")),
        lambda: validate_meterpoint_id(_required(payload, "meterpointId")),
        lambda: parse_date(_required(payload, "moveOut"), "moveOut"),
    )
    return UnlinkMeterpoint(customer_id, meterpoint_id, move_out)


def decode_meterpoint_customer(payload: etree._Element) -> GetMeterpointCustomer:
    meterpoint_id, on_date = _validated(
        lambda: validate_meterpoint_id(_required(payload, "meterpointId")),
        lambda: parse_date(_required(payload, "onDate"), "onDate"),
    )
    return GetMeterpointCustomer(meterpoint_id, on_date)


# --- writing results ----------------------------------------------------------------------------------------------


def _add(parent: etree._Element, name: str, text: str | None) -> None:
    if text is not None:
        etree.SubElement(parent, _q(name)).text = text


def _root(name: str) -> etree._Element:
    return etree.Element(_q(name), nsmap={"c": TNS})


def _customer(parent: etree._Element, customer: Customer, name: str = "customer") -> None:
    details = customer.details
    node = etree.SubElement(parent, _q(name))
    _add(node, "customerId", customer.customer_id)
    _add(node, "kind", details.kind.value)
    _add(node, "name", details.name)
    contact = etree.SubElement(node, _q("contact"))
    _add(contact, "email", details.contact.email)
    _add(contact, "phone", details.contact.phone)
    address = etree.SubElement(contact, _q("address"))
    _add(address, "street", details.contact.address.street)
    _add(address, "postcode", details.contact.address.postcode)
    _add(address, "city", details.contact.address.city)
    _add(address, "country", details.contact.address.country)
    _add(node, "version", str(customer.version))


def _date(day: date | None) -> str | None:
    return None if day is None else day.isoformat()


def _link(parent: etree._Element, link: MeterpointLink) -> None:
    node = etree.SubElement(parent, _q("meterpointLink"))
    _add(node, "customerId", link.customer_id)
    _add(node, "meterpointId", link.meterpoint_id)
    _add(node, "moveIn", _date(link.move_in))
    _add(node, "moveOut", _date(link.move_out))


def encode_customer_response(operation: str) -> Callable[[Customer], etree._Element]:
    def encode(customer: Customer) -> etree._Element:
        root = _root(f"{operation}Response")
        _customer(root, customer)
        return root

    return encode


def encode_customer_with_links(result: CustomerWithLinks) -> etree._Element:
    root = _root("GetCustomerResponse")
    _customer(root, result.customer)
    for link in result.links:
        _link(root, link)
    _add(root, "meterpointLinksTruncated", "true" if result.truncated else "false")
    return root


def encode_page(page: CustomerPage) -> etree._Element:
    root = _root("FindCustomersResponse")
    for customer in page.customers:
        _customer(root, customer)
    _add(root, "pageNumber", str(page.page_number))
    _add(root, "pageSize", str(page.page_size))
    _add(root, "totalCount", str(page.total))
    return root


def encode_link_response(operation: str) -> Callable[[MeterpointLink], etree._Element]:
    def encode(link: MeterpointLink) -> etree._Element:
        root = _root(f"{operation}Response")
        _link(root, link)
        return root

    return encode


def encode_holder(holder: MeterpointHolder) -> etree._Element:
    root = _root("GetMeterpointCustomerResponse")
    _customer(root, holder.customer)
    _link(root, holder.link)
    return root
