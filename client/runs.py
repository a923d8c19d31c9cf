"""Runs: plan the layer pairs, launch, list, follow, cancel, retry; metrics and the config."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import httpx
from pydantic import BaseModel, Field

from client.base import Out
from client.errors import ApiError, retry_after
from client.events import EventsApi
from client.models import Inspection
from client.pagination import PAGE_SIZE, Page, walk
from core.trained_models import trained_models

TERMINAL_RUN_STATES = ("succeeded", "failed", "cancelled")
WAITING_KEY = "waiting"  # core.jobs.WAITING_KEY (the SDK does not import Celery)
LIVE_SAMPLES_KEY = "live_samples"  # worker.reporting.LIVE_KEY: samples while a run trains
PLAN_TIMEOUT_S = 150.0  # past the server's own limit (DS_INSPECT_TIMEOUT_S), so its message wins


class SuggestedPair(Out):
    teacher: str
    student: str
    teacher_shape: list[Any] | None = None
    student_shape: list[Any] | None = None


class Pending(Out):
    """202 of plan / create_run / retry_run: a worker is building the student's layer table."""

    status: str = "pending"
    job_id: str = ""
    detail: str = "a worker is building the student's layer table"
    retry_after_s: float = 2.0


PendingFn = Callable[[Pending, float], None]  # (what the API said, seconds waited so far)


class Plan(Out):
    teacher: Inspection
    student: Inspection
    suggested_pairs: list[SuggestedPair] = Field(default_factory=list)
    teacher_params: int | None = None
    student_params: int | None = None


class Run(Out):
    id: int
    name: str
    status: str = "queued"
    queue: str | None = None
    progress: float = 0.0
    epoch: int = 0
    step: int = 0
    total_steps: int = 0
    throughput: float | None = None
    eta_seconds: float | None = None
    summary: dict[str, Any] = Field(default_factory=dict)
    error: str | None = None
    attempts: int = 0
    cancel_requested: bool = False
    teacher_model_id: int | None = None
    dataset_id: int | None = None
    worker: str | None = None
    heartbeat_at: datetime | None = None
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    config: dict[str, Any] = Field(default_factory=dict)

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_RUN_STATES

    @property
    def waiting(self) -> str | None:
        """What a queued run waits for, when it says ("waiting for 4 free GPUs (1 of 4 free on
        worker gpu@box:12)", or for a worker with that many GPUs: `worker/gpus.py`)."""
        note = self.summary.get(WAITING_KEY) if self.status == "queued" else None
        return str(note) if note else None

    def live_samples(self) -> tuple[int | None, list[Any]]:
        """(epoch, samples) the worker keeps in the summary while the run trains
        (`live_samples`: a language model's continuations next to the teacher's after that
        epoch, 0-based); (None, []) when it has none."""
        live = (self.summary or {}).get(LIVE_SAMPLES_KEY)
        if not isinstance(live, dict) or not isinstance(live.get("samples"), list):
            return None, []
        epoch = live.get("epoch")
        return (epoch if isinstance(epoch, int) else None), live["samples"]

    def trained_models(self) -> list[dict[str, Any]]:
        """Every model the run trained, from its summary (`core.trained_models`): label
        (`student`, `peer 1`, `generation 2`, `int8`, ...), top1, params, size_bytes, flops,
        cpu_latency_ms, val_prefix, artifacts; none before it succeeds."""
        return trained_models(self.summary)


class Series(Out):
    steps: list[int] = Field(default_factory=list)
    values: list[float | None] = Field(default_factory=list)
    epochs: list[int] = Field(default_factory=list)
    total: int = 0  # points of the series in all (after since_step), however many were sent
    downsampled: bool = False  # fewer points than `total` were sent (max_points)


class Metrics(Out):
    series: dict[str, Series] = Field(default_factory=dict)


class RunsApi(EventsApi):
    """`/runs` (and its live events, `EventsApi`)."""

    def plan(
        self,
        teacher_model_id: int,
        dataset_id: int | None = None,
        student: dict[str, Any] | None = None,
        *,
        wait: float = PLAN_TIMEOUT_S,
        on_pending: PendingFn | None = None,
    ) -> Plan:
        """Inspect teacher and student side by side and suggest layer pairs (stage ends).

        A zoo student's layer table is built by a worker; until it is, the API answers 202 and
        this asks again as it says, up to `wait` seconds, calling `on_pending(pending, waited)`
        each time (the pages show it as progress)."""
        body: dict[str, Any] = {"teacher_model_id": teacher_model_id}
        if dataset_id is not None:
            body["dataset_id"] = dataset_id
        if student is not None:
            body["student"] = student
        response = self._until_built(
            lambda: self._send("POST", "/runs/plan", json=body), wait, on_pending
        )
        return Plan.model_validate(response.json())

    def create_run(
        self,
        config: dict[str, Any] | BaseModel,
        *,
        wait: float = PLAN_TIMEOUT_S,
        on_pending: PendingFn | None = None,
    ) -> Run:
        """Launch a run from a run config (a dict, or a `RunConfig`); returns it queued.

        Layer pairs are checked against the student's layer table: while a worker builds it,
        nothing is saved and the API answers 202; this asks again as `plan()` does."""
        if isinstance(config, BaseModel):
            body = config.model_dump(mode="json", exclude_none=True)
        else:
            body = config
        response = self._until_built(
            lambda: self._send("POST", "/runs", json=body), wait, on_pending
        )
        return Run.model_validate(response.json())

    def _until_built(
        self, send: Callable[[], httpx.Response], wait: float, on_pending: PendingFn | None
    ) -> httpx.Response:
        """`send()` again while the API answers 202 (a worker is building a student's layer
        table; nothing was saved), after the seconds its Retry-After says; ApiError 503 when
        `wait` seconds pass first. The API itself answers 503 when no worker built it in time."""
        start = time.monotonic()
        while True:
            response = send()
            if response.status_code != 202:
                return response
            pending = Pending.model_validate(response.json())
            waited = time.monotonic() - start
            if on_pending is not None:
                on_pending(pending, waited)
            if waited >= wait:
                raise ApiError(
                    503,
                    f"{pending.detail} — still not built after {waited:.0f}s; is a worker "
                    "running? (`distill-studio worker`)",
                    method=response.request.method,
                    url=str(response.request.url),
                )
            pause = retry_after(response, pending.retry_after_s)
            time.sleep(min(pause, max(wait - waited, 0.0)))

    def runs(
        self,
        *,
        limit: int = 50,
        cursor: str | None = None,
        status: str | None = None,
        q: str | None = None,
        teacher_model_id: int | None = None,
    ) -> Page[Run]:
        """One page of the team's runs, newest first (`q`: the name contains it)."""
        params = self._query(
            limit=limit, cursor=cursor, status=status, q=q, teacher_model_id=teacher_model_id
        )
        return Page[Run].model_validate(self._read("/runs", params))

    def iter_runs(
        self,
        *,
        status: str | None = None,
        q: str | None = None,
        teacher_model_id: int | None = None,
        page_size: int = PAGE_SIZE,
    ) -> Iterator[Run]:
        """Every run (newest first), following `next_cursor` page by page."""
        return walk(
            self.runs, page_size=page_size, status=status, q=q, teacher_model_id=teacher_model_id
        )

    list_runs = runs  # `list_*` reads well in scripts too

    def run(self, run_id: int) -> Run:
        return Run.model_validate(self._read(f"/runs/{run_id}"))

    def metrics(
        self,
        run_id: int,
        names: list[str] | tuple[str, ...] | None = None,
        since_step: int | None = None,
        max_points: int | None = None,
    ) -> Metrics:
        """Metric series of a run (`loss`, `loss/<term>`, `lr`, `val/top1`, ...).

        `since_step`: only the points after that step (to follow a run). `max_points` (4 to
        10,000): at most that many points per series, downsampled by the server keeping each
        bucket's first, last, smallest and largest point (M4); `Series.total` and
        `Series.downsampled` say how many there are in all and whether some were left out."""
        params = self._query(
            names=",".join(names) if names else None,
            since_step=since_step,
            max_points=max_points,
        )
        return Metrics.model_validate(self._read(f"/runs/{run_id}/metrics", params))

    def cancel_run(self, run_id: int) -> Run:
        return Run.model_validate(self._json("POST", f"/runs/{run_id}/cancel"))

    def retry_run(
        self, run_id: int, *, wait: float = PLAN_TIMEOUT_S, on_pending: PendingFn | None = None
    ) -> Run:
        """Launch a new run with the same config as a finished one; returns the new run (202s
        are followed as in `create_run`)."""
        response = self._until_built(
            lambda: self._send("POST", f"/runs/{run_id}/retry"), wait, on_pending
        )
        return Run.model_validate(response.json())

    def run_config_yaml(self, run_id: int) -> str:
        return self._send("GET", f"/runs/{run_id}/config.yaml").text

    def wait(
        self,
        run_id: int,
        timeout: float | None = None,
        poll: float = 2.0,
        on_progress: Callable[[Run], None] | None = None,
        *,
        stream: bool = True,
    ) -> Run:
        """Follow a run until it succeeds, fails or is cancelled; returns its final state.

        Follows the run's live events (`run_events`), calling `on_progress` with the run as each
        arrives; polls every `poll` seconds instead when the server has no stream (an older
        one), its broker is away, the stream breaks off, or `stream=False`.
        Raises `TimeoutError` when `timeout` seconds pass first (the run keeps going)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if stream:
            final = self._follow_events(run_id, deadline, timeout, on_progress)
            if final is not None:
                return final
        while True:
            run = self.run(run_id)
            if on_progress is not None:
                on_progress(run)
            if run.is_terminal:
                return run
            if deadline is not None and time.monotonic() >= deadline:
                raise _still_running(run, timeout)
            pause = poll if deadline is None else min(poll, max(deadline - time.monotonic(), 0))
            time.sleep(pause)

    def _follow_events(
        self,
        run_id: int,
        deadline: float | None,
        timeout: float | None,
        on_progress: Callable[[Run], None] | None,
    ) -> Run | None:
        """`wait()` on the event stream: the final run, or None to poll instead."""
        run: Run | None = None
        left = None if deadline is None else max(deadline - time.monotonic(), 0.001)
        stream = self.run_events(run_id, timeout=left)
        try:
            for event in stream:
                if event.kind == "metrics":
                    continue
                if event.terminal:
                    run = self.run(run_id)  # the whole final state: summary, finished_at, ...
                elif run is None:
                    run = self.run(run_id).model_copy(update=event.data)
                else:  # at each new epoch its summary again: the live samples
                    epoch = event.data.get("epoch")
                    if epoch is not None and epoch != run.epoch:
                        run = run.model_copy(update={"summary": self.run(run_id).summary})
                    run = run.model_copy(update=event.data)
                if on_progress is not None:
                    on_progress(run)
                if run.is_terminal:
                    return run
        except ApiError:
            return None  # no stream here (or it broke off): poll
        finally:
            stream.close()
        if run is not None and deadline is not None and time.monotonic() >= deadline:
            raise _still_running(run, timeout)
        return None  # ended early (the server restarted, ...): poll


def _still_running(run: Run, timeout: float | None) -> TimeoutError:
    return TimeoutError(
        f"run {run.id} is still {run.status} after {timeout or 0:g}s "
        f"({run.progress:.0%} done); call wait() again to keep waiting"
    )
