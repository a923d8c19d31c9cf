"""What one read costs the API: CPU per request, and where it goes (pyinstrument).

    .venv/bin/python -m benchmarks.profile_api [--database sqlite|postgres] [--requests 400]
        [--profile DIR]

Builds a throw-away studio (like benchmarks/load_api.py: fresh database, Redis db, schema, first
admin), seeds `--runs` finished runs and one run with a `--points`-point `loss` series, and calls
the app in this process through httpx's ASGI transport (no sockets, no uvicorn: what is left is
the API's own work: middleware, dependencies, authentication, the database, serialisation), one
request at a time:

- `GET /runs?limit=20`, `GET /runs/{id}`, `GET /runs/{id}/metrics?names=loss` (every point of
  the `--points` series), and `...?names=loss&max_points=1000` of a 10,000-point series (as the
  pages ask: downsampled, from its rollups);
- each the way scripts call it (`Authorization: Bearer <token>`) and the way the pages do (the
  same token kept in the Streamlit session, plus `X-Team-Id`);
- the run and the 1,000 points again with `If-None-Match` naming the body's `ETag` (what a
  poller that holds the body sends: 304, no body);
- with `--writes`, the two writes scripts and the pages repeat most: `POST /runs` (a small MLP
  teacher and a tabular dataset uploaded first and inspected in this process, as a worker would)
  and `POST /runs/{id}/cancel` of the queued run it made (no worker takes it: cancelled at once).

It prints the CPU time of this process per request (`time.process_time`, after a warm-up) and,
with `--profile DIR`, writes one pyinstrument text profile per endpoint into DIR.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.load_api import (  # noqa: E402
    SEED_SERIES,
    admin_token,
    make_inputs,
    run_config,
    seed,
    studio,
)


async def measure(
    app: Any, headers: dict[str, str], path: str, params: dict[str, Any], n: int
) -> float:
    """CPU ms of this process per request: the least of 15 rounds of `n / 15` requests, after 20
    of warm-up (the least: other processes share the machine's cores and caches)."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://testserver/api/v1", headers=headers
    ) as client:
        for _ in range(20):
            _ok(await client.get(path, params=params))
        rounds = []
        for _ in range(15):
            started = time.process_time()
            for _ in range(max(1, n // 15)):
                _ok(await client.get(path, params=params))
            rounds.append(1000 * (time.process_time() - started) / max(1, n // 15))
        return min(rounds)


def _ok(response: httpx.Response) -> None:
    """A 2xx, or the 304 of a conditional read; anything else stops the benchmark."""
    if response.status_code != 304:
        response.raise_for_status()


async def etag_of(app: Any, headers: dict[str, str], path: str, params: dict[str, Any]) -> str:
    """The `ETag` the read answers with now ("" from a server without them)."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://testserver/api/v1", headers=headers
    ) as client:
        return (await client.get(path, params=params)).headers.get("ETag", "")


async def measure_writes(
    app: Any, headers: dict[str, str], tmp: Path, n: int
) -> tuple[float, float]:
    """CPU ms of this process per `POST /runs` and per `POST /runs/{id}/cancel` of the run it
    made: the least of 15 rounds of `n / 15` creates, then of their cancels, after 20 of each."""
    from worker.tasks import inspect_model, scan_dataset

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://testserver/api/v1", headers=headers
    ) as client:
        model_file, data_file = make_inputs(tmp)
        with model_file.open("rb") as fh:
            files = {"file": ("teacher.pt2", fh)}
            model = await client.post("/models", files=files, data={"name": "teacher"})
        with data_file.open("rb") as fh:
            files = {"file": ("table.npz", fh)}
            dataset = await client.post("/datasets", files=files, data={"name": "table"})
        inspect_model(model.json()["id"])  # what a worker does with the uploads
        scan_dataset(dataset.json()["id"])
        body = run_config(model.json()["id"], dataset.json()["id"], "profiled", 1)

        async def creates(count: int) -> list[int]:
            made = [await client.post("/runs", json=body) for _ in range(count)]
            for response in made:
                response.raise_for_status()
            return [response.json()["id"] for response in made]

        async def cancels(ids: list[int]) -> None:
            for run_id in ids:
                (await client.post(f"/runs/{run_id}/cancel")).raise_for_status()

        await cancels(await creates(20))
        per_round = max(1, n // 15)
        created, cancelled = [], []
        for _ in range(15):
            started = time.process_time()
            ids = await creates(per_round)
            created.append(1000 * (time.process_time() - started) / per_round)
            started = time.process_time()
            await cancels(ids)
            cancelled.append(1000 * (time.process_time() - started) / per_round)
        return min(created), min(cancelled)


def baseline_ms(n: int) -> float:
    """CPU ms per request of the client side alone (httpx to a bare ASGI app), subtracted."""

    async def bare(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    return asyncio.run(measure(bare, {}, "/", {}, n))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database", choices=["postgres", "sqlite"], default="sqlite")
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--points", type=int, default=1000)
    parser.add_argument("--profile", type=Path, help="Write pyinstrument profiles here.")
    parser.add_argument(
        "--writes", action="store_true", help="Also POST /runs and its cancel (imports torch)."
    )
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="ds-profile-") as tmp_name:
        with studio(Path(tmp_name), args.database):
            token = admin_token()
            # one run with a `--points` series, one with a SEED_SERIES (10,000) one
            big_run, long_run = seed(None, None, args.runs, args.points + SEED_SERIES, args.points)
            from sqlalchemy import select

            from backend.app import create_app
            from core.db import session_scope
            from core.db.tables import Membership

            with session_scope() as session:
                team_id = session.scalars(select(Membership.team_id)).first()
            app = create_app()
            endpoints: list[tuple[str, str, dict[str, Any]]] = [
                ("GET /runs", "/runs", {"limit": 20}),
                ("GET /runs/{id}", f"/runs/{big_run}", {}),
                ("GET /runs/{id}/metrics", f"/runs/{big_run}/metrics", {"names": "loss"}),
                (
                    "GET /runs/{id}/metrics?max_points=1000 (10k points)",
                    f"/runs/{long_run}/metrics",
                    {"names": "loss", "max_points": 1000},
                ),
            ]
            callers = {
                "token (scripts)": {"Authorization": f"Bearer {token}"},
                "token + X-Team-Id (pages)": {
                    "Authorization": f"Bearer {token}",
                    "X-Team-Id": str(team_id),
                },
            }
            client_ms = baseline_ms(args.requests)
            print(
                f"\nAPI CPU per request, {args.database}, in-process ASGI, {args.requests} "
                f"requests each (client side, {client_ms:.2f} ms, subtracted); metrics: a "
                f"{args.points}-point series\n"
            )
            print("| endpoint | " + " | ".join(callers) + " |")
            print("| --- |" + " ---: |" * len(callers))
            for label, path, params in endpoints:
                cells = []
                for headers in callers.values():
                    ms = asyncio.run(measure(app, headers, path, params, args.requests))
                    cells.append(f"{ms - client_ms:.2f} ms")
                print(f"| `{label}` | " + " | ".join(cells) + " |")
            for label, path, params in endpoints[1:3]:  # a poller that holds the body: 304
                cells = []
                for headers in callers.values():
                    etag = asyncio.run(etag_of(app, headers, path, params))
                    if not etag:
                        cells.append("no ETag")
                        continue
                    held = headers | {"If-None-Match": etag}
                    ms = asyncio.run(measure(app, held, path, params, args.requests))
                    cells.append(f"{ms - client_ms:.2f} ms")
                print(f"| `{label}`, If-None-Match (304) | " + " | ".join(cells) + " |")
            if args.writes:
                cells = []
                for headers in callers.values():
                    writes = measure_writes(app, headers, Path(tmp_name), args.requests)
                    cells.append(tuple(ms - client_ms for ms in asyncio.run(writes)))
                for i, label in enumerate(("POST /runs", "POST /runs/{id}/cancel (queued)")):
                    print(f"| `{label}` | " + " | ".join(f"{c[i]:.2f} ms" for c in cells) + " |")
            if args.profile:
                import anyio.to_thread
                from pyinstrument import Profiler
                from pyinstrument.renderers import ConsoleRenderer

                async def inline(func: Any, *a: Any, **_: Any) -> Any:
                    return func(*a)

                # pyinstrument samples one thread: run sync routes and dependencies inline
                anyio.to_thread.run_sync = inline  # type: ignore[assignment]
                args.profile.mkdir(parents=True, exist_ok=True)
                for label, path, params in endpoints:
                    profiler = Profiler(interval=0.0002, async_mode="disabled")
                    profiler.start()
                    asyncio.run(
                        measure(app, callers["token (scripts)"], path, params, args.requests)
                    )
                    profiler.stop()
                    name = label.split(" (")[0].replace("?", "_").replace("=", "")
                    name = name.replace(" ", "_").replace("/", "_").replace("{id}", "id")
                    (args.profile / f"{args.database}{name}.txt").write_text(
                        profiler.output_text(unicode=False, color=False, show_all=False)
                    )
                    (args.profile / f"{args.database}{name}.flat.txt").write_text(
                        profiler.output(
                            ConsoleRenderer(flat=True, show_all=True, time="percent_of_total")
                        )
                    )
                if args.writes:  # the creates and their cancels, in one profile
                    profiler = Profiler(interval=0.0002, async_mode="disabled")
                    profiler.start()
                    writes = measure_writes(
                        app, callers["token (scripts)"], Path(tmp_name), args.requests
                    )
                    asyncio.run(writes)
                    profiler.stop()
                    (args.profile / f"{args.database}POST__runs.txt").write_text(
                        profiler.output_text(unicode=False, color=False, show_all=False)
                    )
                    (args.profile / f"{args.database}POST__runs.flat.txt").write_text(
                        profiler.output(
                            ConsoleRenderer(flat=True, show_all=True, time="percent_of_total")
                        )
                    )
                print(f"\nprofiles in {args.profile}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
