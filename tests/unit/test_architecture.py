"""The one-way dependencies of DESIGN.md ("The picture"), checked by import-linter.

backend -> core, worker -> core, ui -> client -> core, cli -> client, core (backend and worker
lazily). `backend` and `worker` never import each other; `core`, `backend`, `client` and `ui`
never import torch. The contracts live in pyproject.toml (`[tool.importlinter]`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
PACKAGES = ("core", "backend", "worker", "client", "cli", "ui")


def _lint_imports(cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run `lint-imports` (no cache) in `cwd`, with `cwd` first on the import path."""
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PYTHONPATH": str(cwd), "PATH": str(LINT_IMPORTS.parent)},
    )


def test_the_import_contracts_hold() -> None:
    result = _lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_a_violation_breaks_the_contract_it_names(tmp_path: Path) -> None:
    """A copy of the tree with torch imported in core and worker imported in backend fails."""
    for package in PACKAGES:
        shutil.copytree(
            ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    (tmp_path / "core" / "heavy.py").write_text("import torch  # the violation\n")
    (tmp_path / "backend" / "reach.py").write_text("import worker.tasks  # the violation\n")

    result = _lint_imports(tmp_path)

    out = result.stdout + result.stderr
    assert result.returncode != 0, out
    assert "core, backend, client and ui never import torch BROKEN" in out
    assert "backend and worker never import each other BROKEN" in out
    assert "core.heavy -> torch" in out
    assert "backend.reach -> worker.tasks" in out


def test_the_api_and_the_ui_run_without_torch() -> None:
    """In a fresh interpreter, building the API app and running the UI entry leave torch out."""
    code = textwrap.dedent(
        """
        import sys
        from backend.app import create_app
        create_app()
        from streamlit.testing.v1 import AppTest
        at = AppTest.from_file("ui/streamlit_app.py", default_timeout=120).run()
        assert not at.exception, at.exception
        import ui.components  # noqa: F401
        heavy = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
        print("TORCH:", heavy[:5])
        """
    )
    env = {**os.environ, "DS_API_URL": "http://127.0.0.1:9", "DS_ENV": "test"}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "TORCH: []" in result.stdout, result.stdout
