"""intent_classifier: what the user wants (faq, booking, sales, support,
escalation, other), from multilingual rules and, when the multilingual
embedder is configured, the nearest example intents (reusing the vector
retrieval already computed for the message)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fenlo_server.pipeline.analysis import intent
from fenlo_server.pipeline.analysis.intent import IntentClassifier as Classifier
from fenlo_server.pipeline.context import MessageContext

NAME = "intent_classifier"
MULTILINGUAL = "use-multilingual-v3"


class IntentClassifier:
    name = NAME
    phase = "post"
    essential = False

    def __init__(self) -> None:
        self._classifier: Classifier | None = None

    async def run(self, ctx: MessageContext) -> None:
        if self._classifier is None:
            embedder = next(
                (e for e in ctx.services.knowledge.embedders if e.model == MULTILINGUAL), None
            )
            self._classifier = intent.shared(embedder) if embedder else Classifier(None)
        ctx.intent = await self._classifier.classify(ctx.text, ctx.query_vectors.get(MULTILINGUAL))


def create(params: Mapping[str, Any]) -> IntentClassifier:
    if params:
        raise ValueError("intent_classifier takes no parameters")
    return IntentClassifier()
