"""Stripe connector: reads customers and charges through Stripe's read API and reports which
categories of personal data each one holds (never the values).

Stripe has no "updated since" filter. An incremental pull therefore lists new objects by
`created` and catches changes and deletions of older customers and charges through
`GET /v1/events`, which Stripe keeps for 30 days only; the weekly full pull reconciles
anything else, and a cursor older than 29 days makes the pull list everything again.
"""

from __future__ import annotations

import contextvars
import ipaddress
import json
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from queue import Full, Queue
from typing import Any
from urllib.parse import urlsplit

import requests
import structlog

from connectors.base import (
    Batch,
    Category,
    Key,
    KeyBatch,
    Record,
    Skip,
    email_as_held,
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
    mask_personal,
    redact,
    require_api_answer,
)
from connectors.limiter import Limiter, LimiterSettings
from vocabulary import utcnow

log = structlog.get_logger("connectors.stripe")

# Pinned so that a change of the account's default API version never changes what we read.
STRIPE_VERSION = "2026-10-28.endive"

RECORD_TYPES = frozenset({"customer", "charge"})

# Event types that tell of a change to a customer or a charge after it was created.
EVENT_TYPES = (
    "customer.created", "customer.updated", "customer.deleted",
    "charge.updated", "charge.succeeded", "charge.failed", "charge.pending",
    "charge.captured", "charge.refunded", "charge.expired",
)

# Stripe keeps events for 30 days; a day of margin for clock differences and slow runs.
EVENT_RETENTION = timedelta(days=29)

# What sync reads (pull and list_keys page all three) and the Dashboard's name for each: the
# owner's words on a 403, and what `check` tries.
_PERMISSION_FOR = (("/v1/customers", "Customers"), ("/v1/charges", "Charges"),
                   ("/v1/events", "Events"))

# Live, test and restricted keys, whole or masked the way Stripe echoes them in errors.
_KEY_PATTERN = re.compile(r"\b[spr]k_(?:live|test)_[A-Za-z0-9*]*")

# Stripe never issues an id with a second underscore: deleting this one changes nothing, and
# Stripe answers 404 when the key may delete customers, 403 when it may not.
_PROBE_CUSTOMER = "cus_privacy_ledger_check"
# The permission Stripe names in a 403: "Having the 'rak_event_read' permission would …".
_RAK_PATTERN = re.compile(r"'(rak_[a-z_]+)'")
_EDIT_KEY = "Stripe Dashboard → Developers → API keys → edit the restricted key → give"


def check_base_url(url: str) -> None:
    """Raises ValueError unless the URL is https, or plain http to a loopback address
    (127.0.0.0/8, ::1, localhost: the twins); the key travels in every request."""
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValueError(f"{url!r} is not an http(s) address, e.g. https://api.stripe.com")
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        raise ValueError(f"{url!r} is plain HTTP to {parts.hostname}: the API key would cross "
                         "the network unencrypted; use https:// (plain http only to 127.0.0.0/8, "
                         "::1 or localhost)")


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Settings:
    api_key: str = field(repr=False)
    base_url: str = "https://api.stripe.com"
    page_size: int = 100
    timeout: float = 30.0
    # Re-read this much before the cursor: Stripe's `created` has one-second resolution and
    # objects created while a pull pages are only seen by the next one.
    overlap: timedelta = timedelta(minutes=10)
    requests_per_second: float = 20.0
    retry_attempts: int = 5
    # Decoded bytes one answer may hold; None: the HTTP layer's default.
    max_response_size: int | None = None
    sleep: Callable[[float], None] = field(default=time.sleep, compare=False, repr=False)


def connect(settings: Settings) -> StripeConnector:
    return StripeConnector(settings)


# Stripe's documented read limits per second (docs: rate limits), live and test mode.
LIVE_READS_PER_SECOND = 100.0
TEST_READS_PER_SECOND = 25.0
# Requests in flight at most: the lists read side by side, each page after page.
IN_FLIGHT = 4


def read_rate(settings: Settings) -> float:
    """The configured pace, never above Stripe's limit for the key's mode."""
    test_mode = settings.api_key.startswith(("sk_test_", "rk_test_"))
    ceiling = TEST_READS_PER_SECOND if test_mode else LIVE_READS_PER_SECOND
    return min(settings.requests_per_second, ceiling)


def redact_keys(text: str) -> str:
    """The text with anything shaped like a Stripe secret or restricted key (also the masked
    `sk_live_****1234` form Stripe puts in its own error messages) replaced."""
    return _KEY_PATTERN.sub("[key]", text)


def describe_error(response: requests.Response) -> str | None:
    """Stripe's own words from an error body `{"error": {"type", "code", "message"}}`, with
    the request id Stripe support asks for."""
    try:
        body = response.json()
    except ValueError:
        return None
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return None
    kinds = [str(error[k]) for k in ("type", "code") if isinstance(error.get(k), str)]
    text = str(error.get("message") or "no message")
    if kinds:
        text += f" ({', '.join(kinds)})"
    request_id = response.headers.get("Request-Id")
    if request_id:
        text += f"; request {request_id}"
    return redact_keys(text)


@dataclass(frozen=True)
class _Page:
    items: list[Any]
    last: bool


@dataclass(frozen=True)
class _Cursor:
    """Where the next incremental pull starts: for each list, the `created` (Stripe's clock,
    unix seconds) of its newest object seen, and when that pull started (our clock)."""

    customer: int | None
    charge: int | None
    event: int | None
    at: int

    def dump(self) -> str:
        return json.dumps({"v": 1, "customer": self.customer, "charge": self.charge,
                           "event": self.event, "at": self.at}, sort_keys=True,
                          separators=(",", ":"))

    @classmethod
    def load(cls, text: str) -> _Cursor | None:
        try:
            data = json.loads(text)
            if not isinstance(data, dict) or data.get("v") != 1:
                return None
            marks = [data.get(k) for k in ("customer", "charge", "event")]
            if not all(m is None or isinstance(m, int) for m in marks):
                return None
            if not isinstance(data.get("at"), int):
                return None
            return cls(marks[0], marks[1], marks[2], data["at"])
        except (TypeError, ValueError):
            return None


def _obj(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _id(item: object) -> str | None:
    if not isinstance(item, dict):
        return None
    ident = item.get("id")
    return ident if isinstance(ident, str) and ident else None


def _created(item: object) -> int | None:
    value = _obj(item).get("created")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _scan_metadata(metadata: object, categories: set[Category], evidence: list[str]) -> None:
    if not isinstance(metadata, dict):
        # Not Stripe's shape, but whatever text is there is still held.
        scan_text("metadata", metadata, categories, evidence)
        return
    for key, value in metadata.items():
        scan_text(f"metadata.{str(key)[:40]}", value, categories, evidence)


def _contact(holder: Mapping[str, Any], categories: set[Category], address: Category) -> None:
    if has_value(holder.get("name")):
        categories.add(Category.NAME)
    if has_value(holder.get("phone")):
        categories.add(Category.PHONE)
    if has_value(holder.get("email")):
        categories.add(Category.EMAIL)
    if has_value(holder.get("address")):
        categories.add(address)


def classify_customer(item: dict[str, Any]) -> Record:
    """A Stripe customer as the ledger sees it. A Stripe customer is a payment profile, not a
    shop login, so it carries no `account` category."""
    categories: set[Category] = set()
    evidence: list[str] = []
    _contact(item, categories, Category.BILLING_ADDRESS)
    _contact(_obj(item.get("shipping")), categories, Category.DELIVERY_ADDRESS)
    scan_text("description", item.get("description"), categories, evidence)
    _scan_metadata(item.get("metadata"), categories, evidence)
    invoice = _obj(item.get("invoice_settings"))
    scan_text("invoice_settings.footer", invoice.get("footer"), categories, evidence)
    fields = invoice.get("custom_fields")
    if isinstance(fields, list):
        scan_text("invoice_settings.custom_fields",
                  [_obj(f).get("value") for f in fields], categories, evidence)
    return Record(
        record_type="customer",
        external_id=str(item["id"]),
        email=(email := normalise_email(item.get("email"))),
        categories=frozenset(categories),
        created_at=parse_time(item.get("created")),
        evidence=tuple(evidence),
        email_as_held=email_as_held(item.get("email"), email),
    )


def classify_charge(item: dict[str, Any]) -> Record:
    """A Stripe charge: billing details, shipping, payment method and free text. A charge
    without a customer belongs to the person of its billing (or receipt) email; one with
    neither is still held (it carries card data) with no email."""
    categories: set[Category] = set()
    evidence: list[str] = []
    billing = _obj(item.get("billing_details"))
    _contact(billing, categories, Category.BILLING_ADDRESS)
    if has_value(item.get("receipt_email")):
        categories.add(Category.EMAIL)
    _contact(_obj(item.get("shipping")), categories, Category.DELIVERY_ADDRESS)
    details = _obj(item.get("payment_method_details"))
    if has_value(details.get("type")):
        categories.add(Category.PAYMENT_METHOD_TYPE)
    for kind in ("card", "card_present", "interac_present"):
        card = _obj(details.get(kind))
        if has_value(card.get("brand")):
            categories.add(Category.PAYMENT_METHOD_TYPE)
        if has_value(card.get("last4")):
            categories.add(Category.CARD_LAST4)
    _legacy_source(_obj(item.get("source")), categories)
    scan_text("description", item.get("description"), categories, evidence)
    _scan_metadata(item.get("metadata"), categories, evidence)
    customer = item.get("customer")
    parent = customer if isinstance(customer, str) else _id(customer)
    created = parse_time(item.get("created"))
    status = item.get("status")
    raw = billing.get("email") if normalise_email(billing.get("email")) else \
        item.get("receipt_email")
    email = normalise_email(raw)
    return Record(
        record_type="charge",
        external_id=str(item["id"]),
        email=email,
        categories=frozenset(categories),
        status=status if isinstance(status, str) else None,
        created_at=created,
        last_activity_at=created,
        parent_id=parent or None,
        email_as_held=email_as_held(raw, email),
        evidence=tuple(evidence),
    )


def _legacy_source(source: dict[str, Any], categories: set[Category]) -> None:
    """Charges made before PaymentMethods carry a card or source object with its own owner."""
    if source.get("object") == "card":
        if has_value(source.get("brand")):
            categories.add(Category.PAYMENT_METHOD_TYPE)
        if has_value(source.get("last4")):
            categories.add(Category.CARD_LAST4)
        if has_value(source.get("name")):
            categories.add(Category.NAME)
        if any(has_value(v) for k, v in source.items()
               if k.startswith("address_") and not k.endswith("_check")):
            categories.add(Category.BILLING_ADDRESS)
    elif source.get("object") == "source":
        if has_value(source.get("type")):
            categories.add(Category.PAYMENT_METHOD_TYPE)
        _contact(_obj(source.get("owner")), categories, Category.BILLING_ADDRESS)


_CLASSIFY = {"customer": classify_customer, "charge": classify_charge}


class StripeConnector:
    """Reads one Stripe account."""

    kind = "stripe"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.source = "stripe"
        self.page_size = max(1, min(100, settings.page_size))
        # Stripe's read limits (100 a second live, 25 in test mode) through the limiter
        # every connector's HTTP layer uses; the lists read side by side set the concurrency.
        self.limiter = Limiter(LimiterSettings(maximum=IN_FLIGHT, adaptive=False,
                                               rate=read_rate(settings)),
                               sleep=settings.sleep)
        self.last_request_id: str | None = None
        self.http = HttpClient(
            self.source,
            settings.base_url,
            headers={"Authorization": f"Bearer {settings.api_key}",
                     "Stripe-Version": STRIPE_VERSION},
            timeout=settings.timeout,
            retry=RetryPolicy(attempts=max(1, settings.retry_attempts)),
            secrets=(settings.api_key,),
            describe_error=describe_error,
            sleep=settings.sleep,
            max_response_size=settings.max_response_size,
            limiter=self.limiter,
        )

    def probe(self) -> str:
        """Everything sync and erase will do, tried with the key: one-object pages of
        customers, charges and events (sync reads all three), and the delete of a customer
        that cannot exist (erase deletes customers). A missing read fails, naming every
        permission to add; a missing write is said, since an audit-only key is enough."""
        lacking: list[tuple[str, str | None]] = []
        for path, resource in _PERMISSION_FOR:
            body, response = self.http.get_json(path, {"limit": 1}, ok=(401, 403))
            self.last_request_id = response.headers.get("Request-Id")
            if response.status_code == 401:
                raise self._refused(path, response)
            if response.status_code == 403:
                lacking.append((resource, _stripe_permission(response)))
            elif not isinstance(body, dict) or body.get("object") != "list":
                raise FatalAPIError(self.source, f"{path} answered, but not with a Stripe list "
                                    f"(request {self.last_request_id or 'unknown'}): is "
                                    "base_url the Stripe API?")
        if lacking:
            raise FatalAPIError(self.source, _lacking_reads(lacking), status=403)
        return "customers, charges and events readable; " + self._probe_erase()

    def _probe_erase(self) -> str:
        path = f"/v1/customers/{_PROBE_CUSTOMER}"
        response = self.http.request("DELETE", path, ok=(401, 403, 404))
        self.last_request_id = response.headers.get("Request-Id")
        if response.status_code == 401:
            raise self._refused(path, response)
        if response.status_code == 403:
            named = _stripe_permission(response)
            return redact_keys(
                "erase cannot delete customers: the key lacks Write on Customers"
                f"{f' ({named})' if named else ''}. To answer erasure requests: {_EDIT_KEY} "
                '"Write" on Customers.')
        return "erase can delete customers"

    def close(self) -> None:
        self.http.close()

    # -- pulls --------------------------------------------------------------------------------
    def pull(self, cursor: str | None) -> Iterator[Batch]:
        started = int(utcnow().timestamp())
        state = _Cursor.load(cursor) if cursor else None
        if cursor and state is None:
            log.warning("stripe.cursor_unreadable", source=self.source, action="full listing")
        if state is None:
            log.info("stripe.pull", source=self.source, mode="full")
            yield from self._full(started, None)
        elif started - state.at > EVENT_RETENTION.total_seconds():
            # Events between the last run and 30 days ago are gone: list everything instead.
            log.info("stripe.pull", source=self.source, mode="full", reason="cursor too old")
            yield from self._full(started, state)
        else:
            log.info("stripe.pull", source=self.source, mode="incremental")
            yield from self._incremental(started, state)

    def _full(self, started: int, previous: _Cursor | None) -> Iterator[Batch]:
        # The newest event now: the next pull reads events from here on.
        event_mark = _max(previous.event if previous else None,
                          self._newest("/v1/events"))
        marks: dict[str, int | None] = {
            "customer": previous.customer if previous else None,
            "charge": previous.charge if previous else None,
        }
        # Customers and charges are separate cursor lists: read side by side, each in order.
        listings = {"customer": ("/v1/customers", {}), "charge": ("/v1/charges", {})}
        for record_type, page, done in self._side_by_side(listings):
            records, skipped, gone, newest = self._classify_page(record_type, page.items)
            marks[record_type] = _max(marks[record_type], newest)
            if done:
                cursor = _Cursor(marks["customer"], marks["charge"], event_mark, started)
                yield Batch(records, cursor=cursor.dump(), skipped=skipped, complete=True,
                            listed_types=RECORD_TYPES, gone=gone)
            else:
                yield Batch(records, skipped=skipped, gone=gone)

    def _incremental(self, started: int, state: _Cursor) -> Iterator[Batch]:
        """Every change since the cursor (less the overlap) from the event feed alone: a
        new customer or charge has its creation event too, so listing them by `created` as
        well would read each new object twice."""
        overlap = int(self.settings.overlap.total_seconds())
        marks: dict[str, int | None] = {"customer": state.customer, "charge": state.charge}
        seen: set[tuple[str, str]] = set()
        # Newest event first: the first event seen for an object is its latest state.
        event_mark = state.event
        event_params: dict[str, Any] = {"types[]": list(EVENT_TYPES)}
        if state.event is not None:
            event_params["created[gte]"] = state.event - overlap
        for page in self._pages("/v1/events", event_params):
            records: list[Record] = []
            skipped: list[Skip] = []
            gone: list[Key] = []
            for event in page.items:
                event_mark = _max(event_mark, _created(event))
                self._apply_event(event, seen, records, skipped, gone)
            for record in records:
                if record.created_at is not None:
                    created = int(record.created_at.timestamp())
                    marks[record.record_type] = _max(marks[record.record_type], created)
            if page.last:
                cursor = _Cursor(marks["customer"], marks["charge"], event_mark, started)
                yield Batch(records, cursor=cursor.dump(), skipped=skipped, complete=True,
                            gone=gone)
            else:
                yield Batch(records, skipped=skipped, gone=gone)

    def _apply_event(self, event: object, seen: set[tuple[str, str]], records: list[Record],
                     skipped: list[Skip], gone: list[Key]) -> None:
        event = _obj(event)
        kind = str(event.get("type") or "")
        item = _obj(_obj(event.get("data")).get("object"))
        record_type = item.get("object")
        ident = _id(item)
        if record_type not in RECORD_TYPES:
            return
        if ident is None:
            skipped.append(Skip(str(record_type), None,
                                f"{record_type} in a {kind or 'Stripe'} event without an id"))
            return
        key = (str(record_type), ident)
        if kind == "customer.deleted" or item.get("deleted") is True:
            # A deletion is always the latest thing that happened to a customer.
            if Key(*key) not in gone:
                gone.append(Key(*key))
            seen.add(key)
            return
        if key in seen:
            return
        seen.add(key)
        try:
            records.append(_CLASSIFY[str(record_type)](item))
        except (TypeError, ValueError, AttributeError) as exc:
            skipped.append(Skip(str(record_type), ident, f"{record_type} {ident} in a {kind} "
                                f"event could not be read ({type(exc).__name__})"))

    def _classify_page(self, record_type: str, items: list[Any]
                       ) -> tuple[list[Record], list[Skip], list[Key], int | None]:
        records: list[Record] = []
        skipped: list[Skip] = []
        gone: list[Key] = []
        newest: int | None = None
        classify = _CLASSIFY[record_type]
        for item in items:
            ident = _id(item)
            if ident is None:
                what = "not an object" if not isinstance(item, dict) else "without an id"
                skipped.append(Skip(record_type, None, f"{record_type} in Stripe's list {what}"))
                continue
            newest = _max(newest, _created(item))
            if item.get("deleted") is True:
                gone.append(Key(record_type, ident))
                continue
            try:
                records.append(classify(item))
            except (TypeError, ValueError, AttributeError) as exc:
                skipped.append(Skip(record_type, ident,
                                    f"{record_type} {ident} could not be read "
                                    f"({type(exc).__name__})"))
        return records, skipped, gone, newest

    def _newest(self, path: str) -> int | None:
        body = self._get(path, {"limit": 1})
        data = _obj(body).get("data")
        return _created(data[0]) if isinstance(data, list) and data else None

    # -- keys and lookups ---------------------------------------------------------------------
    def list_keys(self) -> Iterator[KeyBatch]:
        """Every customer and charge id; the last batch is complete only after both lists
        ended with `has_more: false`."""
        listings = {"customer": ("/v1/customers", {}), "charge": ("/v1/charges", {})}
        for record_type, page, done in self._side_by_side(listings):
            keys = [Key(record_type, ident) for ident in map(_id, page.items)
                    if ident is not None]
            if done:
                yield KeyBatch(keys, complete=True, listed_types=RECORD_TYPES)
            else:
                yield KeyBatch(keys)

    def lookup(self, email: str, forms: Sequence[str] = ()) -> list[dict[str, Any]]:
        """Everything Stripe holds about one email: customers with that email (Stripe matches
        exactly and case-sensitively, so every form given is tried, and only customers whose
        email normalises to the person's are kept), their charges, and every charge whose
        billing or receipt email is theirs. Stripe has no filter on a charge's billing email,
        so the charges are listed."""
        target = normalise_email(email)
        if target is None:
            return []
        asked = [f for f in dict.fromkeys((email, email.strip(), target, *forms)) if f]
        found: list[dict[str, Any]] = []
        customers: dict[str, dict[str, Any]] = {}
        for form in asked:
            for page in self._pages("/v1/customers", {"email": form}):
                for item in page.items:
                    ident = _id(item)
                    if ident is not None and ident not in customers \
                            and normalise_email(item.get("email")) == target:
                        customers[ident] = item
        found.extend({"record_type": "customer", "external_id": ident, "data": item}
                     for ident, item in customers.items())
        charges: dict[str, dict[str, Any]] = {}
        for customer_id in customers:
            for page in self._pages("/v1/charges", {"customer": customer_id}):
                for item in page.items:
                    ident = _id(item)
                    if ident is not None:
                        charges.setdefault(ident, item)
        for page in self._pages("/v1/charges", {}):
            for item in page.items:
                ident = _id(item)
                if ident is None or ident in charges:
                    continue
                billing = _obj(item.get("billing_details"))
                if target in (normalise_email(billing.get("email")),
                              normalise_email(item.get("receipt_email"))):
                    charges[ident] = item
        # A customer the filter missed (held in a form nobody typed or saw) still shows
        # through the charges carrying the person's email: read it by its id.
        payers = {c for c in (_customer_id(ch) for ch in charges.values())
                  if c and c not in customers}
        for customer_id in sorted(payers):
            item = fetch(self, "customer", customer_id)
            if item is not None and normalise_email(item.get("email")) == target:
                customers[customer_id] = item
                found.append({"record_type": "customer", "external_id": customer_id,
                              "data": item})
                for page in self._pages("/v1/charges", {"customer": customer_id}):
                    for charge in page.items:
                        if (ident := _id(charge)) is not None:
                            charges.setdefault(ident, charge)
        found.extend({"record_type": "charge", "external_id": ident, "data": item}
                     for ident, item in charges.items())
        return found

    # -- HTTP -----------------------------------------------------------------------------------
    def _side_by_side(self, listings: Mapping[str, tuple[str, Mapping[str, Any]]]
                      ) -> Iterator[tuple[str, _Page, bool]]:
        """Several lists read at once, one thread each (a cursor list itself can only be
        read page after page): (key, page, whether this was the last page of them all) as
        pages arrive. At most one page per list waits to be taken; the rate limit is shared."""
        queue: Queue[tuple[str, _Page | BaseException | None]] = Queue(maxsize=len(listings))
        stop = threading.Event()

        def hand_over(item: tuple[str, _Page | BaseException | None]) -> bool:
            while not stop.is_set():
                try:
                    queue.put(item, timeout=0.1)
                    return True
                except Full:
                    continue
            return False

        def read(key: str, path: str, params: Mapping[str, Any]) -> None:
            try:
                for page in self._pages(path, params):
                    if not hand_over((key, page)):
                        return
                hand_over((key, None))
            except BaseException as exc:  # noqa: BLE001 - handed to the reading thread
                hand_over((key, exc))

        threads = [threading.Thread(target=contextvars.copy_context().run,
                                    args=(read, key, path, params), daemon=True,
                                    name=f"stripe-{key}")
                   for key, (path, params) in listings.items()]
        for thread in threads:
            thread.start()
        running = len(threads)
        held: tuple[str, _Page] | None = None
        try:
            while running:
                key, item = queue.get()
                if isinstance(item, BaseException):
                    raise item
                if item is None:
                    running -= 1
                    continue
                # Hold each page until the next arrives: the last one must say it is last.
                if held is not None:
                    yield held[0], held[1], False
                held = (key, item)
            if held is not None:
                yield held[0], held[1], True
        finally:
            stop.set()
            for thread in threads:
                # A reader stops after its request in flight (bounded by the timeout).
                thread.join(timeout=self.settings.timeout)

    def _pages(self, path: str, params: Mapping[str, Any]) -> Iterator[_Page]:
        """A Stripe list, newest first, one page at a time (`starting_after` the last id).
        A list that stops making progress (a page of nothing new, a `starting_after` used
        before) is fatal before that page is handed on: it would page for ever."""
        after: str | None = None
        # One id per page, not every id: 300,000 charges are 3,000 cursors.
        cursors: set[str] = set()
        previous: set[str] = set()
        while True:
            query = dict(params, limit=self.page_size)
            if after is not None:
                query["starting_after"] = after
            body = self._get(path, query)
            data = _obj(body).get("data")
            if _obj(body).get("object") != "list" or not isinstance(data, list):
                raise FatalAPIError(
                    self.source,
                    f"{path} did not answer with a Stripe list (request "
                    f"{self.last_request_id or 'unknown'}): is base_url the Stripe API?",
                )
            has_more = _obj(body).get("has_more") is True
            ids = [ident for ident in map(_id, data) if ident is not None]
            if has_more and not ids:
                raise FatalAPIError(
                    self.source,
                    f"{path} said there is more to list but gave no id to continue from "
                    f"(request {self.last_request_id or 'unknown'})",
                )
            if has_more and after is not None and (set(ids) <= previous or ids[-1] in cursors):
                raise FatalAPIError(self.source, self._stuck(path, after))
            yield _Page(data, last=not has_more)
            if not has_more:
                return
            after, previous = ids[-1], set(ids)
            cursors.add(after)

    def _stuck(self, path: str, after: str) -> str:
        return (f"{path} stopped making progress: the page after {after} "
                f"(request {self.last_request_id or 'unknown'}) held only objects already "
                "listed or led back to a page already read, yet said there is more. The "
                "listing was abandoned (nothing is marked gone); if it persists, tell Stripe "
                "support the request id.")

    def _get(self, path: str, params: Mapping[str, Any]) -> Any:
        body, response = self.http.get_json(path, params, ok=(401, 403))
        self.last_request_id = response.headers.get("Request-Id")
        if response.status_code in (401, 403):
            raise self._refused(path, response)
        return body

    def _refused(self, path: str, response: requests.Response) -> FatalAPIError:
        said = describe_error(response)
        said = (" " + mask_personal(redact(f"Stripe said: {said}", (self.settings.api_key,)))
                if said else "")
        if response.status_code == 401:
            message = (
                "Stripe refused the API key (401 Unauthorized): it is wrong, expired or "
                "revoked. Configure a secret key, or better a restricted key with Read on "
                f"Customers, Charges and Events, for this source.{said}"
            )
        else:
            resource = next((name for prefix, name in _PERMISSION_FOR
                             if path.startswith(prefix)), "this resource")
            message = (
                f"Stripe refused the key for {path} (403 Forbidden): the restricted key "
                f"lacks Read permission on {resource}. In the {_EDIT_KEY} \"Read\" on {resource} "
                f"(sync reads Customers, Charges and Events).{said}"
            )
        return FatalAPIError(self.source, redact_keys(message), status=response.status_code)


def _stripe_permission(response: requests.Response) -> str | None:
    """The permission Stripe's 403 names (`rak_event_read`), if it names one."""
    try:
        error = _obj(_obj(response.json()).get("error"))
    except ValueError:
        return None
    found = _RAK_PATTERN.search(str(error.get("message") or ""))
    return found.group(1) if found else None


def _lacking_reads(lacking: list[tuple[str, str | None]]) -> str:
    """The owner's words for a key that cannot read everything sync reads."""
    names = [resource for resource, _ in lacking]
    resources = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"
    named = ", ".join(permission for _, permission in lacking if permission)
    return redact_keys(
        f"the restricted key may not read {resources} (403 Forbidden"
        f"{f'; Stripe asks for {named}' if named else ''}), and sync reads customers, charges "
        f'and events. In the {_EDIT_KEY} "Read" on {resources}.')


def _customer_id(charge: Mapping[str, Any]) -> str | None:
    customer = charge.get("customer")
    return customer if isinstance(customer, str) else _id(customer)


def _max(a: int | None, b: int | None) -> int | None:
    if a is None:
        return b
    if b is None:
        return a
    return max(a, b)


# -- erasure ---------------------------------------------------------------------------------
# Stripe lets a customer be deleted (`DELETE /v1/customers/{id}`: name, email, address,
# saved payment methods go), but not a charge: charges are payment records, and their
# billing details cannot be deleted or edited through the API. The daemon's plan keeps
# them and says so.

_STRIPE_ID = re.compile(r"[A-Za-z0-9_]{3,255}")
_OBJECT_PATHS = {"customer": "/v1/customers", "charge": "/v1/charges"}


def _object_path(record_type: str, external_id: str) -> str:
    base = _OBJECT_PATHS.get(record_type)
    if base is None:
        raise ValueError(f"Stripe holds no record type {record_type!r} here")
    if not _STRIPE_ID.fullmatch(external_id):
        raise ValueError(f"{external_id!r} is not a Stripe object id")
    return f"{base}/{external_id}"


def fetch(connector: StripeConnector, record_type: str,
          external_id: str) -> dict[str, Any] | None:
    """One customer or charge as Stripe holds it now; None when it does not exist or is a
    deleted customer (`{"deleted": true}`)."""
    path = _object_path(record_type, external_id)
    body, response = connector.http.get_json(path, ok=(401, 403, 404))
    connector.last_request_id = response.headers.get("Request-Id")
    if response.status_code in (401, 403):
        raise connector._refused(path, response)
    if response.status_code == 404 or not isinstance(body, dict) or body.get("deleted") is True:
        return None
    return body


def erase(connector: StripeConnector, action: str, record_type: str, external_id: str,
          data: Mapping[str, Any] | None = None) -> tuple[str, dict[str, Any] | None]:
    """Delete one Stripe customer. Returns ("deleted" | "already gone", None); a customer
    already deleted (404) counts as done."""
    if action != "delete" or record_type != "customer":
        raise ValueError(f"stripe: cannot {action} a {record_type} (Stripe deletes customers "
                         "only; charges are payment records)")
    path = _object_path(record_type, external_id)
    response = connector.http.request("DELETE", path, ok=(401, 403, 404))
    connector.last_request_id = response.headers.get("Request-Id")
    if response.status_code in (401, 403):
        said = describe_error(response)
        said = connector.http.upstream_words(said) if said else None
        raise FatalAPIError(
            connector.source,
            redact_keys(
                f"Stripe refused to delete customer {external_id} ({response.status_code}"
                f"{': ' + said if said else ''}). Erasure needs a key with Write permission "
                "on Customers: use a restricted key with Customers: Write for erase, "
                "or delete the customer in the Stripe Dashboard."),
            status=response.status_code)
    require_api_answer(connector.source, response, f"delete customer {external_id}")
    if response.status_code == 404:
        return "already gone", None
    # Stripe answers a deletion with the deleted object: anything else is not that answer.
    try:
        body = response.json()
    except ValueError:
        body = None
    if not (isinstance(body, dict) and body.get("id") == external_id
            and body.get("deleted") is True):
        raise FatalAPIError(
            connector.source,
            f"Stripe did not answer the deletion of customer {external_id} with the deleted "
            f"customer (HTTP {response.status_code}, {_answer_kind(response)}): it is not "
            "confirmed; check base_url, then run the erasure again.",
            status=response.status_code)
    return "deleted", None


def _answer_kind(response: requests.Response) -> str:
    return "an HTML page" if looks_like_html(response) else "another body"
