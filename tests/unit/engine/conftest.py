"""Fixtures the engine tests share (helpers that are not fixtures: `support.py`)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One intra-op thread for a module's tests (`pytestmark = usefixtures("one_thread")`):
    on tiny models more threads only add overhead, and stall on a busy shared CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
