"""Loopback twin of a WooCommerce shop's REST API v3 (customers and orders), answering as the
reference docs and WooCommerce's controllers do: the documented fields and types (dates in
the site's timezone and as GMT), page/per_page/offset paging with X-WP-Total,
X-WP-TotalPages and Link headers, the list filters an auditor uses (status with `any` leaving
the trash out, role with `customer` by default, modified_after/before, include, email, search,
customer, _fields), WordPress's error bodies, and authentication as
class-wc-rest-authentication.php does it: OAuth 1.0a signatures (HMAC-SHA1/SHA256, 15-minute
timestamp window, nonces never reused) and HTTP Basic only where WordPress's is_ssl() is true.
The twin listens on plain HTTP; `https=True` declares it behind a TLS-terminating proxy whose
site sets $_SERVER['HTTPS'] = 'on' (what is_ssl() reads), so Basic is served and signatures
name https:// URLs. Query parameters are read as PHP's $_GET reads them (`status[0]=a`,
`status[]=a`, the last of repeated names).

State lives in memory; the mutators (also reachable through the control API) change it as
WooCommerce would. The twin knows nothing of the estate: sandbox.seed.woocommerce builds a
shop from the estate's people, and large shops for benchmarks.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import re
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote, unquote, unquote_plus, urlencode
from zoneinfo import ZoneInfo

from sandbox.server import Reply, Twin
from sandbox.woocommerce_admin import ShopAdmin

API = "/wp-json/wc/v3"
WC_ADMIN = "/wp-json/wc-admin"
ORDER_STATUSES = ("pending", "processing", "on-hold", "completed", "cancelled", "refunded",
                  "failed", "trash")
ROLES = ("all", "administrator", "editor", "author", "contributor", "subscriber", "customer",
         "shop_manager")
CUSTOMER_ORDERBY = ("id", "include", "name", "registered_date")
# `modified` is accepted by WooCommerce's CRUD controllers though the docs list it not.
ORDER_ORDERBY = ("date", "id", "include", "title", "slug", "modified")
OAUTH_PARAMS = ("oauth_consumer_key", "oauth_timestamp", "oauth_nonce", "oauth_signature",
                "oauth_signature_method")
OAUTH_WINDOW = 15 * 60
# Records whose list JSON is kept (about 2 kB each).
ENCODED_CACHE = 200_000
PAID = ("processing", "completed", "refunded")
# What WooCommerce's anonymiser writes (wp_privacy_anonymize_data and its own filter).
DELETED_TEXT = "[deleted]"
DELETED_EMAIL = "deleted@site.invalid"



# -- small helpers -------------------------------------------------------------------------


def _gmt(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds")[:19]


def _same(given: object, expected: str) -> bool:
    """Constant-time comparison, as WooCommerce's hash_equals (any text, not only ASCII)."""
    return hmac.compare_digest(str(given).encode(), expected.encode())


def _error(status: int, code: str, message: str, **data: Any) -> Reply:
    return Reply(status, {"code": code, "message": message, "data": {"status": status, **data}})


def _rawurlencode(text: str) -> str:
    """PHP's rawurlencode: everything but A-Z a-z 0-9 - _ . ~ percent-encoded."""
    return quote(text, safe="~")


_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def normalise_email(value: object) -> str | None:
    """How the twin compares emails (its own rule, not the connector's): trimmed, lower-cased,
    None when it is not an address."""
    if not isinstance(value, str):
        return None
    email = value.strip().lower()
    return email if _EMAIL.match(email) else None


def parse_time(value: object) -> datetime | None:
    """ISO 8601 text as the twin stores and accepts it (naive is UTC), or None."""
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _wp_list(items: Iterable[str]) -> str:
    """WordPress's `%l` list: "a and b", "a, b, and c"."""
    words = list(items)
    if len(words) <= 2:
        return " and ".join(words)
    return ", ".join(words[:-1]) + ", and " + words[-1]


def _parse_list(value: str | list[str] | dict[str, str]) -> list[str]:
    """wp_parse_list: an array as is, a string split on commas and spaces."""
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list):
        parts: list[str] = []
        for item in value:
            parts.extend(_parse_list(item))
        return parts
    return [part for part in value.replace(",", " ").split() if part]


_RFC3339 = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}(:\d{2})?)?$"


def _blank_address(*, email: bool) -> dict[str, str]:
    blank = {"first_name": "", "last_name": "", "company": "", "address_1": "",
             "address_2": "", "city": "", "state": "", "postcode": "", "country": ""}
    if email:
        blank.update({"email": "", "phone": ""})
    return blank


def _fields_tree(fields: list[str]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for path in fields:
        node = tree
        parts = path.split(".")
        for index, part in enumerate(parts):
            if node.get(part) is True:
                break
            if index == len(parts) - 1:
                node[part] = True
            else:
                node = node.setdefault(part, {})
    return tree


def _trim(data: dict[str, Any], tree: dict[str, Any]) -> dict[str, Any]:
    """rest_filter_response_fields: keep only the requested (possibly nested) fields."""
    kept: dict[str, Any] = {}
    for key, sub in tree.items():
        if key not in data:
            continue
        if sub is True or not isinstance(data[key], dict):
            kept[key] = data[key]
        else:
            kept[key] = _trim(data[key], sub)
    return kept


class _Invalid(Exception):
    """A request parameter WordPress's schema validation would refuse."""

    def __init__(self, errors: dict[str, str]) -> None:
        self.errors = errors
        super().__init__(", ".join(errors))


class WooCommerceTwin(Twin):
    """One shop. `now` is the shop's clock for what it records (dates created/modified);
    OAuth timestamps are checked against `oauth_clock` (wall-clock seconds by default), as
    the server checks a client's real clock.

    Knobs for what the docs leave open or a real shop gets wrong:
    `https`: is_ssl() is true (behind a TLS-terminating proxy), so Basic auth is served.
    `any_includes_trash`: `status=any` lists trashed orders too (WooCommerce does not: both
    its post and its HPOS queries leave exclude_from_search statuses, the trash, out).
    `unlisted`: ids counted in X-WP-Total but left out of list pages (WooCommerce's
    get_items skips records the key's user may not read, after counting them).
    `forbidden`: collections the key's user may not list (403).
    `paging_fault`: "repeat" (every page after the first answers the first page's records),
    "alternate" (pages after the first alternate between the first two pages' records,
    and X-WP-Total keeps growing), "growing" (X-WP-Total and X-WP-TotalPages grow with
    every page); `paging_fault_pages` list pages later the fault stops."""

    name = "woocommerce"

    def __init__(self, shop: str = "shop", consumer_key: str | None = None,
                 consumer_secret: str | None = None,
                 now: Callable[[], datetime] | None = None, *,
                 permissions: str = "read_write", timezone: str = "Europe/London",
                 https: bool = False, any_includes_trash: bool = False) -> None:
        super().__init__()
        self.https = https
        self.any_includes_trash = any_includes_trash
        self.unlisted: set[int] = set()
        # Collections the key's user may not list (its role lacks the capability): 403.
        self.forbidden: set[str] = set()
        self.paging_fault: str | None = None
        self.paging_fault_pages = 200
        self.shop = shop
        # Its plugins, options and the key's user's role (sandbox/woocommerce_admin.py).
        self.admin = ShopAdmin()
        self.consumer_key = consumer_key or f"ck_sandbox_{shop}"
        self.consumer_secret = consumer_secret or f"cs_sandbox_{shop}"
        self.permissions = permissions
        self.now: Callable[[], datetime] = now or (lambda: datetime.now(UTC))
        self.oauth_clock: Callable[[], float] = time.time
        self.tz = ZoneInfo(timezone)
        self.customers: dict[int, dict[str, Any]] = {}
        self.orders: dict[int, dict[str, Any]] = {}
        self._next_customer = 2  # user 1 is the site's administrator
        self._next_order = 100
        self._next_meta = 1000
        self._trashed_from: dict[int, str] = {}
        self._nonces: dict[str, float] = {}
        self._version = 0
        self._selections: dict[tuple[Any, ...], tuple[int, list[int]]] = {}
        # Each record's JSON as a list answers it, until the next change: a benchmark must
        # measure the client, not the twin re-encoding the same records.
        self._encoded: dict[tuple[str, int, str], bytes] = {}

    @property
    def source(self) -> str:
        return f"woo:{self.shop}"

    # -- dates --------------------------------------------------------------------------------

    def _local(self, moment: datetime) -> str:
        return moment.astimezone(self.tz).isoformat(timespec="seconds")[:19]

    def _set_date(self, record: dict[str, Any], name: str, moment: datetime | None) -> None:
        record[name] = None if moment is None else self._local(moment)
        record[f"{name}_gmt"] = None if moment is None else _gmt(moment)

    def _meta_entry(self, key: str, value: Any) -> dict[str, Any]:
        self._next_meta += 1
        return {"id": self._next_meta, "key": key, "value": value}

    def _changed(self) -> None:
        self._version += 1
        self._selections.clear()
        self._encoded.clear()

    # -- building records ---------------------------------------------------------------------

    def _new_customer(self, ident: int, moment: datetime) -> dict[str, Any]:
        record: dict[str, Any] = {"id": ident}
        self._set_date(record, "date_created", moment)
        self._set_date(record, "date_modified", moment)
        record.update({"email": "", "first_name": "", "last_name": "", "role": "customer",
                       "username": f"user{ident}", "billing": _blank_address(email=True),
                       "shipping": _blank_address(email=False), "is_paying_customer": False,
                       "avatar_url": "", "meta_data": []})
        return record

    def _new_order(self, ident: int, moment: datetime) -> dict[str, Any]:
        key = hashlib.sha256(f"{self.shop}{ident}".encode()).hexdigest()[:13]
        record: dict[str, Any] = {
            "id": ident, "parent_id": 0, "number": str(ident), "order_key": f"wc_order_{key}",
            "created_via": "checkout", "version": "9.4.2", "status": "pending",
            "currency": "GBP",
        }
        self._set_date(record, "date_created", moment)
        self._set_date(record, "date_modified", moment)
        record.update({
            "discount_total": "0.00", "discount_tax": "0.00", "shipping_total": "0.00",
            "shipping_tax": "0.00", "cart_tax": "0.00", "total": "0.00", "total_tax": "0.00",
            "prices_include_tax": False, "customer_id": 0, "customer_ip_address": "",
            "customer_user_agent": "", "customer_note": "",
            "billing": _blank_address(email=True), "shipping": _blank_address(email=False),
            "payment_method": "", "payment_method_title": "", "transaction_id": "",
            "date_paid": None, "date_paid_gmt": None, "date_completed": None,
            "date_completed_gmt": None, "cart_hash": "", "meta_data": [], "line_items": [],
            "tax_lines": [], "shipping_lines": [], "fee_lines": [], "coupon_lines": [],
            "refunds": [],
        })
        return record

    def _apply(self, record: dict[str, Any], fields: dict[str, Any]) -> None:
        """Set fields the way the tests and the control API describe them: nested address
        objects merged, meta_data as a list of {key, value} or a {key: value} mapping (None
        removes), dates as aware datetimes (both the local and the _gmt field) or raw text."""
        for key, value in fields.items():
            if key in ("billing", "shipping") and isinstance(value, dict):
                record[key] = {**record.get(key, {}), **value}
            elif key == "meta_data":
                entries = value.items() if isinstance(value, dict) else (
                    (item["key"], item.get("value")) for item in value)
                meta = list(record.get("meta_data", []))
                for meta_key, meta_value in entries:
                    meta = [m for m in meta if m["key"] != meta_key]
                    if meta_value is not None:
                        meta.append(self._meta_entry(meta_key, meta_value))
                record["meta_data"] = meta
            elif key == "last_active":
                self._apply(record, {"meta_data": {"wc_last_active": _day_stamp(value)}})
            elif key.startswith("date_") and (value is None or isinstance(value, datetime)):
                self._set_date(record, key.removesuffix("_gmt"), value)
            else:
                record[key] = value

    # -- mutators -----------------------------------------------------------------------------

    def add_customer(self, **fields: Any) -> int:
        """A new account (role customer unless given); returns its id."""
        with self.lock:
            ident = int(fields.pop("id", 0)) or self._next_customer
            self._next_customer = max(self._next_customer, ident + 1)
            moment = self.now()
            record = self._new_customer(ident, moment)
            if "username" not in fields and isinstance(fields.get("email"), str):
                fields["username"] = fields["email"].strip().split("@")[0].lower()
            self._apply(record, {"last_active": moment, **fields})
            self.customers[ident] = record
            self._changed()
            return ident

    def update_customer(self, ident: int, **fields: Any) -> dict[str, Any]:
        with self.lock:
            record = dict(self.customers[int(ident)])
            self._set_date(record, "date_modified", self.now())
            self._apply(record, fields)
            self.customers[int(ident)] = record
            self._changed()
            return record

    def set_last_active(self, ident: int, moment: datetime) -> None:
        """WooCommerce refreshes `wc_last_active` (the day, as unix seconds) when a logged-in
        customer visits; date_modified does not move."""
        with self.lock:
            record = dict(self.customers[int(ident)])
            self._apply(record, {"last_active": moment})
            self.customers[int(ident)] = record
            self._changed()

    def delete_customer(self, ident: int) -> dict[str, Any]:
        """Delete the user. As wc_reset_order_customer_id_on_deleted_user does, their orders
        stay (still holding billing and shipping) with customer_id 0, date_modified unmoved."""
        with self.lock:
            record = self.customers.pop(int(ident))
            for order_id, order in list(self.orders.items()):
                if order["customer_id"] == int(ident):
                    self.orders[order_id] = {**order, "customer_id": 0}
            self._changed()
            return record

    def add_order(self, **fields: Any) -> int:
        """A new order (status pending, a guest's unless customer_id is given); returns its id.
        A paid status without date_paid gets one; completed/refunded get date_completed."""
        with self.lock:
            ident = int(fields.pop("id", 0)) or self._next_order
            self._next_order = max(self._next_order, ident + 1)
            moment = self.now()
            created = fields.get("date_created")
            record = self._new_order(ident, created if isinstance(created, datetime) else moment)
            self._set_date(record, "date_modified", moment)
            self._apply(record, fields)
            self._complete_dates(record, fields)
            self.orders[ident] = record
            self._changed()
            return ident

    def _complete_dates(self, record: dict[str, Any], fields: dict[str, Any]) -> None:
        moment = parse_time(record["date_created_gmt"]) or self.now()
        if record["status"] in PAID and "date_paid" not in fields and not record["date_paid"]:
            self._set_date(record, "date_paid", moment + timedelta(minutes=2))
        if record["status"] in ("completed", "refunded") and "date_completed" not in fields \
                and not record["date_completed"]:
            self._set_date(record, "date_completed",
                           min(moment + timedelta(days=1), max(moment, self.now())))

    def update_order(self, ident: int, **fields: Any) -> dict[str, Any]:
        with self.lock:
            record = dict(self.orders[int(ident)])
            self._set_date(record, "date_modified", self.now())
            self._apply(record, fields)
            self._complete_dates(record, fields)
            self.orders[int(ident)] = record
            self._changed()
            return record

    def trash_order(self, ident: int) -> dict[str, Any]:
        with self.lock:
            record = self.orders[int(ident)]
            if record["status"] != "trash":
                self._trashed_from[int(ident)] = record["status"]
            return self.update_order(ident, status="trash")

    def delete_order(self, ident: int) -> dict[str, Any]:
        with self.lock:
            record = self.orders.pop(int(ident))
            self._trashed_from.pop(int(ident), None)
            self._changed()
            return record

    def anonymise_order(self, ident: int) -> dict[str, Any]:
        """WC_Privacy_Erasers::remove_order_personal_data: personal fields blanked or masked
        (text → [deleted], email → deleted@site.invalid, IP host part zeroed, phone digits
        zeroed, state/country emptied, customer_id 0), meta `_anonymized` = yes."""
        with self.lock:
            record = self.orders[int(ident)]
            billing, shipping = dict(record["billing"]), dict(record["shipping"])
            for address in (billing, shipping):
                for name in ("first_name", "last_name", "company", "address_1", "address_2",
                             "city", "postcode"):
                    if address.get(name):
                        address[name] = DELETED_TEXT
                for name in ("state", "country"):
                    address[name] = ""
                if address.get("phone"):
                    address["phone"] = "".join("0" if c.isdigit() else c
                                               for c in address["phone"])
            if billing.get("email"):
                billing["email"] = DELETED_EMAIL
            ip = record["customer_ip_address"]
            fields: dict[str, Any] = {
                "billing": billing, "shipping": shipping, "customer_id": 0,
                "customer_ip_address": _anonymise_ip(ip) if ip else "",
                "customer_user_agent": DELETED_TEXT if record["customer_user_agent"] else "",
                "transaction_id": "0" if record["transaction_id"] else "",
                "meta_data": {"_anonymized": "yes"},
            }
            return self.update_order(ident, **fields)

    def ground_truth(self) -> set[tuple[str, str, str | None]]:
        """(record_type, external_id, normalised email or None) of everything the shop holds:
        every customer of every role, every order of every status, the trash included."""
        with self.lock:
            truth: set[tuple[str, str, str | None]] = set()
            for ident, customer in self.customers.items():
                email = _real_email(customer["email"]) or _real_email(
                    customer["billing"].get("email"))
                truth.add(("customer", str(ident), email))
            for ident, order in self.orders.items():
                truth.add(("order", str(ident), _real_email(order["billing"].get("email"))))
            return truth

    def set_knobs(self, **knobs: Any) -> dict[str, Any]:
        """Set the knobs of the class docstring (also through the control API, `knobs`)."""
        with self.lock:
            for name, value in knobs.items():
                if name in ("unlisted", "forbidden"):
                    value = set(value)
                elif name not in ("https", "any_includes_trash", "paging_fault",
                                  "paging_fault_pages"):
                    raise ValueError(f"unknown knob {name!r}")
                setattr(self, name, value)
            self._changed()
            return {"https": self.https, "any_includes_trash": self.any_includes_trash,
                    "paging_fault": self.paging_fault}

    # -- control API --------------------------------------------------------------------------

    def control(self, action: str, payload: dict[str, Any]) -> Any:
        fields = {key: (parse_time(value) if _is_date_key(key) and isinstance(value, str)
                        else value) for key, value in payload.items()}
        ident = fields.pop("id", None)
        if action == "add_customer":
            return self.add_customer(**fields)
        if action == "add_order":
            return self.add_order(**fields)
        actions: dict[str, Callable[..., Any]] = {
            "update_customer": self.update_customer, "delete_customer": self.delete_customer,
            "update_order": self.update_order, "trash_order": self.trash_order,
            "delete_order": self.delete_order, "anonymise_order": self.anonymise_order,
            "set_last_active": lambda i, **f: self.set_last_active(i, f["last_active"]),
        }
        if action == "knobs":
            try:
                return self.set_knobs(**payload)
            except ValueError as exc:
                return {"error": str(exc)}
        if action == "ground_truth":
            return sorted(self.ground_truth(), key=lambda t: (t[0], int(t[1])))
        if action not in actions:
            raise KeyError(action)
        try:
            result = actions[action](int(ident or 0), **fields)
        except KeyError:
            return {"error": f"no record with id {ident} for {action}"}
        return {"id": ident} if result is None or action.startswith("delete") else result

    # -- HTTP ---------------------------------------------------------------------------------

    def empty_reply(self, path: str) -> Reply:
        return Reply(200, [], headers={"X-WP-Total": "0", "X-WP-TotalPages": "0"})

    def error_reply(self, status: int, message: str) -> Reply:
        code = {429: "woocommerce_rest_too_many_requests", 503: "rest_service_unavailable",
                502: "rest_bad_gateway"}.get(status, "internal_server_error")
        return _error(status, code, message)

    def handle(self, method: str, path: str, query: dict[str, list[str]],
               headers: dict[str, str], body: bytes) -> Reply:
        params = _php_params(query)
        if path.startswith(WC_ADMIN + "/") and method == "GET":
            user, failure = self._authenticate(method, headers.get("host", "127.0.0.1"),
                                               path, params, headers)
            if failure is not None:
                return failure
            if path == WC_ADMIN + "/options" and user:
                return self.admin.wc_admin_options(_parse_list(params.get("options", "")))
            return _error(401 if not user else 404, "rest_no_route" if user else
                          "woocommerce_rest_cannot_view", "No route was found matching the "
                          "URL and request method." if user else "Sorry, you cannot view "
                          "these options.")
        if not (path == API or path.startswith(API + "/")):
            return _error(404, "rest_no_route",
                          "No route was found matching the URL and request method.")
        user, failure = self._authenticate(method, headers.get("host", "127.0.0.1"), path,
                                           params, headers)
        if failure is not None:
            return failure
        if user and method != "GET" and "write" not in self.permissions:
            return _error(401, "woocommerce_rest_authentication_error",
                          "The API key provided does not have write permissions.")
        if user and method == "GET" and "read" not in self.permissions:
            return _error(401, "woocommerce_rest_authentication_error",
                          "The API key provided does not have read permissions.")
        parts = path[len(API):].strip("/").split("/")
        scheme = "https" if self.https else "http"
        collection = f"{scheme}://{headers.get('host', '127.0.0.1')}{API}/{parts[0]}"
        try:
            if parts[0] in ("customers", "orders") and len(parts) == 1 and method == "GET":
                if user and parts[0] in self.forbidden:
                    return _error(403, "woocommerce_rest_cannot_view",
                                  "Sorry, you cannot list resources.")
                return self._list(parts[0], params, collection, user)
            if parts[0] in ("system_status", "settings") and method == "GET":
                return self._shop_admin(parts, params, collection, user)
            if parts[0] in ("customers", "orders") and len(parts) == 2 and parts[1].isdigit():
                return self._item(method, parts[0], int(parts[1]), params, body, collection,
                                  user)
        except _Invalid as invalid:
            return _error(400, "rest_invalid_param",
                          f"Invalid parameter(s): {', '.join(invalid.errors)}",
                          params=invalid.errors)
        return _error(404, "rest_no_route",
                      "No route was found matching the URL and request method.")

    def _shop_admin(self, parts: list[str], params: dict[str, Any], collection: str,
                    user: bool) -> Reply:
        """system_status and settings/<group>[/<id>] (sandbox/woocommerce_admin.py)."""
        if not user:
            return _error(401, "woocommerce_rest_cannot_view", "Sorry, you cannot list resources.")
        if parts[0] in self.forbidden:
            return _error(403, "woocommerce_rest_cannot_view", "Sorry, you cannot list resources.")
        if parts[0] == "system_status" and len(parts) == 1:
            return self.admin.system_status(collection, _parse_list(params.get("_fields", "")))
        if parts[0] == "settings" and len(parts) in (2, 3):
            return self.admin.settings(parts[1], parts[2] if len(parts) == 3 else None,
                                       collection.rsplit("/", 1)[0] + "/settings")
        return _error(404, "rest_no_route", "No route was found matching the URL and request "
                                            "method.")

    # -- authentication (class-wc-rest-authentication.php) ------------------------------------

    def _authenticate(self, method: str, host: str, path: str, params: dict[str, Any],
                      headers: dict[str, str]) -> tuple[bool, Reply | None]:
        """(authenticated, error reply). No credentials at all is not an error here: the
        endpoint's permission check answers 401 woocommerce_rest_cannot_view."""
        authorization = headers.get("authorization", "")
        oauth = dict(params)
        if authorization.startswith("OAuth "):
            for part in authorization[6:].split(","):
                name, _, value = part.strip().partition("=")
                if name.startswith("oauth_"):
                    oauth[name] = unquote_plus(value.strip().strip('"'))
        present = [name for name in OAUTH_PARAMS if oauth.get(name)]
        if not self.https:
            # authenticate(): Basic (and consumer_key in the query) only when is_ssl(); over
            # plain HTTP the request is anonymous unless signed, and the endpoint answers 401.
            return self._check_oauth(method, host, path, oauth) if present else (False, None)
        user, failure = self._basic(params, authorization)
        if user or failure is not None or not present:
            return user, failure
        return self._check_oauth(method, host, path, oauth)

    def _basic(self, params: dict[str, Any],
               authorization: str) -> tuple[bool, Reply | None]:
        """perform_basic_authentication: the query's consumer_key/secret first, then the
        Authorization header; an unknown key is no user (OAuth is tried next)."""
        key = secret = None
        if params.get("consumer_key") and params.get("consumer_secret"):
            key, secret = params["consumer_key"], params["consumer_secret"]
        elif authorization.startswith("Basic "):
            try:
                decoded = base64.b64decode(authorization[6:].strip()).decode()
            except (ValueError, UnicodeDecodeError):
                decoded = ""
            key, _, secret = decoded.partition(":")
        if not key or not secret or not _same(key, self.consumer_key):
            return False, None
        if not _same(secret, self.consumer_secret):
            refused = _error(401, "woocommerce_rest_authentication_error",
                             "Consumer secret is invalid.")
            refused.headers["WWW-Authenticate"] = (
                'Basic realm="WooCommerce API. Use a consumer key in the username field and a '
                'consumer secret in the password field."')
            return False, refused
        return True, None

    def _check_oauth(self, method: str, host: str, path: str,
                     params: dict[str, Any]) -> tuple[bool, Reply | None]:
        missing = [name for name in OAUTH_PARAMS if not params.get(name)]
        if missing:
            word = "parameter" if len(missing) == 1 else "parameters"
            return False, _error(401, "woocommerce_rest_authentication_missing_parameter",
                                 f"Missing OAuth {word} {', '.join(missing)}")
        if not _same(params["oauth_consumer_key"], self.consumer_key):
            return False, _error(401, "woocommerce_rest_authentication_error",
                                 "Consumer key is invalid.")
        signature_method = params["oauth_signature_method"]
        if signature_method not in ("HMAC-SHA1", "HMAC-SHA256"):
            return False, _error(401, "woocommerce_rest_authentication_error",
                                 "Invalid signature - signature method is invalid.")
        given = unquote(str(params["oauth_signature"]).replace(" ", "+"))
        signed = {k: v for k, v in params.items() if k != "oauth_signature"}
        scheme = "https" if self.https else "http"
        expected = oauth_signature(method, f"{scheme}://{host}{path}", signed,
                                   self.consumer_secret, signature_method)
        if not _same(given, expected):
            return False, _error(401, "woocommerce_rest_authentication_error",
                                 "Invalid signature - provided signature does not match.")
        now = self.oauth_clock()
        try:
            stamp = int(str(params["oauth_timestamp"]))
        except ValueError:
            stamp = -1
        if not now - OAUTH_WINDOW <= stamp <= now + OAUTH_WINDOW:
            return False, _error(401, "woocommerce_rest_authentication_error",
                                 "Invalid timestamp.")
        nonce = str(params["oauth_nonce"])
        with self.lock:
            self._nonces = {n: t for n, t in self._nonces.items() if t >= now - OAUTH_WINDOW}
            if nonce in self._nonces:
                return False, _error(401, "woocommerce_rest_authentication_error",
                                     "Invalid nonce - nonce has already been used.")
            self._nonces[nonce] = stamp
        return True, None

    # -- lists ----------------------------------------------------------------------------------

    def _list(self, kind: str, params: dict[str, Any], base: str, user: bool) -> Reply:
        errors: dict[str, str] = {}
        page = _integer(params, "page", 1, errors, minimum=1)
        per_page = _integer(params, "per_page", 10, errors, minimum=1, maximum=100)
        offset = _integer(params, "offset", None, errors)
        if kind == "customers":
            order = _enum(params, "order", "asc", ("asc", "desc"), errors)
            orderby = _enum(params, "orderby", "name", CUSTOMER_ORDERBY, errors)
            role = _enum(params, "role", "customer", ROLES, errors)
            selection = self._customer_filters(params, errors)
            selection["role"] = role
        else:
            order = _enum(params, "order", "desc", ("asc", "desc"), errors)
            orderby = _enum(params, "orderby", "date", ORDER_ORDERBY, errors)
            selection = self._order_filters(params, errors)
        if errors:
            raise _Invalid(errors)
        if not user:
            return _error(401, "woocommerce_rest_cannot_view", "Sorry, you cannot list resources.")
        assert page is not None and per_page is not None  # noqa: S101 - defaults given
        fields = _parse_list(params["_fields"]) if params.get("_fields") else None
        with self.lock:
            ids = self._select(kind, selection, str(orderby), str(order))
            start = max(0, offset if offset is not None else (page - 1) * per_page)
            chosen, total = self._page(ids, start, per_page)
            chosen = [i for i in chosen if i not in self.unlisted]
            store = self.customers if kind == "customers" else self.orders
            if fields:
                body: list[Any] | None = [self._render(kind, store[i], base, fields)
                                          for i in chosen]
                raw = None
            else:
                body, raw = None, b"[" + b",".join(
                    self._encode(kind, store[i], base) for i in chosen) + b"]"
        pages = math.ceil(total / per_page)
        headers = {"X-WP-Total": str(total), "X-WP-TotalPages": str(pages)}
        links = []
        query = {k: v for k, v in params.items() if k != "page"}
        if page > 1:
            links.append(f'<{base}?{_query(query, min(page - 1, max(pages, 1)))}>; rel="prev"')
        if pages > page:
            links.append(f'<{base}?{_query(query, page + 1)}>; rel="next"')
        if links:
            headers["Link"] = ", ".join(links)
        return Reply(200, body, headers, raw=raw)

    def _page(self, ids: list[int], start: int, per_page: int) -> tuple[list[int], int]:
        """The ids of one list page and the X-WP-Total to send, as `paging_fault` has it."""
        fault, honest = self.paging_fault, (ids[start:start + per_page], len(ids))
        if fault is None or start == 0 or self.paging_fault_pages <= 0:
            return honest
        self.paging_fault_pages -= 1
        growing = max(len(ids), start + 2 * per_page)
        if fault == "repeat":
            return ids[:per_page], len(ids)
        if fault == "alternate":
            first, second = ids[:per_page], ids[per_page:2 * per_page]
            return (first if (start // per_page) % 2 else second), growing
        if fault == "growing":
            return honest[0], growing
        raise ValueError(f"unknown paging_fault {fault!r}")

    def _customer_filters(self, params: dict[str, Any], errors: dict[str, str]) -> dict[str, Any]:
        selection: dict[str, Any] = {}
        if params.get("email"):
            email = str(params["email"]).strip()
            if normalise_email(email) is None:
                errors["email"] = "Invalid email address."
            selection["email"] = email.lower()
        if params.get("search"):
            selection["search"] = str(params["search"]).lower()
        for name in ("include", "exclude"):
            selection[name] = _id_list(params, name, errors)
        return selection

    def _order_filters(self, params: dict[str, Any], errors: dict[str, str]) -> dict[str, Any]:
        selection: dict[str, Any] = {}
        statuses = _parse_list(params.get("status", "any")) or ["any"]
        for index, status in enumerate(statuses):
            if status not in ("any", *ORDER_STATUSES):
                errors["status"] = f"status[{index}] is not one of " \
                                   f"{_wp_list(('any', *ORDER_STATUSES))}."
        selection["status"] = tuple(statuses)
        selection["any_includes_trash"] = self.any_includes_trash
        gmt = str(params.get("dates_are_gmt", "false")).lower() in ("1", "true")
        if "dates_are_gmt" in params and str(params["dates_are_gmt"]).lower() not in (
                "1", "0", "true", "false"):
            errors["dates_are_gmt"] = "dates_are_gmt is not of type boolean."
        for name in ("after", "before", "modified_after", "modified_before"):
            if params.get(name):
                selection[name] = self._date_param(str(params[name]), gmt, name, errors)
        selection["gmt"] = gmt
        if params.get("customer") not in (None, ""):
            value = str(params["customer"])
            if not value.isdigit():
                errors["customer"] = "customer is not of type integer."
            else:
                selection["customer"] = int(value)
        if params.get("search"):
            selection["search"] = str(params["search"]).lower()
        for name in ("include", "exclude", "parent"):
            selection[name] = _id_list(params, name, errors)
        return selection

    def _date_param(self, value: str, gmt: bool, name: str, errors: dict[str, str]) -> str:
        if not re.match(_RFC3339, value):
            errors[name] = "Invalid date."
            return ""
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        if moment.tzinfo is not None:
            moment = moment.astimezone(UTC if gmt else self.tz)
        return moment.strftime("%Y-%m-%dT%H:%M:%S")

    def _select(self, kind: str, selection: dict[str, Any], orderby: str, order: str) -> list[int]:
        """Ids matching the filters, sorted; cached until the state changes (a benchmark reads
        the same filtered listing page after page)."""
        key = (kind, orderby, order, tuple(sorted((k, repr(v)) for k, v in selection.items())))
        cached = self._selections.get(key)
        if cached is not None and cached[0] == self._version:
            return cached[1]
        if kind == "customers":
            chosen = [c for c in self.customers.values() if _customer_matches(c, selection)]
            sort_key = _customer_sort(orderby, selection)
        else:
            chosen = [o for o in self.orders.values() if _order_matches(o, selection)]
            sort_key = _order_sort(orderby, selection)
        chosen.sort(key=sort_key, reverse=order == "desc")
        ids = [record["id"] for record in chosen]
        if len(self._selections) > 64:
            self._selections.clear()
        self._selections[key] = (self._version, ids)
        return ids

    def _render(self, kind: str, record: dict[str, Any], collection: str,
                fields: list[str] | None) -> dict[str, Any]:
        data = dict(record)
        links: dict[str, Any] = {"self": [{"href": f"{collection}/{record['id']}"}],
                                 "collection": [{"href": collection}]}
        if kind == "orders" and record.get("customer_id"):
            customers = collection.rsplit("/", 1)[0] + "/customers"
            links["customer"] = [{"href": f"{customers}/{record['customer_id']}"}]
        data["_links"] = links
        if fields:
            data = _trim(data, _fields_tree(fields))
        return data

    def _encode(self, kind: str, record: dict[str, Any], collection: str) -> bytes:
        key = (kind, record["id"], collection)
        encoded = self._encoded.get(key)
        if encoded is None:
            encoded = json.dumps(self._render(kind, record, collection, None),
                                 separators=(",", ":")).encode()
            if len(self._encoded) >= ENCODED_CACHE:
                self._encoded.clear()
            self._encoded[key] = encoded
        return encoded

    # -- single records ---------------------------------------------------------------------

    def _item(self, method: str, kind: str, ident: int, params: dict[str, Any], body: bytes,
              collection: str, user: bool) -> Reply:
        store = self.customers if kind == "customers" else self.orders
        if kind == "customers":
            missing = _error(404, "woocommerce_rest_invalid_id", "Invalid resource ID.")
        else:
            missing = _error(404, "woocommerce_rest_shop_order_invalid_id", "Invalid ID.")
        if method == "GET":
            if not user:
                return _error(401, "woocommerce_rest_cannot_view",
                              "Sorry, you cannot view this resource.")
            with self.lock:
                record = store.get(ident)
            if record is None:
                return missing
            fields = _parse_list(params["_fields"]) if params.get("_fields") else None
            return Reply(200, self._render(kind, record, collection, fields))
        if method == "DELETE":
            force = str(params.get("force", "false")).lower() in ("1", "true")
            if not user:
                return _error(401, "woocommerce_rest_cannot_delete",
                              "Sorry, you are not allowed to delete this resource.")
            with self.lock:
                record = store.get(ident)
                if record is None:
                    return missing
                if kind == "customers":
                    if not force:
                        return _error(501, "woocommerce_rest_trash_not_supported",
                                      "Customers do not support trashing.")
                    self.delete_customer(ident)
                elif force:
                    self.delete_order(ident)
                elif record["status"] == "trash":
                    return _error(410, "woocommerce_rest_already_trashed",
                                  "The shop_order has already been deleted.")
                else:
                    record = self.trash_order(ident)
            return Reply(200, self._render(kind, record, collection, None))
        if method in ("PUT", "POST", "PATCH"):
            if not user:
                return _error(401, "woocommerce_rest_cannot_edit",
                              "Sorry, you are not allowed to edit this resource.")
            try:
                changes = json.loads(body or b"{}")
            except ValueError:
                return _error(400, "rest_invalid_json", "Invalid JSON body passed.")
            if not isinstance(changes, dict):
                return _error(400, "rest_invalid_json", "Invalid JSON body passed.")
            writable = _WRITABLE[kind]
            changes = {k: v for k, v in changes.items() if k in writable}
            if "status" in changes and changes["status"] not in ORDER_STATUSES:
                raise _Invalid({"status": f"status is not one of {_wp_list(ORDER_STATUSES)}."})
            with self.lock:
                if ident not in store:
                    # WC_REST_CRUD_Controller::update_item: an unknown id is a 400, not a 404.
                    return _error(400, missing.body["code"], missing.body["message"])
                update = self.update_customer if kind == "customers" else self.update_order
                record = update(ident, **changes)
            return Reply(200, self._render(kind, record, collection, None))
        return _error(404, "rest_no_route",
                      "No route was found matching the URL and request method.")


# -- selection helpers ---------------------------------------------------------------------


def _customer_matches(record: dict[str, Any], selection: dict[str, Any]) -> bool:
    role = selection.get("role", "customer")
    if role != "all" and record["role"] != role:
        return False
    if selection.get("include") and record["id"] not in selection["include"]:
        return False
    if selection.get("exclude") and record["id"] in selection["exclude"]:
        return False
    if "email" in selection and str(record["email"]).strip().lower() != selection["email"]:
        return False
    search = selection.get("search")
    if search:
        # WP_User_Query picks the columns from the term's shape.
        if "@" in search:
            columns = [record["email"]]
        elif search.isdigit():
            columns = [record["username"], str(record["id"])]
        else:
            columns = [record["username"], record["email"],
                       f"{record['first_name']} {record['last_name']}"]
        if not any(search in str(column).lower() for column in columns):
            return False
    return True


def _customer_sort(orderby: str, selection: dict[str, Any]) -> Callable[[dict[str, Any]], Any]:
    if orderby == "id":
        return lambda r: r["id"]
    if orderby == "include" and selection.get("include"):
        position = {ident: index for index, ident in enumerate(selection["include"])}
        return lambda r: position.get(r["id"], len(position))
    if orderby == "registered_date":
        return lambda r: (r["date_created_gmt"] or "", r["id"])
    # `name` sorts on display_name, which WooCommerce sets to the username.
    return lambda r: (str(r["username"]).lower(), r["id"])


def _order_matches(record: dict[str, Any], selection: dict[str, Any]) -> bool:
    statuses = selection.get("status", ("any",))
    if "any" in statuses:
        # WooCommerce short-circuits on `any`: every status but the trash (unless the knob).
        if record["status"] == "trash" and not selection.get("any_includes_trash"):
            return False
    elif record["status"] not in statuses:
        return False
    suffix = "_gmt" if selection.get("gmt") else ""
    created = record["date_created" + suffix] or ""
    modified = record["date_modified" + suffix] or ""
    if selection.get("after") and not created > selection["after"]:
        return False
    if selection.get("before") and not created < selection["before"]:
        return False
    if selection.get("modified_after") and not modified > selection["modified_after"]:
        return False
    if selection.get("modified_before") and not modified < selection["modified_before"]:
        return False
    if "customer" in selection and record["customer_id"] != selection["customer"]:
        return False
    if selection.get("include") and record["id"] not in selection["include"]:
        return False
    if selection.get("exclude") and record["id"] in selection["exclude"]:
        return False
    if selection.get("parent") and record["parent_id"] not in selection["parent"]:
        return False
    search = selection.get("search")
    if search:
        # wc_order_search: the address indexes (names, address, email, phone), item names, id.
        texts = [str(record["id"])]
        texts.extend(str(v) for v in record["billing"].values())
        texts.extend(str(v) for v in record["shipping"].values())
        texts.extend(str(item.get("name", "")) for item in record["line_items"])
        if not any(search in text.lower() for text in texts):
            return False
    return True


def _order_sort(orderby: str, selection: dict[str, Any]) -> Callable[[dict[str, Any]], Any]:
    if orderby in ("id", "slug"):
        return lambda r: r["id"]
    if orderby == "include" and selection.get("include"):
        position = {ident: index for index, ident in enumerate(selection["include"])}
        return lambda r: position.get(r["id"], len(position))
    if orderby == "modified":
        return lambda r: (r["date_modified"] or "", r["id"])
    return lambda r: (r["date_created"] or "", r["id"])


_WRITABLE = {
    "customers": frozenset({"email", "first_name", "last_name", "billing", "shipping",
                            "meta_data"}),
    "orders": frozenset({"parent_id", "status", "currency", "customer_id", "customer_note",
                         "billing", "shipping", "payment_method", "payment_method_title",
                         "transaction_id", "meta_data"}),
}


# -- parameters ----------------------------------------------------------------------------


def _php_params(query: dict[str, list[str]]) -> dict[str, Any]:
    """The query as PHP's $_GET sees it: the last of repeated names wins (so the parameters
    the `woocommerce` package sends twice count once); `name[key]=v` and `name[]=v` build an
    array ({key: v}, [] taking the next integer key), which the filters read like `a,b`."""
    params: dict[str, Any] = {}
    for name, values in query.items():
        base, bracket, rest = name.partition("[")
        base = base.replace(".", "_").replace(" ", "_")
        if not bracket or not rest.endswith("]") or not base:
            params[name.replace(".", "_").replace(" ", "_")] = values[-1]
            continue
        key = rest[:-1].split("][", 1)[0]
        array = params.get(base)
        if not isinstance(array, dict):
            array = params[base] = {}
        for value in values:
            if key == "":
                numbers = [int(k) for k in array if k.lstrip("-").isdigit()]
                array[str(max(numbers) + 1 if numbers else 0)] = value
            else:
                array[key] = value
    return params


def _integer(params: dict[str, Any], name: str, default: int | None, errors: dict[str, str],
             *, minimum: int | None = 0, maximum: int | None = None) -> int | None:
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    text = str(raw).strip()
    if not text.lstrip("-").isdigit():
        errors[name] = f"{name} is not of type integer."
        return default
    value = int(text)
    if minimum is not None and maximum is not None and not minimum <= value <= maximum:
        errors[name] = f"{name} must be between {minimum} (inclusive) and {maximum} (inclusive)"
        return default
    if minimum is not None and value < minimum:
        errors[name] = f"{name} must be greater than or equal to {minimum}"
        return default
    return value


def _enum(params: dict[str, Any], name: str, default: str, options: tuple[str, ...],
          errors: dict[str, str]) -> str:
    value = params.get(name)
    if value is None or value == "":
        return default
    if value not in options:
        errors[name] = f"{name} is not one of {_wp_list(options)}."
        return default
    return str(value)


def _id_list(params: dict[str, Any], name: str, errors: dict[str, str]) -> tuple[int, ...]:
    if params.get(name) in (None, ""):
        return ()
    items = _parse_list(params[name])
    if not all(item.isdigit() for item in items):
        errors[name] = f"{name}[0] is not of type integer."
        return ()
    return tuple(int(item) for item in items)


def _query(params: dict[str, Any], page: int) -> str:
    pairs: list[tuple[str, str]] = []
    for key, value in params.items():
        if isinstance(value, dict):
            pairs.extend((f"{key}[{index}]", item) for index, item in value.items())
        else:
            pairs.append((key, str(value)))
    pairs.append(("page", str(page)))
    return urlencode(pairs)


def oauth_signature(method: str, url: str, params: dict[str, Any], secret: str,
                    signature_method: str = "HMAC-SHA256") -> str:
    """The signature WooCommerce's server computes (check_oauth_signature): parameters
    sorted by name, name and value rawurlencoded, each `name=value` rawurlencoded again and
    joined by %26; the key is the consumer secret plus "&"."""
    pieces: list[str] = []
    for key in sorted(params, key=lambda k: k.encode()):
        value = params[key]
        if isinstance(value, dict):
            # join_with_equals_sign: an array's entries as `name%5Bkey%5D`, in their order.
            for index, item in value.items():
                name = f"{_rawurlencode(key)}%5B{index}%5D"
                pieces.append(_rawurlencode(f"{name}={_rawurlencode(str(item))}"))
        else:
            pieces.append(_rawurlencode(f"{_rawurlencode(key)}={_rawurlencode(str(value))}"))
    base = f"{method.upper()}&{_rawurlencode(url)}&{'%26'.join(pieces)}"
    digest = hashlib.sha1 if signature_method == "HMAC-SHA1" else hashlib.sha256
    mac = hmac.new(f"{secret}&".encode(), base.encode(), digest).digest()
    return base64.b64encode(mac).decode()


# -- record helpers ------------------------------------------------------------------------


def _day_stamp(moment: Any) -> str:
    """wc_last_active: the start of the day, as unix seconds in a string."""
    if isinstance(moment, datetime):
        return str(int(moment.timestamp()) // 86400 * 86400)
    return str(moment)


def _anonymise_ip(ip: str) -> str:
    if ":" in ip:
        return ip.rsplit(":", 5)[0] + "::"
    parts = ip.split(".")
    return ".".join([*parts[:3], "0"]) if len(parts) == 4 else "0.0.0.0"  # noqa: S104


def _real_email(value: object) -> str | None:
    email = normalise_email(value)
    return None if email == DELETED_EMAIL else email


def _is_date_key(key: str) -> bool:
    return key.startswith("date_") or key == "last_active"
