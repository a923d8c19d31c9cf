"""Helpers the engine tests share."""

from __future__ import annotations

from typing import Any

from worker.engine.trainer import Callbacks


class Epochs(Callbacks):
    """Records each epoch's metrics and each step's metric names; stops after `stop_at` checks."""

    def __init__(self, stop_at: int | None = None) -> None:
        self.epochs: list[dict[str, float]] = []
        self.steps: list[set[str]] = []
        self.stop_at, self.checks = stop_at, 0

    def on_epoch(self, epoch: int, step: int, metrics: dict[str, float]) -> None:
        self.epochs.append(metrics)

    def on_step(self, report: Any) -> None:
        self.steps.append(set(report.metrics))

    def should_stop(self) -> bool:
        self.checks += 1
        return self.stop_at is not None and self.checks > self.stop_at
