"""One Settings object for the whole server, read from ``FENLO_*`` environment variables.

Every setting has an embedded default, so ``fenlo serve`` runs with no set-up:
SQLite and generated secrets in ``FENLO_DATA_DIR``, in-process limits and
cache, the offline LLM provider.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from fenlo_server.loops import LoopChoice


class Settings(BaseSettings):
    """Server configuration. Each field is the env var ``FENLO_<FIELD NAME>``."""

    model_config = SettingsConfigDict(env_prefix="FENLO_", extra="ignore", populate_by_name=True)

    data_dir: Path = Field(
        Path(".fenlo"), description="Holds the SQLite file and generated secrets."
    )
    host: str = Field("127.0.0.1", description="Address the gRPC server listens on.")
    port: int = Field(50051, ge=0, le=65535, description="gRPC port; 0 picks a free one.")

    database_url: str | None = Field(
        None,
        description="SQLAlchemy async URL, e.g. postgresql+asyncpg://user@host/db. "
        "Default: SQLite file fenlo.db in the data directory.",
    )
    auto_migrate: bool | None = Field(
        None,
        description="Apply database migrations on start. Default: yes for SQLite, no otherwise "
        "(run `fenlo migrate`).",
    )
    redis_url: str | None = Field(
        None,
        description="Redis URL (redis://host:6379/0). Shares rate limits, conversation locks, "
        "the cache, cache invalidations and circuit-breaker state between replicas; unset "
        "keeps them in-process. The server runs on (locally) when Redis goes away.",
    )

    jwt_secret: SecretStr | None = Field(
        None,
        description="HS256 secret for tokens. Default: generated on first run and kept in "
        "the data directory (set it explicitly when several replicas share a database).",
    )
    jwt_issuer: str = Field("fenlo", description="The `iss` tokens must carry.")
    jwt_audience: str = Field("fenlo", description="The `aud` tokens must carry.")
    jwt_private_key_file: Path | None = Field(
        None,
        description="PEM private key (RSA or Ed25519) to issue RS256/EdDSA tokens with; "
        "its public key is trusted too.",
    )
    jwt_private_key_id: str | None = Field(
        None, description="The `kid` of jwt_private_key_file. Default: its thumbprint."
    )
    jwt_jwks_file: Path | None = Field(
        None, description="JWKS file of public keys to verify RS256/EdDSA tokens, by `kid`."
    )
    jwt_leeway_seconds: int = Field(30, ge=0, description="Clock skew allowed on exp and nbf.")
    page_token_secret: SecretStr | None = Field(
        None,
        description="Key that signs page tokens. Default: generated in the data directory.",
    )

    tls_cert_file: Path | None = Field(None, description="PEM certificate chain; enables TLS.")
    tls_key_file: Path | None = Field(None, description="PEM private key for tls_cert_file.")

    max_receive_message_bytes: int = Field(
        4 * 1024 * 1024, ge=1024, description="Largest request message accepted."
    )
    max_send_message_bytes: int = Field(
        16 * 1024 * 1024, ge=1024, description="Largest response message sent."
    )
    max_metadata_bytes: int = Field(
        16 * 1024,
        ge=8192 + 1024,
        description="Largest request metadata (all headers together) accepted; larger "
        "requests are refused with RESOURCE_EXHAUSTED, always (not gRPC's default of "
        "refusing at random between 8 and 16 KiB).",
    )
    keepalive_time_seconds: int = Field(30, ge=1, description="Ping idle connections this often.")
    keepalive_timeout_seconds: int = Field(
        10, ge=1, description="Close a connection whose ping is unanswered this long."
    )
    shutdown_grace_seconds: float = Field(
        10.0, ge=0, description="How long open calls may run after SIGTERM."
    )

    metrics_port: int | None = Field(
        9464, description="Prometheus metrics port; 0 or unset disables the endpoint."
    )
    metrics_host: str = Field("127.0.0.1", description="Address of the metrics endpoint.")
    event_loop: LoopChoice = Field(
        "auto",
        description="Event loop of `fenlo serve`: `auto` is uvloop when installed (it is a "
        "dependency on Linux), else asyncio.",
    )
    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING or ERROR.")
    log_format: Literal["json", "text"] = Field(
        "json", description="`json`: one JSON object per line; `text`: for people."
    )

    default_requests_per_minute: int = Field(
        1200, ge=1, description="Quota of a workspace that sets none."
    )
    default_concurrent_chat_streams: int = Field(
        100, ge=1, description="Quota of a workspace that sets none."
    )
    default_turns_per_minute: int = Field(
        600, ge=1, description="Quota of a workspace that sets none."
    )
    default_tokens_per_day: int = Field(
        5_000_000, ge=1, description="Quota of a workspace that sets none."
    )

    default_page_size: int = Field(50, ge=1, description="Page size when a List sets none.")
    max_page_size: int = Field(1000, ge=1, description="Larger page sizes are lowered to this.")
    chat_turn_deadline_seconds: float = Field(
        60.0, gt=0, description="A chat turn still running after this fails with DEADLINE_EXCEEDED."
    )
    chat_idle_timeout_seconds: float = Field(
        600.0,
        gt=0,
        description="A chat stream with no request and no turn for this long is closed.",
    )
    chat_max_stream_age_seconds: float = Field(
        4 * 3600.0,
        gt=0,
        description="A chat stream older than this gets `draining` and closes after its turns.",
    )
    chat_max_queued_turns: int = Field(
        4, ge=0, description="User messages that may wait behind a running turn on one stream."
    )
    chat_lock_seconds: float | None = Field(
        None,
        gt=0,
        description="How long a stream's hold on its conversation lasts without renewal "
        "(default: twice the turn deadline), so a dead server cannot hold it.",
    )
    max_user_text_chars: int = Field(
        8000, ge=1, description="Longest user message a Chat turn accepts."
    )
    cache_ttl_seconds: float = Field(5.0, ge=0, description="In-process cache lifetime.")
    redis_cache_ttl_seconds: float = Field(
        60.0,
        gt=0,
        description="Lifetime of the Redis cache layer (workspace settings, API-key lookups); "
        "changes invalidate it at once, the lifetime bounds what a lost invalidation can cost.",
    )
    redis_lease_seconds: float = Field(
        30.0,
        gt=0,
        description="A concurrent-stream slot held in Redis lasts this long unless renewed "
        "(its holder renews it every third of it), so a dead server frees its slots.",
    )
    redis_retry_seconds: float = Field(
        2.0,
        gt=0,
        description="While Redis is down, the longest wait between reconnect attempts "
        "(from 0.5 s, doubling); requests meanwhile use in-process state.",
    )

    groq_api_key: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("FENLO_GROQ_API_KEY", "GROQ_API_KEY"),
        description="Groq API key (also read from GROQ_API_KEY); enables the groq provider.",
    )
    groq_base_url: str | None = Field(
        None, description="Groq endpoint; default the SDK's (https://api.groq.com)."
    )
    groq_model: str = Field("llama-3.3-70b-versatile", description="Groq's default model.")
    openai_api_key: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("FENLO_OPENAI_API_KEY", "OPENAI_API_KEY"),
        description="OpenAI API key (also read from OPENAI_API_KEY); enables the openai "
        "provider. Any value for a keyless OpenAI-compatible server.",
    )
    openai_base_url: str | None = Field(
        None,
        description="OpenAI-compatible endpoint (vLLM, Ollama, a proxy), e.g. "
        "http://127.0.0.1:11434/v1; default OpenAI's.",
    )
    openai_model: str = Field("gpt-4o", description="The openai provider's default model.")
    openai_stream_usage: bool = Field(
        True,
        description="Ask the openai provider for token usage in the stream "
        "(stream_options.include_usage); turn off for servers that refuse it.",
    )
    llm_order: str = Field(
        "groq,openai,offline",
        description="Default provider order (a workspace may set its own); providers "
        "without a key are left out.",
    )
    llm_offline_fallback: bool = Field(
        True,
        description="Answer from the offline provider when every configured provider "
        "fails (instead of an UNAVAILABLE error).",
    )
    llm_first_token_timeout_seconds: float = Field(
        10.0, gt=0, description="A provider with no text by then is abandoned for the next."
    )
    llm_stall_timeout_seconds: float = Field(
        10.0, gt=0, description="A provider silent this long mid-answer is abandoned."
    )
    llm_request_timeout_seconds: float = Field(
        120.0, gt=0, description="The SDKs' own timeout, a backstop behind the two above."
    )
    offline_tokens_per_second: float = Field(
        0.0, ge=0, description="Pace of the offline provider's stream; 0 streams at once."
    )
    breaker_failure_rate: float = Field(
        0.5, gt=0, le=1, description="Failure share in the window that opens a breaker."
    )
    breaker_minimum_calls: int = Field(
        5, ge=1, description="Calls the window must hold before a breaker may open."
    )
    breaker_window_seconds: float = Field(
        30.0, gt=0, description="The breaker's sliding window of call outcomes."
    )
    breaker_cooldown_seconds: float = Field(
        15.0, gt=0, description="How long an open breaker refuses calls (or Retry-After)."
    )
    breaker_half_open_probes: int = Field(
        1, ge=1, description="Calls let through at once to probe a half-open provider."
    )

    kb_embedders: str = Field(
        "minilm,use-multilingual",
        description="Embedding models for the knowledge base, comma-separated: `minilm` "
        "(all-MiniLM-L6-v2 int8 on onnxruntime), `use-multilingual` (finds English "
        "passages for questions in other languages), `openai` (needs the OpenAI key). "
        "Changing the list re-embeds every document.",
    )
    kb_openai_embedding_model: str = Field(
        "text-embedding-3-small", description="The model of the `openai` embedder."
    )
    kb_chunk_tokens: int = Field(128, ge=16, le=512, description="Passage size, in tokens.")
    kb_chunk_overlap_tokens: int = Field(
        32, ge=0, le=256, description="Overlap between consecutive passages."
    )
    kb_section_tokens: int = Field(
        512, ge=64, le=4096, description="Most tokens of context given to the LLM per passage."
    )
    kb_ingest_workers: int = Field(
        1, ge=1, le=16, description="Documents processed at once (per process)."
    )
    jobs_queue: str = Field(
        "fenlo:jobs", description="The ARQ queue name (with FENLO_REDIS_URL) for background jobs."
    )
    kb_index_check_seconds: float = Field(
        1.0, ge=0, description="How often a search checks that its index is current."
    )
    kb_ann_threshold: int = Field(
        20_000, ge=1, description="Passages of one workspace from which an HNSW index is used."
    )
    kb_curated_threshold: float = Field(
        0.80,
        gt=0,
        le=1,
        description="Cosine similarity between a question and a curated answer's question "
        "(best over the embedders) at which the curated answer answers directly.",
    )
    default_max_document_bytes: int = Field(
        20 * 1024 * 1024, ge=1024, description="Quota of a workspace that sets none."
    )
    pinecone_api_key: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("FENLO_PINECONE_API_KEY", "PINECONE_API_KEY"),
        description="Pinecone API key; with FENLO_PINECONE_INDEX_HOST, the first embedder's "
        "vectors go to Pinecone (one namespace per workspace).",
    )
    pinecone_index_host: str | None = Field(
        None, description="The Pinecone index host, e.g. https://my-index-abc.svc.pinecone.io."
    )
    events_redis_prefix: str = Field(
        "fenlo",
        pattern=r"^[A-Za-z0-9_.-]{1,64}$",
        description="Prefix of the event streams' Redis keys: `{prefix}:events` (every "
        "replica's fan-out), `{prefix}:ws:{workspace}:events` and `{prefix}:events:epoch`.",
    )
    events_relay_poll_seconds: float = Field(
        0.5,
        gt=0,
        le=60,
        description="How often the outbox relay looks for unpublished events besides being "
        "woken on commit (events of other replicas and of crashed writers).",
    )
    events_relay_batch: int = Field(
        200, ge=1, le=5000, description="Outbox events the relay publishes per transaction."
    )
    events_relay_coalesce_seconds: float = Field(
        0.02,
        ge=0,
        le=1,
        description="Woken by a commit, the relay waits this long first, so the commits "
        "of one turn (and of concurrent turns) go to Redis in one pass, after the turn's "
        "first token rather than before it. The local bus has them at once.",
    )
    events_stream_maxlen: int = Field(
        10_000,
        ge=100,
        description="Approximate length each workspace's Redis event stream is trimmed to.",
    )
    events_global_stream_maxlen: int = Field(
        100_000,
        ge=100,
        description="Approximate length the replicas' shared Redis event stream is trimmed to.",
    )
    events_rebuild_seconds: float = Field(
        86_400.0,
        ge=0,
        description="After Redis lost its data, the workspace streams are rebuilt from the "
        "outbox events of this many seconds back (at most FENLO_EVENTS_REBUILD_MAX_EVENTS).",
    )
    events_rebuild_max_events: int = Field(
        50_000,
        ge=0,
        description="The most outbox events (the newest) a rebuild of the Redis streams "
        "re-adds; 0 turns the rebuild off.",
    )
    events_local_window_seconds: float = Field(
        60.0,
        gt=0,
        description="While Redis is unreachable, unpublished events this recent still go to "
        "the local bus at once (older ones wait for Redis, never lost).",
    )
    events_redis_block_ms: int = Field(
        1000, ge=10, le=30_000, description="XREAD BLOCK time of the stream consumer."
    )
    events_stream_buffer: int = Field(
        1000,
        ge=1,
        description="Live events one StreamEvents call holds for a slow reader; beyond it "
        "the stream catches up from the outbox table instead.",
    )

    retention_interval_seconds: float = Field(
        3600.0,
        ge=0,
        description="How often the retention job removes data older than each workspace's "
        "retention_days: in-process without Redis, as an ARQ cron job of `fenlo worker` "
        "with it (rounded to whole minutes or hours). 0 disables the schedule.",
    )
    retention_batch_size: int = Field(
        500, ge=1, le=10_000, description="Rows the retention job deletes per transaction."
    )
    retention_max_batches: int = Field(
        20,
        ge=1,
        description="Batches of each kind (messages, conversations, events) per workspace "
        "and run; the rest waits for the next run.",
    )

    webhook_secret_key: SecretStr | None = Field(
        None,
        description="Key that encrypts webhook signing secrets at rest (any long random "
        "string). Default: generated in the data directory (set it explicitly when several "
        "replicas share a database).",
    )
    webhook_allow_private: bool = Field(
        False,
        description="Allow webhook URLs whose host resolves to a private, loopback, "
        "link-local, multicast or unspecified address (checked on create, update and send).",
    )
    webhook_timeout_seconds: float = Field(
        5.0, gt=0, le=60, description="How long one webhook attempt may take."
    )
    webhook_max_attempts: int = Field(
        8, ge=1, le=100, description="Attempts of a delivery before it is dead-lettered."
    )
    webhook_retry_base_seconds: float = Field(
        10.0,
        gt=0,
        description="Retry n waits a random time up to base * 2^(n-1) seconds (full jitter).",
    )
    webhook_retry_max_seconds: float = Field(
        3600.0, gt=0, description="The longest wait between two attempts of a delivery."
    )
    webhook_poll_seconds: float = Field(
        1.0, gt=0, description="How often the in-process scheduler looks for due deliveries."
    )
    webhook_concurrency: int = Field(
        8, ge=1, le=256, description="Webhook requests in flight at once (per process)."
    )
    webhook_disable_on_gone: bool = Field(
        True, description="Disable a webhook whose endpoint answers 410 Gone."
    )
    webhook_catchup_seconds: float = Field(
        5.0,
        gt=0,
        le=3600,
        description="How often webhooks are matched against the outbox, so an event "
        "whose deliveries were not recorded when it was published (database away, "
        "process killed) still gets them.",
    )
    webhook_delivery_retention_days: int = Field(
        30,
        ge=0,
        description="Finished webhook deliveries (succeeded, failed, dead-lettered) "
        "older than this are removed by the retention job; 0 keeps them.",
    )

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'fenlo.db').resolve()}"

    def is_sqlite(self) -> bool:
        return self.resolved_database_url().startswith("sqlite")

    def should_auto_migrate(self) -> bool:
        return self.is_sqlite() if self.auto_migrate is None else self.auto_migrate
