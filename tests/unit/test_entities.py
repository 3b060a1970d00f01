"""extract_entities(): dates and times resolved against a fixed now in the
workspace's time zone, money in ISO 4217, emails and phones from find_pii,
the workspace's products, and people's names; sorted and non-overlapping."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from itertools import pairwise
from zoneinfo import ZoneInfo

import pytest

from fenlo_server.pipeline.analysis.entities import extract_entities
from fenlo_server.pipeline.analysis.pii import find_pii
from fenlo_server.pipeline.analysis.types import Entity

MADRID = ZoneInfo("Europe/Madrid")
NOW = datetime(2027, 3, 1, 10, 0, tzinfo=MADRID)  # a Monday, 10:00 (UTC+1)


def entities(
    text: str,
    language: str = "en",
    *,
    products: Sequence[str] = (),
    now: datetime = NOW,
    time_zone: str = "Europe/Madrid",
) -> list[Entity]:
    return extract_entities(
        text, products=products, now=now, time_zone=time_zone, language=language
    )


def of_kind(
    text: str,
    kind: str,
    language: str = "en",
    *,
    products: Sequence[str] = (),
    now: datetime = NOW,
    time_zone: str = "Europe/Madrid",
) -> list[tuple[str, str]]:
    """(text as written, value) of each entity of one kind."""
    found = entities(text, language, products=products, now=now, time_zone=time_zone)
    return [(e.text, e.value) for e in found if e.kind == kind]


def when(text: str, language: str = "en") -> list[tuple[str, str]]:
    return of_kind(text, "date_time", language)


# --- dates -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "written", "value"),
    [
        ("on March 3rd", "March 3rd", "2027-03-03"),
        ("Mar. 15", "Mar. 15", "2027-03-15"),
        ("March 3rd, 2028", "March 3rd, 2028", "2028-03-03"),
        ("3 March 2027", "3 March 2027", "2027-03-03"),
        ("the 3rd of April", "3rd of April", "2027-04-03"),
        ("Tuesday, March 9", "Tuesday, March 9", "2027-03-09"),
        ("2027-03-03", "2027-03-03", "2027-03-03"),
        ("2027/12/24", "2027/12/24", "2027-12-24"),
        ("on 03/04/2027", "03/04/2027", "2027-03-04"),
        ("on 03/04/27", "03/04/27", "2027-03-04"),
        ("on 03.04.2027", "03.04.2027", "2027-04-03"),  # dots are day first anywhere
        ("May 3", "May 3", "2027-05-03"),
        ("on the 15th", "the 15th", "2027-03-15"),
        # a date without a year is the next one to come
        ("February 14", "February 14", "2028-02-14"),
        ("on 1 March", "1 March", "2027-03-01"),
    ],
)
def test_absolute_dates(text: str, written: str, value: str) -> None:
    assert when(text) == [(written, value)]


@pytest.mark.parametrize(
    ("text", "language", "value"),
    [
        ("03/04", "en", "2027-03-04"),
        ("03/04", "en-US", "2027-03-04"),
        ("03/04", "en-GB", "2027-04-03"),
        ("03/04", "es", "2027-04-03"),
        ("03/04", "fr", "2027-04-03"),
        ("03/04", "de", "2027-04-03"),
        ("25/12", "en", "2027-12-25"),  # only one reading is a date
        ("12/25", "es", "2027-12-25"),
    ],
)
def test_numeric_dates_follow_the_language(text: str, language: str, value: str) -> None:
    assert when(text, language) == [(text, value)]


@pytest.mark.parametrize(
    ("text", "language", "written", "value"),
    [
        ("el 3 de marzo de 2027", "es", "3 de marzo de 2027", "2027-03-03"),
        ("el 15 de agosto", "es", "15 de agosto", "2027-08-15"),
        ("le 1er mars", "fr", "1er mars", "2027-03-01"),
        ("le 14 juillet 2027", "fr", "14 juillet 2027", "2027-07-14"),
        ("am 3. März 2027", "de", "3. März 2027", "2027-03-03"),
        ("am 24. Dezember", "de", "24. Dezember", "2027-12-24"),
        ("am 3.4. um", "de", "3.4", "2027-04-03"),
    ],
)
def test_month_names_in_spanish_french_and_german(
    text: str, language: str, written: str, value: str
) -> None:
    assert when(text, language) == [(written, value)]


@pytest.mark.parametrize(
    "text",
    [
        "2027-02-30",
        "13/13",
        "31/02",
        "24/7 support",
        "you may 3 times",
        "those 2 may be late",
        "rated 3.5 stars",
        "3-4 people",
        "in 2027",
        "from 2019 to 2027",
        "we are 12",
    ],
)
def test_not_dates(text: str) -> None:
    assert when(text) == []


# --- relative dates --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "language", "written", "value"),
    [
        ("today", "en", "today", "2027-03-01"),
        ("tomorrow", "en", "tomorrow", "2027-03-02"),
        ("the day after tomorrow", "en", "the day after tomorrow", "2027-03-03"),
        ("yesterday", "en", "yesterday", "2027-02-28"),
        ("tonight", "en", "tonight", "2027-03-01"),
        ("in 2 weeks", "en", "in 2 weeks", "2027-03-15"),
        ("in a week", "en", "in a week", "2027-03-08"),
        ("in three days", "en", "in three days", "2027-03-04"),
        ("in 2 months", "en", "in 2 months", "2027-05-01"),
        ("in a year", "en", "in a year", "2028-03-01"),
        ("10 days from now", "en", "10 days from now", "2027-03-11"),
        ("hoy", "es", "hoy", "2027-03-01"),
        ("mañana", "es", "mañana", "2027-03-02"),
        ("pasado mañana", "es", "pasado mañana", "2027-03-03"),
        ("ayer", "es", "ayer", "2027-02-28"),
        ("en 2 semanas", "es", "en 2 semanas", "2027-03-15"),
        ("dentro de un mes", "es", "dentro de un mes", "2027-04-01"),
        ("demain", "fr", "demain", "2027-03-02"),
        ("après-demain", "fr", "après-demain", "2027-03-03"),
        ("aujourd'hui", "fr", "aujourd'hui", "2027-03-01"),
        ("hier", "fr", "hier", "2027-02-28"),
        ("dans 15 jours", "fr", "dans 15 jours", "2027-03-16"),
        ("morgen", "de", "morgen", "2027-03-02"),
        ("übermorgen", "de", "übermorgen", "2027-03-03"),
        ("heute", "de", "heute", "2027-03-01"),
        ("in zwei Wochen", "de", "in zwei Wochen", "2027-03-15"),
    ],
)
def test_relative_days(text: str, language: str, written: str, value: str) -> None:
    assert when(text, language) == [(written, value)]


@pytest.mark.parametrize(
    ("text", "language"),
    [
        ("Guten Morgen!", "de"),
        ("am Morgen", "de"),
        ("por la mañana", "es"),
        ("de la mañana", "es"),
        ("hier ist Anna", "de"),  # German "here", French "yesterday"
    ],
)
def test_morning_and_here_are_not_days(text: str, language: str) -> None:
    assert when(text, language) == []


@pytest.mark.parametrize(
    ("text", "language", "written", "value"),
    [
        # Monday 1 March 2027: "this"/bare is the next to come (today included),
        # "next" is that day in the next Monday-to-Sunday week.
        ("Monday", "en", "Monday", "2027-03-01"),
        ("on Friday", "en", "Friday", "2027-03-05"),
        ("this Friday", "en", "this Friday", "2027-03-05"),
        ("this coming Friday", "en", "this coming Friday", "2027-03-05"),
        ("next Tuesday", "en", "next Tuesday", "2027-03-09"),
        ("next Monday", "en", "next Monday", "2027-03-08"),
        ("next Sunday", "en", "next Sunday", "2027-03-14"),
        ("last Friday", "en", "last Friday", "2027-02-26"),
        ("last Monday", "en", "last Monday", "2027-02-22"),
        ("el martes", "es", "martes", "2027-03-02"),
        ("el próximo martes", "es", "próximo martes", "2027-03-09"),
        ("el martes que viene", "es", "martes que viene", "2027-03-09"),
        ("este viernes", "es", "este viernes", "2027-03-05"),
        ("el sábado", "es", "sábado", "2027-03-06"),
        ("mardi prochain", "fr", "mardi prochain", "2027-03-09"),
        ("ce vendredi", "fr", "ce vendredi", "2027-03-05"),
        ("samedi", "fr", "samedi", "2027-03-06"),
        ("nächsten Dienstag", "de", "nächsten Dienstag", "2027-03-09"),
        ("am Freitag", "de", "Freitag", "2027-03-05"),
        ("letzten Sonntag", "de", "letzten Sonntag", "2027-02-28"),
    ],
)
def test_weekdays(text: str, language: str, written: str, value: str) -> None:
    assert when(text, language) == [(written, value)]


def test_weekdays_from_a_sunday() -> None:
    sunday = datetime(2027, 3, 7, 9, 0, tzinfo=MADRID)
    assert of_kind("Friday", "date_time", now=sunday) == [("Friday", "2027-03-12")]
    assert of_kind("next Monday", "date_time", now=sunday) == [("next Monday", "2027-03-08")]
    assert of_kind("Sunday", "date_time", now=sunday) == [("Sunday", "2027-03-07")]


# --- times -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "written", "value"),
    [
        # 10:00 now: a time still to come is today, one gone by is tomorrow.
        ("3pm", "3pm", "2027-03-01T15:00:00+01:00"),
        ("at 3 p.m.", "at 3 p.m.", "2027-03-01T15:00:00+01:00"),
        ("10:30 am", "10:30 am", "2027-03-01T10:30:00+01:00"),
        ("9am", "9am", "2027-03-02T09:00:00+01:00"),
        ("12pm", "12pm", "2027-03-01T12:00:00+01:00"),
        ("12am", "12am", "2027-03-02T00:00:00+01:00"),
        ("15:30", "15:30", "2027-03-01T15:30:00+01:00"),
        ("at 10", "at 10", "2027-03-01T10:00:00+01:00"),  # now is still today
        ("at 9", "at 9", "2027-03-02T09:00:00+01:00"),
        ("at 3", "at 3", "2027-03-01T15:00:00+01:00"),  # a bare 1-7 is the afternoon
        ("at 7 in the morning", "at 7 in the morning", "2027-03-02T07:00:00+01:00"),
        ("at 9 o'clock", "at 9 o'clock", "2027-03-02T09:00:00+01:00"),
        ("half past two", "half past two", "2027-03-01T14:30:00+01:00"),
        ("quarter to 5", "quarter to 5", "2027-03-01T16:45:00+01:00"),
        ("at noon", "at noon", "2027-03-01T12:00:00+01:00"),
        ("midnight", "midnight", "2027-03-02T00:00:00+01:00"),
    ],
)
def test_times(text: str, written: str, value: str) -> None:
    assert when(text) == [(written, value)]


@pytest.mark.parametrize(
    ("text", "language", "written", "value"),
    [
        ("a las 17:00", "es", "a las 17:00", "2027-03-01T17:00:00+01:00"),
        ("a las 5 de la tarde", "es", "a las 5 de la tarde", "2027-03-01T17:00:00+01:00"),
        ("à 15h30", "fr", "à 15h30", "2027-03-01T15:30:00+01:00"),
        ("vers 18h", "fr", "vers 18h", "2027-03-01T18:00:00+01:00"),
        ("lundi 15h", "fr", "lundi 15h", "2027-03-01T15:00:00+01:00"),
        ("um 15 Uhr", "de", "um 15 Uhr", "2027-03-01T15:00:00+01:00"),
        ("um 14.30 Uhr", "de", "um 14.30 Uhr", "2027-03-01T14:30:00+01:00"),
    ],
)
def test_times_in_other_languages(text: str, language: str, written: str, value: str) -> None:
    assert when(text, language) == [(written, value)]


@pytest.mark.parametrize(
    "text", ["3.5 stars", "5 people", "a 10% discount", "at 10.5", "10k", "it takes 2h"]
)
def test_not_times(text: str) -> None:
    assert when(text) == []


# --- dates with times ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "language", "written", "value"),
    [
        ("next Tuesday at 3pm", "en", "next Tuesday at 3pm", "2027-03-09T15:00:00+01:00"),
        ("tomorrow at 10", "en", "tomorrow at 10", "2027-03-02T10:00:00+01:00"),
        ("3pm tomorrow", "en", "3pm tomorrow", "2027-03-02T15:00:00+01:00"),
        ("at 9:30 on Friday", "en", "at 9:30 on Friday", "2027-03-05T09:30:00+01:00"),
        ("March 3rd at 16:00", "en", "March 3rd at 16:00", "2027-03-03T16:00:00+01:00"),
        ("tonight at 8", "en", "tonight at 8", "2027-03-01T20:00:00+01:00"),
        ("tomorrow morning at 7", "en", "tomorrow morning at 7", "2027-03-02T07:00:00+01:00"),
        ("2027-03-05T14:00", "en", "2027-03-05T14:00", "2027-03-05T14:00:00+01:00"),
        ("on 2027-03-03 at 10:30", "en", "2027-03-03 at 10:30", "2027-03-03T10:30:00+01:00"),
        ("mañana a las 10", "es", "mañana a las 10", "2027-03-02T10:00:00+01:00"),
        (
            "el próximo martes a las 17:00",
            "es",
            "próximo martes a las 17:00",
            "2027-03-09T17:00:00+01:00",
        ),
        (
            "mañana por la tarde a las 5",
            "es",
            "mañana por la tarde a las 5",
            "2027-03-02T17:00:00+01:00",
        ),
        ("demain à 15h30", "fr", "demain à 15h30", "2027-03-02T15:30:00+01:00"),
        ("morgen um 15 Uhr", "de", "morgen um 15 Uhr", "2027-03-02T15:00:00+01:00"),
        ("heute Abend um 8", "de", "heute Abend um 8", "2027-03-01T20:00:00+01:00"),
    ],
)
def test_a_day_and_a_time_make_one_moment(
    text: str, language: str, written: str, value: str
) -> None:
    assert when(text, language) == [(written, value)]


def test_a_list_of_days_and_times_is_not_merged_across_commas() -> None:
    assert when("next Tuesday, at 10, or Friday") == [
        ("next Tuesday", "2027-03-09"),
        ("at 10", "2027-03-01T10:00:00+01:00"),
        ("Friday", "2027-03-05"),
    ]


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("in 2 hours", "2027-03-01T12:00:00+01:00"),
        ("in 30 minutes", "2027-03-01T10:30:00+01:00"),
        ("dans une heure", "2027-03-01T11:00:00+01:00"),
    ],
)
def test_minutes_and_hours_from_now_are_moments(text: str, value: str) -> None:
    assert when(text, "fr") == [(text, value)]


def test_offsets_follow_the_time_zone_and_daylight_saving() -> None:
    summer = datetime(2027, 7, 1, 9, 0, tzinfo=UTC)  # 11:00 in Madrid
    assert of_kind("tomorrow at 3pm", "date_time", now=summer) == [
        ("tomorrow at 3pm", "2027-07-02T15:00:00+02:00")
    ]
    # the clocks go forward on 28 March 2027: two hours of real time
    before_change = datetime(2027, 3, 28, 1, 30, tzinfo=MADRID)
    assert of_kind("in 2 hours", "date_time", now=before_change) == [
        ("in 2 hours", "2027-03-28T04:30:00+02:00")
    ]
    assert of_kind("at 3pm", "date_time", time_zone="America/New_York") == [
        ("at 3pm", "2027-03-01T15:00:00-05:00")
    ]


def test_today_is_today_in_the_workspace_time_zone() -> None:
    late_utc = datetime(2027, 3, 1, 23, 30, tzinfo=UTC)  # already 2 March in Madrid
    assert of_kind("today", "date_time", now=late_utc) == [("today", "2027-03-02")]
    assert of_kind("today", "date_time", now=late_utc, time_zone="UTC") == [("today", "2027-03-01")]


def test_a_naive_now_is_read_in_the_time_zone() -> None:
    naive = datetime(2027, 3, 1, 10, 0)
    assert of_kind("at 3pm", "date_time", now=naive) == [("at 3pm", "2027-03-01T15:00:00+01:00")]


def test_an_unknown_time_zone_falls_back_to_utc() -> None:
    assert of_kind("at 3pm", "date_time", time_zone="Mars/Olympus_Mons") == [
        ("at 3pm", "2027-03-01T15:00:00+00:00")
    ]
    assert of_kind("at 3pm", "date_time", time_zone="") == [("at 3pm", "2027-03-01T15:00:00+00:00")]


def test_results_are_deterministic_with_a_fixed_now() -> None:
    text = "Next Tuesday at 3pm or mañana, budget €2.500, call +34 612 345 678"
    first = entities(text)
    assert all(entities(text) == first for _ in range(5))
    assert [e.kind for e in first] == ["date_time", "date_time", "money", "phone"]


# --- money -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "written", "value"),
    [
        ("budget $5,000", "$5,000", "5000 USD"),
        ("5000 dollars", "5000 dollars", "5000 USD"),
        ("€250", "€250", "250 EUR"),
        ("250 EUR", "250 EUR", "250 EUR"),
        ("EUR 250", "EUR 250", "250 EUR"),
        ("£1.2k", "£1.2k", "1200 GBP"),
        ("5.000,50 €", "5.000,50 €", "5000.5 EUR"),
        ("USD 1,000.50", "USD 1,000.50", "1000.5 USD"),
        ("$5,000.00", "$5,000.00", "5000 USD"),
        ("€10.99", "€10.99", "10.99 EUR"),
        ("10€", "10€", "10 EUR"),
        ("2 000 €", "2 000 €", "2000 EUR"),
        ("1'000 CHF", "1'000 CHF", "1000 CHF"),
        ("$1.5M", "$1.5M", "1500000 USD"),
        ("500 bucks", "500 bucks", "500 USD"),
        ("¥3000", "¥3000", "3000 JPY"),
        ("budget of 3 thousand euros", "3 thousand euros", "3000 EUR"),
        ("2 millones de euros", "2 millones de euros", "2000000 EUR"),
        ("3 mil dólares", "3 mil dólares", "3000 USD"),
        ("12,50 €", "12,50 €", "12.5 EUR"),
        ("2,5 Mio. Euro", "2,5 Mio. Euro", "2500000 EUR"),
        ("3 Tausend Euro", "3 Tausend Euro", "3000 EUR"),
        # without a currency: the amount alone
        ("around 10k", "10k", "10000"),
        ("roughly 1.5k", "1.5k", "1500"),
        ("our budget is 8000", "8000", "8000"),
        ("Budget: 5000", "5000", "5000"),
        ("presupuesto de unos 3k", "3k", "3000"),
        ("environ 5k", "5k", "5000"),
    ],
)
def test_money(text: str, written: str, value: str) -> None:
    assert of_kind(text, "money") == [(written, value)]


@pytest.mark.parametrize(
    "text",
    [
        "around 50",  # a count, not a budget
        "around 10k people",
        "10k steps a day",
        "5 pounds of coffee",
        "at 3pm",
        "in 2027",
        "a 15% discount",
        "table for 4",
        "1.5M users",
    ],
)
def test_not_money(text: str) -> None:
    assert of_kind(text, "money") == []


# --- emails and phones -----------------------------------------------------------------


def test_emails_and_phones_come_from_find_pii() -> None:
    text = "Mail Jane.Doe@Example.com or call +44 (0)20 7946 0958; card 4242 4242 4242 4242"
    found = [e for e in entities(text) if e.kind in ("email", "phone")]
    spans = [s for s in find_pii(text) if s.kind in ("email", "phone")]
    assert [(e.kind, e.text, e.value, e.start, e.end) for e in found] == [
        (s.kind, s.text, s.value, s.start, s.end) for s in spans
    ]
    assert [e.value for e in found] == ["jane.doe@example.com", "+442079460958"]
    assert not [e for e in entities(text) if e.kind == "money"]  # cards are no entity


def test_a_date_is_not_a_phone() -> None:
    assert [e.kind for e in entities("see you 2027-03-03 or 03.04.2027")] == [
        "date_time",
        "date_time",
    ]


# --- products --------------------------------------------------------------------------

PRODUCTS = ("Premium Plan", "Pro", "Pro Plan", "Café Latte", "Pastry", "Yoga Class", "Wi-Fi")


@pytest.mark.parametrize(
    ("text", "written", "value"),
    [
        ("I want the premium plan", "premium plan", "Premium Plan"),
        ("PREMIUM PLAN please", "PREMIUM PLAN", "Premium Plan"),
        ("two Premium Plans", "Premium Plans", "Premium Plan"),
        ("a cafe latte", "cafe latte", "Café Latte"),
        ("DEUX CAFÉ LATTES", "CAFÉ LATTES", "Café Latte"),
        ("any pastries left?", "pastries", "Pastry"),
        ("yoga classes on Monday", "yoga classes", "Yoga Class"),
        ("the pro-plan", "pro-plan", "Pro Plan"),
        ("the Pro  Plan", "Pro  Plan", "Pro Plan"),
        ("is there wifi", "wifi", "Wi-Fi"),
        ("the pro version", "pro", "Pro"),
    ],
)
def test_products(text: str, written: str, value: str) -> None:
    assert of_kind(text, "product", products=PRODUCTS) == [(written, value)]


@pytest.mark.parametrize(
    "text",
    ["a product review", "improve it", "premium planning", "the plan", "Cafeteria"],
)
def test_products_only_as_whole_words(text: str) -> None:
    assert of_kind(text, "product", products=PRODUCTS) == []


def test_product_spans_point_into_the_original_text() -> None:
    text = "Ça va? Große Straße Tour für zwei"
    found = of_kind(text, "product", products=["grosse strasse tour"])
    assert found == [("Große Straße Tour", "grosse strasse tour")]


def test_no_products_configured() -> None:
    assert of_kind("premium plan", "product") == []
    assert of_kind("premium plan", "product", products=["", " ", "x"]) == []


# --- people ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "language", "written", "value"),
    [
        ("Hi, my name is John Smith and I need help", "en", "John Smith", "John Smith"),
        ("my name is john smith", "en", "john smith", "John Smith"),
        ("my name is john and i need help", "en", "john", "John"),
        ("I'm Sarah.", "en", "Sarah", "Sarah"),
        ("I am Sarah Connor", "en", "Sarah Connor", "Sarah Connor"),
        ("This is Mike O'Brien from Acme", "en", "Mike O'Brien", "Mike O'Brien"),
        ("call me Ishmael", "en", "Ishmael", "Ishmael"),
        ("Hola, me llamo María José", "es", "María José", "María José"),
        ("Soy Ana de la Cruz", "es", "Ana de la Cruz", "Ana de la Cruz"),
        ("je m'appelle Jean-Luc Picard", "fr", "Jean-Luc Picard", "Jean-Luc Picard"),
        ("C'est Marie de Acme", "fr", "Marie", "Marie"),
        ("Ich heiße Jürgen Müller", "de", "Jürgen Müller", "Jürgen Müller"),
        ("Mein Name ist Anna von der Heide", "de", "Anna von der Heide", "Anna von der Heide"),
        ("hier ist Anna", "de", "Anna", "Anna"),
    ],
)
def test_people(text: str, language: str, written: str, value: str) -> None:
    assert of_kind(text, "person", language) == [(written, value)]


def test_two_introductions() -> None:
    assert of_kind("I am Sarah and this is Kyle", "person") == [
        ("Sarah", "Sarah"),
        ("Kyle", "Kyle"),
    ]


@pytest.mark.parametrize(
    "text",
    [
        "I'm looking for a plan",
        "I'm Interested in the offer",
        "I'm French",
        "It's Monday",
        "this is great",
        "call me tomorrow",
        "call me back please",
        "I'm Sarah's mother",
        "soy de Madrid",
        "je suis très content",
        "ich bin Kunde",
        "John Smith here",
    ],
)
def test_not_people(text: str) -> None:
    assert of_kind(text, "person") == []


# --- all together ----------------------------------------------------------------------


def test_a_message_with_everything_is_sorted_and_without_overlaps() -> None:
    text = (
        "Hi, my name is John Smith. Can we meet next Tuesday at 3pm to discuss the Premium "
        "Plan? Our budget is around 10k, maybe $12,000 max. Reach me at john@example.com or "
        "+44 20 7946 0958. If not, this Friday or March 3rd works too."
    )
    found = entities(text, products=PRODUCTS)
    assert [(e.kind, e.value) for e in found] == [
        ("person", "John Smith"),
        ("date_time", "2027-03-09T15:00:00+01:00"),
        ("product", "Premium Plan"),
        ("money", "10000"),
        ("money", "12000 USD"),
        ("email", "john@example.com"),
        ("phone", "+442079460958"),
        ("date_time", "2027-03-05"),
        ("date_time", "2027-03-03"),
    ]
    for entity in found:
        assert text[entity.start : entity.end] == entity.text
    for left, right in pairwise(found):
        assert left.end <= right.start


def test_the_longer_entity_wins() -> None:
    # "at 10" could be a time, but "10 dollars" is longer
    assert [(e.kind, e.text) for e in entities("sold at 10 dollars")] == [("money", "10 dollars")]


def test_nothing_to_find() -> None:
    assert entities("") == []
    assert entities("Hello, how does this work?") == []
