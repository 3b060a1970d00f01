"""analytics: one row of figures per completed turn

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op



revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('turns',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('conversation_id', sa.String(length=32), nullable=False),
    sa.Column('turn_id', sa.String(length=32), nullable=False),
    sa.Column('intent', sa.String(length=16), nullable=False),
    sa.Column('sentiment', sa.String(length=16), nullable=False),
    sa.Column('quality', sa.Double(), nullable=True),
    sa.Column('grounded', sa.Boolean(), nullable=False),
    sa.Column('ttft_ms', sa.Double(), nullable=True),
    sa.Column('providers', sa.JSON(), nullable=False),
    sa.Column('failovers', sa.Integer(), nullable=False),
    sa.Column('handoff_reason', sa.String(length=32), nullable=False),
    sa.Column('guard_blocked', sa.Boolean(), nullable=False),
    sa.Column('interrupted', sa.Boolean(), nullable=False),
    sa.Column('create_time', sa.DateTime(timezone=True), nullable=False),
    sa.Column('workspace_id', sa.String(length=32), nullable=False),
    sa.ForeignKeyConstraint(['conversation_id'], ['conversations.id'], name=op.f('fk_turns_conversation_id_conversations'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['workspace_id'], ['workspaces.id'], name=op.f('fk_turns_workspace_id_workspaces'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_turns'))
    )
    with op.batch_alter_table('turns', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_turns_conversation_id'), ['conversation_id'], unique=False)
        batch_op.create_index('ix_turns_time', ['workspace_id', 'create_time'], unique=False)
        batch_op.create_index(batch_op.f('ix_turns_workspace_id'), ['workspace_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('turns', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_turns_workspace_id'))
        batch_op.drop_index('ix_turns_time')
        batch_op.drop_index(batch_op.f('ix_turns_conversation_id'))

    op.drop_table('turns')
