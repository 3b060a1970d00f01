"""webhooks: the outbox sequence each webhook has been matched up to; an index
for the retention of deliveries

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("webhooks", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("event_seq", sa.BigInteger(), server_default="0", nullable=False)
        )
    with op.batch_alter_table("webhook_deliveries", schema=None) as batch_op:
        batch_op.create_index(
            "ix_webhook_deliveries_created", ["workspace_id", "create_time"], unique=False
        )
    # Existing webhooks start at their workspace's newest event: the deliveries of
    # the events before this upgrade were recorded already.
    op.execute(
        "UPDATE webhooks SET event_seq = "
        "(SELECT event_seq FROM workspaces WHERE workspaces.id = webhooks.workspace_id)"
    )


def downgrade() -> None:
    with op.batch_alter_table("webhook_deliveries", schema=None) as batch_op:
        batch_op.drop_index("ix_webhook_deliveries_created")
    with op.batch_alter_table("webhooks", schema=None) as batch_op:
        batch_op.drop_column("event_seq")
