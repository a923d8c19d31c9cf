"""docker-compose.yml, checked as far as it can be without a Docker engine.

Parsed; every service has a pinned image or the project's build; every `distill-studio` command
parses against the real CLI; the studio services' environment builds valid production Settings
with the same DS_* variables the tests use; the GPU worker reserves an NVIDIA device.
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import click
import pytest
import yaml
from typer.main import get_command

from cli.main import app
from core.settings import Settings
from tests.conftest import make_studio_env

ROOT = Path(__file__).resolve().parents[2]
FAKE_ENV = {
    "POSTGRES_PASSWORD": "pg-password-for-test",
    "MINIO_ROOT_PASSWORD": "minio-password-for-test",
    "DS_SECRET_KEY": "x" * 48,
    "DS_ADMIN_PASSWORD": "admin-password-for-test",
}
STUDIO_SERVICES = {"api", "worker-gpu", "worker-cpu", "ui"}


def _interpolate(text: str) -> str:
    def sub(m: re.Match[str]) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3)
        if name in FAKE_ENV:
            return FAKE_ENV[name]
        if op == ":-":
            return arg
        raise AssertionError(f"variable {name} has no default and no test value")

    text = text.replace("$$", "\0")
    return re.sub(r"\$\{(\w+)(:[-?])?([^}]*)\}", sub, text).replace("\0", "$")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(_interpolate((ROOT / "docker-compose.yml").read_text()))


def test_services_and_images(compose: dict) -> None:
    services = compose["services"]
    assert {"postgres", "redis", "minio", "api", "worker-gpu", "worker-cpu", "ui"} <= set(services)
    for name, svc in services.items():
        if "build" in svc:
            assert (ROOT / svc["build"] / "Dockerfile").exists(), name
        image = svc["image"]
        assert re.fullmatch(r"[\w./-]+:[\w.-]+", image), f"{name}: image {image!r} must pin a tag"
        assert not image.endswith(":latest"), name


def _check_cli(args: list[str]) -> None:
    assert args[0] == "distill-studio", args
    group = get_command(app)
    ctx = group.make_context("distill-studio", list(args[1:2]), resilient_parsing=True)
    sub = group.get_command(ctx, args[1])
    assert sub is not None, f"unknown command {args[1]!r}"
    try:
        sub.make_context(args[1], list(args[2:]))
    except click.UsageError as exc:  # pragma: no cover - the assertion message is the point
        raise AssertionError(f"{args}: {exc}") from exc


def _commands(svc: dict) -> list[list[str]]:
    """The commands a service runs (those of an `sh -c` list, each without its `exec`)."""
    cmd = svc["command"]
    if cmd[:2] == ["sh", "-c"]:
        parts = [shlex.split(part) for part in cmd[2].split("&&")]
        return [args[1:] if args[0] == "exec" else args for args in parts]
    return [cmd]


def test_the_last_command_of_a_shell_list_replaces_the_shell(compose: dict) -> None:
    """`sh -c "a && exec b"`: b becomes the container's first process and gets `docker compose
    stop`'s SIGTERM (the API's supervisor then stops its processes gracefully); a shell as the
    first process ignores it, and Docker kills the container 10 s later."""
    for name, svc in compose["services"].items():
        cmd = svc.get("command")
        if name in STUDIO_SERVICES and cmd[:2] == ["sh", "-c"]:
            assert shlex.split(cmd[2].split("&&")[-1])[0] == "exec", name


def test_every_studio_command_parses(compose: dict) -> None:
    for name in STUDIO_SERVICES:
        for args in _commands(compose["services"][name]):
            _check_cli(args)


def test_studio_env_is_valid_production_settings(compose: dict, monkeypatch) -> None:
    for name in STUDIO_SERVICES:
        env = compose["services"][name]["environment"]
        for key in list(os.environ):
            if key.startswith("DS_"):
                monkeypatch.delenv(key)
        for key, value in env.items():
            monkeypatch.setenv(key, str(value))
        settings = Settings()
        assert settings.env == "production"
        assert settings.database_url.startswith("postgresql+psycopg://")
        assert settings.broker_url.startswith("redis://redis:6379")
        assert settings.artifacts_url.startswith("s3://")
        unknown = {k for k in env if k.startswith("DS_")} - {
            f"DS_{f.upper()}" for f in Settings.model_fields
        }
        assert not unknown, f"{name}: unknown settings {unknown}"


def test_tests_use_the_same_settings(compose: dict, tmp_path: Path) -> None:
    api_env = set(compose["services"]["api"]["environment"])
    test_keys = _test_env_keys(tmp_path)
    needed = {"DS_DATABASE_URL", "DS_BROKER_URL", "DS_ARTIFACTS_URL", "DS_SECRET_KEY"}
    assert needed <= test_keys and needed <= api_env


def _test_env_keys(tmp_path: Path) -> set[str]:
    import unittest.mock

    with unittest.mock.patch("tests.conftest._redis_db_url", return_value="redis://x/1"):
        return set(make_studio_env(tmp_path, "sqlite").env)


def test_production_refuses_default_secrets(monkeypatch) -> None:
    monkeypatch.setenv("DS_ENV", "production")
    monkeypatch.setenv("DS_ADMIN_PASSWORD", "admin-password-for-test")
    monkeypatch.delenv("DS_SECRET_KEY", raising=False)
    with pytest.raises(ValueError, match="DS_SECRET_KEY"):
        Settings()


def test_gpu_worker_reserves_a_gpu_and_broker_keeps_jobs(compose: dict) -> None:
    gpu = compose["services"]["worker-gpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert gpu["command"][gpu["command"].index("--queues") + 1] == "gpu"
    assert gpu["command"][gpu["command"].index("--concurrency") + 1] == "1"
    assert devices[0]["count"] == 1 and gpu["environment"]["DS_WORKER_GPUS"] == 1
    redis_cmd = compose["services"]["redis"]["command"]
    assert "--appendonly" in redis_cmd and "noeviction" in redis_cmd


def test_a_gpu_worker_for_n_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    """`DS_WORKER_GPUS=4 docker compose up`: the worker reserves 4 GPUs, knows it has 4, runs 4
    jobs at once and consumes the queues of runs on 1 to 4 GPUs; its settings stay valid."""
    monkeypatch.setitem(FAKE_ENV, "DS_WORKER_GPUS", "4")
    compose = yaml.safe_load(_interpolate((ROOT / "docker-compose.yml").read_text()))
    gpu = compose["services"]["worker-gpu"]
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["count"] == 4
    assert gpu["command"][gpu["command"].index("--concurrency") + 1] == "4"
    _check_cli(gpu["command"])
    env = gpu["environment"]
    assert env["DS_ENV"] == "production" and env["DS_BROKER_URL"] == "redis://redis:6379/0"
    for key in list(os.environ):
        if key.startswith("DS_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, str(value))
    from worker.gpus import detect, worker_queues

    devices = detect(Settings().worker_gpus, {})
    assert devices == ["0", "1", "2", "3"]
    assert worker_queues(["gpu"], len(devices)) == ["gpu", "gpu-2", "gpu-3", "gpu-4"]


def test_workers_yield_the_cores_to_the_api(compose: dict) -> None:
    """Docker shares a host's cores between containers by weight, whatever the nice inside:
    the workers weigh less than the API and the database (left at Docker's 1024)."""
    services = compose["services"]
    for name in ("worker-gpu", "worker-cpu"):
        assert 2 <= services[name]["cpu_shares"] < 1024
    for name in ("api", "postgres", "redis", "ui"):
        assert "cpu_shares" not in services[name]


def test_api_runs_several_processes(compose: dict) -> None:
    """The API command starts several uvicorn worker processes (`--workers N`, N >= 2)."""
    (api_cmd,) = [c for c in _commands(compose["services"]["api"]) if c[1] == "api"]
    workers = int(api_cmd[api_cmd.index("--workers") + 1])
    assert workers >= 2
    ctx = get_command(app).get_command(None, "api").make_context("api", api_cmd[2:])  # type: ignore[union-attr]
    assert ctx.params["workers"] == workers


def test_embedded_default_runs_several_api_processes(monkeypatch) -> None:
    for key in list(os.environ):
        if key.startswith("DS_"):
            monkeypatch.delenv(key)
    assert Settings(_env_file=None).api_workers >= 2  # type: ignore[call-arg]
