"""The model registry: upload, list (with tags and filters), update, archive, delete, download."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from pydantic import Field

from client.base import BaseClient, Out, ProgressFn, guess_format, open_source
from client.pagination import PAGE_SIZE, Page, walk

MODEL_SUFFIXES = {".pt2": "pt2", ".safetensors": "safetensors", ".onnx": "onnx", ".zip": "hf"}


class Layer(Out):
    path: str
    type: str = ""
    input_shape: list[Any] | None = None
    output_shape: list[Any] | None = None
    params: int = 0
    stage: int | None = None


class Stage(Out):
    index: int
    resolution: Any = None
    channels: int | None = None
    layers: list[str] = Field(default_factory=list)
    end: str | None = None


class Inspection(Out):
    input_shape: list[Any] | None = None
    output_shape: list[Any] | None = None
    num_classes: int | None = None
    params: int | None = None
    flops: int | None = None
    layers: list[Layer] = Field(default_factory=list)
    stages: list[Stage] = Field(default_factory=list)


class Model(Out):
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


class ModelsApi(BaseClient):
    """`/models` and a run's `/register`."""

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
        fh, filename, opened = open_source(path)
        try:
            fmt = format or guess_format(filename, MODEL_SUFFIXES, "model")
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
        tags: list[str] | tuple[str, ...] | None = None,
        name: str | None = None,
        status: str | None = None,
        include_archived: bool = False,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page[Model]:
        """One page of the team's models, newest first: every tag in `tags` must match, and
        the other filters; archived models on request. Follow it with `iter_models`."""
        params = self._query(
            limit=limit,
            cursor=cursor,
            name=name,
            status=status,
            include_archived="true" if include_archived else None,
        )
        params["tag"] = list(tags or [])
        return Page[Model].model_validate(self._json("GET", "/models", params=params))

    def iter_models(
        self,
        *,
        tags: list[str] | tuple[str, ...] | None = None,
        name: str | None = None,
        status: str | None = None,
        include_archived: bool = False,
        page_size: int = PAGE_SIZE,
    ) -> Iterator[Model]:
        """Every model matching the filters of `models()`, page by page."""
        return walk(
            self.models,
            page_size=page_size,
            tags=tags,
            name=name,
            status=status,
            include_archived=include_archived,
        )

    list_models = models  # `list_*` reads well in scripts too

    def model(self, model_id: int) -> Model:
        return Model.model_validate(self._json("GET", f"/models/{model_id}"))

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

    def download_model(self, model_id: int, dest: str | Path) -> Path:
        """Stream a model's file to `dest` (a file, or an existing folder)."""
        return self._download(f"/models/{model_id}/download", dest, f"model-{model_id}")

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
