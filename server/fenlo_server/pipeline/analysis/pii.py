"""Personal data in a message: emails, phone numbers, payment cards and IBANs.

``redact`` masks what goes to external LLMs and into logs (stored messages keep
the original unless the workspace masks everywhere); ``contact_details`` hands
the first email and phone to the lead; the entity extractor reuses
``find_pii`` for its emails and phones.

Regex-based and linear: candidates are found by their shape in one pass per
kind, then checked: cards must pass Luhn, IBANs the ISO 7064 mod-97 check and
their country's length, and a phone number must not read as a date, time,
year, price, range, decimal or order number. Kinds are taken in the order
email, IBAN, card, phone; a later kind never overlaps an earlier one, and the
digits of a card or IBAN that fails its check are not taken for a phone.

Placeholders: ``[EMAIL]``, ``[PHONE]``, ``[IBAN]`` and ``[CARD •••• 4242]`` (the
last four digits, as a receipt shows them, so the assistant can still say
which card).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from fenlo_server.pipeline.analysis.types import PiiKind, PiiSpan

# Emails: a dot-separated local part, "@", dot-separated domain labels and an
# alphabetic top-level domain. The look-arounds keep `user@`, `@handle`,
# `git@host:repo` and `icon@2x.png` out.
_EMAIL_RE = re.compile(
    r"(?<![\w.%+\-@])"
    r"[\w%+\-]+(?:\.[\w%+\-]+)*"
    r"@"
    r"(?:[^\W_](?:[\w\-]{0,61}[^\W_])?\.)+"
    r"[^\W\d_]{2,24}"
    r"(?![\w@\-]|\.[^\W_]|:[\w/])"
)
_NOT_TLDS = frozenset({"png", "jpg", "jpeg", "gif", "svg", "webp", "ico", "bmp"})

# IBAN lengths by country (ISO 13616 registry): a candidate from elsewhere or
# of another length is not an IBAN.
_IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22,
    "BH": 22, "BI": 27, "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24,
    "DE": 22, "DJ": 27, "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18,
    "FK": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27,
    "GT": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27,
    "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20,
    "LV": 21, "LY": 25, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MN": 20, "MR": 27,
    "MT": 31, "MU": 30, "NI": 28, "NL": 18, "NO": 15, "OM": 23, "PK": 24, "PL": 28,
    "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "RU": 33, "SA": 24, "SC": 31,
    "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "SO": 23, "ST": 25, "SV": 28,
    "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20, "YE": 30,
}  # fmt: skip
_IBAN_START_RE = re.compile(r"(?<![A-Za-z0-9])[A-Za-z]{2}[0-9]{2}")
_IBAN_SEPARATORS = frozenset(" -\u00a0")

# A numeric run: tokens of digits with . - ( ) inside, one space apart. Cards
# and phones are looked for inside runs. The run may not start inside a word,
# a price, a path or a decimal; "Tel:0612…" (a word and a colon) is fine.
_TOKEN = r"[+(]?[0-9][0-9().\-]*"
_RUN_RE = re.compile(
    rf"(?=[+(0-9])(?:(?<=[^\W\d_]:)|(?<![\w@#$€£¥₹/+.,:\-]))(?:\+ )?{_TOKEN}(?:[ \u00a0]{_TOKEN})*+"
)
_GLUED_AFTER_RE = re.compile(r"[\w%€$£¥₹/@]|[:,.][0-9]")
_CURRENCY_BEFORE_RE = re.compile(r"(?:[$€£¥₹]|\b(?:usd|eur|gbp|chf|jpy))\s*$", re.IGNORECASE)
_CURRENCY_AFTER_RE = re.compile(
    r"^\s*(?:[$€£¥₹%]|(?:usd|eur|gbp|chf|jpy|dollars?|euros?|pounds?|bucks|d[oó]lares|libras)\b)",
    re.IGNORECASE,
)
# An identifier named just before the number: "order 12345678", "ref no. 0612…".
_ID_WORDS = frozenset(
    """order invoice ref reference tracking ticket booking reservation confirmation account
    acct customer client case id sku serial pedido factura referencia reserva cuenta
    commande facture réference référence reference dossier compte bestellung rechnung auftrag
    buchung kundennummer konto""".split()
)
_NUMBER_LABELS = frozenset("number num no nr nº n° numero número numéro nummer".split())
_WORD_RE = re.compile(r"[^\W\d_]+[º°]?")
_DATE_TOKEN_RE = re.compile(
    r"^(?:([0-9]{4})[-.]([0-9]{1,2})[-.]([0-9]{1,2})|([0-9]{1,2})[-.]([0-9]{1,2})[-.]([0-9]{2}|[0-9]{4}))$"
)
_YEAR_RANGE_RE = re.compile(r"^(?:19|20)[0-9]{2}-(?:(?:19|20)[0-9]{2}|[0-9]{2})$")
_TIME_RANGE_RE = re.compile(r"^[0-9]{1,2}[.:][0-9]{2}-[0-9]{1,2}[.:][0-9]{2}$")
_DECIMAL_RE = re.compile(r"^[0-9]+\.[0-9]{1,2}$")
_THOUSANDS_RE = re.compile(r"^[1-9][0-9]{0,2}(?:\.[0-9]{3})+$|^[1-9][0-9]?(?:[ \u00a0][0-9]{3})+$")
_NUMBER_RANGE_RE = re.compile(r"^([1-9][0-9]*)-([1-9][0-9]*)$")
_YEAR_RE = re.compile(r"^(?:19|20)[0-9]{2}$")
_FIRST_GROUP_RE = re.compile(r"\(?([0-9]+)")

_NON_SPACE_RE = re.compile(r"\S+")
_NON_DIGIT_RE = re.compile(r"[^0-9]+")
_CARD_TOKEN_RE = re.compile(r"[0-9\-]+")
_MAX_RUN_TOKENS = 8  # the most groups a phone or card is written in


def find_pii(text: str) -> list[PiiSpan]:
    """Emails, IBANs, payment cards and phone numbers, sorted and non-overlapping."""
    spans: list[PiiSpan] = []
    if "@" in text:
        for m in _EMAIL_RE.finditer(text):
            if m.group().rsplit(".", 1)[1].lower() not in _NOT_TLDS:
                spans.append(PiiSpan("email", m.start(), m.end(), m.group(), m.group().lower()))
    taken = [(s.start, s.end) for s in spans]
    for m in _IBAN_START_RE.finditer(text):
        found = _iban_at(text, m.start())
        if found is None or _overlaps(taken, m.start(), found[0]):
            continue
        end, iban = found
        taken.append((m.start(), end))  # a mistyped IBAN is no card or phone either
        if iban_valid(iban):
            spans.append(PiiSpan("iban", m.start(), end, text[m.start() : end], iban))
    spans.extend(_cards_and_phones(text, taken))
    spans.sort(key=lambda s: s.start)
    return spans


def redact(text: str, spans: list[PiiSpan] | None = None) -> str:
    """The text with each span replaced by its placeholder (found here if not given)."""
    if spans is None:
        spans = find_pii(text)
    parts: list[str] = []
    position = 0
    for span in sorted(spans, key=lambda s: s.start):
        if span.start < position or span.end > len(text):
            continue  # overlapping or stale: the first one wins
        parts.append(text[position : span.start])
        parts.append(placeholder(span))
        position = span.end
    parts.append(text[position:])
    return "".join(parts)


def placeholder(span: PiiSpan) -> str:
    """What stands in for a span: ``[EMAIL]``, ``[PHONE]``, ``[IBAN]``, ``[CARD •••• 4242]``."""
    if span.kind == "card":
        return f"[CARD •••• {span.value[-4:]}]"
    return f"[{span.kind.upper()}]"


def contact_details(spans: Iterable[PiiSpan]) -> dict[str, str]:
    """The first email and phone number, for the lead (``email``, ``phone``)."""
    contact: dict[str, str] = {}
    for span in spans:
        if span.kind in ("email", "phone"):
            contact.setdefault(span.kind, span.value)
    return contact


def luhn_valid(digits: str) -> bool:
    total = 0
    for position, char in enumerate(reversed(digits)):
        digit = ord(char) - 48
        if position % 2:
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return total % 10 == 0


def iban_valid(iban: str) -> bool:
    """ISO 7064 mod-97-10 on an upper-case IBAN without separators."""
    if _IBAN_LENGTHS.get(iban[:2]) != len(iban) or not iban.isascii() or not iban.isalnum():
        return False
    rearranged = iban[4:] + iban[:4]
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


def _iban_at(text: str, start: int) -> tuple[int, str] | None:
    """(end, IBAN) of what is shaped as an IBAN at ``start`` (valid or not):
    spaces or dashes may separate characters and it must end where the
    country's length says."""
    country = text[start : start + 2].upper()
    length = _IBAN_LENGTHS.get(country)
    if length is None:
        return None
    chars = [country, text[start + 2 : start + 4]]
    need = length - 4
    i = start + 4
    while need and i < len(text):
        char = text[i]
        if char.isascii() and char.isalnum():
            chars.append(char.upper())
            need -= 1
        elif not (char in _IBAN_SEPARATORS and _is_ascii_alnum(text, i + 1)):
            break
        i += 1
    if need or _is_ascii_alnum(text, i):
        return None
    return i, "".join(chars)


def _is_ascii_alnum(text: str, i: int) -> bool:
    return i < len(text) and text[i].isascii() and text[i].isalnum()


def _overlaps(spans: Iterable[tuple[int, int]], start: int, end: int) -> bool:
    return any(s < end and start < e for s, e in spans)


@dataclass(slots=True)
class _Token:
    start: int
    end: int
    text: str
    digits: int
    card_digits: bool  # only digits and dashes: may be part of a card number
    not_phone: bool  # a date, year range, time range, decimal or number range


def _cards_and_phones(text: str, taken: list[tuple[int, int]]) -> list[PiiSpan]:
    found: list[PiiSpan] = []
    for run in _RUN_RE.finditer(text):
        if run.end() - run.start() < 7:
            continue  # fewer than 7 digits
        for segment in _segments(text, run, taken):
            cards = _cards(text, segment)
            found.extend(cards)
            for part in _split_at(segment, cards):
                if not _card_like(part):
                    found.extend(_phones(text, part))
    return found


def _segments(text: str, run: re.Match[str], taken: list[tuple[int, int]]) -> list[list[_Token]]:
    """The run's tokens, cleaned of trailing punctuation and split where a phone
    or card cannot continue: after a sentence's end, around an earlier span, and
    before a last token glued to a word or unit ("5pm", "10:30")."""
    tokens: list[_Token] = []
    segments: list[list[_Token]] = [tokens]
    raw = list(_NON_SPACE_RE.finditer(run.group()))
    for index, piece in enumerate(raw):
        start, end = run.start() + piece.start(), run.start() + piece.end()
        if piece.group() == "+" and index + 1 < len(raw):
            continue  # "+ 44 …": the plus joins the next token
        if index and raw[index - 1].group() == "+":
            start -= 2
        token, ended = _clean_token(text, start, end)
        if index == len(raw) - 1 and _GLUED_AFTER_RE.match(text, end):
            token = None
        if token is None or _overlaps(taken, token.start, token.end):
            tokens = []
            segments.append(tokens)
            continue
        tokens.append(token)
        if ended:
            tokens = []
            segments.append(tokens)
    return [s for s in segments if s]


def _clean_token(text: str, start: int, end: int) -> tuple[_Token | None, bool]:
    """The token without trailing punctuation or unbalanced parentheses, and
    whether something was stripped (then the phone or card ends here)."""
    body = text[start:end]
    if body.isdigit():  # the common case
        return _Token(start, end, body, len(body), card_digits=True, not_phone=False), False
    original_end = end
    while end > start and text[end - 1] in ".-(":
        end -= 1
    if "(" in body or ")" in body:
        if text[start] == "(" and text.count("(", start, end) > text.count(")", start, end):
            start += 1
        if text[end - 1] == ")" and text.count(")", start, end) > text.count("(", start, end):
            end -= 1
    body = text[start:end]
    if not body or not (body[0].isdigit() or body[0] in "+(") or body[-1] not in "0123456789)":
        return None, True
    token = _Token(
        start,
        end,
        body,
        digits=sum(c.isdigit() for c in body),
        card_digits=_CARD_TOKEN_RE.fullmatch(body) is not None,
        not_phone=_not_phone_token(body),
    )
    return token, end != original_end


def _split_at(tokens: list[_Token], spans: list[PiiSpan]) -> list[list[_Token]]:
    parts: list[list[_Token]] = [[]]
    taken = [(s.start, s.end) for s in spans]
    for token in tokens:
        if _overlaps(taken, token.start, token.end):
            parts.append([])
        else:
            parts[-1].append(token)
    return [p for p in parts if p]


def _card_like(tokens: list[_Token]) -> bool:
    """Digits that add up to a card's length, or in groups of four: a card number
    that fails Luhn (a typo) is neither a card nor a phone number."""
    if not all(t.card_digits for t in tokens):
        return False
    groups = [g for t in tokens for g in t.text.split("-")]
    if len(groups) >= 3 and all(len(g) == 4 for g in groups):
        return True
    digits = "".join(groups)
    return 13 <= len(digits) <= 19 and digits[0] != "0"


def _cards(text: str, tokens: list[_Token]) -> list[PiiSpan]:
    """Card numbers: 13–19 digits in dash- or space-separated groups that pass
    Luhn and do not start with 0 (a group with "+", "(" or "." is never part of
    one). From each start the 16-digit reading wins (the common length), else
    the longest."""
    found: list[PiiSpan] = []
    if sum(t.digits for t in tokens if t.card_digits) < 13:
        return found
    i = 0
    while i < len(tokens):
        best: tuple[int, str] | None = None
        digits = ""
        for j in range(i, min(len(tokens), i + _MAX_RUN_TOKENS)):
            if not tokens[j].card_digits:
                break
            digits += tokens[j].text.replace("-", "")
            if len(digits) > 19:
                break
            card = len(digits) >= 13 and digits[0] != "0" and luhn_valid(digits)
            if card and (best is None or len(digits) == 16 or len(best[1]) != 16):
                best = (j, digits)
        if best is None:
            i += 1
            continue
        j, digits = best
        start, end = tokens[i].start, tokens[j].end
        found.append(PiiSpan("card", start, end, text[start:end], digits))
        i = j + 1
    return found


def _phones(text: str, tokens: list[_Token]) -> list[PiiSpan]:
    """Phone numbers: from each start, the longest run of tokens that reads as one."""
    found: list[PiiSpan] = []
    i = 0
    while i < len(tokens):
        # From i, the reach is up to a date or range, at most 17 digits; it needs 7.
        first, last = len(tokens), i - 1
        digits = 0
        for k in range(i, min(len(tokens), i + _MAX_RUN_TOKENS)):
            digits += tokens[k].digits
            if tokens[k].not_phone or digits > 17:
                break
            if digits >= 7:
                first = min(first, k)
            last = k
        for j in range(last, first - 1, -1):
            value = _phone_value(text, tokens[i : j + 1])
            if value is not None:
                start, end = tokens[i].start, tokens[j].end
                found.append(PiiSpan("phone", start, end, text[start:end], value))
                i = j + 1
                break
        else:
            i += 1
    return found


def _phone_value(text: str, tokens: list[_Token]) -> str | None:
    """``+<digits>`` for an international number, the digits for a national
    one, or None when the tokens do not read as a phone number."""
    start, end = tokens[0].start, tokens[-1].end
    written = text[start:end]
    if len(tokens) == 1 and written[0] == "(" and written[-1] == ")":
        return None  # a number in brackets is a reference, not an area code
    if written.count("(") != written.count(")") or written.count("(") > 1:
        return None
    if len(tokens) > 1 and all(_YEAR_RE.match(t.text) for t in tokens):
        return None  # "2019 2020 2021"
    if written.startswith("+"):
        digits = _digits(written.replace("(0)", ""))
        return f"+{digits}" if 7 <= len(digits) <= 15 and digits[0] != "0" else None
    digits = _digits(written)
    if digits.startswith("00") and digits[2:3] not in ("", "0") and len(digits) >= 10:
        international = _digits(written.replace("(0)", ""))[2:]
        return f"+{international}" if len(international) <= 15 else None
    if not 7 <= len(digits) <= 12 or _THOUSANDS_RE.match(written):
        return None
    if written.isdigit() and written[0] != "0" and len(digits) < 9:
        return None  # a bare short number is more often an amount or a code
    first_group = _FIRST_GROUP_RE.match(written)
    group = first_group.group(1) if first_group else ""
    plausible_start = written[0] == "(" or group.startswith("0") or len(group) >= 3 or group == "1"
    if not plausible_start:
        return None
    before = text[max(0, start - 30) : start]
    after = text[end : end + 12]
    if _CURRENCY_BEFORE_RE.search(before[-6:]) or _CURRENCY_AFTER_RE.match(after):
        return None
    words = _WORD_RE.findall(before.lower())[-2:]
    if words and (
        words[-1] in _ID_WORDS
        or (words[-1] in _NUMBER_LABELS and len(words) == 2 and words[0] in _ID_WORDS)
    ):
        return None
    return digits


def _not_phone_token(token: str) -> bool:
    if _DECIMAL_RE.match(token) or _YEAR_RANGE_RE.match(token) or _TIME_RANGE_RE.match(token):
        return True
    date = _DATE_TOKEN_RE.match(token)
    if date is not None:
        if date.group(1):
            year, month, day = (int(date.group(k)) for k in (1, 2, 3))
            if 1900 <= year <= 2100 and 1 <= month <= 12 and 1 <= day <= 31:
                return True
        else:
            a, b = int(date.group(4)), int(date.group(5))
            if 1 <= a <= 31 and 1 <= b <= 31 and min(a, b) <= 12:
                return True
    numbers = _NUMBER_RANGE_RE.match(token)
    if numbers is not None:
        low, high = numbers.group(1), numbers.group(2)
        return len(low) == len(high) and int(low) < int(high)  # "1000-2000"
    return False


def _digits(text: str) -> str:
    return _NON_DIGIT_RE.sub("", text)


__all__ = [
    "PiiKind",
    "PiiSpan",
    "contact_details",
    "find_pii",
    "iban_valid",
    "luhn_valid",
    "placeholder",
    "redact",
]
