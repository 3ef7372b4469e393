"""The loopback HTTP server the twins share: real HTTP/1.1 with keep-alive on 127.0.0.1,
fault injection (latency, status codes with Retry-After, HTML pages served with 200, dropped
connections, truncated JSON, hangs, bodies trickled a few bytes at a time, oversized bodies,
gzip bombs, redirects to another host that answers an empty listing), finite capacity (W
workers, a service time per page, requests beyond W queued), request and connection
counting, and a small control API under `/__twin__/` so that a twin running in another
process can be steered.

A twin subclasses `Twin` and implements `handle()` and `error_reply()`.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

CONTROL_PREFIX = "/__twin__/"

FAULT_KINDS = ("status", "html", "drop", "truncate", "hang", "trickle", "oversize", "bomb",
               "redirect")


@dataclass
class Reply:
    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    # Raw bytes bypass JSON encoding (HTML pages, truncated bodies).
    raw: bytes | None = None
    content_type: str = "application/json; charset=UTF-8"


@dataclass
class Fault:
    kind: str
    times: int = 1
    status: int = 500
    retry_after: str | None = None
    seconds: float = 0.0
    # trickle: bytes sent every `seconds`; oversize and bomb: the decoded body's size.
    size: int = 1
    # Only requests whose path contains this string are hit (None: every request).
    path: str | None = None
    method: str | None = None
    # time.monotonic() after which the fault is dropped, used up or not ("a 401 for a while").
    until: float | None = None


@dataclass
class Capacity:
    """A server with `workers` PHP workers: each request holds one for `base` seconds plus
    `per_item` for every record its JSON list answers (a bigger page costs more to build);
    requests beyond `workers` queue for the next free one, as PHP-FPM's listen queue does."""

    workers: int = 4
    base: float = 0.05
    per_item: float = 0.0005
    # A storefront page (a path under this prefix: a shopper browsing) takes `storefront`.
    storefront_prefix: str = "/shop/"
    storefront: float = 0.05
    # Worker-seconds spent on each path prefix (a benchmark's bound and its shopper's share).
    busy: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self.slots = threading.Semaphore(self.workers)
        self._lock = threading.Lock()

    def service_time(self, path: str, reply: Reply) -> float:
        if path.startswith(self.storefront_prefix):
            return self.storefront
        items = len(reply.body) if isinstance(reply.body, list) else 0
        return self.base + self.per_item * items

    def spent(self, path: str, seconds: float) -> None:
        with self._lock:
            self.busy[path] += seconds


class Faults:
    """Faults queued for the next matching requests, and a standing latency."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: list[Fault] = []
        self.latency = 0.0
        self.injected: Counter[str] = Counter()

    def inject(self, kind: str, times: int = 1, *, lasting: float | None = None,
               **options: Any) -> None:
        """Queue a fault for the next `times` matching requests; with `lasting` (seconds) it
        also ends when that time is up."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; one of {', '.join(FAULT_KINDS)}")
        until = time.monotonic() + lasting if lasting is not None else None
        with self._lock:
            self._queue.append(Fault(kind=kind, times=times, until=until, **options))

    def clear(self) -> None:
        with self._lock:
            self._queue.clear()
            self.latency = 0.0

    def take(self, method: str, path: str) -> Fault | None:
        with self._lock:
            moment = time.monotonic()
            self._queue = [f for f in self._queue if f.until is None or f.until > moment]
            for fault in self._queue:
                if fault.path and fault.path not in path:
                    continue
                if fault.method and fault.method != method:
                    continue
                fault.times -= 1
                if fault.times <= 0:
                    self._queue.remove(fault)
                label = f"{fault.kind}:{fault.status}" if fault.kind == "status" else fault.kind
                self.injected[label] += 1
                return fault
        return None

    @property
    def pending(self) -> int:
        with self._lock:
            moment = time.monotonic()
            return sum(f.times for f in self._queue if f.until is None or f.until > moment)


HTML_PAGE = (b"<!DOCTYPE html><html><head><title>Briefly unavailable for scheduled maintenance"
             b"</title></head><body><h1>Briefly unavailable for scheduled maintenance. "
             b"Check back in a minute.</h1></body></html>")


class Twin:
    """Base of a loopback stand-in for an upstream API."""

    name = "twin"
    # Answer 429 once more than this many connections are open at once (None: no limit).
    connection_limit: int | None = None

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.faults = Faults()
        self.requests: Counter[str] = Counter()
        self._conn_lock = threading.Lock()
        self.open_connections = 0
        self.max_connections = 0
        self.over_limit = 0
        # Finite workers (None: every request is answered at once, as before).
        self.capacity: Capacity | None = None

    # -- to implement ---------------------------------------------------------------------
    def handle(self, method: str, path: str, query: dict[str, list[str]],
               headers: dict[str, str], body: bytes) -> Reply:
        raise NotImplementedError

    def error_reply(self, status: int, message: str) -> Reply:
        return Reply(status, {"error": message})

    def empty_reply(self, path: str) -> Reply:
        """What this API answers for `path` when it holds nothing (served on another host
        name by the "redirect" fault: a client that follows it sees an empty listing)."""
        return Reply(200, [])

    def control(self, action: str, payload: dict[str, Any]) -> Any:
        """Twin-specific control actions (mutating the estate); base knows none."""
        raise KeyError(action)

    def stats(self) -> dict[str, Any]:
        return {
            "requests": dict(self.requests),
            "max_connections": self.max_connections,
            "over_limit": self.over_limit,
            "faults_injected": dict(self.faults.injected),
        }

    # -- counting ---------------------------------------------------------------------------
    def count(self, method: str, path: str) -> None:
        with self._conn_lock:
            self.requests[f"{method} {path}"] += 1

    def requests_to(self, fragment: str, method: str | None = None) -> int:
        with self._conn_lock:
            return sum(n for key, n in self.requests.items()
                       if fragment in key and (method is None or key.startswith(method + " ")))

    @property
    def writes(self) -> int:
        with self._conn_lock:
            return sum(n for key, n in self.requests.items() if not key.startswith("GET "))

    def connection_opened(self) -> bool:
        with self._conn_lock:
            self.open_connections += 1
            self.max_connections = max(self.max_connections, self.open_connections)
            over = self.connection_limit is not None and \
                self.open_connections > self.connection_limit
            if over:
                self.over_limit += 1
            return not over

    def connection_closed(self) -> None:
        with self._conn_lock:
            self.open_connections -= 1


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes: without TCP_NODELAY, Nagle + delayed ACK add
    # 40 ms to every keep-alive request.
    disable_nagle_algorithm = True
    server: _Server

    def setup(self) -> None:
        super().setup()
        self._within_limit = self.server.twin.connection_opened()

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.twin.connection_closed()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        twin = self.server.twin
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if parts.path.startswith(CONTROL_PREFIX):
            self._send(self._control(method, parts.path[len(CONTROL_PREFIX):], body))
            return
        twin.count(method, parts.path)
        if not self._within_limit:
            self._send(twin.error_reply(429, "Too many simultaneous connections"))
            return
        if twin.faults.latency:
            time.sleep(twin.faults.latency)
        fault = twin.faults.take(method, parts.path)
        if fault is not None:
            if fault.kind == "drop":
                self.close_connection = True
                self.connection.close()
                return
            if fault.kind == "hang":
                time.sleep(fault.seconds)
            elif fault.kind == "html":
                self._send(Reply(200, raw=HTML_PAGE, content_type="text/html; charset=UTF-8"))
                return
            elif fault.kind == "redirect":
                # Another host name for the same loopback server: its answer there is empty.
                port = self.server.server_address[1]
                target = f"http://localhost:{port}{CONTROL_PREFIX}empty{self.path}"
                self._send(Reply(302, raw=b"", headers={"Location": target}))
                return
            elif fault.kind == "oversize":
                self._send_padded(fault.size)
                return
            elif fault.kind == "bomb":
                self._send(Reply(200, raw=gzip_bomb(fault.size),
                                 headers={"Content-Encoding": "gzip"}))
                return
            elif fault.kind == "status":
                reply = twin.error_reply(fault.status, f"Injected error {fault.status}")
                if fault.retry_after is not None:
                    reply.headers["Retry-After"] = fault.retry_after
                self._send(reply)
                return
        query = parse_qs(parts.query, keep_blank_values=True)
        headers = {k.lower(): v for k, v in self.headers.items()}
        capacity = twin.capacity
        if capacity is not None:
            capacity.slots.acquire()
        try:
            try:
                reply = twin.handle(method, parts.path, query, headers, body)
            except Exception as exc:  # noqa: BLE001 - a twin bug is a 500, as upstream would be
                reply = twin.error_reply(500, f"twin error: {type(exc).__name__}: {exc}")
            if capacity is not None:
                # The worker stays busy for the page's service time, whatever it computed.
                seconds = capacity.service_time(parts.path, reply)
                time.sleep(seconds)
                capacity.spent(parts.path, seconds)
        finally:
            if capacity is not None:
                capacity.slots.release()
        if fault is not None and fault.kind == "truncate":
            encoded = _encode(reply)
            reply = Reply(reply.status, raw=encoded[: max(1, len(encoded) // 2)],
                          headers=reply.headers, content_type=reply.content_type)
        if fault is not None and fault.kind == "trickle":
            self._send(reply, trickle=(fault.size, fault.seconds))
            return
        self._send(reply)

    def _control(self, method: str, action: str, body: bytes) -> Reply:
        twin = self.server.twin
        payload = json.loads(body or b"{}")
        if action == "stats":
            return Reply(200, twin.stats())
        if action == "faults" and method == "POST":
            twin.faults.inject(**payload)
            return Reply(200, {"pending": twin.faults.pending})
        if action == "faults" and method == "DELETE":
            twin.faults.clear()
            return Reply(200, {"pending": 0})
        if action.startswith("empty/"):
            return twin.empty_reply(urlsplit("/" + action.removeprefix("empty/")).path)
        if action == "capacity":
            # {"workers": W, "base": s, "per_item": s} sets finite capacity; {} removes it.
            twin.capacity = Capacity(**payload) if payload else None
            return Reply(200, {"capacity": payload})
        if action == "busy":
            return Reply(200, dict(twin.capacity.busy) if twin.capacity else {})
        if action == "latency":
            twin.faults.latency = float(payload.get("seconds", 0))
            return Reply(200, {"latency": twin.faults.latency})
        try:
            return Reply(200, {"result": twin.control(action, payload)})
        except KeyError:
            return Reply(404, {"error": f"unknown control action {action!r}"})

    def _send(self, reply: Reply, trickle: tuple[int, float] | None = None) -> None:
        data = _encode(reply)
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(data)))
        for key, value in reply.headers.items():
            self.send_header(key, value)
        self.end_headers()
        if trickle is None:
            if data:
                self.wfile.write(data)
            return
        step, pause = trickle
        for start in range(0, len(data), max(1, step)):
            self.wfile.write(data[start:start + max(1, step)])
            self.wfile.flush()
            time.sleep(pause)

    def _send_padded(self, size: int) -> None:
        """A valid JSON answer of `size` bytes, streamed: an empty list padded with blanks."""
        self.send_response(200)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(max(size, 2)))
        self.end_headers()
        self.wfile.write(b"[")
        left = max(size, 2) - 2
        block = b" " * (1 << 20)
        while left > 0:
            self.wfile.write(block[:left])
            left -= len(block)
        self.wfile.write(b"]")


_BOMBS: dict[int, bytes] = {}


def gzip_bomb(size: int) -> bytes:
    """A gzip body that decodes to `size` bytes of blanks (about 1,000 times its own size)."""
    if size not in _BOMBS:
        packer = zlib.compressobj(9, zlib.DEFLATED, 31)
        block = b" " * (1 << 20)
        parts = [packer.compress(block[: min(len(block), size - done)])
                 for done in range(0, size, len(block))]
        _BOMBS[size] = b"".join(parts) + packer.flush()
    return _BOMBS[size]


def _encode(reply: Reply) -> bytes:
    if reply.raw is not None:
        return reply.raw
    if reply.body is None:
        return b""
    return json.dumps(reply.body, separators=(",", ":")).encode()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, twin: Twin, host: str, port: int) -> None:
        self.twin = twin
        super().__init__((host, port), _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hung up (a timeout test, a killed sync) is normal here, not an error.
        if isinstance(sys.exc_info()[1], BrokenPipeError | ConnectionResetError):
            return
        super().handle_error(request, client_address)


class TwinServer:
    """Runs a twin on 127.0.0.1 in a background thread. Use as a context manager."""

    def __init__(self, twin: Twin, host: str = "127.0.0.1", port: int = 0) -> None:
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError("twins listen on loopback only")
        self.twin = twin
        self._server = _Server(twin, host, port)
        # A short poll interval: stop() waits up to one interval, once per test.
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05},
                                        name=f"twin-{twin.name}", daemon=True)

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> TwinServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> TwinServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
