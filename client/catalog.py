"""The catalog of losses, students and schemes the forms are built from."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from client.base import BaseClient, Out


class ParamSpec(Out):
    name: str
    type: Literal["float", "int", "bool", "str", "choice"]
    default: Any = None
    help: str = ""
    min: float | None = None
    max: float | None = None
    choices: list[str] | None = None


class CatalogEntry(Out):
    name: str
    title: str = ""
    help: str = ""
    params: list[ParamSpec] = Field(default_factory=list)
    paper: str = ""
    kind: str = ""
    needs_pairs: bool = False
    extra: dict[str, Any] = Field(default_factory=dict)

    def defaults(self) -> dict[str, Any]:
        """Each parameter's default value."""
        return {p.name: p.default for p in self.params}


class Catalog(Out):
    losses: list[CatalogEntry] = Field(default_factory=list)
    students: list[CatalogEntry] = Field(default_factory=list)
    schemes: list[CatalogEntry] = Field(default_factory=list)
    tasks: list[CatalogEntry] = Field(default_factory=list)
    optimizers: list[str] = Field(default_factory=list)
    schedules: list[str] = Field(default_factory=list)

    def loss(self, name: str) -> CatalogEntry | None:
        return next((e for e in self.losses if e.name == name), None)

    def student(self, name: str) -> CatalogEntry | None:
        return next((e for e in self.students if e.name == name), None)

    def scheme(self, name: str) -> CatalogEntry | None:
        return next((e for e in self.schemes if e.name == name), None)

    def task(self, name: str) -> CatalogEntry | None:
        return next((e for e in self.tasks if e.name == name), None)


class CatalogApi(BaseClient):
    """`/catalog`."""

    def catalog(self) -> Catalog:
        """Every loss, student and scheme with its parameters, and the training options."""
        return Catalog.model_validate(self._json("GET", "/catalog"))
