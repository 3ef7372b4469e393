"""The shared HTTP layer: what is retried, what is fatal, what is never said."""

from __future__ import annotations

import hashlib

import pytest
import requests
import responses
from structlog.testing import capture_logs

from connectors.http import (
    FatalAPIError,
    HttpClient,
    RetriableAPIError,
    RetryPolicy,
    redact,
    retry_after_seconds,
)

BASE = "https://api.example.test"
SECRET = "sk_test_CANARYSECRET123"


def client(attempts: int = 3, sleeps: list[float] | None = None) -> HttpClient:
    waits = sleeps if sleeps is not None else []
    return HttpClient("stripe", BASE, retry=RetryPolicy(attempts=attempts, backoff=0.01),
                      secrets=[SECRET], sleep=waits.append,
                      describe_error=lambda r: r.json()["error"]["message"])


@responses.activate
def test_rate_limit_is_retried_after_the_time_the_server_asks() -> None:
    responses.get(f"{BASE}/v1/x", status=429, headers={"Retry-After": "7"},
                  json={"error": {"message": "slow down"}})
    responses.get(f"{BASE}/v1/x", json={"ok": True})
    waits: list[float] = []
    body, _ = client(sleeps=waits).get_json("/v1/x")
    assert body == {"ok": True}
    assert waits == [7.0]


@pytest.mark.parametrize("status", [500, 502, 503, 504])
@responses.activate
def test_server_errors_are_retried_then_given_up(status: int) -> None:
    responses.get(f"{BASE}/v1/x", status=status, json={"error": {"message": "boom"}})
    with pytest.raises(RetriableAPIError, match=f"server error {status}.*3 attempts"):
        client().get_json("/v1/x")
    assert len(responses.calls) == 3


@pytest.mark.parametrize(("status", "words"), [
    (401, "credentials were refused"), (403, "credentials were refused"), (404, "not found"),
    (400, "HTTP 400"),
])
@responses.activate
def test_client_errors_are_fatal_at_once(status: int, words: str) -> None:
    responses.get(f"{BASE}/v1/x", status=status, json={"error": {"message": "nope"}})
    with pytest.raises(FatalAPIError, match=words):
        client().get_json("/v1/x")
    assert len(responses.calls) == 1


@responses.activate
def test_html_page_with_200_is_fatal_not_zero_records() -> None:
    responses.get(f"{BASE}/v1/x", body="<html><body>Maintenance</body></html>",
                  content_type="text/html")
    with pytest.raises(FatalAPIError, match="HTML page instead of JSON"):
        client().get_json("/v1/x")


@responses.activate
def test_truncated_json_is_retried() -> None:
    responses.get(f"{BASE}/v1/x", body='{"data": [1, 2', content_type="application/json")
    responses.get(f"{BASE}/v1/x", json={"data": [1, 2]})
    body, _ = client().get_json("/v1/x")
    assert body == {"data": [1, 2]}


@responses.activate
def test_connection_errors_are_retried() -> None:
    responses.get(f"{BASE}/v1/x", body=requests.ConnectionError("Connection refused"))
    responses.get(f"{BASE}/v1/x", json={})
    assert client().get_json("/v1/x")[0] == {}


@responses.activate
def test_secrets_never_reach_an_error_message() -> None:
    responses.get(f"{BASE}/v1/x", status=401,
                  json={"error": {"message": f"Invalid API Key provided: {SECRET}"}})
    with pytest.raises(FatalAPIError) as caught:
        client().get_json("/v1/x", {"key": SECRET})
    assert SECRET not in str(caught.value)


@responses.activate
def test_a_hashed_email_in_the_path_never_reaches_a_message_or_a_log() -> None:
    member = hashlib.md5(b"canary.person@example.com").hexdigest()  # noqa: S324 - Mailchimp's id
    path = f"/3.0/lists/abc123/members/{member}"
    responses.get(f"{BASE}{path}", status=503, json={"error": {"message": "busy"}})
    with capture_logs() as logged, pytest.raises(RetriableAPIError) as caught:
        client().get_json(path)
    assert [entry["event"] for entry in logged
            if entry["log_level"] != "debug"] == ["upstream.retry"] * 2
    assert member not in str(caught.value) and member not in repr(logged)
    assert "/members/…" in str(caught.value)


@responses.activate
def test_retry_after_longer_than_the_limit_gives_up_at_once() -> None:
    responses.get(f"{BASE}/v1/x", status=429, headers={"Retry-After": "86400"},
                  json={"error": {"message": "come back tomorrow"}})
    with pytest.raises(RetriableAPIError, match="asked to wait 86400 s"):
        client().get_json("/v1/x")
    assert len(responses.calls) == 1


def test_every_attempt_is_signed_afresh() -> None:
    seen: list[str] = []

    def signer(method: str, url: str, params: dict) -> tuple[str, dict]:
        seen.append(f"nonce{len(seen)}")
        return f"{url}?oauth_nonce={seen[-1]}", {}

    http = HttpClient("woo:x", BASE, signer=signer, sleep=lambda _: None,
                      retry=RetryPolicy(attempts=2))
    with responses.RequestsMock() as mock:
        mock.get(f"{BASE}/x", status=503)
        mock.get(f"{BASE}/x", json=[])
        http.get_json("/x")
        assert [c.request.url.split("=")[1] for c in mock.calls] == ["nonce0", "nonce1"]


def test_redact_drops_query_strings_and_secrets() -> None:
    text = f"GET https://shop.test/wp-json/wc/v3/orders?consumer_key=ck_1&x=1 with {SECRET}"
    said = redact(text, [SECRET])
    assert "ck_1" not in said and SECRET not in said and "https://shop.test/wp-json" in said


def test_retry_after_reads_seconds_and_http_dates() -> None:
    assert retry_after_seconds("12") == 12.0
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
    assert retry_after_seconds("soon") is None
