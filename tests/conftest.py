"""Shared test harness: a real in-process grpc.aio Fenlo server on port 0 and a real
channel, on SQLite and (when FENLO_TEST_DATABASE_URL is set) on PostgreSQL.

Fixtures:
    database_url   parametrized: "sqlite" (a fresh file per test) and "postgresql"
                   (one migrated database per test session, dropped at the end)
    app            a started FenloApp on that database; stopped after the test
    sqlite_app     the same, SQLite only (for tests the database does not matter to)
    api            an Api helper bound to ``app``: stubs, tokens, workspace factory
    redis_url      FENLO_TEST_REDIS_URL, or the test is skipped
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from fenlo_server.app import FenloApp
from fenlo_server.config import Settings
from fenlo_server.storage import migrate
from fenlo_server.storage.db import Database
from tests.helpers import Api

PG_ENV = "FENLO_TEST_DATABASE_URL"
REDIS_ENV = "FENLO_TEST_REDIS_URL"
PG_SKIP = f"PostgreSQL tests need {PG_ENV} (e.g. postgresql+asyncpg://postgres@127.0.0.1:5432/test)"


async def _admin_execute(url: str, statement: str) -> None:
    import asyncpg

    parsed = make_url(url)
    connection = await asyncpg.connect(
        host=parsed.host or "127.0.0.1",
        port=parsed.port or 5432,
        user=parsed.username or "postgres",
        password=parsed.password,
        database=parsed.database or "postgres",
    )
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


async def _migrate(url: str) -> None:
    db = Database(url)
    try:
        await migrate.upgrade(db)
    finally:
        await db.dispose()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str | None]:
    """A fresh, migrated PostgreSQL database for this test session."""
    base = os.environ.get(PG_ENV)
    if not base:
        yield None
        return
    name = f"fenlo_test_{uuid.uuid4().hex[:12]}"
    asyncio.run(_admin_execute(base, f'CREATE DATABASE "{name}"'))
    url = make_url(base).set(database=name).render_as_string(hide_password=False)
    asyncio.run(_migrate(url))
    yield url
    asyncio.run(_admin_execute(base, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file that each test copies (migrating once is faster)."""
    path = tmp_path_factory.mktemp("template") / "fenlo.db"
    asyncio.run(_migrate(f"sqlite+aiosqlite:///{path}"))
    return path


def _sqlite_url(template: Path, directory: Path) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / "fenlo.db"
    shutil.copy(template, target)
    return f"sqlite+aiosqlite:///{target}"


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(
    request: pytest.FixtureRequest, sqlite_template: Path, postgres_url: str | None, tmp_path: Path
) -> str:
    if request.param == "sqlite":
        return _sqlite_url(sqlite_template, tmp_path / "db")
    if postgres_url is None:
        pytest.skip(PG_SKIP)
    return postgres_url


@pytest.fixture
def redis_url() -> str:
    url = os.environ.get(REDIS_ENV)
    if not url:
        pytest.skip(f"Redis tests need {REDIS_ENV} (e.g. redis://127.0.0.1:6379/0)")
    return url


def make_settings(tmp_path: Path, database_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": tmp_path / "data",
        "host": "127.0.0.1",
        "port": 0,
        "database_url": database_url,
        "auto_migrate": False,
        "metrics_port": 0,
        "jwt_secret": "test-secret-" + uuid.uuid4().hex,
        "shutdown_grace_seconds": 2.0,
        "log_format": "text",
    }
    values.update(overrides)
    return Settings(**values)


_EMBEDDERS: list[Any] = []


def shared_embedders() -> list[Any]:
    """The default embedders, loaded once for the whole test session (models are large)."""
    if not _EMBEDDERS:
        from fenlo_server.knowledge.embedders import MiniLmEmbedder, UseMultilingualEmbedder

        _EMBEDDERS.extend([MiniLmEmbedder(), UseMultilingualEmbedder()])
    return _EMBEDDERS


async def start_app(settings: Settings) -> FenloApp:
    embedders = shared_embedders() if settings.kb_embedders == "minilm,use-multilingual" else None
    app = await FenloApp.create(settings, embedders=embedders)
    await app.start()
    return app


@pytest.fixture
async def app(database_url: str, tmp_path: Path) -> AsyncIterator[FenloApp]:
    server = await start_app(make_settings(tmp_path, database_url))
    yield server
    await server.stop(grace=0)


@pytest.fixture
async def sqlite_app(sqlite_template: Path, tmp_path: Path) -> AsyncIterator[FenloApp]:
    url = _sqlite_url(sqlite_template, tmp_path / "db")
    server = await start_app(make_settings(tmp_path, url))
    yield server
    await server.stop(grace=0)


@pytest.fixture
async def api(app: FenloApp) -> AsyncIterator[Api]:
    async with Api(app) as helper:
        yield helper


@pytest.fixture
async def sqlite_api(sqlite_app: FenloApp) -> AsyncIterator[Api]:
    async with Api(sqlite_app) as helper:
        yield helper


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """One line per skip reason (with a count), instead of one line per test."""
    reasons: dict[str, int] = {}
    for report in terminalreporter.stats.get("skipped", []):
        longrepr = report.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
        reason = reason.removeprefix("Skipped: ")
        reasons[reason] = reasons.get(reason, 0) + 1
    for reason, count in sorted(reasons.items()):
        terminalreporter.write_line(f"SKIPPED {count} tests: {reason}")
