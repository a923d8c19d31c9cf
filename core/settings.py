"""All settings of the studio, in one place, read from `DS_*` environment variables.

The embedded default (`distill-studio up`) and production (docker-compose) differ only in these
values: point `DS_DATABASE_URL` at PostgreSQL and `DS_BROKER_URL` at Redis and nothing else changes.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_SECRET_KEY = "change-me-dev-secret-key"
DEFAULT_ADMIN_PASSWORD = "change-me"


class Settings(BaseSettings):
    # hide_input_in_errors: a refused configuration must not print the secrets it was given
    model_config = SettingsConfigDict(
        env_prefix="DS_", env_file=".env", extra="ignore", hide_input_in_errors=True
    )

    env: Literal["dev", "test", "production"] = "dev"
    data_dir: Path = Path(".ds-data")

    # URLs: empty means "the embedded default inside data_dir".
    database_url: str = ""
    broker_url: str = ""
    artifacts_url: str = ""

    api_url: str = "http://127.0.0.1:8000"
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    ui_port: int = 8501
    broker_port: int = 6390
    # Listeners: the UI and the embedded broker bind to loopback unless told otherwise,
    # like the API (api_host); slow clients get deadlines (backend/serving.py)
    ui_host: str = "127.0.0.1"
    broker_host: str = "127.0.0.1"
    http_header_timeout_s: float = 10.0  # the request line and headers, from their first byte
    http_body_timeout_s: float = 30.0  # the longest pause between chunks of a request body
    # API processes (uvicorn workers) behind one port; everything they share (rate limits,
    # caches, sign-in throttles) lives in the database or the broker, never in process memory
    api_workers: int = 2

    secret_key: str = DEFAULT_SECRET_KEY
    admin_username: str = "admin"
    admin_password: str = ""  # empty: generated once and kept in data_dir/credentials.json

    # Uploads and jobs
    max_upload_mb: int = 512
    max_zip_entries: int = 100_000
    max_zip_uncompressed_mb: int = 2048
    max_decoded_mb: int = 2048  # a dataset once decoded (float32 samples), checked before decoding
    inspect_timeout_s: int = 120
    max_attempts: int = 3
    visibility_timeout_s: int = 48 * 3600
    default_queue: Literal["gpu", "cpu"] = "cpu"  # for runs with device "auto"
    # A worker's GPUs (worker/gpus.py): a count ("4") or the devices ("0,1,3"); "0": none;
    # empty: the devices torch sees. It consumes gpu-N queues up to its count and leases them.
    worker_gpus: str = ""
    # torch's threads in each job a worker runs; 0: its share of the cores (the cores less one,
    # for the API and the database beside it, divided among the jobs it runs at once), or
    # OMP_NUM_THREADS where that is set (worker/sandbox.py `job_torch_threads`)
    worker_torch_threads: int = 0
    # CPU priority (nice, 0-19) of a worker and its jobs: training takes the cores the API and
    # the database leave (worker/sandbox.py `lower_priority`); 0 leaves the worker's own
    worker_nice: int = 10
    metrics_flush_s: float = 2.0
    heartbeat_s: float = 5.0  # a training process marks its run alive this often
    run_stale_s: float = 60.0  # a running run without a heartbeat for this long is recovered
    recover_every_s: float = 30.0  # how often each worker looks for such runs
    token_ttl_days: int = 90

    # Sign-in throttling: failed and successful attempts count, in a moving window kept
    # in Redis on the broker URL (shared by every API process). "N/period" strings of `limits`.
    login_limit_account_address: str = "10/5 minutes"  # one account from one client address
    login_limit_address: str = "100/5 minutes"  # one client address, whatever the account
    # Who may create what: "admins" means studio administrators (superusers).
    team_creators: Literal["admins", "everyone"] = "admins"
    user_creators: Literal["admins", "team_admins"] = "admins"

    # Webhooks: attempt n+1 waits webhook_backoff_s * 2**(n-1) (1, 2, 4, 8, 16 x the base)
    webhook_max_attempts: int = 6  # the first try and 5 retries
    webhook_backoff_s: float = 1.0
    webhook_timeout_s: float = 10.0
    # Where webhooks may go: comma-separated CIDRs (e.g. "127.0.0.1/32,10.0.0.0/8") of
    # loopback, private, link-local or reserved networks that webhooks may reach anyway; empty:
    # only public addresses (core/webhooks/addresses.py)
    webhook_allowed_networks: str = ""

    # Input limits: run configs (read by core/config.py from the same DS_*
    # variables, since the engine does not import backend) and JSON nesting of bodies and fields
    max_layer_pairs: int = 64
    max_losses: int = 16
    max_json_depth: int = 32

    # The child process that loads, inspects and trains uploaded models
    # (worker/sandbox.py): address space (writable memory on CUDA), CPU seconds of all threads,
    # largest file written, open files. 0 turns a limit off.
    sandbox_memory_mb: int = 16384
    sandbox_inspect_cpu_s: int = 600
    sandbox_train_cpu_s: int = 30 * 24 * 3600
    sandbox_file_mb: int = 4096
    sandbox_open_files: int = 1024

    @model_validator(mode="after")
    def _fill_defaults_and_refuse_weak_secrets(self) -> Settings:
        if not self.database_url:
            self.database_url = f"sqlite:///{(self.data_dir / 'studio.db').resolve()}"
        if not self.broker_url:
            self.broker_url = f"redis://127.0.0.1:{self.broker_port}/0"
        if not self.artifacts_url:
            self.artifacts_url = (self.data_dir / "artifacts").resolve().as_uri()
        if self.env == "production":
            if self.secret_key == DEFAULT_SECRET_KEY or len(self.secret_key) < 32:
                raise ValueError(
                    "DS_SECRET_KEY must be set to a random value of 32+ characters in production "
                    "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe(48))'`)"
                )
            if self.admin_password in ("", DEFAULT_ADMIN_PASSWORD) or len(self.admin_password) < 12:
                raise ValueError("DS_ADMIN_PASSWORD must be set to 12+ characters in production")
        return self

    @property
    def max_upload_bytes(self) -> int:
        return self.max_upload_mb * 1024 * 1024

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


@lru_cache
def get_settings() -> Settings:
    return Settings()
