"""The seeded sandbox estate: the same people across several WooCommerce shops, Stripe and
Mailchimp in realistic proportions, plus records planted to breach the retention policy (and
records planted clean) so that tests and the demo know exactly what the audit must find.

Same seed, same `now`, same sizes → the same estate, byte for byte.

This module holds the people and the plan only and imports no twin; sandbox.seed turns them
into seeded twins (`build_estate`).
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

FIRST = ("Ada", "Ben", "Chloé", "Dev", "Eilidh", "Femi", "Greta", "Hamza", "Ines", "Jonas",
         "Kaito", "Leila", "Mateo", "Niamh", "Olu", "Priya", "Quinn", "Rosa", "Sven", "Tariq",
         "Una", "Vikram", "Wen", "Xavier", "Yara", "Zoë")
LAST = ("Adeyemi", "Brennan", "Castillo", "Dubois", "Evans", "Fischer", "García", "Hughes",
        "Iqbal", "Jansen", "Kowalski", "Lindqvist", "MacLeod", "Novak", "O'Brien", "Petrov",
        "Quintero", "Rossi", "Schmidt", "Tanaka", "Uddin", "Vargas", "Walsh", "Yilmaz", "Zhou")
STREETS = ("High Street", "Station Road", "Church Lane", "Mill Road", "Park Avenue",
           "Victoria Road", "Green Lane", "Manor Way")
CITIES = (("London", "GB", "E1 6AN"), ("Leeds", "GB", "LS1 4AP"), ("Bristol", "GB", "BS1 5TR"),
          ("Glasgow", "GB", "G1 1XQ"), ("Dublin", "IE", "D02 X285"), ("Lyon", "FR", "69002"))
AGENTS = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/120.0",
          "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15",
          "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_1) AppleWebKit/605.1.15 Safari/17.1")

# Profile tags for planted cases; each twin plants the records its system holds for them.
ERASED_FROM_SHOPS = "erased-from-shops"          # still in Stripe and Mailchimp, in no shop
UNSUBSCRIBED_LONG_AGO = "unsubscribed-long-ago"  # Mailchimp contact unsubscribed years ago
STRIPE_NO_CHARGE = "stripe-no-charge"            # Stripe customer with no charge for years
CARD_IN_NOTE = "card-in-note"                    # a card number typed into an order note
INACTIVE_ACCOUNT = "inactive-account"            # shop account, no order or login for years
OLD_COMPLETED_ORDER = "old-completed-order"      # completed order past accounting retention
OLD_UNPAID_ORDER = "old-unpaid-order"            # pending/failed/cancelled order kept for years
OLD_NETWORK_DATA = "old-network-data"            # order older than the IP/user-agent period


@dataclass(frozen=True)
class Person:
    index: int
    email: str
    first_name: str
    last_name: str
    phone: str
    address_1: str
    city: str
    postcode: str
    country: str
    ip: str
    user_agent: str
    first_seen: datetime
    # Shops where the person has an account, shops where they ordered as a guest.
    account_shops: tuple[str, ...] = ()
    guest_shops: tuple[str, ...] = ()
    in_stripe: bool = False
    in_mailchimp: bool = False
    tags: frozenset[str] = frozenset()

    @property
    def name(self) -> str:
        return f"{self.first_name} {self.last_name}"


@dataclass(frozen=True)
class Planted:
    """A record planted in a twin, and what the audit must say of it: `rule` for a planted
    breach, None for a record planted clean (the audit must find nothing on it)."""

    rule: str | None
    source: str
    record_type: str
    external_id: str
    email: str


@dataclass
class EstateSpec:
    seed: int = 7
    shops: tuple[str, ...] = ("allmyink", "papercraft")
    people: int = 120
    now: datetime = field(default_factory=lambda: datetime(2026, 11, 1, 6, 0, tzinfo=UTC))
    # Planted cases per tag (0 turns planting off, e.g. for benchmarks).
    planted_per_tag: int = 2
    # WordPress sites without a shop (the demo has a journal; the tests of the shops and
    # processors leave it out).
    sites: tuple[str, ...] = ()


def rng_for(spec: EstateSpec, *parts: object) -> random.Random:
    """An independent, reproducible random stream per purpose, so that adding a system to
    the estate does not reshuffle the others."""
    digest = hashlib.sha256(repr((spec.seed, *parts)).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))  # noqa: S311 - test data


def make_people(spec: EstateSpec) -> list[Person]:
    """The people of the estate. Proportions: about half hold an account in one shop, one in
    ten in two shops, a quarter order only as guests, one in ten only subscribed to the
    newsletter; seven in ten of those who ordered paid through Stripe, four in ten are in
    Mailchimp. The first people carry the planted tags."""
    rng = rng_for(spec, "people")
    shops = spec.shops
    tags = [ERASED_FROM_SHOPS, UNSUBSCRIBED_LONG_AGO, STRIPE_NO_CHARGE, CARD_IN_NOTE,
            INACTIVE_ACCOUNT, OLD_COMPLETED_ORDER, OLD_UNPAID_ORDER, OLD_NETWORK_DATA]
    planted = [tag for tag in tags for _ in range(spec.planted_per_tag)]
    people: list[Person] = []
    for index in range(spec.people):
        first, last = rng.choice(FIRST), rng.choice(LAST)
        street, (city, country, postcode) = rng.choice(STREETS), rng.choice(CITIES)
        tag = planted[index] if index < len(planted) else None
        roll = rng.random()
        account_shops: tuple[str, ...] = ()
        guest_shops: tuple[str, ...] = ()
        if roll < 0.45:
            account_shops = (rng.choice(shops),)
        elif roll < 0.55 and len(shops) > 1:
            account_shops = tuple(rng.sample(shops, 2))
        elif roll < 0.80:
            guest_shops = (rng.choice(shops),)
        ordered = bool(account_shops or guest_shops)
        in_stripe = ordered and rng.random() < 0.7
        in_mailchimp = rng.random() < 0.4 or not ordered
        if tag == ERASED_FROM_SHOPS:
            account_shops, guest_shops, in_stripe, in_mailchimp = (), (), True, True
        elif tag == UNSUBSCRIBED_LONG_AGO:
            in_mailchimp = True
        elif tag == STRIPE_NO_CHARGE:
            # A customer of a shop whose card was last charged years ago.
            in_stripe = True
            if not (account_shops or guest_shops):
                account_shops = (shops[index % len(shops)],)
        elif tag in (CARD_IN_NOTE, OLD_COMPLETED_ORDER, OLD_UNPAID_ORDER, OLD_NETWORK_DATA):
            if not (account_shops or guest_shops):
                guest_shops = (shops[index % len(shops)],)
        elif tag == INACTIVE_ACCOUNT:
            account_shops, guest_shops = (shops[index % len(shops)],), ()
        years = rng.uniform(0.05, 8.0)
        people.append(Person(
            index=index,
            email=f"{first.lower()}.{last.lower()}.{index}@example.com".replace("'", "")
                  .replace("é", "e").replace("ë", "e"),
            first_name=first, last_name=last,
            phone=f"+44 7700 9{index % 100000:05d}",
            address_1=f"{rng.randint(1, 200)} {street}", city=city, postcode=postcode,
            country=country,
            ip=f"203.0.113.{index % 254 + 1}", user_agent=rng.choice(AGENTS),
            first_seen=spec.now - timedelta(days=365 * years),
            account_shops=account_shops, guest_shops=guest_shops,
            in_stripe=in_stripe, in_mailchimp=in_mailchimp,
            tags=frozenset({tag}) if tag else frozenset(),
        ))
    return people


@dataclass
class Estate:
    """The twins of a seeded estate, not yet listening, and what was planted in them."""

    spec: EstateSpec
    people: list[Person]
    shops: dict[str, Any]
    stripe: Any
    mailchimp: Any
    planted: list[Planted]
    # WordPress sites without a shop, by name.
    sites: dict[str, Any] = field(default_factory=dict)

    @property
    def twins(self) -> dict[str, Any]:
        found: dict[str, Any] = {f"woo:{name}": twin for name, twin in self.shops.items()}
        found["stripe"] = self.stripe
        found["mailchimp"] = self.mailchimp
        found.update({f"wp:{name}": twin for name, twin in self.sites.items()})
        return found
