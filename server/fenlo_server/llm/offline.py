"""The offline provider: grounded, extractive answers from the passages it is given.

No key, no network. It picks the sentences of the passages that share the most
(rare) words with the question, keeps them in document order, cites each
passage it used as ``[marker]``, and streams the answer word by word at a
configurable rate. When no passage answers the question it says so plainly
instead of guessing. It is the embedded default and every router's last resort.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from fenlo_server.llm.types import LlmRequest, Passage, StreamOutcome, Usage
from fenlo_server.text.words import content_words

NO_ANSWER = (
    "I'm sorry, I couldn't find the answer to that in the information I have. "
    "Could you rephrase the question, or would you like me to connect you with a person?"
)
NO_PASSAGES = (
    "I'm sorry, I don't have any information to answer that yet. "
    "Would you like me to connect you with a person?"
)
MIN_COVERAGE = 0.34  # share of the question's content words a sentence must contain
TRUSTED_RETRIEVAL_SCORE = 0.6  # a passage this relevant answers even without shared words
MAX_SENTENCES = 3

_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[^\s])|\n{2,}|\n(?=\s*[-*•]|\s*\d+[.)])")
_TOKEN = re.compile(r"\s*\S+\s*|\s+")  # a word with the space around it: they join losslessly


@dataclass(frozen=True, slots=True)
class _Sentence:
    passage: Passage
    position: int
    text: str
    words: frozenset[str]


def _sentences(passage: Passage) -> list[_Sentence]:
    parts = [p.strip() for p in _SENTENCE.split(passage.text) if p and p.strip()]
    return [
        _Sentence(passage, i, part, frozenset(content_words(part))) for i, part in enumerate(parts)
    ]


def compose_answer(question: str, passages: tuple[Passage, ...]) -> tuple[str, list[int]]:
    """The extractive answer and the markers of the passages it cites."""
    if not passages:
        return NO_PASSAGES, []
    wanted = set(content_words(question))
    sentences = [s for p in passages for s in _sentences(p)]
    if not sentences:
        return NO_ANSWER, []
    # Rare words decide more than common ones (idf over the candidate sentences).
    idf = {
        w: math.log(1 + len(sentences) / (1 + sum(1 for s in sentences if w in s.words)))
        for w in wanted
    }
    total = sum(idf.values()) or 1.0

    def coverage(sentence: _Sentence) -> float:
        return sum(idf[w] for w in wanted & sentence.words) / total

    ranked = sorted(
        sentences,
        key=lambda s: (coverage(s) + 0.1 * s.passage.score, -s.position),
        reverse=True,
    )
    chosen = [s for s in ranked[:MAX_SENTENCES] if coverage(s) >= MIN_COVERAGE]
    if not chosen:
        best = max((s.passage for s in sentences), key=lambda p: p.score)
        if best.score < TRUSTED_RETRIEVAL_SCORE:
            return NO_ANSWER, []
        # Retrieval is sure (e.g. a question in another language): quote the passage's start.
        chosen = [s for s in sentences if s.passage is best][:2]
    used = sorted({s.passage.marker for s in chosen})
    order = {p.marker: i for i, p in enumerate(passages)}
    chosen.sort(key=lambda s: (order[s.passage.marker], s.position))
    parts: list[str] = []
    for i, sentence in enumerate(chosen):
        text = sentence.text.rstrip()
        last_of_passage = i + 1 == len(chosen) or chosen[i + 1].passage is not sentence.passage
        if last_of_passage:
            end = text[-1] if text[-1] in ".!?" else "."
            body = text[:-1] if text[-1] in ".!?" else text
            text = f"{body} [{sentence.passage.marker}]{end}"
        parts.append(text)
    return " ".join(parts), used


class OfflineProvider:
    """Answers from the passages alone, at ``tokens_per_second`` (0: as fast as possible)."""

    name = "offline"
    default_model = "extractive"

    def __init__(self, tokens_per_second: float = 0.0) -> None:
        self.tokens_per_second = tokens_per_second

    async def stream(
        self, request: LlmRequest, model: str | None, outcome: StreamOutcome
    ) -> AsyncIterator[str]:
        answer, cited = compose_answer(request.question, request.passages)
        outcome.cited = cited
        if request.assistant_prefix:
            prefix = request.assistant_prefix
            answer = answer[len(prefix) :] if answer.startswith(prefix) else "\n\n" + answer
        tokens = _TOKEN.findall(answer)
        prompt_words = sum(len(m.content.split()) for m in request.messages)
        prompt_words += sum(len(p.text.split()) for p in request.passages)
        interval = 1.0 / self.tokens_per_second if self.tokens_per_second > 0 else 0.0
        started = time.monotonic()
        for i, token in enumerate(tokens):
            if interval:
                delay = started + i * interval - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            yield token
        outcome.usage = Usage(prompt_words, len(tokens), estimated=True)
        outcome.finished = True
        outcome.finish_reason = "stop"
