"""Serving the API with uvicorn, with deadlines for slow clients.

uvicorn closes idle keep-alive connections (`timeout_keep_alive`) and bounds the size of an
incomplete request head (`h11_max_incomplete_event_size`), but waits forever for a request whose
headers, or body, trickle in (a "slowloris" client holds a socket, and a file descriptor, per
connection for as long as it likes). `deadline_protocol()` wraps uvicorn's HTTP protocol class:

- the request line and headers must arrive within `DS_HTTP_HEADER_TIMEOUT_S` of their first byte
  (of the connection, for the first request);
- while a request body is being received, the client may pause at most `DS_HTTP_BODY_TIMEOUT_S`
  between chunks (an idle limit: a large upload over a slow link is fine while bytes flow; time
  the server itself stops reading, because the application is busy, does not count).

A connection whose headers miss their deadline is answered 408 and closed; one whose body stalls
is closed (the application sees the client disconnect).

`run_api()` serves the app in `DS_API_WORKERS` processes, on Linux each with a listening socket of
its own (`_ListenerPerProcess`); uvicorn gets the protocol class as an import string
(`API_PROTOCOL`), so each worker process builds it and applies the deadlines. A request head
larger than 64 KiB is answered 431 and closed, whichever parser uvicorn uses (h11 bounds it,
httptools does not).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
from typing import Any

log = logging.getLogger(__name__)

MAX_HEAD_BYTES = 64 * 1024  # request line and headers


def _answer(status: bytes, text: bytes) -> bytes:
    return (
        b"HTTP/1.1 %s\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: %d\r\n"
        b"connection: close\r\n\r\n%s" % (status, len(text), text)
    )


TIMEOUT_408 = _answer(b"408 Request Timeout", b"the request headers did not arrive in time\n")
HEAD_TOO_LARGE_431 = _answer(
    b"431 Request Header Fields Too Large",
    b"the request line and headers may take at most 64 KiB\n",
)


def deadline_protocol(
    base: type[asyncio.Protocol], header_timeout_s: float, body_timeout_s: float
) -> type[asyncio.Protocol]:
    """A subclass of uvicorn's HTTP protocol class `base` (h11 or httptools) that closes
    connections whose request headers or body do not arrive in time (see the module docstring)."""

    class DeadlineProtocol(base):  # type: ignore[valid-type, misc]
        _ds_timer: asyncio.TimerHandle | None = None
        _ds_cycle_before: Any = None  # the request cycle when the header clock started
        _ds_head_bytes = 0  # bytes of the request head received so far

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._ds_headers_clock()

        def connection_lost(self, exc: Exception | None) -> None:
            self._ds_cancel()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self._ds_timer is None and self._ds_between_requests():
                self._ds_headers_clock()  # the first bytes of the next request on this connection
            super().data_received(data)
            self._ds_update(len(data))

        # -- the clocks ------------------------------------------------------------------------

        def _ds_between_requests(self) -> bool:
            cycle = getattr(self, "cycle", None)
            return cycle is None or bool(getattr(cycle, "response_complete", False))

        def _ds_cancel(self) -> None:
            if self._ds_timer is not None:
                self._ds_timer.cancel()
                self._ds_timer = None

        def _ds_headers_clock(self) -> None:
            self._ds_cancel()
            self._ds_cycle_before = getattr(self, "cycle", None)
            self._ds_head_bytes = 0
            self._ds_timer = self.loop.call_later(header_timeout_s, self._ds_expired, "headers")

        def _ds_body_clock(self) -> None:
            self._ds_cancel()
            self._ds_timer = self.loop.call_later(body_timeout_s, self._ds_expired, "body")

        def _ds_update(self, received: int) -> None:
            """After bytes were parsed: the headers are complete when a new request cycle began;
            then the body clock runs while more of the body is expected. A head that grows past
            MAX_HEAD_BYTES without ending is answered 431 (h11 caps it too; httptools not)."""
            cycle = getattr(self, "cycle", None)
            if cycle is None or cycle is self._ds_cycle_before:
                if self._ds_timer is not None:  # still reading the request line and headers
                    self._ds_head_bytes += received
                    if self._ds_head_bytes > MAX_HEAD_BYTES:
                        self._ds_refuse(HEAD_TOO_LARGE_431, "headers were larger than 64 KiB")
                return  # their clock keeps running
            if getattr(cycle, "more_body", False) and not getattr(
                cycle, "response_complete", False
            ):
                self._ds_body_clock()  # restarted by every chunk: an idle limit
            else:
                self._ds_cancel()  # the whole request is in; the application takes its time
                self._ds_cycle_before = cycle

        def _ds_refuse(self, answer: bytes, why: str) -> None:
            self._ds_cancel()
            transport = getattr(self, "transport", None)
            if transport is None or transport.is_closing():
                return
            client = getattr(self, "client", None)
            log.warning(
                "closing a connection from %s: the request %s", client[0] if client else "?", why
            )
            transport.write(answer)
            transport.close()

        def _ds_expired(self, what: str) -> None:
            self._ds_timer = None
            transport = getattr(self, "transport", None)
            if transport is None or transport.is_closing():
                return
            flow = getattr(self, "flow", None)
            if what == "body" and flow is not None and flow.read_paused:
                self._ds_body_clock()  # we stopped reading (the app is busy): not the client's fault
                return
            limit = header_timeout_s if what == "headers" else body_timeout_s
            client = getattr(self, "client", None)
            log.warning(
                "closing a connection from %s: the request %s did not arrive within %gs",
                client[0] if client else "?",
                what,
                limit,
            )
            if what == "headers":  # no request yet, so no response either: say why
                try:
                    transport.write(TIMEOUT_408)
                except Exception:  # noqa: BLE001 - closing anyway
                    pass
            transport.close()  # a body cut short: the application sees the client disconnect

    DeadlineProtocol.__name__ = DeadlineProtocol.__qualname__ = f"Deadline{base.__name__}"
    return DeadlineProtocol


def api_protocol() -> type[asyncio.Protocol]:
    """uvicorn's default HTTP protocol class with the deadlines of the current settings."""
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    from core.settings import get_settings

    s = get_settings()
    return deadline_protocol(AutoHTTPProtocol, s.http_header_timeout_s, s.http_body_timeout_s)


# uvicorn's `http` setting as an import string, so that every worker process builds the class
# itself (a class made at run time cannot be pickled into the workers uvicorn spawns).
API_PROTOCOL = "backend.serving:ApiProtocol"


def __getattr__(name: str) -> Any:
    """`backend.serving.ApiProtocol`: `api_protocol()`, built on first use in each process."""
    if name == "ApiProtocol":
        cls = api_protocol()
        globals()["ApiProtocol"] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _ListenerPerProcess(socket.socket):
    """The API's address, held by the supervisor (bound, never listening), that reaches each
    worker process as a listening socket of the process's own on the same address.

    uvicorn hands its workers one shared listening socket; whichever process wakes first accepts
    every pending connection, so a few processes end up holding all the clients' keep-alive
    connections (under the load benchmark, four processes' CPU: 9.9, 7.8, 1.6 and 1.5 s). With a
    socket per process and `SO_REUSEPORT`, the kernel spreads new connections across the
    processes by a hash of each (7.3, 7.0, 5.2 and 5.1 s in one run; docs/benchmarks.md, "A
    listening socket per API process"). uvicorn's supervisor pickles the sockets it is
    given into every worker process it starts or restarts: this one pickles as its address and
    unpickles there as a new socket bound to it, which uvicorn makes listen. The supervisor's own
    socket never listens, so the kernel never hands it a connection.
    """

    def __reduce__(self) -> tuple[Any, tuple[int, tuple[str, int]]]:
        host, port = self.getsockname()[:2]
        return _reuse_port_socket, (self.family, (host, port))


def _reuse_port_socket(
    family: int, address: tuple[str, int], cls: type[socket.socket] = socket.socket
) -> socket.socket:
    sock = cls(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(address)
    return sock


def listener_per_process(host: str, port: int) -> socket.socket:
    """The supervisor's socket for `run_api` (see `_ListenerPerProcess`). Raises OSError when
    anything listens on the address already, a second studio included: its `SO_REUSEPORT`
    sockets would otherwise share the port, and the clients, with ours."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))  # without SO_REUSEPORT: refused while anything listens there
    return _reuse_port_socket(family, (host, port), _ListenerPerProcess)


# The kernel spreads connections across SO_REUSEPORT listeners on Linux; elsewhere (macOS, the
# BSDs) the last one bound takes them all, so uvicorn's one shared socket is the better choice.
LISTENER_PER_PROCESS = sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


def run_api(host: str, port: int, workers: int) -> None:
    """Serve `backend.app:create_app` with uvicorn in `workers` processes, each with the deadline
    protocol. uvicorn's supervisor starts them and restarts one that dies; on Linux each process
    listens on a socket of its own (`_ListenerPerProcess`)."""
    import uvicorn
    from uvicorn.config import STARTUP_FAILURE
    from uvicorn.supervisors import Multiprocess

    config = uvicorn.Config(
        "backend.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=max(1, workers),
        log_level="info",
        http=API_PROTOCOL,
        timeout_keep_alive=5,
        timeout_graceful_shutdown=10,  # open event streams (/runs/{id}/events) would hold it
    )
    if config.workers == 1:
        server = uvicorn.Server(config)
        server.run()
        if not server.started:
            sys.exit(STARTUP_FAILURE)
        return
    says = logging.getLogger("uvicorn.error")  # configured by uvicorn.Config, as its own lines
    if not LISTENER_PER_PROCESS:
        sock = config.bind_socket()
    else:
        try:
            sock = listener_per_process(host, port)
        except OSError as exc:
            says.error("cannot serve the API on %s:%d: %s", host, port, exc)
            sys.exit(STARTUP_FAILURE)
        says.info("API on http://%s:%d: %d processes, a socket each", host, port, config.workers)
    Multiprocess(config, sockets=[sock]).run()
