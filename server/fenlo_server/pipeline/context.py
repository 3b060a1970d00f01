"""MessageContext: one turn's state, read and written in place by every step."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from fenlo_server.events.types import Event
from fenlo_server.llm.types import ChatMessage, Passage, Usage
from fenlo_server.pipeline.analysis.types import (
    Entity,
    GuardResult,
    HandoffDecision,
    Intent,
    LeadState,
    LeadUpdate,
    PiiSpan,
    Quality,
    Sentiment,
)

if TYPE_CHECKING:
    from fenlo_server.knowledge.types import SearchHit, Vector
    from fenlo_server.pipeline.services import TurnServices

Outcome = Literal["ran", "skipped", "failed"]


@dataclass(frozen=True, slots=True)
class StepTiming:
    step: str
    outcome: Outcome
    seconds: float
    detail: str = ""


@dataclass(slots=True)
class ConversationMemory:
    """What the chat session remembers of its conversation between turns, so a
    turn needs no database read for it (LoadContext fills it on the first turn)."""

    loaded: bool = False
    state: str = "OPEN"
    history: list[ChatMessage] = field(default_factory=list)
    sentiments: list[float] = field(default_factory=list)  # per user turn, oldest first
    qualities: list[float] = field(default_factory=list)  # per answer, oldest first
    last_sentiment: str = ""
    lead: LeadState = field(default_factory=LeadState)
    lead_id: str = ""  # the stored lead's id, once there is one
    turns: int = 0


@dataclass(eq=False)
class MessageContext:
    """One turn. The engine creates it; steps read and write it in place."""

    workspace_id: str
    conversation_id: str
    turn_id: str
    text: str
    services: TurnServices
    memory: ConversationMemory
    settings: dict[str, Any] = field(default_factory=dict)  # the workspace's settings
    client_message_id: str = ""
    started: float = field(default_factory=time.perf_counter)

    # Before generation
    language: str = "en"
    history: list[ChatMessage] = field(default_factory=list)  # the window given to the LLM
    handed_off: bool = False
    guard: GuardResult | None = None
    pii: list[PiiSpan] = field(default_factory=list)
    llm_text: str = ""  # the user's text as external LLMs see it (PII masked)
    stored_text: str = ""  # the user's text as stored (masked only if the workspace asks)
    query_vectors: dict[str, Vector] = field(default_factory=dict)  # by model
    vectors_text: str = ""  # the text query_vectors embed
    hits: list[SearchHit] = field(default_factory=list)
    passages: list[Passage] = field(default_factory=list)

    # A step that ends generation early sets a fixed reply (or silence).
    reply: str | None = None
    reply_source: str = ""  # "guard", "curated", ... (reported as the provider)
    silent: bool = False  # no assistant answer at all (handed off to a human)

    # Generation
    answer_parts: list[str] = field(default_factory=list)
    delivered: int | None = None  # code points the user got, after an interrupt
    interrupted: bool = False
    providers: list[str] = field(default_factory=list)
    failovers: int = 0  # times the LLM router moved on to another provider
    first_token_seconds: float | None = None  # from ``started`` to the LLM's first text
    usage: Usage = field(default_factory=Usage)
    cited: list[int] = field(default_factory=list)  # passage markers the answer cites

    # After generation
    sentiment: Sentiment | None = None
    sentiment_trend: float | None = None
    intent: Intent | None = None
    entities: list[Entity] = field(default_factory=list)
    quality: Quality | None = None
    lead: LeadUpdate | None = None
    handoff: HandoffDecision | None = None
    contact: dict[str, str] = field(default_factory=dict)  # captured contact details

    # Bookkeeping
    post_done: bool = False
    user_message_id: str = ""
    assistant_message_id: str = ""
    events: list[Event] = field(default_factory=list)
    timings: list[StepTiming] = field(default_factory=list)
    on_answer_stored: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.llm_text = self.llm_text or self.text
        self.stored_text = self.stored_text or self.text

    @property
    def answer(self) -> str:
        """The answer as the user got it: cut at ``delivered`` after an interrupt."""
        text = "".join(self.answer_parts)
        return text[: self.delivered] if self.delivered is not None else text

    @property
    def ended_early(self) -> bool:
        return self.reply is not None or self.silent
