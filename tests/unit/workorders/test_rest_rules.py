"""REST-side rules without I/O: request validation, If-Match, Idempotency-Key, cursors, SOAP failure test."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
import pytest
from pydantic import ValidationError

from libs.events import WorkOrderStatus, WorkOrderType, with_check_digit
from libs.platform.problems import ProblemError
from libs.platform.tenancy import Principal, PrincipalKind, Role
from services.workorders.adapters.customers_soap import soap_failure
from services.workorders.domain import OpenWorkOrder
from services.workorders.entrypoints.api import decode_cursor, encode_cursor, parse_idempotency_key, parse_if_match
from services.workorders.handlers import ListQuery, idempotency_client, request_hash, tenant_of
from services.workorders.models import CompleteWorkOrder, CreateWorkOrder, ScheduleWorkOrder
from services.workorders.settings import WorkordersSettings
from tests.tenants import TENANT_A, TENANT_B

METERPOINT = with_check_digit("57131318040000002")


def status_of(error: pytest.ExceptionInfo[ProblemError]) -> tuple[int, object]:
    return error.value.problem.status, getattr(error.value.problem, "reason", None)


def test_create_requests_are_closed_and_check_the_gsrn() -> None:
    ok = CreateWorkOrder.model_validate({"meterpoint_id": METERPOINT, "type": "install_meter"})
    assert ok.command() == OpenWorkOrder(METERPOINT, WorkOrderType.INSTALL_METER, None)
    for bad in (
        {"meterpoint_id": METERPOINT[:-1] + str((int(METERPOINT[-1]) + 1) % 10), "type": "install_meter"},
        {"meterpoint_id": METERPOINT, "type": "paint_meter"},
        {"meterpoint_id": METERPOINT, "type": "install_meter", "priority": "high"},
        {"meterpoint_id": METERPOINT, "type": "install_meter", "description": " "},
    ):
        with pytest.raises(ValidationError):
            CreateWorkOrder.model_validate(bad)


def test_schedule_and_complete_bodies_are_validated() -> None:
    with pytest.raises(ValidationError):
        ScheduleWorkOrder.model_validate(
            {"crew": "c1", "window": {"start": "2026-03-03T10:00:00Z", "end": "2026-03-03T09:00:00Z"}}
        )
    with pytest.raises(ValidationError):  # naive timestamps are refused
        ScheduleWorkOrder.model_validate(
            {"crew": "c1", "window": {"start": "2026-03-03T08:00:00", "end": "2026-03-03T09:00:00"}}
        )
    with pytest.raises(ValidationError):
        CompleteWorkOrder.model_validate({"result": "exploded"})


def test_if_match_names_versions_star_or_nothing_usable() -> None:
    assert parse_if_match('"3"') == {3}
    assert parse_if_match('"3", "4"') == {3, 4}
    assert parse_if_match("*") is None
    assert parse_if_match('W/"3"') == frozenset(), "a weak tag never matches in If-Match"
    assert parse_if_match("3") == frozenset()
    for missing in (None, "", "  "):
        with pytest.raises(ProblemError) as raised:
            parse_if_match(missing)
        assert status_of(raised) == (428, "if_match_required")


def test_idempotency_keys_are_printable_ascii_quoted_or_not() -> None:
    assert parse_idempotency_key("8e03978e-40d5-43e8-bc93-6894a57f9324") == "8e03978e-40d5-43e8-bc93-6894a57f9324"
    assert parse_idempotency_key('"abc"') == "abc"
    with pytest.raises(ProblemError) as raised:
        parse_idempotency_key(None)
    assert status_of(raised) == (400, "idempotency_key_required")
    for bad in ('""', "with space", "x" * 256, "æøå"):
        with pytest.raises(ProblemError) as raised:
            parse_idempotency_key(bad)
        assert status_of(raised) == (400, "invalid_idempotency_key")


def test_the_request_hash_ignores_spelling_but_not_content() -> None:
    one = request_hash(OpenWorkOrder(METERPOINT, WorkOrderType.INSPECT_METER, "x"))
    assert one == request_hash(OpenWorkOrder(METERPOINT, WorkOrderType("inspect_meter"), "x"))
    assert one != request_hash(OpenWorkOrder(METERPOINT, WorkOrderType.INSPECT_METER, "y"))


def test_a_cursor_only_works_with_the_filters_it_was_made_for() -> None:
    query = ListQuery(statuses=(WorkOrderStatus.CREATED,), created_from=datetime(2026, 1, 1, tzinfo=UTC), limit=10)
    cursor = encode_cursor(42, query)
    assert decode_cursor(cursor, query) == 42
    assert decode_cursor(cursor, ListQuery(statuses=(WorkOrderStatus.CREATED,), created_from=query.created_from)) == 42
    for other in (ListQuery(), ListQuery(statuses=(WorkOrderStatus.SCHEDULED,))):
        with pytest.raises(ProblemError) as raised:
            decode_cursor(cursor, other)
        assert status_of(raised) == (400, "invalid_cursor")
    for garbage in ("", "not-base64!", "eyJhIjogLTF9", "W10"):
        with pytest.raises(ProblemError):
            decode_cursor(garbage, query)


@pytest.mark.parametrize(
    ("status", "body", "failure"),
    [
        (200, b"<ok/>", False),
        (401, b"<faultcode>soap:Client.Authentication</faultcode>", False),
        (429, b"<faultcode>soap:Server.Busy</faultcode>", True),
        (500, b"<soap:Fault><faultcode>soap:Client.NotFound</faultcode></soap:Fault>", False),
        (500, b"<soap:Fault><faultcode>soap:Server</faultcode></soap:Fault>", True),
        (503, b"<faultcode>soap:Server.Unavailable</faultcode>", True),
        (502, b"bad gateway", True),
    ],
)
def test_only_outages_count_against_the_soap_breaker(status: int, body: bytes, failure: bool) -> None:
    assert soap_failure(httpx.Response(status, content=body)) is failure


def test_the_default_settings_are_consistent() -> None:
    settings = WorkordersSettings()
    assert settings.http_port == 8083
    assert settings.boundaries.customers_soap.breaker is not None
    with pytest.raises(ValidationError):
        WorkordersSettings(events_topic="same", customers_topic="same")
    with pytest.raises(ValidationError):
        WorkordersSettings(environment="production", postgres_dsn="postgresql://u:real-secret@db/wo")


def test_timestamps_must_be_plausible() -> None:
    for moment in ("0001-01-01T00:00:00+14:00", "1969-12-31T23:59:59Z", "2200-01-01T00:00:00Z"):
        with pytest.raises(ValidationError):
            CompleteWorkOrder.model_validate({"result": "failed", "completed_at": moment})
    assert CompleteWorkOrder.model_validate({"result": "failed", "completed_at": "2026-03-02T09:00:00+01:00"})


def test_a_callers_scope_is_its_tenant_and_the_platform_has_none() -> None:
    reader_a = Principal("web", PrincipalKind.API_KEY, Role.READER, TENANT_A)
    operator_b = Principal("web", PrincipalKind.API_KEY, Role.OPERATOR, TENANT_B)
    platform = Principal("hub-ops", PrincipalKind.API_KEY, Role.PLATFORM, None)
    assert (tenant_of(reader_a), tenant_of(operator_b), tenant_of(platform)) == (TENANT_A, TENANT_B, None)
    # The same client name in two grid companies shares no Idempotency-Keys.
    assert idempotency_client(reader_a) != idempotency_client(operator_b)
    assert idempotency_client(platform) == "platform/hub-ops"
