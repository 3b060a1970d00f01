"""Background jobs: document ingestion (in-process queue, or ARQ workers with Redis)."""
