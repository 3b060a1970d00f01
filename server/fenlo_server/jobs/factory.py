"""Builds the ingestion pipeline from the server's settings."""

from __future__ import annotations

from fenlo_server.config import Settings
from fenlo_server.jobs.ingestion import IngestionConfig, Ingestor
from fenlo_server.knowledge.factory import build_embedders, build_external_store, token_counter
from fenlo_server.knowledge.types import Embedder
from fenlo_server.storage.db import Database


def build_ingestor(
    settings: Settings, db: Database, embedders: list[Embedder] | None = None
) -> Ingestor:
    embedders = embedders if embedders is not None else build_embedders(settings)
    external = build_external_store(settings)
    return Ingestor(
        db,
        embedders,
        token_counter(embedders),
        IngestionConfig(
            child_tokens=settings.kb_chunk_tokens,
            overlap_tokens=settings.kb_chunk_overlap_tokens,
            section_tokens=settings.kb_section_tokens,
        ),
        external_store=external,
        external_model=embedders[0].model if external is not None else None,
    )
