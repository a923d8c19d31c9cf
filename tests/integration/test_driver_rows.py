"""`core.db.driver_rows`: the hot reads' statements on psycopg's connection itself, after a
first run through SQLAlchemy, with the same rows and SQLAlchemy's errors; anything SQLAlchemy
would change on the way (a type's processing, an expanded `IN` list), or a listener to the
engine's statements, keeps a statement on SQLAlchemy."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any
from unittest.mock import patch

import pytest
from sqlalchemy import Integer, String, TypeDecorator, bindparam, cast, event, func, literal
from sqlalchemy import select as sa_select
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DataError, OperationalError

from tests.conftest import POSTGRES_URL
from tests.integration.test_db_pool import _terminate

pytestmark = pytest.mark.postgres


@pytest.fixture
def engine() -> Iterator[Engine]:
    from core.db import make_engine

    engine = make_engine(POSTGRES_URL, autocommit=True)
    yield engine
    engine.dispose()


def _on_the_driver(conn: Connection, stmt: Any, values: dict[str, Any]) -> list[Any]:
    """driver_rows with SQLAlchemy's execute out of reach: it must not be called."""
    from core.db import driver_rows

    with patch.object(Connection, "execute", side_effect=AssertionError("went to SQLAlchemy")):
        return driver_rows(conn, stmt, values)


def test_a_plain_statement_runs_on_the_driver_with_the_rows_sqlalchemy_gave(
    engine: Engine,
) -> None:
    from core.db import driver_rows

    # a parameter given each time, and one the statement holds (a literal value)
    stmt = sa_select(cast(bindparam("n"), Integer) + 1, literal("held"))
    with engine.connect() as conn:
        first = driver_rows(conn, stmt, {"n": 1})
        assert first == [(2, "held")]
        assert _on_the_driver(conn, stmt, {"n": 41}) == [(42, "held")]
        assert _on_the_driver(conn, stmt, {"n": 1}) == first
        assert type(_on_the_driver(conn, stmt, {"n": 1})[0]) is tuple


def test_what_sqlalchemy_would_change_stays_on_sqlalchemy(engine: Engine) -> None:
    from core.db import driver_rows

    class Shouted(TypeDecorator[str]):
        impl = String
        cache_ok = True

        def process_result_value(self, value: Any, dialect: Any) -> Any:
            return None if value is None else value.upper()

    class Trimmed(TypeDecorator[str]):
        impl = String
        cache_ok = True

        def process_bind_param(self, value: Any, dialect: Any) -> Any:
            return None if value is None else value.strip()

    read = sa_select(cast(bindparam("s", type_=String), Shouted))
    written = sa_select(bindparam("s", type_=Trimmed))
    listed = sa_select(literal(1, Integer)).where(
        literal(2, Integer).in_(bindparam("xs", expanding=True))
    )
    with engine.connect() as conn:
        for _ in range(2):
            assert driver_rows(conn, read, {"s": "quiet"}) == [("QUIET",)]
            assert driver_rows(conn, written, {"s": "  padded "}) == [("padded",)]
            assert driver_rows(conn, listed, {"xs": [1, 2, 3]}) == [(1,)]
            assert driver_rows(conn, listed, {"xs": [5]}) == []
        for stmt in (read, written, listed):
            with pytest.raises(AssertionError, match="went to SQLAlchemy"):
                _on_the_driver(conn, stmt, {"s": "x", "xs": [1]})


def test_a_listener_to_the_statements_sees_every_one(engine: Engine) -> None:
    from core.db import driver_rows

    stmt = sa_select(cast(bindparam("n"), Integer) * 2)
    with engine.connect() as conn:
        assert driver_rows(conn, stmt, {"n": 2}) == [(4,)]  # planned for the driver
        sent: list[str] = []
        event.listen(engine, "before_cursor_execute", lambda *a: sent.append(a[2]))
        assert driver_rows(conn, stmt, {"n": 3}) == [(6,)]
    assert len(sent) == 1 and "CAST" in sent[0]


def test_errors_on_the_driver_are_sqlalchemys_and_a_lost_connection_leaves_the_pool(
    engine: Engine,
) -> None:
    from core.db import closed_by_server, driver_rows

    narrow = sa_select(cast(bindparam("n"), Integer))
    pid = sa_select(func.pg_backend_pid())
    with engine.connect() as conn:
        driver_rows(conn, narrow, {"n": 1})
        with pytest.raises(DataError, match="out of range"):  # as SQLAlchemy raises it
            _on_the_driver(conn, narrow, {"n": 2**40})
        first = driver_rows(conn, pid, {})[0][0]
        assert _on_the_driver(conn, pid, {}) == [(first,)]
        raw = conn.connection.dbapi_connection
        _terminate(first)
        deadline = time.monotonic() + 30
        while not closed_by_server(raw):
            assert time.monotonic() < deadline, "the closed connection never became readable"
            time.sleep(0.05)
        with pytest.raises(OperationalError) as lost:
            _on_the_driver(conn, pid, {})
        assert lost.value.connection_invalidated
        assert conn.invalidated
    with engine.connect() as conn:  # the pool opens a new one
        assert driver_rows(conn, pid, {})[0][0] != first


def test_sqlite_statements_go_through_sqlalchemy(tmp_path: Any) -> None:
    from core.db import _DRIVEN, driver_rows, make_engine

    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    stmt = sa_select(cast(bindparam("n"), Integer) + 1)
    try:
        with engine.connect() as conn:
            assert driver_rows(conn, stmt, {"n": 1}) == [(2,)]
            assert driver_rows(conn, stmt, {"n": 2}) == [(3,)]
        assert stmt not in _DRIVEN
    finally:
        engine.dispose()
