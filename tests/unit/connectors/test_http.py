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


CANARY_SECRET = "cs_CANARY_0123456789abcdef/+=ünï"


@pytest.mark.parametrize("user", ["", "privacy-ledger", "ck_a", "ab", "anystring"])
def test_every_form_of_a_secret_is_redacted(user: str) -> None:
    import base64
    import json
    from urllib.parse import quote, quote_plus

    from connectors.http import Redactor

    basic = base64.b64encode(f"{user}:{CANARY_SECRET}".encode()).decode()
    text = " | ".join([
        CANARY_SECRET, repr(CANARY_SECRET + "\n"), json.dumps(CANARY_SECRET),
        quote(CANARY_SECRET, safe=""), quote_plus(CANARY_SECRET), f"Basic {basic}",
        CANARY_SECRET[:14] + "…", f"'{CANARY_SECRET[:20]}'",
    ])
    said = Redactor([CANARY_SECRET])(text)
    assert "CANARY" not in said and "Q0FOQVJZ" not in said
    # What is left of the base64 is at most the two characters at each end of the key.
    middle = base64.b64encode(CANARY_SECRET[3:27].encode()).decode()
    assert middle[4:-4] not in said
    assert basic[len(basic) // 2 - 6:len(basic) // 2 + 6] not in said
    assert said.count("***") >= 8


def test_a_short_head_of_a_secret_is_left_alone() -> None:
    from connectors.http import Redactor

    # "rk_live_" names a kind of key, not a key: a head shorter than 12 is no secret.
    assert Redactor(["rk_live_CANARY0123456789"])("use an rk_live_… key") == "use an rk_live_… key"


def test_log_lines_carry_no_form_of_a_secret(capsys: pytest.CaptureFixture[str]) -> None:
    import io
    import logging
    from urllib.parse import quote

    import structlog

    from daemon import logs

    stream = io.StringIO()
    logs.add_secrets([CANARY_SECRET])
    logs.configure(stream, level=logging.DEBUG, json=True)
    try:
        structlog.get_logger("test").debug(
            "upstream.response", header=repr(CANARY_SECRET), url=quote(CANARY_SECRET),
            cut=CANARY_SECRET[:13], nested={"list": [CANARY_SECRET]})
    finally:
        structlog.reset_defaults()
    line = stream.getvalue()
    assert "upstream.response" in line and "CANARY" not in line


def test_mask_personal_masks_emails_digit_runs_quoted_phrases_and_cuts() -> None:
    from connectors.http import mask_personal

    said = mask_personal("Member Exists: Jo.Bloggs+news@mail.example.co.uk is already a "
                         "member; phone (0161) 496-0000; name \"Jo Bloggs\"; field 'email' "
                         "order 42 " + "x" * 400)
    assert "Jo.Bloggs" not in said and "J***@mail.example.co.uk" in said
    assert "496" not in said and "Jo Bloggs" not in said
    assert "'email'" in said and "order 42" in said
    assert len(said) == 200 and said.endswith("…")
