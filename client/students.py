"""Students found for a budget: the cost table of a depth/width search, and launching the best
candidates as a sweep of runs saved as one comparison."""

from __future__ import annotations

import copy
from typing import Any

from pydantic import BaseModel, Field

from client.base import Out
from client.comparisons import Comparison, ComparisonsApi
from client.runs import PLAN_TIMEOUT_S, PendingFn, Run, RunsApi


class BudgetCandidate(Out):
    architecture: str
    kwargs: dict[str, Any] = Field(default_factory=dict)
    params: int
    flops: int
    latency_ms: float | None = None
    percent_of_budget: float

    @property
    def label(self) -> str:
        """`resnet depth=8 width=0.5`: the architecture and its parameters, short."""
        args = " ".join(f"{k}={v}" for k, v in self.kwargs.items() if k != "dropout" or v)
        return f"{self.architecture} {args}".strip()


class BudgetTable(Out):
    """The candidates that meet the target, largest (closest to the budget) first."""

    metric: str
    budget: float
    candidates: list[BudgetCandidate] = Field(default_factory=list)
    tried: int = 0
    rejected: int = 0
    failed: list[dict[str, Any]] = Field(default_factory=list)
    message: str = ""
    input_shape: list[int] = Field(default_factory=list)
    num_classes: int = 0


class Sweep(Out):
    """Runs launched for chosen candidates, saved together as one comparison."""

    runs: list[Run]
    comparison: Comparison


class StudentsApi(RunsApi, ComparisonsApi):
    """`/students/search`, and the sweep of runs for its candidates."""

    def search_students(
        self,
        target: dict[str, float],
        *,
        architecture: str | None = None,
        kwargs: dict[str, Any] | None = None,
        teacher_model_id: int | None = None,
        dataset_id: int | None = None,
        input_shape: list[int] | None = None,
        num_classes: int | None = None,
        wait: float = PLAN_TIMEOUT_S,
        on_pending: PendingFn | None = None,
    ) -> BudgetTable:
        """The students that meet `target` (`{"params": 20000}`, `{"flops": ...}` or
        `{"latency_ms": ...}`): a grid of `architecture`'s depth and width, or of students
        derived from the zoo teacher `teacher_model_id`. A worker measures the candidates; until
        it has, the API answers 202 and this asks again, up to `wait` seconds."""
        body: dict[str, Any] = {
            "target": target,
            **self._query(
                architecture=architecture,
                teacher_model_id=teacher_model_id,
                dataset_id=dataset_id,
                input_shape=input_shape,
                num_classes=num_classes,
            ),
        }
        if kwargs:
            body["kwargs"] = kwargs
        response = self._until_built(
            lambda: self._send("POST", "/students/search", json=body), wait, on_pending
        )
        return BudgetTable.model_validate(response.json())

    def launch_candidates(
        self,
        config: dict[str, Any] | BaseModel,
        candidates: list[BudgetCandidate],
        *,
        comparison_name: str | None = None,
    ) -> Sweep:
        """One run of `config` per candidate (its student replaced by the candidate, its name
        suffixed with it), saved as a comparison the Compare page shows together."""
        if not candidates:
            raise ValueError("choose at least one candidate to launch")
        base = (
            config.model_dump(mode="json", exclude_none=True)
            if isinstance(config, BaseModel)
            else copy.deepcopy(config)
        )
        name = str(base.get("name") or "budget")
        runs = []
        for cand in candidates:
            body = copy.deepcopy(base)
            body["name"] = f"{name} [{cand.label}]"
            body["student"] = {
                "source": "zoo",
                "architecture": cand.architecture,
                "kwargs": dict(cand.kwargs),
            }
            runs.append(self.create_run(body))
        comparison = self.create_comparison(
            comparison_name or f"{name}: budget candidates",
            [r.id for r in runs],
            description="Students found for a budget: "
            + "; ".join(f"{c.label} ({c.params:,} params)" for c in candidates),
        )
        return Sweep(runs=runs, comparison=comparison)
