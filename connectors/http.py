"""The one HTTP layer every connector uses: a pooled `requests.Session`, a total deadline per
request, a cap on the decoded size of an answer, redirects followed only within the same
address, retries with backoff and jitter that honour `Retry-After`, one place that decides
whether a failure is worth retrying, redaction so that keys never reach a message or a log,
and masking of the personal data an upstream quotes in its error text.
"""

from __future__ import annotations

import base64
import email.utils
import heapq
import itertools
import json
import random
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, quote, quote_plus, urljoin, urlsplit, urlunsplit

import requests
import structlog
from requests.adapters import HTTPAdapter
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from connectors.limiter import Limiter

log = structlog.get_logger("connectors.http")

RETRIABLE_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
# Decoded bytes one answer may hold unless a source says otherwise (a page of 1,000
# Mailchimp members is a few MB).
DEFAULT_MAX_RESPONSE_SIZE = 64 * 1024 * 1024
MAX_REDIRECTS = 5
# Decoded bytes read at a time: urllib3 inflates a compressed body at most this much a read.
_CHUNK = 64 * 1024


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


# A cut-off secret is still redacted from this many characters on (a short head such as
# "rk_live_" names only the kind of key).
MIN_SECRET_PREFIX = 12


def secret_forms(secret: str) -> set[str]:
    """Every form in which a secret can appear in text: as is, escaped as repr and JSON
    write it, URL-encoded, and the base64 a Basic `user:secret` header carries (in each of
    the three alignments base64 can give it, whatever the user name)."""
    if not secret or len(secret) < 4:
        return set()
    forms = {secret, repr(secret)[1:-1], json.dumps(secret)[1:-1], quote(secret, safe=""),
             quote_plus(secret)}
    raw = secret.encode("utf-8", "surrogatepass")
    for pad in range(3):
        # The secret after `pad` bytes of prefix: its bytes from the next multiple of three
        # on encode the same whatever the prefix was.
        skip = (3 - pad) % 3
        core = raw[skip:]
        core = core[: len(core) - len(core) % 3]
        if len(core) >= 3:
            forms.add(base64.b64encode(core).decode("ascii"))
    return {form for form in forms if len(form) >= 4}


def basic_auth_form(user: str, password: str) -> str:
    """The value of the Basic Authorization header for these credentials."""
    return base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


class Redactor:
    """Replaces every form of the given secrets, and any cut-off head of one at least
    MIN_SECRET_PREFIX long, by `***`."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._forms: set[str] = set()
        self.add(secrets)

    def add(self, secrets: Iterable[str]) -> None:
        for secret in secrets:
            self._forms |= secret_forms(secret)
        # Longest first: a form inside a longer one must not leave the rest behind.
        self._ordered = sorted(self._forms, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for form in self._ordered:
            text = _cut_out(text, form)
        return text


def _cut_out(text: str, form: str) -> str:
    head = form[:MIN_SECRET_PREFIX]
    start = text.find(head)
    while start != -1:
        end = start + len(head)
        while end - start < len(form) and end < len(text) and text[end] == form[end - start]:
            end += 1
        text = f"{text[:start]}***{text[end:]}"
        start = text.find(head, start + 3)
    return text


def redact(text: str, secrets: Iterable[str]) -> str:
    """The text with every form of every secret replaced by `***`, and every URL's query
    string dropped (OAuth signatures and keys travel there)."""
    text = Redactor(secrets)(text)
    return re.sub(r"(https?://[^\s?#'\"]+)\?[^\s'\"]*", r"\1?…", text)


_EMAIL_IN_TEXT = re.compile(r"([^\s@'\"()<>=,;:\[\]]+)@([^\s@'\"()<>=,;:\[\]]+\.[A-Za-z]{2,})")
# Five or more digits, maybe grouped: phone numbers, card numbers, postcodes, IP addresses.
_DIGIT_RUN_IN_TEXT = re.compile(r"\+?\d(?:[ ().-]?\d){4,}")
# Quoted values, paired left to right; one holding a space or a digit is a name, an address
# or a sentence someone typed, and is masked.
_QUOTED = re.compile(r"([\"'“‘])([^\"'“”‘’]*)([\"'”’])")


def _masked_quote(match: re.Match[str]) -> str:
    inside = match.group(2)
    if re.search(r"[\s\d]", inside):
        return f"{match.group(1)}…{match.group(3)}"
    return match.group(0)
UPSTREAM_TEXT_LIMIT = 200


def mask_personal(text: str, limit: int = UPSTREAM_TEXT_LIMIT) -> str:
    """Upstream error text fit to be stored and mailed: email addresses masked
    (`d***@example.com`), digit runs and quoted phrases replaced, cut to `limit`."""
    text = _EMAIL_IN_TEXT.sub(lambda m: f"{m.group(1)[:1]}***@{m.group(2)}", text)
    text = _QUOTED.sub(_masked_quote, text)
    text = _DIGIT_RUN_IN_TEXT.sub("#…", text)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


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


class _Deadline:
    """One attempt's total deadline (connect, headers and body): when it passes, the watchdog
    shuts the attempt's socket, which ends any read in progress at once."""

    def __init__(self, seconds: float) -> None:
        self.at = time.monotonic() + seconds
        self.fired = False
        self.done = False
        self._connection: Any = None
        self._lock = threading.Lock()

    def watch(self, connection: Any) -> None:
        with self._lock:
            self._connection = connection
            if self.fired:
                _shut(connection)

    def fire(self) -> None:
        with self._lock:
            if not self.done:
                self.fired = True
                _shut(self._connection)

    def finish(self) -> None:
        with self._lock:
            self.done = True
            self._connection = None


def _shut(connection: Any) -> None:
    sock = getattr(connection, "sock", None)
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class _Watchdog:
    """One thread for every deadline of the process (a timer thread per request would cost
    a thread start per page)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, _Deadline]] = []
        self._order = itertools.count()
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None

    def add(self, deadline: _Deadline) -> None:
        with self._wake:
            heapq.heappush(self._heap, (deadline.at, next(self._order), deadline))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="http-deadlines",
                                                daemon=True)
                self._thread.start()
            self._wake.notify()

    def _run(self) -> None:
        with self._wake:
            while True:
                while self._heap and self._heap[0][2].done:
                    heapq.heappop(self._heap)
                if not self._heap:
                    self._wake.wait()
                    continue
                due = self._heap[0][0] - time.monotonic()
                if due > 0:
                    self._wake.wait(due)
                    continue
                heapq.heappop(self._heap)[2].fire()


_WATCHDOG = _Watchdog()
# The deadline of the attempt this thread is making, for the pools below to attach.
_current = threading.local()


class _Watched:
    """A pool whose connections are handed to the current attempt's deadline."""

    def _get_conn(self, timeout: float | None = None) -> Any:
        connection = super()._get_conn(timeout)  # type: ignore[misc]
        deadline = getattr(_current, "deadline", None)
        if deadline is not None:
            deadline.watch(connection)
        return connection


class _WatchedHTTPPool(_Watched, HTTPConnectionPool):
    pass


class _WatchedHTTPSPool(_Watched, HTTPSConnectionPool):
    pass


class _WatchedAdapter(HTTPAdapter):
    """Pools whose connections the current attempt's deadline can shut."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _WatchedHTTPPool,
                                                   "https": _WatchedHTTPSPool}


class _TooLarge(Exception):  # noqa: N818 - internal signal, turned into an APIError
    pass


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
        max_response_size: int | None = None,
        limiter: Limiter | None = None,
    ) -> None:
        self.source = source
        # Pages in flight and pace for this source (connectors/limiter.py); None: ungated.
        self.limiter = limiter
        self.base_url = base_url.rstrip("/")
        # The whole of one attempt: connect, headers and body.
        self.timeout = timeout
        self.max_response_size = max_response_size or DEFAULT_MAX_RESPONSE_SIZE
        self.retry = retry or RetryPolicy()
        self.secrets = tuple(s for s in secrets if s)
        if isinstance(auth, tuple):
            # The header's value as a whole too: the user name shifts the base64 of the key.
            self.secrets += (basic_auth_form(*auth),)
        self._redactor = Redactor(self.secrets)
        self.describe_error = describe_error
        self.signer = signer
        self.sleep = sleep
        self.requests_made = 0
        session = requests.Session()
        # Pool as many connections as the connector may use at once, and no automatic
        # retries below us: this class decides what is retried.
        adapter = _WatchedAdapter(pool_connections=1, pool_maxsize=max(1, pool_size),
                                  max_retries=0)
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

    def upstream_words(self, text: str) -> str:
        """An upstream's own text as it may leave the process: no form of a secret, no
        personal data (for messages a connector words itself)."""
        return mask_personal(self._say(text))

    def _say(self, text: str) -> str:
        text = self._redactor(text)
        return re.sub(r"(https?://[^\s?#'\"]+)\?[^\s'\"]*", r"\1?…", text)

    def _retriable(self, message: str, *, status: int | None = None) -> RetriableAPIError:
        return RetriableAPIError(self.source, self._say(message), status=status)

    def _fatal(self, message: str, *, status: int | None = None) -> FatalAPIError:
        return FatalAPIError(self.source, self._say(message), status=status)

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
            # A Retry-After the limiter holds every request of the source for (not only this).
            held = False
            try:
                response = self._follow(method, url, dict(params or {}), json_body, data)
            except RetriableAPIError as exc:
                last = exc
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
                held = hinted is not None and self.limiter is not None
            if attempt + 1 < self.retry.attempts:
                log.warning("upstream.retry", source=self.source, attempt=attempt + 1,
                            wait_s=round(wait, 2), error=last.message)
                if not held:
                    self.sleep(wait)
        message = last.message if last else "no attempt was made"
        raise RetriableAPIError(
            self.source, f"{message} (gave up after {self.retry.attempts} attempts)",
            status=last.status if last else None,
        )

    def _follow(self, method: str, url: str, params: dict[str, Any], json_body: Any,
                data: Mapping[str, Any] | None) -> requests.Response:
        """One attempt: send, and follow redirects that stay at the same scheme, host and
        port (a GET only). Anything else that redirects is an error of the request: an empty
        answer somewhere else must never read as "no records"."""
        origin = _origin(url)
        for _hop in range(MAX_REDIRECTS + 1):
            send_url, send_params = url, params
            if self.signer is not None:
                send_url, signed = self.signer(method, url, params)
                send_params = signed or {}
            response = self._send(method, send_url, send_params, json_body, data)
            if not 300 <= response.status_code < 400:
                return response
            if not response.is_redirect:
                raise self._fatal(f"{strip_query(url)} answered HTTP {response.status_code} "
                                  "without a place to go: check the source's url",
                                  status=response.status_code)
            target = urljoin(response.url, response.headers["Location"])
            response.close()
            if _origin(target) != origin:
                parts, here = urlsplit(target), urlsplit(url)
                # http → https of the same host is not followed either: the scheme decides
                # how keys are sent (WooCommerce: OAuth over http, Basic over https).
                where = (f"another address: {parts.scheme}://{parts.netloc}"
                         if parts.hostname == here.hostname and parts.scheme != here.scheme
                         else f"another host: {parts.netloc}")
                raise self._fatal(
                    f"{strip_query(url)} redirected to {where}; set the url to the final "
                    f"address (redirects are followed only within {origin})",
                    status=response.status_code)
            if method.upper() != "GET":
                raise self._fatal(
                    f"{method.upper()} {strip_query(url)} was answered by a redirect "
                    f"({response.status_code}) to {strip_query(target)}: a write is never "
                    "sent on to another address, so it was not made there; set the url to "
                    "the final address", status=response.status_code)
            parts = urlsplit(target)
            url = urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
            params = dict(parse_qsl(parts.query, keep_blank_values=True))
            log.debug("upstream.redirect", source=self.source, to=strip_query(url))
        raise self._fatal(f"{strip_query(url)} redirected more than {MAX_REDIRECTS} times")

    def _send(self, method: str, url: str, params: dict[str, Any], json_body: Any,
              data: Mapping[str, Any] | None) -> requests.Response:
        """One request, its body read whole within the deadline and the size limit.
        Transport failures become RetriableAPIError (FatalAPIError when retrying cannot
        help); no raw exception of the HTTP stack leaves here."""
        if self.limiter is None:
            return self._send_now(method, url, params, json_body, data)
        with self.limiter.slot() as slot:
            response = self._send_now(method, url, params, json_body, data)
            slot.done(response.status_code,
                      retry_after_seconds(response.headers.get("Retry-After")),
                      len(response.content))
            return response

    def _send_now(self, method: str, url: str, params: dict[str, Any], json_body: Any,
                  data: Mapping[str, Any] | None) -> requests.Response:
        where = strip_query(url)
        deadline = _Deadline(self.timeout)
        _current.deadline = deadline
        _WATCHDOG.add(deadline)
        self.requests_made += 1
        try:
            response = self.session.request(
                method, url, params=params or None, json=json_body, data=data,
                timeout=self.timeout, allow_redirects=False, stream=True)
            self._read_body(response)
        except _TooLarge:
            raise self._fatal(
                f"the answer from {where} is larger than the limit of "
                f"{_size_text(self.max_response_size)} (decoded) for this source: raise "
                "max_response_size for it if such pages are expected") from None
        except requests.RequestException as exc:
            raise self._transport_error(exc, where, fired=deadline.fired) from None
        finally:
            deadline.finish()
            _current.deadline = None
        if deadline.fired:
            # The body may have ended at the shut socket: never take it as complete.
            raise self._retriable(self._late(where))
        log.debug("upstream.response", source=self.source, method=method.upper(), url=where,
                  status=response.status_code, bytes=len(response.content))
        return response

    def _read_body(self, response: requests.Response) -> None:
        """Read the body, counting decoded bytes (a small gzip can inflate without bound)."""
        if response.is_redirect:
            response._content = b""  # noqa: SLF001 - not read: the connection is dropped
            return
        chunks: list[bytes] = []
        size = 0
        try:
            for chunk in response.iter_content(_CHUNK):
                size += len(chunk)
                if size > self.max_response_size:
                    raise _TooLarge
                chunks.append(chunk)
        except BaseException:
            response.close()
            raise
        # What requests would have read itself, so `.content` and `.json()` work as before.
        response._content = b"".join(chunks)  # noqa: SLF001
        response._content_consumed = True  # noqa: SLF001
        # The connection back in the pool now, before the limiter frees the request's slot: the
        # next request reuses it instead of opening one more to the upstream.
        response.close()

    def _late(self, where: str) -> str:
        return f"no complete answer from {where} within {self.timeout:g} s"

    def _transport_error(self, exc: requests.RequestException, where: str, *,
                         fired: bool) -> APIError:
        if fired or isinstance(exc, requests.Timeout):
            return self._retriable(self._late(where))
        if isinstance(exc, requests.exceptions.ContentDecodingError):
            return self._retriable(f"the answer from {where} could not be decompressed "
                                   "(a broken gzip or deflate body)")
        if isinstance(exc, requests.exceptions.ChunkedEncodingError):
            return self._retriable(f"the connection dropped while reading the answer from "
                                   f"{where}")
        if isinstance(exc, requests.ConnectionError):
            return self._retriable(f"cannot connect to {where}: {_reason(exc)}")
        # InvalidHeader, InvalidURL, …: their text may quote a header, i.e. a key.
        return self._fatal(f"the request to {where} could not be sent "
                           f"({type(exc).__name__}): check the source's url and credentials")

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
            except (ValueError, RecursionError) as exc:
                # ValueError: json's and msgspec's decode errors, bad UTF-8; RecursionError:
                # JSON nested thousands deep. Both may be a body cut or mangled on the way.
                why = ("nested too deeply to read" if isinstance(exc, RecursionError)
                       or "depth" in str(exc).lower() else "not complete JSON")
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
                                error=f"response body was {why}")
                    self.sleep(self._backoff(attempt))
        raise RetriableAPIError(
            self.source, f"{strip_query(path)} kept answering with incomplete JSON ({why}; "
            f"gave up after {self.retry.attempts} attempts)")

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
        # Upstream text quotes what it was sent: keys, and people's emails, names, numbers.
        said = f" — {mask_personal(self._say(upstream))}" if upstream else ""
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


def _origin(url: str) -> str:
    parts = urlsplit(url)
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme.lower())
    return f"{parts.scheme.lower()}://{(parts.hostname or '').lower()}:{port}"


def _size_text(size: int) -> str:
    for unit, factor in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= factor and size % factor == 0:
            return f"{size // factor} {unit}"
    return f"{size:,} bytes"


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
