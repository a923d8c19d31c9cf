"""The team's audit log (admins and owners)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

from pydantic import Field

from client.base import BaseClient, Out
from client.pagination import PAGE_SIZE, Page, walk


class AuditEntry(Out):
    id: int
    user_id: int | None = None
    username: str = ""
    action: str
    resource_type: str = ""
    resource_id: str | None = None
    detail: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime | None = None


class AuditApi(BaseClient):
    """`/audit`."""

    def audit(
        self,
        *,
        action: str | None = None,
        resource_type: str | None = None,
        resource_id: int | str | None = None,
        user_id: int | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page[AuditEntry]:
        """The team's audit log, newest first (admins and owners). `action` is `model` (every
        model.* action) or one action such as `model.delete`."""
        params = self._query(
            action=action,
            resource_type=resource_type,
            resource_id=None if resource_id is None else str(resource_id),
            user_id=user_id,
            limit=limit,
            cursor=cursor,
        )
        return Page[AuditEntry].model_validate(self._json("GET", "/audit", params=params))

    def iter_audit(self, *, page_size: int = PAGE_SIZE, **filters: Any) -> Iterator[AuditEntry]:
        """Every audit entry matching the filters of `audit()`, page by page."""
        return walk(self.audit, page_size=page_size, **filters)
