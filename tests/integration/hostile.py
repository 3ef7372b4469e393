"""Hostile HTTP servers on 127.0.0.1, on raw sockets: each connection is handed to a function
that may answer slowly, cut the body, lie about its encoding or redirect elsewhere."""

from __future__ import annotations

import gzip
import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass
class Seen:
    """One request as the server read it."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes


Handler = Callable[[socket.socket, Seen], None]


@dataclass
class HostileServer:
    """Serves every connection with `handler` (one request per connection) until closed."""

    handler: Handler
    seen: list[Seen] = field(default_factory=list)
    # Bytes each handler managed to send before the client hung up (see send_slowly).
    sent: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> HostileServer:
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._listener.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._one, args=(connection,), daemon=True).start()

    def _one(self, connection: socket.socket) -> None:
        with connection:
            try:
                seen = _read_request(connection)
                if seen is None:
                    return
                self.seen.append(seen)
                self.handler(connection, seen)
            except OSError:
                pass  # the client hung up: that is often the point


def _read_request(connection: socket.socket) -> Seen | None:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = connection.recv(65536)
        if not chunk:
            return None
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    method, target, _ = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = connection.recv(65536)
        if not chunk:
            break
        body += chunk
    parts = urlsplit(target)
    return Seen(method, parts.path, parse_qs(parts.query), headers, body)


def head(status: str = "200 OK", **headers: str | int) -> bytes:
    """A response head; keyword names use _ for - (Content_Type → Content-Type)."""
    lines = [f"HTTP/1.1 {status}", "Connection: close"]
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def answer(connection: socket.socket, body: bytes, status: str = "200 OK",
           content_type: str = "application/json", **headers: str | int) -> None:
    connection.sendall(head(status, Content_Type=content_type, Content_Length=len(body),
                            **headers) + body)


def answer_json(connection: socket.socket, value: Any, status: str = "200 OK",
                **headers: str | int) -> None:
    answer(connection, json.dumps(value).encode(), status, **headers)


def trickle(data: bytes, every: float) -> Handler:
    """Sends `data` (a whole response, head and body) one byte every `every` seconds: each
    read gets something in time, so only a deadline for the whole request ends it."""

    def handle(connection: socket.socket, _seen: Seen) -> None:
        for index in range(len(data)):
            connection.sendall(data[index:index + 1])
            time.sleep(every)

    return handle


def gzip_of(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=9)
