"""Pure parts of the `gridhub` tools: breaker states from /metrics, dead-letter headers, service ports."""

from __future__ import annotations

from ops.dlq import from_topic, original_headers
from ops.health import breaker_states
from ops.services import COLLECTION, READSIDE, consumer_groups, ftp_port, soap_url

METRICS = """\
# HELP gridhub_flow_admitted_total Units admitted.
# TYPE gridhub_flow_admitted_total counter
gridhub_flow_admitted_total{boundary="kafka_producer",policy="breaker"} 12.0
gridhub_flow_admitted_total{boundary="rest_ingress",policy="quota"} 7.0
gridhub_flow_admitted_total{boundary="customers_soap",policy="breaker"} 3.0
# HELP gridhub_flow_breaker_state Circuit breaker state: 0 closed, 1 half-open, 2 open.
# TYPE gridhub_flow_breaker_state gauge
gridhub_flow_breaker_state{boundary="kafka_producer"} 2.0
gridhub_flow_breaker_state{boundary="rest_ingress"} 0.0
gridhub_flow_breaker_state{boundary="customers_soap"} 1.0
"""


def test_breaker_states_only_for_boundaries_that_have_a_breaker() -> None:
    assert breaker_states(METRICS) == {"kafka_producer": "open", "customers_soap": "half-open"}
    assert breaker_states("") == {}


def test_dead_letter_headers_are_removed_and_the_source_decides() -> None:
    headers = [
        ("content-type", b"application/json"),
        ("dlq.reason", b"x"),
        ("ce_type", b"t"),
        ("dlq.source.topic", b"a"),
    ]
    assert original_headers(headers) == [("content-type", b"application/json"), ("ce_type", b"t")]
    assert from_topic(headers, "a")
    assert not from_topic([("dlq.source.topic", b"rest:/v1/readings")], "a")
    assert from_topic([], "a")  # no provenance: it is in a's DLQ, so it is a's


def test_ports_come_from_the_services_variables_with_their_defaults() -> None:
    assert COLLECTION.url({}) == "http://127.0.0.1:8001"
    assert READSIDE.port({"READSIDE_HTTP_PORT": "18004"}) == 18004
    assert ftp_port({}) == 2121
    assert soap_url({"CUSTOMERS_HTTP_PORT": "9999"}) == "http://127.0.0.1:9999/soap/customers"
    assert consumer_groups({"WORKORDERS_CONSUMER_GROUP_PREFIX": "wo"}) == [
        "readside",
        "wo.meter-events",
        "wo.customers",
        "vee",
    ]
    assert consumer_groups({"VEE_GROUP_ID": "vee-blue"})[-1] == "vee-blue"


def test_audit_since_is_a_duration_back_a_date_or_a_datetime() -> None:
    from datetime import UTC, datetime, timedelta

    import pytest

    from ops.principals import parse_since

    now = datetime(2026, 12, 4, 12, tzinfo=UTC)
    assert parse_since("24h", now=now) == now - timedelta(hours=24)
    assert parse_since("2026-12-01", now=now) == datetime(2026, 12, 1, tzinfo=UTC)
    assert parse_since("2026-12-01T06:00:00+01:00", now=now) == datetime(2026, 12, 1, 5, tzinfo=UTC)
    assert parse_since("2026-12-01T06:00:00", now=now) == datetime(2026, 12, 1, 6, tzinfo=UTC)
    with pytest.raises(ValueError, match="duration"):
        parse_since("last week", now=now)
