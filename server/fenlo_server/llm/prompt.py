"""Builds the messages an LLM gets for a grounded answer."""

from __future__ import annotations

import re
from collections.abc import Sequence

from fenlo_server.llm.types import ChatMessage, Passage

GROUNDING = (
    "Answer from the numbered passages below when they hold the answer, and cite each "
    "passage you use like [1]. If they do not hold the answer, say so plainly instead of "
    "guessing, and offer to connect the user with a person."
)
_MARKER = re.compile(r"\[(\d{1,3})\]")


def grounded_messages(
    system_prompt: str,
    passages: Sequence[Passage],
    history: Sequence[ChatMessage],
    question: str,
) -> tuple[ChatMessage, ...]:
    """System prompt (with the passages, if any), the history, then the question."""
    system = system_prompt.strip()
    if passages:
        listed = "\n\n".join(
            f"[{p.marker}] {' > '.join(x for x in (p.title, p.source) if x)}\n{p.text}".strip()
            for p in passages
        )
        system = f"{system}\n\n{GROUNDING}\n\n{listed}".strip()
    messages = [ChatMessage("system", system)] if system else []
    messages.extend(history)
    messages.append(ChatMessage("user", question))
    return tuple(messages)


def cited_markers(answer: str, passages: Sequence[Passage]) -> list[int]:
    """The passage markers an answer cites, in order of first citation."""
    known = {p.marker for p in passages}
    seen: list[int] = []
    for match in _MARKER.finditer(answer):
        marker = int(match.group(1))
        if marker in known and marker not in seen:
            seen.append(marker)
    return seen
