"""Async SQLAlchemy engine and transactional sessions for SQLite and PostgreSQL.

SQLite runs in WAL mode with a busy timeout and foreign keys on; a write transaction can ask for
BEGIN IMMEDIATE so that it takes the write lock up front (a deferred transaction that reads and
then writes can fail with SQLITE_BUSY without waiting). Database errors leave a session as
ServiceErrors with gRPC codes, so a handler never leaks a driver message to a caller.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import grpc
from sqlalchemy import DateTime, Dialect, Table, event, insert
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.types import TypeDecorator

from services.common.errors import ServiceError
from tunelab.common.v1 import errors_pb2

log = logging.getLogger(__name__)

_IMMEDIATE = "tunelab_sqlite_begin_immediate"
BUSY_TIMEOUT_SECONDS = 5.0


# Constraint and index names every service's metadata uses, so migrations can name them.
NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """An aware UTC datetime on both databases (SQLite stores it naive, in UTC)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: pass an aware one (datetime.now(UTC))")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def async_url(url: str | URL) -> URL:
    """Accept plain sqlite:// and postgresql:// URLs and pick the async driver for them."""
    parsed = make_url(url)
    if parsed.drivername in ("sqlite", "sqlite+pysqlite"):
        return parsed.set(drivername="sqlite+aiosqlite")
    if parsed.drivername in ("postgresql", "postgres", "postgresql+psycopg2"):
        return parsed.set(drivername="postgresql+asyncpg")
    return parsed


class Database:
    def __init__(self, url: str | URL, **engine_kwargs: Any) -> None:
        self.url = async_url(url)
        self.is_sqlite = self.url.get_backend_name() == "sqlite"
        if self.is_sqlite:
            # Waiting for SQLite's write lock stays below callers' 10 s deadline: a caller that
            # has given up must not see its change land afterwards.
            engine_kwargs.setdefault("connect_args", {"timeout": BUSY_TIMEOUT_SECONDS})
            if self.url.database and self.url.database != ":memory:":
                Path(self.url.database).parent.mkdir(parents=True, exist_ok=True)
        else:
            engine_kwargs.setdefault("pool_pre_ping", True)
        # Statement parameters stay out of error texts: they may hold secrets or user data.
        engine_kwargs.setdefault("hide_parameters", True)
        self.engine: AsyncEngine = create_async_engine(self.url, **engine_kwargs)
        if self.is_sqlite:
            event.listen(self.engine.sync_engine, "connect", _sqlite_connect)
            event.listen(self.engine.sync_engine, "begin", _sqlite_begin)
        self._sessions = async_sessionmaker(self.engine, expire_on_commit=False)

    @asynccontextmanager
    async def session(self, *, write: bool = False) -> AsyncIterator[AsyncSession]:
        """A transaction: committed when the block ends, rolled back when it raises.

        `write=True` takes SQLite's write lock at BEGIN; on PostgreSQL it changes nothing.
        """
        try:
            async with self._sessions() as session, session.begin():
                if write and self.is_sqlite:
                    await session.connection(execution_options={_IMMEDIATE: True})
                yield session
        except IntegrityError as exc:
            log.warning("integrity error", extra={"error": str(exc.orig)})
            raise ServiceError(
                grpc.StatusCode.ABORTED,
                "the change conflicts with another one made at the same time; retry it",
                errors_pb2.ERROR_REASON_CONFLICT,
            ) from exc
        except (OperationalError, InterfaceError, OSError, TimeoutError) as exc:
            raise _unavailable(exc) from exc
        except (DBAPIError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            # The rest by SQLSTATE class (SQLAlchemy wraps most asyncpg errors in a bare
            # DBAPIError; a raw COPY raises asyncpg's own).
            sqlstate = _sqlstate(exc)
            if sqlstate[:2] in _GONE or _lost_connection(exc):
                raise _unavailable(exc) from exc
            if sqlstate.startswith("22"):
                log.warning("data refused by the database", extra={"sqlstate": sqlstate})
                raise ServiceError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "a value cannot be stored: it holds a NUL character, or a number or time "
                    "out of range; fix it and retry",
                    errors_pb2.ERROR_REASON_INVALID_ARGUMENT,
                ) from exc
            raise

    async def close(self) -> None:
        await self.engine.dispose()


# SQLSTATE classes of a server that is gone or going: connection exception, operator
# intervention (shutdown, restart, starting up), insufficient resources.
_GONE = {"08", "57", "53"}


def _unavailable(exc: BaseException) -> ServiceError:
    log.error("database unavailable", extra={"error": str(exc)})
    return ServiceError(
        grpc.StatusCode.UNAVAILABLE,
        "the database is unavailable or busy; retry in a moment",
        errors_pb2.ERROR_REASON_DEPENDENCY_UNAVAILABLE,
    )


def _sqlstate(exc: BaseException) -> str:
    """The SQLSTATE of the driver's error behind `exc` ('' when there is none)."""
    seen: BaseException | None = exc
    while seen is not None:
        state = getattr(seen, "sqlstate", None)
        if isinstance(state, str) and state:
            return state
        seen = seen.__cause__ or getattr(seen, "orig", None)
    return ""


def _lost_connection(exc: BaseException) -> bool:
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, asyncpg.InterfaceError | asyncpg.PostgresConnectionError):
            return True
        seen = seen.__cause__
    return False


async def insert_rows(
    session: AsyncSession,
    table: Table,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    key: Sequence[str] = (),
) -> list[int]:
    """Insert rows (values of `columns`, in order). With `key` (columns that tell the rows
    apart), returns the new rows' ids (the `id` column), in the rows' order.

    On PostgreSQL the rows go in by binary COPY, the ids drawn from the table's sequence first:
    several times cheaper, for the client and the server alike, than SQLAlchemy's multi-row
    INSERT ... VALUES (bind processing per value, a long statement to parse) or an INSERT from
    arrays (asyncpg checks every array element against abstract base classes). Values go to
    the driver as they are (no type's bind processing): they must be what the column takes.
    A unique key violated is an IntegrityError, as for any statement.
    """
    if not rows:
        return []
    connection = await session.connection()
    if connection.dialect.name != "postgresql":
        given = [dict(zip(columns, row, strict=True)) for row in rows]
        statement = insert(table)
        if not key:
            await connection.execute(statement, given)
            return []
        # RETURNING with the key, matched back: asking for the ids in the rows' order costs
        # SQLite one statement per row.
        returned = statement.returning(table.c.id, *(table.c[name] for name in key))
        ids = {tuple(row[1:]): row[0] for row in await connection.execute(returned, given)}
        return [ids[tuple(values[name] for name in key)] for values in given]
    records: Iterable[Sequence[Any]] = rows
    new_ids: list[int] = []
    if key:
        found = await connection.exec_driver_sql(
            "SELECT nextval(pg_get_serial_sequence($1, 'id')) FROM generate_series(1, $2)",
            (table.name, len(rows)),
        )
        new_ids = [row[0] for row in found]
        records = ((i, *row) for i, row in zip(new_ids, rows, strict=True))
        columns = ["id", *columns]
    driver = (await connection.get_raw_connection()).driver_connection
    assert driver is not None
    try:
        await driver.copy_records_to_table(table.name, records=records, columns=list(columns))
    except asyncpg.IntegrityConstraintViolationError as exc:
        raise IntegrityError(f"COPY {table.name}", None, exc) from exc
    return new_ids


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # Let SQLAlchemy, not the driver, decide when transactions begin (see _sqlite_begin).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    for pragma in (
        "journal_mode=WAL",
        f"busy_timeout={int(BUSY_TIMEOUT_SECONDS * 1000)}",
        "foreign_keys=ON",
        "synchronous=NORMAL",
    ):
        cursor.execute(f"PRAGMA {pragma}")
    cursor.close()


def _sqlite_begin(conn: Connection) -> None:
    immediate = conn.get_execution_options().get(_IMMEDIATE, False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")
