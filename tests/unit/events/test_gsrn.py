"""GSRN-18 meterpoint ids and their GS1 mod-10 check digit."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from libs.events.gsrn import Gsrn, gsrn_check_digit, is_valid_gsrn, with_check_digit

# Danish/Nordic-style GSRNs (GS1 prefix 57), check digits worked out by hand with weights 3,1,3,... from the left.
VALID = ["571313180400000025", "571313180400009172", "571313100000000003", "578000000000000004"]


def reference_check_digit(first17: str) -> int:
    """The GS1 rule as written in the spec: weights 3 and 1 alternate leftwards from the check digit."""
    total = sum(int(digit) * (3 if i % 2 == 0 else 1) for i, digit in enumerate(reversed(first17)))
    return (10 - total % 10) % 10


class Meterpoint(BaseModel):
    meterpoint_id: Gsrn


@pytest.mark.parametrize("gsrn", VALID)
def test_real_format_gsrns_are_valid(gsrn: str) -> None:
    assert is_valid_gsrn(gsrn)
    assert Meterpoint(meterpoint_id=gsrn).meterpoint_id == gsrn


def test_the_check_digit_agrees_with_a_known_gtin_13() -> None:
    # The same mod-10 rule gives the check digit of EAN/GTIN-13 4006381333931 (a well-known example).
    assert reference_check_digit("400638133393") == 1


@pytest.mark.parametrize(
    "bad",
    [
        "571313180400000026",  # wrong check digit
        "571313180400000020",
        "57131318040000002",  # 17 digits
        "5713131804000000250",  # 19 digits
        "",
        "57131318040000002X",
        "57131318O400000025",  # letter O for zero
        " 571313180400000025",
        "57131318040000002\u0665",  # Arabic-Indic digit five: a digit to str.isdigit, not to GS1
        "+71313180400000025",
    ],
)
def test_malformed_gsrns_are_invalid(bad: str) -> None:
    assert not is_valid_gsrn(bad)
    with pytest.raises(ValidationError):
        Meterpoint(meterpoint_id=bad)


def test_a_wrong_check_digit_is_named_in_the_error() -> None:
    with pytest.raises(ValidationError) as caught:
        Meterpoint(meterpoint_id="571313180400000026")
    error = caught.value.errors()[0]
    assert error["type"] == "gsrn_check_digit"
    assert "check digit is 6" in error["msg"]
    assert "is 5" in error["msg"]


def test_a_wrong_length_says_what_a_gsrn_looks_like() -> None:
    with pytest.raises(ValidationError) as caught:
        Meterpoint(meterpoint_id="5713131804")
    assert caught.value.errors()[0]["type"] == "gsrn_format"
    assert "18 digits" in caught.value.errors()[0]["msg"]


def test_a_number_is_no_gsrn() -> None:
    with pytest.raises(ValidationError):
        Meterpoint.model_validate_json(b'{"meterpoint_id": 571313180400000025}')


@pytest.mark.parametrize("bad", ["5713131804000000", "571313180400000025", "5713131804000000X"])
def test_check_digit_needs_exactly_17_digits(bad: str) -> None:
    with pytest.raises(ValueError, match="17 ASCII digits"):
        gsrn_check_digit(bad)


first17 = st.from_regex(r"\A[0-9]{17}\Z")


@given(first17)
def test_the_computed_check_digit_always_validates(digits: str) -> None:
    assert gsrn_check_digit(digits) == reference_check_digit(digits)
    assert is_valid_gsrn(with_check_digit(digits))


@given(first17, st.integers(min_value=0, max_value=17), st.integers(min_value=1, max_value=9))
def test_any_single_digit_change_is_detected(digits: str, position: int, delta: int) -> None:
    gsrn = with_check_digit(digits)
    changed = gsrn[:position] + str((int(gsrn[position]) + delta) % 10) + gsrn[position + 1 :]
    assert not is_valid_gsrn(changed)


@given(first17, st.integers(min_value=0, max_value=16))
def test_most_swaps_of_neighbouring_digits_are_detected(digits: str, position: int) -> None:
    gsrn = with_check_digit(digits)
    a, b = int(gsrn[position]), int(gsrn[position + 1])
    swapped = gsrn[:position] + gsrn[position + 1] + gsrn[position] + gsrn[position + 2 :]
    # Mod 10 with weights 3 and 1 misses a swap only when the digits are equal or differ by 5.
    assert is_valid_gsrn(swapped) == (abs(a - b) in (0, 5))
