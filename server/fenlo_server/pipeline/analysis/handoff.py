"""HandoffDecision: when a person should take the conversation over from the assistant.

Reasons, first match wins:

1. ``user_request``: the user asks for a human (``wants_human``), in English,
   Spanish, French, German or Portuguese;
2. ``escalation``: the intent analyser saw escalation with confidence >= 0.6;
3. ``guard_block``: the guard blocked the message (only if the workspace wants it);
4. ``negative_sentiment``: the last ``negative_streak`` turns were all <= -0.2;
5. ``low_quality``: the last ``low_quality_streak`` answers all scored below
   ``low_quality_threshold``.

A decision comes with a short summary for the agent who picks the conversation
up: who (contact details when known), what they want (their first question and
their latest message, truncated) and why it was handed over. It is plain
templating, deterministic, with no model. Once handed off, the conversation
stays HANDED_OFF and the assistant keeps quiet unless the workspace sets
``answer_when_handed_off`` (see ``assistant_may_answer``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from types import MappingProxyType
from typing import Any

from fenlo_server.pipeline.analysis.types import HandoffDecision, HandoffReason, Intent
from fenlo_server.text.words import fold

ESCALATION_CONFIDENCE = 0.6
NEGATIVE_SENTIMENT = -0.2  # a turn at or below this counts toward the negative streak
QUOTE_CHARS = 140  # a quoted message is cut at a word boundary before this
CONTACT_ORDER = ("name", "company", "email", "phone")


@dataclass(frozen=True)
class HandoffPolicy:
    """A workspace's handoff rules."""

    negative_streak: int = 3  # this many negative turns in a row hand off (>= 1)
    low_quality_threshold: float = 0.35  # an answer below this is poor (0..1)
    low_quality_streak: int = 2  # this many poor answers in a row hand off (>= 1)
    on_guard_block: bool = False  # hand off when the guard blocks a message
    answer_when_handed_off: bool = False  # the assistant still answers once handed off

    def __post_init__(self) -> None:
        for name in ("negative_streak", "low_quality_streak"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a whole number of at least 1, not {value!r}")
        threshold = self.low_quality_threshold
        if isinstance(threshold, bool) or not isinstance(threshold, int | float):
            raise ValueError(f"low_quality_threshold must be a number, not {threshold!r}")
        if not 0 <= threshold <= 1:
            raise ValueError("low_quality_threshold must be between 0 and 1")
        object.__setattr__(self, "low_quality_threshold", float(threshold))
        for name in ("on_guard_block", "answer_when_handed_off"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, not {getattr(self, name)!r}")

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> HandoffPolicy:
        """From a workspace's step parameters; keys left out keep their defaults."""
        if not isinstance(params, Mapping):
            raise ValueError("handoff parameters must be a mapping")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(params) - known, key=str)
        if unknown:
            raise ValueError(f"unknown handoff parameters: {unknown}")
        return cls(**params)


DEFAULT_POLICY = HandoffPolicy()


def assistant_may_answer(policy: HandoffPolicy, *, handed_off: bool) -> bool:
    """Whether the assistant answers a turn: always, or once handed off only if allowed."""
    return not handed_off or policy.answer_when_handed_off


def _any(*patterns: str) -> re.Pattern[str]:
    return re.compile(r"\b(?:" + "|".join(patterns) + r")\b")


# Matched against folded text (lower case, no accents, ’ as '). A request needs a
# verb of contact and a person who works there; "a person who ...", "my agent" or
# "a travel agent" are descriptions, not requests.
_EN_PERSON = (
    r"(?:a |an |the |some |your |one of your |a member of )?(?:real |live |actual |human |"
    r"customer service |customer support |support |sales )?"
    r"(?:person|human|human being|agent|representative|rep|operator|someone|somebody"
    r"|anyone|anybody|staff|staff member|employee|advisor|adviser|consultant|manager|people"
    r"|team member|support team|customer service|customer support)"
)
_REQUEST = _any(
    # en
    r"(?:talk|speak|chat|connect|transfer|put|get|reach|forward|escalate) (?:me |this )?"
    r"(?:to|with|through to|over to|in touch with) " + _EN_PERSON,
    r"(?<!the )(?<!this )(?<!that )(?:real|live) (?:person|human|agent)|live chat",
    r"human (?:agent|operator|support)",
    # "I need a human" ends there; "a human resources tool" or "a human to walk my dog" go on.
    r"(?:want|need|like|give me|get me|request) (?:a |an )?(?:human|real person|operator"
    r"|representative)(?=\s*(?:[.!?,;]|$|please|now|instead|here|asap|to (?:talk|speak|help)))",
    r"(?:is there|are there|can i get) (?:a |an )?(?:human|real person|person|someone)"
    r" (?:i can|to) (?:talk|speak|chat)",
    # es
    r"(?:hablar|comunicarme|contactar|chatear|pasame|paseme|ponme|ponerme en contacto)"
    r" (?:con )?(?:una |un |alguna |algun |el |la )?(?:persona|humano|agente|asesor|asesora"
    r"|operador|operadora|representante|empleado|empleada|encargado|encargada|alguien)",
    r"persona real|(?:un |una )?(?:humano|persona) de verdad|atencion humana",
    r"quiero (?:un |una )?(?:humano|agente humano|operador)",
    # fr
    r"(?:parler|discuter|echanger|etre mis en relation|me mettre en relation|mettez-moi en"
    r" relation|me passer|passez-moi) (?:a |avec )?(?:(?:un |une |un vrai |une vraie |votre "
    r"|le |la |l')(?:conseiller|conseillere|humain|personne|agent|operateur|operatrice"
    r"|representant|employe|employee|responsable)|quelqu'un|au (?:service client\w*|support"
    r"|conseiller))",
    r"vraie personne|personne reelle|(?:un|une) (?:vrai|vraie) (?:humain|personne|conseiller)",
    # de
    r"(?:mit|an) (?:einem |einer |einen |jemandem|dem |der )?(?:echten |realen |menschlichen )?"
    r"(?:mitarbeiter|mitarbeiterin|menschen|mensch|person|berater|beraterin|agenten|kundenberater"
    r"|kundenberaterin|ansprechpartner|ansprechpartnerin|kundendienst|support|jemandem)"
    r"(?: \w+){0,3} (?:sprechen|reden|verbinden|verbunden|telefonieren|chatten|weiterleiten)",
    r"(?:sprechen|reden|verbinden sie mich|verbinde mich|weiterleiten) (?:bitte )?(?:mit|zu|an)"
    r" (?:einem |einer |einen )?(?:echten |realen )?(?:mitarbeiter|mitarbeiterin|menschen"
    r"|berater|beraterin|person|kundenberater|kundenberaterin|ansprechpartner)",
    r"echte(?:n|r)? (?:person|menschen|mensch|mitarbeiter)",
    # pt
    r"(?:falar|conversar|me passar|passe-me|me transferir|transferir) (?:com |para )?(?:um |uma "
    r"|algum |alguma |o |a )?(?:atendente|humano|pessoa|agente|consultor|consultora|operador"
    r"|operadora|representante|funcionario|funcionaria|alguem)",
    r"pessoa real|atendente humano|atendimento humano",
)
# The whole message is just a request word: "Human!", "agent please", "operador".
_BARE = re.compile(
    r"^\W*(?:please |por favor |s'il vous plait )?(?:a )?(?:human|agent|operator|representative"
    r"|real person|person|humano|operador|operadora|agente|persona|humain|conseiller|mensch"
    r"|mitarbeiter|atendente)(?: please| por favor| s'il vous plait| bitte)?\W*$"
)
_NEGATED = _any(
    r"(?:don't|do not|dont|never) (?:want|need|wish)|no need|rather not",
    r"(?:no|nao) (?:quiero|quero|necesito|preciso)",
    r"je ne (?:veux|souhaite) pas",
    r"(?:will|mochte|muss) (?:\w+ )?nicht",
    r"kein(?:en)? (?:mitarbeiter|menschen)",
)
_NEGATION_WINDOW = 30  # characters before a request (and the request) that may negate it
_DESCRIPTION = re.compile(r"^\s*(?:who|that|which|whose)\b")  # "a person who ..."


def wants_human(text: str) -> bool:
    """Whether the message asks to talk to a person rather than the assistant."""
    folded = fold(text.replace("\u2019", "'"))
    if _BARE.match(folded):
        return True
    for match in _REQUEST.finditer(folded):
        before = folded[max(0, match.start() - _NEGATION_WINDOW) : match.start()]
        clause = re.split(r"[.!?;,]", before)[-1]
        if _NEGATED.search(clause + match.group(0)):
            continue
        if match.group(0).startswith(("real", "live", "human")) and _DESCRIPTION.match(
            folded[match.end() :]
        ):
            continue
        return True
    return False


def _quote(text: str) -> str:
    flat = " ".join(text.split())
    if len(flat) <= QUOTE_CHARS:
        return flat
    cut = flat[:QUOTE_CHARS].rsplit(" ", 1)[0] or flat[:QUOTE_CHARS]
    return cut.rstrip(" ,;:") + "…"


def _who(contact: Mapping[str, str]) -> str:
    known = {k: " ".join(v.split()) for k, v in contact.items() if isinstance(v, str) and v.strip()}
    if not known:
        return "Customer not identified."
    name = known.get("name")
    details = [known[k] for k in CONTACT_ORDER if k in known and k != "name"]
    details += [f"{k}: {v}" for k, v in sorted(known.items()) if k not in CONTACT_ORDER]
    if name:
        return f"Customer: {name}" + (f" ({', '.join(details)})." if details else ".")
    return f"Customer: {', '.join(details)}."


def _what(text: str, history: Sequence[tuple[str, str]]) -> str:
    asked = [t for role, t in history if role == "user" and t.strip()]
    first = next((t for t in asked if "?" in t), asked[0] if asked else "")
    latest = text if text.strip() else (asked[-1] if asked else "")
    if not first or " ".join(first.split()) == " ".join(latest.split()):
        return f'They wrote: "{_quote(latest)}".' if latest.strip() else "No message yet."
    if not latest.strip():
        return f'They asked: "{_quote(first)}".'
    return f'They asked: "{_quote(first)}"; latest message: "{_quote(latest)}".'


def _why(reason: HandoffReason, policy: HandoffPolicy, intent: Intent | None) -> str:
    if reason == "user_request":
        return "Handed off because they asked for a person."
    if reason == "escalation":
        confidence = intent.confidence if intent else 0.0
        return f"Handed off because they want to escalate (confidence {confidence:.2f})."
    if reason == "guard_block":
        return "Handed off because the guard blocked their message."
    if reason == "negative_sentiment":
        return f"Handed off because their last {policy.negative_streak} messages were negative."
    return (
        f"Handed off because the last {policy.low_quality_streak} answers scored below "
        f"{policy.low_quality_threshold:.2f}."
    )


def _streak(values: Sequence[float], length: int, hit: Callable[[float], bool]) -> bool:
    return len(values) >= length and all(hit(v) for v in values[-length:])


def decide_handoff(
    text: str,
    *,
    intent: Intent | None,
    sentiments: Sequence[float],
    qualities: Sequence[float],
    guard_blocked: bool,
    history: Sequence[tuple[str, str]],
    contact: Mapping[str, str] = MappingProxyType({}),
    policy: HandoffPolicy = DEFAULT_POLICY,
) -> HandoffDecision | None:
    """Whether to hand this conversation to a person now, and why; None to carry on.

    ``sentiments`` and ``qualities`` are the recent per-turn sentiment scores (-1..1)
    and answer quality scores (0..1), newest last; ``history`` is the recent
    messages as (role, text), oldest first, for the summary.
    """
    reason: HandoffReason | None = None
    if wants_human(text):
        reason = "user_request"
    elif (
        intent is not None
        and intent.kind == "escalation"
        and intent.confidence >= ESCALATION_CONFIDENCE
    ):
        reason = "escalation"
    elif guard_blocked and policy.on_guard_block:
        reason = "guard_block"
    elif _streak(sentiments, policy.negative_streak, lambda v: v <= NEGATIVE_SENTIMENT):
        reason = "negative_sentiment"
    elif _streak(qualities, policy.low_quality_streak, lambda v: v < policy.low_quality_threshold):
        reason = "low_quality"
    if reason is None:
        return None
    summary = " ".join((_who(contact), _what(text, history), _why(reason, policy, intent)))
    return HandoffDecision(reason, summary)
