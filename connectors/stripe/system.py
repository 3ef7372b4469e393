"""Stripe as the daemon sees it: the [stripe] section, the account as one unit, what an
erasure does with a customer and a charge, what the person reads about each, and the
dashboard's customer page."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote

from pydantic import Field, field_validator

from connectors import stripe as connector
from connectors.base import Record
from connectors.settings import (
    Period,
    Secret,
    Section,
    Size,
    UnreadSecret,
    max_response_size_field,
)
from connectors.system import DELETE, KEEP, Opening, RecordType, System, Unit
from vocabulary import CHARGE, CUSTOMER, STRIPE, Link, period_words

DASHBOARD = "https://dashboard.stripe.com"
_CUSTOMER_ID = re.compile(r"cus_[A-Za-z0-9]{1,100}")


class StripeSettings(Section):
    api_key: Secret = Field(description="A restricted key with Read on Customers, Charges "
                                        "and Events (rk_live_…); erase also needs Write on "
                                        "Customers.",
                            examples=["credential:stripe-key"])
    base_url: str = Field(default="https://api.stripe.com",
                          description="API address: https, or plain http only to this machine "
                                      "(127.0.0.0/8, ::1, localhost: the sandbox twins).",
                          examples=["https://api.stripe.com"])
    requests_per_second: float = Field(default=20.0, gt=0, le=100,
                                       description="Read requests per second, well under "
                                                   "Stripe's limit.", examples=[20])
    timeout: Period = Field(default=timedelta(seconds=30), description="Answer timeout.",
                            examples=["30s"])
    overlap: Period = Field(default=timedelta(minutes=10),
                            description="Re-read window before the last cursor.",
                            examples=["10min"])
    max_response_size: Size = max_response_size_field()

    @field_validator("base_url")
    @classmethod
    def _encrypted_unless_local(cls, value: str) -> str:
        connector.check_base_url(value)
        return value

    @property
    def key_is_read(self) -> bool:
        """False when this command did not read the key (links needing its mode are left
        out rather than guessed)."""
        return not isinstance(self.api_key, UnreadSecret)

    def to_connector(self, **overrides: Any) -> connector.Settings:
        """The connector's settings; `overrides` set its other fields (sleep, retries)."""
        return replace(connector.Settings(
            api_key=self.api_key.get_secret_value(), base_url=self.base_url.rstrip("/"),
            requests_per_second=self.requests_per_second,
            timeout=self.timeout.total_seconds(), overlap=self.overlap,
            max_response_size=self.max_response_size,
        ), **overrides)


def _units(section: StripeSettings, estate: Mapping[str, Sequence[Any]]) -> list[Unit]:
    def open_account(**overrides: Any) -> Opening:
        opened = connector.connect(section.to_connector(**overrides))
        return Opening((opened,), close=opened.close)

    # First when sources sync side by side: its cursor lists and read rate make it the
    # longest source, and it must not wait for a free worker.
    return [Unit(STRIPE, STRIPE, open_account, expected=(STRIPE,), first=True)]


def _decide_customer(record: Record | None, retention: Any, now: datetime,
                     account: Any) -> tuple[str, str]:
    return DELETE, ("the Stripe customer: deleted with its name, email, addresses and saved "
                    "payment methods.")


def _decide_charge(record: Record | None, retention: Any, now: datetime,
                   account: Any) -> tuple[str, str]:
    return KEEP, ("Stripe keeps charges as payment records, and its API can neither delete a "
                  "charge nor change its billing details: the name, email, address, phone and "
                  "card brand / last 4 digits on this charge stay with Stripe. The customer "
                  "object is deleted.")


def _customer_purpose(record: Record | None, retention: Any) -> tuple[str, str]:
    return ("Processing your card payments (Stripe keeps your payment details for the "
            "shop).", "While you buy; deleted after "
            f"{period_words(retention.stripe_customers)} with no payment.")


def _charge_purpose(record: Record | None, retention: Any) -> tuple[str, str]:
    return ("A payment you made, as processed by Stripe.",
            "Stripe keeps payments as financial records, for as long as the law requires it "
            "to.")


def dashboard(api_key: str) -> str:
    """The dashboard for that key's mode: test keys (sk_test_, rk_test_) see test data."""
    test = api_key.startswith(("sk_test_", "rk_test_", "pk_test_"))
    return f"{DASHBOARD}/test" if test else DASHBOARD


def _links(section: StripeSettings) -> Any:
    # A command that read no secret cannot tell test from live: no link, not a guess. The
    # key decides only test or live, and goes nowhere.
    place = dashboard(section.api_key.get_secret_value()) if section.key_is_read else None

    def links(source: str, label: str | None, record_type: str, external_id: str,
              parent_id: str | None) -> tuple[Link, ...]:
        customer = external_id if record_type == CUSTOMER else parent_id
        if place is None or customer is None or not _CUSTOMER_ID.fullmatch(customer):
            return ()
        text = "Stripe customer" if record_type == CUSTOMER else "Stripe customer of the charge"
        return (Link(text, f"{place}/customers/{quote(customer, safe='')}"),)

    return links


SYSTEM = System(
    kind=STRIPE, title="Stripe", section="stripe", settings=StripeSettings, many=False,
    units=_units,
    record_types={
        CUSTOMER: RecordType(CUSTOMER, "Payment profile", connector.classify_customer, 2,
                             _decide_customer, _customer_purpose),
        CHARGE: RecordType(CHARGE, "Payment", connector.classify_charge, 2, _decide_charge,
                           _charge_purpose),
    },
    erase=connector.erase, fetch=connector.fetch,
    label=lambda opened: "Stripe (card payments)", links=_links,
)
