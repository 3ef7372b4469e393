"""The one HTTP layer every connector uses: a pooled `requests.Session`, timeouts, retries
with backoff and jitter that honour `Retry-After`, one place that decides whether a failure
is worth retrying, and redaction so that keys never reach a message or a log.
"""

from __future__ import annotations

import email.utils
import json
import random
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import requests
import structlog
from requests.adapters import HTTPAdapter

log = structlog.get_logger("connectors.http")

RETRIABLE_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


class APIError(Exception):
    """A failure talking to an upstream system, in words an owner understands."""

    def __init__(self, source: str, message: str, *, status: int | None = None) -> None:
        self.source = source
        self.status = status
        self.message = message
        super().__init__(f"{source}: {message}")


class RetriableAPIError(APIError):
    """Worth another try: rate limits, server errors, dropped connections, truncated bodies."""


class FatalAPIError(APIError):
    """Another try would fail the same way: wrong keys, missing permissions, wrong URL,
    a body that is not the API at all."""


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5
    backoff: float = 0.5
    max_backoff: float = 30.0
    # A Retry-After longer than this ends the run instead of holding a worker for ages.
    max_retry_after: float = 300.0


def redact(text: str, secrets: Iterable[str]) -> str:
    """The text with every secret replaced by `***`, and every URL's query string dropped
    (OAuth signatures and keys travel there)."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return re.sub(r"(https?://[^\s?#'\"]+)\?[^\s'\"]*", r"\1?…", text)


# A path segment that is an MD5: Mailchimp names a member by the hash of their email.
_HASHED_SEGMENT = re.compile(r"/[0-9a-fA-F]{32}(?=/|$)")


def strip_query(url: str) -> str:
    """The URL as messages and logs show it: no query string (keys, signatures) and no
    person's hashed email in the path."""
    parts = urlsplit(url)
    path = _HASHED_SEGMENT.sub("/…", parts.path)
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def retry_after_seconds(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, moment.timestamp() - time.time())


def looks_like_html(response: requests.Response) -> bool:
    kind = response.headers.get("Content-Type", "").lower()
    head = response.content[:200].lstrip().lower()
    return "html" in kind or head.startswith((b"<!doctype", b"<html", b"<"))


ErrorDescriber = Callable[[requests.Response], str | None]
Signer = Callable[[str, str, dict[str, Any]], tuple[str, dict[str, Any] | None]]


class HttpClient:
    """A pooled session bound to one upstream source.

    `describe_error` turns an upstream error body into the upstream's own words (each API has
    its own error shape); `signer` re-signs every attempt (OAuth nonces must not repeat).
    """

    def __init__(
        self,
        source: str,
        base_url: str,
        *,
        auth: requests.auth.AuthBase | tuple[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        pool_size: int = 4,
        secrets: Iterable[str] = (),
        describe_error: ErrorDescriber | None = None,
        signer: Signer | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.source = source
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.secrets = tuple(s for s in secrets if s)
        self.describe_error = describe_error
        self.signer = signer
        self.sleep = sleep
        self.requests_made = 0
        session = requests.Session()
        # Pool as many connections as the connector may use at once, and no automatic
        # retries below us: this class decides what is retried.
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=max(1, pool_size), max_retries=0)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        session.auth = auth
        session.headers.update({"Accept": "application/json",
                                "User-Agent": "privacy-ledger/0.1"})
        session.headers.update(headers or {})
        # Never pick up credentials from ~/.netrc or proxies from the environment by surprise.
        session.trust_env = False
        self.session = session

    def close(self) -> None:
        self.session.close()

    def _say(self, text: str) -> str:
        return redact(text, self.secrets)

    def request(
        self,
        method: str,
        path: str,
        params: Mapping[str, Any] | None = None,
        *,
        json_body: Any = None,
        data: Mapping[str, Any] | None = None,
        ok: Iterable[int] = (),
    ) -> requests.Response:
        """Send with retries; return a 2xx response (or one whose status is in `ok`).
        Raises RetriableAPIError once retries are exhausted, FatalAPIError at once."""
        url = f"{self.base_url}/{path.lstrip('/')}"
        accepted = set(ok)
        last: RetriableAPIError | None = None
        for attempt in range(self.retry.attempts):
            send_url, send_params = url, dict(params or {})
            if self.signer is not None:
                send_url, signed = self.signer(method, url, send_params)
                send_params = signed or {}
            try:
                self.requests_made += 1
                response = self.session.request(
                    method, send_url, params=send_params or None, json=json_body, data=data,
                    timeout=self.timeout,
                )
            except requests.Timeout:
                last = RetriableAPIError(
                    self.source, f"no answer from {strip_query(url)} within {self.timeout:g} s")
                wait = self._backoff(attempt)
            except requests.ConnectionError as exc:
                last = RetriableAPIError(
                    self.source, f"cannot connect to {strip_query(url)}: {_reason(exc)}")
                wait = self._backoff(attempt)
            else:
                if response.ok or response.status_code in accepted:
                    return response
                error = self._error_for(response)
                if isinstance(error, FatalAPIError):
                    raise error
                last = error
                hinted = retry_after_seconds(response.headers.get("Retry-After"))
                if hinted is not None and hinted > self.retry.max_retry_after:
                    raise RetriableAPIError(
                        self.source,
                        f"{error.message}; asked to wait {hinted:.0f} s, longer than "
                        f"{self.retry.max_retry_after:.0f} s: giving up until the next run",
                        status=response.status_code,
                    )
                wait = hinted if hinted is not None else self._backoff(attempt)
            if attempt + 1 < self.retry.attempts:
                log.warning("upstream.retry", source=self.source, attempt=attempt + 1,
                            wait_s=round(wait, 2), error=last.message)
                self.sleep(wait)
        message = last.message if last else "no attempt was made"
        raise RetriableAPIError(
            self.source, f"{message} (gave up after {self.retry.attempts} attempts)",
            status=last.status if last else None,
        )

    def get_json(
        self, path: str, params: Mapping[str, Any] | None = None, *, ok: Iterable[int] = (),
        decode: Callable[[bytes], Any] = json.loads,
    ) -> tuple[Any, requests.Response]:
        """GET and decode JSON (`decode`: the body's bytes → a value, raising json's errors
        for what is not JSON). A body that is not JSON is never taken as "no records": an
        HTML page is fatal (a maintenance page or login wall), a cut-off JSON body is retried."""
        for attempt in range(self.retry.attempts):
            response = self.request("GET", path, params, ok=ok)
            try:
                # From the bytes: no decoded copy of a large page (JSON is UTF-8).
                return decode(response.content), response
            except (json.JSONDecodeError, requests.JSONDecodeError, UnicodeDecodeError):
                if looks_like_html(response):
                    raise FatalAPIError(
                        self.source,
                        f"{strip_query(response.url)} answered HTTP {response.status_code} with "
                        "an HTML page instead of JSON: is the site in maintenance mode, or is "
                        "a login wall, cache or security plugin in front of the API?",
                        status=response.status_code,
                    ) from None
                if attempt + 1 < self.retry.attempts:
                    log.warning("upstream.retry", source=self.source, attempt=attempt + 1,
                                error="response body was not complete JSON")
                    self.sleep(self._backoff(attempt))
        raise RetriableAPIError(
            self.source, f"{strip_query(path)} kept answering with incomplete JSON "
            f"(gave up after {self.retry.attempts} attempts)")

    def _backoff(self, attempt: int) -> float:
        ceiling = min(self.retry.max_backoff, self.retry.backoff * (2 ** attempt))
        return ceiling * random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not security

    def _error_for(self, response: requests.Response) -> APIError:
        status = response.status_code
        upstream = None
        if self.describe_error is not None:
            try:
                upstream = self.describe_error(response)
            except Exception:  # noqa: BLE001 - an odd error body must not hide the status
                upstream = None
        if upstream is None and looks_like_html(response):
            upstream = "an HTML page instead of the API's JSON"
        said = self._say(f" — {upstream}" if upstream else "")
        where = strip_query(response.url)
        if status in RETRIABLE_STATUS:
            text = {429: "rate limit reached (429)"}.get(status, f"server error {status}")
            return RetriableAPIError(self.source, f"{text} at {where}{said}", status=status)
        if status in (401, 403):
            return FatalAPIError(
                self.source,
                f"the credentials were refused ({status}){said}. Check the key and secret "
                "configured for this source and that they have read permission.",
                status=status,
            )
        if status == 404:
            return FatalAPIError(
                self.source,
                f"{where} was not found (404){said}. Check the source's url / base_url.",
                status=status,
            )
        return FatalAPIError(self.source, f"HTTP {status} at {where}{said}", status=status)


def _reason(exc: Exception) -> str:
    text = str(exc)
    for marker in ("Connection refused", "Name or service not known", "timed out",
                   "Connection reset", "Remote end closed connection", "Connection aborted",
                   "Temporary failure in name resolution"):
        if marker.lower() in text.lower():
            return marker.lower()
    return type(exc).__name__


def require_api_answer(source: str, response: requests.Response, what: str) -> None:
    """Raise FatalAPIError unless a write's response came from the API itself: a redirect
    (followed or not: to a login page, another host) means the write was not carried out
    as asked, whatever the final page says."""
    hops = [*response.history, response] if response.history else [response]
    moved = next((hop for hop in hops if 300 <= hop.status_code < 400), None)
    if moved is not None:
        target = strip_query(moved.headers.get("Location", "") or response.url) or "elsewhere"
        raise FatalAPIError(
            source, f"the {what} request was answered with a redirect ({moved.status_code} "
                    f"to {target}), not by the API: it was not carried out. Is a login wall, "
                    "security plugin or proxy in front of the API? Check it, then run the "
                    "erasure again.", status=moved.status_code)
