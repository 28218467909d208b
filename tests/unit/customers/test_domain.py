"""The customer rules without I/O: validation and normalisation, periods, versions, search criteria."""

from __future__ import annotations

from dataclasses import replace
from datetime import date

import pytest

from libs.events import Address as EventAddress
from libs.events import Contact as EventContact
from libs.events import CustomerRegistered, make_event, with_check_digit
from services.customers.domain import (
    Conflict,
    Customer,
    DetailsInput,
    InvalidRequest,
    MeterpointLink,
    apply_update,
    close_link,
    customer_search,
    format_customer_id,
    new_link,
    parse_date,
    validate_customer_id,
    validate_details,
    validate_meterpoint_id,
)

GSRN = with_check_digit("57131318040000002")
OTHER_GSRN = with_check_digit("57131318040000917")

RAW = DetailsInput(
    kind="person",
    name="  Mette Hansen ",
    email="Mette.Hansen@Example.DK",
    phone="+45 20 12 34 56",
    street="Vestergade 12, 2. tv",
    postcode="8000",
    city="Aarhus C",
    country="DK",
)


def violations(error: pytest.ExceptionInfo[InvalidRequest]) -> dict[str, str]:
    return {v.field: v.message for v in error.value.violations}


def test_details_are_normalised() -> None:
    details = validate_details(RAW)
    assert details.name == "Mette Hansen"
    assert details.contact.email == "Mette.Hansen@example.dk"  # the domain is case-insensitive, the local part not
    assert details.contact.phone == "+4520123456"
    assert details.contact.address.postcode == "8000"


@pytest.mark.parametrize(
    ("country", "postcode", "expected"),
    [
        ("DK", " 2100 ", "2100"),
        ("SE", "11455", "114 55"),
        ("SE", "114 55", "114 55"),
        ("NL", "1012ab", "1012 AB"),
        ("DE", "24937", "24937"),
        ("GB", "sw1a  1aa", "SW1A 1AA"),  # no rule of its own: the generic one
    ],
)
def test_postcodes_follow_the_country(country: str, postcode: str, expected: str) -> None:
    details = validate_details(replace(RAW, country=country, postcode=postcode))
    assert details.contact.address.postcode == expected


@pytest.mark.parametrize(("country", "postcode"), [("DK", "80000"), ("DK", "8OOO"), ("SE", "1145"), ("GB", "!!")])
def test_wrong_postcodes_are_refused_with_the_expected_format(country: str, postcode: str) -> None:
    with pytest.raises(InvalidRequest) as error:
        validate_details(replace(RAW, country=country, postcode=postcode))
    assert "contact.address.postcode" in violations(error)
    assert postcode not in violations(error)["contact.address.postcode"]  # messages never echo the value


def test_every_violation_is_reported_at_once() -> None:
    raw = replace(RAW, kind="alien", name=" ", email="no-at-sign", phone="12345", country="dk", street="\x07bell")
    with pytest.raises(InvalidRequest) as error:
        validate_details(raw)
    assert set(violations(error)) == {
        "kind",
        "name",
        "contact.email",
        "contact.phone",
        "contact.address.country",
        "contact.address.street",
    }


def test_phone_accepts_00_prefix_and_separators() -> None:
    assert validate_details(replace(RAW, phone="0045 (20) 12-34.56")).contact.phone == "+4520123456"


def test_optional_contact_parts_may_be_missing_or_blank() -> None:
    details = validate_details(replace(RAW, email=None, phone="  "))
    assert details.contact.email is None
    assert details.contact.phone is None


def test_accepted_details_always_make_a_valid_event() -> None:
    for raw in (RAW, replace(RAW, country="SE", postcode="11455"), replace(RAW, country="GB", postcode="sw1a 1aa")):
        details = validate_details(raw)
        address = details.contact.address
        event = CustomerRegistered(
            customer_id=format_customer_id(100_000),
            kind=details.kind,
            name=details.name,
            contact=EventContact(
                email=details.contact.email,
                phone=details.contact.phone,
                address=EventAddress(
                    street=address.street, postcode=address.postcode, city=address.city, country=address.country
                ),
            ),
            version=1,
        )
        assert make_event(event, source="/gridhub/customers").subject == "C-100000"


def test_meterpoint_ids_need_the_gs1_check_digit() -> None:
    assert validate_meterpoint_id(f" {GSRN} ") == GSRN
    wrong = GSRN[:17] + str((int(GSRN[17]) + 1) % 10)
    with pytest.raises(InvalidRequest, match="check digit"):
        validate_meterpoint_id(wrong)
    with pytest.raises(InvalidRequest, match="18 digits"):
        validate_meterpoint_id("57131318040000002X")


def test_customer_ids_have_the_service_format() -> None:
    assert validate_customer_id("C-100234") == "C-100234"
    for bad in ("100234", "C-12", "c-100234", "C-100234; DROP TABLE"):
        with pytest.raises(InvalidRequest):
            validate_customer_id(bad)


def test_impossible_dates_are_refused() -> None:
    assert parse_date("2024-02-29", "moveIn") == date(2024, 2, 29)
    with pytest.raises(InvalidRequest):
        parse_date("2025-02-29", "moveIn")


def link(customer: str, move_in: date, move_out: date | None = None, meterpoint: str = GSRN) -> MeterpointLink:
    return MeterpointLink(customer, meterpoint, move_in, move_out)


def test_a_meterpoint_has_at_most_one_customer_per_day() -> None:
    moved_out = link("C-100001", date(2024, 1, 1), date(2025, 3, 31))
    assert new_link(link("C-100002", date(2025, 4, 1)), [moved_out]) is not None  # the next day is free
    with pytest.raises(Conflict) as conflict:
        new_link(link("C-100002", date(2025, 3, 31)), [moved_out])  # the last day is taken
    assert conflict.value.reason == "overlapping_link"
    with pytest.raises(Conflict):
        new_link(link("C-100002", date(2023, 6, 1)), [moved_out])  # open-ended from before: overlaps too
    open_link = link("C-100002", date(2025, 4, 1))
    with pytest.raises(Conflict):
        new_link(link("C-100003", date(2030, 1, 1)), [moved_out, open_link])
    assert new_link(link("C-100003", date(2030, 1, 1), meterpoint=OTHER_GSRN), [open_link]) is not None


def test_repeating_the_same_link_is_a_no_op() -> None:
    existing = link("C-100001", date(2025, 4, 1))
    assert new_link(link("C-100001", date(2025, 4, 1)), [existing]) is None
    with pytest.raises(Conflict):
        new_link(link("C-100001", date(2025, 5, 1)), [existing])


def test_move_out_is_not_before_move_in() -> None:
    existing = link("C-100001", date(2025, 4, 1))
    assert close_link(existing, date(2025, 4, 1)).move_out == date(2025, 4, 1)  # one day is a period
    with pytest.raises(InvalidRequest) as error:
        close_link(existing, date(2025, 3, 31))
    assert error.value.reason == "move_out_before_move_in"


def test_updates_need_the_current_version() -> None:
    details = validate_details(RAW)
    current = Customer("C-100001", details, version=3)
    with pytest.raises(Conflict) as conflict:
        apply_update(current, 2, details)
    assert conflict.value.current_version == 3
    assert apply_update(current, 3, details) is None  # nothing changed: no new version
    changed = apply_update(current, 3, replace(details, name="Mette Holm"))
    assert changed is not None
    assert changed.version == 4


def test_search_needs_a_criterion_and_bounded_pages() -> None:
    search = customer_search(" hans ", "114 55", 2, 50)
    assert (search.name_contains, search.postcode_key, search.offset) == ("hans", "11455", 50)
    with pytest.raises(InvalidRequest):
        customer_search(None, None, 1, 20)
    with pytest.raises(InvalidRequest):
        customer_search("h", None, 1, 20)
    with pytest.raises(InvalidRequest):
        customer_search("hans", None, 1, 101)
