"""The PostgreSQL pool hands out no connection the server has closed, without a round trip to
find out (`core.db.closed_by_server`, a `checkout` listener in place of a pre-ping)."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import event, text

from tests.conftest import POSTGRES_URL

pytestmark = pytest.mark.postgres


def _terminate(pid: int) -> None:
    """End the server side of connection `pid` and wait until the server says it is gone."""
    from sqlalchemy import create_engine

    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            assert conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar()
            while conn.execute(
                text("SELECT count(*) FROM pg_stat_activity WHERE pid = :pid"), {"pid": pid}
            ).scalar():
                time.sleep(0.05)
    finally:
        admin.dispose()


def test_a_pooled_connection_the_server_closed_is_replaced_without_a_failed_request() -> None:
    from core.db import closed_by_server, make_engine

    engine = make_engine(POSTGRES_URL)
    sent: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda *a: sent.append(a[2]))
    try:
        with engine.connect() as conn:
            first = conn.execute(text("SELECT pg_backend_pid()")).scalar()
            raw = conn.connection.dbapi_connection
        assert not closed_by_server(raw)  # idle in the pool, the server still there
        _terminate(first)
        deadline = time.monotonic() + 30
        while not closed_by_server(raw):  # the server's goodbye reaches the socket
            assert time.monotonic() < deadline, "the closed connection never became readable"
            time.sleep(0.05)
        sent.clear()
        with engine.connect() as conn:  # the pool's only connection is the closed one
            second = conn.execute(text("SELECT pg_backend_pid()")).scalar()
        assert second != first
        assert sent == ["SELECT pg_backend_pid()"], "no statement to check the connection"
        with engine.connect() as conn:  # and the new one is kept: no check by round trip
            assert conn.execute(text("SELECT pg_backend_pid()")).scalar() == second
    finally:
        engine.dispose()
