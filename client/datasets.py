"""Datasets: upload, list (with tags and filters), samples, update, archive, delete, download."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from pydantic import Field

from client.base import BaseClient, Out, ProgressFn, guess_format, open_source
from client.pagination import PAGE_SIZE, Page, walk

DATASET_SUFFIXES = {
    ".npz": "npz",
    ".zip": "zip",
    ".tar": "tar",
    ".csv": "csv",
    ".parquet": "parquet",
    ".jsonl": "jsonl",
    ".txt": "txt",
}


class DatasetInfo(Out):
    num_samples: int | None = None
    num_classes: int | None = None
    classes: list[Any] | None = None
    class_counts: list[int] | dict[str, int] | None = None
    input_shape: list[Any] | None = None
    kind: str | None = None


class Dataset(Out):
    id: int
    name: str
    format: str = ""
    label_column: str | None = None
    size_bytes: int = 0
    status: str = "pending"
    error: str | None = None
    info: DatasetInfo | None = None
    created_at: datetime | None = None


class SamplePreview(Out):
    index: int = 0
    label: str = ""
    mime: str = "image/png"
    data: str = Field("", description="The thumbnail, base64.")


class RowPreview(Out):
    index: int = 0
    label: str = ""
    values: list[float | None] = Field(default_factory=list)


class DatasetSamples(Out):
    """A few samples of a dataset, recorded by the worker that scanned it: image thumbnails
    (`kind` image) or the first rows (`kind` tabular)."""

    kind: str | None = None
    samples: list[SamplePreview] = Field(default_factory=list)
    columns: list[str] = Field(default_factory=list)
    columns_total: int | None = None
    rows: list[RowPreview] = Field(default_factory=list)


class DatasetsApi(BaseClient):
    """`/datasets`."""

    def upload_dataset(
        self,
        path: str | Path | IO[bytes],
        name: str,
        format: str | None = None,
        label_column: str = "label",
        on_progress: ProgressFn | None = None,
    ) -> Dataset:
        """Upload a dataset: .npz (x, y arrays), .zip or .tar (a folder per class, or
        WebDataset shards), or .csv or .parquet (a label column and feature columns). The file
        is streamed with `on_progress(sent, total)`."""
        fh, filename, opened = open_source(path)
        try:
            fmt = format or guess_format(filename, DATASET_SUFFIXES, "dataset")
            fields = {"name": name, "format": fmt, "label_column": label_column}
            body = self._upload("/datasets", fh, filename, fields, on_progress)
        finally:
            if opened:
                fh.close()
        return Dataset.model_validate(body)

    def datasets(
        self,
        *,
        tags: list[str] | tuple[str, ...] | None = None,
        name: str | None = None,
        status: str | None = None,
        include_archived: bool = False,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page[Dataset]:
        """One page of the team's datasets, newest first: every tag in `tags` must match, and
        the other filters; archived datasets on request. Follow it with `iter_datasets`."""
        params = self._query(
            limit=limit,
            cursor=cursor,
            name=name,
            status=status,
            include_archived="true" if include_archived else None,
        )
        params["tag"] = list(tags or [])
        return Page[Dataset].model_validate(self._json("GET", "/datasets", params=params))

    def iter_datasets(
        self,
        *,
        tags: list[str] | tuple[str, ...] | None = None,
        name: str | None = None,
        status: str | None = None,
        include_archived: bool = False,
        page_size: int = PAGE_SIZE,
    ) -> Iterator[Dataset]:
        """Every dataset matching the filters of `datasets()`, page by page."""
        return walk(
            self.datasets,
            page_size=page_size,
            tags=tags,
            name=name,
            status=status,
            include_archived=include_archived,
        )

    list_datasets = datasets  # `list_*` reads well in scripts too

    def dataset(self, dataset_id: int) -> Dataset:
        return Dataset.model_validate(self._json("GET", f"/datasets/{dataset_id}"))

    def dataset_samples(self, dataset_id: int, n: int = 16) -> DatasetSamples:
        """A few samples of a scanned dataset (thumbnails, or the first rows of a table)."""
        params = {"n": n}
        body = self._json("GET", f"/datasets/{dataset_id}/samples", params=params)
        return DatasetSamples.model_validate(body)

    def dataset_token_lengths(
        self,
        dataset_id: int,
        model_id: int,
        *,
        max_length: int | None = None,
        text_column: str = "text",
        wait: float | None = None,
        on_pending: Any = None,
    ) -> dict[str, Any]:
        """A text dataset's token length histogram with the Hugging Face model `model_id`'s
        tokenizer: `edges`, `counts`, `min`, `max`, `mean` (and, with `max_length`, the rows
        longer than it, `over_max_length`). A worker counts them; until it has, the API answers
        202 and this asks again, up to `wait` seconds (`on_pending(pending, waited)` each time)."""
        from client.runs import PLAN_TIMEOUT_S, RunsApi

        params: dict[str, Any] = {"model_id": model_id, "text_column": text_column}
        if max_length is not None:
            params["max_length"] = max_length
        response = RunsApi._until_built(
            self,  # type: ignore[arg-type]  # the polling every Client shares
            lambda: self._send("GET", f"/datasets/{dataset_id}/token-lengths", params=params),
            PLAN_TIMEOUT_S if wait is None else wait,
            on_pending,
        )
        return dict(response.json())

    def update_dataset(
        self,
        dataset_id: int,
        *,
        description: str | None = None,
        tags: list[str] | None = None,
        archived: bool | None = None,
    ) -> Dataset:
        """Change a dataset's description or tags (or archive / unarchive it)."""
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
