"""Which database errors mean "unreachable, retry" (UNAVAILABLE) rather than a bug."""

from __future__ import annotations

from sqlalchemy.exc import DBAPIError, OperationalError

from fenlo_server.storage.db import connection_lost


class DriverError(Exception):
    def __init__(self, sqlstate: str | None) -> None:
        super().__init__("driver error")
        self.sqlstate = sqlstate


def error(sqlstate: str | None) -> DBAPIError:
    return DBAPIError("SELECT 1", None, DriverError(sqlstate))


def test_a_starting_up_or_shut_down_database_is_unreachable() -> None:
    # 57P03: "the database system is starting up" (seen during a PostgreSQL
    # restart, which asyncpg raises as a plain error); 57P01: admin shutdown;
    # 08006: connection failure.
    for state in ("57P03", "57P01", "08006"):
        assert connection_lost(error(state)), state
    assert connection_lost(OperationalError("SELECT 1", None, DriverError(None)))


def test_a_bad_statement_is_not() -> None:
    for state in ("23505", "42P01", None):
        assert not connection_lost(error(state)), state
