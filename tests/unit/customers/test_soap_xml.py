"""Parsing requests defensively and writing responses and faults that match the committed WSDL."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest
from lxml import etree

from libs.platform.tenancy import Role
from services.customers.domain import (
    Address,
    Contact,
    Customer,
    CustomerDetails,
    CustomerKind,
    CustomerPage,
    CustomerWithLinks,
    InvalidRequest,
    MeterpointHolder,
    MeterpointLink,
    NotAllowed,
)
from services.customers.entrypoints import soap_codec
from services.customers.entrypoints.soap import OPERATIONS, to_fault
from services.customers.entrypoints.soap_xml import (
    SOAP_ENV,
    TNS,
    FaultViolation,
    SoapFault,
    _new_parser,
    fault_envelope,
    open_envelope,
    parse_document,
)
from services.customers.registry import Meterpoint, MeterpointPage, SpecInput, validate_spec

SCHEMA = soap_codec.load_request_schema()
ENVELOPE = (
    f'<soap:Envelope xmlns:soap="{SOAP_ENV}" xmlns:c="{TNS}">{{header}}<soap:Body>{{body}}</soap:Body></soap:Envelope>'
)
GET = "<c:GetCustomer><c:customerId>C-100000</c:customerId></c:GetCustomer>"
BILLION_LAUGHS = (
    b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
    + b"".join(f'<!ENTITY lol{i} "{f"&lol{i - 1};" * 10}">'.replace("lol0", "lol").encode() for i in range(1, 10))
    + b"]><lolz>&lol9;</lolz>"
)


def envelope(body: str = GET, header: str = "") -> bytes:
    return ENVELOPE.format(header=header, body=body).encode()


def reason_of(body: bytes, max_depth: int = 32) -> str:
    with pytest.raises(SoapFault) as fault:
        open_envelope(parse_document(body, max_depth=max_depth))
    return fault.value.reason


def test_a_plain_envelope_opens_to_its_operation() -> None:
    payload = open_envelope(parse_document(envelope(), max_depth=32))
    assert payload.tag == f"{{{TNS}}}GetCustomer"


def test_billion_laughs_and_xxe_are_refused_before_parsing(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("XXE-MARKER")
    xxe = f'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x SYSTEM "file://{secret}">]><a>&x;</a>'.encode()
    assert reason_of(BILLION_LAUGHS) == "dtd_forbidden"
    assert reason_of(xxe) == "dtd_forbidden"


def test_the_parser_itself_expands_and_loads_nothing(tmp_path: Path) -> None:
    # The second layer, in case a DTD ever got past the byte check: entities stay unexpanded references.
    secret = tmp_path / "secret.txt"
    secret.write_text("XXE-MARKER")
    xxe = f'<!DOCTYPE a [<!ENTITY x SYSTEM "file://{secret}"><!ENTITY l "lol"><!ENTITY l2 "&l;&l;">]><a>&x;&l2;</a>'
    for document in (xxe.encode(), BILLION_LAUGHS):
        parser = _new_parser()
        try:
            parser.feed(document)
            text = etree.tostring(parser.close())
        except etree.XMLSyntaxError as error:
            text = str(error).encode()  # libxml2 may also stop at its amplification limit: no expansion either
        assert b"XXE-MARKER" not in text
        assert b"lollol" not in text


def test_other_encodings_are_refused() -> None:
    assert reason_of(envelope().decode().encode("utf-16")) == "unsupported_encoding"


def test_deep_nesting_is_refused_while_parsing() -> None:
    deep = "<c:x>" * 40 + "</c:x>" * 40
    assert reason_of(envelope(body=deep)) == "too_deep"
    assert parse_document(envelope(body=deep), max_depth=64) is not None


@pytest.mark.parametrize(
    ("document", "reason"),
    [
        (b"", "empty_body"),
        (b"<a><b></a>", "malformed_xml"),
        (b"<a>&undefined;</a>", "malformed_xml"),
        (b"<Envelope/>", "not_a_soap_envelope"),
        (envelope(body=GET + GET), "one_operation_per_request"),
        (b'<e:Envelope xmlns:e="http://www.w3.org/2003/05/soap-envelope"/>', "soap_version_mismatch"),
    ],
)
def test_what_is_no_soap_11_envelope_is_refused(document: bytes, reason: str) -> None:
    assert reason_of(document) == reason


def test_headers_that_must_be_understood_are_refused() -> None:
    header = '<soap:Header><w:Security xmlns:w="urn:x" soap:mustUnderstand="1"/></soap:Header>'
    assert reason_of(envelope(header=header)) == "must_understand"
    relaxed = '<soap:Header><w:Trace xmlns:w="urn:x"/></soap:Header>'
    assert open_envelope(parse_document(envelope(header=relaxed), max_depth=32)).tag == f"{{{TNS}}}GetCustomer"


def test_schema_violations_name_the_field() -> None:
    payload = open_envelope(
        parse_document(
            envelope(
                body="<c:RegisterCustomer><c:kind>alien</c:kind><c:name>x</c:name>"
                "<c:contact><c:address><c:street>s</c:street><c:postcode>8000</c:postcode>"
                "<c:city>c</c:city><c:country>dk</c:country></c:address></c:contact></c:RegisterCustomer>"
            ),
            max_depth=32,
        )
    )
    with pytest.raises(InvalidRequest) as error:
        soap_codec.check_schema(SCHEMA, payload)
    fields = {violation.field for violation in error.value.violations}
    assert fields == {"kind", "contact.address.country"}
    assert all(TNS not in violation.message for violation in error.value.violations)


CUSTOMER = Customer(
    "C-100000",
    CustomerDetails(
        CustomerKind.ORGANISATION,
        "Fjordvarme A/S",
        Contact(None, "+4598123456", Address("Havnevej 4", "9000", "Aalborg", "DK")),
    ),
    3,
)
LINK = MeterpointLink("C-100000", "571313180400000025", date(2025, 4, 1), date(2025, 6, 30))
OWNED = Customer(CUSTOMER.customer_id, CUSTOMER.details, 4, grid_company="5790000000012")
_SPEC = SpecInput("804", None, "exchange", "791", "PT1H", None, "connected", "2024-06-01", "ftp_partner", "mdm")
METERPOINT = Meterpoint("571313180400000025", "5790000000012", validate_spec("571313180400000025", _SPEC), 2)
UNASSIGNED = Meterpoint(
    "571313180400000025",
    "10X-GRIDHUB-A--9",
    validate_spec(
        "571313180400000025",
        SpecInput("804", None, "consumption", None, "PT15M", "flex", "new", "2025-01-01", None, None),
    ),
    1,
)


@pytest.mark.parametrize(
    "payload",
    [
        soap_codec.encode_customer_response("RegisterCustomer")(CUSTOMER),
        soap_codec.encode_customer_response("UpdateCustomer")(CUSTOMER),
        soap_codec.encode_customer_with_links(CustomerWithLinks(CUSTOMER, (LINK,), truncated=False)),
        soap_codec.encode_page(CustomerPage((CUSTOMER, CUSTOMER), 1, 20, 2)),
        soap_codec.encode_link_response("LinkMeterpoint")(LINK),
        soap_codec.encode_link_response("UnlinkMeterpoint")(LINK),
        soap_codec.encode_holder(MeterpointHolder(CUSTOMER, LINK)),
        soap_codec.encode_customer_response("RegisterCustomer")(OWNED),
        soap_codec.encode_page(CustomerPage((OWNED, CUSTOMER), 1, 20, 2)),
        soap_codec.encode_meterpoint_response("RegisterMeterpoint")(METERPOINT),
        soap_codec.encode_meterpoint_response("UpdateMeterpoint")(UNASSIGNED),
        soap_codec.encode_meterpoint_response("GetMeterpoint")(METERPOINT),
        soap_codec.encode_meterpoint_page(MeterpointPage((METERPOINT, UNASSIGNED), "571313180400000025")),
        soap_codec.encode_meterpoint_page(MeterpointPage((), None)),
    ],
)
def test_responses_match_the_schema(payload: etree._Element) -> None:
    assert SCHEMA.validate(payload), SCHEMA.error_log


def test_faults_carry_a_detail_that_matches_the_schema() -> None:
    fault = SoapFault(
        "Client.Validation",
        500,
        "Validation",
        "invalid_request",
        "invalid request",
        violations=[FaultViolation("name", "must not be empty")],
        current_version=2,
        retry_after=1,
    )
    document = etree.fromstring(fault_envelope(fault, "abc123"))
    node = document.find(f"{{{SOAP_ENV}}}Body/{{{SOAP_ENV}}}Fault")
    assert node is not None
    assert node.findtext("faultcode") == "soap:Client.Validation"
    (detail,) = list(node.find("detail"))  # type: ignore[arg-type]
    assert SCHEMA.validate(detail), SCHEMA.error_log


def test_libxml2s_own_depth_limit_also_reads_as_too_deep() -> None:
    deep = "<c:x>" * 400 + "</c:x>" * 400  # past libxml2's 256 inside one fed chunk
    assert reason_of(envelope(body=deep), max_depth=1000) == "too_deep"


def test_a_role_or_grid_company_refusal_is_an_authorization_fault_with_403_and_a_typed_detail() -> None:
    fault = to_fault(NotAllowed("RegisterMeterpoint needs the admin role", reason="role_required"))
    assert (fault.code, fault.status, fault.category, fault.reason) == (
        "Client.Authorization",
        403,
        "Authorization",
        "role_required",
    )
    node = etree.fromstring(fault_envelope(fault, "abc123")).find(f"{{{SOAP_ENV}}}Body/{{{SOAP_ENV}}}Fault")
    assert node is not None
    (detail,) = list(node.find("detail"))  # type: ignore[arg-type]
    assert SCHEMA.validate(detail), SCHEMA.error_log


def test_every_operation_of_the_wsdl_declares_a_role() -> None:
    wsdl = etree.parse(str(soap_codec.WSDL_PATH))
    names = {op.get("name") for op in wsdl.iter("{http://schemas.xmlsoap.org/wsdl/}operation")}
    assert names == set(OPERATIONS)
    reads = {name for name, operation in OPERATIONS.items() if operation.role is Role.READER}
    assert reads == {"GetCustomer", "FindCustomers", "GetMeterpointCustomer", "GetMeterpoint", "ListMeterpoints"}
    assert {name for name, operation in OPERATIONS.items() if operation.role is Role.ADMIN} == {
        "RegisterMeterpoint",
        "UpdateMeterpoint",
    }
