"""Builds the knowledge base's parts from the server's settings."""

from __future__ import annotations

from typing import Any

from fenlo_server.config import Settings
from fenlo_server.knowledge.index import IndexManager
from fenlo_server.knowledge.search import KnowledgeSearch, SearchOptions
from fenlo_server.knowledge.types import Embedder, KnowledgeStore, VectorStore

EMBEDDERS = ("minilm", "use-multilingual", "openai")


def parse_embedders(text: str) -> list[str]:
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in EMBEDDERS]
    if unknown or not names:
        raise ValueError(f"FENLO_KB_EMBEDDERS: use one or more of {', '.join(EMBEDDERS)}")
    return names


def build_embedders(settings: Settings) -> list[Embedder]:
    from fenlo_server.knowledge.embedders import (
        MiniLmEmbedder,
        OpenAIEmbedder,
        UseMultilingualEmbedder,
    )

    embedders: list[Embedder] = []
    for name in parse_embedders(settings.kb_embedders):
        if name == "minilm":
            embedders.append(MiniLmEmbedder())
        elif name == "use-multilingual":
            embedders.append(UseMultilingualEmbedder())
        else:
            if settings.openai_api_key is None:
                raise ValueError("the `openai` embedder needs OPENAI_API_KEY")
            embedders.append(
                OpenAIEmbedder(
                    api_key=settings.openai_api_key.get_secret_value(),
                    base_url=settings.openai_base_url,
                    model=settings.kb_openai_embedding_model,
                )
            )
    return embedders


def token_counter(embedders: list[Embedder]) -> Any:
    """The chunker's token counter: MiniLM's word pieces if loaded, else ~words."""
    for embedder in embedders:
        count = getattr(embedder, "count_tokens", None)
        if count is not None:
            return count
    return lambda text: int(len(text.split()) * 1.3) + 1


def build_external_store(settings: Settings) -> VectorStore | None:
    if settings.pinecone_api_key is None or not settings.pinecone_index_host:
        return None
    from fenlo_server.knowledge.pinecone_store import PineconeVectorStore

    return PineconeVectorStore(
        api_key=settings.pinecone_api_key.get_secret_value(),
        index_host=settings.pinecone_index_host,
    )


def build_search(
    settings: Settings,
    store: KnowledgeStore,
    embedders: list[Embedder],
    external: VectorStore | None,
) -> KnowledgeSearch:
    models = [e.model for e in embedders]
    indexes = IndexManager(
        store,
        models,
        check_interval=settings.kb_index_check_seconds,
        ann_threshold=settings.kb_ann_threshold,
    )
    return KnowledgeSearch(
        indexes,
        embedders,
        external_store=external,
        external_model=models[0] if external is not None else None,
        options=SearchOptions(curated_threshold=settings.kb_curated_threshold),
    )
