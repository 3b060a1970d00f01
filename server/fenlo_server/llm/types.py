"""The provider protocol and the values that cross it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Literal, Protocol

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: Role
    content: str


@dataclass(frozen=True, slots=True)
class Passage:
    """A knowledge-base passage given to the model, cited as ``[marker]``."""

    marker: int
    text: str
    title: str = ""
    source: str = ""
    score: float = 0.0  # the retrieval score, 0..1 where known


@dataclass(frozen=True, slots=True)
class LlmRequest:
    """What to answer: the conversation so far and the passages to ground it in.

    ``assistant_prefix`` is set when a provider must continue an answer that
    another provider began: the text already delivered to the caller.
    """

    messages: tuple[ChatMessage, ...]
    passages: tuple[Passage, ...] = ()
    temperature: float | None = None
    max_tokens: int | None = None
    assistant_prefix: str = ""

    def continuing(self, prefix: str) -> LlmRequest:
        return replace(self, assistant_prefix=prefix)

    @property
    def question(self) -> str:
        """The last user message."""
        for message in reversed(self.messages):
            if message.role == "user":
                return message.content
        return ""


@dataclass(slots=True)
class Usage:
    """Token counts of one answer (summed over the providers that contributed)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    estimated: bool = False

    def add(self, other: Usage) -> None:
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.estimated = self.estimated or other.estimated


@dataclass(slots=True)
class StreamOutcome:
    """What a provider's stream reports besides its text, filled as it runs."""

    finished: bool = False  # the provider said the answer is complete
    finish_reason: str = ""
    usage: Usage | None = None
    cited: list[int] = field(default_factory=list)  # passage markers the answer used


class Provider(Protocol):
    """Streams one answer. Closing the iterator closes the upstream request at once."""

    name: str
    default_model: str

    def stream(
        self, request: LlmRequest, model: str | None, outcome: StreamOutcome
    ) -> AsyncIterator[str]: ...
