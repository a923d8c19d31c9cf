"""`distill-studio up` as a new user starts it: what it exposes and what it keeps secret.

- Every listener (the API, Streamlit, the Valkey child) is bound to 127.0.0.1 only, read from
  the kernel's socket table (/proc/net/tcp and tcp6), not from the processes' own claims.
- A random secret key is made on the first start and kept in the data dir, 0600, like the
  credentials and the SQLite database; the API uses it (the printed token's stored hash is the
  HMAC under that key) and the log never prints it.
- Ctrl-C stops everything.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.conftest import ROOT, free_port

LISTEN = "0A"


def _listeners(ports: set[int]) -> dict[int, set[str]]:
    """The local addresses listening on each of `ports`, from the kernel's TCP tables."""
    found: dict[int, set[str]] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not Path(table).exists():
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, port = fields[1].split(":")
            if fields[3] != LISTEN or int(port, 16) not in ports:
                continue
            found.setdefault(int(port, 16), set()).add(_address(address))
    return found


def _address(hex_address: str) -> str:
    raw = bytes.fromhex(hex_address)
    if len(raw) == 4:  # little-endian IPv4
        return socket.inet_ntop(socket.AF_INET, raw[::-1])
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
    return socket.inet_ntop(socket.AF_INET6, words)


def test_up_listens_on_loopback_only_and_keeps_its_secret_key_private(tmp_path: Path) -> None:
    data = tmp_path / "studio"
    ports = {"api": free_port(), "ui": free_port(), "broker": free_port()}
    env = {k: v for k, v in os.environ.items() if not k.startswith("DS_")}
    env.update(
        DS_DATA_DIR=str(data),
        DS_API_PORT=str(ports["api"]),
        DS_UI_PORT=str(ports["ui"]),
        DS_BROKER_PORT=str(ports["broker"]),
        PYTHONUNBUFFERED="1",
    )
    log = tmp_path / "up.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "up", "--no-demo"],
        cwd=ROOT,
        env=env,
        stdout=open(log, "wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 240
        text = ""
        while "Press Ctrl-C to stop." not in text:
            assert time.time() < deadline and proc.poll() is None, text[-4000:]
            time.sleep(0.5)
            text = log.read_text(errors="replace")
        listening: dict[int, set[str]] = {}
        while len(listening) < 3:  # Streamlit may still be starting
            assert time.time() < deadline, (listening, ports)
            listening = _listeners(set(ports.values()))
            time.sleep(0.5)
        for name, port in ports.items():
            assert listening[port] == {"127.0.0.1"}, f"{name} listens on {listening[port]}"

        key_file = data / "secret_key"
        key = key_file.read_text().strip()
        assert len(key) >= 32 and key not in text
        for path in (key_file, data / "credentials.json", data / "studio.db"):
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, (path, oct(path.stat().st_mode))
        assert stat.S_IMODE(data.stat().st_mode) == 0o700

        token = re.search(r"API token: (\S+)", text).group(1)  # type: ignore[union-attr]
        me = httpx.get(
            f"http://127.0.0.1:{ports['api']}/api/v1/auth/me",
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )
        assert me.status_code == 200, me.text  # the API hashes tokens with the same key
        with sqlite3.connect(f"file:{data / 'studio.db'}?mode=ro", uri=True) as db:
            hashes = {row[0] for row in db.execute("SELECT token_hash FROM api_tokens")}
        assert hmac.new(key.encode(), token.encode(), hashlib.sha256).hexdigest() in hashes
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
    assert "stopped" in log.read_text(errors="replace")
    assert not _listeners(set(ports.values())), "a listener outlived Ctrl-C"
