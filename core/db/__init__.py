"""Database access: the SQLAlchemy engine, sessions and the declarative base.

All tables live in `core.db.tables`. Services take a `Session`; routers get one through
`SessionDep` (backend.deps). Workers open their own with `session_scope()`.
"""

from __future__ import annotations

import json
import logging
import os
import select
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any, NamedTuple, TypeVar

import orjson
from sqlalchemy import MetaData, create_engine, event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, DisconnectionError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.sql.expression import Executable

from core.settings import get_settings

log = logging.getLogger(__name__)
T = TypeVar("T")

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


def private_sqlite_files(database: str | None) -> None:
    """Make an SQLite database file and its WAL and shared-memory files readable by their owner
    only (0600), like credentials.json and the secret key: a copy of them is the studio."""
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    for suffix in ("", "-wal", "-shm"):
        try:
            os.chmod(database + suffix, 0o600)
        except FileNotFoundError:
            pass
        except OSError as exc:  # not ours to change (another owner): say so, do not fail
            log.warning("could not make %s%s private: %s", database, suffix, exc)


# JSON columns (a run's config and summary, a model's layer table) are written and read with
# orjson, several times faster than the standard library's json, which SQLAlchemy uses by
# default: a launch decodes its teacher's and dataset's rows and encodes the run's config. What
# orjson will not write (a type it does not know) or read (a NaN or Infinity token that
# json.dumps wrote into an SQLite file) goes to json as before. orjson writes NaN as null.
_ORJSON = orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY


def json_dumps(value: Any) -> str:
    try:
        return orjson.dumps(value, option=_ORJSON).decode()
    except TypeError:
        return json.dumps(value)


def json_loads(text: str | bytes) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


def make_engine(url: str, autocommit: bool = False) -> Engine:
    """The engine of `url`. `autocommit` (PostgreSQL): a pool of its own whose connections run
    each statement on its own, set once per connection (`get_read_engine`)."""
    json_io: dict[str, Any] = {"json_serializer": json_dumps, "json_deserializer": json_loads}
    if url.startswith("sqlite"):
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30}, **json_io
        )
        database = engine.url.database

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()
            private_sqlite_files(database)

        return engine
    # per process: the API runs DS_API_WORKERS of them (4 in docker-compose), so 4 x (15 + 5)
    # stays under PostgreSQL's default max_connections of 100 with room for the workers
    if autocommit:
        engine = create_engine(
            url, pool_size=3, max_overflow=2, isolation_level="AUTOCOMMIT", **json_io
        )
    else:
        engine = create_engine(url, pool_size=5, max_overflow=10, **json_io)

    @event.listens_for(engine, "checkout")
    def _alive(dbapi_conn, _record, _proxy) -> None:
        # a pooled connection the server closed (a restart, an idle timeout, a cut network
        # link) is not handed out: the pool opens a new one instead (DisconnectionError). This
        # replaces a pre-ping, which is a round trip before every request's first statement
        if closed_by_server(dbapi_conn):
            raise DisconnectionError("the database closed this pooled connection")

    @event.listens_for(engine, "connect")
    def _exact_floats(dbapi_conn, _record) -> None:
        # floats come as text: the shortest that reads back as the same double from PostgreSQL
        # 12 on (17 digits before); a server or role set below 1 would round every value read,
        # and the metrics' JSON written by the database (backend/runs/service.py)
        with dbapi_conn.cursor() as cur:
            cur.execute("SET extra_float_digits = 3")
        dbapi_conn.commit()

    return engine


def closed_by_server(dbapi_conn: Any) -> bool:
    """Whether the server closed this idle psycopg connection, or said something unasked (as
    it does before it closes one): then its socket has something to read. No round trip."""
    if dbapi_conn.closed or dbapi_conn.broken:
        return True
    try:
        readable = select.poll()
        readable.register(dbapi_conn.pgconn.socket, select.POLLIN)
        return bool(readable.poll(0))
    except Exception:  # noqa: BLE001 - no socket any more (psycopg: "the connection is lost")
        return True


@lru_cache
def get_engine() -> Engine:
    return make_engine(get_settings().database_url)


@lru_cache
def get_read_engine() -> Engine:
    """The engine of the API's polled reads (`backend.deps.read_as`). On PostgreSQL a pool of
    autocommit connections: no BEGIN before a read's first statement and no ROLLBACK after its
    last, and no switching a pooled connection to autocommit and back around each request
    (about a twentieth of a small read's CPU). SQLite begins no transaction for a read anyway:
    there it is `get_engine()`."""
    settings = get_settings()
    if settings.database_url.startswith("sqlite"):
        return get_engine()
    return make_engine(settings.database_url, autocommit=True)


@lru_cache
def get_sessionmaker() -> sessionmaker[Session]:
    return sessionmaker(get_engine(), expire_on_commit=False)


@contextmanager
def session_scope() -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    session = get_sessionmaker()()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def reset_caches() -> None:
    """Forget the cached settings, engine and sessionmaker (tests switch databases)."""
    for cached in (get_read_engine, get_engine):
        if cached.cache_info().currsize:
            cached().dispose()
        cached.cache_clear()
    get_sessionmaker.cache_clear()
    get_settings.cache_clear()


def with_db_retry(fn: Callable[[], T], *, attempts: int = 30, first_delay: float = 0.5) -> T:
    """Run `fn` (which opens its own session), retrying while the database is unreachable."""
    delay = first_delay
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except (OperationalError, DBAPIError) as exc:
            transient = isinstance(exc, OperationalError) or exc.connection_invalidated
            if attempt == attempts or not transient:
                raise
            log.warning(
                "database unavailable (%s); retry %d in %.1fs",
                exc.__class__.__name__,
                attempt,
                delay,
            )
            time.sleep(delay)
            delay = min(delay * 2, 10.0)
    raise AssertionError("unreachable")


# -- hot reads on the driver --------------------------------------------------------------------
#
# SQLAlchemy's `Connection.execute` costs about 90 us of CPU per statement on top of psycopg's
# own (its execution context, parameter handling and result set-up): as much as the database's
# work for the small reads the pages poll, which take two or three statements each. A statement
# whose parameters and columns SQLAlchemy passes on unchanged (no type processing either way, no
# parameters expanded per call) is run on psycopg's connection itself after its first run
# through SQLAlchemy, with the SQL and fixed parameters SQLAlchemy sent then. Where anything
# listens to the engine's statements (the tests' `sql_sent`), or on other drivers, it always
# goes through SQLAlchemy.


class _Driven(NamedTuple):
    sql: str  # as SQLAlchemy sent it to psycopg
    fixed: dict[str, Any]  # parameters the statement holds itself (literal values)


# statement -> how to run it on the driver, or None where it may not be; the statements given are
# built once (module constants and cached builders), and the table stops growing at its limit
_DRIVEN: dict[Any, _Driven | None] = {}
_DRIVEN_LIMIT = 512


def driver_rows(connection: Connection, stmt: Executable, values: dict[str, Any]) -> list[Any]:
    """The rows of `stmt` run with `values` on `connection`, as tuples (the driver's own rows
    where no column needs SQLAlchemy's processing; see above). A database error is raised as
    SQLAlchemy raises it (`sqlalchemy.exc.OperationalError` and so on), and a connection lost
    meanwhile is dropped from the pool, as `Connection.execute` does."""
    psycopg = connection.dialect.driver == "psycopg"
    plan = _DRIVEN.get(stmt) if psycopg else None
    if plan is not None and not (connection._has_events or connection.engine._has_events):
        raw = connection.connection.driver_connection
        params = plan.fixed | values if plan.fixed else values
        try:
            return raw.execute(plan.sql, params).fetchall()  # type: ignore[union-attr]
        except connection.dialect.loaded_dbapi.Error as exc:
            raise _as_sqlalchemy_error(connection, plan.sql, params, exc) from exc
    result = connection.execute(stmt, values)
    try:
        plain = result._metadata._effective_processors is None  # type: ignore[attr-defined]
        if psycopg and stmt not in _DRIVEN and len(_DRIVEN) < _DRIVEN_LIMIT:
            _DRIVEN[stmt] = _driven(connection, result, values) if plain else None
        return list(result.cursor.fetchall()) if plain else [tuple(row) for row in result]
    finally:
        result.close()


def _driven(connection: Connection, result: Any, values: dict[str, Any]) -> _Driven | None:
    """How `result`'s statement may run on the driver, or None where it may not."""
    context = result.context
    compiled = context.compiled
    if (
        compiled is None
        or context.executemany
        or compiled._bind_processors  # a type that changes a parameter on its way
        or compiled.post_compile_params  # expanded per call (IN lists)
        or compiled.literal_execute_params
        or any(bind.callable is not None for bind in compiled.binds.values())
    ):
        return None
    sent = context.compiled_parameters[0]
    return _Driven(context.statement, {k: v for k, v in sent.items() if k not in values})


def _as_sqlalchemy_error(
    connection: Connection, sql: str, params: dict[str, Any], exc: Any
) -> Exception:
    """`exc`, a psycopg error, as SQLAlchemy raises it; a lost connection is invalidated."""
    dialect = connection.dialect
    lost = dialect.is_disconnect(exc, connection.connection.dbapi_connection, None)
    if lost:
        connection.invalidate(exc)
    return DBAPIError.instance(
        sql,
        params,
        exc,
        dialect.loaded_dbapi.Error,
        connection_invalidated=lost,
        dialect=dialect,
    )
