"""Entities in a user message: dates and times, money, emails, phone numbers,
the workspace's products or services, and the speaker's name.

Regex-based and deterministic: relative dates resolve against ``now`` in the
workspace's time zone. Vocabulary covers English, Spanish, French and German
whatever the message's language; ``language`` decides only what is ambiguous
(``03/04`` is month/day in US English, day/month elsewhere; French ``hier``;
German ``am``).

Values:

- ``date_time``: ``2027-03-09`` for a day, ``2027-03-09T15:00:00+01:00`` for a
  moment. A day without a year is the next one to come (today included); a
  weekday alone or with "this" is the next one to come (today included);
  "next <weekday>" is that day in the next Monday-to-Sunday week; a time alone
  is its next occurrence. A bare hour after "at" / "a las" / "um" / "à" from 1
  to 7 is afternoon ("at 3" is 15:00), unless the morning is said.
- ``money``: ``"5000 USD"``, ``"1200.5 EUR"``; the amount alone when no currency
  is written ("around 10k" gives ``"10000"``). "$" is USD.
- ``email`` / ``phone``: from ``pii.find_pii`` (lower-cased email; ``+<digits>``
  or national digits).
- ``product``: the canonical name as configured; matched as whole words,
  ignoring case and accents, with simple plurals.
- ``person``: the name after "my name is", "I'm", "this is X from Y" and their
  Spanish, French and German forms.

Overlaps are settled for the longer entity.
"""

from __future__ import annotations

import re
import unicodedata
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from fenlo_server.pipeline.analysis.pii import find_pii
from fenlo_server.pipeline.analysis.types import Entity, EntityKind

_KIND_RANK: dict[EntityKind, int] = {
    "email": 0,
    "phone": 1,
    "money": 2,
    "date_time": 3,
    "product": 4,
    "person": 5,
}
# Where US-style month/day is not the custom although the language is English.
_DAY_FIRST_ENGLISH = frozenset({"gb", "au", "nz", "ie", "in", "za"})


def extract_entities(
    text: str,
    *,
    products: Sequence[str] = (),
    now: datetime | None = None,
    time_zone: str = "UTC",
    language: str = "en",
) -> list[Entity]:
    """Entities sorted by start, non-overlapping (the longer one wins).

    ``now`` may be naive (read in ``time_zone``) or aware; an unknown time zone
    falls back to UTC, since an analyser must not fail a turn."""
    zone = _zone(time_zone)
    local_now = _local_now(now, zone)
    lang, _, region = language.replace("_", "-").lower().partition("-")
    candidates: list[Entity] = []
    for span in find_pii(text):
        if span.kind in ("email", "phone"):
            candidates.append(Entity(span.kind, span.text, span.value, span.start, span.end))
    # Which families can match at all: most messages skip most patterns.
    words = frozenset(_LETTERS_RE.findall(text.lower()))
    has_digit = _DIGIT_RE.search(text) is not None
    candidates.extend(_date_times(text, local_now, lang, region, words=words, has_digit=has_digit))
    if has_digit:
        candidates.extend(_money(text))
    if products:
        candidates.extend(_products(text, tuple(products)))
    if words & _PERSON_GATE:
        candidates.extend(_people(text))
    return _without_overlaps(candidates)


def _without_overlaps(candidates: Iterable[Entity]) -> list[Entity]:
    """Longest first (then earliest, then by kind), each kept if it overlaps
    none kept before; the kept ones are sorted by start."""
    chosen: list[Entity] = []  # sorted by start, so by end too
    starts: list[int] = []
    ranked = sorted(candidates, key=lambda e: (e.start - e.end, e.start, _KIND_RANK[e.kind]))
    for entity in ranked:
        index = bisect_right(starts, entity.start)
        if index and chosen[index - 1].end > entity.start:
            continue
        if index < len(chosen) and chosen[index].start < entity.end:
            continue
        chosen.insert(index, entity)
        starts.insert(index, entity.start)
    return chosen


def _zone(name: str) -> tzinfo:
    try:
        return ZoneInfo(name.strip())
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return UTC


def _local_now(now: datetime | None, zone: tzinfo) -> datetime:
    if now is None:
        return datetime.now(zone)
    if now.tzinfo is None:
        return now.replace(tzinfo=zone)
    return now.astimezone(zone)


def _alternation(words: Iterable[str]) -> str:
    """A regex alternation, longest first so that the longest phrase wins."""
    return "|".join(re.escape(w) for w in sorted(set(words), key=lambda w: (-len(w), w)))


# --- vocabulary ------------------------------------------------------------------------


def _numbered(*groups: str, start: int = 0) -> dict[str, int]:
    """Each space-separated name of the n-th group maps to start + n."""
    return {name: n for n, names in enumerate(groups, start) for name in names.split()}


_MONTHS = _numbered(
    "january jan enero ene janvier janv januar jänner jaenner",
    "february feb febrero février fevrier févr fevr februar",
    "march mar marzo mars märz maerz mär",
    "april apr abril abr avril avr",
    "may mayo mai",
    "june jun junio juin juni",
    "july jul julio juillet juil juli",
    "august aug agosto août aout",
    "september sep sept septiembre setiembre septembre",
    "october oct octubre octobre oktober okt",
    "november nov noviembre novembre",
    "december dec diciembre dic décembre decembre déc dezember dez",
    start=1,
)
# Month names that are also common words: lower-case, they need an ordinal or "of".
_AMBIGUOUS_MONTHS = frozenset({"may", "mar"})

_WEEKDAYS = _numbered(  # Monday is 0, as in date.weekday()
    "monday lunes lundi montag",
    "tuesday martes mardi dienstag",
    "wednesday miércoles miercoles mercredi mittwoch",
    "thursday jueves jeudi donnerstag",
    "friday viernes vendredi freitag",
    "saturday sábado sabado samedi samstag sonnabend",
    "sunday domingo dimanche sonntag",
)

_NEXT_WORDS = frozenset(
    "next próximo proximo próxima proxima nächsten nächster nächste naechsten naechster "
    "naechste kommenden kommender kommende prochain prochaine".split()
) | {"que viene"}
_LAST_WORDS = frozenset(
    "last pasado pasada dernier dernière derniere letzten letzter letzte vergangenen".split()
)
_THIS_WORDS = frozenset("this coming este esta ce diesen dieser diese".split()) | {"this coming"}

_NUMBER_WORDS: dict[str, int] = {
    "a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6,
    "seven": 7, "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12,
    "a couple of": 2, "un": 1, "uno": 1, "una": 1, "dos": 2, "tres": 3, "cuatro": 4,
    "cinco": 5, "seis": 6, "siete": 7, "ocho": 8, "nueve": 9, "diez": 10, "quince": 15,
    "une": 1, "deux": 2, "trois": 3, "quatre": 4, "cinq": 5, "sept": 7, "huit": 8,
    "neuf": 9, "dix": 10, "quinze": 15, "ein": 1, "eine": 1, "einem": 1, "einer": 1,
    "einen": 1, "zwei": 2, "drei": 3, "vier": 4, "fünf": 5, "fuenf": 5, "sechs": 6,
    "sieben": 7, "acht": 8, "neun": 9, "zehn": 10,
}  # fmt: skip

_UNITS = {
    name: unit
    for unit, names in (
        ("minutes", "minute minutes min mins minuto minutos minuten"),
        ("hours", "hour hours hr hrs hora horas heure heures stunde stunden"),
        ("days", "day days día días dia dias jour jours tag tage tagen"),
        ("weeks", "week weeks semana semanas semaine semaines woche wochen"),
        ("months", "month months mes meses mois monat monate monaten"),
        ("years", "year years año años an ans année années annee annees jahr jahre jahren"),
    )
    for name in names.split()
}

# Relative days; "hier" is French "yesterday" but German "here" (French only), and
# "mañana" / "morgen" are also "morning" after an article.
_RELATIVE_DAYS: dict[str, int] = {
    "the day after tomorrow": 2, "day after tomorrow": 2, "tomorrow": 1, "today": 0,
    "tonight": 0, "yesterday": -1, "the day before yesterday": -2,
    "day before yesterday": -2,
    "pasado mañana": 2, "pasado manana": 2, "mañana": 1, "manana": 1, "hoy": 0,
    "esta noche": 0, "ayer": -1, "anteayer": -2,
    "après-demain": 2, "apres-demain": 2, "après demain": 2, "apres demain": 2,
    "demain": 1, "aujourd'hui": 0, "aujourd’hui": 0, "aujourdhui": 0, "ce soir": 0,
    "hier": -1, "avant-hier": -2, "avant hier": -2,
    "übermorgen": 2, "uebermorgen": 2, "morgen": 1, "heute": 0, "heute abend": 0,
    "heute morgen": 0, "heute früh": 0, "gestern": -1, "vorgestern": -2,
}  # fmt: skip
_EVENING_DAYS = frozenset({"tonight", "esta noche", "ce soir", "heute abend"})
_MORNING_ARTICLES = frozenset({"la", "esta", "guten", "am", "jeden", "den", "einen", "heute"})

_MONTH_RE = _alternation(_MONTHS)
_ORDINAL = r"(?:st|nd|rd|th|er|º|°|ª|\.)"

_ISO_DATE_RE = re.compile(r"(?<![\d/.\-])(\d{4})[-/](\d{1,2})[-/](\d{1,2})(?!\d|[/.\-]\d)")
_NUMERIC_DATE_RE = re.compile(
    r"(?<![\d/.\-,:])(\d{1,2})([/.\-])(\d{1,2})(?:\2(\d{4}|\d{2}))?(?!\d|[/.\-,]\d)"
)
# Month and weekday names are matched as any word, then looked up: faster than
# an alternation of a hundred names tried at every position.
_MONTH_DAY_RE = re.compile(
    r"(?<!\w)(?P<month>[^\W\d_]{3,10})\.?\s+(?:the\s+)?"
    r"(?P<day>\d{1,2})(?P<ord>st|nd|rd|th)?(?![\d:]|\.\d)"
    r"(?:\s*,?\s*(?P<year>\d{4})(?![\d:]))?",
    re.IGNORECASE,
)
_DAY_MONTH_RE = re.compile(
    rf"(?<![\w.,:/])(?P<day>\d{{1,2}})(?P<ord>{_ORDINAL})?\s*(?P<of>(?:of|de)\s+)?"
    r"(?P<month>[^\W\d_]{3,10})(?!\w)\.?"
    r"(?:\s*,?\s*(?:(?:de|del)\s+)?(?P<year>\d{4})(?![\d:]))?",
    re.IGNORECASE,
)
# "Tuesday, March 3", "Friday the 13th of June": the weekday joins the date.
_WEEKDAY_BEFORE_RE = re.compile(
    r"(?<!\w)(?P<wd>[^\W\d_]{5,11})\s*,?\s+(?:(?:the|el|le|den)\s+)?\Z", re.IGNORECASE
)
# "on the 15th": this month's, or next month's when it has gone by.
_DAY_OF_MONTH_RE = re.compile(
    rf"(?<!\w)(?:the|el|le)\s+(?P<day>\d{{1,2}}){_ORDINAL}(?![\w.])"
    rf"(?!\s+(?:of\s+|de\s+)?(?:{_MONTH_RE}))",
    re.IGNORECASE,
)
_WEEKDAY_MODIFIER_BEFORE_RE = re.compile(
    rf"(?<!\w)(?P<pre>{_alternation(_NEXT_WORDS | _LAST_WORDS | _THIS_WORDS)})\s+\Z",
    re.IGNORECASE,
)
_WEEKDAY_MODIFIER_AFTER_RE = re.compile(
    r"\s+(?P<post>que viene|prochaine?|pasad[oa]|derni[eè]re?)(?!\w)", re.IGNORECASE
)
_RELATIVE_DAY_RE = re.compile(rf"(?<![\w\-])(?:{_alternation(_RELATIVE_DAYS)})(?![\w\-])", re.I)
_IN_PERIOD_RE = re.compile(
    rf"(?<!\w)(?:(?:in|en|dentro de|dans|d'ici|d’ici)\s+"
    rf"(?:(?P<num>\d{{1,3}})|(?P<word>{_alternation(_NUMBER_WORDS)}))\s+(?P<unit>{_alternation(_UNITS)})"
    rf"|(?P<num2>\d{{1,3}})\s+(?P<unit2>{_alternation(_UNITS)})\s+from\s+(?:now|today))(?!\w)",
    re.IGNORECASE,
)

_PREPOSITION = r"(?:at|@|a las|a la|à|um|vers|gegen)"
_DAYPART = (
    r"(?:\s+(?:(?P<morning>in the morning|de la mañana|de la manana|du matin|morgens|früh)"
    r"|(?P<later>in the afternoon|in the evening|at night|de la tarde|de la noche|"
    r"de l'après-midi|de l’après-midi|de l'apres-midi|du soir|nachmittags|abends)))?(?!\w)"
)
_AMPM_RE = re.compile(
    rf"(?<![\w:.,])(?:(?P<prep>{_PREPOSITION})\s+)?(?P<h>\d{{1,2}})(?:[:.](?P<m>[0-5]\d))?"
    rf"\s?(?P<ap>(?P<a>a)\.?\s?m\.?|(?P<p>p)\.?\s?m\.?)(?!\w)",
    re.IGNORECASE,
)
_CLOCK_RE = re.compile(
    rf"(?<![\d:.,/])(?:(?P<prep>{_PREPOSITION})\s+)?(?P<h>[01]?\d|2[0-3])"
    rf"(?::(?P<m>[0-5]\d)(?::[0-5]\d)?(?:\s?(?:uhr|h)(?!\w))?"
    rf"|h(?P<m2>[0-5]\d)?(?!\w)|(?:\.(?P<m3>[0-5]\d))?\s?uhr(?!\w))"
    rf"(?![\d:]){_DAYPART}",
    re.IGNORECASE,
)
_BARE_HOUR_RE = re.compile(
    rf"(?<!\w)(?P<prep>{_PREPOSITION})\s+(?P<h>[01]?\d|2[0-3])(?::(?P<m>[0-5]\d))?"
    rf"(?:\s?o'?clock)?(?![\w%:]|[.,]\d){_DAYPART}",
    re.IGNORECASE,
)
_HOUR_WORDS = {w: n for w, n in _NUMBER_WORDS.items() if n <= 12 and w.isalpha() and len(w) > 2}
_HALF_PAST_RE = re.compile(
    rf"(?<!\w)(?:(?:at|@)\s+)?(?P<q>half past|(?:a\s+)?quarter past|(?:a\s+)?quarter after|"
    rf"(?:a\s+)?quarter to)\s+(?P<h>1[0-2]|[1-9]|{_alternation(_HOUR_WORDS)}){_DAYPART}",
    re.IGNORECASE,
)
_NOON_RE = re.compile(
    r"(?<![\w\-])(?:(?:at|a|à|um)\s+)?(?P<w>noon|midday|midnight|mediod[ií]a|medianoche|midi|"
    r"minuit|mitternacht)(?![\w\-])",
    re.IGNORECASE,
)
_MORNING_WORDS = r"morning|por la mañana|por la manana|matin|früh|vormittag|vormittags"
_LATER_WORDS = (
    r"afternoon|evening|night|por la tarde|por la noche|après-midi|apres-midi|soir|"
    r"nachmittag|nachmittags|abend|abends"
)
_DATE_THEN_TIME_GAP = re.compile(
    rf"\s+(?:(?P<morning>{_MORNING_WORDS})\s+|(?P<later>{_LATER_WORDS})\s+)?"
    r"(?:(?:at|@|a las|a la|à|um|vers|gegen)\s+)?|T",
    re.IGNORECASE,
)
# Only spaces and joining words between a day and a time: a comma usually starts
# a list ("next Tuesday, at 10, or Friday").
_TIME_THEN_DATE_GAP = re.compile(r"\s+(?:(?:on|el|le|am)\s+)?", re.IGNORECASE)
_MAX_GAP = 32  # longer than any gap the two patterns above can match


_LETTERS_RE = re.compile(r"[^\W\d_]+")
_DIGIT_RE = re.compile(r"[0-9]")


def _last_words(phrases: Iterable[str]) -> frozenset[str]:
    return frozenset(_LETTERS_RE.findall(p.lower())[-1] for p in phrases)


_MONTH_GATE = frozenset(_MONTHS)
_WEEKDAY_GATE = frozenset(_WEEKDAYS)
_RELATIVE_GATE = _last_words(_RELATIVE_DAYS)
_UNIT_GATE = frozenset(_UNITS)
_HALF_PAST_GATE = frozenset({"half", "quarter"})
_NOON_GATE = frozenset(
    "noon midday midnight mediodía mediodia medianoche midi minuit mitternacht".split()
)


# --- dates and times -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Day:
    start: int
    end: int
    day: date
    evening: bool = False  # "tonight at 8" is 20:00


@dataclass(frozen=True, slots=True)
class _Clock:
    start: int
    end: int
    clock: time
    guessed_afternoon: bool = False  # "at 3" read as 15:00


def _date_times(
    text: str, now: datetime, lang: str, region: str, *, words: frozenset[str], has_digit: bool
) -> list[Entity]:
    today = now.date()
    month_first = lang == "en" and region not in _DAY_FIRST_ENGLISH
    days: list[_Day] = []
    if has_digit:
        days.extend(_absolute_days(text, today, month_first, lang, bool(words & _MONTH_GATE)))
    if words & _WEEKDAY_GATE:
        days.extend(_weekdays(text, today))
    if words & _RELATIVE_GATE:
        days.extend(_relative_days(text, today, lang))
    clocks = _clocks(text, lang, words, has_digit)
    entities: list[Entity] = []
    zone = now.tzinfo or UTC
    clocks.sort(key=lambda c: c.start)
    starts = [c.start for c in clocks]
    by_end = sorted(clocks, key=lambda c: c.end)
    ends = [c.end for c in by_end]
    for d in days:
        entities.append(
            Entity("date_time", text[d.start : d.end], d.day.isoformat(), d.start, d.end)
        )
        # Only the times just after or just before the day can join it.
        after = clocks[bisect_left(starts, d.end) : bisect_right(starts, d.end + _MAX_GAP)]
        before = by_end[bisect_left(ends, d.start - _MAX_GAP) : bisect_right(ends, d.start)]
        for c in after + before:
            gap = None
            if c.start >= d.end:
                gap = _DATE_THEN_TIME_GAP.fullmatch(text, d.end, c.start)
                start, end = d.start, c.end
            elif d.start >= c.end and _TIME_THEN_DATE_GAP.fullmatch(text, c.end, d.start):
                start, end = c.start, d.end
            else:
                continue
            if gap is None and start == d.start:
                continue
            clock = c.clock
            later = d.evening or (gap is not None and gap.group("later"))
            if later and clock.hour < 12:
                clock = clock.replace(hour=clock.hour + 12)
            elif gap is not None and gap.group("morning") and c.guessed_afternoon:
                clock = clock.replace(hour=clock.hour - 12)  # "tomorrow morning at 7"
            moment = datetime.combine(d.day, clock, tzinfo=zone)
            entities.append(Entity("date_time", text[start:end], _iso(moment), start, end))
    for c in clocks:
        moment = datetime.combine(today, c.clock, tzinfo=zone)
        if moment < now:
            moment = datetime.combine(today + timedelta(days=1), c.clock, tzinfo=zone)
        entities.append(Entity("date_time", text[c.start : c.end], _iso(moment), c.start, c.end))
    if words & _UNIT_GATE:
        entities.extend(_periods(text, now))
    return entities


def _iso(moment: datetime) -> str:
    return moment.replace(microsecond=0).isoformat()


def _absolute_days(
    text: str, today: date, month_first: bool, lang: str, month_names: bool
) -> list[_Day]:
    found: list[_Day] = []
    for m in _ISO_DATE_RE.finditer(text):
        day = _make_date(int(m.group(1)), int(m.group(2)), int(m.group(3)))
        if day is not None:
            found.append(_Day(m.start(), m.end(), day))
    for m in _NUMERIC_DATE_RE.finditer(text):
        first, separator, second, year = m.group(1), m.group(2), m.group(3), m.group(4)
        if year is None and (separator == "-" or m.group() == "24/7"):
            continue  # "3-4 people", "24/7 support"
        if (
            year is None
            and separator == "."
            and not (lang == "de" and text[m.end() : m.end() + 1] == ".")
        ):
            continue  # "3.5" is a number; German writes "am 3.4."
        a, b = int(first), int(second)
        # Dotted dates are European: day first whatever the language.
        month, day_of_month = (a, b) if month_first and separator != "." else (b, a)
        if not (1 <= month <= 12 and 1 <= day_of_month <= 31):
            month, day_of_month = day_of_month, month  # "25/12" can only be day/month
        found_day = _resolve_day(month, day_of_month, year, today)
        if found_day is not None:
            found.append(_Day(m.start(), m.end(), found_day))
    for pattern in (_MONTH_DAY_RE, _DAY_MONTH_RE) if month_names else ():
        for m in pattern.finditer(text):
            month_word = m.group("month")
            if month_word.lower() not in _MONTHS:
                continue
            ambiguous = month_word.lower() in _AMBIGUOUS_MONTHS and month_word.islower()
            if ambiguous and not (m.group("ord") or m.groupdict().get("of")):
                continue  # "you may 3", "2 may be"
            year = m.group("year")
            end = m.end()
            if year is not None and not 1900 <= int(year) <= 2100:
                year, end = None, m.start("year")
                end = len(text[:end].rstrip(" ,"))
            found_day = _resolve_day(_MONTHS[month_word.lower()], int(m.group("day")), year, today)
            if found_day is not None:
                start = m.start()
                weekday = _WEEKDAY_BEFORE_RE.search(text, max(0, start - 24), start)
                if weekday is not None and weekday.group("wd").lower() in _WEEKDAYS:
                    start = weekday.start()
                found.append(_Day(start, end, found_day))
    for m in _DAY_OF_MONTH_RE.finditer(text):
        day_of_month = int(m.group("day"))
        month_start = today.replace(day=1)
        for months in range(3):
            first = _add_months(month_start, months)
            found_day = _make_date(first.year, first.month, day_of_month)
            if found_day is not None and found_day >= today:
                found.append(_Day(m.start(), m.end(), found_day))
                break
    return found


def _make_date(year: int, month: int, day: int) -> date | None:
    try:
        return date(year, month, day)
    except ValueError:
        return None


def _resolve_day(month: int, day: int, year: str | None, today: date) -> date | None:
    """The date; without a year, the next one to come (today included)."""
    if year is not None:
        full_year = int(year) + 2000 if len(year) == 2 else int(year)
        return _make_date(full_year, month, day)
    for candidate_year in range(today.year, today.year + 9):  # 29 February: the next leap year
        candidate = _make_date(candidate_year, month, day)
        if candidate is not None and candidate >= today:
            return candidate
    return None


def _weekdays(text: str, today: date) -> list[_Day]:
    found: list[_Day] = []
    for m in _LETTERS_RE.finditer(text):
        weekday = _WEEKDAYS.get(m.group().lower())
        if weekday is None:
            continue
        start, end = m.span()
        modifiers: set[str] = set()
        pre = _WEEKDAY_MODIFIER_BEFORE_RE.search(text, max(0, start - 20), start)
        if pre is not None:
            modifiers.add(pre.group("pre").lower())
            start = pre.start()
        post = _WEEKDAY_MODIFIER_AFTER_RE.match(text, end)
        if post is not None:
            modifiers.add(post.group("post").lower())
            end = post.end()
        ahead = (weekday - today.weekday()) % 7
        if modifiers & _NEXT_WORDS:
            # That day in the next Monday-to-Sunday week.
            offset = 7 - today.weekday() + weekday
        elif modifiers & _LAST_WORDS:
            offset = -((today.weekday() - weekday) % 7 or 7)
        else:
            offset = ahead
        found.append(_Day(start, end, today + timedelta(days=offset)))
    return found


def _relative_days(text: str, today: date, lang: str) -> list[_Day]:
    found: list[_Day] = []
    for m in _RELATIVE_DAY_RE.finditer(text):
        phrase = m.group().lower().replace("’", "'")
        if phrase == "hier" and lang != "fr":
            continue
        if phrase in ("mañana", "manana", "morgen"):
            before = text[max(0, m.start() - 12) : m.start()].split()
            if before and before[-1].lower() in _MORNING_ARTICLES:
                continue  # "por la mañana", "guten Morgen": the morning
        offset = _RELATIVE_DAYS.get(phrase, _RELATIVE_DAYS.get(m.group().lower(), 0))
        evening = phrase in _EVENING_DAYS
        found.append(_Day(m.start(), m.end(), today + timedelta(days=offset), evening))
    return found


def _clocks(text: str, lang: str, words: frozenset[str], has_digit: bool) -> list[_Clock]:
    found: list[_Clock] = []
    if words & _NOON_GATE:
        found.extend(_noons(text))
    if words & _HALF_PAST_GATE:
        found.extend(_half_pasts(text))
    if not has_digit:
        return found
    for m in _AMPM_RE.finditer(text):
        if lang == "de" and m.group("ap").lower() == "am":
            continue  # German "um 3 am Freitag": "am" is "on"
        hour, minute = int(m.group("h")), int(m.group("m") or 0)
        if not 1 <= hour <= 12:
            continue
        hour = hour % 12 + (12 if m.group("p") else 0)
        found.append(_Clock(m.start(), m.end(), time(hour, minute)))
    for m in _CLOCK_RE.finditer(text):
        hours_only = m.group("m") is None and m.group("m2") is None and m.group("m3") is None
        if lang == "en" and hours_only and not m.group("prep") and "uhr" not in m.group().lower():
            continue  # "it takes 2h" is a duration; French "15h" is a time
        minute = int(m.group("m") or m.group("m2") or m.group("m3") or 0)
        found.append(_Clock(m.start(), m.end(), _with_daypart(int(m.group("h")), minute, m)))
    for m in _BARE_HOUR_RE.finditer(text):
        hour = int(m.group("h"))
        guessed = 1 <= hour <= 7 and not m.group("morning") and not m.group("later")
        if guessed:
            hour += 12  # "at 3" is an afternoon appointment
        clock = _with_daypart(hour, int(m.group("m") or 0), m)
        found.append(_Clock(m.start(), m.end(), clock, guessed))
    return found


def _half_pasts(text: str) -> list[_Clock]:
    found: list[_Clock] = []
    for m in _HALF_PAST_RE.finditer(text):
        word = m.group("h").lower()
        hour = _HOUR_WORDS.get(word) or int(word)
        quarter = m.group("q").lower()
        minute = 30 if quarter.startswith("half") else 15
        if quarter.endswith(" to"):
            hour, minute = (hour - 2) % 12 + 1, 45
        guessed = 1 <= hour <= 7 and not m.group("morning") and not m.group("later")
        if guessed:
            hour += 12
        found.append(_Clock(m.start(), m.end(), _with_daypart(hour, minute, m), guessed))
    return found


def _noons(text: str) -> list[_Clock]:
    found: list[_Clock] = []
    for m in _NOON_RE.finditer(text):
        word = m.group("w").lower()
        hour = 0 if word in ("midnight", "medianoche", "minuit", "mitternacht") else 12
        found.append(_Clock(m.start(), m.end(), time(hour)))
    return found


def _with_daypart(hour: int, minute: int, m: re.Match[str]) -> time:
    if m.group("morning") and hour == 12:
        hour = 0
    elif m.group("later") and hour < 12:
        hour += 12
    return time(hour % 24, minute)


def _periods(text: str, now: datetime) -> list[Entity]:
    """ "in 2 weeks", "dans 3 jours", "in zwei Stunden": a day, or a moment for
    minutes and hours (counted in real time, across daylight-saving changes)."""
    found: list[Entity] = []
    for m in _IN_PERIOD_RE.finditer(text):
        number = m.group("num") or m.group("num2")
        count = int(number) if number else _NUMBER_WORDS[m.group("word").lower()]
        unit = _UNITS[(m.group("unit") or m.group("unit2")).lower()]
        if unit in ("minutes", "hours"):
            delta = timedelta(minutes=count) if unit == "minutes" else timedelta(hours=count)
            moment = (now.astimezone(UTC) + delta).astimezone(now.tzinfo)
            value = _iso(moment)
        elif unit in ("days", "weeks"):
            value = (now.date() + timedelta(days=count * (7 if unit == "weeks" else 1))).isoformat()
        else:
            months = count * (12 if unit == "years" else 1)
            value = _add_months(now.date(), months).isoformat()
        found.append(Entity("date_time", m.group(), value, m.start(), m.end()))
    return found


def _add_months(day: date, months: int) -> date:
    index = day.month - 1 + months
    year, month = day.year + index // 12, index % 12 + 1
    for last in (day.day, 30, 29, 28):
        candidate = _make_date(year, month, min(day.day, last))
        if candidate is not None:
            return candidate
    raise AssertionError("unreachable: 28 is in every month")


# --- money -----------------------------------------------------------------------------

_SYMBOLS = {
    "US$": "USD", "U$S": "USD", "CA$": "CAD", "C$": "CAD", "A$": "AUD", "AU$": "AUD",
    "NZ$": "NZD", "MX$": "MXN", "HK$": "HKD", "S$": "SGD", "R$": "BRL", "$": "USD",
    "€": "EUR", "£": "GBP", "¥": "JPY", "₹": "INR", "₩": "KRW", "₺": "TRY", "₽": "RUB",
}  # fmt: skip
_CODES = frozenset(
    "USD EUR GBP CHF JPY CAD AUD NZD MXN BRL ARS CLP COP PEN INR CNY HKD SGD SEK NOK DKK "
    "PLN CZK HUF RON TRY ZAR KRW RUB AED SAR ILS".split()
)
_CURRENCY_WORDS = {
    "dollars": "USD", "dollar": "USD", "bucks": "USD", "dólares": "USD", "dolares": "USD",
    "dólar": "USD", "dolar": "USD", "us dollars": "USD", "usd": "USD",
    "euros": "EUR", "euro": "EUR", "eur": "EUR",
    "pounds": "GBP", "pound": "GBP", "quid": "GBP", "pounds sterling": "GBP",
    "libras": "GBP", "libras esterlinas": "GBP", "livres sterling": "GBP", "pfund": "GBP",
    "gbp": "GBP", "swiss francs": "CHF", "francs suisses": "CHF", "franken": "CHF",
    "chf": "CHF", "yen": "JPY", "pesos mexicanos": "MXN", "reais": "BRL", "rupees": "INR",
}  # fmt: skip
_MULTIPLIERS = {
    "k": 1000, "m": 1000000, "mm": 1000000, "bn": 1000000000, "thousand": 1000,
    "million": 1000000, "millions": 1000000, "billion": 1000000000, "grand": 1000,
    "mil": 1000, "millón": 1000000, "millon": 1000000, "millones": 1000000,
    "mille": 1000, "milliard": 1000000000, "milliards": 1000000000,
    "tausend": 1000, "millionen": 1000000, "mio": 1000000, "mio.": 1000000,
    "milliarde": 1000000000, "milliarden": 1000000000, "mrd": 1000000000, "mrd.": 1000000000,
}  # fmt: skip
_MULTIPLIER_WORDS = [w for w in _MULTIPLIERS if len(w) > 2]
_BUDGET_CUES = (
    "budget", "presupuesto", "spend", "afford", "pay", "paying", "gastar", "pagar",
    "dépenser", "depenser", "payer", "ausgeben", "zahlen",
)  # fmt: skip
_APPROXIMATE_CUES = (
    "around", "about", "approximately", "approx.", "approx", "roughly", "~", "circa", "ca.",
    "alrededor de", "unos", "unas", "aproximadamente", "environ", "à peu près", "etwa",
    "ungefähr", "rund", "up to", "max", "maximum", "under", "hasta", "jusqu'à", "bis zu",
)  # fmt: skip
_CONNECTORS = (
    "of", "is", "was", "will be", "de", "es", "est", "ist", "von", "of about", "maybe",
    "like", "around", "about", "roughly", "approximately", "max", "up to", "hasta", "unos",
    "environ", "etwa", "ungefähr", "rund", "alrededor de", "jusqu'à", "bis zu",
)  # fmt: skip
# Counted things after a bare amount: "around 10k people" is not money.
_COUNTED = (
    "people|persons|users|customers|employees|visitors|views|followers|steps|km|miles|"
    "words|items|units|personas|usuarios|clientes|personnes|utilisateurs|personen|nutzer|"
    "kunden|%|percent"
)

_AMOUNT = r"\d{1,3}(?:[,.'’\u00a0\u202f]\d{3})+(?:[.,]\d{1,2})?(?!\d)|\d+(?:[.,]\d+)?(?!\d)"
_AMOUNT_SPACED = r"\d{1,3}(?:[,.'’\u00a0\u202f ]\d{3})+(?:[.,]\d{1,2})?(?!\d)|\d+(?:[.,]\d+)?(?!\d)"
_MULTIPLIER = (
    rf"(?:\s?(?P<k>[kK])(?!\w)|(?P<m>[mM]{{1,2}}|bn)(?!\w)"
    rf"|\s+(?P<mw>{_alternation(_MULTIPLIER_WORDS)})(?![\w.]|\.\w))?"
)
_SYMBOL_ALT = _alternation(_SYMBOLS)
_CODE_ALT = "|".join(sorted(_CODES))
_CURRENCY_AFTER = (
    rf"(?P<symbol>{_SYMBOL_ALT})|(?-i:(?P<code>{_CODE_ALT}))(?!\w)"
    rf"|(?P<word>{_alternation(_CURRENCY_WORDS)})(?!\w)(?!\s+(?:of|de)\s)"
)
_MONEY_PREFIX_RE = re.compile(
    rf"(?<![\w$€£¥₹])(?:(?P<symbol>{_SYMBOL_ALT})|(?-i:(?P<code>{_CODE_ALT})))\s?"
    rf"(?P<amount>{_AMOUNT}){_MULTIPLIER}",
    re.IGNORECASE,
)
_MONEY_SUFFIX_RE = re.compile(
    rf"(?<![\w.,'’:/\-])(?P<amount>{_AMOUNT_SPACED}){_MULTIPLIER}\s?(?:(?:of|de|d'|d’)\s*)?"
    rf"(?:{_CURRENCY_AFTER})",
    re.IGNORECASE,
)
_MONEY_CUE_RE = re.compile(
    rf"(?<!\w)(?:(?P<budget>{_alternation(_BUDGET_CUES)})|(?P<approx>{_alternation(_APPROXIMATE_CUES)}))"
    rf"(?:\s*:|\s+(?:{_alternation(_CONNECTORS)})(?!\w)){{0,3}}\s*"
    rf"(?P<amount>{_AMOUNT}){_MULTIPLIER}(?![\w.,]\d|\s?(?:{_COUNTED})(?!\w))",
    re.IGNORECASE,
)


def _money(text: str) -> list[Entity]:
    found: list[Entity] = []
    for pattern in (_MONEY_PREFIX_RE, _MONEY_SUFFIX_RE, _MONEY_CUE_RE):
        for m in pattern.finditer(text):
            groups = m.groupdict()
            currency = None
            if groups.get("symbol"):
                currency = _SYMBOLS[m.group("symbol").upper()]
            elif groups.get("code"):
                currency = m.group("code")
            elif groups.get("word"):
                currency = _CURRENCY_WORDS[m.group("word").lower()]
            multiplier = m.group("k") or m.group("m") or m.group("mw")
            if pattern is _MONEY_CUE_RE and groups.get("approx") and not multiplier:
                continue  # "around 10" is a count; "around 10k" is money
            amount = _parse_amount(m.group("amount"))
            if amount is None:
                continue
            if multiplier:
                amount *= _MULTIPLIERS[multiplier.lower()]
            start = m.start("amount") if pattern is _MONEY_CUE_RE else m.start()
            end = m.end()
            value = _decimal_text(amount) + (f" {currency}" if currency else "")
            found.append(Entity("money", text[start:end], value, start, end))
    return found


def _parse_amount(written: str) -> Decimal | None:
    """European and English separators: "5.000,50", "5,000.50", "1.2", "1,5",
    "5 000". One separator before exactly three digits groups thousands."""
    for space in (" ", "\u00a0", "\u202f", "'", "’"):
        written = written.replace(space, "")
    if "," in written and "." in written:
        decimal_mark = "," if written.rfind(",") > written.rfind(".") else "."
        thousands = "." if decimal_mark == "," else ","
        written = written.replace(thousands, "").replace(decimal_mark, ".")
    elif "," in written or "." in written:
        mark = "," if "," in written else "."
        parts = written.split(mark)
        grouped = len(parts) > 2 or (len(parts[1]) == 3 and parts[0] != "0")
        written = "".join(parts) if grouped else f"{parts[0]}.{parts[1]}"
    try:
        return Decimal(written)
    except InvalidOperation:
        return None


def _decimal_text(amount: Decimal) -> str:
    """ "5000", "1200.5": a plain decimal without trailing zeros."""
    return format(amount.normalize(), "f")


# --- products --------------------------------------------------------------------------


@lru_cache(maxsize=4096)
def _fold_char(char: str) -> str:
    decomposed = unicodedata.normalize("NFKD", char)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


def _fold(text: str) -> tuple[str, list[int] | None]:
    """Lower-case without accents, and for each folded character the index of the
    original one it came from (None when they are the same)."""
    if text.isascii():
        return text.lower(), None
    folded: list[str] = []
    origin: list[int] = []
    for index, char in enumerate(text):
        piece = _fold_char(char)
        folded.append(piece)
        origin.extend([index] * len(piece))
    return "".join(folded), origin


def _name_pattern(folded_name: str) -> str:
    """Words of the name with any spacing or hyphen between them, the last one
    with a simple plural (plans, classes, pastries)."""
    words = folded_name.split()
    parts = [re.escape(w).replace(r"\-", r"[\s\-]?") for w in words[:-1]]
    last = words[-1]
    if re.fullmatch(r".*[^aeiou\W]y", last):
        parts.append(re.escape(last[:-1]) + "(?:y|ies)")
    elif last[-1].isalnum():
        parts.append(re.escape(last).replace(r"\-", r"[\s\-]?") + "(?:e?s)?")
    else:
        parts.append(re.escape(last))
    return r"(?<!\w)" + r"[\s\-]+".join(parts) + r"(?!\w)"


@lru_cache(maxsize=256)
def _product_matcher(products: tuple[str, ...]) -> tuple[re.Pattern[str] | None, tuple[str, ...]]:
    names: dict[str, str] = {}
    for product in products:
        folded = " ".join(_fold(product)[0].split())
        if len(folded) >= 2:
            names.setdefault(folded, product.strip())
    if not names:
        return None, ()
    ordered = sorted(names, key=len, reverse=True)
    pattern = "|".join(f"(?P<p{i}>{_name_pattern(name)})" for i, name in enumerate(ordered))
    return re.compile(pattern), tuple(names[name] for name in ordered)


def _products(text: str, products: tuple[str, ...]) -> list[Entity]:
    matcher, canonical = _product_matcher(products)
    if matcher is None:
        return []
    folded, origin = _fold(text)
    found: list[Entity] = []
    for m in matcher.finditer(folded):
        start, end = m.span()
        if origin is not None:
            start, end = origin[start], origin[end - 1] + 1
        name = canonical[int((m.lastgroup or "p0")[1:])]
        found.append(Entity("product", text[start:end], name, start, end))
    return found


# --- people ----------------------------------------------------------------------------

_STRONG_INTRODUCTIONS = (
    "my name is", "my name's", "name's", "call me", "me llamo", "mi nombre es",
    "je m'appelle", "je m’appelle", "mon nom est", "mon nom c'est", "ich heiße",
    "ich heisse", "mein name ist",
)  # fmt: skip
_WEAK_INTRODUCTIONS = (
    "i'm", "i’m", "i am", "this is", "it's", "it’s", "soy", "aquí", "aqui", "habla",
    "je suis", "c'est", "c’est", "ici", "ich bin", "hier ist", "hier spricht",
)  # fmt: skip
_PERSON_GATE = frozenset(
    _LETTERS_RE.findall(p.lower())[0] for p in _STRONG_INTRODUCTIONS + _WEAK_INTRODUCTIONS
)
_PERSON_RE = re.compile(
    rf"(?<!\w)(?:(?P<strong>{_alternation(_STRONG_INTRODUCTIONS)})"
    rf"|(?P<weak>{_alternation(_WEAK_INTRODUCTIONS)}))\s+"
    # A look-ahead, so that the next introduction can start inside these words.
    r"(?=(?P<rest>[^\W\d_][\w'’\-]*(?:[ \t]+[^\W\d_][\w'’\-]*){0,4}))",
    re.IGNORECASE,
)
# Between names: "Anna von der Heide", "Ana de la Cruz", "Ludwig van Beethoven". A
# lone "de" is left out: "C'est Marie de Acme" names her company.
_NAME_PARTICLES = frozenset("van von der den ter de la las los del della da di le".split())
_NOT_NAMES = (
    frozenset(
        """
    a an the not no so very really just also still here there fine good great ok okay sure
    sorry interested looking trying calling writing from and or but with for to in on at of
    i me my you your we our happy glad ready available busy back done going having getting
    free new customer client calling interested unable able afraid aware currently always
    never amazing awesome perfect excellent terrible bad wonderful sure yes later back
    anytime asap now soon please maybe when if
    el la los las un una muy y o de del que en con por para cliente nuevo nueva aquí bien
    interesado interesada buscando
    le les un une et ou très tres bien client cliente nouveau nouvelle intéressé interesse
    ein eine einer der die das und oder nicht sehr hier kunde neu interessiert gerade
    english american british french german spanish mexican canadian italian portuguese
    dutch chinese japanese brazilian argentinian colombian irish scottish australian
    """.split()
    )
    | frozenset(_WEEKDAYS)
    | frozenset(_MONTHS)
    | _RELATIVE_GATE
)


def _people(text: str) -> list[Entity]:
    found: list[Entity] = []
    for m in _PERSON_RE.finditer(text):
        strong = m.group("strong") is not None
        words = list(re.finditer(r"\S+", m.group("rest")))
        chosen: list[re.Match[str]] = []
        lower_case = False
        index = 0
        while index < len(words) and len(chosen) < 4:
            word = words[index].group()
            if chosen and not lower_case and word.lower() in _NAME_PARTICLES:
                after = index
                while after < len(words) and words[after].group().lower() in _NAME_PARTICLES:
                    after += 1
                particles = " ".join(w.group().lower() for w in words[index:after])
                if (
                    particles not in ("de", "du")
                    and after < len(words)
                    and _capitalised(words[after].group())
                    and words[after].group().lower() not in _NOT_NAMES
                ):
                    chosen.extend(words[index : after + 1])
                    index = after + 1
                    continue
                break
            if word.lower() in _NOT_NAMES or word.lower().endswith(("'s", "’s")):
                break
            if _capitalised(word):
                if lower_case:
                    break
            elif strong and word.islower() and (not chosen or lower_case) and len(chosen) < 2:
                lower_case = True  # "my name is john smith"
            else:
                break
            chosen.append(words[index])
            index += 1
        if not chosen:
            continue
        start = m.start("rest") + chosen[0].start()
        end = m.start("rest") + chosen[-1].end()
        parts = [w.group() for w in chosen]
        name = " ".join(p.capitalize() for p in parts) if lower_case else " ".join(parts)
        found.append(Entity("person", text[start:end], name, start, end))
    return found


def _capitalised(word: str) -> bool:
    """ "Ana", "O'Brien", "Jean-Luc", "McDonald"; not "USA" nor "ana"."""
    return len(word) > 1 and word[0].isupper() and any(c.islower() for c in word[1:])
