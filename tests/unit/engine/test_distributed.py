"""`training.gpus` N > 1 on CPU: the same code path as on N GPUs, with gloo and N processes.

Two processes, each on half of every global batch, give the weights and the metrics of one
process on the whole batch to rounding (the gradients are summed in another order): weights
within rtol 1e-5, metrics within rtol 1e-5 or 1e-6 absolute (the kd term of an untrained teacher
is a small difference of terms near 1, so float32 rounding shows at 1e-7 absolute), report once, and resume from rank 0's checkpoint after a cancel or a kill of the whole job.
The student is an MLP without dropout or BatchNorm: with BatchNorm each rank normalises with its
own half's statistics (as DDP without SyncBatchNorm, which needs a GPU), so there the two differ
by more than rounding.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from sklearn.datasets import load_digits

from core.config import RunConfig
from tests.unit.engine.test_trainer import Recorder
from worker.engine import distributed
from worker.engine.export import save_safetensors
from worker.engine.pipeline import run_distillation
from worker.engine.students import build_student
from worker.engine.trainer import Cancelled, epoch_batches

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[3]
TEACHER = {"architecture": "mlp", "kwargs": {"hidden": 24, "depth": 1}}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A small MLP teacher (untrained: the equality does not need a good one) and 240 digits."""
    root = tmp_path_factory.mktemp("ddp")
    torch.manual_seed(1)
    teacher = build_student("mlp", (1, 8, 8), 10, **TEACHER["kwargs"])  # type: ignore[arg-type]
    save_safetensors(teacher, root / "teacher.safetensors")
    digits = load_digits()
    x = (digits.images[:240, None] / 16.0).astype(np.float32)
    np.savez(root / "digits.npz", x=x, y=digits.target[:240])
    return root / "teacher.safetensors", root / "digits.npz"


def _config(files: tuple[Path, Path], **training: object) -> RunConfig:
    return RunConfig.model_validate(
        {
            "teacher": {"path": str(files[0]), **TEACHER},
            "dataset": {"path": str(files[1]), "val_fraction": 0.2},
            "student": {"architecture": "mlp", "kwargs": {"hidden": 16, "dropout": 0.0}},
            "losses": [{"name": "ce"}, {"name": "kd", "params": {"temperature": 4.0}}],
            "training": {
                "epochs": 2,
                "batch_size": 32,
                "lr": 0.1,
                "device": "cpu",
                "export_onnx": False,
                "teacher_cache": "off",
                "checkpoint_every": 3,
                **training,
            },
        }
    )


def _run(config: RunConfig, files: tuple[Path, Path], out: Path, **kwargs: Any) -> dict[str, Any]:
    return run_distillation(config, files[0], files[1], out, **kwargs)


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "student.safetensors"))


@pytest.fixture(scope="module")
def two(
    files: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Recorder]:
    """An uninterrupted run on 2 processes: (its output folder, rank 0's callbacks)."""
    out, rec = tmp_path_factory.mktemp("two"), Recorder()
    _run(_config(files, gpus=2), files, out, callbacks=rec, checkpoint_path=out / "ckpt.pt")
    return out, rec


def test_two_processes_equal_one_with_the_same_global_batch(files, two, tmp_path) -> None:
    one = Recorder()
    summary = _run(_config(files), files, tmp_path, callbacks=one)
    out, rec = two
    single, double = _weights(tmp_path), _weights(out)
    assert single.keys() == double.keys()
    for key in single:
        torch.testing.assert_close(double[key], single[key], rtol=1e-5, atol=1e-6)
    # the metrics are reported once (rank 0), at the same steps, with the same values
    assert [r.step for r in rec.reports] == [r.step for r in one.reports]
    assert summary["train_steps"] == 12 and rec.starts == [(12, 0)]
    for a, b in zip(rec.reports, one.reports, strict=True):
        assert a.metrics.keys() == b.metrics.keys()
        for k in a.metrics:
            assert a.metrics[k] == pytest.approx(b.metrics[k], rel=1e-5, abs=1e-6), k
    assert len(rec.epochs) == 2 and rec.checkpoints == [3, 6, 9, 12]
    for mine, theirs in zip(rec.epochs, one.epochs, strict=True):
        assert mine == pytest.approx(theirs, rel=1e-5, abs=1e-6)  # val/* from rank 0, train/loss


@pytest.mark.slow
def test_cancel_then_resume_ends_where_an_uninterrupted_run_does(files, two, tmp_path) -> None:
    ckpt, out = tmp_path / "checkpoint.pt", tmp_path / "out"
    with pytest.raises(Cancelled):
        _run(
            _config(files, gpus=2), files, out, callbacks=Recorder(stop_at=4), checkpoint_path=ckpt
        )
    assert torch.load(ckpt, weights_only=True)["step"] == 4
    rec = Recorder()
    _run(_config(files, gpus=2), files, out, callbacks=rec, checkpoint_path=ckpt)
    assert rec.starts == [(12, 4)]
    for key, value in _weights(two[0]).items():
        torch.testing.assert_close(_weights(out)[key], value, rtol=1e-6, atol=1e-7)


KILLED_RUN = """
import os, signal, sys
from pathlib import Path
from core.config import RunConfig
from worker.engine.pipeline import run_distillation
from worker.engine.trainer import Callbacks

class KillAfter(Callbacks):
    def on_checkpoint(self, path, step):
        if step == 6:  # the whole job dies right after this checkpoint
            print(os.getpid(), flush=True)
            os.kill(os.getpid(), signal.SIGKILL)

config = RunConfig.model_validate_json(sys.argv[1])
run_distillation(config, Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]),
                 callbacks=KillAfter(), checkpoint_path=Path(sys.argv[5]))
"""


@pytest.mark.slow
def test_killed_job_leaves_no_rank_behind_and_resumes(files, two, tmp_path) -> None:
    ckpt, out = tmp_path / "checkpoint.pt", tmp_path / "out"
    config = _config(files, gpus=2)
    args = [config.model_dump_json(), *map(str, files), str(out), str(ckpt)]
    proc = subprocess.run(
        [sys.executable, "-c", KILLED_RUN, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        start_new_session=True,  # its own process group: rank 0 and the rank it started
        timeout=120,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    group = int(proc.stdout.split()[0])
    deadline = time.monotonic() + 60
    while _group_alive(group):  # rank 1 follows rank 0 (PR_SET_PDEATHSIG)
        assert time.monotonic() < deadline, "rank 1 outlived the killed job"
        time.sleep(0.1)
    assert torch.load(ckpt, weights_only=True)["step"] == 6
    rec = Recorder()
    _run(config, files, out, callbacks=rec, checkpoint_path=ckpt)
    assert rec.starts == [(12, 6)] and [r.step for r in rec.reports][0] == 7
    for key, value in _weights(two[0]).items():
        torch.testing.assert_close(_weights(out)[key], value, rtol=1e-6, atol=1e-7)


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_trailing_batch_too_small_for_every_rank_is_dropped() -> None:
    assert [len(b) for b in epoch_batches(65, 32, 0, 0, False, ranks=2)] == [32, 32]
    assert [len(b) for b in epoch_batches(66, 32, 0, 0, False, ranks=2)] == [32, 32, 2]
    assert [len(b) for b in epoch_batches(67, 32, 0, 0, True, ranks=2)] == [32, 32]
    assert [len(b) for b in epoch_batches(65, 32, 0, 0, True)] == [32, 32]  # as before


def test_config_checks_gpus() -> None:
    files = (Path("t.safetensors"), Path("d.npz"))
    assert _config(files).training.gpus == 1
    with pytest.raises(ValueError, match="does not divide among training.gpus"):
        _config(files, gpus=3)
    with pytest.raises(ValueError, match="greater than or equal to 1"):
        _config(files, gpus=0)
    with pytest.raises(ValueError, match="scheme 'offline' only"):
        RunConfig.model_validate(
            {**_config(files, gpus=2).model_dump(), "scheme": "online", "scheme_params": {}}
        )
    with pytest.raises(ValueError, match="teacher-output cache is written by one process"):
        _config(files, gpus=2, teacher_cache="on")


def _failing_rank(index: int, ranks: int, port: int, device_name: str) -> None:
    """Rank 1 of `test_a_failing_rank_fails_the_job_with_its_error`: joins, then fails."""
    with distributed.joined(index + 1, ranks, port, device_name):
        raise ValueError("rank 1 could not read its data")


@pytest.mark.slow
def test_a_failing_rank_fails_the_job_with_its_error() -> None:
    """Rank 0, waiting in a collective for a rank that failed, raises that rank's error."""
    with (
        pytest.raises(RuntimeError, match="rank 1 could not read its data"),
        distributed.launch(2, "cpu", _failing_rank, ()),
    ):
        distributed.agree(False)  # rank 1 never comes: its connection closes
