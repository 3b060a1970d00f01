"""Alembic environment: runs on SQLite (aiosqlite) and PostgreSQL (asyncpg).

Called programmatically by ``fenlo migrate`` / ``fenlo serve`` with a live
connection in ``config.attributes["connection"]``, or by the ``alembic`` command
line with ``sqlalchemy.url`` set.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from fenlo_server.storage.models import Base

config = context.config
target_metadata = Base.metadata
MIGRATION_LOCK = 0x66656E6C6F  # "fenlo": one migrator at a time on PostgreSQL


def run_with_connection(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK})
        context.run_migrations()


async def run_async() -> None:
    engine = create_async_engine(config.get_main_option("sqlalchemy.url") or "")
    async with engine.connect() as connection:
        await connection.run_sync(run_with_connection)
        await connection.commit()
    await engine.dispose()


if context.is_offline_mode():
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=target_metadata)
    with context.begin_transaction():
        context.run_migrations()
else:
    live = config.attributes.get("connection")
    if live is not None:
        run_with_connection(live)
    else:
        asyncio.run(run_async())
