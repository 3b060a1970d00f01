"""The twelve built-in steps, one module each; :func:`register_builtin` adds them."""

from __future__ import annotations

from fenlo_server.pipeline.registry import StepRegistry


def register_builtin(registry: StepRegistry) -> None:
    from fenlo_server.pipeline.steps import (
        entity_extraction,
        handoff_decision,
        intent_classifier,
        lead_scoring,
        llm_stream,
        load_context,
        persistence,
        pii_redaction,
        prompt_guard,
        quality_scorer,
        rag_retrieval,
        sentiment_analysis,
    )

    for module in (
        load_context,
        prompt_guard,
        pii_redaction,
        rag_retrieval,
        llm_stream,
        sentiment_analysis,
        intent_classifier,
        entity_extraction,
        quality_scorer,
        lead_scoring,
        handoff_decision,
        persistence,
    ):
        registry.register(module.NAME, module.create)
