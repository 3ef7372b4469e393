"""The HTTP layer against hostile servers over real sockets on 127.0.0.1: slow answers end at
a deadline for the whole request, broken bodies are retried and then fail as APIError, an
answer past the size limit is cut off, redirects elsewhere are refused, personal data in an
upstream's error text is masked."""

from __future__ import annotations

import socket
import zlib
from collections.abc import Iterator

import pytest

from connectors.http import FatalAPIError, HttpClient, RetriableAPIError, RetryPolicy
from tests.integration.hostile import (
    HostileServer,
    Seen,
    answer,
    answer_json,
    gzip_of,
    head,
    trickle,
)


def client(url: str, *, timeout: float = 5.0, attempts: int = 2, **kwargs: object) -> HttpClient:
    return HttpClient("woo:hostile", url, timeout=timeout,
                      retry=RetryPolicy(attempts=attempts, backoff=0.0),
                      sleep=lambda _s: None, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def serve() -> Iterator[list[HostileServer]]:
    servers: list[HostileServer] = []
    yield servers
    for server in servers:
        server.close()


def start(servers: list[HostileServer], handler) -> HostileServer:  # type: ignore[no-untyped-def]
    server = HostileServer(handler)
    servers.append(server)
    return server


# -- 2. a deadline for the whole request ------------------------------------------------------


def test_a_body_trickled_a_byte_at_a_time_ends_at_the_total_deadline(serve) -> None:
    # Twelve bytes of body, one every 0.5 s: no single read waits 2 s, the whole takes 6 s+.
    body = b"          []"
    server = start(serve, trickle(head(Content_Type="application/json",
                                       Content_Length=len(body)) + body, every=0.5))
    with pytest.raises(RetriableAPIError) as caught:
        client(server.url, timeout=2.0).get_json("orders")
    assert "no complete answer from http://127.0.0.1" in caught.value.message
    assert "within 2 s (gave up after 2 attempts)" in caught.value.message
    assert len(server.seen) == 2


def test_headers_trickled_a_byte_at_a_time_end_at_the_total_deadline(serve) -> None:
    response = head(Content_Type="application/json", Content_Length=2,
                    X_Padding="p" * 12) + b"[]"
    server = start(serve, trickle(response, every=0.25))
    with pytest.raises(RetriableAPIError, match="within 2 s"):
        client(server.url, timeout=2.0, attempts=1).get_json("orders")


def test_a_prompt_answer_is_unaffected_by_the_deadline(serve) -> None:
    server = start(serve, lambda c, _s: answer_json(c, [{"id": 1}]))
    http = client(server.url, timeout=2.0)
    for _ in range(3):
        assert http.get_json("orders")[0] == [{"id": 1}]


# -- 3. what is transient is retried, then fails as APIError ---------------------------------


def test_json_nested_ten_thousand_deep_is_retried_then_fails_cleanly(serve) -> None:
    server = start(serve, lambda c, _s: answer(c, b"[" * 10_000 + b"]" * 10_000))
    with pytest.raises(RetriableAPIError) as caught:
        client(server.url, attempts=3).get_json("orders")
    assert "nested too deeply to read" in caught.value.message
    assert "gave up after 3 attempts" in caught.value.message
    assert len(server.seen) == 3


def test_a_body_that_is_not_the_gzip_it_claims_is_retried_then_fails_cleanly(serve) -> None:
    server = start(serve, lambda c, _s: answer(c, b"\x1f\x8bnot gzip at all",
                                               Content_Encoding="gzip"))
    with pytest.raises(RetriableAPIError, match="could not be decompressed.*2 attempts"):
        client(server.url).get_json("orders")
    assert len(server.seen) == 2


def test_a_connection_dropped_mid_body_is_retried_then_fails_cleanly(serve) -> None:
    def cut(connection: socket.socket, _seen: Seen) -> None:
        connection.sendall(head(Content_Type="application/json", Content_Length=1000)
                           + b'[{"id": 1}, ')

    server = start(serve, cut)
    with pytest.raises(RetriableAPIError, match="connection dropped while reading"):
        client(server.url).get_json("orders")
    assert len(server.seen) == 2


def test_a_chunked_body_cut_mid_chunk_is_retried_then_fails_cleanly(serve) -> None:
    def cut(connection: socket.socket, _seen: Seen) -> None:
        connection.sendall(head(Content_Type="application/json", Transfer_Encoding="chunked")
                           + b"400\r\n[{\"id\": 1}")

    server = start(serve, cut)
    with pytest.raises(RetriableAPIError, match="connection dropped while reading"):
        client(server.url).get_json("orders")


def test_a_body_that_recovers_on_retry_is_read(serve) -> None:
    def flaky(connection: socket.socket, seen: Seen) -> None:
        if len(server.seen) == 1:
            answer(connection, b"\x1f\x8bbroken", Content_Encoding="gzip")
        else:
            answer(connection, gzip_of(b'[{"id": 7}]'), Content_Encoding="gzip")

    server = start(serve, flaky)
    assert client(server.url).get_json("orders")[0] == [{"id": 7}]


# -- 4. the size limit, counted decoded ------------------------------------------------------


def test_a_gzip_bomb_stops_at_the_limit_counted_decoded(serve) -> None:
    # 64 MiB of blanks and an empty list: valid JSON, 64 KiB on the wire.
    bomb = gzip_of(b" " * (64 << 20) + b"[]")
    assert len(bomb) < 200_000
    server = start(serve, lambda c, _s: answer(c, bomb, Content_Encoding="gzip"))
    with pytest.raises(FatalAPIError) as caught:
        client(server.url, max_response_size=1 << 20).get_json("orders")
    assert caught.value.source == "woo:hostile"
    assert "larger than the limit of 1 MiB (decoded)" in caught.value.message
    assert "max_response_size" in caught.value.message
    assert len(server.seen) == 1  # not retried: it would be as large again


def test_a_deflate_bomb_stops_at_the_limit(serve) -> None:
    bomb = zlib.compress(b" " * (32 << 20) + b"[]", 9)
    server = start(serve, lambda c, _s: answer(c, bomb, Content_Encoding="deflate"))
    with pytest.raises(FatalAPIError, match="larger than the limit of 2 MiB"):
        client(server.url, max_response_size=2 << 20).get_json("orders")


def test_a_huge_plain_body_is_not_read_whole(serve) -> None:
    total = 200 << 20

    def huge(connection: socket.socket, _seen: Seen) -> None:
        connection.sendall(head(Content_Type="application/json", Content_Length=total + 2))
        block = b" " * (1 << 20)
        done = 0
        try:
            while done < total:
                connection.sendall(block)
                done += len(block)
            connection.sendall(b"[]")
        finally:
            server.sent.append(done)

    server = start(serve, huge)
    with pytest.raises(FatalAPIError, match="larger than the limit of 1 MiB"):
        client(server.url, max_response_size=1 << 20).get_json("orders")
    server.close()
    # The client hung up long before the server could send it all.
    assert server.sent and server.sent[0] < total // 2


def test_an_answer_within_the_limit_is_read_whole(serve) -> None:
    body = b'[{"id": 1}]' + b" " * (900 << 10)
    server = start(serve, lambda c, _s: answer(c, gzip_of(body), Content_Encoding="gzip"))
    data, response = client(server.url, max_response_size=1 << 20).get_json("orders")
    assert data == [{"id": 1}] and len(response.content) == len(body)


# -- 5. redirects ----------------------------------------------------------------------------


def test_a_listing_redirected_to_another_host_is_an_error_not_an_empty_answer(serve) -> None:
    elsewhere = start(serve, lambda c, _s: answer_json(c, []))
    target = f"http://localhost:{elsewhere.port}/wp-json/wc/v3/orders"
    shop = start(serve, lambda c, _s: answer(c, b"", "301 Moved Permanently",
                                             Location=target))
    with pytest.raises(FatalAPIError) as caught:
        client(shop.url).get_json("orders", {"page": 1})
    assert (f"redirected to another host: localhost:{elsewhere.port}; set the url to the "
            "final address") in caught.value.message
    assert elsewhere.seen == []
    assert len(shop.seen) == 1  # a refusal, not retried


def test_a_redirect_to_another_port_of_the_same_host_is_refused(serve) -> None:
    elsewhere = start(serve, lambda c, _s: answer_json(c, []))
    shop = start(serve, lambda c, _s: answer(c, b"", "302 Found",
                                             Location=f"{elsewhere.url}/orders"))
    with pytest.raises(FatalAPIError, match="redirected to another host: 127.0.0.1:"):
        client(shop.url).get_json("orders")
    assert elsewhere.seen == []


def test_a_redirect_from_http_to_https_of_the_same_host_is_refused(serve) -> None:
    shop = start(serve, lambda c, _s: answer(
        c, b"", "301 Moved Permanently",
        Location="https://127.0.0.1/wp-json/wc/v3/orders"))
    with pytest.raises(FatalAPIError) as caught:
        client(shop.url).get_json("orders")
    assert "redirected to another address: https://127.0.0.1" in caught.value.message
    assert "set the url to the final address" in caught.value.message


def test_a_redirect_within_the_same_address_is_followed_with_its_query(serve) -> None:
    def shop_handler(connection: socket.socket, seen: Seen) -> None:
        if seen.path == "/old/orders":
            answer(connection, b"", "301 Moved Permanently",
                   Location="/index.php?rest_route=/wc/v3/orders&page=2")
        else:
            answer_json(connection, [{"id": 3}])

    shop = start(serve, shop_handler)
    body, _ = client(f"{shop.url}/old").get_json("orders", {"page": 2})
    assert body == [{"id": 3}]
    assert [s.path for s in shop.seen] == ["/old/orders", "/index.php"]
    assert shop.seen[1].query == {"rest_route": ["/wc/v3/orders"], "page": ["2"]}


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
@pytest.mark.parametrize("status", ["303 See Other", "307 Temporary Redirect"])
def test_a_write_answered_by_a_redirect_is_never_followed(serve, method: str,
                                                          status: str) -> None:
    shop = start(serve, lambda c, _s: answer(c, b"", status, Location="/elsewhere"))
    with pytest.raises(FatalAPIError) as caught:
        client(shop.url).request(method, "orders/5", json_body={"status": "trash"})
    assert f"{method} http://127.0.0.1:{shop.port}/orders/5 was answered by a redirect" \
        in caught.value.message
    assert [s.path for s in shop.seen] == ["/orders/5"]


# -- 6. personal data in upstream error text -------------------------------------------------


def test_personal_data_quoted_in_an_upstream_error_is_masked(serve) -> None:
    said = ("Invalid billing for dorothy.smith@example.com: 'Dorothy Smith', phone "
            "+44 7700 900123, address '12 Acacia Avenue', card 4242424242424242, "
            "ip 203.0.113.77. " + "Lorem ipsum dolor sit amet. " * 30)
    shop = start(serve, lambda c, _s: answer_json(
        c, {"code": "rest_invalid_param", "message": said}, "400 Bad Request"))
    http = client(shop.url, describe_error=lambda r: r.json()["message"])
    with pytest.raises(FatalAPIError) as caught:
        http.get_json("orders")
    message = caught.value.message
    for personal in ("dorothy.smith", "Dorothy Smith", "7700", "900123", "Acacia",
                     "4242424242", "203.0.113.77"):
        assert personal not in message
    assert "d***@example.com" in message
    assert "Lorem ipsum dolor sit amet. " * 10 not in message
    assert message.startswith(f"HTTP 400 at http://127.0.0.1:{shop.port}/orders — Invalid")


# -- 5. through a full sync: a redirected listing never marks holdings gone -------------------


def test_a_full_sync_redirected_to_another_host_marks_nothing_gone(
        serve, tmp_path, ledger_url: str) -> None:
    from datetime import UTC, datetime

    from daemon.config import load_settings
    from daemon.ledger import Ledger
    from daemon.sources import sync_configured
    from sandbox.demo import RunningEstate
    from sandbox.estate import EstateSpec
    from sandbox.seed import build_estate
    from tests.integration.estate_helpers import holding_count

    empty = start(serve, lambda c, _s: answer_json(c, [], X_WP_Total=0, X_WP_TotalPages=0))

    def moved(connection: socket.socket, seen: Seen) -> None:
        query = "&".join(f"{k}={v[0]}" for k, v in seen.query.items())
        answer(connection, b"", "301 Moved Permanently",
               Location=f"http://localhost:{empty.port}{seen.path}?{query}")

    redirector = start(serve, moved)
    estate = build_estate(EstateSpec(seed=3, people=15, now=datetime(2026, 11, 1, tzinfo=UTC)))
    with RunningEstate(estate) as live:
        config = live.write_config(tmp_path / "config", ledger_url=ledger_url)
        shop = next(iter(estate.shops))
        ledger = Ledger.open(ledger_url)
        try:
            settings = load_settings(config)
            assert all(r.ok for r in sync_configured(ledger, settings, only=shop, full=True))
            held = holding_count(ledger)
            assert held > 20
            text = config.read_text(encoding="utf-8").replace(live.url(f"woo:{shop}"),
                                                              redirector.url, 1)
            config.write_text(text, encoding="utf-8")
            [result] = sync_configured(ledger, load_settings(config), only=shop, full=True)
            assert result.status == "failed" and result.gone == 0
            assert f"redirected to another host: localhost:{empty.port}" in (result.error or "")
            assert holding_count(ledger) == held
            assert empty.seen == []
        finally:
            ledger.close()


def test_a_sync_against_a_trickling_shop_fails_the_run_with_the_deadline(serve, ledger) -> None:
    from connectors import woocommerce
    from daemon.sync import sync_source

    body = b" " * 20 + b"[]"
    shop = start(serve, trickle(head(Content_Type="application/json",
                                     Content_Length=len(body), X_WP_Total=0) + body,
                                every=0.5))
    connector = woocommerce.connect(woocommerce.Settings(
        name="slow", url=shop.url, consumer_key="ck_" + "a" * 40,
        consumer_secret="cs_" + "b" * 40, timeout=2.0, retry_attempts=2,
        sleep=lambda _s: None))
    try:
        result = sync_source(ledger, connector, full=True)
    finally:
        connector.close()
    assert result.status == "failed"
    assert "no complete answer from http://127.0.0.1" in (result.error or "")
    assert "within 2 s (gave up after 2 attempts)" in (result.error or "")
    assert len(shop.seen) == 2
