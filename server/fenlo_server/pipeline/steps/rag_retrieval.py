"""rag_retrieval: the workspace's knowledge base for the user's message.

The best sections go to the LLM as numbered passages; a curated answer that
matches closely enough answers directly (generation ends here, no LLM call).
The query's vectors are kept on the turn for later steps (intent).

Parameters: ``passages`` (4), ``curated`` (true).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fenlo_server.llm.types import Passage
from fenlo_server.pipeline.context import MessageContext
from fenlo_server.pipeline.step import Skip
from fenlo_server.pipeline.steps.params import get, only

NAME = "rag_retrieval"


class RagRetrieval:
    name = NAME
    phase = "pre"
    essential = False  # without retrieval the assistant still answers, ungrounded

    def __init__(self, passages: int, curated: bool) -> None:
        self.passages = passages
        self.curated = curated

    async def run(self, ctx: MessageContext) -> None:
        search = ctx.services.knowledge
        index = await search.indexes.get(ctx.workspace_id)
        if index is None or index.empty:
            raise Skip("the knowledge base is empty")
        # The guard's vector of the message, when it embedded the same text.
        known = ctx.query_vectors if ctx.vectors_text == ctx.llm_text else None
        results = await search.search(ctx.workspace_id, ctx.llm_text, self.passages, vectors=known)
        ctx.query_vectors = dict(results.vectors)
        ctx.vectors_text = ctx.llm_text
        if self.curated and results.curated is not None:
            ctx.reply = results.curated.entry.answer
            ctx.reply_source = "curated"
            return
        ctx.hits = results.hits
        ctx.passages = [
            Passage(
                marker=i + 1,
                text=hit.context,
                title=" > ".join([hit.chunk.title, *hit.chunk.heading_path]),
                source=hit.chunk.source_uri,
                score=hit.similarity,
            )
            for i, hit in enumerate(results.hits)
        ]


def create(params: Mapping[str, Any]) -> RagRetrieval:
    only(params, "passages", "curated")
    count = get(params, "passages", int, 4)
    if not 1 <= count <= 20:
        raise ValueError("passages must be 1..20")
    return RagRetrieval(count, get(params, "curated", bool, True))
