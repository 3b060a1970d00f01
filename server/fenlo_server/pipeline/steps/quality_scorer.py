"""quality_scorer: how good the answer looks (0..1) and why: length fit, citation
use, grounding in the passages, relevance to the question, and certainty."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fenlo_server.pipeline.analysis.quality import score_quality
from fenlo_server.pipeline.context import MessageContext
from fenlo_server.pipeline.step import Skip

NAME = "quality_scorer"


class QualityScorer:
    name = NAME
    phase = "post"
    essential = False

    async def run(self, ctx: MessageContext) -> None:
        if ctx.silent:
            raise Skip("no answer (handed off)")
        if ctx.reply_source == "guard":
            raise Skip("the guard answered")
        ctx.quality = score_quality(
            ctx.text,
            ctx.answer,
            passages=[p.text for p in ctx.passages],
            cited=ctx.cited,
            interrupted=ctx.interrupted,
        )


def create(params: Mapping[str, Any]) -> QualityScorer:
    if params:
        raise ValueError("quality_scorer takes no parameters")
    return QualityScorer()
