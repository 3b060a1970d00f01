"""What the analysers return. Plain dataclasses; the API layer maps them to proto."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

GuardCategory = Literal["injection", "jailbreak", "content", "exfiltration", "turn_limit"]
SentimentLabel = Literal["positive", "neutral", "negative"]
IntentKind = Literal["faq", "booking", "sales", "support", "escalation", "other"]
EntityKind = Literal["date_time", "money", "email", "phone", "product", "person"]
PiiKind = Literal["email", "phone", "card", "iban"]
HandoffReason = Literal[
    "user_request", "escalation", "negative_sentiment", "low_quality", "guard_block"
]


@dataclass(frozen=True, slots=True)
class GuardResult:
    blocked: bool
    category: GuardCategory | None = None
    score: float = 0.0  # 0..1: how sure the guard is that the message is hostile
    reasons: tuple[str, ...] = ()  # the layers that fired, e.g. "override phrase: ignore previous"


@dataclass(frozen=True, slots=True)
class PiiSpan:
    kind: PiiKind
    start: int  # code points
    end: int  # exclusive
    text: str  # as written
    value: str  # normalised: lower-cased email, E.164-ish phone, digits of a card, IBAN


@dataclass(frozen=True, slots=True)
class Entity:
    kind: EntityKind
    text: str
    value: str  # normal form: ISO 8601 date-time, "5000 USD", E.164 phone, email, product name
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class Sentiment:
    label: SentimentLabel
    score: float  # -1..1
    reasons: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Intent:
    kind: IntentKind
    confidence: float  # 0..1
    reasons: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class QualityComponent:
    name: str
    score: float  # 0..1
    weight: float


@dataclass(frozen=True, slots=True)
class Quality:
    score: float  # 0..1
    components: tuple[QualityComponent, ...] = ()
    reasons: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class LeadSignal:
    kind: str  # pricing, timeline, budget, contact, decision_maker, competitor, negative
    points: float  # negative when it lowers the score
    evidence: str


@dataclass(frozen=True, slots=True)
class LeadState:
    """A conversation's lead so far (what the lead row stores)."""

    score: float = 0.0  # 0..100
    turns: int = 0
    signals: tuple[LeadSignal, ...] = ()
    contact: dict[str, str] = field(default_factory=dict)  # email, phone, name, company


@dataclass(frozen=True, slots=True)
class LeadUpdate:
    state: LeadState  # the new cumulative state
    change: float  # score now minus score before
    signals: tuple[LeadSignal, ...]  # found in this turn
    crossed_threshold: bool  # rose to or above the workspace's threshold in this turn


@dataclass(frozen=True, slots=True)
class HandoffDecision:
    reason: HandoffReason
    summary: str  # for the human agent: who, what they want, what happened
