"""sentiment_analysis: the user message's sentiment and the conversation's trend."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fenlo_server.pipeline.analysis.sentiment import analyze_sentiment, sentiment_trend
from fenlo_server.pipeline.context import MessageContext

NAME = "sentiment_analysis"


class SentimentAnalysis:
    name = NAME
    phase = "post"
    essential = False

    async def run(self, ctx: MessageContext) -> None:
        ctx.sentiment = analyze_sentiment(ctx.text)
        ctx.sentiment_trend = sentiment_trend([*ctx.memory.sentiments, ctx.sentiment.score])


def create(params: Mapping[str, Any]) -> SentimentAnalysis:
    if params:
        raise ValueError("sentiment_analysis takes no parameters")
    return SentimentAnalysis()
