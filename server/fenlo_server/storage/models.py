"""SQLAlchemy models. Every table that holds tenant data has a ``workspace_id``
column and derives from :class:`TenantScoped`, which the session guard in
``db.py`` uses to scope every query to one workspace.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class UtcDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every database (SQLite stores naive ones)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UtcDateTime(),
        dict[str, Any]: JSON,
        list[Any]: JSON,
    }


ID = String(32)


class TenantScoped:
    """Mixin of models whose rows belong to one workspace (each adds the FK)."""

    workspace_id: Mapped[str] = mapped_column(ID, index=True)


def _workspace_fk() -> ForeignKeyConstraint:
    return ForeignKeyConstraint(["workspace_id"], ["workspaces.id"], ondelete="CASCADE")


class WorkspaceRow(Base):
    __tablename__ = "workspaces"

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    display_name: Mapped[str] = mapped_column(String(200))
    settings: Mapped[dict[str, Any]] = mapped_column(default=dict)
    quotas: Mapped[dict[str, Any]] = mapped_column(default=dict)
    request_id: Mapped[str | None] = mapped_column(String(64), unique=True)
    request_hash: Mapped[str | None] = mapped_column(String(64))
    create_time: Mapped[datetime] = mapped_column(default=utcnow)
    update_time: Mapped[datetime] = mapped_column(default=utcnow)
    # Bumped in the same transaction as every change to the knowledge base, so
    # every replica's search index knows when to reload.
    kb_version: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # The last sequence number given to one of the workspace's events.
    event_seq: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")


class ApiKeyRow(TenantScoped, Base):
    __tablename__ = "api_keys"
    __table_args__ = (_workspace_fk(),)

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    display_name: Mapped[str] = mapped_column(String(200), default="")
    roles: Mapped[list[Any]] = mapped_column(default=list)
    secret_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    create_time: Mapped[datetime] = mapped_column(default=utcnow)
    last_use_time: Mapped[datetime | None] = mapped_column()


class ConversationRow(TenantScoped, Base):
    __tablename__ = "conversations"
    __table_args__ = (
        _workspace_fk(),
        UniqueConstraint("workspace_id", "request_id", name="uq_conversations_request"),
        Index("ix_conversations_contact", "workspace_id", "external_contact_id"),
        # Export reads in creation order; retention finds old, empty conversations.
        Index("ix_conversations_created", "workspace_id", "create_time"),
    )

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    channel: Mapped[str] = mapped_column(String(16))
    external_contact_id: Mapped[str] = mapped_column(String(256), default="")
    labels: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    state: Mapped[str] = mapped_column(String(16))
    analysis: Mapped[dict[str, Any]] = mapped_column(default=dict)
    message_count: Mapped[int] = mapped_column(Integer, default=0)
    last_seq: Mapped[int] = mapped_column(Integer, default=0)
    request_id: Mapped[str | None] = mapped_column(String(64))
    request_hash: Mapped[str | None] = mapped_column(String(64))
    create_time: Mapped[datetime] = mapped_column(default=utcnow)
    update_time: Mapped[datetime] = mapped_column(default=utcnow)
    last_message_time: Mapped[datetime | None] = mapped_column()


class MessageRow(TenantScoped, Base):
    __tablename__ = "messages"
    __table_args__ = (
        _workspace_fk(),
        UniqueConstraint("conversation_id", "seq", name="uq_messages_seq"),
        Index("ix_messages_client_id", "conversation_id", "client_message_id"),
        Index("ix_messages_created", "workspace_id", "create_time"),  # retention
    )

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    conversation_id: Mapped[str] = mapped_column(
        ID, ForeignKey("conversations.id", ondelete="CASCADE")
    )
    seq: Mapped[int] = mapped_column(Integer)
    role: Mapped[str] = mapped_column(String(16))
    text: Mapped[str] = mapped_column(Text)
    turn_id: Mapped[str] = mapped_column(String(32), default="")
    client_message_id: Mapped[str] = mapped_column(String(128), default="")
    interrupted: Mapped[bool] = mapped_column(Boolean, default=False)
    citations: Mapped[list[Any]] = mapped_column(default=list)
    analysis: Mapped[dict[str, Any]] = mapped_column(default=dict)
    author: Mapped[str] = mapped_column(String(200), default="")
    create_time: Mapped[datetime] = mapped_column(default=utcnow)


class DocumentRow(TenantScoped, Base):
    __tablename__ = "documents"
    __table_args__ = (
        _workspace_fk(),
        UniqueConstraint("workspace_id", "request_id", name="uq_documents_request"),
    )

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    title: Mapped[str] = mapped_column(String(300), default="")
    source_uri: Mapped[str] = mapped_column(String(2048), default="")
    mime_type: Mapped[str] = mapped_column(String(200), default="")
    tags: Mapped[list[Any]] = mapped_column(default=list)
    status: Mapped[str] = mapped_column(String(16))
    failure_reason: Mapped[str] = mapped_column(String(32), default="")
    failure_message: Mapped[str] = mapped_column(Text, default="")
    detected_type: Mapped[str] = mapped_column(String(100), default="")
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    content_sha256: Mapped[str] = mapped_column(String(64), default="")
    chunk_count: Mapped[int] = mapped_column(Integer, default=0)
    embedding_models: Mapped[list[Any]] = mapped_column(default=list)
    # Each (re)index request bumps the generation; a job only commits the
    # generation it was started for, so a stale job cannot overwrite a newer one.
    generation: Mapped[int] = mapped_column(Integer, default=0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    lease_until: Mapped[datetime | None] = mapped_column()
    request_id: Mapped[str | None] = mapped_column(String(64))
    request_hash: Mapped[str | None] = mapped_column(String(64))
    create_time: Mapped[datetime] = mapped_column(default=utcnow)
    update_time: Mapped[datetime] = mapped_column(default=utcnow)


class DocumentBlobRow(TenantScoped, Base):
    """The uploaded bytes, kept so a document can be reindexed."""

    __tablename__ = "document_blobs"
    __table_args__ = (
        _workspace_fk(),
        ForeignKeyConstraint(["document_id"], ["documents.id"], ondelete="CASCADE"),
    )

    document_id: Mapped[str] = mapped_column(ID, primary_key=True)
    content: Mapped[bytes] = mapped_column(LargeBinary)


class KbSectionRow(TenantScoped, Base):
    """A document section: the context given to the LLM around a passage."""

    __tablename__ = "kb_sections"
    __table_args__ = (
        _workspace_fk(),
        ForeignKeyConstraint(["document_id"], ["documents.id"], ondelete="CASCADE"),
    )

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    document_id: Mapped[str] = mapped_column(ID, index=True)
    ordinal: Mapped[int] = mapped_column(Integer)
    heading_path: Mapped[list[Any]] = mapped_column(default=list)
    text: Mapped[str] = mapped_column(Text)


class KbChunkRow(TenantScoped, Base):
    """A passage: what is matched by keywords and vectors."""

    __tablename__ = "kb_chunks"
    __table_args__ = (
        _workspace_fk(),
        ForeignKeyConstraint(["document_id"], ["documents.id"], ondelete="CASCADE"),
        ForeignKeyConstraint(["section_id"], ["kb_sections.id"], ondelete="CASCADE"),
    )

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    document_id: Mapped[str] = mapped_column(ID, index=True)
    section_id: Mapped[str] = mapped_column(ID)
    ordinal: Mapped[int] = mapped_column(Integer)
    text: Mapped[str] = mapped_column(Text)
    embed_text: Mapped[str] = mapped_column(Text)
    token_count: Mapped[int] = mapped_column(Integer)


class KbVectorRow(TenantScoped, Base):
    """One passage's vector from one embedding model (float32 bytes)."""

    __tablename__ = "kb_vectors"
    __table_args__ = (
        _workspace_fk(),
        ForeignKeyConstraint(["chunk_id"], ["kb_chunks.id"], ondelete="CASCADE"),
    )

    chunk_id: Mapped[str] = mapped_column(ID, primary_key=True)
    model: Mapped[str] = mapped_column(String(100), primary_key=True)
    vector: Mapped[bytes] = mapped_column(LargeBinary)


class CuratedAnswerRow(TenantScoped, Base):
    __tablename__ = "curated_answers"
    __table_args__ = (
        _workspace_fk(),
        UniqueConstraint("workspace_id", "request_id", name="uq_curated_answers_request"),
    )

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    question: Mapped[str] = mapped_column(Text)
    answer: Mapped[str] = mapped_column(Text)
    tags: Mapped[list[Any]] = mapped_column(default=list)
    # model -> base64 float32 vector of the question
    vectors: Mapped[dict[str, Any]] = mapped_column(default=dict)
    request_id: Mapped[str | None] = mapped_column(String(64))
    request_hash: Mapped[str | None] = mapped_column(String(64))
    create_time: Mapped[datetime] = mapped_column(default=utcnow)
    update_time: Mapped[datetime] = mapped_column(default=utcnow)


class LeadRow(TenantScoped, Base):
    """One conversation's lead: its cumulative score, signals and contact details."""

    __tablename__ = "leads"
    __table_args__ = (
        _workspace_fk(),
        ForeignKeyConstraint(["conversation_id"], ["conversations.id"], ondelete="CASCADE"),
        UniqueConstraint("conversation_id", name="uq_leads_conversation"),
        Index("ix_leads_score", "workspace_id", "score"),
    )

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    conversation_id: Mapped[str] = mapped_column(ID)
    score: Mapped[float] = mapped_column(default=0.0)
    status: Mapped[str] = mapped_column(String(16), default="NEW")
    owner: Mapped[str] = mapped_column(String(200), default="")
    notes: Mapped[str] = mapped_column(Text, default="")
    turns: Mapped[int] = mapped_column(Integer, default=0)
    signals: Mapped[list[Any]] = mapped_column(default=list)
    contact: Mapped[dict[str, Any]] = mapped_column(default=dict)
    qualified_time: Mapped[datetime | None] = mapped_column()
    create_time: Mapped[datetime] = mapped_column(default=utcnow)
    update_time: Mapped[datetime] = mapped_column(default=utcnow)


class TurnRow(TenantScoped, Base):
    """One completed user turn's figures, flat for analytics: what the pipeline
    classified, how long the first token took, which providers answered."""

    __tablename__ = "turns"
    __table_args__ = (
        _workspace_fk(),
        ForeignKeyConstraint(["conversation_id"], ["conversations.id"], ondelete="CASCADE"),
        Index("ix_turns_time", "workspace_id", "create_time"),
    )

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    conversation_id: Mapped[str] = mapped_column(ID, index=True)
    turn_id: Mapped[str] = mapped_column(String(32))
    intent: Mapped[str] = mapped_column(String(16), default="")  # faq, sales, ... ("" unknown)
    sentiment: Mapped[str] = mapped_column(String(16), default="")  # positive, neutral, negative
    quality: Mapped[float | None] = mapped_column()  # the answer's score, when scored
    grounded: Mapped[bool] = mapped_column(Boolean, default=False)  # answer had passages
    ttft_ms: Mapped[float | None] = mapped_column()  # LLM answers only
    providers: Mapped[list[Any]] = mapped_column(default=list)
    failovers: Mapped[int] = mapped_column(Integer, default=0)
    handoff_reason: Mapped[str] = mapped_column(String(32), default="")
    guard_blocked: Mapped[bool] = mapped_column(Boolean, default=False)
    interrupted: Mapped[bool] = mapped_column(Boolean, default=False)
    create_time: Mapped[datetime] = mapped_column(default=utcnow)


class OutboxEventRow(TenantScoped, Base):
    """An event written in the same transaction as the change it describes; a relay
    publishes it (the transactional outbox)."""

    __tablename__ = "outbox_events"
    __table_args__ = (
        _workspace_fk(),
        UniqueConstraint("workspace_id", "seq", name="uq_outbox_events_seq"),
        Index("ix_outbox_events_unpublished", "published_time", "id"),
        Index("ix_outbox_events_created", "workspace_id", "create_time"),  # retention
    )

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger)
    type: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    create_time: Mapped[datetime] = mapped_column(default=utcnow)
    published_time: Mapped[datetime | None] = mapped_column()


class WebhookRow(TenantScoped, Base):
    """A subscription of an endpoint to a workspace's events. The signing secret is
    kept only encrypted (``events/secret_box.py``)."""

    __tablename__ = "webhooks"
    __table_args__ = (
        _workspace_fk(),
        UniqueConstraint("workspace_id", "request_id", name="uq_webhooks_request"),
    )

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    url: Mapped[str] = mapped_column(String(2048))
    event_types: Mapped[list[Any]] = mapped_column(default=list)
    description: Mapped[str] = mapped_column(String(500), default="")
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    disabled_reason: Mapped[str] = mapped_column(String(200), default="")
    secret_ciphertext: Mapped[str] = mapped_column(Text)
    request_id: Mapped[str | None] = mapped_column(String(64))
    request_hash: Mapped[str | None] = mapped_column(String(64))
    # The workspace's outbox events up to this sequence number have been matched
    # against this webhook (the catch-up of events/webhooks.py moves it on).
    event_seq: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    create_time: Mapped[datetime] = mapped_column(default=utcnow)
    update_time: Mapped[datetime] = mapped_column(default=utcnow)


class WebhookDeliveryRow(TenantScoped, Base):
    """One event for one webhook, with the exact body sent and every attempt made.

    Unique by (webhook, event): an event published twice is delivered once."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        _workspace_fk(),
        ForeignKeyConstraint(["webhook_id"], ["webhooks.id"], ondelete="CASCADE"),
        UniqueConstraint("webhook_id", "event_id", name="uq_webhook_deliveries_event"),
        Index("ix_webhook_deliveries_due", "state", "next_attempt_time"),
        Index("ix_webhook_deliveries_webhook", "webhook_id", "id"),
        Index("ix_webhook_deliveries_created", "workspace_id", "create_time"),
    )

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    webhook_id: Mapped[str] = mapped_column(ID)
    event_id: Mapped[str] = mapped_column(String(64))
    event_seq: Mapped[int] = mapped_column(BigInteger)
    event_type: Mapped[str] = mapped_column(String(64))
    # The JSON body, fixed when the delivery is created so that every retry sends
    # the same bytes.
    body: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16))
    attempt_count: Mapped[int] = mapped_column(Integer, default=0)
    last_status_code: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str] = mapped_column(Text, default="")
    next_attempt_time: Mapped[datetime | None] = mapped_column()
    # A sender holds the delivery until then, so two senders never send it at once.
    lease_until: Mapped[datetime | None] = mapped_column()
    # Every attempt: {attempt, start_time, duration_ms, status_code, error}.
    attempts: Mapped[list[Any]] = mapped_column(default=list)
    create_time: Mapped[datetime] = mapped_column(default=utcnow)
    update_time: Mapped[datetime] = mapped_column(default=utcnow)
