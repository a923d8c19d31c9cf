"""Untrusted models are loaded, inspected and trained in a child process with resource limits.

Defence in depth behind `worker.engine.loading` (which already refuses anything that could run
code): the worker's pool process starts `python -P -m worker.sandbox`, a fresh interpreter (no
fork of a process that may hold torch threads), in the job's scratch folder, with

- `RLIMIT_AS` (address space) = `DS_SANDBOX_MEMORY_MB`: torch on CPU needs about 0.9 GiB of
  address space to inspect a small model (measured, `VmPeak`); the default is 16 GiB. On a CUDA
  job the driver reserves far more address space than memory, so there the same figure limits
  `RLIMIT_DATA` (writable private memory) instead;
- `RLIMIT_CPU` = `DS_SANDBOX_INSPECT_CPU_S` for an inspection, `DS_SANDBOX_TRAIN_CPU_S` for a run
  (CPU seconds of all threads together);
- `RLIMIT_FSIZE` = `DS_SANDBOX_FILE_MB` (largest file the child may write: checkpoints, exports);
- `RLIMIT_NOFILE` = `DS_SANDBOX_OPEN_FILES`; `RLIMIT_CORE` = 0;

and an environment without the studio's secrets or service URLs. The child dies with its parent
(`PR_SET_PDEATHSIG`), so a killed worker never leaves a training orphan behind.

The child never touches the database, the broker or the artifact store: it talks to its parent
over a pipe of JSON lines. Training callbacks (progress, cancellation, checkpoints) are calls to
the parent, which answers them with the worker's own reporter. A limit that is hit ends the job
with an error that says which limit and which setting raises it; the worker goes on serving.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import resource
import select
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

Handler = Callable[[str, Any], Any]
_ROOT = Path(__file__).resolve().parent.parent  # the folder that holds the `worker` package
_SECRET_ENV = re.compile(r"SECRET|PASSWORD|TOKEN|CREDENTIAL|_URL$|^AWS_|^DS_ADMIN", re.IGNORECASE)
_ALLOCATION_FAILED = re.compile(
    r"can't allocate memory|not enough memory|out of memory|std::bad_alloc|cannot allocate",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Limits:
    """Resource limits of one child process (0 means no limit)."""

    memory_mb: int
    cpu_s: int
    file_mb: int
    open_files: int
    cuda: bool = False  # limit writable memory (RLIMIT_DATA) rather than address space

    @classmethod
    def for_job(cls, job: str, cuda: bool = False) -> Limits:
        from core.settings import get_settings

        s = get_settings()
        cpu = s.sandbox_train_cpu_s if job == "train" else s.sandbox_inspect_cpu_s
        return cls(s.sandbox_memory_mb, cpu, s.sandbox_file_mb, s.sandbox_open_files, cuda)


class SandboxError(RuntimeError):
    """The job failed in the child. `kind` is the exception's class name there ("ModelLoadError",
    "Cancelled", ...), or "limit" when a resource limit stopped it, or "crash"."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


# -- the parent side --------------------------------------------------------------------------------


@dataclass
class _Child:
    """A started child: it imports torch and the engine, then waits for its one job."""

    proc: subprocess.Popen[bytes]
    out: Any
    inp: Any
    tail: _StderrTail


_spare: _Child | None = None


def _spawn(env: dict[str, str] | None = None) -> _Child:
    to_child_r, to_child_w = os.pipe()
    from_child_r, from_child_w = os.pipe()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-P",
            "-m",
            "worker.sandbox",
            str(to_child_r),
            str(from_child_w),
            str(os.getpid()),
        ],
        cwd="/",
        env={**_child_env(), **(env or {})},
        pass_fds=(to_child_r, from_child_w),
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    os.close(to_child_r)
    os.close(from_child_w)
    return _Child(
        proc, os.fdopen(to_child_w, "wb"), os.fdopen(from_child_r, "rb"), _StderrTail(proc)
    )


def prepare_spare() -> None:
    """Start the next child now, so that importing torch (seconds) does not count against the
    next job's time limit. One idle child per worker process."""
    global _spare
    if _spare is None or _spare.proc.poll() is not None:
        _spare = _spawn()


def _take() -> _Child:
    global _spare
    child = _spare if _spare is not None and _spare.proc.poll() is None else _spawn()
    _spare = None
    child.tail.lines.clear()
    return child


def run(
    job: str,
    kwargs: dict[str, Any],
    *,
    workdir: Path,
    limits: Limits,
    handler: Handler | None = None,
    timeout_s: float | None = None,
    env: dict[str, str] | None = None,
) -> Any:
    """Run `JOBS[job](**kwargs)` in a limited child process in `workdir`; return its result.

    `handler(name, args)` answers the child's calls (progress, cancellation, checkpoints); an
    exception it raises stops the child and propagates, as does one raised in this process
    while waiting (Celery's soft time limit). Raises SandboxError when the job fails there, or
    when it works longer than `timeout_s` (wall clock from the moment the job started in the
    child: importing torch in a spare child is not counted). `env` (a GPU lease's
    `CUDA_VISIBLE_DEVICES`) is set in a child started for this job, not the spare one, which may
    have started CUDA already (CUDA reads the variable once).
    """
    child = _take() if env is None else _spawn(env)
    proc, tail = child.proc, child.tail
    try:
        with child.out as out, child.inp as inp:
            _send(
                out,
                {"job": job, "kwargs": kwargs, "limits": asdict(limits), "workdir": str(workdir)},
            )
            # the next job's child imports torch (seconds of a core) once this job's first call
            # comes (a run: it loaded its inputs and starts training), not while it starts up
            outcome = _serve(inp.fileno(), out, handler, timeout_s, on_first_call=prepare_spare)
    except BaseException:
        _kill(proc)
        raise
    finally:
        cpu_s = _reap(proc)
        tail.join()
        prepare_spare()  # a job that made no call (an inspection): now
    if outcome is None:
        code = proc.returncode
        kind = "limit" if _cpu_exceeded(code, cpu_s, limits) else "crash"
        raise SandboxError(_died(code, cpu_s, limits, tail.text()), kind)
    if "error" in outcome:
        error = outcome["error"]
        raise SandboxError(str(error.get("message")), str(error.get("kind")))
    return outcome.get("result")


def _serve(
    fd: int,
    out: Any,
    handler: Handler | None,
    timeout_s: float | None,
    on_first_call: Callable[[], None] | None = None,
) -> dict[str, Any] | None:
    """Answer the child's calls until it sends its result or error (None: it died first);
    `on_first_call()` runs when the job's first call (after "started") comes."""
    buffer, deadline = b"", None
    while True:
        if b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            message = json.loads(line)
            if "call" not in message:
                return message
            if message["call"] == "started":
                deadline = time.monotonic() + timeout_s if timeout_s else None
                continue
            if on_first_call is not None:
                on_first_call()
                on_first_call = None
            value = handler(message["call"], message.get("args")) if handler else None
            if message.get("reply"):
                _send(out, {"reply": value})
            continue
        wait = None if deadline is None else deadline - time.monotonic()
        if wait is not None and wait <= 0:
            raise SandboxError(f"took longer than the {timeout_s:g}s limit", "timeout")
        ready, _, _ = select.select([fd], [], [], wait)
        if ready:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return None
            buffer += chunk


def _send(out: Any, message: dict[str, Any]) -> None:
    out.write(json.dumps(message).encode() + b"\n")
    out.flush()


THREADS_ENV = "DS_WORKER_TORCH_THREADS"


def usable_cores() -> int:
    """The cores this process may run on (its affinity: a container's cpuset, `taskset`)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def job_torch_threads(setting: int, jobs_at_once: int | str, cores: int, omp: str | None) -> int:
    """torch's threads in each of a worker's jobs: `setting` when given; 0 (torch decides,
    from OMP_NUM_THREADS) where OMP_NUM_THREADS is set; else the cores less one (for what runs
    beside the jobs: the API and the database in the embedded setup or on a compose host, the
    pool processes) divided among the jobs the worker runs at once (Celery's concurrency;
    "auto": one per core), at least one.

    torch takes one thread per core in every process. Two jobs at once on the same cores, or a
    job beside a busy API, then make its threads wait for each other: on two cores shared with
    the API under load, two threads trained the load benchmark's run 10-30x slower than one
    (docs/benchmarks.md)."""
    if setting > 0:
        return setting
    if omp:
        return 0
    at_once = jobs_at_once if isinstance(jobs_at_once, int) and jobs_at_once > 0 else cores
    return max(1, (cores - 1) // at_once)


def lower_priority(nice: int, autogroup: Path = Path("/proc/self/autogroup")) -> int:
    """Run this process, and every process it starts later, at CPU priority `nice` (0: leave
    it; only ever lowered): a job then takes the cores that the API, the database and the
    worker's own reporting leave, and yields them when those need them. Linux groups the
    processes of each session (autogroup) and shares the cores between the groups first, so a
    process's own nice counts only within its session: where this process leads its session
    (the embedded studio starts the worker so), the session's group gets the same nice. Returns
    the nice this process runs at."""
    if nice <= 0:
        return os.getpriority(os.PRIO_PROCESS, 0)
    current = os.getpriority(os.PRIO_PROCESS, 0)
    if current < nice:
        os.setpriority(os.PRIO_PROCESS, 0, min(nice, 19))
    if os.getsid(0) == os.getpid():  # never another session's group (a terminal's)
        with contextlib.suppress(OSError):  # no autogroup (another kernel, a container)
            autogroup.write_text(str(min(nice, 19)))
    return os.getpriority(os.PRIO_PROCESS, 0)


def use_torch_threads() -> int:
    """In a job's child: set torch's threads from the worker's share (`THREADS_ENV`, set when
    the worker starts; 0 or unset: torch's own), never more than torch's own (one per physical
    core: the share counts logical ones), and return the threads torch uses."""
    import torch

    if (threads := int(os.environ.get(THREADS_ENV) or 0)) > 0:
        torch.set_num_threads(min(threads, torch.get_num_threads()))
    return torch.get_num_threads()


def _child_env() -> dict[str, str]:
    """The worker's environment without secrets and service URLs."""
    env = {k: v for k, v in os.environ.items() if not _SECRET_ENV.search(k)}
    env.setdefault("MALLOC_ARENA_MAX", "4")  # glibc reserves 64 MiB of address space per arena
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_ROOT), os.environ.get("PYTHONPATH")]))
    return env


class _StderrTail:
    """Forwards the child's stderr to the worker's log and keeps the last lines for errors."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.lines: deque[str] = deque(maxlen=30)
        self.thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self.thread.start()

    def _read(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            line = raw.decode(errors="replace").rstrip()
            self.lines.append(line)
            sys.stderr.write(f"[sandbox {proc.pid}] {line}\n")

    def join(self) -> None:
        self.thread.join(timeout=5)

    def text(self) -> str:
        return "\n".join(self.lines)


def _kill(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        proc.kill()


def _reap(proc: subprocess.Popen[bytes]) -> float:
    """Wait for the child; its CPU seconds (user + system)."""
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    except ChildProcessError:
        proc.wait()
        return 0.0
    proc.returncode = os.waitstatus_to_exitcode(status)
    return usage.ru_utime + usage.ru_stime


def _cpu_exceeded(code: int | None, cpu_s: float, limits: Limits) -> bool:
    """SIGXCPU at the soft limit, or SIGKILL at the hard one."""
    return code == -signal.SIGXCPU or (
        code == -signal.SIGKILL and bool(limits.cpu_s) and cpu_s >= limits.cpu_s
    )


def _died(code: int | None, cpu_s: float, limits: Limits, stderr: str) -> str:
    """The message for a child that ended without reporting."""
    if _cpu_exceeded(code, cpu_s, limits):
        return _limit_message("cpu", limits)
    if _ALLOCATION_FAILED.search(stderr):
        return _limit_message("memory", limits)
    how = (
        f"signal {signal.Signals(-code).name}" if code is not None and code < 0 else f"code {code}"
    )
    last = stderr.strip().splitlines()[-1:] or ["no output"]
    return f"the model's process ended unexpectedly ({how}): {last[0][:300]}"


def _limit_message(which: str, limits: Limits) -> str:
    if which == "memory":
        return (
            f"the job exceeded the memory limit of {limits.memory_mb} MiB; raise "
            "DS_SANDBOX_MEMORY_MB if the model really needs more"
        )
    if which == "cpu":
        return (
            f"the job exceeded the CPU time limit of {limits.cpu_s} s; raise "
            "DS_SANDBOX_INSPECT_CPU_S (inspections) or DS_SANDBOX_TRAIN_CPU_S (runs)"
        )
    if which == "file":
        return (
            f"the job tried to write a file larger than the limit of {limits.file_mb} MiB; "
            "raise DS_SANDBOX_FILE_MB"
        )
    return (
        f"the job opened more than {limits.open_files} files at once; raise DS_SANDBOX_OPEN_FILES"
    )


# -- the child side ----------------------------------------------------------------------------------


class Channel:
    """The child's end of the pipe: calls to the parent, and the final result."""

    def __init__(self, read_fd: int, write_fd: int) -> None:
        self.inp = os.fdopen(read_fd, "rb")
        self.out = os.fdopen(write_fd, "wb")

    def receive(self) -> dict[str, Any]:
        line = self.inp.readline()
        if not line:
            raise EOFError("the worker went away")
        return json.loads(line)

    def notify(self, name: str, args: Any = None) -> None:
        _send(self.out, {"call": name, "args": args})

    def call(self, name: str, args: Any = None) -> Any:
        _send(self.out, {"call": name, "args": args, "reply": True})
        return self.receive().get("reply")

    def finish(self, message: dict[str, Any]) -> None:
        _send(self.out, message)


def apply_limits(limits: Limits) -> None:
    """setrlimit for this process (soft and hard: it cannot raise them again). The CPU limit
    counts from now: the seconds spent importing torch before the job came are not charged."""
    mb = 1024 * 1024
    usage = resource.getrusage(resource.RUSAGE_SELF)
    spent = int(usage.ru_utime + usage.ru_stime) + 1
    pairs = [
        (resource.RLIMIT_DATA if limits.cuda else resource.RLIMIT_AS, limits.memory_mb * mb),
        (resource.RLIMIT_CPU, limits.cpu_s + spent if limits.cpu_s else 0),
        (resource.RLIMIT_FSIZE, limits.file_mb * mb),
        (resource.RLIMIT_NOFILE, limits.open_files),
        (resource.RLIMIT_CORE, 0),
    ]
    for which, value in pairs:
        if value or which == resource.RLIMIT_CORE:
            hard = value + 5 if which == resource.RLIMIT_CPU else value
            resource.setrlimit(which, (value, hard))


def _die_with_parent(parent: int) -> None:
    """SIGKILL this process when the worker that started it dies (Linux)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


_file_limit_hit = threading.Event()


def _on_file_limit(_signum: int, _frame: Any) -> None:
    """SIGXFSZ: the write fails with EFBIG, which C++ writers (torch's zip writer) may hide."""
    _file_limit_hit.set()


def describe(exc: BaseException, limits: Limits) -> dict[str, str]:
    """The error to report: a limit that was hit, or the exception's own words."""
    if _file_limit_hit.is_set():
        return {"kind": "limit", "message": _limit_message("file", limits)}
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, MemoryError) or (
            isinstance(current, RuntimeError) and _ALLOCATION_FAILED.search(str(current))
        ):
            return {"kind": "limit", "message": _limit_message("memory", limits)}
        if isinstance(current, OSError) and current.errno in (errno.EFBIG, errno.EMFILE):
            which = "file" if current.errno == errno.EFBIG else "open_files"
            return {"kind": "limit", "message": _limit_message(which, limits)}
        current = current.__cause__ or current.__context__
    return {"kind": type(exc).__name__, "message": str(exc) or type(exc).__name__}


def _enter(workdir: Path) -> None:
    """Work in the job's scratch folder; temporary files go there too."""
    import tempfile

    os.chdir(workdir)
    os.environ["TMPDIR"] = str(workdir)
    tempfile.tempdir = str(workdir)


def main(argv: list[str]) -> None:
    """Entry point of the child: read the request, limit ourselves, run the job, report."""
    read_fd, write_fd, parent = (int(a) for a in argv[1:4])
    _die_with_parent(parent)
    channel = Channel(read_fd, write_fd)
    from worker import sandbox_jobs

    sandbox_jobs.preload()
    request = channel.receive()
    limits = Limits(**request["limits"])
    try:
        _enter(Path(request["workdir"]))
        signal.signal(signal.SIGXFSZ, _on_file_limit)
        apply_limits(limits)
        channel.notify("started")
        result = sandbox_jobs.JOBS[request["job"]](channel=channel, **request["kwargs"])
        channel.finish({"result": result})
    except BaseException as exc:  # noqa: BLE001 - everything is reported to the parent
        try:
            channel.finish({"error": describe(exc, limits)})
        except OSError:
            pass
    finally:
        sys.stderr.flush()
        os._exit(0)


if __name__ == "__main__":
    main(sys.argv)
