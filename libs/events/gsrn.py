"""GSRN-18 meterpoint ids: 18 digits whose last digit is the GS1 mod-10 check digit.

The check digit catches every single-digit typo and most swaps of neighbouring digits, so a reading for a
mistyped meterpoint is refused at the boundary instead of creating a phantom meterpoint on the read side.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, WithJsonSchema
from pydantic_core import PydanticCustomError

GSRN_LENGTH = 18
_ZERO = ord("0")


def _weighted_sum(digits: bytes) -> int:
    """The GS1 weighted sum of the first 17 digits (ASCII bytes)."""
    # GS1 weights run 3, 1, 3, ... leftwards from the check digit: with 17 payload digits, weight 3 sits on the
    # even indexes. Summing ASCII codes and removing the offset afterwards is several times faster than int()
    # per digit; this runs for every reading a consumer validates.
    return 3 * sum(digits[0:17:2]) + sum(digits[1:17:2]) - (3 * 9 + 8) * _ZERO


def _is_ascii_digits(text: str) -> bool:
    # str.isdigit alone also accepts other scripts' digits (e.g. Arabic-Indic), which are no GSRN.
    return text.isascii() and text.isdigit()


def gsrn_check_digit(first17: str) -> int:
    """The GS1 mod-10 check digit for the first 17 digits of a GSRN (e.g. to complete a simulated id)."""
    if len(first17) != GSRN_LENGTH - 1 or not _is_ascii_digits(first17):
        raise ValueError(f"expected 17 ASCII digits, got {first17!r}")
    return -_weighted_sum(first17.encode("ascii")) % 10


def with_check_digit(first17: str) -> str:
    """The full GSRN-18 for 17 digits: ``first17`` followed by its check digit (for simulators and tests)."""
    return f"{first17}{gsrn_check_digit(first17)}"


def is_valid_gsrn(value: str) -> bool:
    """True when ``value`` is 18 ASCII digits with a correct GS1 check digit."""
    if len(value) != GSRN_LENGTH or not _is_ascii_digits(value):
        return False
    digits = value.encode("ascii")
    return -_weighted_sum(digits) % 10 == digits[17] - _ZERO


def _validate_gsrn(value: str) -> str:
    if len(value) != GSRN_LENGTH or not _is_ascii_digits(value):
        raise PydanticCustomError("gsrn_format", "a GSRN has exactly 18 digits (0-9)")
    digits = value.encode("ascii")
    expected = -_weighted_sum(digits) % 10
    if expected != digits[17] - _ZERO:
        # Naming both digits makes a typo easy to find; neither is personal data, so DLQ headers may carry it.
        raise PydanticCustomError(
            "gsrn_check_digit",
            "GSRN check digit is {actual} but the GS1 mod-10 check digit of the first 17 digits is {expected}",
            {"actual": digits[17] - _ZERO, "expected": expected},
        )
    return value


GSRN_JSON_SCHEMA = {
    "type": "string",
    "pattern": "^[0-9]{18}$",
    "format": "gsrn",
    "description": (
        "GSRN-18 meterpoint id: 18 digits, the last one the GS1 mod-10 check digit "
        "(custom format 'gsrn'; validators must check the digit)."
    ),
    "examples": ["571313180400000025"],
}

Gsrn = Annotated[str, AfterValidator(_validate_gsrn), WithJsonSchema(GSRN_JSON_SCHEMA)]
"""A pydantic-validated GSRN-18 (errors ``gsrn_format`` or ``gsrn_check_digit``)."""
