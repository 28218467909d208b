"""SOAP 1.1 envelopes in and out, parsed defensively: no DTDs, no entities, no network, bounded size and depth.

Defence in layers, each enough on its own against billion laughs and XXE:
1. the raw bytes are refused when they contain a document type or entity declaration (``<!DOCTYPE``,
   ``<!ENTITY``); decoding is forced to UTF-8, so these ASCII bytes are the only way to write one;
2. libxml2 runs with ``resolve_entities=False, load_dtd=False, no_network=True, huge_tree=False`` and a resolver
   that refuses every external reference, so even a DTD that got through would expand and fetch nothing;
3. a parsed document that still carries a DTD is refused.
Size is bounded before parsing (by the caller) and element depth while parsing, so a deeply nested document is
refused as soon as it passes the limit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from lxml import etree  # type: ignore[import-untyped]

SOAP_ENV = "http://schemas.xmlsoap.org/soap/envelope/"
SOAP12_ENV = "http://www.w3.org/2003/05/soap-envelope"
TNS = "urn:gridhub:customers:v1"
CONTENT_TYPE = "text/xml; charset=utf-8"

_ENVELOPE = f"{{{SOAP_ENV}}}Envelope"
_HEADER = f"{{{SOAP_ENV}}}Header"
_BODY = f"{{{SOAP_ENV}}}Body"
_MUST_UNDERSTAND = f"{{{SOAP_ENV}}}mustUnderstand"
_FORBIDDEN_MARKUP = (b"<!DOCTYPE", b"<!ENTITY")
_FEED_CHUNK = 16 * 1024
_BOMS = (b"\xfe\xff", b"\xff\xfe", b"\x00\x00\xfe\xff", b"\xff\xfe\x00\x00")


@dataclass(frozen=True, slots=True)
class FaultViolation:
    field: str
    message: str


@dataclass
class SoapFault(Exception):
    """A fault to send: SOAP faultcode (without prefix), HTTP status, category and reason for the detail."""

    code: str
    status: int
    category: str
    reason: str
    message: str
    violations: Sequence[FaultViolation] = ()
    current_version: int | None = None
    retry_after: int | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.code} ({self.reason}): {self.message}"


def invalid_xml(reason: str, message: str, *, status: int = 500) -> SoapFault:
    """A Client.Validation fault about the envelope itself (not the operation's data)."""
    return SoapFault("Client.Validation", status, "Validation", reason, message)


class _RefuseExternal(etree.Resolver):  # type: ignore[misc]  # lxml has no type stubs here
    """Refuses every external entity, DTD or XInclude libxml2 might try to load."""

    def resolve(self, system_url: str | None, public_id: str | None, context: Any) -> Any:
        raise invalid_xml("external_reference_forbidden", "external references are not accepted")


def _new_parser() -> etree.XMLPullParser:
    parser = etree.XMLPullParser(
        events=("start", "end"),
        encoding="utf-8",
        resolve_entities=False,
        load_dtd=False,
        no_network=True,
        huge_tree=False,
        dtd_validation=False,
        remove_comments=True,
        remove_pis=True,
        collect_ids=False,
    )
    parser.resolvers.add(_RefuseExternal())
    return parser


def parse_document(body: bytes, *, max_depth: int) -> etree._Element:
    """Parse a request body (already size-bounded) into its root element, or raise a `SoapFault`."""
    if not body.strip():
        raise invalid_xml("empty_body", "the request has no body; send a SOAP 1.1 envelope")
    if body.startswith(_BOMS) or b"\x00" in body[:4]:
        raise invalid_xml("unsupported_encoding", "only UTF-8 encoded requests are accepted")
    if any(marker in body for marker in _FORBIDDEN_MARKUP):
        raise invalid_xml("dtd_forbidden", "document type and entity declarations are not accepted")
    parser = _new_parser()
    depth = 0
    try:
        for offset in range(0, len(body), _FEED_CHUNK):
            parser.feed(body[offset : offset + _FEED_CHUNK])
            for event, _ in parser.read_events():
                depth += 1 if event == "start" else -1
                if depth > max_depth:
                    raise invalid_xml("too_deep", f"elements are nested deeper than {max_depth} levels")
        root: etree._Element = parser.close()
    except etree.XMLSyntaxError as error:
        if "excessive depth" in str(error.msg).lower():
            # libxml2's own hard limit (256 without huge_tree) can trip inside one fed chunk before ours does.
            raise invalid_xml("too_deep", f"elements are nested deeper than {max_depth} levels") from None
        # libxml2's message names the position and the rule, not the content.
        raise invalid_xml("malformed_xml", f"not well-formed XML: {error.msg}") from None
    docinfo = root.getroottree().docinfo
    if docinfo.doctype or docinfo.internalDTD is not None:
        raise invalid_xml("dtd_forbidden", "document type and entity declarations are not accepted")
    return root


def open_envelope(root: etree._Element) -> etree._Element:
    """The single element inside the SOAP 1.1 Body; faults for SOAP 1.2, headers we must understand, etc."""
    if root.tag == f"{{{SOAP12_ENV}}}Envelope":
        raise SoapFault(
            "VersionMismatch", 500, "Validation", "soap_version_mismatch", "only SOAP 1.1 envelopes are accepted"
        )
    if root.tag != _ENVELOPE:
        raise invalid_xml("not_a_soap_envelope", "the document is not a SOAP 1.1 envelope")
    children = [child for child in root if isinstance(child.tag, str)]
    if children and children[0].tag == _HEADER:
        for block in children[0]:
            if isinstance(block.tag, str) and block.get(_MUST_UNDERSTAND) in ("1", "true"):
                name = etree.QName(block).localname
                raise SoapFault(
                    "MustUnderstand", 500, "Validation", "must_understand", f"header block {name} is not understood"
                )
        children = children[1:]
    if len(children) != 1 or children[0].tag != _BODY:
        raise invalid_xml("not_a_soap_envelope", "the envelope must hold an optional Header and one Body")
    payload = [child for child in children[0] if isinstance(child.tag, str)]
    if len(payload) != 1:
        raise invalid_xml("one_operation_per_request", "the Body must hold exactly one operation element")
    return payload[0]


def _serialise(envelope: etree._Element) -> bytes:
    data: bytes = etree.tostring(envelope, xml_declaration=True, encoding="utf-8")
    return data


def response_envelope(payload: etree._Element) -> bytes:
    """A SOAP 1.1 envelope around ``payload``."""
    envelope = etree.Element(_ENVELOPE, nsmap={"soap": SOAP_ENV})
    etree.SubElement(envelope, _BODY).append(payload)
    return _serialise(envelope)


def fault_envelope(fault: SoapFault, correlation_id: str | None) -> bytes:
    """A SOAP 1.1 Fault with a readable faultstring and a typed ``CustomerServiceFault`` detail."""
    envelope = etree.Element(_ENVELOPE, nsmap={"soap": SOAP_ENV})
    body = etree.SubElement(envelope, _BODY)
    node = etree.SubElement(body, f"{{{SOAP_ENV}}}Fault")
    etree.SubElement(node, "faultcode").text = f"soap:{fault.code}"
    etree.SubElement(node, "faultstring").text = fault.message
    detail = etree.SubElement(etree.SubElement(node, "detail"), f"{{{TNS}}}CustomerServiceFault", nsmap={"c": TNS})

    def add(parent: etree._Element, name: str, text: str) -> None:
        etree.SubElement(parent, f"{{{TNS}}}{name}").text = text

    add(detail, "category", fault.category)
    add(detail, "reason", fault.reason)
    for violation in list(fault.violations)[:50]:
        item = etree.SubElement(detail, f"{{{TNS}}}violation")
        add(item, "field", violation.field)
        add(item, "message", violation.message)
    if fault.current_version is not None:
        add(detail, "currentVersion", str(fault.current_version))
    if fault.retry_after is not None:
        add(detail, "retryAfterSeconds", str(fault.retry_after))
    if correlation_id:
        add(detail, "correlationId", correlation_id)
    return _serialise(envelope)
