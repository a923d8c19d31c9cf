"""The typed Python client of the Distill Studio REST API (`/api/v1`).

This is what the Streamlit UI uses and what people script with. It imports only httpx and
pydantic, never the rest of `backend`, so `from client import Client` stays light.

    from client import Client

    studio = Client.login("http://127.0.0.1:8000", "admin", "secret")
    teacher = studio.upload_model("resnet32.pt2", name="teacher")
    data = studio.upload_dataset("cifar_small.npz", name="cifar-small")
    run = studio.create_run({"name": "kd", "teacher": {"model_id": teacher.id},
                             "dataset": {"dataset_id": data.id}})
    run = studio.wait(run.id, on_progress=lambda r: print(f"{r.progress:.0%}"))
    for artifact in studio.artifacts(run.id):
        studio.download_artifact(artifact.id, Path("out"))
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import IO, Any, Generic, Literal, Self, TypeVar
from urllib.parse import unquote

import httpx
from pydantic import BaseModel, ConfigDict, Field

API = "/api/v1"
TERMINAL_RUN_STATES = ("succeeded", "failed", "cancelled")
PLAN_TIMEOUT_S = 150.0  # past the server's own limit (DS_INSPECT_TIMEOUT_S), so its message wins
ProgressFn = Callable[[int, int], None]  # (bytes sent, total bytes)


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


class ApiError(Exception):
    """The API answered with an error (or could not be reached: status 0).

    `str(error)` is the server's `detail` message, which names what was wrong.
    """

    def __init__(self, status: int, detail: str, *, method: str = "", url: str = "") -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.method = method
        self.url = url

    def __repr__(self) -> str:
        return f"ApiError(status={self.status}, detail={self.detail!r})"


def _retry_after(response: httpx.Response, default: float) -> float:
    """The seconds a response's Retry-After asks for (between 0.1 and 30), else `default`."""
    try:
        return min(max(float(response.headers.get("Retry-After", default)), 0.1), 30.0)
    except ValueError:
        return default


def _detail_of(response: httpx.Response) -> str:
    """A readable message from an error response (FastAPI's `detail`, string or list)."""
    try:
        body = response.json()
    except ValueError:
        text = response.text.strip()
        return text[:500] or f"HTTP {response.status_code} {response.reason_phrase}"
    detail = body.get("detail", body) if isinstance(body, dict) else body
    if isinstance(detail, list):  # pydantic validation errors
        parts = []
        for item in detail:
            if isinstance(item, dict):
                loc = ".".join(str(p) for p in item.get("loc", []) if p != "body")
                parts.append(f"{loc}: {item.get('msg', item)}" if loc else str(item.get("msg")))
            else:
                parts.append(str(item))
        return "; ".join(parts)
    return str(detail)


# --------------------------------------------------------------------------------------------
# Response models (lenient: unknown fields are kept, missing optional fields default)
# --------------------------------------------------------------------------------------------


class _Out(BaseModel):
    model_config = ConfigDict(extra="allow", protected_namespaces=())


class Token(_Out):
    access_token: str
    token_type: str = "bearer"
    expires_at: datetime | None = None


class TeamRef(_Out):
    id: int
    name: str
    role: str = "member"


class Me(_Out):
    id: int
    username: str
    team_id: int | None = None
    role: str | None = None
    read_only: bool = False
    is_superuser: bool = False
    teams: list[TeamRef] = Field(default_factory=list)


class ApiToken(_Out):
    id: int
    name: str = "token"
    prefix: str = ""
    team_id: int | None = None
    read_only: bool = False
    created_at: datetime | None = None
    last_used_at: datetime | None = None
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    token: str | None = Field(None, description="The secret; only in the answer that created it.")


class Health(_Out):
    status: str
    database: bool | str | None = Field(None, description="Whether the database answers.")
    broker: bool | str | None = Field(None, description="Whether the broker answers.")
    version: str | None = None


class ParamSpec(_Out):
    name: str
    type: Literal["float", "int", "bool", "str", "choice"]
    default: Any = None
    help: str = ""
    min: float | None = None
    max: float | None = None
    choices: list[str] | None = None


class CatalogEntry(_Out):
    name: str
    title: str = ""
    help: str = ""
    params: list[ParamSpec] = Field(default_factory=list)
    paper: str = ""
    kind: str = ""
    needs_pairs: bool = False
    extra: dict[str, Any] = Field(default_factory=dict)

    def defaults(self) -> dict[str, Any]:
        return {p.name: p.default for p in self.params}


class Catalog(_Out):
    losses: list[CatalogEntry] = Field(default_factory=list)
    students: list[CatalogEntry] = Field(default_factory=list)
    schemes: list[CatalogEntry] = Field(default_factory=list)
    optimizers: list[str] = Field(default_factory=list)
    schedules: list[str] = Field(default_factory=list)

    def loss(self, name: str) -> CatalogEntry | None:
        return next((e for e in self.losses if e.name == name), None)

    def student(self, name: str) -> CatalogEntry | None:
        return next((e for e in self.students if e.name == name), None)

    def scheme(self, name: str) -> CatalogEntry | None:
        return next((e for e in self.schemes if e.name == name), None)


class Layer(_Out):
    path: str
    type: str = ""
    input_shape: list[Any] | None = None
    output_shape: list[Any] | None = None
    params: int = 0
    stage: int | None = None


class Stage(_Out):
    index: int
    resolution: Any = None
    channels: int | None = None
    layers: list[str] = Field(default_factory=list)
    end: str | None = None


class Inspection(_Out):
    input_shape: list[Any] | None = None
    output_shape: list[Any] | None = None
    num_classes: int | None = None
    params: int | None = None
    flops: int | None = None
    layers: list[Layer] = Field(default_factory=list)
    stages: list[Stage] = Field(default_factory=list)


class Model(_Out):
    id: int
    name: str
    version: int = 1
    description: str = ""
    format: str = ""
    architecture: str | None = None
    arch_kwargs: dict[str, Any] = Field(default_factory=dict)
    size_bytes: int = 0
    sha256: str = ""
    status: str = "pending"
    error: str | None = None
    card: dict[str, Any] = Field(default_factory=dict)
    source_run_id: int | None = None
    created_at: datetime | None = None
    inspection: Inspection | None = None


class DatasetInfo(_Out):
    num_samples: int | None = None
    num_classes: int | None = None
    classes: list[Any] | None = None
    class_counts: list[int] | dict[str, int] | None = None
    input_shape: list[Any] | None = None
    kind: str | None = None


class Dataset(_Out):
    id: int
    name: str
    format: str = ""
    label_column: str | None = None
    size_bytes: int = 0
    status: str = "pending"
    error: str | None = None
    info: DatasetInfo | None = None
    created_at: datetime | None = None


class SuggestedPair(_Out):
    teacher: str
    student: str
    teacher_shape: list[Any] | None = None
    student_shape: list[Any] | None = None


class Pending(_Out):
    """202 of plan / create_run / retry_run: a worker is building the student's layer table."""

    status: str = "pending"
    job_id: str = ""
    detail: str = "a worker is building the student's layer table"
    retry_after_s: float = 2.0


PendingFn = Callable[[Pending, float], None]  # (what the API said, seconds waited so far)


class Plan(_Out):
    teacher: Inspection
    student: Inspection
    suggested_pairs: list[SuggestedPair] = Field(default_factory=list)
    teacher_params: int | None = None
    student_params: int | None = None


class Run(_Out):
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


class Member(_Out):
    user_id: int
    username: str
    role: str = "member"


class SamplePreview(_Out):
    index: int = 0
    label: str = ""
    mime: str = "image/png"
    data: str = Field("", description="The thumbnail, base64.")


class RowPreview(_Out):
    index: int = 0
    label: str = ""
    values: list[float | None] = Field(default_factory=list)


class DatasetSamples(_Out):
    """A few samples of a dataset, recorded by the worker that scanned it: image thumbnails
    (`kind` image) or the first rows (`kind` tabular)."""

    kind: str | None = None
    samples: list[SamplePreview] = Field(default_factory=list)
    columns: list[str] = Field(default_factory=list)
    columns_total: int | None = None
    rows: list[RowPreview] = Field(default_factory=list)


class Comparison(_Out):
    id: int
    name: str
    description: str = ""
    run_ids: list[int] = Field(default_factory=list)
    created_by: int | None = None
    created_by_name: str | None = None
    created_at: datetime | None = None


class Series(_Out):
    steps: list[int] = Field(default_factory=list)
    values: list[float | None] = Field(default_factory=list)
    epochs: list[int] = Field(default_factory=list)


class Metrics(_Out):
    series: dict[str, Series] = Field(default_factory=dict)


class Artifact(_Out):
    id: int
    run_id: int | None = None
    kind: str = ""
    filename: str = ""
    size_bytes: int = 0
    sha256: str = ""
    created_at: datetime | None = None


T = TypeVar("T", bound=BaseModel)


class Page(_Out, Generic[T]):
    items: list[T] = Field(default_factory=list)
    next_cursor: str | None = None


# --------------------------------------------------------------------------------------------
# Uploads
# --------------------------------------------------------------------------------------------


class _ProgressReader:
    """A binary file wrapper that reports bytes read; httpx streams multipart files by read()."""

    def __init__(self, raw: IO[bytes], total: int, on_progress: ProgressFn | None) -> None:
        self._raw, self.total, self._cb, self.sent = raw, total, on_progress, 0
        self.name = getattr(raw, "name", "upload")

    def read(self, size: int = -1) -> bytes:
        chunk = self._raw.read(size)
        self.sent += len(chunk)
        if self._cb is not None and (chunk or self.sent >= self.total):
            self._cb(min(self.sent, self.total), self.total)
        return chunk

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        pos = self._raw.seek(offset, whence)
        if whence == os.SEEK_SET and offset == 0:
            self.sent = 0
        return pos

    def tell(self) -> int:
        return self._raw.tell()


def _open_source(source: str | Path | IO[bytes]) -> tuple[IO[bytes], str, bool]:
    """(file object, file name, whether we opened it and must close it)."""
    if isinstance(source, (str, Path)):
        path = Path(source).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"no such file: {path}; give the path of the file to upload")
        return path.open("rb"), path.name, True
    name = Path(str(getattr(source, "name", "upload"))).name
    return source, name, False


def _size_of(fh: IO[bytes]) -> int:
    """The whole file's size (httpx rewinds files before sending them)."""
    size = fh.seek(0, os.SEEK_END)
    fh.seek(0)
    return size


_MODEL_SUFFIXES = {".pt2": "pt2", ".safetensors": "safetensors"}
_DATASET_SUFFIXES = {".npz": "npz", ".zip": "zip", ".csv": "csv"}


def _guess_format(filename: str, known: dict[str, str], what: str) -> str:
    suffix = Path(filename).suffix.lower()
    if suffix not in known:
        raise ValueError(
            f"cannot tell the {what} format of '{filename}'; pass format= one of "
            f"{sorted(set(known.values()))} (or rename the file to {', '.join(known)})"
        )
    return known[suffix]


def _filename_from(response: httpx.Response, fallback: str) -> str:
    """The file name of a download (RFC 6266 `filename*` first), without any directories."""
    header = response.headers.get("content-disposition", "")
    if match := re.search(r"filename\*=(?:UTF-8|utf-8)''([^;]+)", header):
        name = unquote(match.group(1).strip())
    elif match := re.search(r'filename="?([^";]+)"?', header):
        name = match.group(1).strip()
    else:
        name = fallback
    name = name.replace("\\", "/").rsplit("/", 1)[-1].strip()
    return fallback if name in ("", ".", "..") else name


# --------------------------------------------------------------------------------------------
# The client
# --------------------------------------------------------------------------------------------


class Client:
    """A session with one Distill Studio API.

    `http` lets tests pass an `httpx.Client` of their own (e.g. Starlette's `TestClient`);
    `team_id` sends `X-Team-Id` so every call acts for that team.
    """

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        http: httpx.Client | None = None,
        timeout: float = 30,
        team_id: int | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.team_id = team_id
        self.timeout = timeout
        self._own_http = http is None
        self._http = http if http is not None else httpx.Client(timeout=timeout)

    # -- plumbing ------------------------------------------------------------------------------

    @classmethod
    def login(
        cls,
        base_url: str,
        username: str,
        password: str,
        *,
        http: httpx.Client | None = None,
        timeout: float = 30,
    ) -> Client:
        """Exchange a username and password for a token; returns a logged-in client."""
        client = cls(base_url, http=http, timeout=timeout)
        token = client.get_token(username, password)
        client.token = token.access_token
        return client

    def close(self) -> None:
        if self._own_http:
            self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _url(self, path: str) -> str:
        return f"{self.base_url}{API}{path}"

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        if self.team_id is not None:
            headers["X-Team-Id"] = str(self.team_id)
        return headers

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        url = self._url(path)
        if not self._own_http:  # a client passed in keeps its own timeouts (TestClient has none)
            kwargs.pop("timeout", None)
        try:
            response = self._http.request(method, url, headers=self._headers(), **kwargs)
        except httpx.TimeoutException as exc:
            raise ApiError(
                0,
                f"the API at {self.base_url} did not answer in time ({exc}); try again",
                method=method,
                url=url,
            ) from exc
        except httpx.TransportError as exc:
            raise ApiError(
                0,
                f"cannot reach the API at {self.base_url} ({exc}); is it running? "
                "Start it with `distill-studio up`, or check the URL",
                method=method,
                url=url,
            ) from exc
        if response.status_code >= 400:
            raise ApiError(response.status_code, _detail_of(response), method=method, url=url)
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._send(method, path, **kwargs).json()

    @staticmethod
    def _query(**params: Any) -> dict[str, Any]:
        return {k: v for k, v in params.items() if v is not None and v != ""}

    # -- auth and health -----------------------------------------------------------------------

    def get_token(self, username: str, password: str) -> Token:
        data = {"username": username, "password": password}
        return Token.model_validate(self._json("POST", "/auth/token", data=data))

    def me(self) -> Me:
        return Me.model_validate(self._json("GET", "/auth/me"))

    def create_token(
        self,
        name: str = "token",
        *,
        read_only: bool = False,
        team_scoped: bool = False,
        expires_in_days: int | None = None,
    ) -> ApiToken:
        """A new API token for scripts; its secret (`.token`) is shown only this once."""
        body = {
            "name": name,
            "read_only": read_only,
            "team_scoped": team_scoped,
            "expires_in_days": expires_in_days,
        }
        return ApiToken.model_validate(self._json("POST", "/auth/tokens", json=body))

    def tokens(self) -> list[ApiToken]:
        return [ApiToken.model_validate(t) for t in self._json("GET", "/auth/tokens")]

    def revoke_token(self, token_id: int) -> ApiToken:
        return ApiToken.model_validate(self._json("DELETE", f"/auth/tokens/{token_id}"))

    def teams(self) -> list[TeamRef]:
        """The teams you belong to, with your role in each."""
        return [TeamRef.model_validate(t) for t in self._json("GET", "/teams")]

    def team_members(self, team_id: int) -> list[Member]:
        """Members of one of your teams, with their roles."""
        return [Member.model_validate(m) for m in self._json("GET", f"/teams/{team_id}/members")]

    def health(self) -> Health:
        return Health.model_validate(self._json("GET", "/health"))

    def catalog(self) -> Catalog:
        return Catalog.model_validate(self._json("GET", "/catalog"))

    # -- models --------------------------------------------------------------------------------

    def upload_model(
        self,
        path: str | Path | IO[bytes],
        name: str,
        format: str | None = None,
        architecture: str | None = None,
        kwargs: dict[str, Any] | None = None,
        description: str = "",
        on_progress: ProgressFn | None = None,
    ) -> Model:
        """Upload a teacher: a `torch.export` archive (.pt2) or safetensors weights of a zoo
        architecture (give `architecture` and its `kwargs`, e.g. input_shape and num_classes).
        The file is streamed; `on_progress(sent, total)` is called as bytes go out."""
        fh, filename, opened = _open_source(path)
        try:
            fmt = format or _guess_format(filename, _MODEL_SUFFIXES, "model")
            fields = {"name": name, "format": fmt, "description": description}
            if architecture:
                fields["architecture"] = architecture
            if kwargs:
                fields["kwargs"] = json.dumps(kwargs)
            body = self._upload("/models", fh, filename, fields, on_progress)
        finally:
            if opened:
                fh.close()
        return Model.model_validate(body)

    def models(
        self,
        *,
        limit: int = 50,
        cursor: str | None = None,
        name: str | None = None,
        status: str | None = None,
    ) -> Page[Model]:
        params = self._query(limit=limit, cursor=cursor, name=name, status=status)
        return Page[Model].model_validate(self._json("GET", "/models", params=params))

    def iter_models(
        self, *, name: str | None = None, status: str | None = None, page_size: int = 100
    ) -> Iterator[Model]:
        return self._follow(
            lambda c: self.models(limit=page_size, cursor=c, name=name, status=status)
        )

    def model(self, model_id: int) -> Model:
        return Model.model_validate(self._json("GET", f"/models/{model_id}"))

    # -- datasets ------------------------------------------------------------------------------

    def upload_dataset(
        self,
        path: str | Path | IO[bytes],
        name: str,
        format: str | None = None,
        label_column: str = "label",
        on_progress: ProgressFn | None = None,
    ) -> Dataset:
        """Upload a dataset: .npz (x, y arrays), .zip (a folder per class) or .csv (a label
        column and feature columns). The file is streamed with `on_progress(sent, total)`."""
        fh, filename, opened = _open_source(path)
        try:
            fmt = format or _guess_format(filename, _DATASET_SUFFIXES, "dataset")
            fields = {"name": name, "format": fmt, "label_column": label_column}
            body = self._upload("/datasets", fh, filename, fields, on_progress)
        finally:
            if opened:
                fh.close()
        return Dataset.model_validate(body)

    def datasets(
        self,
        *,
        limit: int = 50,
        cursor: str | None = None,
        name: str | None = None,
        status: str | None = None,
    ) -> Page[Dataset]:
        params = self._query(limit=limit, cursor=cursor, name=name, status=status)
        return Page[Dataset].model_validate(self._json("GET", "/datasets", params=params))

    def iter_datasets(
        self, *, name: str | None = None, status: str | None = None, page_size: int = 100
    ) -> Iterator[Dataset]:
        return self._follow(
            lambda c: self.datasets(limit=page_size, cursor=c, name=name, status=status)
        )

    def dataset(self, dataset_id: int) -> Dataset:
        return Dataset.model_validate(self._json("GET", f"/datasets/{dataset_id}"))

    def dataset_samples(self, dataset_id: int, n: int = 16) -> DatasetSamples:
        """A few samples of a scanned dataset (thumbnails, or the first rows of a table)."""
        params = {"n": n}
        body = self._json("GET", f"/datasets/{dataset_id}/samples", params=params)
        return DatasetSamples.model_validate(body)

    # -- runs ----------------------------------------------------------------------------------

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
                    503, f"{pending.detail} — still not built after {waited:.0f}s; is a worker "
                    "running? (`distill-studio worker`)", method=response.request.method,
                    url=str(response.request.url),
                )
            pause = _retry_after(response, pending.retry_after_s)
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
        params = self._query(
            limit=limit, cursor=cursor, status=status, q=q, teacher_model_id=teacher_model_id
        )
        return Page[Run].model_validate(self._json("GET", "/runs", params=params))

    def iter_runs(
        self,
        *,
        status: str | None = None,
        q: str | None = None,
        teacher_model_id: int | None = None,
        page_size: int = 100,
    ) -> Iterator[Run]:
        """Every run (newest first), following `next_cursor` page by page."""
        return self._follow(
            lambda c: self.runs(
                limit=page_size, cursor=c, status=status, q=q, teacher_model_id=teacher_model_id
            )
        )

    def run(self, run_id: int) -> Run:
        return Run.model_validate(self._json("GET", f"/runs/{run_id}"))

    def metrics(
        self,
        run_id: int,
        names: list[str] | tuple[str, ...] | None = None,
        since_step: int | None = None,
    ) -> Metrics:
        """Metric series of a run (`loss`, `loss/<term>`, `lr`, `val/top1`, ...)."""
        params = self._query(names=",".join(names) if names else None, since_step=since_step)
        return Metrics.model_validate(self._json("GET", f"/runs/{run_id}/metrics", params=params))

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
    ) -> Run:
        """Poll a run until it succeeds, fails or is cancelled; returns its final state.

        Raises `TimeoutError` when `timeout` seconds pass first (the run keeps going)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            run = self.run(run_id)
            if on_progress is not None:
                on_progress(run)
            if run.is_terminal:
                return run
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(
                    f"run {run_id} is still {run.status} after {timeout:g}s "
                    f"({run.progress:.0%} done); call wait() again to keep waiting"
                )
            pause = poll if deadline is None else min(poll, max(deadline - time.monotonic(), 0))
            time.sleep(pause)

    # -- comparisons ---------------------------------------------------------------------------

    def create_comparison(
        self, name: str, run_ids: list[int], description: str = ""
    ) -> Comparison:
        """Save a comparison of runs for the team (the first run is the baseline)."""
        body = {"name": name, "run_ids": list(run_ids), "description": description}
        return Comparison.model_validate(self._json("POST", "/comparisons", json=body))

    def comparisons(self, *, limit: int = 50, cursor: str | None = None) -> Page[Comparison]:
        params = self._query(limit=limit, cursor=cursor)
        return Page[Comparison].model_validate(self._json("GET", "/comparisons", params=params))

    def comparison(self, comparison_id: int) -> Comparison:
        return Comparison.model_validate(self._json("GET", f"/comparisons/{comparison_id}"))

    def delete_comparison(self, comparison_id: int) -> None:
        self._send("DELETE", f"/comparisons/{comparison_id}")

    # -- artifacts -----------------------------------------------------------------------------

    def artifacts(self, run_id: int) -> list[Artifact]:
        return [Artifact.model_validate(a) for a in self._json("GET", f"/runs/{run_id}/artifacts")]

    def artifact_bytes(self, artifact_id: int) -> tuple[str, bytes]:
        """(file name, content) of an artifact, read into memory (for small files / the UI)."""
        response = self._send("GET", f"/artifacts/{artifact_id}/download")
        return _filename_from(response, f"artifact-{artifact_id}"), response.content

    def download_artifact(self, artifact_id: int, dest: str | Path) -> Path:
        """Stream an artifact to `dest` (a file, or an existing folder: the server's file name
        is used). Returns the written path."""
        return self._download(f"/artifacts/{artifact_id}/download", dest, f"artifact-{artifact_id}")

    def download_model(self, model_id: int, dest: str | Path) -> Path:
        """Stream a model's file to `dest` (a file, or an existing folder)."""
        return self._download(f"/models/{model_id}/download", dest, f"model-{model_id}")

    # aliases (`list_*` reads well in scripts too)
    list_models = models
    list_datasets = datasets
    list_runs = runs

    # -- helpers -------------------------------------------------------------------------------

    def _upload(
        self,
        path: str,
        fh: IO[bytes],
        filename: str,
        fields: dict[str, str],
        on_progress: ProgressFn | None,
    ) -> Any:
        reader = _ProgressReader(fh, _size_of(fh), on_progress)
        files = {"file": (filename, reader, "application/octet-stream")}
        # uploads can be large: no read/write timeout, only the connect timeout
        timeout = httpx.Timeout(None, connect=self.timeout)
        return self._json("POST", path, data=fields, files=files, timeout=timeout)

    def _download(self, path: str, dest: str | Path, fallback: str) -> Path:
        dest = Path(dest).expanduser()
        url = self._url(path)
        try:
            with self._http.stream("GET", url, headers=self._headers()) as response:
                if response.status_code >= 400:
                    response.read()
                    raise ApiError(
                        response.status_code, _detail_of(response), method="GET", url=url
                    )
                target = dest / _filename_from(response, fallback) if dest.is_dir() else dest
                target.parent.mkdir(parents=True, exist_ok=True)
                partial = target.with_name(target.name + ".part")
                with partial.open("wb") as out:
                    for chunk in response.iter_bytes():
                        out.write(chunk)
                partial.replace(target)
        except httpx.TransportError as exc:
            raise ApiError(
                0, f"download from {url} failed ({exc}); try again", method="GET", url=url
            ) from exc
        return target

    @staticmethod
    def _follow(fetch: Callable[[str | None], Page[Any]]) -> Iterator[Any]:
        cursor: str | None = None
        while True:
            page = fetch(cursor)
            yield from page.items
            if not page.next_cursor or not page.items:
                return
            cursor = page.next_cursor

    # ==========================================================================================
    # BEGIN issue 5 (backend): teams and users, the model registry, audit log, webhooks
    # ==========================================================================================

    def use_team(self, team_id: int | None) -> Self:
        """Act for `team_id` from now on (sends `X-Team-Id`); None: the token's default team."""
        self.team_id = team_id
        return self

    # -- teams, members, users -----------------------------------------------------------------

    def create_team(self, name: str) -> TeamRef:
        """A new team with you as its owner; switch to it with `use_team(team.id)` (studio
        administrators, or everyone when the server sets DS_TEAM_CREATORS=everyone)."""
        return TeamRef.model_validate(self._json("POST", "/teams", json={"name": name}))

    def team(self, team_id: int) -> TeamRef:
        return TeamRef.model_validate(self._json("GET", f"/teams/{team_id}"))

    def add_member(self, team_id: int, username: str, role: str = "member") -> Member:
        """Add an existing user to a team without asking them (studio administrators; others
        `invite`)."""
        body = {"username": username, "role": role}
        return Member.model_validate(self._json("POST", f"/teams/{team_id}/members", json=body))

    def set_member_role(self, team_id: int, user_id: int, role: str) -> Member:
        body = {"role": role}
        return Member.model_validate(
            self._json("PATCH", f"/teams/{team_id}/members/{user_id}", json=body)
        )

    def remove_member(self, team_id: int, user_id: int) -> None:
        """Remove a member (or leave, with your own user id); the last owner cannot go."""
        self._send("DELETE", f"/teams/{team_id}/members/{user_id}")

    def create_user(self, username: str, password: str, role: str = "member") -> UserAccount:
        """A new user in the team you act for (studio administrators)."""
        body = {"username": username, "password": password, "role": role}
        return UserAccount.model_validate(self._json("POST", "/users", json=body))

    # -- invitations: joining a team with the user's consent -----------------------------------

    def invite(self, team_id: int, username: str, role: str = "member") -> Invitation:
        """Invite `username` to a team (admins and owners); they accept or decline it."""
        body = {"username": username, "role": role}
        return Invitation.model_validate(
            self._json("POST", f"/teams/{team_id}/invitations", json=body)
        )

    def sent_invitations(self, team_id: int) -> list[Invitation]:
        """The invitations a team sent, newest first, with their answers (admins and owners)."""
        return [Invitation.model_validate(i)
                for i in self._json("GET", f"/teams/{team_id}/invitations")]

    def withdraw_invitation(self, team_id: int, invitation_id: int) -> Invitation:
        """Take back a pending invitation of a team (admins and owners)."""
        return Invitation.model_validate(
            self._json("DELETE", f"/teams/{team_id}/invitations/{invitation_id}")
        )

    def invitations(self) -> list[Invitation]:
        """Invitations to teams waiting for your answer."""
        return [Invitation.model_validate(i) for i in self._json("GET", "/invitations")]

    def accept_invitation(self, invitation_id: int) -> Invitation:
        """Join the invitation's team with its role."""
        return Invitation.model_validate(
            self._json("POST", f"/invitations/{invitation_id}/accept")
        )

    def decline_invitation(self, invitation_id: int) -> Invitation:
        return Invitation.model_validate(
            self._json("POST", f"/invitations/{invitation_id}/decline")
        )

    # -- the model registry --------------------------------------------------------------------

    def find_models(
        self,
        *,
        tags: list[str] | tuple[str, ...] | None = None,
        name: str | None = None,
        status: str | None = None,
        include_archived: bool = False,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page[Model]:
        """Models with every tag in `tags` (and the other filters); archived ones on request."""
        params = self._query(
            limit=limit, cursor=cursor, name=name, status=status,
            include_archived="true" if include_archived else None,
        )
        params["tag"] = list(tags or [])
        return Page[Model].model_validate(self._json("GET", "/models", params=params))

    def update_model(
        self,
        model_id: int,
        *,
        description: str | None = None,
        tags: list[str] | None = None,
        archived: bool | None = None,
    ) -> Model:
        """Change a model's description or tags (or archive / unarchive it: admins, owners)."""
        body = self._query(description=description, tags=tags, archived=archived)
        return Model.model_validate(self._json("PATCH", f"/models/{model_id}", json=body))

    def delete_model(self, model_id: int, *, archive: bool = False) -> Model | None:
        """Delete a model (None), or archive it (the archived model). 409 while runs use it."""
        params = {"archive": "true"} if archive else None
        response = self._send("DELETE", f"/models/{model_id}", params=params)
        return Model.model_validate(response.json()) if response.status_code == 200 else None

    def register_run(
        self,
        run_id: int,
        name: str | None = None,
        *,
        description: str | None = None,
        tags: list[str] | None = None,
    ) -> Model:
        """Register a succeeded run's student as a model (pending until a worker inspects it)."""
        body = self._query(name=name, description=description, tags=tags)
        return Model.model_validate(self._json("POST", f"/runs/{run_id}/register", json=body))

    def find_datasets(
        self,
        *,
        tags: list[str] | tuple[str, ...] | None = None,
        name: str | None = None,
        status: str | None = None,
        include_archived: bool = False,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page[Dataset]:
        params = self._query(
            limit=limit, cursor=cursor, name=name, status=status,
            include_archived="true" if include_archived else None,
        )
        params["tag"] = list(tags or [])
        return Page[Dataset].model_validate(self._json("GET", "/datasets", params=params))

    def update_dataset(
        self,
        dataset_id: int,
        *,
        description: str | None = None,
        tags: list[str] | None = None,
        archived: bool | None = None,
    ) -> Dataset:
        body = self._query(description=description, tags=tags, archived=archived)
        return Dataset.model_validate(self._json("PATCH", f"/datasets/{dataset_id}", json=body))

    def delete_dataset(self, dataset_id: int, *, archive: bool = False) -> Dataset | None:
        """Delete a dataset (None), or archive it (the archived dataset). 409 while runs use it."""
        params = {"archive": "true"} if archive else None
        response = self._send("DELETE", f"/datasets/{dataset_id}", params=params)
        return Dataset.model_validate(response.json()) if response.status_code == 200 else None

    def download_dataset(self, dataset_id: int, dest: str | Path) -> Path:
        """Stream a dataset's file to `dest` (a file, or an existing folder)."""
        return self._download(f"/datasets/{dataset_id}/download", dest, f"dataset-{dataset_id}")

    def artifact(self, artifact_id: int) -> Artifact:
        return Artifact.model_validate(self._json("GET", f"/artifacts/{artifact_id}"))

    # -- audit log -----------------------------------------------------------------------------

    def audit(
        self,
        *,
        action: str | None = None,
        resource_type: str | None = None,
        resource_id: int | str | None = None,
        user_id: int | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page[AuditEntry]:
        """The team's audit log, newest first (admins and owners). `action` is `model` (every
        model.* action) or one action such as `model.delete`."""
        params = self._query(
            action=action, resource_type=resource_type,
            resource_id=None if resource_id is None else str(resource_id), user_id=user_id,
            limit=limit, cursor=cursor,
        )
        return Page[AuditEntry].model_validate(self._json("GET", "/audit", params=params))

    def iter_audit(self, *, page_size: int = 100, **filters: Any) -> Iterator[AuditEntry]:
        return self._follow(lambda c: self.audit(limit=page_size, cursor=c, **filters))

    # -- webhooks ------------------------------------------------------------------------------

    def create_webhook(
        self, url: str, events: list[str] | None = None, description: str = ""
    ) -> Webhook:
        """Register a URL told when runs end; `.secret` (for checking signatures) is shown
        only in this answer."""
        body: dict[str, Any] = {"url": url, "description": description}
        if events is not None:
            body["events"] = events
        return Webhook.model_validate(self._json("POST", "/webhooks", json=body))

    def webhooks(self) -> list[Webhook]:
        return [Webhook.model_validate(w) for w in self._json("GET", "/webhooks")]

    def webhook(self, webhook_id: int) -> Webhook:
        return Webhook.model_validate(self._json("GET", f"/webhooks/{webhook_id}"))

    def update_webhook(
        self,
        webhook_id: int,
        *,
        url: str | None = None,
        events: list[str] | None = None,
        description: str | None = None,
        active: bool | None = None,
    ) -> Webhook:
        body = self._query(url=url, events=events, description=description, active=active)
        return Webhook.model_validate(self._json("PATCH", f"/webhooks/{webhook_id}", json=body))

    def delete_webhook(self, webhook_id: int) -> None:
        self._send("DELETE", f"/webhooks/{webhook_id}")

    def deliveries(
        self,
        webhook_id: int,
        *,
        status: str | None = None,
        event: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page[WebhookDelivery]:
        """Deliveries of a webhook, newest first: status, attempts, last status code and error."""
        params = self._query(status=status, event=event, limit=limit, cursor=cursor)
        return Page[WebhookDelivery].model_validate(
            self._json("GET", f"/webhooks/{webhook_id}/deliveries", params=params)
        )

    def iter_deliveries(
        self, webhook_id: int, *, page_size: int = 100, **filters: Any
    ) -> Iterator[WebhookDelivery]:
        return self._follow(
            lambda c: self.deliveries(webhook_id, limit=page_size, cursor=c, **filters)
        )

    # ==========================================================================================
    # END issue 5 (backend) methods
    # ==========================================================================================


# ==============================================================================================
# BEGIN issue 5 (backend): response models of the methods above
# ==============================================================================================


class UserAccount(_Out):
    id: int
    username: str
    is_superuser: bool = False
    team_id: int | None = None
    role: str = "member"
    created_at: datetime | None = None


class Invitation(_Out):
    id: int
    team_id: int
    team_name: str = ""
    username: str
    role: str = "member"
    status: str = "pending"
    invited_by: str = ""
    created_at: datetime | None = None
    answered_at: datetime | None = None


class AuditEntry(_Out):
    id: int
    user_id: int | None = None
    username: str = ""
    action: str
    resource_type: str = ""
    resource_id: str | None = None
    detail: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime | None = None


class Webhook(_Out):
    id: int
    url: str
    description: str = ""
    events: list[str] = Field(default_factory=list)
    active: bool = True
    secret_prefix: str = ""
    created_at: datetime | None = None
    secret: str | None = Field(None, description="Only in the answer that created it.")


class WebhookDelivery(_Out):
    id: int
    webhook_id: int
    event: str
    run_id: int | None = None
    status: str = "pending"
    attempts: int = 0
    last_status_code: int | None = None
    last_error: str | None = None
    created_at: datetime | None = None
    last_attempt_at: datetime | None = None
    next_attempt_at: datetime | None = None
    delivered_at: datetime | None = None


# ==============================================================================================
# END issue 5 (backend) response models
# ==============================================================================================
