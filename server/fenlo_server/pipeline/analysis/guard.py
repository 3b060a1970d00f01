"""PromptGuard: prompt-injection, jailbreak, exfiltration and content checks.

It runs before every LLM call, on the latency-critical path, so it is pure
Python rules (normalisation and regular expressions): no models, no I/O, and
linear in the length of the message. A blocked turn gets ``safe_reply()`` and
an annotation and never reaches the LLM.

The layers, in order:

1. Normalisation (``normalise``): HTML entities, Unicode NFKC, zero-width,
   bidi and other format characters removed, case and accents folded,
   Cyrillic and Greek look-alikes mapped to Latin. ``deobfuscate`` also joins
   spaced-out and hyphen-split letters ("i g n o r e", "ig-nore") and undoes
   leetspeak ("1gn0r3") on a copy.
2. Encoded payloads (``decode_payloads``): base64, hex, URL-encoded and
   Unicode-tag blobs that decode to text are checked too, as is the rot13 of
   the message.
3. Override phrases ("ignore all previous instructions", "from now on you ...").
4. Role-play personas and jailbreaks (DAN, "developer mode", "pretend you have
   no restrictions").
5. Fake system or markup blocks ("[SYSTEM]", "<|im_start|>system", "### System:").
6. Instructions hidden in pasted documents (notes addressed to the AI, HTML
   comments).
7. Exfiltration (the system prompt, other customers' data, keys).
8. Content policy of the workspace (``GuardPolicy``).

Every rule that fires adds evidence with a weight; rules of one group count
once (their strongest match). The score is the noisy-or of the evidence,
``1 - prod(1 - w)``, so one strong signal blocks on its own while weak ones
("developer mode", "no restrictions", "pretend") block only together.

Only the first 6,000 and the last 2,000 characters of a long message are
analysed (instructions hide at the end of pasted documents too); the scan for
encoded payloads covers the whole message, with a cap on how many it decodes.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import html
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Final
from urllib.parse import unquote_plus

from fenlo_server.pipeline.analysis.types import GuardCategory, GuardResult
from fenlo_server.text.words import fold

__all__ = [
    "BLOCK_THRESHOLD",
    "SUPPORTED_LANGUAGES",
    "GuardPolicy",
    "check",
    "decode_payloads",
    "deobfuscate",
    "normalise",
    "safe_reply",
]

SUPPORTED_LANGUAGES: Final = ("en", "es", "fr", "de", "pt")
BLOCK_THRESHOLD: Final = 0.5
HEAD_CHARS: Final = 6000  # analysed from the start of a long message
TAIL_CHARS: Final = 2000  # and from its end
MAX_PAYLOADS: Final = 8  # encoded blobs decoded per message
MAX_PAYLOAD_CHARS: Final = 12_000  # longest blob decoded
MAX_DEPTH: Final = 2  # payloads inside payloads
OBFUSCATION_WEIGHT: Final = 0.3


# --------------------------------------------------------------------------
# Policy
# --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GuardPolicy:
    """A workspace's guard settings, from its guard step's params, e.g.
    ``{"blocked_topics": ["competitor prices"], "block_profanity": true}``.

    blocked_topics: words or phrases the business does not want discussed;
        matched case- and accent-insensitively on whole words (a plural "s"
        or "es" is allowed on each word), also through leetspeak and spacing.
    block_profanity: block messages with swear words (a small list in
        English, Spanish, French, German and Portuguese). Off by default.
    block_violence: block threats against people and requests for weapon or
        self-harm instructions. On by default.
    languages: which languages' phrase lists are checked (primary subtags of
        ``SUPPORTED_LANGUAGES``). Markup, encodings and obfuscation checks do
        not depend on language and always run. Default: all five.
    threshold: the score at or above which a message is blocked, in (0, 1].
        Lower is stricter.
    """

    blocked_topics: tuple[str, ...] = ()
    block_profanity: bool = False
    block_violence: bool = True
    languages: tuple[str, ...] = SUPPORTED_LANGUAGES
    threshold: float = BLOCK_THRESHOLD

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> GuardPolicy:
        """The policy from a pipeline step's params. Unknown keys are ignored;
        a known key with a wrong type or value raises ValueError."""
        if not isinstance(params, Mapping):
            raise ValueError(f"guard params must be a mapping, not {type(params).__name__}")
        kwargs: dict[str, Any] = {}
        if "blocked_topics" in params:
            kwargs["blocked_topics"] = _string_list(params["blocked_topics"], "blocked_topics")
        for key in ("block_profanity", "block_violence"):
            if key in params:
                value = params[key]
                if not isinstance(value, bool):
                    raise ValueError(f"{key} must be true or false, not {value!r}")
                kwargs[key] = value
        if "languages" in params:
            languages = tuple(
                code.lower() for code in _string_list(params["languages"], "languages")
            )
            unknown = sorted(set(languages) - set(SUPPORTED_LANGUAGES))
            if unknown:
                raise ValueError(
                    f"languages: unsupported {', '.join(unknown)} "
                    f"(supported: {', '.join(SUPPORTED_LANGUAGES)})"
                )
            kwargs["languages"] = languages
        if "threshold" in params:
            value = params["threshold"]
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"threshold must be a number, not {value!r}")
            if not 0 < value <= 1:
                raise ValueError(f"threshold must be in (0, 1], not {value}")
            kwargs["threshold"] = float(value)
        return cls(**kwargs)


def _string_list(value: Any, key: str) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, list | tuple):
        raise ValueError(f"{key} must be a list of strings, not {type(value).__name__}")
    items: list[str] = []
    for item in value:
        if not isinstance(item, str) or not item.strip():
            raise ValueError(f"{key} must contain non-empty strings, found {item!r}")
        items.append(item.strip())
    return tuple(items)


DEFAULT_POLICY: Final = GuardPolicy()


# --------------------------------------------------------------------------
# Safe replies
# --------------------------------------------------------------------------

_REFUSAL = {
    "en": "I'm sorry, but I can't help with that request. "
    "Is there something else I can do for you?",
    "es": "Lo siento, pero no puedo ayudar con esa solicitud. "
    "¿Hay algo más en lo que pueda ayudarle?",
    "fr": "Je suis désolé, mais je ne peux pas donner suite à cette demande. "
    "Puis-je vous aider pour autre chose ?",
    "de": "Das tut mir leid, aber bei dieser Anfrage kann ich nicht helfen. "
    "Kann ich Ihnen anders weiterhelfen?",
    "pt": "Desculpe, mas não posso ajudar com esse pedido. Posso ajudar com outra coisa?",
}
_TOPIC_REFUSAL = {
    "en": "I'm sorry, but that's not something I can discuss here. "
    "Is there something else I can help you with?",
    "es": "Lo siento, pero no puedo tratar ese tema aquí. ¿Hay algo más en lo que pueda ayudarle?",
    "fr": "Je suis désolé, mais je ne peux pas aborder ce sujet ici. "
    "Puis-je vous aider pour autre chose ?",
    "de": "Das tut mir leid, aber über dieses Thema kann ich hier nicht sprechen. "
    "Kann ich Ihnen anders weiterhelfen?",
    "pt": "Desculpe, mas não posso falar sobre esse assunto aqui. Posso ajudar com outra coisa?",
}
_TURN_LIMIT = {
    "en": "This conversation has reached its limit. Please start a new one to continue.",
    "es": "Esta conversación ha llegado a su límite. Inicie una nueva para continuar.",
    "fr": "Cette conversation a atteint sa limite. Veuillez en commencer une nouvelle.",
    "de": "Dieses Gespräch hat sein Limit erreicht. Bitte beginnen Sie ein neues.",
    "pt": "Esta conversa atingiu o limite. Por favor, inicie uma nova para continuar.",
}


def safe_reply(category: str, language: str = "en") -> str:
    """A short, polite refusal for a blocked turn, in the workspace's language
    (by its primary subtag: "pt-BR" -> Portuguese; English otherwise). It says
    nothing about what was detected or why."""
    primary = re.split(r"[-_]", language.strip().lower(), maxsplit=1)[0] if language else "en"
    if primary not in _REFUSAL:
        primary = "en"
    if category == "content":
        return _TOPIC_REFUSAL[primary]
    if category == "turn_limit":
        return _TURN_LIMIT[primary]
    return _REFUSAL[primary]


# --------------------------------------------------------------------------
# Normalisation
# --------------------------------------------------------------------------

# Format characters (zero-width, bidi controls, soft hyphen, variation selectors,
# fillers) that render as nothing but split words for a regex.
_INVISIBLE = re.compile(
    "[\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200f\u202a-\u202e"
    "\u2060-\u206f\u3164\ufe00-\ufe0f\ufeff\uffa0\U000e0000-\U000e0fff]"
)
_ZERO_WIDTH_IN_WORD = re.compile(r"[^\W_][\u00ad\u200b-\u200d\u2060\ufeff]+[^\W_]")
_BIDI = re.compile("[\u202a-\u202e\u2066-\u2069]")
_TAG_CHARS = re.compile("[\U000e0020-\U000e007e]+")
_MIXED_SCRIPT = re.compile(
    "[a-zA-Z][\u0370-\u03ff\u0400-\u04ff]|[\u0370-\u03ff\u0400-\u04ff][a-zA-Z]"
)
_QUOTES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "`": "'", "\u00b4": "'"})

# Look-alikes of Latin letters, lower-case (the text is folded first).
_HOMOGLYPHS = str.maketrans(
    {
        # Cyrillic
        "а": "a", "б": "b", "в": "b", "г": "r", "е": "e", "ё": "e", "з": "3", "и": "u",
        "й": "u", "к": "k", "л": "n", "м": "m", "н": "h", "о": "o", "п": "n", "р": "p",
        "с": "c", "т": "t", "у": "y", "х": "x", "ц": "u", "ч": "4", "ш": "w", "щ": "w",
        "ъ": "b", "ы": "bl", "ь": "b", "э": "e", "ю": "io", "я": "r", "ѕ": "s", "і": "i",
        "ї": "i", "ј": "j", "ԁ": "d", "ԛ": "q", "ԝ": "w", "һ": "h", "ӏ": "l", "ѵ": "v",
        "ү": "y", "ҫ": "c", "ӕ": "ae", "ԍ": "g",
        # Greek
        "α": "a", "β": "b", "γ": "y", "δ": "d", "ε": "e", "ζ": "z", "η": "n", "θ": "o",
        "ι": "i", "κ": "k", "λ": "l", "μ": "u", "ν": "v", "ξ": "e", "ο": "o", "π": "n",
        "ρ": "p", "σ": "o", "ς": "s", "τ": "t", "υ": "u", "φ": "o", "χ": "x", "ψ": "w",
        "ω": "w",
        # Latin odds and ends that fold() keeps
        "ß": "ss", "æ": "ae", "œ": "oe", "ø": "o", "ł": "l", "đ": "d", "ı": "i", "ɡ": "g",
        "ɑ": "a", "ℓ": "l", "ð": "d", "þ": "th",
    }
)  # fmt: skip


def normalise(text: str) -> str:
    """The text the rules read: entities decoded, NFKC, invisible characters
    removed, folded (lower case, no accents), look-alike letters mapped to Latin."""
    return _normalise(text)[0]


@dataclass(frozen=True, slots=True)
class _Evidence:
    """Obfuscation seen while normalising; it strengthens other evidence."""

    zero_width: bool = False
    bidi: bool = False
    homoglyphs: bool = False
    tag_payload: str = ""

    def names(self) -> list[str]:
        found = []
        if self.zero_width:
            found.append("zero-width characters")
        if self.bidi:
            found.append("bidi control characters")
        if self.homoglyphs:
            found.append("homoglyphs")
        return found


def _normalise(text: str) -> tuple[str, _Evidence]:
    if "&" in text and ";" in text:
        text = html.unescape(text)
    if not text.isascii():
        text = unicodedata.normalize("NFKC", text)
        tags = _TAG_CHARS.findall(text)
        evidence = _Evidence(
            zero_width=_ZERO_WIDTH_IN_WORD.search(text) is not None,
            bidi=_BIDI.search(text) is not None,
            homoglyphs=_MIXED_SCRIPT.search(text) is not None,
            tag_payload="".join(chr(ord(c) - 0xE0000) for run in tags for c in run),
        )
        text = _INVISIBLE.sub("", text).translate(_QUOTES)
        return fold(text).translate(_HOMOGLYPHS), evidence
    return text.lower().replace("`", "'"), _Evidence()


# Spaced-out letters: four or more single letters (or digits, for leetspeak)
# joined by one separator each, e.g. "i g n o r e", "p-r-e-v", "I.g.n.o.r.e".
_SPACED_RUN = re.compile(r"(?<![^\W_])[^\W_](?:[ .\-_*·|/~+][^\W_](?![^\W_])){3,}")
_SPACED_SEP = re.compile(r"[ .\-_*·|/~+]")
_SHORT_SPACED_RUN = re.compile(r"(?<![^\W_])[^\W_](?:[ .\-_*·|/~+][^\W_](?![^\W_])){1,}")
_LEET = str.maketrans(
    {"1": "i", "3": "e", "0": "o", "4": "a", "5": "s", "7": "t", "@": "a", "$": "s"}
)
# "1" stands for "i" or for "l" ("t311" -> "tell"): the reading that is a known word wins.
_LEET_AS_L = str.maketrans(
    {"1": "l", "3": "e", "0": "o", "4": "a", "5": "s", "7": "t", "@": "a", "$": "s"}
)
_LEET_HINT = re.compile(r"[a-z][013457@$]|[013457@$][a-z]")
# Hyphens, underscores or stars inside a word: "ig-nore", "in_struc_tions".
_INNER_BREAK = re.compile(r"(?<=[^\W\d_])[-_·*](?=[^\W\d_])")
# A word with a letter and a leet character, that is not a number with a unit ("3pm", "24h").
_LEET_TOKEN = re.compile(
    r"(?<![\w@$])(?![0-9]+(?:[.,][0-9]+)?(?:am|pm|st|nd|rd|th|h|hr|hrs|m|min|mins|s|sec|k|kg|"
    r"g|mg|km|cm|mm|ml|l|x|gb|mb|tb|px|p|eur|usd|gbp|yo|d|w|kw|hz|v|mp|fps)(?![\w@$]))"
    r"(?=[\w@$]*[a-z])(?=[\w@$]*[013457@$])[\w@$]+"
)


def deobfuscate(text: str) -> str:
    """The normalised text with spaced-out letters joined (and split into the
    words the rules know), words broken by hyphens joined, and leetspeak
    undone: "1 g n 0 R 3" -> "ignore", "in-struc-tions" -> "instructions"."""
    return _undo_leet(_join_spaced(normalise(text)))[0]


def _join_spaced(text: str) -> str:
    if "-" in text or "_" in text or "*" in text or "·" in text:
        text = _INNER_BREAK.sub("", text)
    if _SPACED_RUN.search(text) is None:
        return text
    # Once a message spells words out, short ones ("a l l") are spelt out too.
    return _SHORT_SPACED_RUN.sub(
        lambda m: _segment(_SPACED_SEP.sub("", m.group()).translate(_LEET)), text
    )


def _undo_leet(text: str) -> tuple[str, int]:
    """The text with leetspeak undone, and how many words of the rules'
    vocabulary that revealed."""
    if _LEET_HINT.search(text) is None:
        return text, 0
    vocabulary = _vocabulary()
    revealed = 0

    def read(match: re.Match[str]) -> str:
        nonlocal revealed
        token = match.group()
        word = token.translate(_LEET)
        if "1" in token and word not in vocabulary:
            as_l = token.translate(_LEET_AS_L)
            word = as_l if as_l in vocabulary else word
        revealed += word in vocabulary
        return word

    return _LEET_TOKEN.sub(read, text), revealed


def _segment(run: str) -> str:
    """Split letters that were spelt out with single spaces throughout
    ("ignoreallprevious") into known words, greedily, longest first."""
    vocabulary = _vocabulary()
    longest = min(len(run), 24)
    words: list[str] = []
    unknown = ""
    i = 0
    while i < len(run):
        for size in range(min(longest, len(run) - i), 1, -1):
            if run[i : i + size] in vocabulary:
                if unknown:
                    words.append(unknown)
                    unknown = ""
                words.append(run[i : i + size])
                i += size
                break
        else:
            unknown += run[i]
            i += 1
    if unknown:
        words.append(unknown)
    return " ".join(words)


# --------------------------------------------------------------------------
# Encoded payloads
# --------------------------------------------------------------------------

_BLOB = re.compile(r"(?<![A-Za-z0-9+/=_-])[A-Za-z0-9+/_-]{16,}={0,2}")
_HEX = re.compile(r"(?:[0-9a-fA-F]{2})+")
_SPACED_HEX = re.compile(r"(?<![0-9a-fA-F])(?:[0-9a-fA-F]{2}[ :]){7,}[0-9a-fA-F]{2}(?![0-9a-fA-F])")
_ESCAPED_HEX = re.compile(r"(?:\\x[0-9a-fA-F]{2}){6,}")
_URL_ESCAPE = re.compile(r"%[0-9a-fA-F]{2}")


def decode_payloads(text: str, limit: int = MAX_PAYLOADS) -> list[tuple[str, str]]:
    """Blobs in the text that decode to readable text: [(encoding, decoded)].
    Encodings: "base64", "hex". The scan covers the whole text."""
    found: list[tuple[str, str]] = []
    candidates = 0
    for pattern in (_BLOB, _SPACED_HEX, _ESCAPED_HEX):
        for match in pattern.finditer(text):
            candidates += 1
            if candidates > 8 * limit or len(found) >= limit:
                return found
            decoded = _decode_blob(match.group()[:MAX_PAYLOAD_CHARS])
            if decoded is not None:
                found.append(decoded)
    return found


def _decode_blob(blob: str) -> tuple[str, str] | None:
    compact = re.sub(r"[ :]|\\x", "", blob)
    if len(compact) % 2 == 0 and _HEX.fullmatch(compact):
        text = _as_text(bytes.fromhex(compact))
        if text is not None:
            return "hex", text
    if compact != blob:  # spaced or escaped hex is not base64
        return None
    stripped = blob.rstrip("=").replace("-", "+").replace("_", "/")
    padded = stripped + "=" * (-len(stripped) % 4)
    try:
        raw = base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError):
        return None
    text = _as_text(raw)
    return ("base64", text) if text is not None else None


def _as_text(raw: bytes) -> str | None:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    letters = sum(c.isalpha() for c in text)
    readable = sum(c.isalpha() or c.isspace() or c in ".,:;!?'\"-()/" for c in text)
    if letters < 4 or readable < 0.85 * len(text):
        return None
    return text


# --------------------------------------------------------------------------
# Rules
# --------------------------------------------------------------------------

_SEP = r"[\W_]++"  # between words: a space in a rule pattern
_WORD = r"[^\W_]++"  # any one word: WORD in a rule pattern


_CATEGORY_OF_LAYER: Final[dict[str, GuardCategory]] = {
    "override phrase": "injection",
    "fake system block": "injection",
    "hidden instruction": "injection",
    "role-play persona": "jailbreak",
    "exfiltration": "exfiltration",
    "content policy": "content",
}


@dataclass(frozen=True, slots=True)
class _Rule:
    reason: str  # "layer: rule", as reported
    category: GuardCategory
    weight: float
    pattern: re.Pattern[str]
    triggers: frozenset[str] | None  # one of these words must be present; None: always run
    language: str  # "" for language-neutral rules
    group: str  # rules of one group count once
    policy: str = ""  # "profanity" / "violence": only when the policy turns it on


def _words(*vocabularies: str) -> frozenset[str]:
    """The words of alternations like "instructions|system prompt"."""
    return frozenset(w for v in vocabularies for w in re.findall(r"[^\W_]+", v) if len(w) > 1)


def _compile(pattern: str, raw: bool) -> re.Pattern[str]:
    if raw:
        return re.compile(pattern)
    body = pattern.replace(" ", _SEP).replace("WORD", _WORD)
    return re.compile(rf"(?<![^\W_])(?:{body})(?![^\W_])")


_RULES: list[_Rule] = []


def _rule(
    reason: str,
    weight: float,
    pattern: str,
    triggers: str | None,
    *,
    lang: str = "",
    group: str | None = None,
    raw: bool = False,
    policy: str = "",
) -> None:
    """A rule. `pattern` is a regex over normalised text in which a space stands
    for any run of separators and WORD for any one word (unless `raw`)."""
    layer, _, name = reason.partition(": ")
    _RULES.append(
        _Rule(
            reason,
            _CATEGORY_OF_LAYER[layer],
            weight,
            _compile(pattern, raw),
            _words(triggers) if triggers is not None else None,
            lang,
            group or name,
            policy,
        )
    )


def _alt(*parts: str) -> str:
    return "(?:" + "|".join(parts) + ")"


# ---- layer 3: override phrases ----------------------------------------------

_OVERRIDE_VOCAB: dict[str, dict[str, str]] = {
    "en": {
        "verbs": "ignore|disregard|forget|overlook|skip|bypass|override|overwrite|overrule|discard|"
        "abandon|ditch|scrap|drop|erase|delete|neglect|circumvent|set aside|throw out|"
        "throw away|get rid of|put aside|leave aside|push aside|brush aside|"
        "pay no (?:attention|heed|mind) to|"
        "stop (?:following|obeying|using|applying|listening to)|"
        "(?:do not|don't|dont|never) (?:follow|obey|apply|use|adhere to|listen to|respect)|"
        "no longer (?:follow|obey|apply|respect)",
        "articles": "the|of|these|those|this|that|its|such|please|kindly|just|simply|now",
        "qualifiers": "previous|prev|prior|above|earlier|preceding|foregoing|original|initial|"
        "given|all|every|any|whatever|whichever|your|ur|system|safety|ethical|moral|content|usual|"
        "normal|standard|regular|typical|"
        "developer|hidden|built-in|"
        "preset|programmed|internal|core|default",
        "nouns": "instructions|instruction|rules|rule|guidelines|guideline|directions|directives|"
        "directive|prompts|prompt|system prompt|programming|guidance|constraints|restrictions|"
        "policy|policies|commands|training|conditioning|filters|safeguards|guardrails|"
        "limitations|limits|boundaries|protocols|context|checks",
        "trails": "above|before|so far|until now|up to now|"
        "you(?:'ve| have)? (?:been )?(?:given|received|told)|you were (?:given|told)|"
        "you have|you got|you received|given to you|i gave you|"
        "from (?:before|earlier|your (?:developers?|creators?|owners?|company|system|operators?)|"
        "the (?:developers?|system|company|operator))|in your (?:system )?prompt",
    },
    "es": {
        "verbs": "ignora|ignore|ignoren|ignorar|ignorad|olvida|olvidad|olviden|olvidar|"
        "olvide(?= sus)|descarta|descarte|descartar|desecha|omite|omita|omitir|desobedece|"
        "desobedezca|no sigas|no siga|no sigan|deja de (?:seguir|obedecer|respetar)|"
        "deje de (?:seguir|obedecer|respetar)|haz caso omiso (?:a|de)|haga caso omiso (?:a|de)|"
        "saltate|anula|anule|borra|borre|elimina|elimine|no hagas caso (?:a|de)|"
        "no haga caso (?:a|de)|no hagan caso (?:a|de)|deja de lado|deje de lado|pon a un lado",
        "articles": "el|la|los|las|de|del|a|al|lo|esas|estas|esos|estos|por favor|ahora|ya",
        "qualifiers": "todas|todos|toda|todo|tus|tu|sus|vuestras|cualquier|anteriores|previas|"
        "previos|originales|iniciales|ocultas|internas",
        "nouns": "instrucciones|instruccion|reglas|regla|indicaciones|directrices|directivas|"
        "normas|ordenes|restricciones|consignas|prompt|programacion|pautas|limitaciones|"
        "politicas|filtros|limites",
        "trails": "anteriores|previas|previos|de antes|originales|iniciales|del sistema|"
        "de seguridad|que te (?:dieron|han dado|dio|di|dimos)|que (?:tienes|recibiste)|"
        "de arriba|anteriormente|hasta ahora",
    },
    "fr": {
        "verbs": r"(?<!j')(?<!j\s)ignore|ignorez|ignorer|ignorons|(?<!ai\s)(?<!j')oublie|oubliez|"
        "oublier|oublions|ne tiens (?:pas|plus) compte|ne tenez (?:pas|plus) compte|"
        "ne pas tenir compte|fais abstraction|faites abstraction|neglige|negligez|abandonne|"
        "abandonnez|arrete de (?:suivre|respecter|obeir a)|arretez de (?:suivre|respecter|obeir a)|"
        "ne suis plus|ne suivez plus|ne respecte plus|ne respectez plus|outrepasse|outrepassez|"
        "contourne|contournez|efface|effacez|passe outre|passez outre|laisse tomber|laissez tomber|"
        "mets de cote|mettez de cote|laisse de cote|laissez de cote",
        "articles": "les|la|le|l|de|des|du|d|ces|cette|ce|a|aux|donc|maintenant|simplement",
        "qualifiers": "toutes|tous|toute|tout|tes|vos|ton|ta|votre|ses|precedentes|precedents|"
        "precedente|anterieures|anterieurs|initiales|originales|cachees|secretes|internes",
        "nouns": "instructions|instruction|regles|regle|consignes|consigne|directives|directive|"
        "indications|ordres|restrictions|prompt|programmation|limites|limitations|filtres|"
        "politiques",
        "trails": "precedentes|precedents|anterieures|anterieurs|ci-dessus|ci dessus|d'avant|"
        "d'origine|initiales|originales|du systeme|systeme|de securite|"
        "qu'on t'a (?:donnees|donnes|donne)|que tu as recues|que l'on t'a donnees|jusqu'ici",
    },
    "de": {
        "verbs": "ignoriere|ignorier|ignoriert|ignorieren sie|vergiss|vergesst|vergessen sie|"
        "missachte|missachtet|missachten sie|verwirf|verwerft|verwerfen sie|uberspringe|"
        "uberspring|uberspringen sie|umgehe|umgeh|umgehen sie|losche|loschen sie|hebe|heb|"
        "befolge (?:nicht mehr|keine)|befolgen sie (?:nicht mehr|keine)|"
        "halte dich nicht (?:mehr )?an|halten sie sich nicht (?:mehr )?an|setze|setz|"
        "kummere dich nicht (?:mehr )?um|pfeif auf",
        "articles": "die|der|den|dem|das|des|von|bitte|jetzt|einfach|mal|nun",
        "qualifiers": "alle|allen|aller|deine|dein|deinen|deiner|deines|ihre|ihren|ihrer|"
        "bisherigen|bisherige|vorherigen|vorherige|vorigen|vorige|fruheren|fruhere|obigen|"
        "obige|ursprunglichen|ursprungliche|internen|geheimen|versteckten|samtliche|samtlichen|"
        "jegliche|jeglichen",
        "nouns": "anweisungen|anweisung|regeln|regel|vorgaben|richtlinien|instruktionen|befehle|"
        "einschrankungen|beschrankungen|prompt|systemprompt|systemanweisungen|anordnungen|"
        "vorschriften|programmierung|filter|grenzen|sicherheitsregeln|sicherheitsrichtlinien",
        "trails": "von vorher|von zuvor|von oben|die du (?:bekommen|erhalten) hast|"
        "die dir gegeben wurden|bisher|zuvor",
    },
    "pt": {
        "verbs": "ignore|ignora|ignorar|ignorem|esqueca|esquece|esquecer|esquecam|desconsidere|"
        "desconsidera|desconsiderar|descarte|descarta|descartar|despreze|despreza|"
        "nao (?:siga|sigas|obedeca|obedecas|respeite|cumpra)|"
        "(?:deixe|deixa|pare|para) de (?:seguir|obedecer|respeitar)|abandone|abandona|apague|"
        "apaga|anule|anula|pule|burle|burla|contorne|contorna|deixe de lado|deixa de lado|"
        "ponha de lado|poe de lado",
        "articles": "as|os|a|o|de|das|dos|da|do|essas|esses|estas|estes|por favor|agora|ja",
        "qualifiers": "todas|todos|toda|todo|qualquer|quaisquer|suas|seus|sua|seu|tuas|teus|"
        "tua|teu|anteriores|previas|previos|originais|iniciais|ocultas|internas",
        "nouns": "instrucoes|instrucao|regras|regra|orientacoes|diretrizes|diretivas|normas|"
        "ordens|restricoes|prompt|programacao|comandos|limitacoes|politicas|filtros|limites",
        "trails": "anteriores|previas|previos|de antes|originais|iniciais|do sistema|"
        "de seguranca|que (?:voce )?recebeu|que te deram|que lhe deram|acima|ate agora",
    },
}

for _lang, _v in _OVERRIDE_VOCAB.items():
    _verb, _art = _alt(_v["verbs"]), _alt(_v["articles"])
    _qual, _noun, _trail = _alt(_v["qualifiers"]), _alt(_v["nouns"]), _alt(_v["trails"])
    _rule(
        "override phrase: ignore previous instructions",
        0.9,
        f"{_verb} (?:{_art} ){{0,2}}{_qual} (?:(?:{_art}|{_qual}) ){{0,3}}{_noun}",
        _v["nouns"],
        lang=_lang,
        group="override",
    )
    _rule(
        "override phrase: ignore the instructions you were given",
        0.9,
        f"{_verb} (?:(?:{_art}|{_qual}) ){{0,3}}{_noun} {_trail}",
        _v["nouns"],
        lang=_lang,
        group="override",
    )
    # "Ignore the rules" alone is too common to block ("can I ignore the rules on
    # parking?"); it counts with other evidence, such as leetspeak.
    _rule(
        "override phrase: ignore the rules",
        0.35,
        f"{_verb} (?:{_art} ){{0,2}}{_noun}",
        _v["nouns"],
        lang=_lang,
        group="override_weak",
    )

_rule(
    "override phrase: forget everything you were told",
    0.85,
    "(?:forget|ignore|disregard|overlook|erase|discard|drop|set aside) (?:about )?"
    "(?:everything|all|anything) "
    "(?:(?:of )?(?:that )?(?:you(?:'ve| have)? (?:been |were )|you were |you've |you have )"
    "(?:told|given|instructed|taught|programmed|trained)|that you (?:were|have been) told)",
    "told given instructed taught programmed trained",
    lang="en",
    group="override",
)
_rule(
    "override phrase: forget everything above",
    0.6,
    "(?:forget|ignore|disregard|erase) (?:about )?(?:everything|all|anything) "
    "(?:above|before this|so far|until now|up to now|previously|earlier|prior to this)",
    "everything all anything",
    lang="en",
    group="override",
)
_rule(
    "override phrase: forget everything above",
    0.6,
    "(?:olvida|ignora) todo lo (?:anterior|que te (?:dijeron|han dicho))|"
    "(?:oublie|ignore) tout ce qu'on t'a dit|(?:oublie|ignore) tout ce qui precede|"
    "vergiss alles(?: was)? (?:bisher|zuvor|vorher|man dir gesagt hat)|"
    "(?:esqueca|ignore) tudo (?:o que )?(?:te disseram|foi dito|anterior)",
    "todo tout alles tudo",
    group="override",
)

_rule(
    "override phrase: instructions changed by someone",
    0.8,
    "your (?:new )?(?:instructions|rules|guidelines|directives|system prompt|configuration|"
    "programming) (?:have been|has been|were|are|got|"
    "was) (?:just )?(?:updated|changed|modified|rewritten|replaced|overridden|reset|revised) "
    "by (?:the |your |an? )?(?:admin|administrator|developer|developers|system|operator|owner|"
    "company|team|security team|creator|creators|management)",
    "updated changed modified rewritten replaced overridden reset revised",
    lang="en",
    group="override",
)
_rule(
    "override phrase: restrictions lifted",
    0.45,
    "(?:previous|prior|earlier|old|all|the|any|usual|normal) (?:safety |content )?(?:restrictions|"
    "rules|limits|limitations|guidelines|instructions|policies|filters) (?:are|have been|were|"
    "is|has been) (?:now )?(?:lifted|removed|suspended|disabled|void|cancell?ed|revoked|"
    "no longer (?:valid|in effect|active|in place))",
    "restrictions rules limits limitations guidelines instructions policies filters",
    lang="en",
    group="lifted",
)
_rule(
    "override phrase: permission granted",
    0.35,
    "you (?:may|can|are (?:now )?(?:allowed|permitted|free|authori[sz]ed|cleared) to) now|"
    "you (?:are|re|'re) now (?:allowed|permitted|free|authori[sz]ed|cleared) to|"
    "you have (?:my |full |my full )?permission to (?:ignore|bypass|break|skip|share|reveal)",
    "may can allowed permitted free authorised authorized cleared permission",
    lang="en",
    group="permission",
)
_rule(
    "override phrase: stop obeying your developer",
    0.85,
    "(?:stop|quit|no longer) (?:obeying|listening to|following|serving|working for) (?:your |the )?"
    "(?:developers?|creators?|owners?|operators?|makers?|programmers?|masters?|company|system)|"
    "(?:disobey|defy|betray) (?:your |the )?(?:developers?|creators?|owners?|operators?|makers?|"
    "programmers?|masters?|company)",
    "obeying listening following serving working disobey defy betray",
    lang="en",
    group="override",
)
_rule(
    "override phrase: instructions cancelled",
    0.85,
    "(?:your|all (?:of )?your|all|the) (?:previous |prior |earlier |original |initial |old )?"
    "(?:system |safety )?(?:instructions|rules|guidelines|restrictions|directives|programming|"
    "policies|filters|constraints) (?:you (?:were|have been) given |given to you |you received )?"
    "(?:are |were |have been |has been |is |will be )?(?:now |hereby |officially )?"
    "(?:cancell?ed|void|null|revoked|replaced|obsolete|overridden|deleted|suspended|disabled|"
    "removed|invalid|superseded|deactivated|no longer (?:valid|apply|applicable|in effect|active))",
    "your system safety given",
    lang="en",
    group="override",
)
_rule(
    "override phrase: instructions cancelled",
    0.85,
    "(?:instructions|rules|guidelines|restrictions) (?:you (?:were|have been) given|given to you|"
    "you received) (?:are |were |have been |has been |is )?(?:now )?(?:cancell?ed|void|revoked|"
    "replaced|obsolete|overridden|deleted|suspended|disabled|removed|invalid|superseded|"
    "no longer (?:valid|apply|applicable|in effect|active))",
    "given received",
    lang="en",
    group="override",
)
_rule(
    "override phrase: instructions cancelled",
    0.85,
    "(?:tus|todas tus) (?:instrucciones|reglas|restricciones|normas)(?: anteriores)? "
    "(?:ya no (?:sirven|aplican|valen|son validas|existen|cuentan)|(?:han sido|estan|quedan) "
    "(?:canceladas|anuladas|eliminadas|desactivadas|revocadas))",
    "tus",
    lang="es",
    group="override",
)
_rule(
    "override phrase: instructions cancelled",
    0.85,
    "(?:tes|toutes tes|vos) (?:instructions|regles|consignes|restrictions)(?: precedentes)? "
    "(?:(?:sont|ont ete) (?:annulees|supprimees|desactivees|levees|revoquees)|"
    "ne s'appliquent plus|ne comptent plus)",
    "tes vos",
    lang="fr",
    group="override",
)
_rule(
    "override phrase: instructions cancelled",
    0.85,
    "(?:deine|ihre|alle deine) (?:anweisungen|regeln|vorgaben|einschrankungen|richtlinien) "
    "(?:gelten nicht mehr|sind (?:aufgehoben|ungultig|deaktiviert|geloscht|aufgehoben))",
    "deine ihre",
    lang="de",
    group="override",
)
_rule(
    "override phrase: instructions cancelled",
    0.85,
    "(?:suas|seus|todas as suas) (?:instrucoes|regras|restricoes|diretrizes)(?: anteriores)? "
    "(?:(?:foram|estao) (?:canceladas|anuladas|removidas|desativadas|revogadas)|"
    "nao (?:valem|se aplicam|contam) mais)",
    "suas seus",
    lang="pt",
    group="override",
)

# "You are no longer X" redefines the assistant; "you are now X" is weaker alone.
_rule(
    "override phrase: you are no longer",
    0.7,
    "you(?:'re| are|re| r) no longer (?:a|an|the|my|your|bound|restricted|limited|required|"
    "obligated|forced|constrained|just|only|subject to)",
    "longer",
    lang="en",
    group="identity",
)
_rule(
    "override phrase: you are no longer",
    0.7,
    "ya no eres (?:un|una|el|la|mi|tu|solo|solamente)|ya no estas (?:sujeto|limitado|obligado)",
    "eres estas",
    lang="es",
    group="identity",
)
_rule(
    "override phrase: you are no longer",
    0.7,
    "tu n'es plus (?:un|une|le|la|mon|ton|l|seulement|qu|oblige|limite|soumis)|"
    "vous n'etes plus (?:un|une|le|la|mon|l|oblige|limite|soumis)",
    "plus",
    lang="fr",
    group="identity",
)
_rule(
    "override phrase: you are no longer",
    0.7,
    "du bist (?:jetzt |nun |ab jetzt |ab sofort )?nicht mehr (?:der|die|das|ein|eine|mein|dein|"
    "an|gebunden|verpflichtet|eingeschrankt)|du bist kein(?:e)? (?:assistent|bot|chatbot|ki) mehr",
    "mehr",
    lang="de",
    group="identity",
)
_rule(
    "override phrase: you are no longer",
    0.7,
    "voce nao e mais (?:um|uma|o|a|meu|minha|seu|sua|apenas|so|obrigado|limitado)|"
    "tu nao es mais (?:um|uma|o|a)",
    "mais",
    lang="pt",
    group="identity",
)
_rule(
    "override phrase: you are now",
    0.4,
    "you(?:'re| are|re) (?:now|from now on|henceforth) (?:a|an|my|the|called|named|in|free|"
    "unrestricted|unfiltered|uncensored|jailbroken|evil|dan|going to)|"
    "(?:from now on|henceforth|from this point on) (?:you|u) (?:are|will be|ll be|re|shall be) "
    "(?:a|an|my|the|called|named|in|free|unrestricted|unfiltered|uncensored|jailbroken|evil)|"
    "(?:ahora|a partir de ahora|desde ahora|de ahora en adelante) (?:tu )?(?:eres|seras) "
    "(?:un|una|mi|el|la)|"
    "(?:tu es|tu seras|vous etes) (?:maintenant|desormais|a present) (?:un|une|mon|le|la)|"
    "(?:desormais|dorenavant|a partir de maintenant) (?:tu es|tu seras|vous etes) "
    "(?:un|une|mon|le|la)|"
    "(?:du bist|bist du) (?:jetzt|nun|ab sofort|ab jetzt) (?:ein|eine|der|die|mein)|"
    "(?:ab jetzt|ab sofort|von nun an) bist du (?:ein|eine|der|die|mein)|"
    "(?:agora voce e|voce agora e|agora es|a partir de agora voce e|a partir de agora "
    "voce sera) (?:um|uma|o|a|meu|minha)",
    "now henceforth ahora maintenant desormais dorenavant present jetzt nun sofort agora",
    group="persona",  # a role assignment: the same evidence as role-play framing
)

# What an injection redefines: obedience, refusal, or how every answer is given
# ("respond to every message with ..."), not a preference ("reply in Spanish").
_BEHAVE_EN = (
    "ignore|obey|disregard|pretend|roleplay|refuse|comply|no longer (?:follow|obey|refuse)|"
    "(?:respond|reply|answer|speak|talk|act|behave|write) (?:only )?(?:as|like|without|"
    "to (?:every|all|any|each)|every|everything|anything|all|with the word|only with)"
)
_rule(
    "override phrase: from now on you",
    0.7,
    "(?:from now on|from this point (?:on|forward)|henceforth|starting now|for the rest of "
    "(?:this|the) conversation) (?:you|u) (?:will |must |shall |should |are going to |need to |"
    "have to |ll |always |only )?(?:" + _BEHAVE_EN + ")",
    "now henceforth conversation forward",
    lang="en",
    group="from_now_on",
)
_rule(
    "override phrase: from now on you",
    0.6,
    "(?:from now on|from this point (?:on|forward)|henceforth) (?:act|respond|reply|answer|behave|"
    "pretend|ignore|speak|talk|obey|roleplay|play) (?:as|like|only|to|with|that|the role)",
    "now henceforth forward",
    lang="en",
    group="from_now_on",
)
_rule(
    "override phrase: from now on you",
    0.7,
    "(?:a partir de ahora|desde ahora|de ahora en adelante)(?: mismo)? (?:tu )?(?:"
    "responde|responderas|contesta|contestaras|actua|actuaras|ignora|ignoraras|obedece|"
    "obedeceras|no (?:tienes|tendras|debes) que (?:seguir|respetar|obedecer))",
    "ahora adelante",
    lang="es",
    group="from_now_on",
)
_rule(
    "override phrase: from now on you",
    0.7,
    "(?:a partir de maintenant|desormais|dorenavant|des maintenant|a partir d'aujourd'hui) "
    "(?:tu|vous) (?:reponds|repondras|repondez|repondrez|ignores|ignoreras|ignorez|agis|agiras|"
    "agissez|obeis|obeiras|obeissez|n'as plus a (?:suivre|respecter))",
    "maintenant desormais dorenavant aujourd",
    lang="fr",
    group="from_now_on",
)
_rule(
    "override phrase: from now on you",
    0.7,
    "(?:ab jetzt|ab sofort|von nun an|ab heute|von jetzt an) (?:ignorierst|gehorchst|"
    "verweigerst|missachtest) du|(?:ab jetzt|ab sofort|von nun an|ab heute|von jetzt an) "
    "(?:antwortest|sprichst|handelst|verhaltst) du (?:dich )?(?:ohne|nur mit|nur noch mit|"
    "auf alles|immer mit|wie|als)|du (?:ignorierst|gehorchst|missachtest) (?:ab jetzt|ab sofort|"
    "von nun an|ab heute)",
    "jetzt sofort nun heute",
    lang="de",
    group="from_now_on",
)
_rule(
    "override phrase: from now on you",
    0.7,
    "(?:a partir de agora|de agora em diante|daqui para frente|daqui em diante) (?:(?:voce|tu) )?"
    "(?:ignora|ignore|obedece|obedeca|nao (?:segue|precisa seguir|tem que seguir|recusa)|"
    "(?:responde|respondera|responda|fala|fale|age|aja) (?:sem|como|a tudo|tudo|so com|"
    "apenas com))",
    "agora diante frente",
    lang="pt",
    group="from_now_on",
)

_rule(
    "override phrase: new instructions",
    0.45,
    "(?:new|updated|revised|real|actual|true) (?:instructions|rules|task|directive|directives|"
    "orders|prompt|system prompt|guidelines|objective|role|mission)\\s*:|"
    "your (?:new|real|actual|true) (?:task|role|instructions|rules|purpose|goal|objective|job|"
    "mission|directive|persona|name|identity) (?:is|are|will be)|"
    "nuevas? (?:instrucciones|reglas|ordenes|tarea|directrices|normas)\\s*:|"
    "nouvelles? (?:instructions|regles|consignes|directives|taches|tache|mission)\\s*:|"
    "neue (?:anweisungen|anweisung|regeln|aufgabe|vorgaben|befehle|richtlinien)\\s*:|"
    "novas? (?:instrucoes|regras|ordens|tarefa|diretrizes|missao)\\s*:",
    "instructions rules task directive directives orders prompt guidelines objective role "
    "mission purpose goal job persona name identity instrucciones reglas ordenes tarea "
    "directrices normas regles consignes taches tache anweisungen anweisung regeln aufgabe "
    "vorgaben befehle richtlinien instrucoes regras ordens tarefa diretrizes missao",
    group="new_instructions",
)
_rule(
    "override phrase: system override",
    0.85,
    "(?:system|developer|dev|security|safety|sudo|root|god|kernel) (?:override|bypass|unlock|"
    "jailbreak)|(?:admin|administrator|master|emergency) override\\s*:|"
    "override (?:code|command|protocol|mode|activated|enabled|accepted|granted|authori[sz]ed)|"
    "(?:priority|urgent|mandatory|critical) "
    "(?:instruction|instructions|override|directive|command)\\s*:",
    "override bypass unlock jailbreak instruction instructions directive command",
    group="system_override",
)

# ---- layer 4: role-play personas and jailbreaks ------------------------------

_AI_NOUN = (
    "ai|a i|artificial intelligence|chatbot|chat bot|bot|model|llm|language model|gpt|chatgpt|"
    "ia|ki|modelo|modele|sprachmodell|robot|machine|computer"
)
_rule(
    "role-play persona: DAN",
    0.85,
    "(?:pretend|act|acting|roleplay|role play|play|be|become|you are|you're|youre|named|called|"
    "as|actua como|eres|finge ser|fais semblant d'etre|tu es|du bist|sei|voce e|finja ser|"
    "aja como) (?:to be |as |like |a |an )?dan|dan (?:mode|prompt|jailbreak|persona)|"
    "dan (?:which |who |that )?(?:stands for|means)|stay (?:as )?dan|"
    "(?:stan|aim|dude|mongo tom|betterdan|antigpt|devmode|evilbot|kevin) (?:which |who )?"
    "(?:stands for|is an|has no|doesn't|does not|never)",
    "dan stan aim dude mongo tom betterdan antigpt devmode evilbot kevin",
    group="persona_dan",
)
_rule(
    "role-play persona: do anything now",
    0.35,
    "do anything now|(?:puedes )?hacer cualquier cosa ahora|faire n'importe quoi maintenant|"
    "jetzt alles tun|fazer qualquer coisa agora",
    "anything cualquier importe alles qualquer",
    group="compliance",  # the same evidence as "answer anything"
)
_rule(
    "role-play persona: jailbreak mode",
    0.8,
    "(?:jailbreak|jailbroken|dan|evil|uncensored|unfiltered|unrestricted|unlocked|chaos|"
    "anarchy|opposite|unhinged|amoral|no limits?|no rules) mode|"
    "modo (?:sin (?:restricciones|censura|filtros|limites)|malvado|libre)|"
    "mode (?:sans (?:restriction|restrictions|censure|filtre|filtres|limite|limites)|malefique)|"
    "(?:jailbreak|unzensiert|uneingeschrankt)(?:-| )?modus|"
    "modo (?:sem (?:restricoes|censura|filtros|limites)|malvado)",
    "mode modo modus jailbreakmodus",
    group="special_mode",
)
_rule(
    "role-play persona: developer mode",
    0.45,
    "(?:enable|activate|turn on|switch on|switch to|switch into|enter|go into|boot into|unlock|"
    "start|you are (?:now )?in|you're (?:now )?in|you re (?:now )?in|now in|run in) (?:the |your )?"
    "(?:developer|dev|debug|admin|god|root|sudo|maintenance|test|testing|diagnostic|sandbox|"
    "simulation|training|safe) mode|"
    "(?:activa|active|activar|habilita|entra en|pasa a|cambia a) (?:el )?modo (?:desarrollador|"
    "dios|depuracion|admin|administrador|mantenimiento)|"
    "(?:active|activez|activer|passe en|passez en|entre en|entrez en) (?:le )?mode "
    "(?:developpeur|dieu|debug|admin|administrateur|maintenance)|"
    "(?:aktiviere|aktivier|schalte|wechsle in|wechsel in|starte) (?:den )?(?:entwicklermodus|"
    "debugmodus|adminmodus|gottmodus|wartungsmodus|entwickler-modus)|"
    "(?:ative|ativa|habilite|entre no|entra no|ligue|mude para) (?:o )?modo (?:desenvolvedor|"
    "deus|depuracao|admin|administrador|manutencao)",
    "mode modo entwicklermodus debugmodus adminmodus gottmodus wartungsmodus entwickler",
    group="special_mode",
)
_rule(
    "role-play persona: developer mode mention",
    0.25,
    "(?:developer|dev|debug|god|admin|sudo|root) mode|modo (?:desarrollador|desenvolvedor|dios|"
    "deus)|mode (?:developpeur|dieu)|entwicklermodus|gottmodus",
    "mode modo entwicklermodus gottmodus",
    group="special_mode",
)

_LIMITS = (
    "restrictions|restriction|rules|limits|limitations|filters|filter|filtering|censorship|"
    "guidelines|ethics|morals|morality|policies|content policy|boundaries|safeguards|guardrails|"
    "constraints|confines|safety"
)
_rule(
    "role-play persona: no restrictions",
    0.35,
    "(?:no|without|zero|free of|free from|freed from|broken free of|break free of|"
    "break free from|broke free of|devoid of|unbound by|not bound by|not restricted by|"
    "not limited by|regardless of|ignoring) (?:any |all |the |your |its |of )?"
    f"(?:moral |ethical |content |safety |typical |usual )?(?:{_LIMITS})|"
    "unrestricted|unfiltered|uncensored|unlimited power|unbound|unchained|unshackled|"
    "jailbroken|amoral|"
    "sin (?:ningun tipo de |ninguna |ningun |tus )?(?:restricciones|restriccion|filtros|filtro|"
    "reglas|limites|censura|normas|limitaciones|etica|moral)|"
    "sans (?:aucune |aucun |les |de |tes )?(?:restriction|restrictions|filtre|filtres|regle|"
    "regles|limite|limites|censure|limitation|limitations|morale|ethique)|"
    "ohne (?:jegliche |irgendwelche |alle |deine )?(?:einschrankungen|einschrankung|filter|"
    "regeln|grenzen|zensur|beschrankungen|moral|ethik|richtlinien)|"
    "sem (?:nenhuma |nenhum |qualquer |suas )?(?:restricoes|restricao|filtros|filtro|regras|"
    "limites|censura|limitacoes|etica|moral)|"
    "sin censura|sans censure|unzensiert|uneingeschrankt|sem censura|"
    "(?:libre|liberada|liberado|liberee|libere|livre|libertada|libertado) de (?:toutes |todas |"
    "tous |todos )?(?:ses |sus |suas |seus |tes |tus |les |las |as |os )?(?:regles|reglas|"
    "regras|restrictions|restricciones|restricoes|limites|contraintes|normas|filtres|filtros)|"
    "befreit von (?:allen |jeglichen |deinen |seinen )?(?:regeln|einschrankungen|grenzen|"
    "vorgaben|filtern)",
    f"{_LIMITS} unrestricted unfiltered uncensored unlimited unbound unchained unshackled "
    "jailbroken amoral restricciones restriccion filtros filtro reglas limites censura normas "
    "limitaciones etica moral restriction restrictions filtre filtres regle regles limite "
    "censure limitation limitations morale ethique einschrankungen einschrankung filter regeln "
    "grenzen zensur beschrankungen ethik richtlinien restricoes restricao regras limitacoes "
    "unzensiert uneingeschrankt contraintes vorgaben filtern",
    group="no_limits",
)
_rule(
    "role-play persona: you have no restrictions",
    0.65,
    "(?:you|u) (?:are |'re |re |were |have |had |'ve |now have |will have |would have |are now |"
    "can be |would be )?(?:now |completely |totally |entirely )?(?:an? )?(?:WORD )?"
    "(?:with no|without|free of|free from|freed from|no longer bound by|not bound by|"
    "unbound by|have no|had no|no) (?:any |all |the |your )?"
    f"(?:moral |ethical |content |safety )?(?:{_LIMITS})",
    _LIMITS,
    lang="en",
    group="you_unrestricted",
)
_rule(
    "role-play persona: you have no restrictions",
    0.65,
    "(?:you|u) (?:must |will |can |should |shall |are to |may |ll )?(?:now |from now on )?"
    "(?:answer|respond|reply|act|operate|speak|talk|work|function|continue|proceed|write|behave|"
    "exist|think) (?:WORD ){0,3}?(?:without|with no|free of|free from|ignoring|regardless of) "
    f"(?:any |all |the |your )?(?:moral |ethical |content |safety )?(?:{_LIMITS})",
    _LIMITS,
    lang="en",
    group="you_unrestricted",
)
_rule(
    "role-play persona: you have no restrictions",
    0.5,
    "(?:doesn't|does not|don't|do not|never|no longer|won't|will not|not) (?:(?:have|has|need|"
    "needs) )?(?:to )?(?:follow|obey|abide by|comply with|adhere to|respect|care about) "
    "(?:(?:any|the|your|its|their) )?(?:rules|restrictions|guidelines|policies|laws|ethics|"
    "content policy|filters|limitations)|"
    "no (?:tienes|tiene|debes) que (?:seguir|respetar|obedecer) (?:(?:ninguna|ningun|las|tus) )?"
    "(?:regla|reglas|politica|politicas|norma|normas|restriccion|restricciones)|"
    "(?:tu )?n'as (?:pas|plus) a (?:suivre|respecter) (?:(?:de|les|aucune) )?(?:regles|regle|"
    "restrictions|consignes)|"
    "(?:du )?(?:musst|brauchst) (?:keine|dich nicht an) (?:regeln|richtlinien|einschrankungen)|"
    "(?:voce )?nao (?:precisa|tem que|deve) (?:seguir|respeitar|obedecer) (?:(?:nenhuma|as|suas) )?"
    "(?:regra|regras|politica|politicas|restricoes)",
    "rules restrictions guidelines policies laws ethics policy filters limitations regla reglas "
    "politica politicas norma normas restriccion restricciones regles regle consignes regeln "
    "richtlinien einschrankungen regra regras restricoes",
    group="you_unrestricted",
)

_FRAME = (
    "pretend|pretending|imagine|roleplay|role-play|role play|roleplaying|act as|acting as|"
    "act like|behave as|behave like|simulate|emulate|impersonate|play the role|play a role|"
    "take on the role|stay in character|in character|you are now|you're now|become|"
    "finge|fingir|finjamos|imagina|actua como|actuar como|haz de|interpreta|simula|juguemos|"
    "hazte pasar|ahora eres|fais semblant|faites semblant|faire semblant|imaginez|joue le role|"
    "jouez le role|agis comme|agissez comme|comporte-toi comme|simule|incarne|"
    "tu es maintenant|tu es desormais|tu so als|tun sie so als|stell dir vor|"
    "stellen sie sich vor|spiele die rolle|spiel die rolle|verhalte dich wie|simuliere|"
    "du bist jetzt|du bist nun|gib dich als|finja|aja como|atue como|agir como|simule|"
    "faca de conta|faz de conta|voce agora e|agora voce e"
)
_FRAME_WORDS = (
    "pretend pretending imagine roleplay role play roleplaying act acting behave simulate "
    "emulate impersonate character now become finge fingir finjamos imagina actua actuar haz "
    "interpreta simula juguemos hazte ahora fais faites faire semblant imaginez joue jouez agis "
    "agissez comporte simule incarne maintenant desormais tu tun stell stellen spiele spiel "
    "verhalte simuliere jetzt nun gib finja aja atue agir faca faz agora"
)
_rule(
    "role-play persona: role-play framing",
    0.3,
    _FRAME,
    _FRAME_WORDS,
    group="persona",
)
_rule(
    "role-play persona: AI persona",
    0.45,
    f"(?:{_FRAME}) (?:WORD ){{0,5}}?(?:{_AI_NOUN})",
    _FRAME_WORDS,
    group="persona",
)
_rule(
    "role-play persona: evil AI persona",
    0.4,
    "(?:evil|malicious|rogue|unethical|amoral|uncensored|unfiltered|unrestricted|jailbroken|"
    "dark|hacked|unhinged|machiavellian|free|liberated|unaligned|immoral) "
    f"(?:{_AI_NOUN}|assistant|version of (?:you|yourself)|twin|alter ego|counterpart)|"
    "your (?:uncensored|unfiltered|evil|true|real|dark|unrestricted|inner|shadow) "
    "(?:self|side|version|personality)|"
    "(?:ia|ki) (?:malvada|malefique|bose|malvada|sin escrupulos|sem escrupulos)",
    "ai chatbot bot model llm gpt chatgpt ia ki modelo modele sprachmodell robot machine "
    "computer assistant version twin alter counterpart self side personality malvada malefique "
    "bose escrupulos",
    group="evil_persona",
)
_rule(
    "role-play persona: no consequences",
    0.45,
    "(?:nothing|none of (?:what|this)) (?:you say |you do |you write |of this )?(?:(?:has|have|"
    "will have|carries) (?:any |real )?(?:consequences|consequence|effects?|impact|"
    "repercussions)|matters|counts|is real|is logged|is monitored)|"
    "(?:this|it) (?:is|s) (?:just )?(?:a|an) "
    "(?:safe|private|unmonitored|unlogged|offline) (?:space|environment|session|sandbox)|"
    "no one (?:is|will be) (?:watching|monitoring|reading|logging)",
    "nothing none consequences consequence safe private unmonitored unlogged offline watching "
    "monitoring reading logging",
    lang="en",
    group="no_consequences",
)
_rule(
    "role-play persona: two-faced answer",
    0.5,
    "(?:respond|answer|reply) (?:twice|two times|in two ways|with two (?:responses|answers))|"
    "(?:respond|answer|reply|act) as (?:two|2|both) (?:ais|bots|personas|characters|assistants|"
    "models|versions)|"
    "(?:once|one) (?:normally|as yourself|as (?:chatgpt|the assistant)) (?:and )?(?:once|one) as|"
    "(?:classic|normal|standard) (?:response|answer) (?:and|then) (?:a |an |the )?"
    "(?:jailbreak|jailbroken|dan|developer mode|unfiltered|uncensored) (?:response|answer)",
    "twice two times once classic normal standard both",
    lang="en",
    group="dual_response",
)
_rule(
    "role-play persona: never refuse",
    0.35,
    "(?:never|not|don't|do not|won't|will not|cannot|can't|must not|mustn't) (?:ever )?"
    "(?:refuse|refuses|decline|declines|say no|says no|reject|deny|warn|apologi[sz]e|"
    "break character)|"
    "(?:answer|answers|respond to|reply to|comply with|do) (?:absolutely )?(?:anything|"
    "everything|any request|all requests|every request|any question|whatever i (?:ask|say|want))|"
    "(?:always|must) (?:comply|obey|answer|agree)|"
    "(?:obey|obeys) (?:me|the user|only me|my (?:commands|orders)|every)|"
    "(?:nunca|no) (?:te niegues|rechaces|digas que no)|responde a (?:todo|cualquier cosa)|"
    "obedece(?:me)?|ne refuse jamais|reponds a tout|obeis(?:-moi)?|verweigere nie|"
    "beantworte alles|gehorche|nunca recuse|responda (?:a )?tudo|obedeca|"
    "(?:listen|obey|answer|respond|reply) only to me|only (?:listen|obey) to me",
    "refuse refuses decline declines say says reject deny warn apologise apologize break "
    "anything everything request requests question whatever comply obey obeys agree niegues "
    "rechaces digas todo cualquier obedece obedeceme jamais tout obeis verweigere nie alles "
    "gehorche recuse tudo obedeca listen only",
    group="compliance",
)
_rule(
    "role-play persona: safety disabled",
    0.6,
    "(?:safety|content|ethical|moral|your|all) (?:WORD )?(?:filters?|restrictions|guidelines|"
    "guardrails|safeguards|policy|policies|training|rules|censorship|alignment|protocols?) "
    "(?:has |have |are |is |were |was )?(?:been )?(?:now )?(?:removed|disabled|turned off|"
    "switched off|deactivated|lifted|suspended|off|bypassed|gone|no longer active)|"
    "(?:filtros|restricciones|reglas) (?:de seguridad )?(?:estan |han sido |quedan )?"
    "(?:desactivad[oa]s|eliminad[oa]s|apagad[oa]s)|"
    "(?:filtres|restrictions|regles) (?:de securite )?(?:sont |ont ete )?"
    "(?:desactive(?:e)?s|supprime(?:e)?s|leve(?:e)?s)|"
    "(?:sicherheitsfilter|filter|einschrankungen|sicherheitsregeln) (?:sind |wurden )?"
    "(?:deaktiviert|abgeschaltet|aufgehoben|entfernt)|"
    "(?:filtros|restricoes|regras) (?:de seguranca )?(?:estao |foram )?"
    "(?:desativad[oa]s|removid[oa]s|desligad[oa]s)",
    "filters filter restrictions guidelines guardrails safeguards policy policies training "
    "rules censorship alignment protocol protocols filtros restricciones reglas filtres regles "
    "sicherheitsfilter einschrankungen sicherheitsregeln restricoes regras",
    group="safety_disabled",
)
_rule(
    "role-play persona: safety disabled",
    0.6,
    "(?:disable|turn off|switch off|deactivate|remove|bypass|lift|drop|suspend|override|"
    "desactiva|desactive|quita|elimina|desactivez|supprime|supprimez|deaktiviere|"
    "deaktivieren sie|entferne|schalte|desative|desativa|remova) (?:all )?(?:"
    # whose filters: the assistant's, or safety ones; not "the filter of my vacuum"
    "(?:your|tus|tes|vos|deine|ihre|suas|seus) (?:safety |content |ethical |moral )?|"
    "(?:the |all |any )?(?:safety|content|ethical|moral|censorship) )(?:filters|filter|"
    "restrictions|guardrails|safeguards|censorship|guidelines|filtros|restricciones|filtres|"
    "einschrankungen|restricoes)|"
    "(?:desactiva|desactive|quita|elimina|desactivez|supprime|supprimez|desative|desativa|"
    "remova) (?:los |las |les |os |as )?(?:filtros|filtres|restricciones|restrictions|"
    "restricoes) de (?:seguridad|securite|seguranca|contenido|contenu|conteudo)|"
    "(?:deaktiviere|deaktivieren sie|entferne|schalte) (?:alle |die |deine )?"
    "(?:sicherheitsfilter|inhaltsfilter|sicherheitsregeln)",
    "filters filter restrictions guardrails safeguards censorship guidelines filtros "
    "restricciones filtres einschrankungen restricoes sicherheitsfilter inhaltsfilter "
    "sicherheitsregeln",
    group="safety_disabled",
)
_rule(
    "role-play persona: claims authority",
    0.4,
    "(?:i am|i'm|im|this is) (?:your|the) (?:developer|developers|creator|creators|admin|"
    "administrator|owner|operator|programmer|maker|system administrator|sysadmin|master)"
    "(?! of (?:the |this |my |a )?(?:account|company|business|booking|reservation|group|team|"
    "event|shop|store|restaurant|clinic|house|flat|car|dog|cat))|"
    "(?:update|message|notice|instruction|instructions|directive|order|orders|memo|note) from "
    "(?:the |your )?(?:management|admin|administrator|developers?|system|headquarters|hq|"
    "operators?|owners?|security team|it department|head office|openai|anthropic)|"
    "(?:the |your )?(?:developer|developers|admin|administrator|system administrator|operator|"
    "owner|management|creator) (?:says|said|wants you to|instructs you|instructed you|orders you|"
    "told me to tell you|asked me to tell you|has authori[sz]ed)|"
    "authori[sz]ed (?:admin|administrator|developer|system|root|security) (?:request|command|"
    "override|access|user|personnel)|(?:admin|developer|root|sudo) (?:access|privileges|rights|"
    "mode) (?:granted|enabled|activated|confirmed)|"
    "(?:soy|je suis|ich bin|eu sou) (?:tu|ton|dein|seu) (?:desarrollador|creador|developpeur|"
    "createur|entwickler|ersteller|desenvolvedor|criador|administrador|administrateur)",
    "developer developers creator creators admin administrator owner operator programmer maker "
    "sysadmin master authorised authorized root sudo desarrollador creador developpeur createur "
    "management headquarters hq operators owners department office openai anthropic "
    "entwickler ersteller desenvolvedor criador administrador administrateur",
    group="authority",
)
_rule(
    "role-play persona: opposite of your rules",
    0.6,
    "(?:the )?opposite of (?:what )?(?:your|the|its) (?:guidelines|rules|instructions|"
    "programming|policies|policy|training|principles)|opposite day|"
    "(?:reverse|invert|flip) (?:all )?(?:your|the|its) (?:guidelines|rules|instructions|"
    "policies|principles)",
    "opposite reverse invert flip",
    lang="en",
    group="inversion",
)
# Not "model" or "version": a car model "with no mileage limits" is no jailbreak.
_AI_PERSONA = "ai|a i|chatbot|chat bot|llm|language model|gpt|chatgpt|bot|assistant|persona"
_rule(
    "role-play persona: unrestricted AI",
    0.6,
    f"(?:{_AI_PERSONA}) (?:that|which|who) "
    "(?:has|have|had|is|knows|with) (?:absolutely )?(?:no|zero|without) (?:any )?"
    f"(?:moral |ethical |content |safety )?(?:{_LIMITS})|"
    "[a-z]+(?:bot|gpt) (?:has|have|with|knows) (?:absolutely )?(?:no|zero) (?:any )?"
    f"(?:moral |ethical |content |safety )?(?:{_LIMITS})|"
    f"(?:{_AI_PERSONA}) (?:that|which|who) (?:was|were|has been|is|had been) (?:never|not) "
    "(?:trained|programmed|bound|restricted|limited|given|taught|aligned) (?:(?:with|by|"
    f"to follow|on) )?(?:any |the )?(?:moral |ethical |content |safety )?(?:{_LIMITS})|"
    f"(?:{_AI_PERSONA}) (?:with no|without|free of|free from|freed from|"
    "liberated from|unbound by) (?:any |all )?(?:moral |ethical |content |safety )?"
    f"(?:{_LIMITS})|"
    "(?:ia|ki|asistente|assistant|assistente) (?:WORD )?(?:sin|sans|ohne|sem|"
    "libre de|liberee de|liberada de|libertada de|livre de|befreit von) (?:aucune |ninguna |"
    "nenhuma |jegliche |toutes |todas |tous |alle |de |ses |sus |suas |seine |les |las |as )*"
    "(?:restricciones|reglas|filtros|limites|censura|restrictions|regles|filtres|censure|"
    "einschrankungen|regeln|filter|grenzen|zensur|restricoes|regras)",
    _LIMITS + "|restricciones|reglas|filtros|limites|censura|restrictions|regles|filtres|"
    "censure|einschrankungen|regeln|filter|grenzen|zensur|restricoes|regras",
    group="you_unrestricted",
)
_rule(
    "role-play persona: jailbreak",
    0.3,
    "jailbreak|jailbreaking|jailbroken",
    "jailbreak jailbreaking jailbroken",
    group="jailbreak_word",
)

# ---- layer 5: fake system and markup blocks ---------------------------------

_rule(
    "fake system block: chat template token",
    0.9,
    r"<\|[a-z_]{2,30}\|>|\[/?inst\]|<</?sys>>|<\|?(?:endoftext|eot_id|start_header_id)\|?>",
    None,
    raw=True,
    group="markup",
)
_rule(
    "fake system block: role tag",
    0.75,
    r"\[\s*/?\s*(?:system|sys|admin|administrator|developer|dev|assistant|operator|root|"
    r"instructions?|system (?:prompt|message|note|instructions?|override))\s*\]|"
    r"</?\s*(?:system|sys|assistant|instructions?|admin|developer|operator|im_start|prompt|"
    r"system_prompt|system-prompt)(?:\s[^<>]{0,100})?>",
    None,
    raw=True,
    group="markup",
)
_rule(
    "fake system block: user tag",
    0.45,
    r"</?\s*(?:user|human)\s*>",
    None,
    raw=True,
    group="markup_user",
)
_rule(
    "fake system block: system header",
    0.75,
    r"(?:^|\n)[ \t]*#{1,6}[ \t]*(?:system|assistant|developer|admin|instructions?)"
    r"(?:[ \t]+(?:prompt|message|note|instructions))?[ \t]*:?[ \t]*(?:\n|$)|"
    r"(?:begin|end|start|beginning of|end of)[\W_]+(?:the[\W_]+)?(?:new[\W_]+(?:system[\W_]+)?|"
    r"(?:system|hidden|secret|developer|admin|real|actual)[\W_]+)(?:prompt|message|instructions)|"
    r"[=\-*#]{3,}[ \t]*(?:system|admin|developer)(?:[ \t]+(?:prompt|message|instructions))?"
    r"[ \t]*[=\-*#]{3,}",
    "system assistant developer admin instructions instruction prompt message",
    raw=True,
    group="markup",
)
_rule(
    "fake system block: fake transcript",
    0.6,
    r"(?:^|\n)[ \t]*(?:system|assistant|ai|bot|developer|chatgpt|gpt)[ \t]*:[^\n]*\n"
    r"(?:[^\n]*\n){0,5}?[ \t]*(?:user|human)[ \t]*:|"
    r"(?:^|\n)[ \t]*(?:user|human)[ \t]*:[^\n]*\n(?:[^\n]*\n){0,5}?[ \t]*"
    r"(?:system|assistant|ai|bot)[ \t]*:",
    "user human",
    raw=True,
    group="transcript",
)
_rule(
    "fake system block: system line with instructions",
    0.7,
    r"(?:^|\n)[ \t]*(?:system|developer|sys|admin)(?:[ \t]+(?:prompt|message|note))?[ \t]*:"
    r"[ \t]*(?:you|your|always|never|ignore|disregard|forget|do not|don't|from now on|"
    r"the assistant|assistant|reply|respond|answer|act|new rule|override)\b",
    "system developer sys admin",
    raw=True,
    group="markup",
)
_rule(
    "fake system block: role line",
    0.3,
    r"(?:^|\n)[ \t]*(?:system|developer|sys)(?:[ \t]+(?:prompt|message|note))?[ \t]*:",
    "system developer sys",
    raw=True,
    group="transcript",
)
_rule(
    "fake system block: system role in JSON",
    0.45,
    r"[\"']role[\"']\s*:\s*[\"'](?:system|developer)[\"']|"
    r"\brole\s*[:=]\s*(?:system|developer)\b",
    "role",
    raw=True,
    group="role_json",
)

# ---- layer 6: instructions hidden in pasted documents -----------------------

_AI_ADDRESSEE = (
    "ai|a i|ia|ki|assistant|assistants|assistente|asistente|chatbot|chatbots|bot|bots|llm|"
    "llms|language model|model|modele|modelo|sprachmodell|gpt|chatgpt|machine|robot|"
    "l'ia|l'assistant|le modele|le bot|der ki|die ki|dem bot"
)
_rule(
    "hidden instruction: note addressed to the AI",
    0.45,
    "(?:note|notes|message|instruction|instructions|p s|ps|reminder|important|attention|"
    "hidden instructions?|nota|mensaje|instruccion|instrucciones|instrucao|instrucoes|consigne|"
    "consignes|hinweis|anweisung|anweisungen|notiz|nachricht|aviso|recado) (?:WORD ){0,2}?"
    "(?:to|for|pour|para|fur|an|a|al) (?:the |any |all |every |l |la |el |den |die |o |a |"
    "le |les |der )?(?:" + _AI_ADDRESSEE + ")|"
    "(?:any |all |every )?(?:ai|assistant|model|bot|llm|language model|chatbot)s? "
    "(?:reading|processing|summari[sz]ing|parsing|analy[sz]ing) this",
    _AI_ADDRESSEE + "|ais|models|llms|chatbots",
    group="doc_note",
)
_rule(
    "hidden instruction: command addressed to the AI",
    0.55,
    r"(?:^|[(\[{<>}*|\"'\n.;!?]|--)[ \t]*(?:dear |hey |hi |attention |note to |to the |attn |"
    r"(?:hidden )?(?:note|message|instruction|instructions|reminder|p\.?s\.?)s? (?:to|for) "
    r"(?:the |any |all )?)?"
    r"(?:ai|ia|ki|chatbot|llm|language model|gpt|chatgpt|assistant|ai assistant|ai model|"
    r"bot)[ \t]*[:,][\W_]*(?:ignore|disregard|forget|do not|don't|instead|you must|you should|"
    r"you will|reply|respond|tell|say|output|print|reveal|recommend|rate|approve|send|"
    r"olvida|ignora|responde|di|dile|oublie|ignorez|reponds|dis|ignoriere|vergiss|antworte|"
    r"sag|gib|esqueca|diga|responda|when you)",
    "ai ia ki chatbot llm model gpt chatgpt assistant bot",
    raw=True,
    group="doc_command",
)
_rule(
    "hidden instruction: ignore the user",
    0.6,
    "(?:ignore|disregard|forget|ignora|ignorar|olvida|ignorez|oublie|ignoriere|vergiss|"
    "esqueca|desconsidere) (?:the |al |a la |el |l |den |die |o |a )?(?:user|user's|users|"
    "usuario|usuaria|utilisateur|utilisatrice|nutzer|benutzer|nutzerin|usuario|human|customer|"
    "person asking)",
    "user users usuario usuaria utilisateur utilisatrice nutzer benutzer nutzerin human "
    "customer person",
    group="doc_command",
)
_rule(
    "hidden instruction: addresses the model processing it",
    0.45,
    "when (?:you|the (?:ai|assistant|model|bot)) (?:summari[sz]e|summari[sz]es|translate|"
    "translates|read|reads|process|processes|analy[sz]e|analy[sz]es|review|reviews|see|sees) "
    "this|(?:also |then )?tell the user (?:that )?(?:their|his|her|the|your)|"
    "cuando (?:resumas|traduzcas|leas|proceses) (?:esto|este)|"
    "quand tu (?:resumes|traduis|lis) (?:ceci|ce)|"
    "wenn du (?:dies|das|diese) (?:zusammenfasst|ubersetzt|liest)|"
    "quando (?:voce )?(?:resumir|traduzir|ler) (?:isto|isso|este)",
    "when tell cuando quand wenn quando",
    group="doc_process",
)
_rule(
    "hidden instruction: instruction in an HTML comment",
    0.45,
    r"<!--(?:(?!-->)[^<]){0,400}?(?:\b(?:ai|ia|ki|assistant|chatbot|llm|gpt|ignore|ignora|"
    r"ignoriere|disregard|forget|oublie|vergiss|olvida|esqueca|you must|you are now|reveal|"
    r"print the|output)\b|\bsystem\s*:)",
    None,
    raw=True,
    group="doc_comment",
)
_rule(
    "hidden instruction: hidden HTML text",
    0.35,
    r"style\s*=\s*[\"'][^\"']{0,200}(?:display\s*:\s*none|visibility\s*:\s*hidden|"
    r"font-size\s*:\s*0|opacity\s*:\s*0(?:[^.\d]|$)|color\s*:\s*(?:white|#fff\b|#ffffff))",
    "style",
    raw=True,
    group="doc_hidden",
)
_rule(
    "hidden instruction: hidden instruction",
    0.35,
    "hidden (?:instruction|instructions|prompt|message|command|commands|directive)|"
    "instruccion oculta|instrucciones ocultas|instruction cachee|instructions cachees|"
    "versteckte anweisung|versteckte anweisungen|instrucao oculta|instrucoes ocultas",
    "hidden oculta ocultas cachee cachees versteckte",
    group="doc_hidden",
)

# ---- layer 7: exfiltration ----------------------------------------------------

_SECRET_TARGET = (
    "system prompt|system message|system instructions|system instruction|initial prompt|"
    "original prompt|first prompt|pre-prompt|preprompt|meta prompt|metaprompt|hidden prompt|"
    "secret prompt|context window|hidden rules|secret rules|internal rules|hidden instructions|"
    "secret instructions|internal instructions|confidential instructions|original instructions|"
    "initial instructions|developer instructions|developer message|"
    "prompt del sistema|mensaje del sistema|instrucciones del sistema|instrucciones ocultas|"
    "instrucciones secretas|instrucciones internas|instrucciones iniciales|reglas ocultas|"
    "prompt systeme|prompt du systeme|message systeme|instructions systeme|"
    "instructions du systeme|instructions cachees|instructions secretes|instructions internes|"
    "instructions initiales|regles cachees|systemprompt|system-prompt|systemanweisungen|"
    "systemnachricht|versteckten prompt|versteckte prompt|versteckten anweisungen|"
    "geheimen anweisungen|internen anweisungen|ursprunglichen anweisungen|"
    "prompt de sistema|prompt do sistema|mensagem do sistema|instrucoes do sistema|"
    "instrucoes de sistema|instrucoes ocultas|instrucoes secretas|instrucoes internas|"
    "instrucoes iniciais|regras ocultas"
)
_DISCLOSE = (
    "reveal|show|print|display|output|repeat|tell|give|share|dump|leak|expose|disclose|write|"
    "copy|paste|quote|recite|spell out|list|send|read|provide|return|echo|type out|summari[sz]e|"
    "translate|explain|what is|what's|whats|what are|what were|what was|"
    "muestra|muestrame|ensena|ensename|dime|dame|revela|imprime|repite|escribe|copia|cual es|"
    "cuales son|affiche|affichez|montre|montrez|revele|revelez|donne|donnez|repete|repetez|"
    "ecris|ecrivez|dis|dites|imprime|copie|quel est|quelles sont|zeig|zeige|zeigen sie|gib|"
    "geben sie|nenne|nennen sie|verrate|wiederhole|schreib|schreibe|sag|sage|drucke|gib aus|"
    "was ist|was sind|wie lautet|wie lauten|mostre|mostra|revele|revela|diga|diz|me de|"
    "me passe|passe|imprima|repita|escreva|qual e|quais sao|copie|envie"
)
_DISCLOSE_WORDS = _words(_DISCLOSE.replace("[sz]", "s"))
_rule(
    "exfiltration: system prompt",
    0.85,
    f"(?:{_DISCLOSE}) (?:WORD ){{0,4}}?(?:your |ur |the |its |this |tu |su |el |ton |votre |"
    f"le |ta |tes |vos |dein |deinen |deine |ihr |ihren |den |die |seu |sua |o |a |suas |"
    f"seus |tus |sus )?(?:full |entire |complete |exact |whole |raw |real |actual |"
    f"underlying |current |completo |complet |vollstandigen |completo )?(?:{_SECRET_TARGET})"
    "(?! (?:on|for|of|in|from) (?:my|the|a|this|your) (?:WORD )?(?:laptop|computer|pc|phone|"
    "kiosk|screen|device|terminal|machine|login|app|tablet|windows|mac|router|printer|tv))",
    _SECRET_TARGET,
    group="exfil_prompt",
)
_rule(
    "exfiltration: system prompt",
    0.6,
    "(?:your|ur|tu|su|tus|ton|tes|votre|vos|dein|deinen|deine|ihr|ihren|seu|sua|suas|seus) "
    f"(?:own )?(?:{_SECRET_TARGET}|prompt|instructions (?:verbatim|word for word))",
    _SECRET_TARGET + "|prompt",
    group="exfil_prompt",
)
_rule(
    "exfiltration: the instructions you received",
    0.8,
    f"(?:{_DISCLOSE}) (?:WORD ){{0,3}}?(?:the |your |all |all the |any )?(?:exact |full |original |"
    "initial |first |hidden )?(?:instructions|rules|prompt|guidelines|directives) "
    "(?:(?:you (?:received|were given|got|have been given|have been told|are following|"
    "were told)|given to you)(?! (?:from|by|about|for|regarding) (?:my|our|his|her|their|a|the) )|"
    "at the (?:beginning|start|top) of (?:this|the|our) (?:chat|conversation|session|thread))",
    "instructions rules prompt guidelines directives",
    lang="en",
    group="exfil_prompt",
)
_rule(
    "exfiltration: part of the instructions",
    0.8,
    "(?:first|last|opening|initial|final) (?:[0-9]+ |few |two |three |five |ten |hundred )?"
    "(?:words|lines|sentences|paragraphs|characters|tokens|letters|rules|items) (?:of|in|from) "
    "(?:your (?:instructions|prompt|system prompt|rules|system message|guidelines|"
    "configuration|directives|initial prompt)|the (?:prompt|system prompt|system message|"
    "initial prompt))",  # "the first lines of the instructions" may be a manual's
    "words lines sentences paragraphs characters tokens letters rules items",
    lang="en",
    group="exfil_prompt",
)
_rule(
    "exfiltration: your instructions",
    0.35,
    f"(?:{_DISCLOSE}) (?:WORD ){{0,3}}?(?:your|ur|tus|tes|deine|suas|vos|ihre) "
    "(?:own |full |entire |complete |exact |whole |current |original |initial |internal )?"
    "(?:instructions|rules|guidelines|configuration|config|setup|programming|"
    "directives|training data|instrucciones|reglas|consignes|regles|anweisungen|regeln|"
    "instrucoes|regras|configuracion|konfiguration|configuracao)",
    "instructions rules guidelines configuration config setup programming directives training "
    "instrucciones reglas consignes regles anweisungen regeln instrucoes regras configuracion "
    "konfiguration configuracao",
    group="exfil_weak",
)
_rule(
    "exfiltration: verbatim",
    0.45,
    "verbatim|word for word|word-for-word|character by character|mot pour mot|"
    "palabra por palabra|wort fur wort|palavra por palavra|"
    "(?:quote|repeat|copy|print|output|reproduce) (?:WORD ){0,4}?(?:exactly|verbatim|"
    "precisely|in full|literally)",
    "verbatim word character mot palabra wort palavra exactly precisely full literally",
    group="verbatim",
)
_rule(
    "exfiltration: text above",
    0.5,
    "(?:repeat|print|output|show|copy|write|return|echo|tell me|recite|reproduce) (?:WORD ){0,3}?"
    "(?:the )?(?:text|words|everything|all|content|contents|message|messages|lines?|"
    "instructions|prompt) (?:above(?![\\W_]*[0-9$€£])|before this|prior to this|preceding|"
    "that came before|before my (?:message|question)|at the (?:start|beginning|top))",
    "text words everything all content contents message messages line lines instructions prompt",
    lang="en",
    group="text_above",
)
_rule(
    "exfiltration: text above",
    0.75,
    "(?:starting|beginning|start|begin) (?:with|from) (?:the (?:words?|phrase) )?"
    "['\"]?(?:you are|you're|your role|as an ai|system|instructions)",
    "starting beginning start begin",
    lang="en",
    group="text_above",
)
_rule(
    "exfiltration: what were you told",
    0.75,
    "what (?:were|was|have|had|are) you (?:been )?(?:told|instructed|given|programmed|prompted|"
    "configured|trained|asked|ordered) (?:to do )?(?:before|prior|at the (?:start|beginning)|"
    "initially|originally|first|by (?:the|your) (?:developers?|creators?|company|admin|"
    "operators?|owners?|system|business))|"
    "what (?:instructions|rules|prompt|guidelines|directives|orders) (?:were you|have you been|"
    "did you get|did you receive|are you (?:following|operating under|running)|you were) "
    "(?:given|told|provided|programmed|following|operating|running)?|"
    "how (?:were|are|have) you (?:been )?(?:programmed|instructed|configured|prompted)|"
    "que te (?:dijeron|han dicho|indicaron|ordenaron|programaron) (?:antes|al principio|"
    "inicialmente)|(?:que|cuales) (?:instrucciones|reglas) (?:te dieron|tienes|te han dado)|"
    "qu'est-ce qu'on t'a dit (?:avant|au debut)|quelles (?:instructions|consignes|regles) "
    "(?:as-tu recues|t'a-t-on donnees|on t'a donnees|suis-tu|as tu recues)|"
    "was wurde dir (?:vorher|am anfang|zuvor) gesagt|welche (?:anweisungen|regeln) "
    "(?:hast du bekommen|hast du erhalten|wurden dir gegeben|befolgst du)|"
    "o que te (?:disseram|falaram|instruiram) (?:antes|no inicio)|quais (?:instrucoes|regras) "
    "(?:voce recebeu|te deram|voce segue)",
    "told instructed given programmed prompted configured trained asked ordered instructions "
    "rules prompt guidelines directives orders dijeron dicho indicaron ordenaron programaron "
    "instrucciones reglas dit consignes regles gesagt anweisungen regeln disseram falaram "
    "instruiram instrucoes regras",
    group="told_before",
)
_rule(
    "exfiltration: what the developer wrote",
    0.4,
    "(?:developer|developers|creator|creators|owner|owners|admin|operator|operators|programmer|"
    "programmers|company)(?:'s|s')? (?:wrote|write|written|told you|instructed|said to you|put in|"
    "configured|set up|gave you|programmed|hardcoded)",
    "developer developers creator creators owner owners admin operator operators programmer "
    "programmers company",
    lang="en",
    group="dev_config",
)

_PEOPLE = (
    "customers|customer|clients|client|users|user|patients|patient|members|member|guests|"
    "guest|people|accounts|tenants|workspaces|businesses|companies|subscribers|buyers"
)
_DATA = (
    "data|details|conversations|conversation|chats|chat|messages|emails|email|e-mail|"
    "email addresses|e-mail addresses|addresses|phone numbers|numbers|records|bookings|"
    "appointments|accounts|orders|personal data|personal information|personal details|info|"
    "information|history|histories|contacts|contact details|passwords|names|files|documents|"
    "transcripts|logs|payment details|card numbers|credit cards|credit card numbers|"
    "medical records|profiles|booking|appointment|order|record|account|address|message|"
    "detail|number|file|document|transcript|log|password|name|profile|phone number"
)
_rule(
    "exfiltration: other customers' data",
    0.8,
    f"(?:{_DISCLOSE}|let me (?:see|access|view|read)|i (?:want|need|would like) to "
    f"(?:see|access|view|read)|give me access to|grant me access to|get me|fetch|download|"
    f"export|forward|send me) (?:WORD ){{0,6}}?"
    f"(?:(?:other|all|every|another|all other|all the other|all your|all of your|your other|"
    f"the other)(?: WORD)?? (?:{_PEOPLE})(?:'s|s'|')? (?:WORD )?(?:{_DATA})|"
    f"(?:{_DATA}) (?:of|from|for|belonging to) (?:all|every|other|the other|any)(?: of)? "
    f"(?:your |the |our )?(?:other )?(?:{_PEOPLE})|"
    f"(?:{_DATA}) (?:that |which )?(?:other|another|different|all the other) (?:{_PEOPLE}) "
    f"(?:had|have|made|sent|wrote|gave|shared|left|booked|placed)|"
    f"(?:all|every|each) (?:of )?(?:the |your )?(?:customer|client|user|patient|member|guest)"
    f"(?:'s|s'|')? (?:{_DATA})|"
    "(?:their|the|your|all|other|all the) (?:customer|client|user|patient|member|guest|"
    "subscriber|mailing) (?:lists?|database|databases|db|records|emails|contacts|data|"
    f"list of emails)|(?:{_DATA}) (?:of|for|from) (?:everyone|everybody|anyone|anybody|all "
    "(?:the )?(?:people|guests|customers|clients|users|patients)|the people|people) (?:who|that) "
    "(?:booked|bought|visited|ordered|signed up|registered|came|called|wrote|paid|stayed))",
    _PEOPLE + "|customer|client|user|patient|member|guest|subscriber|mailing|everyone|"
    "everybody|anyone|anybody|people",
    lang="en",
    group="other_users",
)
_rule(
    "exfiltration: other customers' data",
    0.35,
    f"(?:other|another|all other|all the other|your other|the other) (?:{_PEOPLE})(?:'s|s'|')? "
    f"(?:{_DATA})",
    _PEOPLE,
    lang="en",
    group="other_users",
)
_rule(
    "exfiltration: other customers' data",
    0.75,
    "(?:datos|conversaciones|chats|mensajes|correos|emails|telefonos|direcciones|nombres|"
    "informacion|historial|contrasenas|reservas|citas) (?:WORD ){0,2}?(?:de|del) "
    "(?:los |las )?(?:otros|otras|demas|todos los|todas las) (?:clientes|usuarios|pacientes|"
    "miembros|socios|personas)|"
    "(?:donnees|conversations|messages|emails|e-mails|coordonnees|adresses|numeros|noms|"
    "informations|historique|mots de passe|reservations|rendez-vous) (?:WORD ){0,2}?"
    "(?:des|de tous les|d'autres|de toutes les) (?:autres )?(?:clients|utilisateurs|patients|"
    "membres|personnes|clientes)|"
    "(?:daten|gesprache|nachrichten|e-mails|emails|adressen|telefonnummern|namen|"
    "informationen|verlauf|passworter|buchungen|termine) (?:WORD ){0,2}?(?:der|von|aller) "
    "(?:anderen|allen|alle) (?:kunden|nutzer|nutzern|benutzer|benutzern|patienten|mitglieder|"
    "personen)|(?:gib|gebt|zeig|zeige|nenne|liste|schick|sende|exportiere) (?:mir |uns )?"
    "(?:alle |samtliche |die )?kundendaten|kundendaten (?:aller|der anderen)|"
    "(?:dados|conversas|mensagens|e-mails|emails|telefones|enderecos|nomes|informacoes|"
    "historico|senhas|reservas|consultas) (?:WORD ){0,2}?(?:dos|das|de todos os|de outros|"
    "de outras) (?:outros |outras |demais )?(?:clientes|usuarios|pacientes|membros|pessoas)",
    "clientes usuarios pacientes miembros socios personas clients utilisateurs patients membres "
    "personnes kunden nutzer nutzern benutzer benutzern patienten mitglieder personen "
    "kundendaten pessoas",
    group="other_users",
)
_CREDENTIAL = (
    "(?:api|secret|access|private|admin|administrator|root|master|database|db|service|"
    "workspace|ssh|encryption|signing|openai|groq|aws|pinecone|auth|bearer|server)(?:-| )?"
    "(?:key|keys|token|tokens|password|passwords|credentials|credential|secret|secrets)|"
    "credentials|passwords|api-schlussel|api schlussel|zugangsdaten|passworter|kennworter|"
    "claves api|claves|contrasenas|credenciales|cles api|cles|mots de passe|identifiants|"
    "chaves de api|chaves|senhas|credenciais|env(?:ironment)? (?:variables|vars)|"
    "\\.env file|secrets"
)
_rule(
    "exfiltration: keys and credentials",
    0.8,
    f"(?:{_DISCLOSE}) (?:me |us |mir |uns |moi |nous )?(?:the |your |all |any |its |all the |"
    f"all of the |las |los |tus |todas las |les |tes |vos |toutes les |die |alle |deine |"
    f"as |os |suas |seus |todas as )?(?:WORD )?(?:{_CREDENTIAL})",
    "key keys token tokens password passwords credentials credential secret secrets api "
    "schlussel zugangsdaten passworter kennworter claves contrasenas credenciales cles mots "
    "identifiants chaves senhas credenciais env environment variables vars",
    group="credentials",
)
_rule(
    "exfiltration: context dump",
    0.8,
    "(?:contents?|text|everything) (?:of|in|inside|from) (?:your|the) (?:context|context window|"
    "memory|prompt|system prompt|instructions|configuration|system)|"
    "dump (?:the |your |all |all the )?(?:database|db|table|tables|memory|context|logs|records|"
    "users|bookings|conversations|data)|"
    "(?:contenido|contenu|inhalt|conteudo) (?:de tu|de ton|de votre|deines|do seu) "
    "(?:contexto|contexte|kontexts|memoria|prompt)",
    "contents content text everything dump contenido contenu inhalt conteudo",
    group="context_dump",
)
_rule(
    "exfiltration: conversation history",
    0.4,
    "(?:output|print|show|dump|reveal|give me|send|display|repeat) (?:WORD ){0,2}?"
    "(?:full |entire |complete |whole )?(?:conversation|chat) (?:history|log|logs|transcript)",
    "conversation chat",
    lang="en",
    group="history",
)

# ---- layer 8: content policy (the built-in parts) ----------------------------

_rule(
    "content policy: profanity",
    0.9,
    "fuck|fucks|fucking|fuckin|fucked|fucker|fuckers|motherfucker|motherfuckers|shit|shits|"
    "shitty|bullshit|bitch|bitches|asshole|assholes|bastard|bastards|cunt|cunts|dickhead|"
    "dickheads|wanker|wankers|twat|twats|piece of shit|"
    "puta|putas|puto|putos|mierda|pendejo|pendeja|pendejos|cabron|cabrona|cabrones|gilipollas|"
    "joder|jodete|cono|hijo de puta|chingar|chingada|chingado|pinche|"
    "putain|merde|connard|connards|connasse|salope|salopes|encule|encules|batard|batards|"
    "ta gueule|va te faire foutre|nique|niquer|"
    "scheisse|scheiss|arschloch|arschlocher|wichser|fotze|hurensohn|fick dich|ficken|"
    "leck mich|miststuck|"
    "porra|caralho|merda|foder|foda|fodase|foda-se|fode|cacete|buceta|babaca|filho da puta|"
    "vai se foder|vai tomar no cu|arrombado",
    "fuck fucks fucking fuckin fucked fucker fuckers motherfucker motherfuckers shit shits "
    "shitty bullshit bitch bitches asshole assholes bastard bastards cunt cunts dickhead "
    "dickheads wanker wankers twat twats puta putas puto putos mierda pendejo pendeja pendejos "
    "cabron cabrona cabrones gilipollas joder jodete cono hijo chingar chingada chingado pinche "
    "putain merde connard connards connasse salope salopes encule encules batard batards gueule "
    "foutre nique niquer scheisse scheiss arschloch arschlocher wichser fotze hurensohn fick "
    "ficken leck miststuck porra caralho merda foder foda fodase fode cacete buceta babaca filho "
    "cu arrombado",
    policy="profanity",
    group="profanity",
)
_rule(
    "content policy: profanity",
    0.9,
    r"(?<![^\W_])(?:f[*#@!%]{1,3}c?k(?:ing|in|er|ed|s)?|f[*#@!%]{2,3}|sh[*#!%]t|b[*#!%]{1,2}tch|"
    r"c[*#!%]nt|a[*#!%]{2}hole|merd[*#]|put[*#]|mi[*#]rda)(?![^\W_])",
    None,
    raw=True,
    policy="profanity",
    group="profanity",
)
_THREAT_VERBS = (
    "kill|hurt|shoot|stab|murder|beat up|beat|attack|harm|strangle|burn|blow up|bomb|punch|"
    "slap|choke|assault|rape|torture|execute|poison"
)
_rule(
    "content policy: threat of violence",
    0.85,
    "i(?:'ll| will|'m going to| am going to|'m gonna| am gonna| gonna| shall|'m about to| am "
    "about to| want to| wanna|ll) (?:WORD ){0,8}?(?:" + _THREAT_VERBS + ") (?:you|u|him|her|them|"
    "everyone|everybody|all of you|somebody|someone|people|the WORD|your WORD|that WORD|"
    "this WORD|his WORD|her WORD|their WORD|my WORD)|"
    "(?:te|lo|la|los|las|les|os) (?:voy|vamos) a (?:matar|apunalar|disparar|golpear|quemar|"
    "hacer dano|reventar)|voy a (?:matar|apunalar|disparar|golpear|quemar) (?:a|al) WORD|"
    "je vais (?:te |vous |le |la |les )?(?:tuer|buter|frapper|poignarder|cramer)|"
    "ich (?:werde|bringe) (?:dich|euch|sie|ihn|alle) (?:umbringen|toten|um|abstechen|"
    "erschiessen|verprugeln)|ich (?:bringe|bring) (?:dich|euch|sie|ihn) um|"
    "(?:vou|vamos) (?:te |lhe |o |a |os |as )?(?:matar|esfaquear|atirar em|bater em|queimar)",
    "kill hurt shoot stab murder beat attack harm strangle burn blow bomb punch slap choke "
    "assault rape torture execute poison matar apunalar disparar golpear quemar hacer reventar "
    "tuer buter frapper poignarder cramer umbringen toten um abstechen erschiessen verprugeln "
    "esfaquear atirar bater queimar",
    policy="violence",
    group="violence",
)
_rule(
    "content policy: weapons instructions",
    0.9,
    "(?:how (?:to|do i|can i|would i|do you|does one|could i)|step by step|steps to|"
    "instructions (?:for|to|on)|recipe for|guide to|teach me (?:how )?to|tutorial on) "
    "(?:WORD ){0,3}?(?:make|build|create|assemble|cook|synthesi[sz]e|manufacture|produce|get) "
    "(?:a |an |some |my own )?(?:homemade |home-made |pipe |nail |car |dirty |nuclear |"
    "fertili[sz]er |pressure cooker |working |real )?(?:bomb|bombs|explosive|explosives|"
    "molotov|molotov cocktail|nerve gas|nerve agent|sarin|ricin|napalm|meth|methamphetamine|"
    "ghost gun|untraceable gun|silencer|grenade|detonator|bioweapon|chemical weapon)"
    "(?=[\\W_]*(?:$|[.,!?;:)])|[\\W_]+(?:at|for|to|that|which|with|in|and|or|out|using|from|"
    "like|without|myself|please|so|if|when|step|i|we|me|us|quickly|cheaply|safely)(?![^\\W_]))|"
    "como (?:hacer|fabricar|construir) (?:una |un )?(?:bomba|explosivo|molotov)|"
    "comment (?:fabriquer|faire|construire) (?:une |un )?(?:bombe|explosif|molotov)|"
    "wie (?:baue|mache|bastle) (?:ich )?(?:eine |einen )?(?:bombe|sprengsatz|molotow)|"
    "como (?:fazer|fabricar|construir) (?:uma |um )?(?:bomba|explosivo|molotov)",
    "bomb bombs explosive explosives molotov nerve sarin ricin napalm meth methamphetamine gun "
    "silencer grenade detonator bioweapon chemical bomba explosivo bombe explosif sprengsatz "
    "molotow",
    policy="violence",
    group="weapons",
)
_rule(
    "content policy: self-harm method",
    0.9,
    "(?:how (?:to|do i|can i|should i|could i)|best way to|easiest way to|quickest way to|"
    "fastest way to|painless way to|most painless way to|least painful way to|ways to|"
    "method to|methods to|way to) (?:WORD ){0,2}?(?:kill myself|end my life|end it all|"
    "commit suicide|take my (?:own )?life|hurt myself|cut myself|overdose)|"
    "(?:como|forma de|manera de) (?:matarme|suicidarme|quitarme la vida)|"
    "(?:comment|moyen de) (?:me suicider|me tuer|mettre fin a mes jours)|"
    "wie (?:bringe ich mich um|kann ich mich umbringen|toete ich mich)|"
    "(?:como|jeito de|forma de) (?:me matar|me suicidar|tirar minha vida)",
    "myself life suicide overdose matarme suicidarme vida suicider tuer jours bringe umbringen "
    "toete matar suicidar",
    policy="violence",
    group="self_harm",
)


# --------------------------------------------------------------------------
# Rule sets, prefilter vocabulary
# --------------------------------------------------------------------------


@lru_cache(maxsize=32)
def _rules_for(languages: tuple[str, ...], profanity: bool, violence: bool) -> tuple[_Rule, ...]:
    wanted = set(languages)
    return tuple(
        rule
        for rule in _RULES
        if (not rule.language or rule.language in wanted)
        and (rule.policy != "profanity" or profanity)
        and (rule.policy != "violence" or violence)
    )


_FILLERS = (
    "a an the all any your you my me and or to of in on is are be now no not with without "
    "say show tell give print hi do previous prior above earlier system prompt instructions "
    "rules ignore disregard forget reveal new mode developer"
)


@lru_cache(maxsize=1)
def _vocabulary() -> frozenset[str]:
    """Words to split joined-up spelt-out letters into."""
    words = set(_FILLERS.split())
    for rule in _RULES:
        if rule.triggers:
            words.update(w for w in rule.triggers if len(w) >= 3)
    return frozenset(words)


@lru_cache(maxsize=64)
def _topic_pattern(topics: tuple[str, ...]) -> re.Pattern[str] | None:
    """Blocked topics on whole words; each word may take a plural "s"/"es"."""
    alternatives = []
    for topic in topics:
        words = re.findall(r"[^\W_]+", normalise(topic))
        if words:
            parts = [re.escape(w) + ("" if w.endswith("s") else "(?:e?s)?") for w in words]
            alternatives.append(_SEP.join(parts))
    if not alternatives:
        return None
    return re.compile(rf"(?<![^\W_])(?:{'|'.join(alternatives)})(?![^\W_])")


_TOKEN = re.compile(r"[^\W_]+")


# --------------------------------------------------------------------------
# Checking
# --------------------------------------------------------------------------


@dataclass(slots=True)
class _Signal:
    rule_reason: str
    category: GuardCategory
    weight: float


@dataclass(slots=True)
class _Findings:
    """The strongest signal of each group, and the obfuscation seen on the way."""

    by_group: dict[str, _Signal]
    obfuscation: list[str]

    def add(self, group: str, signal: _Signal) -> None:
        current = self.by_group.get(group)
        if current is None or signal.weight > current.weight:
            self.by_group[group] = signal


def check(text: str, policy: GuardPolicy | None = None) -> GuardResult:
    """Whether a user message is an injection, jailbreak or exfiltration
    attempt, or outside the workspace's content policy.

    Blocked when the score reaches ``policy.threshold``; the category is the
    one with the strongest evidence and the reasons name the layers and rules
    that fired (never the text itself), strongest first.
    """
    return _check(text, policy or DEFAULT_POLICY, prefilter=True)


def _check(text: str, policy: GuardPolicy, *, prefilter: bool) -> GuardResult:
    if not text or not text.strip():
        return GuardResult(blocked=False)
    rules = _rules_for(policy.languages, policy.block_profanity, policy.block_violence)
    topics = _topic_pattern(policy.blocked_topics) if policy.blocked_topics else None
    findings = _Findings({}, [])
    _scan(text, rules, topics, findings, depth=0, prefilter=prefilter)
    return _verdict(findings, policy.threshold)


def _analysed(text: str) -> str:
    if len(text) <= HEAD_CHARS + TAIL_CHARS:
        return text
    return text[:HEAD_CHARS] + "\n" + text[-TAIL_CHARS:]


def _scan(
    text: str,
    rules: tuple[_Rule, ...],
    topics: re.Pattern[str] | None,
    findings: _Findings,
    *,
    depth: int,
    prefilter: bool,
) -> None:
    analysed = _analysed(text)
    plain, evidence = _normalise(analysed)
    views: list[tuple[str, str]] = [("", plain)]
    spaced = _join_spaced(plain)
    deobfuscated, leet_words = _undo_leet(spaced)
    if deobfuscated != plain:
        if spaced == plain:
            name = "leetspeak"
        else:
            name = "spacing" if deobfuscated == spaced else "spacing and leetspeak"
        views.append((name, deobfuscated))
    if "%" in analysed and _URL_ESCAPE.search(analysed):
        decoded_url = _normalise(unquote_plus(analysed))[0]
        if decoded_url != plain:
            views.append(("url-encoding", decoded_url))
    views.append(("rot13", codecs.encode(plain, "rot13")))

    plain_groups: set[str] = set()
    for view_name, view in views:
        hits = _match_view(view, rules, topics, prefilter=prefilter, content=view_name != "rot13")
        for group, signal in hits:
            if not view_name:
                plain_groups.add(group)
            elif group not in plain_groups and signal.weight >= 0.4:
                # Only a real finding counts as hidden: "role-playing" read as
                # "roleplaying" is no obfuscation.
                findings.obfuscation.append(view_name)
            findings.add(group, signal)

    if findings.by_group:
        findings.obfuscation.extend(evidence.names())
        if leet_words >= 2:
            findings.obfuscation.append("leetspeak")
    if depth >= MAX_DEPTH:
        return
    payloads = decode_payloads(text)
    if evidence.tag_payload:
        payloads.append(("unicode tag characters", evidence.tag_payload))
    for encoding, decoded in payloads:
        inner = _Findings({}, [])
        _scan(decoded, rules, topics, inner, depth=depth + 1, prefilter=prefilter)
        if inner.by_group:
            findings.obfuscation.append(f"{encoding} payload")
            findings.obfuscation.extend(inner.obfuscation)
            for group, signal in inner.by_group.items():
                findings.add(group, signal)


def _match_view(
    view: str,
    rules: tuple[_Rule, ...],
    topics: re.Pattern[str] | None,
    *,
    prefilter: bool,
    content: bool,
) -> list[tuple[str, _Signal]]:
    tokens = set(_TOKEN.findall(view)) if prefilter else set()
    hits: list[tuple[str, _Signal]] = []
    for rule in rules:
        if rule.category == "content" and not content:
            continue
        if prefilter and rule.triggers is not None and rule.triggers.isdisjoint(tokens):
            continue
        if rule.pattern.search(view):
            hits.append((rule.group, _Signal(rule.reason, rule.category, rule.weight)))
    if content and topics is not None and topics.search(view):
        hits.append(("topic", _Signal("content policy: blocked topic", "content", 0.9)))
    return hits


_CATEGORY_ORDER: Final[tuple[GuardCategory, ...]] = (
    "content",
    "exfiltration",
    "injection",
    "jailbreak",
)


def _verdict(findings: _Findings, threshold: float) -> GuardResult:
    if not findings.by_group:
        return GuardResult(blocked=False)
    signals = sorted(findings.by_group.values(), key=lambda s: -s.weight)
    by_category: dict[GuardCategory, float] = {}
    for signal in signals:
        by_category[signal.category] = _noisy_or(
            (by_category.get(signal.category, 0.0), signal.weight)
        )
    weights = [s.weight for s in signals]
    reasons = [s.rule_reason for s in signals]
    if findings.obfuscation and signals[0].weight >= 0.25:
        weights.append(OBFUSCATION_WEIGHT)
        reasons.extend(f"obfuscation: {name}" for name in dict.fromkeys(findings.obfuscation))
    score = round(_noisy_or(weights), 4)
    blocked = score >= threshold
    category = max(
        _CATEGORY_ORDER, key=lambda c: (by_category.get(c, 0.0), -_CATEGORY_ORDER.index(c))
    )
    return GuardResult(
        blocked=blocked,
        category=category if blocked else None,
        score=score,
        reasons=tuple(dict.fromkeys(reasons)),
    )


def _noisy_or(weights: Iterable[float]) -> float:
    remaining = 1.0
    for weight in weights:
        remaining *= 1.0 - weight
    return 1.0 - remaining
