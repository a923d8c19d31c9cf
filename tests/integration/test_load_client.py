"""The load benchmark's kept-alive HTTP/1.1 client (`benchmarks.load_api.KeptAlive`) against the
real API served by uvicorn: statuses, bodies and one connection kept alive throughout (the
benchmark itself runs it in `test_load_smoke.py` with httpx, its default)."""

from __future__ import annotations

import asyncio
from typing import Any

from benchmarks.load_api import KeptAlive

from .test_cli_remote import server  # noqa: F401 - the API on a free port


def test_the_kept_alive_client_reads_writes_and_keeps_its_connection(server: str) -> None:  # noqa: F811
    from backend.bootstrap import ensure_admin
    from core.db import session_scope

    with session_scope() as session:
        token = ensure_admin(session).token

    async def talk() -> tuple[list[Any], bool]:
        client = KeptAlive(f"{server}/api/v1", token)
        try:
            answers = [await client.request("GET", "/runs", {"limit": 2})]
            connection = client.writer
            answers.append(await client.request("POST", "/runs", json_body={"name": "no config"}))
            answers.append(await client.request("GET", "/runs/987654"))
            answers.append(await client.request("GET", "/runs", {"limit": 2}))
            return answers, client.writer is connection
        finally:
            await client.close()

    (listed, refused, missing, again), kept = asyncio.run(talk())
    assert kept, "one connection for every request"
    assert listed.status_code == again.status_code == 200 and listed.is_success
    assert listed.json()["items"] == [] and listed.content == again.content
    assert refused.status_code == 422 and not refused.is_success and "detail" in refused.json()
    assert missing.status_code == 404 and missing.json()["detail"]

    async def stranger() -> Any:
        client = KeptAlive(f"{server}/api/v1", "not-a-token")
        try:
            return await client.request("GET", "/runs")
        finally:
            await client.close()

    assert asyncio.run(stranger()).status_code == 401
