"""Upstreams that misbehave on 127.0.0.1, for the tests of what privacy-ledger does about
them: one that accepts connections and never answers (or trickles a byte now and then), and
one that answers every request with a fixed error body."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class HangingServer:
    """Accepts every connection, reads the request and never answers; with `trickle`, sends
    one byte of a status line every `trickle` seconds, so no read timeout ever fires."""

    def __init__(self, trickle: float | None = None) -> None:
        self.trickle = trickle
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port = int(self._listener.getsockname()[1])
        self.accepted = 0
        self._closed = threading.Event()
        self._held: list[socket.socket] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> HangingServer:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._closed.set()
        self._listener.close()
        with self._lock:
            for connection in self._held:
                connection.close()

    def drop(self) -> None:
        """Close every connection held so far: a client blocked on one wakes up."""
        with self._lock:
            held, self._held = self._held, []
        for connection in held:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
            connection.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                connection, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self.accepted += 1
                self._held.append(connection)
            if self.trickle is not None:
                threading.Thread(target=self._drip, args=(connection,), daemon=True).start()

    def _drip(self, connection: socket.socket) -> None:
        line = b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 100_000
        for byte in line:
            if self._closed.wait(self.trickle):
                return
            try:
                connection.sendall(bytes([byte]))
            except OSError:
                return


class ErrorServer:
    """Answers every request with `status` and `body` (JSON), e.g. a shop whose error
    message carries terminal escape sequences."""

    def __init__(self, status: int, body: Any) -> None:
        payload = json.dumps(body).encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                self.send_response(status)
                self.send_header("Content-Type", "application/json; charset=UTF-8")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_POST = do_PUT = do_DELETE = do_GET  # noqa: N815

            def log_message(self, *_args: object) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ErrorServer:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
