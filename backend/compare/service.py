"""Saved comparisons: a team's named sets of runs, for the Compare page and for sharing.

Every run of a comparison must belong to the caller's team when it is saved (an id of another
team answers 404 exactly like an id that does not exist). Runs deleted later simply drop out of
what the page shows; the comparison keeps their ids.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.audit.service import audit
from backend.deps import Principal
from backend.errors import NotFound
from backend.teams.service import page
from core.clock import utcnow
from core.db.tables import Comparison, Run, User
from core.trained_models import trained_models


def _check_runs(session: Session, team_id: int, run_ids: list[int]) -> list[int]:
    """The ids without duplicates, in order; 404 naming the first that is not the team's."""
    ids = list(dict.fromkeys(run_ids))
    found = set(session.scalars(select(Run.id).where(Run.team_id == team_id, Run.id.in_(ids))))
    missing = [i for i in ids if i not in found]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise NotFound(f"run {missing[0]} not found{more}; pick runs of your team to compare")
    return ids


def create(
    session: Session, principal: Principal, name: str, run_ids: list[int], description: str = ""
) -> Comparison:
    ids = _check_runs(session, principal.team_id, run_ids)
    row = Comparison(
        team_id=principal.team_id,
        name=name,
        description=description,
        run_ids=ids,
        created_by=principal.user.id,
        created_at=utcnow(),
    )
    session.add(row)
    session.flush()
    audit(session, principal, "comparison.create", "comparison", row.id, {"run_ids": ids})
    session.commit()
    return row


def list_comparisons(
    session: Session, team_id: int, *, limit: int, cursor: str | None
) -> tuple[list[Comparison], str | None]:
    return page(
        session, select(Comparison).where(Comparison.team_id == team_id), Comparison, limit, cursor
    )


def delete(session: Session, principal: Principal, row: Comparison) -> None:
    """Delete a comparison (authorised by `access.comparison_for_delete`)."""
    audit(session, principal, "comparison.delete", "comparison", row.id, {"name": row.name})
    session.delete(row)
    session.commit()


def usernames(session: Session, rows: list[Comparison]) -> dict[int, str]:
    ids = {r.created_by for r in rows if r.created_by is not None}
    if not ids:
        return {}
    return dict(session.execute(select(User.id, User.username).where(User.id.in_(ids))).all())


def models(session: Session, row: Comparison) -> list[dict[str, Any]]:
    """Every trained model of the comparison's runs that still exist, in the comparison's run
    order (`core.trained_models` rows with the run's id, name and status)."""
    found = session.scalars(
        select(Run).where(Run.team_id == row.team_id, Run.id.in_(row.run_ids or []))
    )
    runs = {run.id: run for run in found}
    return [
        {"run_id": run.id, "run_name": run.name, "run_status": run.status, **model}
        for run in (runs[i] for i in row.run_ids or [] if i in runs)
        for model in trained_models(run.summary)
    ]
