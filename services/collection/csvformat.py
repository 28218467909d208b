"""The readings CSV format of FTP file drops (contracts/files/readings-csv.md): header and lines to items. Pure.

A file is UTF-8 text, one reading per line, with a header line naming the columns. Each line becomes a
`ReadingInput` (then validated by the one validator in ``domain.py``, like a REST item) or a `Rejection` with
its reason: a line that is no UTF-8 (``invalid_encoding``), longer than the limit (``line_too_long``), not a
CSV record with one field per column, or with a value or timestamp not written as the format says
(``malformed``). Values are checked against the format's spelling first (a decimal number, an RFC 3339
timestamp with an offset), so that pydantic's lax parsing of text cannot let through what the contract refuses
(a Unix time, ``1e3``, ``1_000``).
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass

from pydantic import ValidationError

from libs.events.fields import RFC3339_PATTERN
from services.collection.domain import ReadingInput, Rejection, RejectReason, malformed

REQUIRED_COLUMNS = ("meterpoint_id", "register", "interval_end", "resolution", "value", "unit", "quality")
OPTIONAL_COLUMNS = ("source", "meter_index")
EXAMPLE_HEADER = ",".join((*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS))
_KNOWN = frozenset((*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS))
_BOM = b"\xef\xbb\xbf"
_VALUE = re.compile(r"-?[0-9]+(\.[0-9]+)?")
_TIMESTAMP = re.compile(RFC3339_PATTERN)


class HeaderError(ValueError):
    """The first line is not a header of this format: the whole file is refused (``invalid_header``)."""

    reason = "invalid_header"


@dataclass(frozen=True, slots=True)
class Columns:
    """The columns a file's header names, in the file's order."""

    names: tuple[str, ...]

    def index(self, name: str) -> int | None:
        """The position of column ``name``, or None when the file has no such column."""
        return self.names.index(name) if name in self.names else None


def strip_line_end(raw: bytes) -> bytes:
    """``raw`` without its LF or CRLF."""
    if raw.endswith(b"\n"):
        raw = raw[:-1]
    if raw.endswith(b"\r"):
        raw = raw[:-1]
    return raw


def _fields(text: str) -> list[str]:
    # One line is one record: quotes may wrap a field, but a field never spans lines (contracts/files/).
    return next(csv.reader([text], strict=True), [])


def parse_header(line: bytes) -> Columns:
    """The columns of a header line (without its line end; a UTF-8 BOM is allowed); `HeaderError` if it is none."""
    if line.startswith(_BOM):
        line = line[len(_BOM) :]
    if not line.strip():
        raise HeaderError(f"the first line must be a header, e.g. {EXAMPLE_HEADER}; it is empty")
    try:
        names = [name.strip() for name in _fields(line.decode("utf-8"))]
    except (UnicodeDecodeError, csv.Error):
        raise HeaderError(f"the first line is no UTF-8 CSV header; expected e.g. {EXAMPLE_HEADER}") from None
    unknown = sorted({name for name in names if name not in _KNOWN})
    if unknown:
        if any(character.isdigit() for name in unknown for character in name):
            # Most likely a reading, not a header: its cells (meterpoint, consumption) are not echoed back.
            raise HeaderError(f"the first line looks like data, not a header; expected e.g. {EXAMPLE_HEADER}")
        # Names without digits are column names, not the sender's data: naming them finds the typo.
        shown = ", ".join(repr(name[:40]) for name in unknown[:5])
        raise HeaderError(
            f"unknown column(s) {shown}; the columns are {EXAMPLE_HEADER} (source and meter_index optional)"
        )
    duplicated = sorted({name for name in names if names.count(name) > 1})
    if duplicated:
        raise HeaderError(f"column(s) {', '.join(duplicated)} appear more than once")
    missing = [name for name in REQUIRED_COLUMNS if name not in names]
    if missing:
        raise HeaderError(f"missing column(s) {', '.join(missing)}; the columns are {EXAMPLE_HEADER}")
    return Columns(tuple(names))


def parse_line(content: bytes, columns: Columns) -> ReadingInput | Rejection:
    """One line (without its line end) as a typed item, or why it cannot be one."""
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError:
        return Rejection(RejectReason.INVALID_ENCODING, "line: not UTF-8 text")
    try:
        fields = _fields(text)
    except csv.Error as error:
        return Rejection(RejectReason.MALFORMED, f"line: not a CSV record ({error})")
    if len(fields) != len(columns.names):
        return Rejection(
            RejectReason.MALFORMED, f"line: {len(fields)} field(s), the header names {len(columns.names)} columns"
        )
    row = {name: field.strip() for name, field in zip(columns.names, fields, strict=True)}
    if not _VALUE.fullmatch(row["value"]):
        return Rejection(RejectReason.MALFORMED, "value: a decimal number with '.' (e.g. 0.25), no exponent")
    if not _TIMESTAMP.fullmatch(row["interval_end"]):
        return Rejection(RejectReason.MALFORMED, "interval_end: RFC 3339 with a UTC offset (e.g. 2025-03-01T00:15:00Z)")
    for optional in OPTIONAL_COLUMNS:
        if row.get(optional) == "":
            del row[optional]  # an empty cell means the default, as an absent column does
    index = row.get("meter_index")
    if index is not None and not _VALUE.fullmatch(index):
        return Rejection(RejectReason.MALFORMED, "meter_index: a decimal number with '.' (e.g. 1234.5), no exponent")
    try:
        return ReadingInput.model_validate(row, strict=False)
    except ValidationError as error:
        return malformed(error)


def meterpoint_of(content: bytes, columns: Columns) -> bytes | None:
    """The meterpoint cell of a line, best effort, to key its dead letter like the reading it meant to be."""
    position = columns.index("meterpoint_id")
    if position is None:
        return None
    cells = content.split(b",")
    if position >= len(cells):
        return None
    cell = cells[position].strip().strip(b'"')
    return cell if 0 < len(cell) <= 64 and cell.isdigit() else None


def too_long(limit: int) -> Rejection:
    """The rejection of a line longer than ``limit`` bytes."""
    return Rejection(RejectReason.LINE_TOO_LONG, f"line: longer than {limit} bytes")


__all__ = [
    "EXAMPLE_HEADER",
    "OPTIONAL_COLUMNS",
    "REQUIRED_COLUMNS",
    "Columns",
    "HeaderError",
    "meterpoint_of",
    "parse_header",
    "parse_line",
    "strip_line_end",
    "too_long",
]
