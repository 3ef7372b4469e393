"""A WooCommerce twin filled from the estate: `seeded()` turns the people of sandbox.estate
into one shop's accounts and orders, with the planted retention breaches; `bulk()` builds
large shops for benchmarks. The twin's own module knows nothing of people or plants: this
module fills its stores directly (as its mutators would, without a request per record).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sandbox import woocommerce_admin as admin
from sandbox.estate import (
    AGENTS,
    CARD_IN_NOTE,
    CITIES,
    FIRST,
    INACTIVE_ACCOUNT,
    LAST,
    OLD_COMPLETED_ORDER,
    OLD_NETWORK_DATA,
    OLD_UNPAID_ORDER,
    STREETS,
    EstateSpec,
    Person,
    Planted,
    rng_for,
)
from sandbox.woocommerce import (
    ORDER_STATUSES,
    PAID,
    WooCommerceTwin,
    _blank_address,
    _day_stamp,
    _gmt,
)

CARD_NOTE = "Please charge my card 4111 1111 1111 1111 exp 09/29, the checkout kept failing"
CLEAN_NOTE = "Please leave it with the neighbour at no. 12, door code 4417 2291"

PRODUCTS = ((93, "Black Ink Cartridge XL", "SKU-INK-BK", "24.99"),
            (94, "Colour Ink Multipack", "SKU-INK-CMY", "39.50"),
            (95, "A4 Premium Paper (500 sheets)", "SKU-PAP-A4", "12.00"),
            (96, "Photo Paper Gloss 10x15", "SKU-PAP-PH", "8.75"),
            (97, "Fountain Pen Refills", "SKU-PEN-RF", "6.20"),
            (98, "Kraft Envelopes (50)", "SKU-ENV-50", "9.90"))
PAYMENT = (("stripe", "Credit Card (Stripe)"), ("stripe", "Credit Card (Stripe)"),
           ("ppcp-gateway", "PayPal"), ("bacs", "Direct bank transfer"))


def seeded(spec: EstateSpec, people: list[Person], planted: list[Planted], shop: str,
           consumer_key: str | None = None, consumer_secret: str | None = None, *,
           now: Callable[[], datetime] | None = None) -> WooCommerceTwin:
    """The shop `shop` of the estate: accounts of the people holding one here (a few
    subscribers and one shop manager among them), their orders and the guests' orders
    (1–4 each, every status, over up to five years), `wc_last_active` on every account,
    and the planted cases of this shop, appended to `planted`. Dates are relative to
    `spec.now`; `now` is the clock later mutations stamp (the wall clock by default).

    Background records respect the default policy (recent unpaid orders, network data on
    orders under six months, active accounts), so the audit finds what was planted."""
    twin = WooCommerceTwin(shop, consumer_key, consumer_secret, now)
    _Seeder(twin, spec, people, planted).run()
    _shop_setup(twin)
    return twin


# The demo estate's shops run different plugins and clean-up settings: allmyink set its
# clean-up (which stopped running: its old orders are still there) and added Meta's plugin
# and one of its own; papercraft never turned the clean-up on and takes PayPal.
_PLUGINS = {
    "allmyink": (
        ("woocommerce-gateway-stripe/woocommerce-gateway-stripe.php",
         "WooCommerce Stripe Gateway", "9.8.1", "Stripe"),
        ("mailchimp-for-woocommerce/mailchimp-woocommerce.php", "Mailchimp for WooCommerce",
         "5.4", "Mailchimp"),
        ("facebook-for-woocommerce/facebook-for-woocommerce.php", "Facebook for WooCommerce",
         "3.5.7", "Facebook"),
        ("allmyink-label-printer/allmyink-label-printer.php", "Allmyink Label Printer",
         "1.2.0", "Allmyink Ltd"),
    ),
    "papercraft": (
        ("woocommerce-gateway-stripe/woocommerce-gateway-stripe.php",
         "WooCommerce Stripe Gateway", "9.8.1", "Stripe"),
        ("mailchimp-for-woocommerce/mailchimp-woocommerce.php", "Mailchimp for WooCommerce",
         "5.4", "Mailchimp"),
        ("woocommerce-paypal-payments/woocommerce-paypal-payments.php",
         "WooCommerce PayPal Payments", "3.1.2", "PayPal"),
    ),
}
_CLEANUP = {
    "allmyink": {
        "woocommerce_delete_inactive_accounts": admin.period(24, "months"),
        "woocommerce_trash_pending_orders": admin.period(30, "days"),
        "woocommerce_trash_failed_orders": admin.period(30, "days"),
        "woocommerce_trash_cancelled_orders": admin.period(3, "months"),
        "woocommerce_anonymize_completed_orders": admin.period(6, "years"),
        "woocommerce_anonymize_refunded_orders": admin.period(6, "years"),
        "woocommerce_erasure_request_removes_order_data": "yes",
    },
}


def _shop_setup(twin: WooCommerceTwin) -> None:
    for path, name, version, author in _PLUGINS.get(twin.shop, ()):
        twin.admin.plugins.append(admin.plugin(path, name, version, author))
    twin.admin.options.update(_CLEANUP.get(twin.shop, {}))


def bulk(customers: int, orders: int, seed: int = 7, *, shop: str = "bulk",
         now: datetime | None = None) -> WooCommerceTwin:
    """A large shop for benchmarks: `customers` accounts and `orders` orders (a third of
    them guests'), every status, over five years. 100,000 orders take a few seconds."""
    # Benchmarks read it with Basic auth, as a shop behind HTTPS.
    twin = WooCommerceTwin(shop, https=True)
    rng = random.Random(seed)  # noqa: S311 - test data
    at = now or datetime(2026, 11, 1, 6, 0, tzinfo=UTC)
    first = at.timestamp() - 5 * 365 * 86400
    span = at.timestamp() - first
    # Nested objects are shared between records: nothing mutates them in place.
    addresses: dict[int, tuple[dict[str, str], dict[str, str]]] = {}

    def address(ident: int) -> tuple[dict[str, str], dict[str, str]]:
        if ident not in addresses:
            person = _bulk_person(ident)
            addresses[ident] = (_address(person, email=True), _address(person, email=False))
        return addresses[ident]

    template = twin._new_customer(0, at)
    for index, stamp in enumerate(sorted(first + rng.random() * span
                                         for _ in range(customers))):
        ident = index + 2
        moment = datetime.fromtimestamp(stamp, UTC)
        billing, shipping = address(ident)
        record = dict(template)
        record.update(id=ident, email=billing["email"], first_name=billing["first_name"],
                      last_name=billing["last_name"], username=f"customer{ident}",
                      billing=billing, shipping=shipping,
                      meta_data=[{"id": ident, "key": "wc_last_active",
                                  "value": str(int(stamp) // 86400 * 86400)}])
        local, gmt = twin._local(moment), _gmt(moment)
        record.update(date_created=local, date_created_gmt=gmt, date_modified=local,
                      date_modified_gmt=gmt)
        twin.customers[ident] = record
    twin._next_customer = customers + 2
    template = twin._new_order(0, at)
    template.update(payment_method="stripe", payment_method_title="Credit Card (Stripe)",
                    customer_user_agent=AGENTS[0])
    lines = [[_line_item(product[0] * 10, product, 1)] for product in PRODUCTS]
    guests = max(1, min(5000, orders // 3))
    for index, stamp in enumerate(sorted(first + rng.random() * span
                                         for _ in range(orders))):
        ident = index + 100
        moment = datetime.fromtimestamp(stamp, UTC)
        owner = rng.randrange(2, customers + 2) if customers and rng.random() < 0.67 else 0
        billing, shipping = address(owner or 1_000_000 + index % guests)
        status = ORDER_STATUSES[rng.randrange(len(ORDER_STATUSES))]
        product = index % len(PRODUCTS)
        record = dict(template)
        record.update(id=ident, number=str(ident), order_key=f"wc_order_{ident:013x}",
                      status=status, customer_id=owner, billing=billing, shipping=shipping,
                      customer_ip_address=f"198.51.100.{ident % 254 + 1}",
                      total=PRODUCTS[product][3], line_items=lines[product])
        local, gmt = twin._local(moment), _gmt(moment)
        record.update(date_created=local, date_created_gmt=gmt, date_modified=local,
                      date_modified_gmt=gmt)
        if status in PAID:
            record.update(date_paid=local, date_paid_gmt=gmt)
            if status != "processing":
                record.update(date_completed=local, date_completed_gmt=gmt)
        twin.orders[ident] = record
    twin._next_order = orders + 100
    twin._changed()
    return twin


def _address(person: Person | None, *, email: bool) -> dict[str, str]:
    blank = _blank_address(email=email)
    if person is None:
        return blank
    filled = dict(blank, first_name=person.first_name, last_name=person.last_name,
                  address_1=person.address_1, city=person.city, postcode=person.postcode,
                  country=person.country)
    if email:
        filled.update(email=person.email, phone=person.phone)
    return filled


def _line_item(ident: int, product: tuple[int, str, str, str], quantity: int) -> dict[str, Any]:
    total = f"{float(product[3]) * quantity:.2f}"
    return {"id": ident, "name": product[1], "product_id": product[0], "variation_id": 0,
            "quantity": quantity, "tax_class": "", "subtotal": total, "subtotal_tax": "0.00",
            "total": total, "total_tax": "0.00", "taxes": [], "meta_data": [],
            "sku": product[2], "price": float(product[3])}


def _bulk_person(ident: int) -> Person:
    first, last = FIRST[ident % len(FIRST)], LAST[(ident // 7) % len(LAST)]
    city, country, postcode = CITIES[ident % len(CITIES)]
    return Person(index=ident, email=f"bulk.{ident}@example.com", first_name=first,
                  last_name=last, phone=f"+44 7700 9{ident % 100000:05d}",
                  address_1=f"{ident % 200 + 1} {STREETS[ident % len(STREETS)]}", city=city,
                  postcode=postcode, country=country, ip="", user_agent="",
                  first_seen=datetime(2020, 1, 1, tzinfo=UTC))


class _Seeder:
    """Builds one shop of the estate (see seeded)."""

    def __init__(self, twin: WooCommerceTwin, spec: EstateSpec, people: list[Person],
                 planted: list[Planted]) -> None:
        self.twin = twin
        self.spec = spec
        self.people = people
        self.planted = planted
        self.at = spec.now
        self.rng = rng_for(spec, "woocommerce", twin.shop)
        # (created, sequence, person, customer?, fields, rule) — ids follow creation order.
        self.customer_plans: list[dict[str, Any]] = []
        self.order_plans: list[dict[str, Any]] = []

    def days_ago(self, days: float) -> datetime:
        return self.at - timedelta(days=days)

    def run(self) -> None:
        shop = self.twin.shop
        members = [p for p in self.people if shop in p.account_shops or shop in p.guest_shops]
        holders = [p for p in members if shop in p.account_shops]
        background = [p for p in members if not p.tags]
        manager = next((p for p in holders if not p.tags), None)
        accounts: dict[int, dict[str, Any]] = {}
        for person in holders:
            role = "customer"
            if person is manager:
                role = "shop_manager"
            elif not person.tags and self.rng.random() < 0.08:
                role = "subscriber"
            accounts[person.index] = self.plan_customer(person, role)
        clean_inactive = next((p for p in holders if not p.tags and p is not manager
                               and accounts[p.index]["role"] == "customer"
                               and p.first_seen < self.days_ago(500)), None)
        for person in members:
            primary = (person.account_shops + person.guest_shops)[0] == shop
            tag = next(iter(person.tags), None) if primary else None
            account = accounts.get(person.index)
            if tag == INACTIVE_ACCOUNT and account is not None:
                account.update(created=self.days_ago(5 * 365), last_active=self.days_ago(4 * 365),
                               rule="inactive-account")
                continue
            if person is clean_inactive and account is not None:
                account.update(created=min(account["created"], self.days_ago(3 * 365)),
                               last_active=self.days_ago(365), rule=None)
                continue
            self.plan_background_orders(person, account)
            if tag is not None:
                self.plan_planted(person, account, tag)
        self.plan_clean(background, accounts, clean_inactive, manager)
        self.build()

    # -- plans ----------------------------------------------------------------------------

    def plan_customer(self, person: Person, role: str) -> dict[str, Any]:
        created = max(person.first_seen, self.days_ago(8 * 365))
        since = (self.at - created).total_seconds() / 86400
        last_active = self.days_ago(self.rng.uniform(0.5, min(300.0, max(1.0, since))))
        email = person.email
        if self.rng.random() < 0.06:
            # People type capitals; WooCommerce keeps the address as typed.
            email = email[0].upper() + email[1:].replace("@example.com", "@Example.com")
        plan = {"person": person, "role": role, "created": created,
                "last_active": max(last_active, created), "email": email,
                "with_billing": self.rng.random() < 0.85, "ordered": False,
                "modified_never": self.rng.random() < 0.1, "rule": "background"}
        self.customer_plans.append(plan)
        return plan

    def plan_order(self, person: Person, account: dict[str, Any] | None, created: datetime,
                   status: str, *, network: bool, note: str = "",
                   rule: str | None = "background", guest: bool = False) -> None:
        if account is not None and not guest:
            account["ordered"] = True
            account["created"] = min(account["created"], created - timedelta(hours=1))
        self.order_plans.append({
            "person": person, "account": None if guest else account, "created": created,
            "status": status, "network": network, "note": note, "rule": rule,
            "no_email": False,
        })

    def plan_background_orders(self, person: Person, account: dict[str, Any] | None) -> None:
        low = 0 if account is not None and self.rng.random() < 0.2 else 1
        count = self.rng.randint(low, 4) if low else 0
        oldest = min(5 * 365.0, max(2.0, (self.at - person.first_seen).total_seconds() / 86400))
        for _ in range(count):
            if self.rng.random() < 0.25:
                age = self.rng.uniform(0.5, min(40.0, oldest))
            else:
                age = self.rng.uniform(0.5, oldest)
            status = self.background_status(age)
            guest = account is not None and self.rng.random() < 0.1
            self.plan_order(person, account, self.days_ago(age), status,
                            network=age < 180, guest=guest)
            # An order taken by phone, without email: only for someone no processor holds,
            # or the ledger could not tell them apart from a processor's orphaned copy.
            if account is None and self.rng.random() < 0.04 \
                    and not (person.in_stripe or person.in_mailchimp):
                self.order_plans[-1]["no_email"] = True

    def background_status(self, age: float) -> str:
        if age < 12:
            options = ("pending", "processing", "processing", "on-hold", "failed", "completed",
                       "completed", "cancelled")
        elif age < 40:
            options = ("completed", "completed", "completed", "on-hold", "cancelled",
                       "refunded", "trash")
        else:
            options = ("completed",) * 9 + ("refunded",)
        return self.rng.choice(options)

    def plan_planted(self, person: Person, account: dict[str, Any] | None, tag: str) -> None:
        if tag == OLD_COMPLETED_ORDER:
            self.plan_order(person, account, self.days_ago(12 * 365 + 10), "completed",
                            network=False, rule="order-past-retention")
        elif tag == OLD_UNPAID_ORDER:
            status = "pending" if person.index % 2 == 0 else "failed"
            self.plan_order(person, account, self.days_ago(60), status, network=True,
                            rule="unpaid-order-past-retention")
        elif tag == OLD_NETWORK_DATA:
            self.plan_order(person, account, self.days_ago(2 * 365), "completed", network=True,
                            rule="network-data-past-retention")
        elif tag == CARD_IN_NOTE:
            self.plan_order(person, account, self.days_ago(10), "processing", network=True,
                            note=CARD_NOTE, rule="card-number-exposed")

    def plan_clean(self, background: list[Person], accounts: dict[int, dict[str, Any]],
                   clean_inactive: Person | None, manager: Person | None) -> None:
        """Clean counterparts at half the period: the audit must find nothing on them."""
        if clean_inactive is not None:
            accounts[clean_inactive.index]["rule"] = None
        candidates = [p for p in background if p is not clean_inactive and p is not manager]
        cases = ((3 * 365, "completed", False, ""), (15, "pending", True, ""),
                 (180, "completed", True, ""), (5, "processing", True, CLEAN_NOTE))
        for (age, status, network, note), person in zip(cases, candidates[:len(cases)],
                                                        strict=False):
            self.plan_order(person, accounts.get(person.index), self.days_ago(age), status,
                            network=network, note=note, rule=None)

    # -- building -------------------------------------------------------------------------

    def build(self) -> None:
        twin = self.twin
        source = twin.source
        customer_ids: dict[int, int] = {}
        ident = 1
        for plan in sorted(self.customer_plans, key=lambda p: (p["created"], p["person"].index)):
            ident += self.rng.randint(1, 3)
            customer_ids[plan["person"].index] = ident
            plan["id"] = ident
        ident = self.rng.randint(100, 200)
        orders = sorted(self.order_plans, key=lambda p: (p["created"], p["person"].index))
        for plan in orders:
            ident += self.rng.randint(1, 3)
            plan["id"] = ident
        for plan in self.customer_plans:
            twin.customers[plan["id"]] = self.customer_record(plan)
            if plan["rule"] != "background":
                twin_rule = plan["rule"]
                self.planted.append(Planted(twin_rule, source, "customer", str(plan["id"]),
                                            plan["person"].email))
        for plan in orders:
            account = plan["account"]
            owner = account["id"] if account is not None else 0
            twin.orders[plan["id"]] = self.order_record(plan, owner)
            if plan["rule"] != "background":
                self.planted.append(Planted(plan["rule"], source, "order", str(plan["id"]),
                                            plan["person"].email))
        twin._next_customer = max(twin.customers, default=1) + 1
        twin._next_order = max(twin.orders, default=99) + 1
        twin._changed()

    def customer_record(self, plan: dict[str, Any]) -> dict[str, Any]:
        twin, person = self.twin, plan["person"]
        record = twin._new_customer(plan["id"], plan["created"])
        filled = plan["with_billing"] or plan["ordered"]
        modified = None if plan["modified_never"] and not plan["ordered"] else max(
            plan["created"], min(plan["last_active"], self.at))
        twin._set_date(record, "date_modified", modified)
        billing = _address(person if filled else None, email=True)
        if filled:
            billing["email"] = plan["email"]
        digest = hashlib.md5(person.email.encode(), usedforsecurity=False).hexdigest()
        meta = [twin._meta_entry("wc_last_active", _day_stamp(plan["last_active"]))]
        if person.in_mailchimp:
            meta.append(twin._meta_entry("mailchimp_woocommerce_is_subscribed", "1"))
        record.update({
            "email": plan["email"], "first_name": person.first_name if filled else "",
            "last_name": person.last_name if filled else "", "role": plan["role"],
            "username": person.email.split("@")[0], "billing": billing,
            "shipping": _address(person if filled and self.rng.random() < 0.7 else None,
                                 email=False),
            "is_paying_customer": plan["ordered"],
            "avatar_url": f"https://secure.gravatar.com/avatar/{digest}?s=96&d=mm&r=g",
            "meta_data": meta,
        })
        return record

    def order_record(self, plan: dict[str, Any], owner: int) -> dict[str, Any]:
        twin, person, rng = self.twin, plan["person"], self.rng
        created: datetime = plan["created"]
        record = twin._new_order(plan["id"], created)
        status = plan["status"]
        lines = [_line_item(plan["id"] * 10 + n, rng.choice(PRODUCTS), rng.randint(1, 3))
                 for n in range(rng.randint(1, 3))]
        items = sum(float(line["total"]) for line in lines)
        shipping_total = 4.95 if items < 40 else 0.0
        method, title = rng.choice(PAYMENT)
        billing = _address(person, email=True)
        if plan["no_email"]:
            billing["email"] = ""
        elif plan["account"] is not None:
            billing["email"] = plan["account"]["email"]
        meta = [twin._meta_entry("is_vat_exempt", "no")]
        if rng.random() < 0.05:
            meta.append(twin._meta_entry("gift_message", "Happy birthday, with love from us all"))
        record.update({
            "status": status, "currency": "GBP" if person.country == "GB" else "EUR",
            "created_via": "admin" if plan["no_email"] else "checkout",
            "shipping_total": f"{shipping_total:.2f}", "total": f"{items + shipping_total:.2f}",
            "customer_id": owner,
            "customer_ip_address": person.ip if plan["network"] else "",
            "customer_user_agent": person.user_agent if plan["network"] else "",
            "customer_note": plan["note"], "billing": billing,
            "shipping": _address(person, email=False) if rng.random() < 0.8
            else _address(None, email=False),
            "payment_method": method, "payment_method_title": title,
            "transaction_id": f"ch_{hashlib.sha256(str(plan['id']).encode()).hexdigest()[:24]}"
            if method == "stripe" and status in PAID else "",
            "cart_hash": hashlib.sha256(f"cart{plan['id']}".encode()).hexdigest()[:32],
            "meta_data": meta, "line_items": lines,
            "shipping_lines": [{"id": plan["id"] * 10 + 9, "method_title": "Flat rate",
                                "method_id": "flat_rate", "total": f"{shipping_total:.2f}",
                                "total_tax": "0.00", "taxes": [], "meta_data": []}],
        })
        modified = created + timedelta(minutes=rng.randint(1, 90))
        if status in PAID:
            twin._set_date(record, "date_paid", created + timedelta(minutes=2))
        if status in ("completed", "refunded"):
            done = min(created + timedelta(days=rng.uniform(0.2, 3)), self.at)
            twin._set_date(record, "date_completed", done)
            modified = done
        if status == "refunded":
            modified = min(modified + timedelta(days=rng.uniform(1, 10)), self.at)
            record["refunds"] = [{"id": plan["id"] + 1, "reason": "",
                                  "total": f"-{items + shipping_total:.2f}"}]
        if status == "trash":
            modified = min(created + timedelta(days=rng.uniform(1, 5)), self.at)
            twin._trashed_from[plan["id"]] = "cancelled"
        twin._set_date(record, "date_modified", min(modified, self.at))
        return record
