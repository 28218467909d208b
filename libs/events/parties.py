"""Market participant ids: a grid company (the tenant), a datahub or a neighbour is a GLN-13 or an EIC-16.

- **GLN** (GS1 Global Location Number): 13 digits, the last the GS1 mod-10 check digit (weights 1, 3, 1, ...
  from the left over the first 12). The Danish and Norwegian datahubs use it (coding scheme A10).
- **EIC** (ENTSO-E Energy Identification Code): 16 characters of ``0-9``, ``A-Z`` and ``-``; the last is a check
  character: the first 15 weighted 16, 15, ..., 2, summed (digit = its value, ``A``-``Z`` = 10-35, ``-`` = 36),
  and the check is the alphabet's character at 36 - ((sum - 1) mod 37), never ``-`` (coding scheme A01).

A mistyped owner would hand meterpoints to nobody (or to somebody else), so the check is part of the type.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import AfterValidator, WithJsonSchema
from pydantic_core import PydanticCustomError

_EIC_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ-"
MARKET_PARTICIPANT_PATTERN = r"^([0-9]{13}|[0-9A-Z-]{15}[0-9A-Z])$"


class CodingScheme(StrEnum):
    """How a market participant id is coded (the CIM ``codingScheme`` values)."""

    GLN = "A10"
    EIC = "A01"


def gln_check_digit(first12: str) -> int:
    """The GS1 mod-10 check digit of the first 12 digits of a GLN."""
    if len(first12) != 12 or not (first12.isascii() and first12.isdigit()):
        raise ValueError(f"expected 12 ASCII digits, got {first12!r}")
    total = sum(int(digit) * (3 if index % 2 else 1) for index, digit in enumerate(first12))
    return -total % 10


def is_valid_gln(value: str) -> bool:
    """True for 13 ASCII digits with a correct check digit."""
    if len(value) != 13 or not (value.isascii() and value.isdigit()):
        return False
    return gln_check_digit(value[:12]) == int(value[12])


def eic_check_character(first15: str) -> str:
    """The check character of the first 15 characters of an EIC."""
    if len(first15) != 15 or any(char not in _EIC_ALPHABET for char in first15):
        raise ValueError(f"expected 15 characters of 0-9, A-Z and '-', got {first15!r}")
    total = sum(_EIC_ALPHABET.index(char) * (16 - index) for index, char in enumerate(first15))
    return _EIC_ALPHABET[36 - (total - 1) % 37]


def is_valid_eic(value: str) -> bool:
    """True for 16 characters of 0-9, A-Z and '-' ending in their check character."""
    if len(value) != 16 or any(char not in _EIC_ALPHABET for char in value):
        return False
    return value[15] != "-" and eic_check_character(value[:15]) == value[15]


def coding_scheme(value: str) -> CodingScheme:
    """The scheme of a valid market participant id (ValueError for anything else)."""
    if is_valid_gln(value):
        return CodingScheme.GLN
    if is_valid_eic(value):
        return CodingScheme.EIC
    raise ValueError("not a GLN-13 or EIC-16 with a correct check character")


def _validate(value: str) -> str:
    if len(value) == 13 and value.isascii() and value.isdigit():
        if not is_valid_gln(value):
            raise PydanticCustomError("gln_check_digit", "the GLN's check digit does not match its first 12 digits")
        return value
    if not is_valid_eic(value):
        raise PydanticCustomError(
            "market_participant_id", "a market participant id is a GLN-13 or an EIC-16 with a correct check character"
        )
    return value


MARKET_PARTICIPANT_JSON_SCHEMA = {
    "type": "string",
    "pattern": MARKET_PARTICIPANT_PATTERN,
    "format": "market-participant-id",
    "description": (
        "Market participant id: a GLN-13 (GS1 mod-10 check digit) or an EIC-16 (ENTSO-E check character); "
        "custom format 'market-participant-id', validators must check the last character."
    ),
    "examples": ["5790000432752"],
}

MarketParticipantId = Annotated[str, AfterValidator(_validate), WithJsonSchema(MARKET_PARTICIPANT_JSON_SCHEMA)]
"""A pydantic-validated GLN-13 or EIC-16 (errors ``gln_check_digit`` or ``market_participant_id``)."""
