"""The typed Python client of the Distill Studio REST API (`/api/v1`).

This is what the Streamlit UI uses and what people script with. It imports only httpx and
pydantic, never `backend` or `worker`, so `from client import Client` stays light.

    from client import Client

    studio = Client.login("http://127.0.0.1:8000", "admin", "secret")
    teacher = studio.upload_model("resnet32.pt2", name="teacher")
    data = studio.upload_dataset("cifar_small.npz", name="cifar-small")
    run = studio.create_run({"name": "kd", "teacher": {"model_id": teacher.id},
                             "dataset": {"dataset_id": data.id}})
    run = studio.wait(run.id, on_progress=lambda r: print(f"{r.progress:.0%}"))  # live events
    for artifact in studio.artifacts(run.id):
        studio.download_artifact(artifact.id, Path("out"))

One module per resource (`client.runs`, `client.models`, ...) holds its response models and its
methods; `client.base` the HTTP plumbing; `client.pagination` the cursor walk that the
`iter_*` methods, the CLI and the UI share.
"""

from __future__ import annotations

from client.artifacts import Artifact, ArtifactsApi
from client.audit import AuditApi, AuditEntry
from client.auth import AuthApi, Health, Me, Token
from client.base import API, BaseClient, ProgressFn
from client.catalog import Catalog, CatalogApi, CatalogEntry, ParamSpec
from client.comparisons import Comparison, ComparisonModel, ComparisonsApi
from client.datasets import (
    Dataset,
    DatasetInfo,
    DatasetSamples,
    DatasetsApi,
    RowPreview,
    SamplePreview,
)
from client.errors import ApiError
from client.events import RunEvent
from client.models import Inspection, Layer, Model, ModelsApi, Stage
from client.pagination import Page, collect, pages, walk
from client.runs import (
    PLAN_TIMEOUT_S,
    TERMINAL_RUN_STATES,
    Metrics,
    Pending,
    PendingFn,
    Plan,
    Run,
    RunsApi,
    Series,
    SuggestedPair,
)
from client.students import BudgetCandidate, BudgetTable, StudentsApi, Sweep
from client.teams import Invitation, Member, TeamRef, TeamsApi, UserAccount
from client.tokens import ApiToken, TokensApi
from client.webhooks import Webhook, WebhookDelivery, WebhooksApi


class Client(
    StudentsApi,
    AuthApi,
    TokensApi,
    TeamsApi,
    CatalogApi,
    ModelsApi,
    DatasetsApi,
    RunsApi,
    ArtifactsApi,
    ComparisonsApi,
    WebhooksApi,
    AuditApi,
):
    """A session with one Distill Studio API: every resource's methods on one object.

    `http` lets tests pass an `httpx.Client` of their own (e.g. Starlette's `TestClient`);
    `team_id` sends `X-Team-Id` so every call acts for that team.
    """


__all__ = [
    "API",
    "PLAN_TIMEOUT_S",
    "TERMINAL_RUN_STATES",
    "ApiError",
    "ApiToken",
    "Artifact",
    "AuditEntry",
    "BaseClient",
    "BudgetCandidate",
    "BudgetTable",
    "Catalog",
    "CatalogEntry",
    "Client",
    "Comparison",
    "ComparisonModel",
    "Dataset",
    "DatasetInfo",
    "DatasetSamples",
    "Health",
    "Inspection",
    "Invitation",
    "Layer",
    "Me",
    "Member",
    "Metrics",
    "Model",
    "Page",
    "ParamSpec",
    "Pending",
    "PendingFn",
    "Plan",
    "ProgressFn",
    "RowPreview",
    "Run",
    "RunEvent",
    "SamplePreview",
    "Series",
    "Stage",
    "Sweep",
    "SuggestedPair",
    "TeamRef",
    "Token",
    "UserAccount",
    "Webhook",
    "WebhookDelivery",
    "collect",
    "pages",
    "walk",
]
