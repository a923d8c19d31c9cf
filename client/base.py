"""The HTTP plumbing every resource of the client shares: the session (base URL, token, team),
requests and their errors, conditional reads, streamed uploads and downloads, and the lenient
response base model.
"""

from __future__ import annotations

import os
import re
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, Self
from urllib.parse import unquote

import httpx
from pydantic import BaseModel, ConfigDict

from client.errors import ApiError, detail_of

API = "/api/v1"
ProgressFn = Callable[[int, int], None]  # (bytes sent, total bytes)
HELD_READS = 16  # the bodies of the last conditional reads a client keeps (the oldest go)
HELD_MAX_BYTES = 4 * 1024 * 1024  # a body larger than this is not kept


class Out(BaseModel):
    """Base of the response models: unknown fields are kept, missing optional fields default."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())


class BaseClient:
    """A session with one Distill Studio API: the requests every resource method makes.

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
        # conditional reads: (path, params, token, team) -> (ETag, the body's JSON)
        self._held: OrderedDict[tuple[Any, ...], tuple[str, Any]] = OrderedDict()

    def close(self) -> None:
        """Close the HTTP connection pool (only one this client opened itself)."""
        if self._own_http:
            self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def use_team(self, team_id: int | None) -> Self:
        """Act for `team_id` from now on (sends `X-Team-Id`); None: the token's default team."""
        self.team_id = team_id
        return self

    def _url(self, path: str) -> str:
        return f"{self.base_url}{API}{path}"

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        if self.team_id is not None:
            headers["X-Team-Id"] = str(self.team_id)
        return headers

    def _send(
        self, method: str, path: str, *, headers: dict[str, str] | None = None, **kwargs: Any
    ) -> httpx.Response:
        """One request; an error answer (or no answer) raises `ApiError` with its message."""
        url = self._url(path)
        if not self._own_http:  # a client passed in keeps its own timeouts (TestClient has none)
            kwargs.pop("timeout", None)
        sent = self._headers() | headers if headers else self._headers()
        try:
            response = self._http.request(method, url, headers=sent, **kwargs)
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
            raise ApiError(response.status_code, detail_of(response), method=method, url=url)
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._send(method, path, **kwargs).json()

    def _read(self, path: str, params: dict[str, Any] | None = None) -> Any:
        """GET `path` as JSON, conditionally: the last body of the same read is kept with its
        `ETag` and sent back as `If-None-Match`; a 304 (unchanged) answers with the kept body,
        so a poller neither downloads nor decodes what it already has."""
        key = (path, tuple(sorted((params or {}).items())), self.token, self.team_id)
        held = self._held.get(key)
        response = self._send(
            "GET",
            path,
            params=params,
            headers={"If-None-Match": held[0]} if held is not None else None,
        )
        if response.status_code == 304 and held is not None:
            self._held.move_to_end(key)
            return held[1]
        body = response.json()
        etag = response.headers.get("ETag")
        if etag and len(response.content) <= HELD_MAX_BYTES:
            self._held[key] = (etag, body)
            self._held.move_to_end(key)
            while len(self._held) > HELD_READS:
                self._held.popitem(last=False)
        else:
            self._held.pop(key, None)
        return body

    @staticmethod
    def _query(**params: Any) -> dict[str, Any]:
        """The parameters that are set (None and "" are left out)."""
        return {k: v for k, v in params.items() if v is not None and v != ""}

    def _upload(
        self,
        path: str,
        fh: IO[bytes],
        filename: str,
        fields: dict[str, str],
        on_progress: ProgressFn | None,
    ) -> Any:
        """POST a file as multipart, streamed, reporting the bytes sent."""
        reader = ProgressReader(fh, size_of(fh), on_progress)
        files = {"file": (filename, reader, "application/octet-stream")}
        # uploads can be large: no read/write timeout, only the connect timeout
        timeout = httpx.Timeout(None, connect=self.timeout)
        return self._json("POST", path, data=fields, files=files, timeout=timeout)

    def _download(self, path: str, dest: str | Path, fallback: str) -> Path:
        """Stream a file to `dest` (a file, or an existing folder: the server's file name)."""
        dest = Path(dest).expanduser()
        url = self._url(path)
        try:
            with self._http.stream("GET", url, headers=self._headers()) as response:
                if response.status_code >= 400:
                    response.read()
                    raise ApiError(response.status_code, detail_of(response), method="GET", url=url)
                target = dest / filename_from(response, fallback) if dest.is_dir() else dest
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


# --------------------------------------------------------------------------------------------
# Uploads and downloads
# --------------------------------------------------------------------------------------------


class ProgressReader:
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


def open_source(source: str | Path | IO[bytes]) -> tuple[IO[bytes], str, bool]:
    """(file object, file name, whether we opened it and must close it)."""
    if isinstance(source, (str, Path)):
        path = Path(source).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"no such file: {path}; give the path of the file to upload")
        return path.open("rb"), path.name, True
    name = Path(str(getattr(source, "name", "upload"))).name
    return source, name, False


def size_of(fh: IO[bytes]) -> int:
    """The whole file's size (httpx rewinds files before sending them)."""
    size = fh.seek(0, os.SEEK_END)
    fh.seek(0)
    return size


def guess_format(filename: str, known: dict[str, str], what: str) -> str:
    """The format a file's suffix names, or a ValueError saying how to give it."""
    suffix = Path(filename).suffix.lower()
    if suffix not in known:
        raise ValueError(
            f"cannot tell the {what} format of '{filename}'; pass format= one of "
            f"{sorted(set(known.values()))} (or rename the file to {', '.join(known)})"
        )
    return known[suffix]


def filename_from(response: httpx.Response, fallback: str) -> str:
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
