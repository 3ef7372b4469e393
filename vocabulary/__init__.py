"""The words the connectors and the daemon share: the categories of personal data the policy
names, the systems and record types, the clock, and the one way a period is written.

Imported by every layer, it imports nothing of the project (an import-linter contract in
pyproject.toml holds it so), so that no layer needs another to name what it holds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum


class Category(StrEnum):
    """The categories of personal data the privacy policy names."""

    NAME = "name"
    EMAIL = "email"
    PHONE = "phone"
    BILLING_ADDRESS = "billing_address"
    DELIVERY_ADDRESS = "delivery_address"
    PAYMENT_METHOD_TYPE = "payment_method_type"
    CARD_LAST4 = "card_last4"
    IP_ADDRESS = "ip_address"
    USER_AGENT = "user_agent"
    ORDER_HISTORY = "order_history"
    MARKETING_CONSENT = "marketing_consent"
    ACCOUNT = "account"
    FREE_TEXT = "free_text"
    LOCATION = "location"
    # A full card number anywhere is itself a breach of the policy.
    CARD_NUMBER = "card_number"


# The systems (a connector's `kind`, the first part of a source name).
WOOCOMMERCE = "woocommerce"
STRIPE = "stripe"
MAILCHIMP = "mailchimp"
WORDPRESS = "wordpress"

# The record types the ledger holds (a Record's `record_type`).
CUSTOMER = "customer"
ORDER = "order"
CHARGE = "charge"
MEMBER = "member"
COMMENT = "comment"
USER = "user"

# WordPress roles of accounts that run a site or a shop (a shop's customers are WordPress
# users too): never deleted by an erasure or a fix.
STAFF_ROLES = frozenset({"administrator", "shop_manager", "editor"})
ACCOUNTS = frozenset({CUSTOMER, USER})


@dataclass(frozen=True)
class SystemName:
    """How a system's sources are named and shown: `woo:allmyink`, `stripe`,
    `mailchimp:<audience id>`, `wp:blog`."""

    kind: str
    prefix: str
    title: str
    # Its sources are shown by their own name alone (a shop is "allmyink", not "WooCommerce
    # allmyink"): the owner names shops, not the software under them.
    bare: bool = False
    # Its sources are one account to the owner (a Mailchimp account's audiences).
    one_account: bool = False
    # The processor a privacy policy names for it (a shop runs on WordPress).
    processor: str = ""


# In the order the email lists them.
SYSTEM_NAMES = (
    SystemName(WOOCOMMERCE, "woo", "WooCommerce", bare=True, processor="WordPress"),
    SystemName(STRIPE, "stripe", "Stripe", processor="Stripe"),
    SystemName(MAILCHIMP, "mailchimp", "Mailchimp", one_account=True, processor="Mailchimp"),
    SystemName(WORDPRESS, "wp", "WordPress", processor="WordPress"),
)


def system_name(source: str) -> SystemName | None:
    """The system a source name belongs to, by its prefix; None for one no system names."""
    prefix = source.partition(":")[0]
    return next((s for s in SYSTEM_NAMES if s.prefix == prefix), None)


def source_kind(source: str) -> str:
    """The system kind of a source name (`woo:allmyink` → woocommerce)."""
    named = system_name(source)
    return named.kind if named else source.partition(":")[0]


@dataclass(frozen=True)
class Link:
    """Where the owner acts on a record: what the page is, and its address."""

    text: str
    url: str


def utcnow() -> datetime:
    """Now, timezone-aware in UTC: the one clock inside."""
    return datetime.now(UTC)


PERIOD_UNITS = "s, min, h, d, w, mo (30 days), y (365 days)"
_PERIOD = re.compile(r"\s*(-?\d+)\s*(s|min|h|d|w|mo|m|y)\s*")
_DAYS = {"d": 1, "w": 7, "mo": 30, "y": 365}
_SECONDS = {"s": 1, "min": 60, "h": 3600}


def parse_duration(text: str) -> timedelta:
    """`90d`, `18mo`, `6y`, `12h`, `30min`, `45s` → timedelta (months are 30 days, years 365).
    Raises ValueError naming the value when it has no unit, a bare `m` (minutes or months?)
    or is negative."""
    match = _PERIOD.fullmatch(str(text))
    if not match:
        raise ValueError(
            f"{text!r} is not a period: write a whole number and a unit, "
            "e.g. 45s, 30min, 12h, 90d, 8w, 18mo, 6y"
        )
    amount, unit = int(match.group(1)), match.group(2)
    if unit == "m":
        raise ValueError(f"{text!r} is ambiguous: m could be minutes or months; write "
                         f"{amount}min for minutes or {amount}mo for months")
    if amount < 0:
        raise ValueError(f"{text!r} is negative: a period must be zero or more")
    if unit in _DAYS:
        return timedelta(days=amount * _DAYS[unit])
    return timedelta(seconds=amount * _SECONDS[unit])


def format_duration(period: timedelta) -> str:
    """A period as the config writes it and parse_duration reads it back: 6y, 18mo, 90d, 12h,
    30min, 45s (whole seconds; months only beyond a year, shorter periods read better in
    days)."""
    seconds = int(period.total_seconds())
    if seconds and seconds % 86400 == 0:
        days = seconds // 86400
        if days % 365 == 0:
            return f"{days // 365}y"
        if days > 365 and days % 30 == 0:
            return f"{days // 30}mo"
        return f"{days}d"
    for unit, size in (("h", 3600), ("min", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def period_words(period: timedelta) -> str:
    """A period in words for a person: 6 years, 18 months, 90 days, 1 day."""
    days = period.days
    for unit, size in (("year", 365), ("month", 30), ("week", 7), ("day", 1)):
        if days and days % size == 0:
            count = days // size
            return f"{count} {unit}{'s' if count != 1 else ''}"
    hours = int(period.total_seconds() // 3600)
    return f"{hours} hour{'s' if hours != 1 else ''}"


# WooCommerce's own clean-up periods (Settings → Accounts & Privacy → Personal data
# retention: relative_date_selector options, all off by default) and its erasure options,
# as the connector reads them and the promise rules compare them.
WOO_RETENTION_OPTIONS = ("woocommerce_delete_inactive_accounts",
                         "woocommerce_trash_pending_orders", "woocommerce_trash_failed_orders",
                         "woocommerce_trash_cancelled_orders",
                         "woocommerce_anonymize_completed_orders",
                         "woocommerce_anonymize_refunded_orders")
WOO_ERASURE_OPTIONS = ("woocommerce_erasure_request_removes_order_data",
                       "woocommerce_erasure_request_removes_download_data")
