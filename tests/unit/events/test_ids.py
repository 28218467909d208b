"""Deterministic reading and alarm ids, random event ids."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone
from hashlib import blake2b

import pytest
from hypothesis import given
from hypothesis import strategies as st

from libs.events.ids import alarm_id, epoch_micros, new_event_id, reading_id
from libs.events.meter import MeterAlarm, Register

METERPOINT = "571313180400000025"
END = datetime(2025, 3, 1, 10, 15, tzinfo=UTC)
CET = timezone(timedelta(hours=1))


def test_the_same_reading_gets_the_same_id() -> None:
    first = reading_id(METERPOINT, Register.ACTIVE_IMPORT, END, "collection.mqtt")
    again = reading_id(METERPOINT, Register.ACTIVE_IMPORT, datetime(2025, 3, 1, 10, 15, tzinfo=UTC), "collection.mqtt")
    assert first == again


def test_the_same_instant_in_another_offset_gets_the_same_id() -> None:
    in_cet = END.astimezone(CET)
    assert in_cet.hour == 11
    assert reading_id(METERPOINT, "active_import", in_cet, "collection.mqtt") == reading_id(
        METERPOINT, "active_import", END, "collection.mqtt"
    )


@pytest.mark.parametrize(
    ("meterpoint", "register", "interval_end", "source"),
    [
        ("571313180400009172", Register.ACTIVE_IMPORT, END, "collection.mqtt"),
        (METERPOINT, Register.ACTIVE_EXPORT, END, "collection.mqtt"),
        (METERPOINT, Register.ACTIVE_IMPORT, END + timedelta(minutes=15), "collection.mqtt"),
        (METERPOINT, Register.ACTIVE_IMPORT, END + timedelta(microseconds=1), "collection.mqtt"),
        (METERPOINT, Register.ACTIVE_IMPORT, END, "collection.ftp"),
    ],
    ids=["meterpoint", "register", "interval", "microsecond", "source"],
)
def test_any_other_natural_key_gets_another_id(
    meterpoint: str, register: Register, interval_end: datetime, source: str
) -> None:
    assert reading_id(meterpoint, register, interval_end, source) != reading_id(
        METERPOINT, Register.ACTIVE_IMPORT, END, "collection.mqtt"
    )


def test_a_reading_and_an_alarm_with_the_same_key_strings_get_different_ids() -> None:
    assert reading_id(METERPOINT, "tamper", END, "hes") != alarm_id(METERPOINT, "tamper", END, "hes")


def test_ids_are_version_8_rfc_4122_uuids_in_canonical_spelling() -> None:
    for value in (
        reading_id(METERPOINT, Register.ACTIVE_IMPORT, END, "collection.mqtt"),
        alarm_id(METERPOINT, MeterAlarm.TAMPER, END, "hes-north-01"),
    ):
        parsed = uuid.UUID(value)
        assert parsed.version == 8
        assert parsed.variant == uuid.RFC_4122
        assert str(parsed) == value


def test_the_reading_id_follows_the_documented_recipe() -> None:
    # The recipe other producers implement (contracts/events/README.md); pinned so a refactor cannot drift.
    key = f"reading|{METERPOINT}|active_import|{1740824100 * 1_000_000}|collection.mqtt"
    digest = bytearray(blake2b(key.encode(), digest_size=16).digest())
    digest[6] = digest[6] & 0x0F | 0x80
    digest[8] = digest[8] & 0x3F | 0x80
    expected = str(uuid.UUID(bytes=bytes(digest)))
    assert reading_id(METERPOINT, Register.ACTIVE_IMPORT, END, "collection.mqtt") == expected
    assert expected == "f25b0293-7d0d-8959-b1c5-3238f666969e"


def test_the_alarm_id_follows_the_documented_recipe() -> None:
    raised = datetime(2025, 3, 2, 3, 41, 7, 250000, tzinfo=UTC)
    key = f"alarm|{METERPOINT}|tamper|{epoch_micros(raised)}|hes-north-01"
    digest = bytearray(blake2b(key.encode(), digest_size=16).digest())
    digest[6] = digest[6] & 0x0F | 0x80
    digest[8] = digest[8] & 0x3F | 0x80
    assert alarm_id(METERPOINT, MeterAlarm.TAMPER, raised, "hes-north-01") == str(uuid.UUID(bytes=bytes(digest)))


def test_alarm_ids_are_deterministic_across_offsets() -> None:
    raised = datetime(2025, 3, 2, 3, 41, 7, 250000, tzinfo=UTC)
    assert alarm_id(METERPOINT, MeterAlarm.TAMPER, raised, "hes") == alarm_id(
        METERPOINT, MeterAlarm.TAMPER, raised.astimezone(timezone(timedelta(hours=-5, minutes=-30))), "hes"
    )
    assert alarm_id(METERPOINT, MeterAlarm.TAMPER, raised, "hes") != alarm_id(
        METERPOINT, MeterAlarm.CLOCK_ERROR, raised, "hes"
    )


def test_a_naive_datetime_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        reading_id(METERPOINT, Register.ACTIVE_IMPORT, datetime(2025, 3, 1, 10, 15), "collection.mqtt")


def test_epoch_micros_is_exact() -> None:
    assert epoch_micros(datetime(1970, 1, 1, tzinfo=UTC)) == 0
    assert epoch_micros(datetime(2025, 3, 1, 11, 15, 0, 1, tzinfo=CET)) == 1740824100 * 1_000_000 + 1


def test_event_ids_without_natural_key_are_random_uuid4() -> None:
    ids = {new_event_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(uuid.UUID(value).version == 4 for value in ids)


@given(
    st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)),
    st.integers(min_value=-14 * 60, max_value=14 * 60),
)
def test_any_offset_of_any_instant_gives_the_same_id(moment: datetime, offset_minutes: int) -> None:
    shifted = moment.astimezone(timezone(timedelta(minutes=offset_minutes)))
    assert reading_id(METERPOINT, Register.REACTIVE_IMPORT, shifted, "x") == reading_id(
        METERPOINT, Register.REACTIVE_IMPORT, moment, "x"
    )
