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
    validate_grid_company,
    validate_meterpoint_id,
)
from services.customers.entrypoints.soap_xml import TNS
from services.customers.registry import (
    DEFAULT_LIST_PAGE,
    GetMeterpoint,
    ListMeterpoints,
    Meterpoint,
    MeterpointPage,
    RegisterMeterpoint,
    SpecInput,
    UpdateMeterpoint,
    validate_list_filters,
    validate_spec,
)

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


def _grid_company(payload: etree._Element) -> str | None:
    """The optional gridCompany element, validated (None when absent)."""
    value = _text(payload, "gridCompany")
    return None if value is None else validate_grid_company(value)


def decode_register(payload: etree._Element) -> RegisterCustomer:
    details, grid_company = _validated(lambda: validate_details(_details(payload)), lambda: _grid_company(payload))
    return RegisterCustomer(details, grid_company)


def decode_get_customer(payload: etree._Element) -> GetCustomer:
    return GetCustomer(validate_customer_id(_required(payload, "customerId")))


def decode_update(payload: etree._Element) -> UpdateCustomer:
    customer_id, details, grid_company = _validated(
        lambda: validate_customer_id(_required(payload, "customerId")),
        lambda: validate_details(_details(payload)),
        lambda: _grid_company(payload),
    )
    return UpdateCustomer(customer_id, int(_required(payload, "expectedVersion")), details, grid_company)


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


def _spec_input(payload: etree._Element) -> SpecInput:
    return SpecInput(
        grid_area=_required(payload, "gridArea"),
        time_zone=_text(payload, "timeZone"),
        type=_required(payload, "type"),
        neighbour_grid_area=_text(payload, "neighbourGridArea"),
        resolution=_required(payload, "resolution"),
        settlement_method=_text(payload, "settlementMethod"),
        connection_state=_required(payload, "connection", "state"),
        connection_since=_required(payload, "connection", "since"),
        data_source_kind=_text(payload, "dataSource", "kind"),
        data_source_id=_text(payload, "dataSource", "id"),
    )


def _meterpoint_parts(payload: etree._Element) -> list[Any]:
    """Meterpoint id, requested grid company and fields, with every violation of the three listed at once."""
    raw_id = _required(payload, "meterpointId").strip()
    return _validated(
        lambda: validate_meterpoint_id(raw_id),
        lambda: _grid_company(payload),
        lambda: validate_spec(raw_id, _spec_input(payload)),
    )


def decode_register_meterpoint(payload: etree._Element) -> RegisterMeterpoint:
    meterpoint_id, grid_company, spec = _meterpoint_parts(payload)
    return RegisterMeterpoint(meterpoint_id, grid_company, spec)


def decode_update_meterpoint(payload: etree._Element) -> UpdateMeterpoint:
    meterpoint_id, grid_company, spec = _meterpoint_parts(payload)
    return UpdateMeterpoint(meterpoint_id, int(_required(payload, "expectedVersion")), grid_company, spec)


def decode_get_meterpoint(payload: etree._Element) -> GetMeterpoint:
    return GetMeterpoint(validate_meterpoint_id(_required(payload, "meterpointId")))


def decode_list_meterpoints(payload: etree._Element) -> ListMeterpoints:
    page_size = _int(payload, "pageSize", DEFAULT_LIST_PAGE)
    grid_company, grid_area, after = _validated(
        lambda: _grid_company(payload),
        lambda: validate_list_filters(_text(payload, "gridArea"), page_size),
        lambda: _optional_meterpoint_id(payload, "afterMeterpointId"),
    )
    return ListMeterpoints(grid_company, grid_area, after, page_size)


def _optional_meterpoint_id(payload: etree._Element, name: str) -> str | None:
    value = _text(payload, name)
    return None if value is None else validate_meterpoint_id(value, name)


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
    _add(node, "gridCompany", customer.grid_company)


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


def _meterpoint(parent: etree._Element, meterpoint: Meterpoint) -> None:
    spec = meterpoint.spec
    node = etree.SubElement(parent, _q("meterpoint"))
    _add(node, "meterpointId", meterpoint.meterpoint_id)
    _add(node, "gridCompany", meterpoint.grid_company)
    _add(node, "gridArea", spec.grid_area)
    _add(node, "timeZone", spec.time_zone)
    _add(node, "type", spec.type.value)
    _add(node, "neighbourGridArea", spec.neighbour_grid_area)
    _add(node, "resolution", spec.resolution.value)
    _add(node, "settlementMethod", None if spec.settlement_method is None else spec.settlement_method.value)
    connection = etree.SubElement(node, _q("connection"))
    _add(connection, "state", spec.connection_state.value)
    _add(connection, "since", spec.connection_since.isoformat())
    if spec.data_source is not None:
        source = etree.SubElement(node, _q("dataSource"))
        _add(source, "kind", spec.data_source.kind.value)
        _add(source, "id", spec.data_source.id)
    _add(node, "version", str(meterpoint.version))


def encode_meterpoint_response(operation: str) -> Callable[[Meterpoint], etree._Element]:
    def encode(meterpoint: Meterpoint) -> etree._Element:
        root = _root(f"{operation}Response")
        _meterpoint(root, meterpoint)
        return root

    return encode


def encode_meterpoint_page(page: MeterpointPage) -> etree._Element:
    root = _root("ListMeterpointsResponse")
    for meterpoint in page.meterpoints:
        _meterpoint(root, meterpoint)
    _add(root, "nextAfterMeterpointId", page.next_after)
    return root
