"""The readings CSV format: header rules, one line to one item or one reason, and reading lines from disk."""

from __future__ import annotations

import io

import pytest

from services.collection.csvformat import Columns, HeaderError, meterpoint_of, parse_header, parse_line
from services.collection.domain import ReadingInput, Rejection, RejectReason
from services.collection.filedrop import read_lines

METERPOINT = "571313180400000025"
HEADER = b"meterpoint_id,register,interval_end,resolution,value,unit,quality"
COLUMNS = parse_header(HEADER + b",source")


def line(*, value: str = "0.25", interval_end: str = "2025-03-01T10:15:00+01:00", source: str = "") -> bytes:
    return f"{METERPOINT},active_import,{interval_end},PT15M,{value},kWh,measured,{source}".encode()


@pytest.mark.parametrize(
    "header",
    [
        HEADER,
        b"\xef\xbb\xbf" + HEADER,  # a UTF-8 BOM
        HEADER + b",source",
        b"quality,unit,value,resolution,interval_end,register,meterpoint_id",  # any order
        b" meterpoint_id , register,interval_end,resolution,value,unit,quality",  # spaces around names
    ],
)
def test_headers_naming_the_columns_are_accepted(header: bytes) -> None:
    columns = parse_header(header)
    assert set(columns.names) >= {"meterpoint_id", "value", "interval_end"}


@pytest.mark.parametrize(
    ("header", "words"),
    [
        (b"", "empty"),
        (b"meterpoint,register,interval_end,resolution,value,unit,quality", "'meterpoint'"),
        (HEADER + b",value", "more than once"),
        (b"meterpoint_id,register,interval_end,resolution,value,unit", "missing column(s) quality"),
        (METERPOINT.encode() + b",active_import,2025-03-01T00:15:00Z,PT15M,0.25,kWh,measured", "looks like data"),
        (b"\xff\xfe" + HEADER, "no UTF-8"),
    ],
)
def test_anything_else_is_a_header_error_naming_the_problem(header: bytes, words: str) -> None:
    with pytest.raises(HeaderError) as error:
        parse_header(header)
    assert words in str(error.value)
    assert error.value.reason == "invalid_header"


def test_a_good_line_becomes_the_same_item_a_json_sender_would_send() -> None:
    item = parse_line(line(), COLUMNS)
    assert isinstance(item, ReadingInput)
    assert item.value == 0.25
    assert item.interval_end.utcoffset() is not None
    assert item.source == "meter"  # an empty source cell means the default
    named = parse_line(line(source="hes-north"), COLUMNS)
    assert isinstance(named, ReadingInput)
    assert named.source == "hes-north"
    quoted = parse_line(
        f'"{METERPOINT}",active_import,2025-03-01T10:15:00Z,PT15M,"1.5",kWh,measured,'.encode(), COLUMNS
    )
    assert isinstance(quoted, ReadingInput)
    assert quoted.value == 1.5


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (line(value="1e3"), RejectReason.MALFORMED),
        (line(value="1_000"), RejectReason.MALFORMED),
        (line(value="0,5"), RejectReason.MALFORMED),  # a decimal comma makes one field too many
        (line(value=""), RejectReason.MALFORMED),
        (line(interval_end="1740787200"), RejectReason.MALFORMED),  # a Unix time is no RFC 3339 timestamp
        (line(interval_end="2025-03-01"), RejectReason.MALFORMED),
        (line().replace(b"active_import", b"active"), RejectReason.MALFORMED),
        (line()[:40], RejectReason.MALFORMED),
        (b'"unterminated,active_import', RejectReason.MALFORMED),
        (b"\xff" + line(), RejectReason.INVALID_ENCODING),
    ],
)
def test_a_bad_line_is_one_rejection_with_its_reason(content: bytes, reason: RejectReason) -> None:
    outcome = parse_line(content, COLUMNS)
    assert isinstance(outcome, Rejection)
    assert outcome.reason is reason
    assert outcome.detail


def test_values_the_validator_refuses_reach_the_validator() -> None:
    # A value beyond the range is spelled right; whether it is allowed is the domain's rule (value_out_of_range).
    assert isinstance(parse_line(line(value="-1000000000"), COLUMNS), ReadingInput)


def test_the_meterpoint_cell_keys_a_dead_letter() -> None:
    assert meterpoint_of(line(), COLUMNS) == METERPOINT.encode()
    assert meterpoint_of(b"garbage", COLUMNS) is None
    assert meterpoint_of(f"active_import,{METERPOINT}".encode(), Columns(("register", "meterpoint_id"))) == (
        METERPOINT.encode()
    )


def test_lines_are_read_in_bounded_chunks_with_their_numbers() -> None:
    data = b"l2\r\n\r\nl4\n" + b"x" * 300 + b"\nl6\n   \nl8"  # CRLF, a blank line, an overlong line, no final LF
    file = io.BytesIO(data)
    lines, following = read_lines(file, 2, 2, max_line_bytes=128)
    assert [(entry.number, entry.content) for entry in lines] == [(2, b"l2"), (4, b"l4")]
    lines, following = read_lines(file, following, 10, max_line_bytes=128)
    assert [(entry.number, entry.content[:3], entry.too_long) for entry in lines] == [
        (5, b"xxx", True),
        (6, b"l6", False),
        (8, b"l8", False),
    ]
    assert len(lines[0].content) == 128
    assert read_lines(file, following, 10, max_line_bytes=128) == ([], following)


def test_an_optional_meter_index_column_becomes_the_readings_index() -> None:
    columns = parse_header(HEADER + b",meter_index")
    item = parse_line(
        f"{METERPOINT},active_import,2025-03-01T10:15:00Z,PT15M,-0.5,kWh,measured,1234.5".encode(), columns
    )
    assert isinstance(item, ReadingInput)
    assert (item.value, item.meter_index) == (-0.5, 1234.5)
    empty = parse_line(f"{METERPOINT},active_import,2025-03-01T10:15:00Z,PT15M,0.5,kWh,measured,".encode(), columns)
    assert isinstance(empty, ReadingInput)
    assert empty.meter_index is None
    spelled = parse_line(
        f"{METERPOINT},active_import,2025-03-01T10:15:00Z,PT15M,0.5,kWh,measured,1e3".encode(), columns
    )
    assert isinstance(spelled, Rejection)
    assert spelled.reason is RejectReason.MALFORMED
