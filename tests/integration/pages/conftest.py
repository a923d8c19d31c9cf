"""Fixtures of the page tests: Streamlit's AppTest runs the pages in this process against a live
API (uvicorn in a thread) on SQLite with the real broker. No worker runs unless a test starts
one: what a worker would write (inspections, scans, finished runs) is written to the database.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.conftest import StudioEnv, make_studio_env, migrate
from tests.integration.servers import api_in_thread


@dataclass
class LiveApi:
    """A studio whose API listens at `url`; `token` is the first admin's (studio administrator,
    owner of team "default")."""

    env: StudioEnv
    url: str
    token: str


@pytest.fixture(scope="module")
def live_api(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveApi]:
    """One studio per test module; the pages find its API through DS_API_URL."""
    from backend.bootstrap import ensure_admin
    from core.db import session_scope

    env = make_studio_env(
        tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1]), "sqlite"
    )
    with pytest.MonkeyPatch.context() as mp:
        env.apply(mp)
        migrate()
        with session_scope() as session:
            token = ensure_admin(session).token
        with api_in_thread() as url:
            mp.setenv("DS_API_URL", url)
            yield LiveApi(env, url, token)
