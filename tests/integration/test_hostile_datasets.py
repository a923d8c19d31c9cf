"""Hostile dataset files, and what any upload may claim (its size, name and declared type), end
to end: through the API (in-process and a real uvicorn server) and a real worker process. Hostile
model files are in test_hostile_models.py.

- zip entries that escape (`..`, absolute paths, drive letters, symlinks) and zip bombs (too many
  entries, too many uncompressed bytes, sizes that lie) end `failed` with the reason, and nothing
  is extracted anywhere;
- an upload over DS_MAX_UPLOAD_MB is cut off with 413 WHILE it streams, also when the client sends
  no Content-Length (chunked): the server stops reading right after the limit (`backend/limits.py`);
- files whose content is not what their name or declared format says fail with the reason, and a
  name and a declared format that disagree are refused with 422.

Figures in docs/reliability.md ("Hostile uploads").
"""

from __future__ import annotations

import asyncio
import io
import select
import socket
import stat
import tarfile
import time
import zipfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.integration.api_helpers import queue_length, row_count, stored_files
from tests.integration.servers import ApiServer, Studio, studio_with_worker

pytestmark = pytest.mark.slow

MAX_ENTRIES = 200
MAX_UNCOMPRESSED_MB = 8
MiB = 1024 * 1024
SLACK = 1024 * 1024  # backend.limits.MULTIPART_SLACK


@pytest.fixture(scope="module")
def studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Studio]:
    tmp = tmp_path_factory.mktemp("uploads")
    (tmp / "probe").mkdir()
    limits = {
        "DS_MAX_ZIP_ENTRIES": str(MAX_ENTRIES),
        "DS_MAX_ZIP_UNCOMPRESSED_MB": str(MAX_UNCOMPRESSED_MB),
    }
    with studio_with_worker(tmp, limits) as studio:
        yield studio


@pytest.fixture
def one_mib_limit(studio: Studio, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """DS_MAX_UPLOAD_MB=1 for the in-process API during one test."""
    from core.db import reset_caches

    monkeypatch.setenv("DS_MAX_UPLOAD_MB", "1")
    reset_caches()
    yield
    monkeypatch.undo()
    reset_caches()


def probe(studio: Studio) -> Path:
    """The folder that escaping zip entries aim at; it must stay empty."""
    return studio.env.data_dir / "probe"


def upload_dataset(api: TestClient, filename: str, data: bytes, **fields: str):
    return api.post(
        "/datasets",
        files={"file": (filename, io.BytesIO(data))},
        data={"name": "hostile", **fields},
    )


def wait_scanned(api: TestClient, path: str, timeout: float = 120) -> dict:
    deadline = time.time() + timeout
    body: dict = {}
    while time.time() < deadline:
        body = api.get(path).json()
        if body["status"] in ("ready", "failed"):
            return body
        time.sleep(0.25)
    raise AssertionError(f"{path} stayed {body.get('status')}: {body}")


# -- files ----------------------------------------------------------------------------------------


def png(value: int, size: int = 8) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (size, size), color=value).save(buf, format="PNG")
    return buf.getvalue()


def image_zip(extra: Callable[[zipfile.ZipFile], None] | None = None) -> bytes:
    """A valid image folder (2 classes x 3 images), plus whatever `extra` writes."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for cls, value in (("cat", 30), ("dog", 200)):
            for i in range(3):
                z.writestr(f"{cls}/{i}.png", png(value + i))
        if extra:
            extra(z)
    return buf.getvalue()


def image_tar(hostile: tarfile.TarInfo) -> bytes:
    """A valid tar image folder (2 classes x 3 images) with the member `hostile` after them."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        for cls, value in (("cat", 30), ("dog", 200)):
            for i in range(3):
                data = png(value + i)
                info = tarfile.TarInfo(f"{cls}/{i}.png")
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
        data = png(1) if hostile.isreg() else b""
        hostile.size = len(data)
        t.addfile(hostile, io.BytesIO(data) if data else None)
    return buf.getvalue()


def tar_member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info


def npz(extra: Callable[[zipfile.ZipFile], None] | None = None) -> bytes:
    buf = io.BytesIO()
    np.savez(
        buf, x=np.random.default_rng(0).random((20, 4)).astype(np.float32), y=np.arange(20) % 2
    )
    if extra:
        with zipfile.ZipFile(buf, "a") as z:
            extra(z)
    return buf.getvalue()


def symlink(z: zipfile.ZipFile, name: str, target: str) -> None:
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    z.writestr(info, target)


def lying_bomb() -> bytes:
    """An entry that claims 64 bytes but inflates to 64 MiB (sizes patched in both headers)."""
    data = image_zip(lambda z: z.writestr("cat/bomb.png", b"\0" * (64 * MiB)))
    raw = bytearray(data)
    name = b"cat/bomb.png"
    local = raw.index(b"PK\x03\x04")
    while raw[local + 30 : local + 30 + len(name)] != name:
        local = raw.index(b"PK\x03\x04", local + 4)
    raw[local + 22 : local + 26] = (64).to_bytes(4, "little")
    central = raw.index(b"PK\x01\x02")
    while raw[central + 46 : central + 46 + len(name)] != name:
        central = raw.index(b"PK\x01\x02", central + 4)
    raw[central + 24 : central + 28] = (64).to_bytes(4, "little")
    return bytes(raw)


Build = Callable[[Path], bytes]
# name -> (upload file name, build(probe folder) -> bytes, words the failure reason must hold)
DATASET_CASES: dict[str, tuple[str, Build, tuple[str, ...]]] = {
    "zip entry with ..": (
        "images.zip",
        lambda p: image_zip(lambda z: z.writestr(escaping(p, "png"), png(1))),
        ("contains '..'",),
    ),
    "zip entry with an absolute path": (
        "images.zip",
        lambda p: image_zip(lambda z: z.writestr(zipfile.ZipInfo(f"{p}/absolute.png"), png(1))),
        ("absolute path",),
    ),
    "zip entry with a drive letter": (
        "images.zip",
        lambda p: image_zip(lambda z: z.writestr("C:/windows/evil.png", png(1))),
        ("absolute path",),
    ),
    "zip symlink entry": (
        "images.zip",
        lambda p: image_zip(lambda z: symlink(z, "cat/link.png", "/etc/passwd")),
        ("symbolic link",),
    ),
    "tar entry with ..": (
        "images.tar",
        lambda p: image_tar(tar_member(escaping(p, "png"))),
        ("contains '..'",),
    ),
    "tar symlink entry": (
        "images.tar",
        lambda p: image_tar(tar_member("cat/link.png", tarfile.SYMTYPE, "/etc/passwd")),
        ("symbolic link",),
    ),
    "tar hard link entry": (
        "images.tar",
        lambda p: image_tar(tar_member("cat/hard.png", tarfile.LNKTYPE, "/etc/passwd")),
        ("hard link",),
    ),
    "npz entry with ..": (
        "arrays.npz",
        lambda p: npz(lambda z: z.writestr(escaping(p, "npy"), b"x")),
        ("contains '..'",),
    ),
    "zip bomb: uncompressed size": (
        "images.zip",
        lambda p: image_zip(lambda z: z.writestr("cat/bomb.png", b"\0" * (64 * MiB))),
        ("unpacks to", "zip bomb"),
    ),
    "zip bomb: entry count": (
        "images.zip",
        lambda p: image_zip(lambda z: [z.writestr(f"cat/{i}.txt", b"") for i in range(300)]),
        (f"more than the limit of {MAX_ENTRIES}",),
    ),
    "zip bomb: sizes that lie": ("images.zip", lambda p: lying_bomb(), ("CRC",)),
    "npz that is a zip of images": ("arrays.npz", lambda p: image_zip(), ("missing array(s)",)),
    "zip that is a csv": (
        "images.zip",
        lambda p: b"a,b,label\n1,2,0\n3,4,1\n",
        ("not a valid zip",),
    ),
}


def escaping(probe_dir: Path, ext: str) -> str:
    """An entry name that climbs out of any extraction folder into `probe_dir`."""
    return f"../../../../../../..{probe_dir}/escaped.{ext}"


# -- zip entries and bombs, through the worker ---------------------------------------------------


@pytest.mark.parametrize("case", list(DATASET_CASES))
def test_hostile_dataset_fails_with_the_reason(studio: Studio, case: str) -> None:
    filename, build, words = DATASET_CASES[case]
    data = build(probe(studio))
    assert len(data) < 2 * MiB  # bombs are small on the wire
    r = upload_dataset(studio.api, filename, data)
    assert r.status_code == 201, r.text
    started = time.time()
    body = wait_scanned(studio.api, f"/datasets/{r.json()['id']}")
    elapsed = time.time() - started
    assert body["status"] == "failed", body
    for word in words:
        assert word in body["error"], (case, body["error"])
    assert body["info"] is None
    print(f"{case}: failed in {elapsed:.1f}s: {body['error'][:160]}")
    # nothing was extracted: not where the entries point, not in the worker's scratch space
    assert not any(probe(studio).iterdir())
    scratch = studio.env.data_dir / "scratch"
    assert not scratch.exists() or not any(p.is_file() for p in scratch.rglob("*"))
    names = ("escaped.png", "escaped.npy", "absolute.png", "evil.png", "link.png", "bomb.png")
    for name in (*names, "hard.png"):
        assert not list(studio.env.data_dir.rglob(name)), name
    assert studio.worker.proc is not None and studio.worker.proc.poll() is None


# -- decoded size: checked from the headers before anything is decoded (DS_MAX_DECODED_MB) ------


def huge_images_zip() -> bytes:
    """The reported attack: 32 solid 8000x8000 PNGs, a few tens of KB zipped, 7.6 GiB as
    float32 (the old loader reached 4 GiB and asked for 7.6 GiB more)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (8000, 8000), 7).save(buf, format="PNG")
    big = buf.getvalue()
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for i in range(32):
            z.writestr(f"{('cat', 'dog')[i % 2]}/{i}.png", big)
    return out.getvalue()


def npz_claiming_a_huge_shape() -> bytes:
    """An .npz whose x.npy header claims (1e6, 1e6) float32 (3.6 TiB) over 64 bytes of data."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": (1_000_000, 1_000_000)}
    )
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("x.npy", header.getvalue() + b"\0" * 64)
        y = io.BytesIO()
        np.save(y, np.array([0, 1]))
        z.writestr("y.npy", y.getvalue())
    return buf.getvalue()


DECODED_CASES: dict[str, tuple[str, Callable[[], bytes], tuple[str, ...]]] = {
    "32 PNGs of 8000x8000": (
        "images.zip",
        huge_images_zip,
        (
            "hostile.zip: decodes to 7.81 GiB (32 images of 8000x8000 L as float32: 7.63 GiB",
            "more than the limit of 2.00 GiB",
            "DS_MAX_DECODED_MB",
        ),
    ),
    "npz header claiming a huge shape": (
        "arrays.npz",
        npz_claiming_a_huge_shape,
        (
            "hostile.npz: decodes to 3725.29 GiB (x: (1000000, 1000000) float32)",
            "DS_MAX_DECODED_MB",
        ),
    ),
    "csv with one enormous row": (
        "table.csv",
        lambda: b"a,b,label\n1,2,0\n" + b"0," * 2_000_000 + b"1\n",
        ("hostile.csv: line 3 is 4000001 bytes long",),
    ),
}


def peak_rss(pid: int) -> int:
    """The peak resident size (VmHWM) of a process, in bytes."""
    status = Path(f"/proc/{pid}/status").read_text()
    return next(
        int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmHWM:")
    )


@pytest.mark.parametrize("case", list(DECODED_CASES))
def test_decoded_size_is_refused_before_decoding(studio: Studio, case: str) -> None:
    """Through the API and a real worker (default DS_MAX_DECODED_MB=2048): the upload ends
    `failed` naming the file, its decoded size, the limit and the setting, and the worker's
    pool process never grew past its earlier peak by more than a few MiB."""
    filename, build, words = DECODED_CASES[case]
    data = build()
    assert len(data) < 8 * MiB  # small on the wire; under DS_MAX_ZIP_UNCOMPRESSED_MB unpacked
    # a valid upload of the same format first: the libraries it imports count before the attack
    warm = {"zip": image_zip, "npz": npz, "csv": lambda: b"a,b,label\n1,2,0\n3,4,1\n"}
    ok = upload_dataset(studio.api, filename, warm[filename.rsplit(".", 1)[1]]())
    assert wait_scanned(studio.api, f"/datasets/{ok.json()['id']}")["status"] == "ready"
    (pool,) = studio.worker.pool_pids()
    before = peak_rss(pool)
    r = upload_dataset(studio.api, filename, data)
    assert r.status_code == 201, r.text
    body = wait_scanned(studio.api, f"/datasets/{r.json()['id']}")
    assert body["status"] == "failed", body
    for word in words:
        assert word in body["error"], (case, body["error"])
    assert body["info"] is None
    assert studio.worker.pool_pids() == [pool], "the pool process was replaced"
    grew = peak_rss(pool) - before
    print(f"{case}: {body['error'][:200]}; worker peak grew {grew / MiB:.1f} MiB")
    assert grew < 64 * MiB, f"the worker's peak grew by {grew / MiB:.0f} MiB"
    assert studio.worker.proc is not None and studio.worker.proc.poll() is None


def test_valid_zip_after_the_bombs_is_scanned(studio: Studio) -> None:
    r = upload_dataset(studio.api, "images.zip", image_zip())
    body = wait_scanned(studio.api, f"/datasets/{r.json()['id']}")
    assert body["status"] == "ready", body
    assert body["info"]["num_samples"] == 6 and body["info"]["classes"] == ["cat", "dog"]


def test_upload_names_never_choose_where_files_go(studio: Studio) -> None:
    before = set(stored_files(studio.env))
    r = upload_dataset(studio.api, f"../../../..{probe(studio)}/escape.npz", npz())
    assert r.status_code == 201, r.text
    new = set(stored_files(studio.env)) - before
    assert len(new) == 1
    (key,) = new
    assert key.startswith("team-") and key.endswith("/file.npz") and ".." not in key
    assert not any(probe(studio).iterdir())


# -- content that is not what the name or the declared format says --------------------------------


def test_png_named_pt2_fails_inspection(studio: Studio) -> None:
    r = studio.api.post(
        "/models", files={"file": ("teacher.pt2", io.BytesIO(png(9, 32)))}, data={"name": "png"}
    )
    assert r.status_code == 201, r.text
    body = wait_scanned(studio.api, f"/models/{r.json()['id']}")
    assert body["status"] == "failed" and "not a torch.export archive" in body["error"], body


def test_name_and_declared_format_must_agree(studio: Studio) -> None:
    before = row_count("Dataset"), queue_length(studio.env)
    for filename, fmt in (("data.npz", "zip"), ("images.zip", "csv"), ("table.csv", "npz")):
        r = upload_dataset(studio.api, filename, b"x", format=fmt)
        assert r.status_code == 422, r.text
        assert f"named as {filename.rsplit('.', 1)[1]} but format={fmt}" in r.json()["detail"]
        assert r.json()["errors"][0]["loc"] == ["body", "format"]
    ok = upload_dataset(studio.api, "data.bin", npz(), format="npz")  # a neutral name is fine
    assert ok.status_code == 201
    assert wait_scanned(studio.api, f"/datasets/{ok.json()['id']}")["status"] == "ready"
    assert (row_count("Dataset"), queue_length(studio.env)) == (before[0] + 1, before[1])


def test_declared_content_types_are_never_believed(studio: Studio) -> None:
    """A part's Content-Type is the client's word: the studio judges a file by its bytes."""
    import pickle

    lying = [("data.npz", npz(), "image/png"), ("images.zip", image_zip(), "text/csv")]
    for filename, data, content_type in lying:  # good files under a wrong type are fine
        r = studio.api.post(
            "/datasets",
            files={"file": (filename, io.BytesIO(data), content_type)},
            data={"name": "lying-type"},
        )
        assert r.status_code == 201, r.text
        assert wait_scanned(studio.api, f"/datasets/{r.json()['id']}")["status"] == "ready"
    # a pickle that claims to be a zip archive is still not a torch.export archive
    evil = pickle.dumps({"x": 1})
    r = studio.api.post(
        "/models",
        files={"file": ("teacher.pt2", io.BytesIO(evil), "application/zip")},
        data={"name": "lying-type"},
    )
    assert r.status_code == 201, r.text
    body = wait_scanned(studio.api, f"/models/{r.json()['id']}")
    assert body["status"] == "failed" and "not a torch.export archive" in body["error"], body
    # a JSON route given another body type, and an upload route given JSON: 422 with the reason
    run = studio.api.post("/runs", content=b"name: x", headers={"Content-Type": "text/yaml"})
    assert run.status_code == 422, run.text
    upload = studio.api.post("/datasets", json={"name": "x", "file": "data.npz"})
    assert upload.status_code == 422 and "file" in upload.text, upload.text


# -- the size limit, enforced while the body streams in ------------------------------------------


BOUNDARY = "hostile-boundary"


def multipart_head(filename: str = "big.pt2") -> bytes:
    return (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="name"\r\n\r\nbig\r\n'
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()


def test_chunked_upload_is_cut_off_while_streaming(studio: Studio, one_mib_limit) -> None:
    """No Content-Length: the body comes from a generator; the app stops pulling past the limit."""
    from backend.app import create_app

    total, chunk = 16 * MiB, 64 * 1024
    pulled = {"bytes": 0, "chunks": 0, "finished": False}

    async def body() -> AsyncIterator[bytes]:
        head = multipart_head()
        pulled["bytes"] += len(head)
        yield head
        for _ in range(total // chunk):
            pulled["bytes"] += chunk
            pulled["chunks"] += 1
            yield b"x" * chunk
        yield f"\r\n--{BOUNDARY}--\r\n".encode()
        pulled["finished"] = True

    async def post(path: str) -> httpx.Response:
        transport = httpx.ASGITransport(app=create_app())
        async with httpx.AsyncClient(transport=transport, base_url="http://t/api/v1") as client:
            return await client.post(
                path,
                content=body(),
                headers={
                    "Authorization": f"Bearer {studio.token}",
                    "Content-Type": f"multipart/form-data; boundary={BOUNDARY}",
                },
            )

    before = row_count("Model"), len(stored_files(studio.env))
    r = asyncio.run(post("/models"))
    assert r.status_code == 413, r.text
    assert r.json()["detail"].startswith("file is larger than 1 MiB")
    assert "content-length" not in {k.lower() for k in r.request.headers}
    assert not pulled["finished"]
    assert 1 * MiB < pulled["bytes"] <= 1 * MiB + SLACK + chunk + 1024, pulled
    assert (row_count("Model"), len(stored_files(studio.env))) == before
    print(
        f"chunked upload of {total // MiB} MiB over a 1 MiB limit: the app read "
        f"{pulled['bytes'] / MiB:.2f} MiB ({pulled['chunks']} of {total // chunk} chunks)"
    )

    # a JSON body has a small limit of its own (4 MiB), chunked or not
    pulled.update(bytes=0, chunks=0, finished=False)

    async def post_json() -> httpx.Response:
        async def json_body() -> AsyncIterator[bytes]:
            yield b'{"name": "'
            for _ in range(total // chunk):
                pulled["bytes"] += chunk
                yield b"a" * chunk
            yield b'"}'
            pulled["finished"] = True

        transport = httpx.ASGITransport(app=create_app())
        async with httpx.AsyncClient(transport=transport, base_url="http://t/api/v1") as client:
            return await client.post(
                "/runs",
                content=json_body(),
                headers={
                    "Authorization": f"Bearer {studio.token}",
                    "Content-Type": "application/json",
                },
            )

    r = asyncio.run(post_json())
    assert r.status_code == 413 and "request body is larger than 4 MiB" in r.json()["detail"]
    assert not pulled["finished"] and pulled["bytes"] <= 4 * MiB + chunk


def _chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def read_response(sock: socket.socket, first: bytes = b"") -> bytes:
    """Status line, headers and the Content-Length body of one response."""
    data = first
    while b"\r\n\r\n" not in data and (more := sock.recv(65536)):
        data += more
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        (
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        ),
        0,
    )
    while len(body) < length and (more := sock.recv(65536)):
        body += more
    return head + b"\r\n\r\n" + body


def test_uvicorn_answers_413_before_the_chunked_body_ends(studio: Studio) -> None:
    """On the wire: a raw socket streams a chunked upload of up to 64 MiB; the 413 arrives while
    it is still sending, and the connection is closed without reading the rest."""
    server = ApiServer(studio.env, {"DS_MAX_UPLOAD_MB": "1"}).start()
    try:
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
        sock.sendall(
            f"POST /api/v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Bearer {studio.token}\r\n"
            f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
            "Transfer-Encoding: chunked\r\n\r\n".encode()
            + _chunk(multipart_head())
        )
        planned, sent, response = 64 * MiB, 0, b""
        started = time.perf_counter()
        while sent < planned:
            if select.select([sock], [], [], 0)[0]:
                response = sock.recv(65536)
                break
            try:
                sock.sendall(_chunk(b"x" * 65536))
            except OSError:  # the server closed the connection after answering
                break
            sent += 65536
        answered_after = time.perf_counter() - started
        response = read_response(sock, response)
        sock.close()
        assert response.startswith(b"HTTP/1.1 413"), response[:200]
        assert b"file is larger than 1 MiB" in response
        assert sent < planned // 4, f"sent {sent / MiB:.1f} MiB before the answer"
        print(
            f"uvicorn: 413 after the client had sent {sent / MiB:.2f} MiB of a planned "
            f"{planned // MiB} MiB chunked body ({answered_after * 1000:.0f} ms)"
        )

        # a declared Content-Length over the limit is answered before any body is sent
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
        sock.sendall(
            f"POST /api/v1/datasets HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Bearer {studio.token}\r\n"
            f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
            f"Content-Length: {100 * MiB}\r\n\r\n".encode()
        )
        response = read_response(sock)
        assert response.startswith(b"HTTP/1.1 413") and b"file is larger than 1 MiB" in response
        sock.close()
        log = server.output()
        assert log.count('"POST /api/v1/models HTTP/1.1" 413') == 1
        assert "Traceback" not in log and " 500 " not in log
    finally:
        server.stop()
