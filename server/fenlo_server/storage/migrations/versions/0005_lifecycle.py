"""data lifecycle: indexes for retention and export

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEXES = (
    ("conversations", "ix_conversations_created"),
    ("messages", "ix_messages_created"),
    ("outbox_events", "ix_outbox_events_created"),
)


def upgrade() -> None:
    for table, name in INDEXES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.create_index(name, ["workspace_id", "create_time"], unique=False)


def downgrade() -> None:
    for table, name in reversed(INDEXES):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_index(name)
