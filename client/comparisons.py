"""Saved comparisons of runs, shared with the team."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

from pydantic import Field

from client.base import BaseClient, Out
from client.pagination import PAGE_SIZE, Page, walk


class Comparison(Out):
    id: int
    name: str
    description: str = ""
    run_ids: list[int] = Field(default_factory=list)
    created_by: int | None = None
    created_by_name: str | None = None
    created_at: datetime | None = None


class ComparisonModel(Out):
    """One trained model of a compared run (a run of `online` peers has one per peer)."""

    run_id: int
    run_name: str = ""
    run_status: str = ""
    label: str = "student"
    top1: float | None = None
    agreement: float | None = None
    params: float | None = None
    size_bytes: float | None = None
    flops: float | None = None
    cpu_latency_ms: float | None = None
    val_prefix: str | None = None
    artifacts: dict[str, Any] = Field(default_factory=dict)


class ComparisonsApi(BaseClient):
    """`/comparisons`."""

    def create_comparison(self, name: str, run_ids: list[int], description: str = "") -> Comparison:
        """Save a comparison of runs for the team (the first run is the baseline)."""
        body = {"name": name, "run_ids": list(run_ids), "description": description}
        return Comparison.model_validate(self._json("POST", "/comparisons", json=body))

    def comparisons(self, *, limit: int = 50, cursor: str | None = None) -> Page[Comparison]:
        """One page of the team's saved comparisons, newest first."""
        params = self._query(limit=limit, cursor=cursor)
        return Page[Comparison].model_validate(self._json("GET", "/comparisons", params=params))

    def iter_comparisons(self, *, page_size: int = PAGE_SIZE) -> Iterator[Comparison]:
        """Every saved comparison, page by page."""
        return walk(self.comparisons, page_size=page_size)

    def comparison(self, comparison_id: int) -> Comparison:
        return Comparison.model_validate(self._json("GET", f"/comparisons/{comparison_id}"))

    def delete_comparison(self, comparison_id: int) -> None:
        self._send("DELETE", f"/comparisons/{comparison_id}")

    def comparison_models(self, comparison_id: int) -> list[ComparisonModel]:
        """Every trained model of the comparison's runs (peers, generations, int8, ...)."""
        rows = self._json("GET", f"/comparisons/{comparison_id}/models")
        return [ComparisonModel.model_validate(r) for r in rows]
