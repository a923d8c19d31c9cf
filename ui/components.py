"""Shared helpers of the Streamlit pages: the API client of this session, error display,
forms built from catalog parameter specs, formatting and small reusable widgets.

The UI talks only to the REST API, through `client.Client`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import pandas as pd
import streamlit as st

from client import (
    ApiError,
    Catalog,
    CatalogEntry,
    Client,
    Dataset,
    Inspection,
    Model,
    ParamSpec,
    Run,
)
from client import collect as collect_pages

T = TypeVar("T")

DEFAULT_API_URL = "http://127.0.0.1:8000"
PAGES = {
    "login": "app_pages/login.py",
    "models": "app_pages/models.py",
    "model": "app_pages/model.py",
    "datasets": "app_pages/datasets.py",
    "new_run": "app_pages/new_run.py",
    "runs": "app_pages/runs.py",
    "run": "app_pages/run.py",
    "compare": "app_pages/compare.py",
    "team": "app_pages/team.py",
}
URL_PAGES = {  # url path -> key of PAGES (the url_path of each st.Page in streamlit_app.py)
    "models": "models",
    "model": "model",
    "datasets": "datasets",
    "new-run": "new_run",
    "runs": "runs",
    "run": "run",
    "compare": "compare",
    "team": "team",
}
STATUS_ICONS = {
    "pending": "⏳",
    "queued": "⏳",
    "running": "🔄",
    "ready": "✅",
    "succeeded": "✅",
    "failed": "❌",
    "cancelled": "⛔",
}
STATUS_BADGES = {
    "pending": ":material/hourglass_top:",
    "queued": ":material/hourglass_top:",
    "running": ":material/autorenew:",
    "ready": ":material/check_circle:",
    "succeeded": ":material/check_circle:",
    "failed": ":material/error:",
    "cancelled": ":material/block:",
}
STATUS_COLORS = {
    "pending": "gray",
    "queued": "gray",
    "running": "blue",
    "ready": "green",
    "succeeded": "green",
    "failed": "red",
    "cancelled": "orange",
}
DEMO_HINT = "run `distill-studio demo` to load a demo teacher, dataset and run"
MISSING_CELL = "—"  # what tables show for an empty cell


# --------------------------------------------------------------------------------------------
# Session and client
# --------------------------------------------------------------------------------------------


def api_url() -> str:
    return os.environ.get("DS_API_URL", DEFAULT_API_URL).rstrip("/")


def is_logged_in() -> bool:
    return bool(st.session_state.get("token"))


def client() -> Client:
    """This session's API client (one per URL/token/team, kept in session state)."""
    key = (api_url(), st.session_state.get("token"), st.session_state.get("team_id"))
    cached = st.session_state.get("_client")
    if cached is None or st.session_state.get("_client_key") != key:
        if cached is not None:
            cached.close()
        cached = Client(key[0], key[1], team_id=key[2])
        st.session_state["_client"], st.session_state["_client_key"] = cached, key
    return cached


def sign_in(token: str) -> None:
    """Keep a token (and who it belongs to) in the session; raises ApiError if it is invalid."""
    with Client(api_url(), token) as probe:
        me = probe.me()
    st.session_state["token"] = token
    st.session_state["me"] = me.model_dump(mode="json")
    st.session_state["team_id"] = me.team_id


def sign_out() -> None:
    cached = st.session_state.get("_client")
    if cached is not None:
        cached.close()
    for key in ("token", "me", "team_id", "_client", "_client_key"):
        st.session_state.pop(key, None)


def fetch(fn: Callable[..., T], *args: Any, stop: bool = True, **kwargs: Any) -> T | None:
    """Call the API; show its error message (and stop the page, unless `stop=False`) on failure.

    A 401 means the token expired or was revoked: the session is signed out."""
    try:
        return fn(*args, **kwargs)
    except ApiError as exc:
        show_api_error(exc)
        if stop:
            st.stop()
        return None


def show_api_error(exc: ApiError) -> None:
    if exc.status == 401:
        sign_out()
        st.error(f"{exc.detail} — your session has ended; log in again.", icon=":material/lock:")
        st.button("Log in", on_click=lambda: None, key="relogin")
    elif exc.status == 0:
        st.error(exc.detail, icon=":material/cloud_off:")
    else:
        st.error(exc.detail, icon=":material/error:")


@st.cache_data(ttl=300, show_spinner=False)
def _catalog_json(url: str, token: str) -> dict[str, Any]:
    return Client(url, token).catalog().model_dump(mode="json")


def catalog() -> Catalog:
    """The catalog of losses, students and schemes (cached for five minutes)."""
    with st.spinner("Loading the catalog…"):
        data = fetch(_catalog_json, api_url(), st.session_state.get("token", ""))
    return Catalog.model_validate(data)


def collect(list_page: Callable[..., Any], limit: int = 500, **filters: Any) -> tuple[list, bool]:
    """(items, whether there are more) of a paginated list of the client (e.g.
    `client().runs`), following cursors up to `limit` with the client's own pagination helper;
    an API error is shown and stops the page."""
    found = fetch(collect_pages, list_page, limit=limit, **filters)
    return found if found is not None else ([], False)


def all_items(list_page: Callable[..., Any], limit: int = 500, **filters: Any) -> list[Any]:
    """Up to `limit` items of a paginated list of the client."""
    return collect(list_page, limit, **filters)[0]


def ready_models() -> list[Model]:
    return all_items(client().models, status="ready")


def ready_datasets() -> list[Dataset]:
    return all_items(client().datasets, status="ready")


def go(page: str, **query: Any) -> None:
    """Switch to one of the app's pages (keys of PAGES), with query parameters."""
    st.switch_page(PAGES[page], query_params={k: str(v) for k, v in query.items()})


def query_id(name: str = "id") -> int | None:
    raw = st.query_params.get(name)
    try:
        return int(raw) if raw not in (None, "") else None
    except ValueError:
        return None


# --------------------------------------------------------------------------------------------
# Forms from catalog parameter specs
# --------------------------------------------------------------------------------------------


def param_input(spec: ParamSpec, key: str, value: Any = None, persist: bool = False) -> Any:
    """One input widget for one catalog parameter (type, range, default and help from the spec).

    With `persist`, the value survives switching to another page and back."""
    label = spec.name.replace("_", " ")
    keep: dict[str, Any] = {"persist_state": "session"} if persist else {}
    if key not in st.session_state:
        st.session_state[key] = _initial(spec, value)
    if spec.type == "bool":
        return st.checkbox(label, help=spec.help or None, key=key, **keep)
    if spec.type == "choice":
        return st.selectbox(
            label, list(spec.choices or []), help=spec.help or None, key=key, **keep
        )
    if spec.type in ("int", "float"):
        cast: Callable[[Any], Any] = int if spec.type == "int" else float
        lo = cast(spec.min) if spec.min is not None else None
        hi = cast(spec.max) if spec.max is not None else None
        step = 1 if spec.type == "int" else _float_step(spec)
        return st.number_input(
            label,
            min_value=lo,
            max_value=hi,
            step=step,
            help=spec.help or None,
            key=key,
            format=None if spec.type == "int" else "%g",
            **keep,
        )
    return st.text_input(label, help=spec.help or None, key=key, **keep)


def _initial(spec: ParamSpec, value: Any) -> Any:
    value = spec.default if value is None else value
    if spec.type == "int":
        return int(value if value is not None else (spec.min or 0))
    if spec.type == "float":
        return float(value if value is not None else (spec.min or 0.0))
    if spec.type == "bool":
        return bool(value)
    if spec.type == "choice":
        choices = list(spec.choices or [])
        return value if value in choices else (choices[0] if choices else None)
    return "" if value is None else str(value)


def _float_step(spec: ParamSpec) -> float:
    span = (spec.max or 1.0) - (spec.min or 0.0)
    for step in (1.0, 0.1, 0.01, 0.001):
        if span >= step * 20:
            return step
    return 0.0001


def param_form(
    entry: CatalogEntry,
    prefix: str,
    values: dict[str, Any] | None = None,
    columns: int = 3,
    persist: bool = False,
) -> dict[str, Any]:
    """Inputs for every parameter of a catalog entry; returns {name: value}."""
    if not entry.params:
        st.caption("No parameters.")
        return {}
    values = values or {}
    result: dict[str, Any] = {}
    cols = st.columns(columns)
    for i, spec in enumerate(entry.params):
        with cols[i % len(cols)]:
            key = f"{prefix}.{spec.name}"
            result[spec.name] = param_input(spec, key, values.get(spec.name), persist)
    return result


def entry_help(entry: CatalogEntry) -> None:
    text = entry.help
    if entry.paper:
        text += f"  \n:material/article: *{entry.paper}*"
    st.caption(text)


# --------------------------------------------------------------------------------------------
# Formatting
# --------------------------------------------------------------------------------------------


def fmt_count(n: float | None, unit: str = "") -> str:
    if n is None:
        return "—"
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{suffix}{unit}"
    return f"{n:.4g}{unit}"


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "—"
    for scale, suffix in ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
        if n >= scale:
            return f"{n / scale:.3g} {suffix}"
    return f"{int(n)} B"


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def fmt_pct(x: float | None) -> str:
    return "—" if x is None else f"{x:.2%}"


def fmt_shape(shape: Iterable[Any] | None) -> str:
    return "—" if not shape else "×".join(str(d) for d in shape)


def status_label(status: str) -> str:
    return f"{STATUS_ICONS.get(status, '•')} {status}"


def run_status(run: Run) -> str:
    """The run's status label, with what a queued run waits for when it says (GPUs)."""
    label = status_label(run.status)
    return f"{label} · {run.waiting}" if run.waiting else label


def status_badge(status: str) -> None:
    st.badge(status, icon=STATUS_BADGES.get(status), color=STATUS_COLORS.get(status, "gray"))


def empty_state(message: str, icon: str = ":material/inbox:") -> None:
    st.info(message, icon=icon)


# --------------------------------------------------------------------------------------------
# Reusable views
# --------------------------------------------------------------------------------------------


def layers_frame(inspection: Inspection) -> pd.DataFrame:
    rows = [
        {
            "stage": layer.stage,
            "path": layer.path,
            "type": layer.type,
            "output": fmt_shape(layer.output_shape),
            "input": fmt_shape(layer.input_shape),
            "params": layer.params,
        }
        for layer in inspection.layers
    ]
    return pd.DataFrame(rows, columns=["stage", "path", "type", "output", "input", "params"])


def inspection_metrics(inspection: Inspection | None, size_bytes: int | None = None) -> None:
    """A row of st.metric: parameters, FLOPs, size, input and output."""
    insp = inspection or Inspection()
    cols = st.columns(5 if size_bytes is not None else 4)
    cols[0].metric("Parameters", fmt_count(insp.params))
    cols[1].metric("FLOPs", fmt_count(insp.flops), help="Multiply-adds × 2 of one forward pass")
    cols[2].metric("Input", fmt_shape(insp.input_shape))
    cols[3].metric("Classes", "—" if insp.num_classes is None else insp.num_classes)
    if size_bytes is not None:
        cols[4].metric("File size", fmt_bytes(size_bytes))


def layers_by_stage(inspection: Inspection, key: str) -> None:
    """The layer table grouped by resolution stage (one expander per stage)."""
    frame = layers_frame(inspection)
    if frame.empty:
        empty_state("No layers recorded for this model.")
        return
    config = {
        "params": st.column_config.NumberColumn("params", format="localized"),
        "stage": None,
    }
    stages = {s.index: s for s in inspection.stages}
    for index, group in frame.groupby(frame["stage"].fillna(-1), sort=True):
        stage = stages.get(int(index))
        if stage is not None and stage.resolution is None:
            title = f"Stage {stage.index} · head · {stage.channels or '—'} outputs"
            title += f" · {len(group)} layers"
        elif stage is not None:
            title = (
                f"Stage {stage.index} · resolution {fmt_shape(_as_list(stage.resolution))}"
                f" · {stage.channels or '—'} channels · {len(group)} layers"
            )
            if stage.end:
                title += f" · ends at `{stage.end}`"
        else:
            title = f"Other layers · {len(group)}"
        with st.expander(title, expanded=len(stages) <= 1):
            st.dataframe(group, hide_index=True, column_config=config, key=f"{key}-{index}")


RUN_COLUMNS = [
    "id",
    "name",
    "status",
    "progress",
    "teacher",
    "student",
    "losses",
    "student top-1",
    "teacher top-1",
    "agreement",
    "duration",
    "created",
]


def run_duration(run: Run) -> float | None:
    if run.started_at is None:
        return None
    end = run.finished_at or pd.Timestamp.now(tz="UTC").to_pydatetime()
    return (end - run.started_at).total_seconds()


def runs_frame(runs: list[Run], teachers: dict[int, str] | None = None) -> pd.DataFrame:
    """One row per run: status, progress, teacher, student, losses and the key metrics."""
    teachers = teachers or {}
    rows = []
    for run in runs:
        summary = run.summary or {}
        student = (run.config.get("student") or {}).get("architecture", "—")
        losses = "+".join(loss.get("name", "?") for loss in run.config.get("losses") or [])
        teacher = run.teacher_model_id
        rows.append(
            {
                "id": run.id,
                "name": run.name,
                "status": run_status(run),
                "progress": float(run.progress or 0.0),
                "teacher": teachers.get(teacher, f"#{teacher}" if teacher else "—"),
                "student": student,
                "losses": losses or "—",
                "student top-1": summary.get("student_top1"),
                "teacher top-1": summary.get("teacher_top1"),
                "agreement": summary.get("agreement"),
                "duration": fmt_duration(run_duration(run)),
                "created": run.created_at,
            }
        )
    frame = pd.DataFrame(rows, columns=RUN_COLUMNS)
    for column in ("student top-1", "teacher top-1", "agreement"):  # None -> NaN: shown empty
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    return frame


def _as_list(value: Any) -> list[Any] | None:
    if value is None:
        return None
    return list(value) if isinstance(value, (list, tuple)) else [value]


def refresh_while(pending: bool, every: float = 2.0, key: str = "watch") -> None:
    """While `pending`, rerun the whole page every `every` seconds (a silent fragment timer)."""
    if not pending:
        return

    @st.fragment(run_every=every)
    def _tick() -> None:
        count = st.session_state.get(f"_tick_{key}", 0) + 1
        st.session_state[f"_tick_{key}"] = count
        if count > 1:  # the first call is the page's own run
            st.rerun()

    st.session_state[f"_tick_{key}"] = 0
    _tick()
