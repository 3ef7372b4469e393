"""Loopback twin of Stripe's read API (customers, charges, events) for the demo, the tests and
the benchmarks.

It answers as Stripe does: list envelopes with `url`, newest first, `limit` 1–100,
`starting_after` / `ending_before`, `created[gt|gte|lt|lte]`, the `email` and `customer`
filters, Bearer (or Basic) auth with Stripe's error bodies, restricted keys (`rk_…` with a
set of permissions; write implies read) refused with Stripe's 403 naming the permission, any
unknown parameter a 400 `parameter_unknown`, a `Request-Id` on every answer, events kept 30
days, and fault knobs for lists that never end (`stick_paging`). Objects are the official Stripe
fixtures (sandbox/data/stripe_fixtures.json, MIT, licence beside it) with their values filled
in, so the official `stripe` library reads them unmodified.
"""

from __future__ import annotations

import base64
import bisect
import copy
import hashlib
import itertools
import json
import random
import re
import string
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime, timedelta
from importlib.resources import files
from typing import Any

from sandbox.server import Reply, Twin

_FIXTURES: dict[str, Any] = json.loads(
    (files("sandbox") / "data" / "stripe_fixtures.json").read_text(encoding="utf-8")
)["resources"]
# Serialised once: json.loads of the template is the fastest deep copy.
_TEMPLATES = {kind: json.dumps(value) for kind, value in _FIXTURES.items()}

# The API version the twin's account is on (events carry it).
ACCOUNT_API_VERSION = "2026-10-28.endive"
EVENT_RETENTION = timedelta(days=30)
DAY = 86400
YEAR = 365 * DAY

_ALPHABET = string.digits + string.ascii_letters
_ARRAY_PARAM = re.compile(r"^(\w+)\[(\d*)\]$")
_CREATED_PARAM = re.compile(r"^created\[(gt|gte|lt|lte)\]$")

_LIST_PARAMS = {
    "customers": {"limit", "starting_after", "ending_before", "created", "email", "expand",
                  "test_clock"},
    "charges": {"limit", "starting_after", "ending_before", "created", "customer", "expand",
                "payment_intent", "transfer_group"},
    "events": {"limit", "starting_after", "ending_before", "created", "type", "types",
               "delivery_success", "expand"},
}
_SINGULAR = {"customers": "customer", "charges": "charge", "events": "event"}
# Stripe's restricted-key permission names, as its 403 message spells them.
_RAK = {"customers": "rak_customer", "charges": "rak_charge", "events": "rak_event"}
ALL_PERMISSIONS = frozenset({"customers:read", "customers:write", "charges:read",
                             "events:read"})
# Fault knobs for a list that never ends (`stick_paging`): the cursor ignored, so the first
# page comes again; or `has_more` always true, the page after the oldest object the oldest
# page again.
STUCK_MODES = ("ignore_cursor", "more_forever")

_NO_KEY = ("You did not provide an API key. You need to provide your API key in the "
           "Authorization header, using Bearer auth (e.g. 'Authorization: Bearer "
           "YOUR_SECRET_KEY'). See https://stripe.com/docs/api#authentication for details, or "
           "we can help at https://support.stripe.com/.")


def _ledger_email(value: object) -> str | None:
    """The email as the ledger should hold it: trimmed and lower-cased; None unless it has
    the shape name@domain.tld. The twin's own reading (it shares no code with the connector,
    so the tests compare two readings, not one with itself)."""
    if not isinstance(value, str):
        return None
    email = value.strip().lower()
    local, at, domain = email.partition("@")
    if not at or not local or "@" in domain or any(ch.isspace() for ch in email):
        return None
    dotted = any(ch == "." and 0 < i < len(domain) - 1 for i, ch in enumerate(domain))
    return email if dotted else None


def fixture(kind: str) -> dict[str, Any]:
    """A fresh copy of one official fixture object."""
    return json.loads(_TEMPLATES[kind])


class _Ids:
    """Stripe-looking ids, unique per twin and the same for the same seed: a salt drawn from
    the seed, then a hexadecimal counter."""

    def __init__(self, seed: str) -> None:
        self.seed = seed
        self._salt: dict[str, str] = {}
        self._count: Counter[str] = Counter()

    def make(self, prefix: str, length: int) -> str:
        salt = self._salt.get(prefix)
        if salt is None:
            rng = random.Random(f"{self.seed}/{prefix}")
            salt = self._salt[prefix] = "".join(rng.choice(_ALPHABET) for _ in range(length - 8))
        self._count[prefix] += 1
        return f"{prefix}{salt}{self._count[prefix]:08x}"


def _timestamp(value: int | float | datetime | None, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, datetime):
        return int(value.timestamp())
    return int(value)


def _address(value: dict[str, Any] | None) -> dict[str, Any]:
    value = value or {}
    return {key: value.get(key) for key in
            ("city", "country", "line1", "line2", "postal_code", "state")}


def _hash(text: str, length: int) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:length]


@dataclass(slots=True)
class _Customer:
    id: str
    created: int
    seq: int
    email: str | None = None
    name: str | None = None
    phone: str | None = None
    address: dict[str, Any] | None = None
    shipping: dict[str, Any] | None = None
    description: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] | None = None
    deleted: bool = False

    @property
    def key(self) -> tuple[int, int, str]:
        return (self.created, self.seq, self.id)


@dataclass(slots=True)
class _Charge:
    id: str
    created: int
    seq: int
    customer: str | None = None
    amount: int = 1000
    currency: str = "gbp"
    status: str = "succeeded"
    billing_details: dict[str, Any] | None = None
    receipt_email: str | None = None
    shipping: dict[str, Any] | None = None
    description: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    payment_method_type: str = "card"
    brand: str = "visa"
    last4: str = "4242"
    exp_month: int = 8
    exp_year: int = 2030
    country: str = "GB"
    funding: str = "credit"
    refunded: bool = False
    amount_refunded: int = 0
    extra: dict[str, Any] | None = None

    @property
    def key(self) -> tuple[int, int, str]:
        return (self.created, self.seq, self.id)


@dataclass(slots=True)
class _Event:
    id: str
    created: int
    seq: int
    type: str
    snapshot: _Customer | _Charge
    previous: dict[str, Any] | None = None
    request_id: str | None = None

    @property
    def key(self) -> tuple[int, int, str]:
        return (self.created, self.seq, self.id)


CUSTOMER_FIELDS = frozenset(f.name for f in fields(_Customer)) - {"id", "seq", "deleted"}
CHARGE_FIELDS = frozenset(f.name for f in fields(_Charge)) - {"id", "seq"}


class StripeError(Exception):
    """A Stripe error answer, raised inside the twin and turned into a Reply."""

    def __init__(self, status: int, message: str, *, type_: str = "invalid_request_error",
                 code: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = (
            status, message, type_, code, param)


class StripeTwin(Twin):
    """An in-memory Stripe account with customers, charges and the events of the last 30 days.

    `now` sets the twin's clock (it then runs on from there; `advance()` moves it);
    None runs it on the real clock.
    """

    name = "stripe"

    def __init__(self, api_key: str = "sk_test_sandbox", now: datetime | None = None, *,
                 id_seed: str = "sandbox") -> None:
        super().__init__()
        self.api_key = api_key
        self.livemode = api_key.startswith(("sk_live_", "rk_live_"))
        self.account = "acct_" + _hash(id_seed, 16).upper()
        self.restricted_keys: dict[str, frozenset[str]] = {}
        self.stuck_lists: dict[str, str] = {}
        self._clock_base = (now or datetime.now(UTC)).astimezone(UTC)
        self._clock_start = time.monotonic()
        self._clock_offset = 0.0
        self._ids = _Ids(id_seed)
        self._seq = itertools.count(1)
        self._customers: dict[str, _Customer] = {}
        self._customer_order: list[tuple[int, int, str]] = []
        self._by_email: dict[str, list[tuple[int, int, str]]] = {}
        self._charges: dict[str, _Charge] = {}
        self._charge_order: list[tuple[int, int, str]] = []
        self._by_customer: dict[str, list[tuple[int, int, str]]] = {}
        self._events: dict[str, _Event] = {}
        self._event_order: list[tuple[int, int, str]] = []

    # -- clock ----------------------------------------------------------------------------------
    def now(self) -> datetime:
        elapsed = time.monotonic() - self._clock_start + self._clock_offset
        return self._clock_base + timedelta(seconds=elapsed)

    def timestamp(self) -> int:
        return int(self.now().timestamp())

    def advance(self, seconds: float) -> None:
        """Move the twin's clock forward (e.g. past the event retention)."""
        with self.lock:
            self._clock_offset += seconds

    # -- keys -----------------------------------------------------------------------------------
    def add_restricted_key(self, key: str, permissions: set[str] | frozenset[str]) -> None:
        """A restricted key with permissions like "customers:read", "charges:read",
        "events:read", "customers:write" (write implies read, as in Stripe's Dashboard)."""
        unknown = set(permissions) - ALL_PERMISSIONS
        if unknown:
            raise ValueError(f"unknown permissions {sorted(unknown)}")
        with self.lock:
            self.restricted_keys[key] = frozenset(permissions)

    def stick_paging(self, resource: str, mode: str | None) -> None:
        """Make the list of `resource` (customers, charges, events) page for ever in one of
        STUCK_MODES; None makes it page as Stripe does again."""
        if resource not in _LIST_PARAMS:
            raise ValueError(f"unknown list {resource!r}; one of {sorted(_LIST_PARAMS)}")
        if mode is not None and mode not in STUCK_MODES:
            raise ValueError(f"unknown paging fault {mode!r}; one of {', '.join(STUCK_MODES)}")
        with self.lock:
            if mode is None:
                self.stuck_lists.pop(resource, None)
            else:
                self.stuck_lists[resource] = mode

    # -- rendering ------------------------------------------------------------------------------
    # Rendering shares the fixture's untouched nested parts between objects (a deep copy of
    # a 2.5 kB charge per object made big lists slow); whatever is filled in is a fresh dict.
    # Answers are serialised at once; the public accessors below hand out deep copies.
    def _render_customer(self, c: _Customer) -> dict[str, Any]:
        obj = dict(_FIXTURES["customer"])
        obj.update(
            address=_address(c.address) if c.address else None,
            created=c.created,
            currency=None,
            description=c.description,
            discount=None,
            email=c.email,
            id=c.id,
            invoice_prefix=_hash(c.id, 8).upper(),
            livemode=self.livemode,
            metadata=dict(c.metadata),
            name=c.name,
            phone=c.phone,
            preferred_locales=["en"],
            shipping=None,
        )
        if c.shipping:
            obj["shipping"] = {"address": _address(c.shipping.get("address")),
                               "name": c.shipping.get("name"),
                               "phone": c.shipping.get("phone")}
        if c.extra:
            obj.update(copy.deepcopy(c.extra))
        return obj

    def _render_charge(self, ch: _Charge, expand_customer: bool = False) -> dict[str, Any]:
        template = _FIXTURES["charge"]
        obj = dict(template)
        suffix = ch.id[3:]
        paid = ch.status == "succeeded"
        failed = ch.status == "failed"
        billing = ch.billing_details or {}
        obj.update(
            amount=ch.amount,
            amount_captured=ch.amount if paid else 0,
            amount_refunded=ch.amount_refunded,
            balance_transaction=f"txn_{suffix}" if paid else None,
            billing_details={"address": _address(billing.get("address")),
                             "email": billing.get("email"), "name": billing.get("name"),
                             "phone": billing.get("phone"), "tax_id": None},
            captured=paid,
            created=ch.created,
            currency=ch.currency,
            customer=ch.customer,
            description=ch.description,
            failure_code="card_declined" if failed else None,
            failure_message="Your card was declined." if failed else None,
            id=ch.id,
            livemode=self.livemode,
            metadata=dict(ch.metadata),
            outcome=dict(
                template["outcome"],
                network_status="declined_by_network" if failed else "approved_by_network",
                reason="generic_decline" if failed else None,
                seller_message="The bank did not return any further details with this "
                "decline." if failed else "Payment complete.",
                type="issuer_declined" if failed else "authorized",
            ),
            paid=paid,
            payment_intent=f"pi_{suffix}",
            payment_method=f"pm_{suffix}",
            receipt_email=ch.receipt_email,
            receipt_url=f"https://pay.stripe.com/receipts/payment/{_hash(ch.id, 40)}",
            refunded=ch.refunded,
            refunds=dict(template["refunds"], data=[], url=f"/v1/charges/{ch.id}/refunds"),
            shipping=None,
            source=None,
            status=ch.status,
            transfer_data=None,
        )
        if ch.shipping:
            obj["shipping"] = {"address": _address(ch.shipping.get("address")),
                               "carrier": ch.shipping.get("carrier"),
                               "name": ch.shipping.get("name"),
                               "phone": ch.shipping.get("phone"),
                               "tracking_number": ch.shipping.get("tracking_number")}
        if ch.payment_method_type == "card":
            card_template = template["payment_method_details"]["card"]
            card = dict(card_template, brand=ch.brand, country=ch.country,
                        exp_month=ch.exp_month, exp_year=ch.exp_year,
                        fingerprint=_hash(ch.brand + ch.last4, 16), funding=ch.funding,
                        last4=ch.last4, network=ch.brand, wallet=None)
            card["overcapture"] = dict(card_template["overcapture"],
                                       maximum_amount_capturable=ch.amount)
            obj["payment_method_details"] = {"card": card, "type": "card"}
        else:
            obj["payment_method_details"] = {"type": ch.payment_method_type,
                                             ch.payment_method_type: {}}
        if expand_customer and ch.customer:
            owner = self._customers.get(ch.customer)
            if owner is not None:
                obj["customer"] = (self._render_deleted(owner) if owner.deleted
                                   else self._render_customer(owner))
        if ch.extra:
            obj.update(copy.deepcopy(ch.extra))
        return obj

    def _render_deleted(self, c: _Customer) -> dict[str, Any]:
        return dict(_FIXTURES["deleted_customer"], id=c.id)

    def _render_event(self, ev: _Event) -> dict[str, Any]:
        obj = dict(_FIXTURES["event"])
        snapshot = ev.snapshot
        rendered = (self._render_customer(snapshot) if isinstance(snapshot, _Customer)
                    else self._render_charge(snapshot))
        data: dict[str, Any] = {"object": rendered}
        if ev.previous is not None:
            data["previous_attributes"] = ev.previous
        obj.update(api_version=ACCOUNT_API_VERSION, created=ev.created, data=data, id=ev.id,
                   livemode=self.livemode, pending_webhooks=0,
                   request={"id": ev.request_id, "idempotency_key": None}, type=ev.type)
        return obj

    # -- reading (tests) ------------------------------------------------------------------------
    def customer(self, customer_id: str) -> dict[str, Any] | None:
        """The customer as GET /v1/customers/{id} answers (deleted shape once deleted)."""
        with self.lock:
            c = self._customers.get(customer_id)
            if c is None:
                return None
            return _fresh(self._render_deleted(c) if c.deleted else self._render_customer(c))

    def charge(self, charge_id: str) -> dict[str, Any] | None:
        with self.lock:
            ch = self._charges.get(charge_id)
            return None if ch is None else _fresh(self._render_charge(ch))

    def customer_ids(self) -> list[str]:
        """Live customer ids, newest first."""
        with self.lock:
            return [k[2] for k in reversed(self._customer_order)]

    def charge_ids(self) -> list[str]:
        with self.lock:
            return [k[2] for k in reversed(self._charge_order)]

    def events(self) -> list[dict[str, Any]]:
        """Every event still retained, newest first."""
        with self.lock:
            cutoff = self.timestamp() - int(EVENT_RETENTION.total_seconds())
            return [_fresh(self._render_event(self._events[k[2]]))
                    for k in reversed(self._event_order) if k[0] >= cutoff]

    def ground_truth(self) -> set[tuple[str, str, str | None]]:
        """(record type, id, normalised email or None) of everything Stripe holds now; a
        charge's email is its billing email, else its receipt email."""
        with self.lock:
            truth: set[tuple[str, str, str | None]] = set()
            for c in self._customers.values():
                if not c.deleted:
                    truth.add(("customer", c.id, _ledger_email(c.email)))
            for ch in self._charges.values():
                billing = ch.billing_details or {}
                email = _ledger_email(billing.get("email")) \
                    or _ledger_email(ch.receipt_email)
                truth.add(("charge", ch.id, email))
            return truth

    # -- mutators -------------------------------------------------------------------------------
    def add_customer(self, *, created: int | float | datetime | None = None,
                     customer_id: str | None = None, **values: Any) -> str:
        """A new customer (fields: email, name, phone, address, shipping, description,
        metadata, extra = unknown fields merged into the object). Emits customer.created."""
        _check_fields(values, CUSTOMER_FIELDS, "customer")
        with self.lock:
            c = _Customer(id=customer_id or self._ids.make("cus_", 14),
                          created=_timestamp(created, self.timestamp()), seq=next(self._seq),
                          **_copy_values(values))
            if c.id in self._customers:
                raise ValueError(f"customer {c.id} exists")
            self._insert_customer(c)
            self._emit("customer.created", c)
            return c.id

    def update_customer(self, customer_id: str, **values: Any) -> None:
        """Change fields of a customer; emits customer.updated with previous_attributes."""
        _check_fields(values, CUSTOMER_FIELDS - {"created"}, "customer")
        with self.lock:
            c = self._live_customer(customer_id)
            before = self._render_customer(c)
            old_email = c.email
            for name, value in _copy_values(values).items():
                setattr(c, name, value)
            if c.email != old_email:
                self._unindex(self._by_email, old_email, c.key)
                self._index(self._by_email, c.email, c.key)
            self._emit("customer.updated", c, previous=_changed(before,
                                                                 self._render_customer(c)))

    def delete_customer(self, customer_id: str) -> dict[str, Any]:
        """Delete a customer as DELETE /v1/customers/{id} does: it leaves the lists, answers
        `deleted: true` from then on, its charges stay. Emits customer.deleted."""
        with self.lock:
            c = self._live_customer(customer_id)
            c.deleted = True
            index = bisect.bisect_left(self._customer_order, c.key)
            del self._customer_order[index]
            self._unindex(self._by_email, c.email, c.key)
            self._emit("customer.deleted", c)
            return self._render_deleted(c)

    def add_charge(self, *, created: int | float | datetime | None = None,
                   charge_id: str | None = None, **values: Any) -> str:
        """A new charge (fields: customer, amount, currency, status, billing_details {name,
        email, phone, address}, receipt_email, shipping, description, metadata,
        payment_method_type, brand, last4, exp_month, exp_year, country, funding, refunded,
        amount_refunded, extra). Emits charge.succeeded / .pending / .failed."""
        _check_fields(values, CHARGE_FIELDS, "charge")
        with self.lock:
            ch = _Charge(id=charge_id or self._ids.make("ch_", 24),
                         created=_timestamp(created, self.timestamp()), seq=next(self._seq),
                         **_copy_values(values))
            if ch.id in self._charges:
                raise ValueError(f"charge {ch.id} exists")
            if ch.customer is not None and ch.customer not in self._customers:
                raise KeyError(f"no such customer {ch.customer}")
            self._insert_charge(ch)
            self._emit(f"charge.{ch.status}", ch)
            return ch.id

    def update_charge(self, charge_id: str, **values: Any) -> None:
        """Change fields of a charge; emits charge.refunded when it becomes refunded, else
        charge.updated, with previous_attributes."""
        _check_fields(values, CHARGE_FIELDS - {"created", "customer"}, "charge")
        with self.lock:
            ch = self._charges.get(charge_id)
            if ch is None:
                raise KeyError(f"no such charge {charge_id}")
            before = self._render_charge(ch)
            was_refunded = ch.refunded
            for name, value in _copy_values(values).items():
                setattr(ch, name, value)
            kind = "charge.refunded" if ch.refunded and not was_refunded else "charge.updated"
            self._emit(kind, ch, previous=_changed(before, self._render_charge(ch)))

    def control(self, action: str, payload: dict[str, Any]) -> Any:
        """add_customer, update_customer {id, …}, delete_customer {id}, add_charge,
        update_charge {id, …}, add_restricted_key {key, permissions}, advance_clock {seconds},
        stick_paging {resource, mode}, ground_truth. A bad id or field answers
        {"error": …} (KeyError means unknown action)."""
        try:
            return self._control(action, dict(payload))
        except (LookupError, ValueError, TypeError) as exc:
            if isinstance(exc, KeyError) and exc.args == (action,):
                raise
            return {"error": f"{type(exc).__name__}: {exc}"}

    def _control(self, action: str, payload: dict[str, Any]) -> Any:
        if action == "add_customer":
            return self.add_customer(**payload)
        if action == "update_customer":
            self.update_customer(payload.pop("id"), **payload)
            return None
        if action == "delete_customer":
            return self.delete_customer(payload["id"])
        if action == "add_charge":
            return self.add_charge(**payload)
        if action == "update_charge":
            self.update_charge(payload.pop("id"), **payload)
            return None
        if action == "add_restricted_key":
            self.add_restricted_key(payload["key"], set(payload["permissions"]))
            return None
        if action == "stick_paging":
            self.stick_paging(payload["resource"], payload.get("mode"))
            return None
        if action == "advance_clock":
            self.advance(float(payload["seconds"]))
            return self.timestamp()
        if action == "ground_truth":
            return sorted(self.ground_truth(), key=lambda t: (t[0], t[1]))
        raise KeyError(action)

    # -- internal state -------------------------------------------------------------------------
    def _live_customer(self, customer_id: str) -> _Customer:
        c = self._customers.get(customer_id)
        if c is None or c.deleted:
            raise KeyError(f"no such customer {customer_id}")
        return c

    @staticmethod
    def _index(index: dict[str, list[tuple[int, int, str]]], value: str | None,
               key: tuple[int, int, str]) -> None:
        if value is not None:
            bisect.insort(index.setdefault(value, []), key)

    @staticmethod
    def _unindex(index: dict[str, list[tuple[int, int, str]]], value: str | None,
                 key: tuple[int, int, str]) -> None:
        keys = index.get(value) if value is not None else None
        if keys and key in keys:
            keys.remove(key)

    def _insert_customer(self, c: _Customer, *, sort: bool = True) -> None:
        self._customers[c.id] = c
        if sort:
            bisect.insort(self._customer_order, c.key)
            self._index(self._by_email, c.email, c.key)
        else:
            self._customer_order.append(c.key)
            if c.email is not None:
                self._by_email.setdefault(c.email, []).append(c.key)

    def _insert_charge(self, ch: _Charge, *, sort: bool = True) -> None:
        self._charges[ch.id] = ch
        if sort:
            bisect.insort(self._charge_order, ch.key)
            self._index(self._by_customer, ch.customer, ch.key)
        else:
            self._charge_order.append(ch.key)
            if ch.customer is not None:
                self._by_customer.setdefault(ch.customer, []).append(ch.key)

    def _sort_all(self) -> None:
        """After inserting with sort=False (seeding): order every list and index once."""
        for keys in (self._customer_order, self._charge_order, self._event_order,
                     *self._by_email.values(), *self._by_customer.values()):
            keys.sort()

    def _emit(self, kind: str, state: _Customer | _Charge, *, previous: dict[str, Any] | None
              = None, created: int | None = None, request_id: str | None = "auto",
              sort: bool = True) -> None:
        ev = _Event(
            id=self._ids.make("evt_", 24),
            created=self.timestamp() if created is None else created,
            seq=next(self._seq), type=kind,
            # A shallow copy freezes the state: mutators replace nested values, never edit them.
            snapshot=replace(state),
            previous=previous,
            request_id=self._request_id() if request_id == "auto" else request_id,
        )
        self._events[ev.id] = ev
        if sort:
            bisect.insort(self._event_order, ev.key)
        else:
            self._event_order.append(ev.key)

    @staticmethod
    def _request_id() -> str:
        return "req_" + uuid.uuid4().hex[:14]

    # -- HTTP -----------------------------------------------------------------------------------
    def empty_reply(self, path: str) -> Reply:
        return Reply(200, {"object": "list", "data": [], "has_more": False, "url": path})

    def error_reply(self, status: int, message: str) -> Reply:
        type_ = "api_error" if status >= 500 else "invalid_request_error"
        code = {429: "rate_limit"}.get(status)
        if status == 429:
            message = ("Request rate limit exceeded. Learn more about rate limits here "
                       "https://stripe.com/docs/rate-limits.")
        return self._error(StripeError(status, message, type_=type_, code=code))

    def _error(self, error: StripeError) -> Reply:
        body: dict[str, Any] = {}
        if error.code:
            body["code"] = error.code
            body["doc_url"] = f"https://stripe.com/docs/error-codes/{error.code.replace('_', '-')}"
        body["message"] = error.message
        if error.param:
            body["param"] = error.param
        body["type"] = error.type
        return Reply(error.status, {"error": body}, headers={"Request-Id": self._request_id()})

    def handle(self, method: str, path: str, query: dict[str, list[str]],
               headers: dict[str, str], body: bytes) -> Reply:
        try:
            permissions = self._authenticate(headers)
            with self.lock:
                reply = self._route(method, path, query, permissions)
        except StripeError as error:
            reply = self._error(error)
        reply.headers.setdefault("Request-Id", self._request_id())
        reply.headers["Stripe-Version"] = headers.get("stripe-version") or ACCOUNT_API_VERSION
        return reply

    def _authenticate(self, headers: dict[str, str]) -> tuple[str, frozenset[str]]:
        auth = headers.get("authorization", "").strip()
        key = ""
        if auth[:7].lower() == "bearer ":
            key = auth[7:].strip()
        elif auth[:6].lower() == "basic ":
            try:
                key = base64.b64decode(auth[6:]).decode().split(":", 1)[0]
            except (ValueError, UnicodeDecodeError):
                key = ""
        if not key:
            raise StripeError(401, _NO_KEY)
        if key == self.api_key:
            return key, ALL_PERMISSIONS
        with self.lock:
            permissions = self.restricted_keys.get(key)
        if permissions is None:
            raise StripeError(401, f"Invalid API Key provided: {_mask(key)}")
        return key, permissions

    def _route(self, method: str, path: str, query: dict[str, list[str]],
               auth: tuple[str, frozenset[str]]) -> Reply:
        parts = [p for p in path.split("/") if p]
        resource = parts[1] if len(parts) >= 2 and parts[0] == "v1" else None
        if resource not in _LIST_PARAMS or len(parts) > 3:
            raise _unrecognized(method, path)
        key, permissions = auth
        access = "read" if method == "GET" else "write"
        # Write implies read, as in the Dashboard.
        granted = {f"{resource}:{access}", f"{resource}:write"} & permissions
        if key != self.api_key and not granted:
            raise StripeError(
                403, f"The provided key '{_mask(key, shown=6)}' does not have the required "
                f"permissions for this endpoint on account '{self.account}'. Having the "
                f"'{_RAK[resource]}_{access}' permission would allow this request to continue.")
        if len(parts) == 2 and method == "GET":
            return Reply(200, self._list(resource, query))
        if len(parts) == 3 and method == "GET":
            return Reply(200, self._retrieve(resource, parts[2], query))
        if len(parts) == 3 and method == "DELETE" and resource == "customers":
            _parse(query, set())
            if parts[2] not in self._customers or self._customers[parts[2]].deleted:
                raise _missing("customer", parts[2], "id", 404)
            return Reply(200, self.delete_customer(parts[2]))
        raise _unrecognized(method, path)

    def _retrieve(self, resource: str, ident: str, query: dict[str, list[str]]) -> Any:
        params = _parse(query, {"expand"})
        expand = params.get("expand", [])
        if resource == "customers":
            c = self._customers.get(ident)
            if c is None:
                raise _missing("customer", ident, "id", 404)
            return self._render_deleted(c) if c.deleted else self._render_customer(c)
        if resource == "charges":
            ch = self._charges.get(ident)
            if ch is None:
                raise _missing("charge", ident, "id", 404)
            return self._render_charge(ch, expand_customer="customer" in expand)
        ev = self._events.get(ident)
        if ev is None or ev.created < self._event_cutoff():
            raise _missing("event", ident, "id", 404)
        return self._render_event(ev)

    def _event_cutoff(self) -> int:
        return self.timestamp() - int(EVENT_RETENTION.total_seconds())

    def _list(self, resource: str, query: dict[str, list[str]]) -> dict[str, Any]:
        params = _parse(query, _LIST_PARAMS[resource])
        limit = _limit(params.get("limit"))
        after, before = params.get("starting_after"), params.get("ending_before")
        stuck = self.stuck_lists.get(resource)
        if stuck == "ignore_cursor":
            after = before = None
        if after and before:
            raise StripeError(400, "You may only specify one of these parameters: "
                              "ending_before, starting_after.")
        created = params.get("created", {})
        if resource == "customers":
            email = params.get("email")
            keys = sorted(self._by_email.get(email, [])) if email is not None \
                else self._customer_order
            store: dict[str, Any] = self._customers
        elif resource == "charges":
            customer = params.get("customer")
            keys = sorted(self._by_customer.get(customer, [])) if customer is not None \
                else self._charge_order
            store = self._charges
        else:
            types = params.get("types") or ([params["type"]] if "type" in params else None)
            cutoff = self._event_cutoff()
            keys = [k for k in self._event_order if k[0] >= cutoff
                    and (types is None or _type_matches(self._events[k[2]].type, types))]
            store = self._events
        lo, hi = _created_bounds(keys, created)
        oldest = keys[lo:min(hi, lo + limit)]
        if after or before:
            anchor = store.get(after or before)
            if anchor is None:
                raise _missing(_SINGULAR[resource], str(after or before),
                               "starting_after" if after else "ending_before", 400)
            if after:
                hi = max(lo, bisect.bisect_left(keys, anchor.key, lo, hi))
                start, stop, has_more = max(lo, hi - limit), hi, hi - limit > lo
            else:
                lo = min(hi, bisect.bisect_right(keys, anchor.key, lo, hi))
                start, stop, has_more = lo, min(hi, lo + limit), lo + limit < hi
        else:
            start, stop, has_more = max(lo, hi - limit), hi, hi - limit > lo
        window = keys[start:stop]
        if stuck is not None:
            window = window or (oldest if after else [])
            has_more = True
        page = [store[k[2]] for k in reversed(window)]
        if resource == "customers":
            data = [self._render_customer(c) for c in page]
        elif resource == "charges":
            expand = "data.customer" in params.get("expand", [])
            data = [self._render_charge(ch, expand_customer=expand) for ch in page]
        else:
            data = [self._render_event(ev) for ev in page]
        return {"object": "list", "data": data, "has_more": has_more,
                "url": f"/v1/{resource}"}

    # -- seeding (sandbox.seed.stripe fills the stores, then calls this) -------------------
    def _finish_seeding(self, now: int) -> None:
        """Creation events for what was created in the last 30 days, then sort everything."""
        cutoff = now - int(EVENT_RETENTION.total_seconds())
        recent: list[_Customer | _Charge] = [c for c in self._customers.values()
                                             if c.created >= cutoff]
        recent += [ch for ch in self._charges.values() if ch.created >= cutoff]
        recent.sort(key=lambda o: (o.created, o.seq))
        for state in recent:
            kind = ("customer.created" if isinstance(state, _Customer)
                    else f"charge.{state.status}")
            self._emit(kind, state, created=state.created, request_id=None, sort=False)
        self._sort_all()


# -- helpers -------------------------------------------------------------------------------------
def _fresh(obj: dict[str, Any]) -> dict[str, Any]:
    """A deep copy, so that a caller's edits never reach the shared fixture parts."""
    return json.loads(json.dumps(obj))


def _mask(key: str, shown: int = 4) -> str:
    """The key as Stripe echoes it: the prefix, stars, and the last 4 characters (a 401) or
    6 (a restricted key's 403)."""
    prefix = key[:8] if key[:3] in ("sk_", "rk_", "pk_") else ""
    shown = max(0, min(shown, len(key) - len(prefix)))
    return prefix + "*" * (len(key) - len(prefix) - shown) + key[len(key) - shown:]


def _check_fields(values: dict[str, Any], allowed: frozenset[str], kind: str) -> None:
    unknown = set(values) - allowed
    if unknown:
        raise ValueError(f"unknown {kind} fields {sorted(unknown)}; known: {sorted(allowed)}")


def _copy_values(values: dict[str, Any]) -> dict[str, Any]:
    copied = copy.deepcopy(values)
    if "metadata" in copied and copied["metadata"] is None:
        copied["metadata"] = {}
    return copied


def _changed(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in before.items() if after.get(key) != value}


def _type_matches(kind: str, patterns: list[str]) -> bool:
    for pattern in patterns:
        if pattern.endswith("*") and kind.startswith(pattern[:-1]):
            return True
        if kind == pattern:
            return True
    return False


def _parse(query: dict[str, list[str]], allowed: set[str]) -> dict[str, Any]:
    """Stripe's form-encoded parameters: scalars, `name[]` / `name[0]` arrays and
    `created[gte]`-style ranges; an unknown parameter is a 400, as Stripe answers."""
    params: dict[str, Any] = {}
    for key, values in query.items():
        ranged = _CREATED_PARAM.match(key)
        array = _ARRAY_PARAM.match(key)
        base = "created" if ranged else array.group(1) if array else key
        if base not in allowed:
            raise StripeError(400, f"Received unknown parameter: {key}",
                              code="parameter_unknown", param=key)
        if ranged:
            params.setdefault("created", {})[ranged.group(1)] = _integer(values[-1], key)
        elif base == "created":
            params.setdefault("created", {})["eq"] = _integer(values[-1], key)
        elif array:
            params.setdefault(base, []).extend(values)
        elif base in ("expand", "types"):
            raise StripeError(400, f"Invalid array: {key}", param=key)
        else:
            params[base] = values[-1]
    return params


def _integer(value: str, param: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise StripeError(400, f"Invalid integer: {value}", param=param) from None


def _limit(value: str | None) -> int:
    if value is None:
        return 10
    limit = _integer(value, "limit")
    if limit < 1:
        raise StripeError(400, "This value must be greater than or equal to 1.", param="limit")
    if limit > 100:
        raise StripeError(400, f"This value must be less than or equal to 100 (it currently is "
                          f"'{limit}').", param="limit")
    return limit


def _created_bounds(keys: list[tuple[int, int, str]], created: dict[str, int]
                    ) -> tuple[int, int]:
    lo, hi = 0, len(keys)
    low = max([created[op] + (op == "gt") for op in ("gt", "gte", "eq") if op in created],
              default=None)
    high = min([created[op] - (op == "lt") for op in ("lt", "lte", "eq") if op in created],
               default=None)
    if low is not None:
        lo = bisect.bisect_left(keys, (low,))
    if high is not None:
        hi = bisect.bisect_left(keys, (high + 1,))
    return lo, max(lo, hi)


def _missing(kind: str, ident: str, param: str, status: int) -> StripeError:
    return StripeError(status, f"No such {kind}: '{ident}'", code="resource_missing",
                       param=param)


def _unrecognized(method: str, path: str) -> StripeError:
    return StripeError(404, f"Unrecognized request URL ({method}: {path}). Please see "
                       "https://stripe.com/docs or we can help at https://support.stripe.com/.")
