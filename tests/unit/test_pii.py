"""find_pii(), redact() and contact_details(): emails, phones, cards (Luhn) and
IBANs (mod-97) are found with their normal form; dates, times, prices, years,
order numbers and numbers that fail their check are not."""

from __future__ import annotations

from itertools import pairwise

import pytest

from fenlo_server.pipeline.analysis.pii import (
    contact_details,
    find_pii,
    iban_valid,
    luhn_valid,
    placeholder,
    redact,
)
from fenlo_server.pipeline.analysis.types import PiiSpan


def found(text: str) -> list[tuple[str, str, str]]:
    """(kind, text as written, value) of each span."""
    return [(s.kind, s.text, s.value) for s in find_pii(text)]


def values(text: str, kind: str) -> list[str]:
    return [s.value for s in find_pii(text) if s.kind == kind]


# --- emails ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "written", "value"),
    [
        ("mail me at jane@example.com", "jane@example.com", "jane@example.com"),
        (
            "John.Doe+Sales@Example.CO.UK.",
            "John.Doe+Sales@Example.CO.UK",
            "john.doe+sales@example.co.uk",
        ),
        (
            "(first_last-1@mail.sub.example.org)",
            "first_last-1@mail.sub.example.org",
            "first_last-1@mail.sub.example.org",
        ),
        (
            "correo: maría.lópez@empresa.es, gracias",
            "maría.lópez@empresa.es",
            "maría.lópez@empresa.es",
        ),
        ("<ops@acme.io>", "ops@acme.io", "ops@acme.io"),
    ],
)
def test_emails_are_found_and_lower_cased(text: str, written: str, value: str) -> None:
    assert found(text) == [("email", written, value)]


@pytest.mark.parametrize(
    "text",
    [
        "the decorator is user@ in the code",
        "ping @handle on the forum",
        "foo@bar is not an address",
        "clone git@github.com:org/repo.git",
        "the asset icon@2x.png is blurry",
        "a@b.c",
        "email me at jane@",
        "matrix x@y.T",
    ],
)
def test_things_with_an_at_sign_that_are_not_emails(text: str) -> None:
    assert values(text, "email") == []


# --- phone numbers ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "written", "value"),
    [
        ("Call +44 20 7946 0958 today", "+44 20 7946 0958", "+442079460958"),
        ("UK: +44 (0)20 7946 0958", "+44 (0)20 7946 0958", "+442079460958"),
        ("+1 (555) 123-4567", "+1 (555) 123-4567", "+15551234567"),
        ("+33 6 12 34 56 78.", "+33 6 12 34 56 78", "+33612345678"),
        ("+4915112345678", "+4915112345678", "+4915112345678"),
        ("+34-612-345-678", "+34-612-345-678", "+34612345678"),
        ("0044 20 7946 0958", "0044 20 7946 0958", "+442079460958"),
        ("Appelez le 06 12 34 56 78", "06 12 34 56 78", "0612345678"),
        ("ou 06.12.34.56.78 svp", "06.12.34.56.78", "0612345678"),
        ("Mi número es 612 345 678, gracias", "612 345 678", "612345678"),
        ("Ruf an: 030 12345678", "030 12345678", "03012345678"),
        ("US (555) 123-4567", "(555) 123-4567", "5551234567"),
        ("555-123-4567", "555-123-4567", "5551234567"),
        ("555.123.4567", "555.123.4567", "5551234567"),
        ("1-800-555-1234", "1-800-555-1234", "18005551234"),
        ("call 555-1234", "555-1234", "5551234"),
        ("Tel:0612345678", "0612345678", "0612345678"),
        ("my mobile: 07911 123456!", "07911 123456", "07911123456"),
    ],
)
def test_phone_numbers_in_international_and_national_formats(
    text: str, written: str, value: str
) -> None:
    assert found(text) == [("phone", written, value)]


def test_a_word_glued_to_the_last_group_ends_the_number() -> None:
    assert found("ring 0612345678 5pm") == [("phone", "0612345678", "0612345678")]


def test_two_numbers_side_by_side_are_two_phones() -> None:
    assert values("0612345678 0698765432", "phone") == ["0612345678", "0698765432"]


def test_a_short_number_before_a_phone_is_not_part_of_it() -> None:
    assert found("at 10 0612345678") == [("phone", "0612345678", "0612345678")]


@pytest.mark.parametrize(
    "text",
    [
        # dates and times
        "on 2027-03-03 please",
        "on 03.04.2027 please",
        "on 03/04/2027 please",
        "on 03-04-2027 please",
        "on 2027-03-03 10:30",
        "Meeting 12.03.2027 14:30 in room 5",
        "open 10.30-11.30 and 14:00-18:00",
        # prices and amounts
        "It costs $1,234,567",
        "It costs 1.234.567 €",
        "It costs 1 234 567 €",
        "It costs EUR 12345678",
        "It costs 12345678 dollars",
        "total 1234567.50",
        "between 1500000 and 2000000",
        "we have 12.345.678 visitors",
        # years and ranges
        "in 2027",
        "from 1999-2005",
        "2019 2020 2021",
        "prices 1000-2000",
        # order numbers
        "order ORD-12345678 shipped",
        "order #12345678 shipped",
        "order 0612345678 shipped",
        "invoice no. 061234567",
        "ref: 0612345678",
        "Bestellung Nr. 0612345678",
        "code 12345678AB",
        "serial A1234567890",
        # numbers that are too short, too long or oddly grouped
        "room 12345",
        "12345678",
        "5 55 12 34",
        "0612345678901234",
        "(0612345678)",
        "v1.2345678",
        "3.14159265",
        "50% of 1234567",
    ],
)
def test_numbers_that_are_not_phone_numbers(text: str) -> None:
    assert values(text, "phone") == []


# --- payment cards ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "written", "digits"),
    [
        ("card 4242 4242 4242 4242 exp 12/27", "4242 4242 4242 4242", "4242424242424242"),
        ("4242-4242-4242-4242", "4242-4242-4242-4242", "4242424242424242"),
        ("visa 4111111111111111.", "4111111111111111", "4111111111111111"),
        ("mc 5555 5555 5555 4444", "5555 5555 5555 4444", "5555555555554444"),
        ("amex 3782 822463 10005", "3782 822463 10005", "378282246310005"),
        ("discover 6011 1111 1111 1117", "6011 1111 1111 1117", "6011111111111117"),
        ("diners 3056 9309 0259 04", "3056 9309 0259 04", "30569309025904"),
        ("13 digits 4222222222222", "4222222222222", "4222222222222"),
    ],
)
def test_cards_that_pass_luhn(text: str, written: str, digits: str) -> None:
    assert found(text) == [("card", written, digits)]


def test_a_number_after_a_card_does_not_join_it() -> None:
    assert found("4242 4242 4242 4242 2 tickets") == [
        ("card", "4242 4242 4242 4242", "4242424242424242")
    ]


@pytest.mark.parametrize(
    "text",
    [
        "card 4242 4242 4242 4241",  # one digit off: fails Luhn
        "4111-1111-1111-1112",
        "4111111111111112",
        "3782 822463 10006",
        "0000 0000 0000 0000",  # passes Luhn, but no card starts with 0
        "4242 4242 4242",  # 12 digits
        "1234-5678-9012",
    ],
)
def test_numbers_that_fail_luhn_or_length_are_neither_cards_nor_phones(text: str) -> None:
    assert find_pii(text) == []


def test_luhn() -> None:
    assert luhn_valid("79927398713")
    assert not luhn_valid("79927398710")


# --- IBANs -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "written", "iban"),
    [
        (
            "IBAN DE89 3704 0044 0532 0130 00 please",
            "DE89 3704 0044 0532 0130 00",
            "DE89370400440532013000",
        ),
        ("GB82WEST12345698765432", "GB82WEST12345698765432", "GB82WEST12345698765432"),
        (
            "fr14 2004 1010 0505 0001 3m02 606",
            "fr14 2004 1010 0505 0001 3m02 606",
            "FR1420041010050500013M02606",
        ),
        (
            "ES91 2100 0418 4502 0005 1332.",
            "ES91 2100 0418 4502 0005 1332",
            "ES9121000418450200051332",
        ),
        ("CH93-0076-2011-6238-5295-7", "CH93-0076-2011-6238-5295-7", "CH9300762011623852957"),
        ("iban: BE68 5390 0754 7034, thanks", "BE68 5390 0754 7034", "BE68539007547034"),
        ("NL91ABNA0417164300", "NL91ABNA0417164300", "NL91ABNA0417164300"),
    ],
)
def test_ibans_that_pass_mod_97(text: str, written: str, iban: str) -> None:
    assert found(text) == [("iban", written, iban)]


@pytest.mark.parametrize(
    "text",
    [
        "DE89 3704 0044 0532 0130 01",  # wrong check: the digits are no card or phone either
        "DE88370400440532013000",
        "GB82WEST12345698765433",
        "DE8937040044053201300",  # one character short
        "DE89370400440532013000123",  # too long for Germany
        "XX89370400440532013000",  # no such country
    ],
)
def test_ibans_that_fail_mod_97_or_length_are_nothing(text: str) -> None:
    assert find_pii(text) == []


def test_iban_valid() -> None:
    assert iban_valid("DE89370400440532013000")
    assert not iban_valid("DE89370400440532013001")
    assert not iban_valid("DE89 3704 0044 0532 0130 00")  # only the compact form


# --- spans -----------------------------------------------------------------------------


def test_spans_are_in_code_points_sorted_and_non_overlapping() -> None:
    text = (
        "😀 Ñandú here: +34 612 345 678, ñandu@correo.es, card 4242 4242 4242 4242, "
        "IBAN ES91 2100 0418 4502 0005 1332 😀"
    )
    spans = find_pii(text)
    assert [s.kind for s in spans] == ["phone", "email", "card", "iban"]
    for span in spans:
        assert text[span.start : span.end] == span.text
    for left, right in pairwise(spans):
        assert left.end <= right.start


def test_an_email_with_digits_is_one_email() -> None:
    assert found("write to 0612345678@example.com") == [
        ("email", "0612345678@example.com", "0612345678@example.com")
    ]


def test_text_without_pii() -> None:
    assert find_pii("") == []
    assert find_pii("We are 12 people and want a table at 8pm on Friday, for about $300.") == []


# --- redaction -------------------------------------------------------------------------


def test_redact_replaces_each_span_by_its_placeholder() -> None:
    text = (
        "I'm Jane, jane@example.com, +44 20 7946 0958, card 4242 4242 4242 4242, "
        "IBAN DE89 3704 0044 0532 0130 00."
    )
    assert redact(text) == "I'm Jane, [EMAIL], [PHONE], card [CARD •••• 4242], IBAN [IBAN]."


def test_redact_uses_the_spans_given() -> None:
    text = "jane@example.com and 0612345678"
    spans = find_pii(text)
    assert redact(text, spans) == "[EMAIL] and [PHONE]"
    assert redact(text, spans[:1]) == "[EMAIL] and 0612345678"
    assert redact(text, []) == text


def test_redact_without_pii_returns_the_text() -> None:
    text = "Nothing personal here, see you at 10:30 on 2027-03-03."
    assert redact(text) == text


def test_redact_skips_overlapping_or_stale_spans() -> None:
    text = "abc 0612345678"
    spans = [
        PiiSpan("phone", 4, 14, "0612345678", "0612345678"),
        PiiSpan("email", 6, 10, "1234", "1234"),
        PiiSpan("email", 10, 40, "x", "x"),
    ]
    assert redact(text, spans) == "abc [PHONE]"


def test_placeholders_are_stable() -> None:
    assert placeholder(PiiSpan("email", 0, 1, "a", "a@b.co")) == "[EMAIL]"
    assert placeholder(PiiSpan("phone", 0, 1, "a", "+1555")) == "[PHONE]"
    assert placeholder(PiiSpan("iban", 0, 1, "a", "DE89")) == "[IBAN]"
    assert placeholder(PiiSpan("card", 0, 1, "a", "378282246310005")) == "[CARD •••• 0005]"
    assert redact("4242424242424242 4242-4242-4242-4242") == ("[CARD •••• 4242] [CARD •••• 4242]")


# --- contact details -------------------------------------------------------------------


def test_contact_details_take_the_first_email_and_phone() -> None:
    spans = find_pii(
        "card 4242 4242 4242 4242; call +44 20 7946 0958 or 0612345678; "
        "mail Jane@Example.com or bob@example.com"
    )
    assert contact_details(spans) == {"email": "jane@example.com", "phone": "+442079460958"}


def test_contact_details_of_nothing() -> None:
    assert contact_details([]) == {}
    assert contact_details(find_pii("IBAN DE89 3704 0044 0532 0130 00")) == {}
    assert contact_details(find_pii("only 0612345678")) == {"phone": "0612345678"}
