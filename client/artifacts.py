"""A run's outputs: list them, read one, download one."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from client.base import BaseClient, Out, filename_from


class Artifact(Out):
    id: int
    run_id: int | None = None
    kind: str = ""
    filename: str = ""
    size_bytes: int = 0
    sha256: str = ""
    created_at: datetime | None = None


class ArtifactsApi(BaseClient):
    """`/runs/{id}/artifacts`, `/artifacts`."""

    def artifacts(self, run_id: int) -> list[Artifact]:
        """A run's outputs (student weights, config, evaluation, ...)."""
        return [Artifact.model_validate(a) for a in self._json("GET", f"/runs/{run_id}/artifacts")]

    def artifact(self, artifact_id: int) -> Artifact:
        return Artifact.model_validate(self._json("GET", f"/artifacts/{artifact_id}"))

    def artifact_bytes(self, artifact_id: int) -> tuple[str, bytes]:
        """(file name, content) of an artifact, read into memory (for small files / the UI)."""
        response = self._send("GET", f"/artifacts/{artifact_id}/download")
        return filename_from(response, f"artifact-{artifact_id}"), response.content

    def download_artifact(self, artifact_id: int, dest: str | Path) -> Path:
        """Stream an artifact to `dest` (a file, or an existing folder: the server's file name
        is used). Returns the written path."""
        return self._download(f"/artifacts/{artifact_id}/download", dest, f"artifact-{artifact_id}")
