"""WooCommerce connector: reads a shop's customers (every role) and orders (every status,
the trash included) through the REST API v3 and reports who is held there and which
categories of personal data each record holds, never the values.

HTTPS shops are read with HTTP Basic; plain-HTTP shops with OAuth 1.0a one-legged signatures
computed as WooCommerce verifies them (`oauth_base_string`), afresh on every attempt because a
nonce must never repeat. Listings are ordered by id and paged by offset with one record of
overlap between pages, which proves that no page boundary skipped a record; a listing is
complete only when it also returned as many distinct records as its own X-WP-Total counts, and
a listing whose pages stop bringing new ids fails the run. Pages are fetched in parallel and
yielded in order. Pulls decode a page's bytes with msgspec straight into the few fields
classification reads; lookups for access requests read whole records.

Cursor (opaque to the engine), a JSON object:
    {"v": 1, "orders_since": "2026-11-01T06:00:00Z" | null, "max_customer_id": 123 | null}
`orders_since` is the time (our clock) the last pull that listed orders completely started;
`max_customer_id` the highest customer id seen by a complete customers listing. Null means
"unknown": the next incremental pull reads that whole collection again.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import re
import secrets
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from operator import attrgetter
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

import msgspec
import requests
import structlog

from connectors.base import (
    NO_CONTENT,
    Batch,
    Category,
    Key,
    KeyBatch,
    Progress,
    Record,
    Skip,
    contains_card_number,
    count_text,
    email_as_held,
    format_gmt,
    has_value,
    normalise_email,
    parse_time,
    scan_text,
)
from connectors.http import (
    FatalAPIError,
    HttpClient,
    RetryPolicy,
    looks_like_html,
    require_api_answer,
)
from connectors.limiter import Limiter, LimiterSettings
from vocabulary import CUSTOMER, ORDER, WOO_ERASURE_OPTIONS, WOO_RETENTION_OPTIONS, utcnow

log = structlog.get_logger("connectors.woocommerce")

API_PATH = "/wp-json/wc/v3"
RECORD_TYPES = frozenset({CUSTOMER, ORDER})
AUTH_METHODS = ("auto", "basic", "oauth")
# `status=any` leaves the trash out, and trashed orders still hold every personal field.
ORDER_LISTINGS = ("any", "trash")

_LOOPBACK = {"127.0.0.1", "localhost", "::1"}
_KEYS_PAGE = "(WooCommerce → Settings → Advanced → REST API)"
# What `check` reads: every listing sync and reconciliation will read.
_PROBES = (("customers", "customers", {"role": "all"}),
           ("orders", "orders", {"status": "any"}),
           ("orders in the trash", "orders", {"status": "trash"}))


@dataclass(frozen=True)
class Settings:
    """One shop. `url` is the shop's address; the API lives at <url>/wp-json/wc/v3."""

    name: str
    url: str
    consumer_key: str = field(repr=False)
    consumer_secret: str = field(repr=False)
    per_page: int = 100
    timeout: float = 30.0
    # Most pages in flight; adaptive: the ceiling the limiter may raise to from one.
    concurrency: int = 8
    adaptive: bool = True
    max_requests_per_second: float | None = None
    overlap: timedelta = timedelta(minutes=10)
    retry_attempts: int = 5
    # Decoded bytes one answer may hold; None: the HTTP layer's default.
    max_response_size: int | None = None
    # "auto": Basic over HTTPS, OAuth 1.0a over HTTP; "oauth" also behind TLS-terminating
    # proxies where WordPress thinks it is plain HTTP; "basic" is refused over plain HTTP.
    auth: str = "auto"
    sleep: Callable[[float], None] = field(default=time.sleep, compare=False, repr=False)
    clock: Callable[[], datetime] = field(default=utcnow, compare=False, repr=False)


def connect(settings: Settings) -> WooCommerceConnector:
    """A connector for one shop. Raises ValueError for settings that cannot work (not an
    http(s) address, or keys that would travel as Basic auth over plain HTTP)."""
    return WooCommerceConnector(settings)


# -- the upstream's error body ---------------------------------------------------------------

_HINTS = {
    "invalid timestamp": " (this machine's clock and the shop's differ by more than 15 "
                         "minutes)",
    "nonce has already been used": " (an OAuth nonce was sent twice)",
    "consumer key is invalid": " (no key with this consumer key exists on the shop)",
}


def describe_error(response: requests.Response) -> str | None:
    """WordPress/WooCommerce error bodies are {"code", "message", "data": {"status"}}:
    `code: message`, plus a hint for the OAuth failures that are really clock problems."""
    try:
        body = response.json()
    except ValueError:
        return None
    if not isinstance(body, dict):
        return None
    code, message = body.get("code"), body.get("message")
    if not isinstance(code, str) and not isinstance(message, str):
        return None
    text = ": ".join(str(part) for part in (code, message) if part)
    text = re.sub(r"<[^>]+>", "", text).strip()[:300].rstrip(".")
    for marker, hint in _HINTS.items():
        if marker in text.lower():
            text += hint
            break
    return text


# -- the cursor ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Cursor:
    orders_since: datetime | None
    max_customer_id: int | None

    def dump(self) -> str:
        since = None
        if self.orders_since is not None:
            since = format_gmt(self.orders_since) + "Z"
        return json.dumps({"v": 1, "orders_since": since,
                           "max_customer_id": self.max_customer_id}, sort_keys=True)

    @classmethod
    def load(cls, text: str) -> _Cursor | None:
        try:
            data = json.loads(text)
        except (TypeError, ValueError):
            return None
        if not isinstance(data, dict) or data.get("v") != 1:
            return None
        since = data.get("orders_since")
        top = data.get("max_customer_id")
        moment = parse_time(since) if since is not None else None
        if since is not None and moment is None:
            return None
        if top is not None and (not isinstance(top, int) or isinstance(top, bool)):
            return None
        return cls(moment, top)


# -- classification --------------------------------------------------------------------------

_ADDRESS = ("address_1", "address_2", "city", "state", "postcode")
_NAME = ("first_name", "last_name")
# Text fields of an address where a card number typed by mistake would sit.
_TYPED = ("first_name", "last_name", "company", "address_1", "address_2", "city")
# What WooCommerce's anonymiser (wp_privacy_anonymize_data) writes in place of the values.
_PLACEHOLDERS = frozenset({"[deleted]", "deleted@site.invalid", "https://site.invalid",
                           "this content was deleted by the author."})
# Meta that WooCommerce or its extensions write, never a person's words.
_INTERNAL_META = frozenset({"wc_last_active", "is_vat_exempt", "paying_customer", "last_update",
                            "mailchimp_woocommerce_is_subscribed"})


def _obj(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


# -- the wire: the fields classification reads, decoded by msgspec straight from a page's
# bytes (every other field is skipped, never built). Any JSON decodes: a field that is not
# the object the docs describe (PHP sends an empty array as []) stays as it came, and
# classification treats it as holding nothing. Decoded JSON holds no reference cycles, so
# the garbage collector need not track these (gc=False).

_Scalar = str | int | float | bool | None
_NotObject = list[Any] | _Scalar


class _Meta(msgspec.Struct, gc=False):
    key: Any = ""
    value: Any = None


_MetaList = list[_Meta | _NotObject] | dict[str, Any] | _Scalar


class _Address(msgspec.Struct, gc=False):
    first_name: Any = None
    last_name: Any = None
    company: Any = None
    address_1: Any = None
    address_2: Any = None
    city: Any = None
    state: Any = None
    postcode: Any = None
    email: Any = None
    phone: Any = None


_NO_ADDRESS = _Address()
# An address's fields as a tuple, in one call each.
_names_of, _lines_of, _typed_of = attrgetter(*_NAME), attrgetter(*_ADDRESS), attrgetter(*_TYPED)


class _Entry(msgspec.Struct, gc=False):
    """What customers and orders share."""

    id: Any = None
    date_created_gmt: Any = None
    date_modified_gmt: Any = None
    billing: _Address | _NotObject = None
    shipping: _Address | _NotObject = None
    meta_data: _MetaList = None


class _Customer(_Entry, gc=False):
    email: Any = None
    first_name: Any = None
    last_name: Any = None
    role: Any = None


class _LineItem(msgspec.Struct, gc=False):
    meta_data: _MetaList = None


class _Order(_Entry, gc=False):
    status: Any = None
    customer_id: Any = None
    date_completed_gmt: Any = None
    date_paid_gmt: Any = None
    payment_method: Any = None
    payment_method_title: Any = None
    customer_ip_address: Any = None
    customer_user_agent: Any = None
    customer_note: Any = None
    line_items: list[_LineItem | _NotObject] | dict[str, Any] | _Scalar = None


_Item = TypeVar("_Item", _Customer, _Order)


def _page_decoder(kind: type[_Customer] | type[_Order]) -> Callable[[bytes], Any]:
    """Bytes of a listing page → a list of `kind` (or whatever else the body is). A body
    msgspec refuses (a number beyond a double, a lone surrogate) is read by json as before:
    a slower page, never a lost one."""
    typed = msgspec.json.Decoder(list[kind | _NotObject] | dict[str, Any] | _Scalar)  # type: ignore[valid-type]

    def decode(content: bytes) -> Any:
        try:
            return typed.decode(content)
        except msgspec.MsgspecError:
            return json.loads(content)

    return decode


_CUSTOMER_PAGE = _page_decoder(_Customer)
_ORDER_PAGE = _page_decoder(_Order)


def _decoded(data: object, kind: type[_Item]) -> _Item | None:
    """A record as `kind`: as decoded from a page, or from a dict (lookups, tests)."""
    if type(data) is kind:
        return data
    if isinstance(data, dict):
        try:
            return msgspec.convert(data, kind)
        except msgspec.ValidationError:
            return None
    return None


def _address(value: object) -> _Address:
    return value if type(value) is _Address else _NO_ADDRESS


_PLACEHOLDER_SIZES = frozenset(len(text) for text in _PLACEHOLDERS)


def _held(value: object) -> bool:
    """A field holds something personal: not blank, not zeros, not an anonymiser
    placeholder."""
    if isinstance(value, str):
        # has_value's rule for text, here without a second call: some fifteen fields a record.
        text = value.strip()
        if not text.strip(NO_CONTENT):
            return False
        # Lower-casing every field of every record showed in profiles: sizes first.
        return not (len(text) in _PLACEHOLDER_SIZES and text.lower() in _PLACEHOLDERS)
    return has_value(value)


def _ip_held(value: object, anonymised: bool) -> bool:
    if not isinstance(value, str) or value.strip() in ("0.0.0.0", "::", ""):  # noqa: S104
        return False
    # wp_privacy_anonymize_ip keeps the network part and zeroes the host part.
    if anonymised and (value.strip().endswith(".0") or value.strip().endswith("::")):
        return False
    return _held(value)


def _ident(data: object) -> str | None:
    """The id of a record (decoded or a dict) as text, or None when it has no valid one."""
    if isinstance(data, _Entry):
        value = data.id
        # The usual case first: a positive int (a bool is not an int here).
        return str(value) if type(value) is int and value > 0 else _id_text(value)
    if isinstance(data, dict):
        return _id_text(data.get("id"))
    return None


def _id_text(value: object) -> str | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and value > 0:
        return str(value)
    if isinstance(value, str) and value.strip().isdigit() and int(value) > 0:
        return str(int(value))
    return None


def _int_id(data: object) -> int | None:
    if isinstance(data, _Entry) and type(data.id) is int and data.id > 0:
        return data.id
    ident = _ident(data)
    return int(ident) if ident is not None else None


def _meta(items: object) -> list[tuple[str, Any]]:
    """(key, value) of each meta entry of a decoded record's `meta_data`."""
    if type(items) is not list:
        return []
    return [(str(item.key), item.value) for item in items if type(item) is _Meta]


def _strings(value: object) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _strings(item)


_PROSE = re.compile(r"[^\W\d_]{2,}\W+\S")
# Meta keys are schema names written by plugins; only plain ones are repeated in evidence.
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


def _scan_meta(where: str, entries: Iterable[tuple[str, Any]], categories: set[Category],
               evidence: list[str], *, free_text: bool = True) -> None:
    """Meta values: a card number anywhere counts; free text only in meta that is not
    WooCommerce's own bookkeeping (keys starting with `_`, flags like "yes"/"1")."""
    for key, value in entries:
        texts = [value] if isinstance(value, str) else list(_strings(value))
        if any(map(contains_card_number, texts)):
            named = f"{where}[{key}]" if _PLAIN_KEY.fullmatch(key) else where
            scan_text(named, " ".join(texts), categories, evidence)
        elif free_text and not key.startswith("_") and key not in _INTERNAL_META and any(
                _PROSE.search(text) and _held(text) for text in texts):
            categories.add(Category.FREE_TEXT)


def _any_held(values: Iterable[object]) -> bool:
    return any(map(_held, values))


def _scan_addresses(billing: _Address, shipping: _Address,
                    categories: set[Category], evidence: list[str]) -> None:
    """A card number typed into a name or address field. One look at all the fields first
    (a line break ends a digit run): they rarely hold one."""
    values = (*_typed_of(billing), *_typed_of(shipping))
    try:
        text = "\n".join(filter(None, values))
    except TypeError:
        # A field that is not text (a number, a list) holds no typed card number.
        text = "\n".join(value for value in values if isinstance(value, str))
    if not contains_card_number(text):
        return
    for where, address in (("billing", billing), ("shipping", shipping)):
        for name in _TYPED:
            if contains_card_number(getattr(address, name)):
                categories.add(Category.CARD_NUMBER)
                note = f"card number pattern in {where}.{name}"
                if note not in evidence:
                    evidence.append(note)


def _unreadable(record_type: str, data: object) -> Skip:
    if data is None:
        return Skip(record_type, None, f"{record_type} entry is not a JSON object")
    return Skip(record_type, None, f"{record_type} entry without a valid id")


def classify_customer(data: object) -> Record | Skip:
    """A customer (any role) → Record: an account always; email, name, addresses, phone,
    free text and card numbers when held; last activity from the `wc_last_active` meta."""
    customer = _decoded(data, _Customer)
    ident = _ident(customer)
    if customer is None or ident is None:
        return _unreadable(CUSTOMER, customer)
    try:
        billing, shipping = _address(customer.billing), _address(customer.shipping)
        categories: set[Category] = {Category.ACCOUNT}
        evidence: list[str] = []
        if _held(customer.email) or _held(billing.email):
            categories.add(Category.EMAIL)
        if (_held(customer.first_name) or _held(customer.last_name)
                or _any_held(_names_of(billing)) or _any_held(_names_of(shipping))):
            categories.add(Category.NAME)
        if _any_held(_lines_of(billing)):
            categories.add(Category.BILLING_ADDRESS)
        if _any_held(_lines_of(shipping)):
            categories.add(Category.DELIVERY_ADDRESS)
        if _held(billing.phone) or _held(shipping.phone):
            categories.add(Category.PHONE)
        meta = _meta(customer.meta_data)
        _scan_meta("meta_data", meta, categories, evidence)
        _scan_addresses(billing, shipping, categories, evidence)
        last_active = None
        for key, value in meta:
            if key == "wc_last_active":
                last_active = value
                break
        role = customer.role
        # An account never edited since it was made carries the same time twice.
        created = parse_time(customer.date_created_gmt)
        return Record(
            record_type=CUSTOMER,
            external_id=ident,
            email=(email := (own := _email(customer.email)) or _email(billing.email)),
            categories=frozenset(categories),
            status=role if isinstance(role, str) and role else None,
            created_at=created,
            last_activity_at=parse_time(last_active),
            modified_at=(created if customer.date_modified_gmt == customer.date_created_gmt
                         else parse_time(customer.date_modified_gmt)),
            evidence=tuple(evidence),
            email_as_held=email_as_held(customer.email if own else billing.email, email),
        )
    except (TypeError, ValueError, AttributeError) as exc:
        return Skip(CUSTOMER, ident, f"customer {ident} could not be read ({type(exc).__name__})")


def _email(value: object) -> str | None:
    email = normalise_email(value)
    return None if email in _PLACEHOLDERS else email


def classify_order(data: object) -> Record | Skip:
    """An order (any status) → Record: order history always; contact, addresses, payment
    method type, network data, notes when held. An order WooCommerce anonymised keeps only
    what the anonymiser left."""
    order = _decoded(data, _Order)
    ident = _ident(order)
    if order is None or ident is None:
        return _unreadable(ORDER, order)
    try:
        billing, shipping = _address(order.billing), _address(order.shipping)
        meta = _meta(order.meta_data)
        anonymised = any(key == "_anonymized" and value == "yes" for key, value in meta)
        categories: set[Category] = {Category.ORDER_HISTORY}
        evidence: list[str] = []
        if _held(billing.email):
            categories.add(Category.EMAIL)
        if _any_held(_names_of(billing)) or _any_held(_names_of(shipping)):
            categories.add(Category.NAME)
        if _any_held(_lines_of(billing)):
            categories.add(Category.BILLING_ADDRESS)
        if _any_held(_lines_of(shipping)):
            categories.add(Category.DELIVERY_ADDRESS)
        if _held(billing.phone) or _held(shipping.phone):
            categories.add(Category.PHONE)
        if _held(order.payment_method) or _held(order.payment_method_title):
            categories.add(Category.PAYMENT_METHOD_TYPE)
        if _ip_held(order.customer_ip_address, anonymised):
            categories.add(Category.IP_ADDRESS)
        if _held(order.customer_user_agent):
            categories.add(Category.USER_AGENT)
        note = order.customer_note
        if _held(note):
            scan_text("customer_note", note, categories, evidence)
        _scan_meta("meta_data", meta, categories, evidence)
        if type(order.line_items) is list:
            for item in order.line_items:
                if type(item) is _LineItem:
                    _scan_meta("line_items meta_data", _meta(item.meta_data), categories,
                               evidence, free_text=False)
        _scan_addresses(billing, shipping, categories, evidence)
        modified = parse_time(order.date_modified_gmt)
        owner = _id_text(order.customer_id)
        status = order.status
        return Record(
            record_type=ORDER,
            external_id=ident,
            email=(email := _email(billing.email)),
            categories=frozenset(categories),
            status=status if isinstance(status, str) and status else None,
            created_at=parse_time(order.date_created_gmt),
            last_activity_at=(parse_time(order.date_completed_gmt)
                              or parse_time(order.date_paid_gmt) or modified),
            modified_at=modified,
            parent_id=owner,
            anonymised=anonymised,
            evidence=tuple(evidence),
            email_as_held=email_as_held(billing.email, email),
        )
    except (TypeError, ValueError, AttributeError) as exc:
        return Skip(ORDER, ident, f"order {ident} could not be read ({type(exc).__name__})")


def _split(results: Iterable[Record | Skip]) -> tuple[list[Record], list[Skip]]:
    records: list[Record] = []
    skipped: list[Skip] = []
    for result in results:
        if isinstance(result, Record):
            records.append(result)
        else:
            skipped.append(result)
    return records, skipped


# -- paging ----------------------------------------------------------------------------------


@dataclass
class _Page:
    offset: int
    items: list[Any]
    total: int | None
    # Each item's id (None when it has none), worked out once per page.
    keys: list[int | None] = field(init=False)
    ids: list[int] = field(init=False)

    def __post_init__(self) -> None:
        self.keys = [_int_id(item) for item in self.items]
        self.ids = [key for key in self.keys if key is not None]


class _Listing:
    """One listing ordered by id, read by offset with one record of overlap between pages.

    The overlap proves the listing whole: when each page starts at or before the id where
    the previous one ended, every record that existed for the whole run was returned, even if
    others were deleted or added meanwhile. When a deletion shifted a page past a record,
    `connected` turns False. `complete` also holds the listing against its own X-WP-Total:
    it must have returned as many distinct records as its last page counts (the overlap
    record counted once). A page that brings no id beyond the previous page's is no
    progress: the listing fails (FatalAPIError) rather than read on for ever.
    Pages after the first are fetched by up to `concurrency` threads and yielded in order;
    at most `concurrency` pages are held at once."""

    def __init__(self, fetch: Callable[..., tuple[Any, requests.Response]],
                 source: str, path: str, params: Mapping[str, Any], *, per_page: int,
                 concurrency: int, descending: bool = False,
                 decode: Callable[[bytes], Any] = json.loads) -> None:
        self._fetch_json = fetch
        self.decode = decode
        self.source = source
        self.path = path
        self.params = dict(params)
        self.per_page = per_page
        # What the shop really returns per page (some hosts cap per_page below 100).
        self.page_size = per_page
        self.step = per_page - 1
        self.concurrency = max(1, concurrency)
        self.descending = descending
        self.connected = True
        self.pages_read = 0
        # Distinct records returned, and the X-WP-Total of the last page read.
        self.read = 0
        self.total: int | None = None

    @property
    def complete(self) -> bool:
        """Read whole: every page joined the one before, and the records read reach the
        listing's own X-WP-Total."""
        return self.connected and (self.total is None or self.read >= self.total)

    def _advances(self, before: _Page, after: _Page) -> bool:
        """`after` holds an id beyond every id of `before`, in the listing's order."""
        if not before.ids or not after.ids:
            return True
        if self.descending:
            return min(after.ids) < min(before.ids)
        return max(after.ids) > max(before.ids)

    def _stalled(self, before: _Page, after: _Page) -> FatalAPIError:
        return FatalAPIError(
            self.source, f"/{self.path} stopped making progress: the page at offset "
            f"{after.offset} brought no record beyond those of offset {before.offset} "
            f"(X-WP-Total {after.total if after.total is not None else 'not sent'}). The "
            "shop's paging is not stable (a cache or security plugin rewriting REST API "
            "requests?), so this listing cannot be read whole; nothing was marked gone")

    def _fetch(self, offset: int) -> _Page:
        body, response = self._fetch_json(
            self.path, {**self.params, "per_page": self.per_page, "offset": offset},
            decode=self.decode)
        if not isinstance(body, list):
            raise FatalAPIError(
                self.source, f"/{self.path} answered with a JSON {type(body).__name__} where "
                "the API returns a list: is something in front of the shop's REST API?")
        total = response.headers.get("X-WP-Total", "")
        return _Page(offset, body, int(total) if total.strip().isdigit() else None)

    def _ended(self, page: _Page) -> bool:
        if page.total is not None:
            return page.offset + len(page.items) >= page.total or not page.items
        return len(page.items) < self.page_size

    def _joins(self, before: _Page, after: _Page) -> bool:
        """True when `after` starts at or before the id `before` ended on."""
        left, right = before.ids, after.ids
        if not left:
            return True
        if not right:
            return False
        return right[0] >= left[-1] if self.descending else right[0] <= left[-1]

    def _planned(self, page: _Page) -> int:
        """Index of the last page the first page's total asks for."""
        if page.total is None or page.total <= self.page_size:
            return 1
        return max(1, math.ceil((page.total - self.page_size) / self.step))

    def __iter__(self) -> Iterator[list[Any]]:
        first = self._fetch(0)
        self.pages_read = 1
        self.total = first.total
        items = _distinct(first)
        self.read = len(items)
        yield items
        if self._ended(first):
            return
        if len(first.items) < self.per_page:
            log.warning("woocommerce.per_page_capped", source=self.source, path=self.path,
                        asked=self.per_page, returned=len(first.items))
            self.page_size, self.step = len(first.items), max(1, len(first.items) - 1)
        last_planned = self._planned(first)
        # Records added during the read extend a listing; this many pages means it never ends.
        most = 2 * last_planned + 100
        previous = first
        pending: deque[tuple[int, Future[_Page]]] = deque()
        pool = ThreadPoolExecutor(max_workers=self.concurrency,
                                  thread_name_prefix=f"{self.source}-pages")
        try:
            index = 1
            while True:
                while len(pending) < self.concurrency and index <= last_planned:
                    pending.append((index, pool.submit(self._fetch, index * self.step)))
                    index += 1
                if not pending:
                    break
                number, future = pending.popleft()
                page = future.result()
                self.pages_read += 1
                if page.items and page.ids == previous.ids:
                    raise FatalAPIError(
                        self.source, f"/{self.path} answered the same records for offsets "
                        f"{previous.offset} and {page.offset}: the shop ignores the `offset` "
                        "parameter (is a cache or security plugin rewriting REST API "
                        "requests?), so its listings cannot be read whole")
                if not self._joins(previous, page):
                    self.connected = False
                    log.warning("woocommerce.listing_shifted", source=self.source,
                                path=self.path, offset=page.offset)
                if page.total is not None:
                    self.total = page.total
                ended = self._ended(page)
                if not ended and not self._advances(previous, page):
                    raise self._stalled(previous, page)
                seen = set(previous.ids)
                fresh = [item for item, key in zip(page.items, page.keys, strict=True)
                         if key not in seen]
                self.read += len(fresh)
                yield fresh
                if ended:
                    break
                if self.pages_read >= most:
                    raise FatalAPIError(
                        self.source, f"/{self.path} kept growing: {self.pages_read} pages read "
                        f"where the first page's X-WP-Total ({first.total}) asked for "
                        f"{last_planned + 1}; nothing was marked gone")
                previous = page
                if number == last_planned:
                    # Records were added meanwhile: read on until a page reaches the end.
                    last_planned += 1
        finally:
            for _, future in pending:
                future.cancel()
            pool.shutdown(wait=True, cancel_futures=True)


def _distinct(page: _Page) -> list[Any]:
    """A page's items, each id once (an item without an id is kept: it counts in X-WP-Total)."""
    if len(set(page.ids)) == len(page.ids):
        return page.items
    seen: set[int] = set()
    kept = []
    for item, key in zip(page.items, page.keys, strict=True):
        if key is None or key not in seen:
            kept.append(item)
            if key is not None:
                seen.add(key)
    return kept


def _progress(record_type: str, listings: Sequence[_Listing], *,
              counted: bool = True) -> Progress:
    """Records of `record_type` read so far over its listings, against the sum of their
    X-WP-Total (None when a listing sent none, or `counted` is False: a listing read only
    down to a known id)."""
    totals = [listing.total for listing in listings]
    total = sum(t for t in totals if t is not None) if counted and None not in totals else None
    return Progress(record_type, sum(listing.read for listing in listings), total)


def _checkout_owners(items: Iterable[Any], since: datetime | None) -> set[int]:
    """Accounts of the orders created or paid since `since` (every order's when None)."""
    owners: set[int] = set()
    for item in items:
        order = _decoded(item, _Order)
        owner = _id_text(order.customer_id) if order is not None else None
        if order is None or owner is None:
            continue
        if since is None or any(
                moment is not None and moment >= since
                for moment in (parse_time(order.date_created_gmt),
                               parse_time(order.date_paid_gmt))):
            owners.add(int(owner))
    return owners


def _chunks(items: list[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


# -- the connector ---------------------------------------------------------------------------


class WooCommerceConnector:
    """Pulls one shop. See the module docstring for the cursor."""

    kind = "woocommerce"

    def __init__(self, settings: Settings) -> None:
        parts = urlsplit(settings.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"woo:{settings.name}: url {settings.url!r} is not an http(s) "
                             "address such as https://shop.example")
        if settings.auth not in AUTH_METHODS:
            raise ValueError(f"woo:{settings.name}: auth must be one of "
                             f"{', '.join(AUTH_METHODS)}, not {settings.auth!r}")
        # Loopback never leaves the machine (a twin, or a tunnel ending here).
        if settings.auth == "basic" and parts.scheme == "http" \
                and parts.hostname not in _LOOPBACK:
            raise ValueError(
                f"woo:{settings.name}: refusing to send the consumer key and secret as HTTP "
                f"Basic auth over plain HTTP ({parts.scheme}://{parts.hostname}): anyone on the "
                "way could read them. Use the shop's https:// address, or OAuth signatures "
                "(auth = \"auto\" or \"oauth\").")
        if not 1 <= settings.per_page <= 100:
            raise ValueError(f"woo:{settings.name}: per_page must be between 1 and 100")
        self.settings = settings
        self.source = f"woo:{settings.name}"
        # Pages overlap by one record, so a page must hold at least two.
        self.per_page = max(2, settings.per_page)
        self.concurrency = max(1, settings.concurrency)
        # Pages in flight as fast as the shop allows, never slower for its customers.
        self.limiter = Limiter(LimiterSettings(maximum=self.concurrency,
                                               adaptive=settings.adaptive,
                                               rate=settings.max_requests_per_second),
                               sleep=settings.sleep)
        self.oauth = settings.auth == "oauth" or (settings.auth == "auto"
                                                  and parts.scheme == "http")
        if parts.scheme == "http" and parts.hostname not in _LOOPBACK:
            log.warning("woocommerce.plain_http", source=self.source,
                        detail="customer data crosses the network unencrypted; use https")
        self.client = self.http_client(API_PATH)

    def http_client(self, api_path: str) -> HttpClient:
        """A client for one of the shop's REST namespaces (/wp-json/wc/v3, /wp-json/wc-admin),
        with this shop's credentials, retries and limits."""
        settings = self.settings
        return HttpClient(
            self.source,
            settings.url.rstrip("/") + api_path,
            auth=None if self.oauth else (settings.consumer_key, settings.consumer_secret),
            timeout=settings.timeout,
            retry=RetryPolicy(attempts=max(1, settings.retry_attempts)),
            pool_size=self.concurrency,
            secrets=(settings.consumer_key, settings.consumer_secret),
            describe_error=self._describe_error,
            signer=self._sign if self.oauth else None,
            sleep=settings.sleep,
            max_response_size=settings.max_response_size,
            limiter=self.limiter,
        )

    def __repr__(self) -> str:
        return f"WooCommerceConnector({self.source}, {'oauth' if self.oauth else 'basic'})"

    def probe(self) -> str:
        """What sync and erase will ask of the shop, tried with the configured key: customers
        of every role, orders of every status and the trash read, and whether the key may
        write (a PUT of nothing to order 0, which no shop holds: WooCommerce checks the key's
        permission before the route, so "invalid ID" means it may write, and nothing changed).
        Raises FatalAPIError naming what is missing; a read-only key is reported, not failed
        (sync needs only Read; erase will refuse)."""
        counts = []
        for label, path, params in _PROBES:
            _, response = self.client.get_json(path, {**params, "per_page": 1, "_fields": "id"},
                                               ok=(401, 403))
            if response.status_code in (401, 403):
                raise FatalAPIError(self.source, self._refused(f"list {label}", response),
                                    status=response.status_code)
            counts.append(count_text(response.headers.get("X-WP-Total"), label))
        return ", ".join(counts) + "; " + self._write_access()

    def _write_access(self) -> str:
        response = self.client.request("PUT", "orders/0", json_body={},
                                       ok=(400, 401, 403, 404, 405, 501))
        if response.status_code in (400, 404):
            return "the key may write (erase can run)"
        said = self._describe_error(response) or f"HTTP {response.status_code}"
        if "write permission" in said.lower():
            return ("warning: the key is read-only, so erase will refuse to change this shop: "
                    f"give the key Read/Write permission {_KEYS_PAGE} if erasure is used")
        return (f"warning: the shop refused a write ({response.status_code}: {said}), so erase "
                f"may be refused: the key needs Read/Write permission and a user who may edit "
                f"orders and customers {_KEYS_PAGE}")

    def _refused(self, what: str, response: requests.Response) -> str:
        """Why the shop refused `what`, and what to change."""
        said = self._describe_error(response) or f"HTTP {response.status_code}"
        if "read permission" in said.lower():
            return (f"the key cannot {what} ({said}): sync needs a key with Read permission "
                    f"(Read/Write for erase) {_KEYS_PAGE}")
        if response.status_code == 401 and self._basic_over_http:
            return f"the shop ignored the key when asked to {what} ({said})"
        if response.status_code == 403:
            return (f"the key's user may not {what} ({said}): the key must belong to an "
                    f"administrator or shop manager {_KEYS_PAGE}")
        return (f"the shop refused the key when asked to {what} ({response.status_code}: "
                f"{said}): check consumer_key and consumer_secret, or create a key "
                f"{_KEYS_PAGE}")

    def close(self) -> None:
        self.client.close()

    @property
    def _basic_over_http(self) -> bool:
        return not self.oauth and urlsplit(self.settings.url).scheme == "http"

    def _describe_error(self, response: requests.Response) -> str | None:
        """The shop's words (redacted and masked), and why a 401 to Basic auth over plain
        HTTP is no key problem."""
        text = describe_error(response)
        text = self.client.upstream_words(text) if text else text
        if response.status_code == 401 and self._basic_over_http:
            text = (f"{text} " if text else "") + (
                "(WooCommerce accepts Basic auth only over HTTPS: use the shop's https:// "
                "address, or auth = \"auto\" to sign requests with OAuth 1.0a)")
        return text

    # -- HTTP ---------------------------------------------------------------------------------

    def _sign(self, method: str, url: str, params: dict[str, Any]) -> tuple[str, None]:
        """OAuth 1.0a one-legged, HMAC-SHA256, signature in the query string; a new nonce and
        timestamp every call (HttpClient calls this once per attempt)."""
        query = signed_query(method, self._signed_url(url),
                             {key: _text(value) for key, value in params.items()},
                             self.settings.consumer_key, self.settings.consumer_secret)
        return f"{url}?{query}", None

    def _signed_url(self, url: str) -> str:
        """The URL as WordPress names it in the string it signs: `get_home_url(..., is_ssl() ?
        'https' : 'http')`. An https address signed with auth = "oauth" is one whose WordPress
        does not see TLS (a terminating proxy; else Basic would serve), so its scheme is http."""
        if self.settings.auth == "oauth" and url.startswith("https://"):
            return "http://" + url[len("https://"):]
        return url

    def _listing(self, path: str, params: Mapping[str, Any], *, descending: bool = False,
                 concurrency: int | None = None,
                 decode: Callable[[bytes], Any] = json.loads) -> _Listing:
        return _Listing(self.client.get_json, self.source, path, params,
                        per_page=self.per_page,
                        concurrency=self.concurrency if concurrency is None else concurrency,
                        descending=descending, decode=decode)

    def _customers(self, **params: Any) -> _Listing:
        """Customers as classification reads them (lookups read whole records)."""
        return self._listing("customers", {"role": "all", "orderby": "id",
                                           "order": "asc", **params}, decode=_CUSTOMER_PAGE)

    def _orders(self, status: str, **params: Any) -> _Listing:
        """Orders as classification reads them."""
        return self._listing("orders", {"status": status, "orderby": "id", "order": "asc",
                                        **params}, decode=_ORDER_PAGE)

    # -- pull ---------------------------------------------------------------------------------

    def pull(self, cursor: str | None) -> Iterator[Batch]:
        """Everything when `cursor` is None (last batch: complete, listed types and a
        cursor); otherwise orders modified since the cursor (less the overlap), accounts
        created since, and the accounts of customers whose orders changed."""
        state = _Cursor.load(cursor) if cursor else None
        if cursor and state is None:
            log.warning("woocommerce.cursor_unreadable", source=self.source,
                        detail="reading everything again")
        return self._full() if state is None else self._incremental(state)

    def _full(self) -> Iterator[Batch]:
        started = self.settings.clock()
        customers = self._customers()
        top = 0
        with closing(iter(customers)) as pages:
            for items in pages:
                records, skipped = _split(classify_customer(item) for item in items)
                top = max([top, *(int(r.external_id) for r in records)])
                yield Batch(records, skipped=skipped, progress=_progress(CUSTOMER, [customers]))
        orders_whole = True
        order_listings: list[_Listing] = []
        for status in ORDER_LISTINGS:
            listing = self._orders(status)
            order_listings.append(listing)
            with closing(iter(listing)) as pages:
                for items in pages:
                    records, skipped = _split(classify_order(item) for item in items)
                    yield Batch(records, skipped=skipped,
                                progress=_progress(ORDER, order_listings))
            orders_whole = orders_whole and listing.complete
        listed = {CUSTOMER} if customers.complete else set()
        if orders_whole:
            listed.add(ORDER)
        cursor = _Cursor(started if orders_whole else None,
                         top if customers.complete else None)
        yield Batch((), cursor=cursor.dump(), complete=True, listed_types=frozenset(listed))

    def _incremental(self, state: _Cursor) -> Iterator[Batch]:
        started = self.settings.clock()
        window: dict[str, str] = {}
        since = None
        if state.orders_since is not None:
            since = state.orders_since - self.settings.overlap
            window = {"modified_after": format_gmt(since), "dates_are_gmt": "true"}
        owners: set[int] = set()
        orders_whole = True
        order_listings: list[_Listing] = []
        for status in ORDER_LISTINGS:
            listing = self._orders(status, **window)
            order_listings.append(listing)
            with closing(iter(listing)) as pages:
                for items in pages:
                    records, skipped = _split(classify_order(item) for item in items)
                    owners.update(_checkout_owners(items, since))
                    yield Batch(records, skipped=skipped,
                                progress=_progress(ORDER, order_listings))
            orders_whole = orders_whole and listing.complete
        # Customers have no modified filter. New accounts: newest first down to the highest
        # id already known. Changed accounts: those who checked out or paid in this window
        # (WooCommerce saves the checkout's addresses to the account then; the shop
        # fulfilling, refunding or editing an order leaves the account as it was).
        # Profile edits without an order, wc_last_active moving and deletions wait for the
        # weekly full pull (or reconciliation), which reads every customer.
        seen: set[int] = set()
        known = state.max_customer_id
        if known is None:
            listing = self._customers()
        else:
            listing = self._listing("customers", {"role": "all", "orderby": "id",
                                                  "order": "desc"},
                                    descending=True, concurrency=1, decode=_CUSTOMER_PAGE)
        top = known or 0
        with closing(iter(listing)) as pages:
            for items in pages:
                fresh = [item for item in items if known is None
                         or (_int_id(item) or known + 1) > known]
                records, skipped = _split(classify_customer(item) for item in fresh)
                ids = [int(r.external_id) for r in records]
                seen.update(ids)
                top = max([top, *ids])
                yield Batch(records, skipped=skipped,
                            progress=_progress(CUSTOMER, [listing], counted=known is None))
                if len(fresh) < len(items):
                    # Reached an account the ledger already holds: older ones are known too.
                    break
        # Read newest first down to a known id, the descending listing stops short of its total.
        customers_whole = listing.connected if known is not None else listing.complete
        read = len(seen)
        changed = sorted(owners - seen)
        for chunk in _chunks(changed, self.per_page):
            included = self._customers(include=",".join(str(i) for i in chunk))
            with closing(iter(included)) as pages:
                for items in pages:
                    records, skipped = _split(classify_customer(item) for item in items)
                    read += len(items)
                    # The accounts to re-read are known: the new ones read, plus these.
                    yield Batch(records, skipped=skipped, progress=Progress(
                        CUSTOMER, read, len(seen) + len(changed)))
        cursor = _Cursor(started if orders_whole else state.orders_since,
                         top if customers_whole else known)
        yield Batch((), cursor=cursor.dump(), complete=True)

    # -- reconciliation -----------------------------------------------------------------------

    def list_keys(self) -> Iterator[KeyBatch]:
        """Every customer and order id (`_fields=id,date_modified_gmt`); the last batch is
        complete and lists the types whose listing provably missed nothing."""
        fields = {"_fields": "id,date_modified_gmt"}
        listed: set[str] = set()
        customers = self._customers(**fields)
        with closing(iter(customers)) as pages:
            for items in pages:
                yield KeyBatch([Key(CUSTOMER, i) for i in map(_ident, items) if i])
        if customers.complete:
            listed.add(CUSTOMER)
        orders_whole = True
        for status in ORDER_LISTINGS:
            listing = self._orders(status, **fields)
            with closing(iter(listing)) as pages:
                for items in pages:
                    yield KeyBatch([Key(ORDER, i) for i in map(_ident, items) if i])
            orders_whole = orders_whole and listing.complete
        if orders_whole:
            listed.add(ORDER)
        yield KeyBatch((), complete=True, listed_types=frozenset(listed))

    # -- access requests ----------------------------------------------------------------------

    def lookup(self, email: str, forms: Sequence[str] = ()) -> list[dict[str, Any]]:
        """The shop's live customers and orders about one email address (orders matched on
        the billing email, and every order of a matching account), the trash included. Each
        form given is asked for (the shop compares what it holds, lower-cased, with what it
        is sent: a decomposed é is not a composed one); a record is kept only when its
        email normalises to the person's."""
        wanted = normalise_email(email)
        if wanted is None:
            return []
        # The shop compares case-insensitively: one query per lower-cased form.
        asked = list(dict.fromkeys(f.strip().lower() for f in (wanted, *forms)
                                   if normalise_email(f)))
        found: dict[tuple[str, str], dict[str, Any]] = {}
        accounts: list[int] = []
        for form in asked:
            for items in self._listing("customers", {"email": form, "role": "all"},
                                       concurrency=1):
                for item in items:
                    ident = _ident(item)
                    if ident and (_email(item.get("email")) == wanted) \
                            and (CUSTOMER, ident) not in found:
                        found[(CUSTOMER, ident)] = item
                        accounts.append(int(ident))
        for status in ORDER_LISTINGS:
            queries = [{"search": f} for f in asked] + [{"customer": a} for a in accounts]
            for query in queries:
                # Whole records (the person's copy), not the fields classification reads.
                for items in self._listing("orders", {"status": status, "orderby": "id",
                                                      "order": "asc", **query}):
                    for item in items:
                        ident = _ident(item)
                        if not ident:
                            continue
                        by_email = _email(_obj(item.get("billing")).get("email")) == wanted
                        if by_email or "customer" in query:
                            found[(ORDER, ident)] = item
        return [{"record_type": kind, "external_id": ident, "data": data}
                for (kind, ident), data in sorted(found.items(),
                                                  key=lambda k: (k[0][0], int(k[0][1])))]


def _text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple | set):
        return ",".join(str(v) for v in value)
    return str(value)


# -- OAuth 1.0a as WooCommerce verifies it (WC_REST_Authentication::check_oauth_signature) --


def rawurlencode(text: str) -> str:
    """PHP's rawurlencode (RFC 3986): every UTF-8 byte percent-encoded but A-Z a-z 0-9 - . _ ~
    (`quote` would leave "/" bare by default, and the shop's signature would differ)."""
    return quote(text, safe="")


def _base_url(url: str) -> str:
    """RFC 5849 §3.4.1.2: scheme and host lower-cased, the default port dropped, no query."""
    parts = urlsplit(url)
    scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    port = parts.port
    netloc = host if port is None or (scheme, port) in (("http", 80), ("https", 443)) \
        else f"{host}:{port}"
    return f"{scheme}://{netloc}{parts.path or '/'}"


def oauth_base_string(method: str, url: str, params: Mapping[str, str]) -> str:
    """The string WooCommerce signs: the method, the rawurlencoded URL, and the parameters
    sorted by name as bytes (PHP's strcmp), name and value rawurlencoded, each `name=value`
    rawurlencoded again and joined by %26. For plain names this is RFC 5849 §3.4.1."""
    pairs = [rawurlencode(f"{rawurlencode(name)}={rawurlencode(value)}")
             for name, value in sorted(params.items(), key=lambda item: item[0].encode())]
    return f"{method.upper()}&{rawurlencode(_base_url(url))}&{'%26'.join(pairs)}"


def oauth_signature(base_string: str, consumer_secret: str, method: str = "HMAC-SHA256") -> str:
    """Base64 of the HMAC (SHA-256 or SHA-1, the two the shop accepts) keyed with the secret
    and "&" (no token secret in one-legged OAuth)."""
    digest = {"HMAC-SHA256": hashlib.sha256, "HMAC-SHA1": hashlib.sha1}[method]
    mac = hmac.new(f"{consumer_secret}&".encode(), base_string.encode(), digest)
    return base64.b64encode(mac.digest()).decode()


def signed_query(method: str, url: str, params: Mapping[str, str], consumer_key: str,
                 consumer_secret: str, *, nonce: str | None = None,
                 timestamp: int | None = None) -> str:
    """The query string of a signed request: `params` and the oauth_* parameters, each name
    and value rawurlencoded, so that PHP's $_GET decodes exactly the values that were signed
    (a "+" stays a plus, a space is %20). One value per name: PHP keeps only the last."""
    signed = {**params, "oauth_consumer_key": consumer_key,
              "oauth_nonce": nonce or secrets.token_hex(16),
              "oauth_signature_method": "HMAC-SHA256",
              "oauth_timestamp": str(int(time.time()) if timestamp is None else timestamp)}
    signed["oauth_signature"] = oauth_signature(oauth_base_string(method, url, signed),
                                                consumer_secret)
    return "&".join(f"{rawurlencode(name)}={rawurlencode(value)}"
                    for name, value in signed.items())


# -- erasure ---------------------------------------------------------------------------------
# What an erasure request does in a shop, through the REST API as it is: the daemon's plan
# decides delete / anonymise / keep, these functions only carry it out. Module-level, apart
# from the pulling code.
#
# The REST API has no "anonymise" endpoint. An order is anonymised with a PUT that writes
# what WooCommerce's own eraser (WC_Privacy_Erasers::remove_order_personal_data) would:
# names, company, address lines, city and postcode "[deleted]", state and country empty,
# phone digits zeroed, email deleted@site.invalid, customer_id and transaction_id 0, the
# PayPal payer meta masked, and meta `_anonymized` = yes; the customer note is emptied too
# (free text the eraser leaves). `customer_ip_address` and `customer_user_agent` are
# read-only in the REST schema: a REST client cannot change them, so they stay on the order,
# no longer linked to the person (and `_anonymized` = yes keeps WooCommerce's own "anonymise
# completed orders" cleanup away from it). Order notes (/orders/{id}/notes) are not touched.

DELETED_TEXT = "[deleted]"
DELETED_EMAIL = "deleted@site.invalid"
_MASKED_TEXT = ("first_name", "last_name", "company", "address_1", "address_2", "city",
                "postcode")
# The meta WooCommerce's eraser masks (PayPal Standard's payer details).
_PAYER_META = {"Payer first name": DELETED_TEXT, "Payer last name": DELETED_TEXT,
               "Payer PayPal address": DELETED_EMAIL, "Transaction ID": "0"}
_COLLECTIONS = {CUSTOMER: "customers", ORDER: "orders"}


def _item_path(record_type: str, external_id: str) -> str:
    collection = _COLLECTIONS.get(record_type)
    if collection is None:
        raise ValueError(f"WooCommerce holds no record type {record_type!r}")
    if not str(external_id).isdigit():
        raise ValueError(f"WooCommerce {record_type} id {external_id!r} is not a number")
    return f"{collection}/{int(external_id)}"


def fetch(connector: WooCommerceConnector, record_type: str,
          external_id: str) -> dict[str, Any] | None:
    """One customer or order as the shop holds it now, or None when it no longer exists."""
    body, response = connector.client.get_json(_item_path(record_type, external_id),
                                                ok=(404,))
    if response.status_code == 404 or not isinstance(body, dict):
        return None
    return body


def anonymised_order_fields(order: Mapping[str, Any]) -> dict[str, Any]:
    """The PUT body that anonymises `order` the way WooCommerce's eraser does (see above):
    only fields that hold something are masked, as the eraser skips empty ones."""
    def masked(address: Mapping[str, Any], *, email: bool) -> dict[str, Any]:
        out: dict[str, Any] = {name: DELETED_TEXT for name in _MASKED_TEXT
                               if has_value(address.get(name))}
        out.update(state="", country="")
        phone = address.get("phone")
        if isinstance(phone, str) and phone:
            out["phone"] = re.sub(r"\d", "0", phone)
        if email and has_value(address.get("email")):
            out["email"] = DELETED_EMAIL
        return out

    decoded = _decoded(order, _Order)
    payer = _meta(decoded.meta_data) if decoded is not None else []

    body: dict[str, Any] = {
        "billing": masked(_obj(order.get("billing")), email=True),
        "shipping": masked(_obj(order.get("shipping")), email=False),
        "customer_id": 0,
        "customer_note": "",
        "meta_data": [{"key": key, "value": _PAYER_META[key]} for key, value in payer
                      if key in _PAYER_META and has_value(value)]
                     + [{"key": "_anonymized", "value": "yes"}],
    }
    if has_value(order.get("transaction_id")):
        body["transaction_id"] = "0"
    return body


def _invalid_id(response: requests.Response) -> bool:
    try:
        code = response.json().get("code", "")
    except (ValueError, AttributeError):
        return False
    return isinstance(code, str) and code.endswith("_invalid_id")


def _write_refused(connector: WooCommerceConnector, what: str,
                   response: requests.Response) -> FatalAPIError:
    said = describe_error(response)
    said = connector.client.upstream_words(said) if said else f"HTTP {response.status_code}"
    return FatalAPIError(
        connector.source,
        f"the shop refused to {what} ({response.status_code}: {said}). Erasure writes to the "
        "shop: give this source a REST API key with Read/Write permission (WooCommerce → "
        "Settings → Advanced → REST API), or erase this shop's records by hand.",
        status=response.status_code)


def erase(connector: WooCommerceConnector, action: str, record_type: str, external_id: str,
          data: Mapping[str, Any] | None = None) -> tuple[str, dict[str, Any] | None]:
    """Carry out one erasure step: `delete` a customer or order (force=true: customers cannot
    be trashed, and a trashed order still holds everything) or `anonymise` an order (`data`:
    the order as last read). Returns ("deleted" | "anonymised" | "already gone", the record
    as the shop holds it afterwards, for an anonymised order). Idempotent: a record already
    gone (404, 410) counts as done."""
    path = _item_path(record_type, external_id)
    verb = {"delete": "delete", "clear-note": "clear the customer note of"}.get(action, "anonymise")
    what = f"{verb} {record_type} {external_id}"
    if action == "delete":
        response = connector.client.request("DELETE", path, {"force": "true"},
                                            ok=(401, 403, 404, 410))
    elif action == "anonymise" and record_type == ORDER:
        current = data if data is not None else fetch(connector, ORDER, external_id)
        if current is None:
            return "already gone", None
        response = connector.client.request("PUT", path, json_body=anonymised_order_fields(
            current), ok=(400, 401, 403, 404, 410))
        if response.status_code == 400 and _invalid_id(response):
            # update_item answers an id that no longer exists 400 "Invalid ID.".
            return "already gone", None
    elif action == "clear-note" and record_type == ORDER:
        # The customer's checkout note: the one free-text field of an order the API writes.
        response = connector.client.request("PUT", path, json_body={"customer_note": ""},
                                            ok=(400, 401, 403, 404, 410))
        if response.status_code == 400 and _invalid_id(response):
            return "already gone", None
    else:
        raise ValueError(f"{connector.source}: cannot {action} a {record_type}")
    require_api_answer(connector.source, response, what)
    if response.status_code in (401, 403):
        raise _write_refused(connector, what, response)
    if response.status_code in (404, 410):
        return "already gone", None
    try:
        after = response.json()
    except ValueError:
        after = None
    # The REST API answers a write with the record itself: anything else (a login page
    # with 200) is not that answer, and the write is not confirmed.
    if not isinstance(after, dict) or str(after.get("id")) != str(int(external_id)):
        kind = "an HTML page" if looks_like_html(response) else "another body"
        raise FatalAPIError(connector.source, f"the shop answered the {what} request with "
                            f"{kind} (HTTP {response.status_code}), not the {record_type}: "
                            "it is not confirmed. Check the record in WooCommerce and that "
                            "nothing (a login wall, security plugin) sits in front of the "
                            "REST API, then run the erasure again.",
                            status=response.status_code)
    if action == "delete":
        return "deleted", None
    return ("note cleared" if action == "clear-note" else "anonymised"), after


# -- the shop itself: active plugins and its own privacy settings ---------------------------

RETENTION_OPTIONS = WOO_RETENTION_OPTIONS
ERASURE_OPTIONS = WOO_ERASURE_OPTIONS
# strtotime("-N unit") in seconds (months and years as the vocabulary counts them).
_UNIT_SECONDS = {"days": 86400, "weeks": 7 * 86400, "months": 30 * 86400,
                 "years": 365 * 86400}
WC_ADMIN_PATH = "/wp-json/wc-admin"


@dataclass(frozen=True)
class ActivePlugin:
    plugin: str
    name: str
    version: str | None


@dataclass(frozen=True)
class ShopOptionValue:
    """One setting: `period_seconds` None when a clean-up is off; `value` in the shop's words
    ("24 months", "off", "yes"); `readable` False when the API would not give it."""

    option: str
    readable: bool
    period_seconds: int | None
    value: str | None


@dataclass(frozen=True)
class ShopPart:
    """Whether reading one part (plugins, settings, retention) worked, and if not why."""

    part: str
    ok: bool
    detail: str | None


@dataclass(frozen=True)
class ShopState:
    plugins: tuple[ActivePlugin, ...]
    options: tuple[ShopOptionValue, ...]
    parts: tuple[ShopPart, ...]


def relative_period(value: object) -> tuple[int | None, str]:
    """wc_parse_relative_date_option: {"number", "unit"} → (seconds or None when off, words)."""
    if not isinstance(value, dict):
        return None, "off"
    try:
        number = int(str(value.get("number") or "0").strip() or 0)
    except ValueError:
        return None, "off"
    unit = str(value.get("unit") or "days")
    if number <= 0 or unit not in _UNIT_SECONDS:
        return None, "off"
    return number * _UNIT_SECONDS[unit], f"{number} {unit}"


def _refusal(connector: WooCommerceConnector, response: requests.Response,
             permission: str) -> str:
    said = connector._describe_error(response) or f"HTTP {response.status_code}"
    return f"not readable ({said}): the key's user needs {permission}"


def _read_plugins(connector: WooCommerceConnector) -> tuple[list[ActivePlugin], ShopPart]:
    data, response = connector.client.get_json(
        "system_status", {"_fields": "active_plugins"}, ok=(401, 403, 404))
    if response.status_code != 200:
        return [], ShopPart("plugins", False, _refusal(
            connector, response, "the manage_woocommerce capability (an administrator or shop "
                                 "manager) to read GET /wc/v3/system_status"))
    found = []
    items = data.get("active_plugins") if isinstance(data, dict) else None
    for item in items if isinstance(items, list) else []:
        if isinstance(item, dict) and isinstance(item.get("plugin"), str):
            found.append(ActivePlugin(item["plugin"], str(item.get("name") or item["plugin"]),
                                      str(item["version"]) if item.get("version") else None))
    return found, ShopPart("plugins", True, f"{len(found)} active plugins")


def _read_erasure(connector: WooCommerceConnector) -> tuple[list[ShopOptionValue], ShopPart]:
    data, response = connector.client.get_json("settings/account", ok=(401, 403, 404))
    if response.status_code != 200 or not isinstance(data, list):
        reason = _refusal(connector, response, "the manage_woocommerce capability to read GET "
                                               "/wc/v3/settings/account")
        return ([ShopOptionValue(o, False, None, None) for o in ERASURE_OPTIONS],
                ShopPart("settings", False, reason))
    values = {item.get("id"): item.get("value") for item in data if isinstance(item, dict)}
    options = [ShopOptionValue(o, o in values, None,
                               str(values[o]) if o in values else None)
               for o in ERASURE_OPTIONS]
    return options, ShopPart("settings", True, "settings/account read")


def _read_retention(connector: WooCommerceConnector) -> tuple[list[ShopOptionValue], ShopPart]:
    """The six clean-up periods. The REST settings API leaves them out (their type,
    relative_date_selector, fails is_setting_type_valid), so they are read through wc-admin's
    options endpoint, which needs an administrator's key (manage_options)."""
    # The sync's idle connections closed first: the shop never sees more than its limit.
    connector.client.close()
    client = connector.http_client(WC_ADMIN_PATH)
    try:
        data, response = client.get_json("options", {"options": ",".join(RETENTION_OPTIONS)},
                                          ok=(401, 403, 404))
    finally:
        client.close()
    if response.status_code != 200 or not isinstance(data, dict):
        reason = _refusal(connector, response, "the manage_options capability (an "
                                               "administrator's key) on a site whose "
                                               "environment type is production, to read them "
                                               "through GET /wc-admin/options; "
                                               "/wc/v3/settings does not expose them")
        return ([ShopOptionValue(o, False, None, None) for o in RETENTION_OPTIONS],
                ShopPart("retention", False, reason))
    options = []
    for option in RETENTION_OPTIONS:
        seconds, words = relative_period(data.get(option))
        options.append(ShopOptionValue(option, True, seconds, words))
    return options, ShopPart("retention", True, "clean-up settings read")


def read_shop_state(connector: WooCommerceConnector) -> ShopState:
    """The shop's active plugins and its own privacy settings. A part the key may not read
    is reported in `parts` (with the permission it needs); the others are still read."""
    plugins, plugin_part = _read_plugins(connector)
    erasure, erasure_part = _read_erasure(connector)
    retention, retention_part = _read_retention(connector)
    return ShopState(tuple(plugins), tuple(retention + erasure),
                     (plugin_part, erasure_part, retention_part))
