"""The twin server's hostile faults, as a client sees them on the wire: a body trickled a few
bytes at a time, an oversized body, a gzip bomb, and a redirect to another host name whose
answer is an empty listing. The soak and the hostile-upstream tests rely on each."""

from __future__ import annotations

import http.client
import json
import time
import zlib

from sandbox.server import Reply, Twin, TwinServer, gzip_bomb


class _Listing(Twin):
    name = "listing"

    def handle(self, method: str, path: str, query: dict[str, list[str]],
               headers: dict[str, str], body: bytes) -> Reply:
        return Reply(200, [{"id": n} for n in range(20)])

    def empty_reply(self, path: str) -> Reply:
        return Reply(200, [], headers={"X-Empty-For": path})


def _get(port: int, path: str, host: str = "127.0.0.1") -> http.client.HTTPResponse:
    connection = http.client.HTTPConnection(host, port, timeout=10)
    connection.request("GET", path)
    return connection.getresponse()


def test_trickle_sends_the_whole_body_a_few_bytes_at_a_time() -> None:
    with TwinServer(_Listing()) as server:
        server.twin.faults.inject("trickle", size=40, seconds=0.05)
        started = time.monotonic()
        answer = _get(server.port, "/items")
        first = answer.read(40)
        rest = answer.read()
        elapsed = time.monotonic() - started
    body = first + rest
    assert body.startswith(b'[{"id":0}') and body.endswith(b"]")
    # Each 40-byte step waits 0.05 s: the answer cannot have come in one piece.
    assert elapsed >= 0.05 * (len(body) // 40 - 1)
    assert server.twin.faults.injected["trickle"] == 1


def test_oversize_is_valid_json_of_the_size_asked_for() -> None:
    with TwinServer(_Listing()) as server:
        server.twin.faults.inject("oversize", size=3_000_000)
        answer = _get(server.port, "/items")
        body = answer.read()
    assert int(answer.headers["Content-Length"]) == 3_000_000 == len(body)
    assert json.loads(body) == []


def test_bomb_is_small_on_the_wire_and_huge_decoded() -> None:
    with TwinServer(_Listing()) as server:
        server.twin.faults.inject("bomb", size=50_000_000)
        answer = _get(server.port, "/items")
        wire = answer.read()
    assert answer.headers["Content-Encoding"] == "gzip"
    assert len(wire) < 200_000
    assert len(zlib.decompress(wire, 31)) == 50_000_000
    assert gzip_bomb(50_000_000) == wire


def test_redirect_points_at_another_host_name_that_answers_empty() -> None:
    with TwinServer(_Listing()) as server:
        server.twin.faults.inject("redirect", path="/items")
        answer = _get(server.port, "/items?page=2")
        answer.read()
        location = answer.headers["Location"]
        assert answer.status == 302
        assert location.startswith(f"http://localhost:{server.port}/")
        followed = _get(server.port, location.split(str(server.port), 1)[1], host="localhost")
        assert followed.read() == b"[]"
        assert followed.headers["X-Empty-For"] == "/items"
        # The fault is used up: the next request is answered as usual.
        assert len(_get(server.port, "/items").read()) > 2
