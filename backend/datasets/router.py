"""`/api/v1/datasets`: upload training data, list it by tag, see what a worker found in it, edit,
download, delete or archive it."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Query, Response, UploadFile
from fastapi.responses import JSONResponse, StreamingResponse

from backend.access import (
    DeletableDataset,
    OwnedDataset,
    Permission,
    TeamMember,
    WritableDataset,
    Writer,
    require,
)
from backend.artifacts.router import attachment
from backend.datasets import service
from backend.datasets.schemas import (
    DatasetOut,
    DatasetSamplesOut,
    DatasetUpdate,
    TokenLengthsOut,
)
from backend.deps import SessionDep, StoreDep
from backend.errors import responses
from backend.runs.router import PENDING_202
from backend.runs.schemas import PlanPending
from backend.teams.schemas import Page, Tag
from core import inspections
from core.db.tables import Status

router = APIRouter(prefix="/datasets", tags=["datasets"])


@router.post(
    "",
    response_model=DatasetOut,
    status_code=201,
    summary="Upload a dataset (.npz with x and y, .zip/.tar of class folders or WebDataset shards, "
    "or .csv/.parquet with a label column)",
    responses=responses(401, 403, 413, 422, 503, e503="broker unreachable; nothing was saved"),
    openapi_extra={
        "requestBody": {
            "content": {
                "multipart/form-data": {
                    "examples": {
                        "npz": {
                            "summary": "Arrays x and y (curl -F file=@cifar10.npz)",
                            "value": {
                                "file": "<the .npz file>",
                                "name": "cifar10",
                                "description": "CIFAR-10, 5k-image subset",
                            },
                        },
                        "csv": {
                            "summary": "A table with a label column",
                            "value": {
                                "file": "<the .csv file>",
                                "name": "iris",
                                "format": "csv",
                                "label_column": "species",
                            },
                        },
                    }
                }
            }
        }
    },
)
def upload_dataset(
    session: SessionDep,
    store: StoreDep,
    principal: Writer,
    file: Annotated[
        UploadFile, File(description="The .npz, .zip, .tar, .csv, .parquet, .jsonl or .txt file.")
    ],
    name: Annotated[str, Form()],
    format_: Annotated[
        str | None,
        Form(
            alias="format",
            description="npz | zip | tar | csv | parquet | jsonl | txt; default: the extension.",
        ),
    ] = None,
    label_column: Annotated[
        str | None, Form(description="csv and parquet only; default 'label'.")
    ] = None,
    description: Annotated[str, Form()] = "",
) -> DatasetOut:
    dataset = service.create_dataset(
        session,
        store,
        principal,
        upload=file.file,
        filename=file.filename or "",
        name=name,
        format=format_,
        label_column=label_column,
        description=description,
    )
    return DatasetOut.model_validate(dataset)


@router.get(
    "",
    response_model=Page[DatasetOut],
    responses=responses(401, 403, 422, 503),
    summary="Datasets of your team, newest first (archived ones only with include_archived)",
)
def list_datasets(
    session: SessionDep,
    principal: TeamMember,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: str | None = None,
    name: str | None = None,
    status: Status | None = None,
    tag: Annotated[
        list[Tag] | None, Query(description="Only datasets with every tag given.")
    ] = None,
    include_archived: bool = False,
) -> Page[DatasetOut]:
    rows, next_cursor = service.list_datasets(
        session,
        principal.team_id,
        limit=limit,
        cursor=cursor,
        name=name,
        status=status.value if status else None,
        tags=tag,
        include_archived=include_archived,
    )
    return Page[DatasetOut](
        items=[DatasetOut.model_validate(r) for r in rows], next_cursor=next_cursor
    )


@router.get(
    "/{dataset_id}",
    response_model=DatasetOut,
    responses=responses(401, 403, 404, 422, 503),
    summary="One dataset",
)
def get_dataset(dataset: OwnedDataset) -> DatasetOut:
    return DatasetOut.model_validate(dataset)


@router.patch(
    "/{dataset_id}",
    response_model=DatasetOut,
    responses=responses(401, 403, 404, 422, 503),
    summary="Change a dataset's description or tags (archived: admins and owners)",
)
def update_dataset(
    session: SessionDep, principal: TeamMember, dataset: WritableDataset, body: DatasetUpdate
) -> DatasetOut:
    values = body.model_dump(exclude_unset=True, exclude_none=True)
    if "archived" in values:
        require(principal, Permission.delete)
    return DatasetOut.model_validate(service.update_dataset(session, principal, dataset, values))


@router.delete(
    "/{dataset_id}",
    status_code=204,
    response_model=None,
    summary="Delete a dataset and its file, or archive it (?archive=true); admins and owners",
    responses={
        200: {"model": DatasetOut, "description": "archived (with ?archive=true)"},
        204: {"description": "deleted, with its file"},
        **responses(401, 403, 404, 409, 422, 503, e409="runs use it; archive it instead"),
    },
)
def delete_dataset(
    session: SessionDep,
    store: StoreDep,
    principal: TeamMember,
    dataset: DeletableDataset,
    archive: Annotated[bool, Query(description="Hide it instead of deleting it.")] = False,
) -> Response:
    kept = service.delete_dataset(session, store, principal, dataset, archive)
    if kept is None:
        return Response(status_code=204)
    return JSONResponse(DatasetOut.model_validate(kept).model_dump(mode="json"))


@router.get(
    "/{dataset_id}/download",
    response_class=StreamingResponse,
    summary="Download the dataset file",
    responses={
        200: {"content": {"application/octet-stream": {}}},
        **responses(401, 403, 404, 422, 503),
    },
)
def download_dataset(
    session: SessionDep, store: StoreDep, principal: TeamMember, dataset: OwnedDataset
) -> StreamingResponse:
    body = service.download(session, store, principal, dataset)
    return attachment(body, f"{dataset.name}.{dataset.format}")


@router.get(
    "/{dataset_id}/token-lengths",
    response_model=TokenLengthsOut,
    responses={
        **PENDING_202,
        **responses(
            401,
            403,
            404,
            409,
            422,
            503,
            e404="the dataset or the model is not in your team",
            e409="the dataset or model is not ready, or the tokens could not be counted",
            e422="the model is not a Hugging Face checkpoint, or the dataset is not text",
            e503="broker unreachable, or no worker counted the tokens in time",
        ),
    },
    summary="A text dataset's token length histogram with a Hugging Face model's tokenizer",
)
def dataset_token_lengths(
    session: SessionDep,
    principal: TeamMember,
    dataset_id: int,
    model_id: Annotated[
        int, Query(description="A ready Hugging Face model of your team (its tokenizer.json).")
    ],
    max_length: Annotated[
        int | None,
        Query(ge=2, le=1_048_576, description="Count the rows longer than this many tokens."),
    ] = None,
    text_column: Annotated[
        str, Query(min_length=1, max_length=100, description="The text column or field.")
    ] = "text",
) -> Any:
    try:
        found = service.token_lengths(
            session, principal.team_id, dataset_id, model_id, max_length, text_column
        )
    except service.LengthsPending as exc:
        retry = inspections.RETRY_AFTER_S
        pending = PlanPending(job_id=exc.job, detail=str(exc), retry_after_s=retry)
        return JSONResponse(
            pending.model_dump(), status_code=202, headers={"Retry-After": str(retry)}
        )
    return TokenLengthsOut.model_validate(found)


@router.get(
    "/{dataset_id}/samples",
    response_model=DatasetSamplesOut,
    responses=responses(401, 403, 404, 422, 503),
    summary="A few samples (image thumbnails, or the first rows of a table) recorded by the scan",
)
def dataset_samples(
    dataset: OwnedDataset,
    n: Annotated[int, Query(ge=1, le=64, description="At most this many samples.")] = 16,
) -> DatasetSamplesOut:
    preview = (dataset.info or {}).get("preview") or {}
    return DatasetSamplesOut(
        kind=preview.get("kind"),
        samples=(preview.get("samples") or [])[:n],
        columns=preview.get("columns") or [],
        columns_total=preview.get("columns_total"),
        rows=(preview.get("rows") or [])[:n],
    )
