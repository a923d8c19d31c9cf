"""`/api/v1/artifacts`: download a run's outputs."""

from __future__ import annotations

from collections.abc import Iterator

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from backend.access import OwnedArtifact, TeamMember
from backend.artifacts import service
from backend.artifacts.schemas import ArtifactOut
from backend.deps import SessionDep, StoreDep
from backend.errors import responses

router = APIRouter(prefix="/artifacts", tags=["artifacts"])


def attachment(
    body: Iterator[bytes], filename: str, media_type: str = "application/octet-stream"
) -> StreamingResponse:
    """Stream `body` as a file download named `filename` (sanitised)."""
    headers = {"Content-Disposition": service.content_disposition(filename)}
    return StreamingResponse(body, media_type=media_type, headers=headers)


@router.get(
    "/{artifact_id}",
    response_model=ArtifactOut,
    responses=responses(401, 403, 404, 422, 503),
    summary="One artifact",
)
def get_artifact(art: OwnedArtifact) -> ArtifactOut:
    return ArtifactOut.model_validate(art)


@router.get(
    "/{artifact_id}/download",
    response_class=StreamingResponse,
    summary="Download an artifact's file",
    responses={
        200: {"content": {"application/octet-stream": {}}},
        **responses(401, 403, 404, 422, 503),
    },
)
def download(
    session: SessionDep, store: StoreDep, principal: TeamMember, art: OwnedArtifact
) -> StreamingResponse:
    body = service.download(session, store, principal, art)
    return attachment(body, art.filename)
