"""`/api/v1/models`: the team's model registry: upload, list by tag, inspect, edit, download,
delete or archive. (Registering a run's student is `POST /api/v1/runs/{id}/register`.)"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Query, Response, UploadFile
from fastapi.responses import JSONResponse, StreamingResponse

from backend.access import (
    DeletableModel,
    OwnedModel,
    Permission,
    TeamMember,
    WritableModel,
    Writer,
    require,
)
from backend.artifacts.router import attachment
from backend.deps import SessionDep, StoreDep
from backend.errors import responses
from backend.models import service
from backend.models.schemas import ModelDetail, ModelOut, ModelUpdate
from backend.teams.schemas import Page, Tag
from core.db.tables import Status

router = APIRouter(prefix="/models", tags=["models"])


@router.post(
    "",
    response_model=ModelOut,
    status_code=201,
    summary="Upload a model (.pt2 archive, .safetensors weights of a catalog architecture, .onnx, "
    "a Hugging Face checkpoint as a .zip or as its files)",
    responses=responses(401, 403, 413, 422, 503, e503="broker unreachable; nothing was saved"),
    openapi_extra={
        "requestBody": {
            "content": {
                "multipart/form-data": {
                    "examples": {
                        "pt2": {
                            "summary": "A torch.export archive (curl -F file=@teacher.pt2)",
                            "value": {
                                "file": ["<the .pt2 file>"],
                                "name": "resnet32x4-cifar100",
                                "description": "teacher, 79.4% top-1",
                            },
                        },
                        "safetensors": {
                            "summary": "Weights of a catalog architecture",
                            "value": {
                                "file": ["<the .safetensors file>"],
                                "name": "resnet8-cifar10",
                                "format": "safetensors",
                                "architecture": "resnet8",
                                "kwargs": '{"input_shape": [3, 32, 32], "num_classes": 10}',
                            },
                        },
                    }
                }
            }
        }
    },
)
def upload_model(
    session: SessionDep,
    store: StoreDep,
    principal: Writer,
    file: Annotated[
        list[UploadFile],
        File(
            description="The .pt2, .safetensors, .onnx or Hugging Face checkpoint .zip file; or "
            "a Hugging Face checkpoint's files, one part each (config.json, model.safetensors, "
            "tokenizer.json, ...: stored as one zip, format hf)."
        ),
    ],
    name: Annotated[str, Form(description="Uploading an existing name makes its next version.")],
    format_: Annotated[
        str | None,
        Form(alias="format", description="pt2 | safetensors | onnx | hf; default: the extension."),
    ] = None,
    architecture: Annotated[
        str | None, Form(description="For safetensors: the catalog architecture, e.g. resnet8.")
    ] = None,
    kwargs: Annotated[
        str | None,
        Form(
            description='JSON; for safetensors: {"input_shape": [3, 32, 32], "num_classes": 10, ...}'
        ),
    ] = None,
    description: Annotated[str, Form()] = "",
) -> ModelOut:
    first, *more = file
    model = service.create_model(
        session,
        store,
        principal,
        upload=first.file,
        filename=first.filename or "",
        more=[(f.file, f.filename or "") for f in more],
        name=name,
        format=format_,
        architecture=architecture,
        kwargs=kwargs,
        description=description,
    )
    return ModelOut.model_validate(model)


@router.get(
    "",
    response_model=Page[ModelOut],
    responses=responses(401, 403, 422, 503),
    summary="Models of your team, newest first (archived ones only with include_archived)",
)
def list_models(
    session: SessionDep,
    principal: TeamMember,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: str | None = None,
    name: Annotated[str | None, Query(description="Only this name (all its versions).")] = None,
    status: Status | None = None,
    tag: Annotated[list[Tag] | None, Query(description="Only models with every tag given.")] = None,
    include_archived: bool = False,
) -> Page[ModelOut]:
    rows, next_cursor = service.list_models(
        session,
        principal.team_id,
        limit=limit,
        cursor=cursor,
        name=name,
        status=status.value if status else None,
        tags=tag,
        include_archived=include_archived,
    )
    return Page[ModelOut](items=[ModelOut.model_validate(r) for r in rows], next_cursor=next_cursor)


@router.get(
    "/{model_id}",
    response_model=ModelDetail,
    responses=responses(401, 403, 404, 422, 503),
    summary="One model, with its card, lineage and inspection",
)
def get_model(model: OwnedModel) -> ModelDetail:
    return ModelDetail.model_validate(model)


@router.patch(
    "/{model_id}",
    response_model=ModelOut,
    responses=responses(401, 403, 404, 422, 503),
    summary="Change a model's description or tags (archived: admins and owners)",
)
def update_model(
    session: SessionDep, principal: TeamMember, model: WritableModel, body: ModelUpdate
) -> ModelOut:
    values = body.model_dump(exclude_unset=True, exclude_none=True)
    if "archived" in values:
        require(principal, Permission.delete)
    return ModelOut.model_validate(service.update_model(session, principal, model, values))


@router.delete(
    "/{model_id}",
    status_code=204,
    response_model=None,
    summary="Delete a model and its file, or archive it (?archive=true); admins and owners",
    responses={
        200: {"model": ModelOut, "description": "archived (with ?archive=true)"},
        204: {"description": "deleted, with its file"},
        **responses(
            401,
            403,
            404,
            409,
            422,
            503,
            e409="runs use it (as teacher or student); archive it instead",
        ),
    },
)
def delete_model(
    session: SessionDep,
    store: StoreDep,
    principal: TeamMember,
    model: DeletableModel,
    archive: Annotated[bool, Query(description="Hide it instead of deleting it.")] = False,
) -> Response:
    kept = service.delete_model(session, store, principal, model, archive)
    if kept is None:
        return Response(status_code=204)
    return JSONResponse(ModelOut.model_validate(kept).model_dump(mode="json"))


@router.get(
    "/{model_id}/download",
    response_class=StreamingResponse,
    summary="Download the model file",
    responses={
        200: {"content": {"application/octet-stream": {}}},
        **responses(401, 403, 404, 422, 503),
    },
)
def download_model(
    session: SessionDep, store: StoreDep, principal: TeamMember, model: OwnedModel
) -> StreamingResponse:
    body = service.download(session, store, principal, model)
    return attachment(body, service.download_name(model))
