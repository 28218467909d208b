"""The pure edges of the read side: record decoding per topic, ETags and cursors, settings, the progress bar."""

from __future__ import annotations

import io

import pytest
from aiokafka import ConsumerRecord
from pydantic import ValidationError

from libs.events import InvalidEvent, to_record
from libs.events.examples import example_events
from libs.platform.problems import ProblemError
from libs.platform.tenancy import Principal, PrincipalKind, Role
from services.readside.batches import decode, roles_of
from services.readside.commands.rebuild import Progress
from services.readside.entrypoints.api import decode_cursor, encode_cursor, etag_of
from services.readside.models import Freshness, WorkOrderPage
from services.readside.projections import TopicRole
from services.readside.settings import ReadsideSettings
from services.readside.views import WORK_ORDERS, tenant_of


def consumer_record(topic: str, key: bytes, value: bytes, headers: list[tuple[str, bytes]]) -> ConsumerRecord:
    return ConsumerRecord(topic, 0, 0, 0, 0, key, value, None, len(key), len(value), headers)


def test_a_topic_accepts_only_the_events_it_carries() -> None:
    reading, alarm = example_events()[:2]
    record = to_record(reading)
    assert decode(consumer_record("r", record.key, record.value, record.headers), TopicRole.READINGS) == reading
    wrong = to_record(alarm)
    with pytest.raises(InvalidEvent) as refused:
        decode(consumer_record("r", wrong.key, wrong.value, wrong.headers), TopicRole.READINGS)
    assert refused.value.reason == "unexpected_type"
    with pytest.raises(InvalidEvent) as refused:
        decode(consumer_record("c", wrong.key, wrong.value, wrong.headers), TopicRole.CUSTOMERS)
    assert refused.value.reason == "unexpected_type"
    with pytest.raises(InvalidEvent) as refused:
        decode(consumer_record("r", b"k", b"{oops", []), TopicRole.READINGS)
    assert refused.value.reason == "invalid_json"


def test_topics_must_be_distinct() -> None:
    assert roles_of("a", "b", "c", "d", "e", "f")["c"] is TopicRole.CUSTOMERS
    assert roles_of("a", "b", "c", "d", "e", "f")["f"] is TopicRole.SERIES
    with pytest.raises(ValueError, match="different"):
        roles_of("a", "b", "c", "d", "e", "a")


def test_the_etag_covers_the_data_not_the_freshness() -> None:
    fresh = Freshness(view_version=1, lag=0, applied_at=None, partitions=[])
    stale = Freshness(view_version=1, lag=40, applied_at=None, partitions=[])
    page = WorkOrderPage(items=[], next_cursor=None, freshness=fresh)
    assert etag_of(page) == etag_of(page.model_copy(update={"freshness": stale}))
    assert etag_of(page) != etag_of(page.model_copy(update={"next_cursor": "x"}))


def test_cursors_round_trip_and_foreign_ones_are_refused() -> None:
    assert decode_cursor(encode_cursor("WO-2025-000117")) == "WO-2025-000117"
    for bad in ("%%%", "", encode_cursor("no spaces allowed")):
        with pytest.raises(ProblemError) as refused:
            decode_cursor(bad)
        assert refused.value.status_code == 400


def test_settings_read_the_readside_prefix_and_refuse_bad_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("READSIDE_MAX_RECORDS", "700")
    monkeypatch.setenv("READSIDE_READINGS_TOPIC", "test.readings")
    settings = ReadsideSettings()
    assert (settings.max_records, settings.readings_topic) == (700, "test.readings")
    assert settings.views_schema(3) == "readside_v3"
    with pytest.raises(ValidationError, match="postgres_schema"):
        ReadsideSettings(postgres_schema="Robert'); DROP TABLE")
    with pytest.raises(ValidationError, match="time zone"):
        ReadsideSettings(timezone="Mars/Olympus")
    with pytest.raises(ValidationError, match="burst"):
        ReadsideSettings(max_records=50_000)


def test_progress_writes_lines_when_not_on_a_terminal() -> None:
    stream = io.StringIO()
    progress = Progress(200, stream, label="rebuild v2", interval=0)
    progress.update(50)
    progress.update(200)
    progress.finish("done")
    lines = stream.getvalue().splitlines()
    assert "25.0%" in lines[0]
    assert "100.0%" in lines[1]
    assert lines[-1] == "done"


def test_a_tenants_work_order_page_is_an_equality_on_its_grid_company() -> None:
    # An equality (not "$4 IS NULL OR ..."), so a prepared statement's generic plan can use the tenant index.
    assert "grid_company = $4::text" in WORK_ORDERS[(True, False)]
    assert "grid_company" not in WORK_ORDERS[(False, True)]
    assert tenant_of(Principal("web", PrincipalKind.API_KEY, Role.READER, "5790000000012")) == "5790000000012"
    assert tenant_of(Principal("ops", PrincipalKind.API_KEY, Role.PLATFORM, None)) is None
