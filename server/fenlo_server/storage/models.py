"""SQLAlchemy models. Every table that holds tenant data has a ``workspace_id``
column and derives from :class:`TenantScoped`, which the session guard in
``db.py`` uses to scope every query to one workspace.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
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
