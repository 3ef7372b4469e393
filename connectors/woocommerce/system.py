"""WooCommerce as the daemon sees it: the [[woocommerce]] section, one unit per shop, what
an erasure does with an account and an order, what the person reads about each, and the
shop's admin screens."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from pydantic import Field, field_validator

from connectors import woocommerce as connector
from connectors.base import Record
from connectors.settings import (
    Period,
    Secret,
    Section,
    ShortName,
    SiteUrl,
    Size,
    max_response_size_field,
)
from connectors.system import (
    ANONYMISE,
    DELETE,
    KEEP,
    PLAIN_URL,
    Opening,
    RecordType,
    System,
    Unit,
)
from vocabulary import CUSTOMER, ORDER, WOOCOMMERCE, Category, Link, period_words, quiet

# WordPress users who run the shop: deleting one could lock the owner out.
STAFF_ROLES = frozenset({"administrator", "shop_manager"})
# Order statuses → the [retention] period that applies. Paid orders are accounting records
# (kept, then anonymised); unpaid ones have nothing to keep them for.
ACCOUNTING_ORDERS = {"completed": "completed_orders", "refunded": "refunded_orders",
                     "processing": "completed_orders"}
UNPAID_ORDERS = {"pending": "pending_orders", "failed": "failed_orders",
                 "cancelled": "cancelled_orders", "on-hold": "on_hold_orders",
                 "trash": "trashed_orders"}


class WooCommerceSettings(Section):
    name: ShortName = Field(description="Short name of the shop, used in the ledger as "
                                        "woo:<name>.", examples=["allmyink"])
    url: SiteUrl = Field(description="The shop's address (the API is at <url>/wp-json/wc/v3). "
                                     "HTTPS uses HTTP Basic; plain HTTP uses OAuth 1.0a "
                                     "signatures.",
                         examples=["https://allmyink.example"])
    consumer_key: Secret = Field(description="REST API consumer key (read permission is "
                                             "enough for auditing).",
                                 examples=["credential:allmyink-key"])
    consumer_secret: Secret = Field(description="REST API consumer secret.",
                                    examples=["credential:allmyink-secret"])
    per_page: int = Field(default=100, ge=1, le=100, description="Records per page (≤ 100).",
                          examples=[100])
    concurrency: int = Field(default=8, ge=1, le=16,
                             description="Most pages fetched at once from this shop. With "
                                         "adaptive, the ceiling: it starts at one and rises "
                                         "while the shop answers as fast.", examples=[8])
    adaptive: bool = Field(default=True,
                           description="Raise the pages in flight while the shop's response "
                                       "times stay flat and lower them when they rise or on "
                                       "429/503 (delay-based AIMD, one worker left for the "
                                       "shop's customers); false: always `concurrency`.",
                           examples=[True])
    max_requests_per_second: float | None = Field(
        default=None, gt=0, le=1000,
        description="Requests a second to this shop at most (unset: no bound beyond the "
                    "adaptive limit).", examples=[10])
    quiet_hours: str | None = Field(
        default=None,
        description="Local time window (HH:MM-HH:MM, may cross midnight) the weekly full "
                    "pull waits for, so that it reads the whole shop when customers are few "
                    "(incremental syncs run at any time).", examples=["01:00-06:00"])
    timeout: Period = Field(default=timedelta(seconds=30),
                            description="How long to wait for one answer.", examples=["30s"])
    overlap: Period = Field(default=timedelta(minutes=10),
                            description="Incremental syncs re-read this much before the last "
                                        "cursor, so that nothing modified during a run is missed.",
                            examples=["10min"])
    max_response_size: Size = max_response_size_field()

    @field_validator("quiet_hours")
    @classmethod
    def _window(cls, value: str | None) -> str | None:
        if value is not None:
            quiet.parse_window(value)
        return value

    def to_connector(self, **overrides: Any) -> connector.Settings:
        """The connector's settings; `overrides` set its other fields (sleep, retries)."""
        return replace(connector.Settings(
            name=self.name, url=self.url,
            consumer_key=self.consumer_key.get_secret_value(),
            consumer_secret=self.consumer_secret.get_secret_value(),
            per_page=self.per_page, concurrency=self.concurrency, adaptive=self.adaptive,
            max_requests_per_second=self.max_requests_per_second,
            timeout=self.timeout.total_seconds(), overlap=self.overlap,
            max_response_size=self.max_response_size,
        ), **overrides)


def _units(shop: WooCommerceSettings, estate: Mapping[str, Sequence[Any]]) -> list[Unit]:
    source = f"woo:{shop.name}"

    def open_shop(**overrides: Any) -> Opening:
        opened = connector.connect(shop.to_connector(**overrides))
        return Opening((opened,), close=opened.close)

    return [Unit(source, WOOCOMMERCE, open_shop, expected=(source,))]


def order_period(status: str | None, retention: Any) -> tuple[str, timedelta, bool]:
    """(the [retention] key, its period, whether the order is an accounting record) for an
    order status. Unknown statuses (a plugin's own) count as accounting records: anonymising
    keeps more than deleting, which cannot be undone."""
    if status in UNPAID_ORDERS:
        parameter = UNPAID_ORDERS[status]
        return parameter, getattr(retention, parameter), False
    parameter = ACCOUNTING_ORDERS.get(status or "", "completed_orders")
    return parameter, getattr(retention, parameter), True


def _day(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d") if moment else "an unknown date"


def _decide_customer(record: Record | None, retention: Any, now: datetime,
                     shop: Any) -> tuple[str, str]:
    role = record.status if record else None
    if role in STAFF_ROLES:
        return KEEP, (f"a staff account (role {role}) of the shop: privacy-ledger does not "
                      "delete staff accounts; remove it in WordPress (Users) by hand, "
                      "reassigning what it owns.")
    return DELETE, ("the shop account: deleted for good (force=true; WooCommerce cannot "
                    "trash accounts). Its orders are handled one by one.")


def _decide_order(record: Record | None, retention: Any, now: datetime,
                  shop: Any) -> tuple[str, str]:
    status = record.status if record else None
    created = record.created_at if record else None
    what = f"{status or 'unknown-status'} order of {_day(created)}"
    if record is not None and record.anonymised:
        return KEEP, f"{what}: already anonymised."
    if status == "processing":
        return KEEP, (f"{what}: still being fulfilled, and its delivery needs the address. "
                      "Run the erasure again once it is completed: it will be anonymised then.")
    parameter, period, accounting = order_period(status, retention)
    if not accounting:
        trash = " (the trash still holds every personal field)" if status == "trash" else ""
        return DELETE, (f"{what}: never paid{trash}, nothing to keep it for: deleted for good "
                        "(force=true).")
    if created is not None and created + period <= now:
        return DELETE, (f"{what}: past its {period_words(period)} accounting period "
                        f"([retention] {parameter}): deleted for good (force=true).")
    until = f" until {_day(created + period)}" if created is not None else ""
    network = ""
    if record is not None and {Category.IP_ADDRESS, Category.USER_AGENT} & record.categories:
        network = (" Its IP address and user agent are read-only in WooCommerce's REST API: "
                   "they stay on the order, no longer linked to the person; only something "
                   "running inside WordPress can clear them (the audit keeps reporting them "
                   "once older than [retention] network_data).")
    return ANONYMISE, (f"{what}: an accounting record, kept {period_words(period)} "
                       f"([retention] {parameter}){until}. Its names, addresses, phone, email "
                       "and note are replaced as WooCommerce's eraser does." + network)


def _customer_purpose(record: Record | None, retention: Any) -> tuple[str, str]:
    return ("Your account in the shop: signing in, your addresses and your orders.",
            "While you use it; deleted after "
            f"{period_words(retention.inactive_accounts)} with no sign-in and no order.")


def _order_purpose(record: Record | None, retention: Any) -> tuple[str, str]:
    status = record.status if record else None
    _, period, accounting = order_period(status, retention)
    network = ""
    if record is not None and {Category.IP_ADDRESS, Category.USER_AGENT} & record.categories:
        network = (f" The IP address and browser details are kept "
                   f"{period_words(retention.network_data)} (fraud checks).")
    if accounting:
        return ("Delivering your order, and the shop's accounting records.",
                f"{period_words(period)} after the order (accounting), then anonymised."
                + network)
    return (f"An order that was never paid ({status}): kept only to answer questions "
            "about it.", f"{period_words(period)} after the order, then deleted.")


# An id links only if it has WooCommerce's shape.
_WOO_ID = re.compile(r"[1-9][0-9]{0,19}")


def _links(shop: WooCommerceSettings) -> Any:
    admin = f"{shop.url.rstrip('/')}/wp-admin"
    plain = PLAIN_URL.fullmatch(shop.url.rstrip("/")) is not None

    def links(source: str, label: str | None, record_type: str, external_id: str,
              parent_id: str | None) -> tuple[Link, ...]:
        """The order screen (both the HPOS screen and the classic post screen, whichever
        the shop uses) or the user screen."""
        if not plain or not _WOO_ID.fullmatch(external_id):
            return ()
        if record_type == ORDER:
            return (Link("order screen", f"{admin}/admin.php?page=wc-orders&action=edit"
                                         f"&id={external_id}"),
                    Link("order screen (shops without HPOS)",
                         f"{admin}/post.php?post={external_id}&action=edit"))
        if record_type == CUSTOMER:
            return (Link("customer account", f"{admin}/user-edit.php?user_id={external_id}"),)
        return ()

    return links


SYSTEM = System(
    kind=WOOCOMMERCE, title="WooCommerce", section="woocommerce",
    settings=WooCommerceSettings, many=True, units=_units,
    record_types={
        CUSTOMER: RecordType(CUSTOMER, "Account", connector.classify_customer, 1,
                             _decide_customer, _customer_purpose),
        ORDER: RecordType(ORDER, "Order", connector.classify_order, 0, _decide_order,
                          _order_purpose, stays_after_anonymise=True),
    },
    erase=connector.erase, fetch=connector.fetch,
    label=lambda opened: f"WooCommerce shop “{opened.settings.name}” ({opened.settings.url})",
    links=_links, read_site_state=connector.read_shop_state,
)
