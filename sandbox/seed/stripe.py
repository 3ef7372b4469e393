"""The estate's Stripe account: `seeded()` turns the people of sandbox.estate into customers
and charges, with the planted retention breaches; `bulk()` builds large accounts for
benchmarks. The twin's own module knows nothing of people or plants: this module fills its
stores directly (as its mutators would, without an event per record).
"""

from __future__ import annotations

import random
from datetime import datetime
from typing import Any

from sandbox.estate import (
    ERASED_FROM_SHOPS,
    STRIPE_NO_CHARGE,
    EstateSpec,
    Person,
    Planted,
    rng_for,
)
from sandbox.stripe import DAY, YEAR, StripeTwin, _Charge, _Customer, _ledger_email


def seeded(spec: EstateSpec, people: list[Person], planted: list[Planted],
           api_key: str = "sk_test_sandbox") -> StripeTwin:
    """The estate's Stripe account. People marked `in_stripe` get a customer when they
    hold a shop account (half of the guests too; the other guests only have charges that
    carry their billing email, a few of which carry no email at all), with charges over
    the years, the last within 18 months. Planted: STRIPE_NO_CHARGE people have a
    customer whose last charge is about 4 years old (stripe-customer-inactive);
    ERASED_FROM_SHOPS people keep a customer (processor-copy-orphaned); and clean
    customers whose last charge is about a year old."""
    twin = StripeTwin(api_key, now=spec.now, id_seed=f"estate-{spec.seed}")
    rng = rng_for(spec, "stripe")
    now = int(spec.now.timestamp())
    clean_left = spec.planted_per_tag
    with twin.lock:
        for person in people:
            if not person.in_stripe:
                continue
            inactive = STRIPE_NO_CHARGE in person.tags
            erased = ERASED_FROM_SHOPS in person.tags
            has_customer = inactive or erased or bool(person.account_shops) \
                or rng.random() < 0.5
            first = int(person.first_seen.timestamp())
            rule: str | None = None
            clean = False
            if inactive:
                first = min(first, now - 5 * YEAR - rng.randint(0, 90) * DAY)
                last = now - 4 * YEAR - rng.randint(0, 30) * DAY
                rule = "stripe-customer-inactive"
            elif (has_customer and clean_left > 0 and not person.tags
                  and person.account_shops):
                clean, clean_left = True, clean_left - 1
                first = min(first, now - 2 * YEAR)
                last = now - YEAR + rng.randint(-15, 15) * DAY
            else:
                last = rng.randint(max(first, now - YEAR * 3 // 2), now - 3600)
                rule = "processor-copy-orphaned" if erased else None
            times = sorted([last] + [rng.randint(first, last)
                                     for _ in range(rng.randint(0, 4))])
            customer_id = None
            if has_customer:
                customer_id = _seed_customer(twin, person, min(first, times[0]), rng)
                if rule is not None or clean:
                    planted.append(Planted(rule, "stripe", "customer", customer_id,
                                           _ledger_email(person.email) or person.email))
            # Guests without a customer: one in ten pays leaving no email at all.
            emailless = customer_id is None and rng.random() < 0.1
            for moment in times:
                _seed_charge(twin, person, customer_id, moment, rng, emailless=emailless)
        twin._finish_seeding(now)
    return twin


def _seed_customer(twin: StripeTwin, person: Person, created: int, rng: random.Random) -> str:
    address = {"line1": person.address_1, "city": person.city,
               "postal_code": person.postcode, "country": person.country}
    c = _Customer(
        id=twin._ids.make("cus_", 14), created=created, seq=next(twin._seq),
        email=person.email, name=person.name,
        phone=person.phone if rng.random() < 0.7 else None,
        address=address if rng.random() < 0.8 else None,
        shipping={"name": person.name, "address": address} if rng.random() < 0.3 else None,
        description=(f"Customer of {(person.account_shops or person.guest_shops)[0]}"
                     if person.account_shops and rng.random() < 0.1 else None),
    )
    twin._insert_customer(c, sort=False)
    return c.id


def _seed_charge(twin: StripeTwin, person: Person, customer_id: str | None, created: int,
                 rng: random.Random, *, emailless: bool) -> None:
    shops = person.account_shops or person.guest_shops or ("shop",)
    shop = rng.choice(shops)
    order = rng.randint(1000, 99999)
    address = {"line1": person.address_1, "city": person.city,
               "postal_code": person.postcode, "country": person.country}
    status = rng.choices(("succeeded", "failed"), (93, 7))[0]
    refunded = status == "succeeded" and rng.random() < 0.04
    amount = rng.randint(500, 20000)
    ch = _Charge(
        id=twin._ids.make("ch_", 24), created=created, seq=next(twin._seq),
        customer=customer_id, amount=amount, status=status,
        billing_details={
            "name": person.name, "email": None if emailless else person.email,
            "phone": person.phone if rng.random() < 0.5 else None,
            "address": address if rng.random() < 0.9 else None},
        receipt_email=None if emailless or rng.random() < 0.5 else person.email,
        shipping={"name": person.name, "address": address} if rng.random() < 0.4 else None,
        description=f"{shop} - Order {order}",
        metadata={"order_id": str(order), "site_url": f"https://{shop}.example"},
        brand=rng.choice(("visa", "mastercard", "amex")),
        last4=f"{rng.randint(0, 9999):04d}", exp_month=rng.randint(1, 12),
        exp_year=rng.randint(2024, 2032), country=person.country,
        refunded=refunded, amount_refunded=amount if refunded else 0,
    )
    twin._insert_charge(ch, sort=False)


def bulk(customers: int, charges: int, seed: int = 0, *,
         api_key: str = "sk_test_sandbox", now: datetime | None = None) -> StripeTwin:
    """A large account for benchmarks: `customers` customers and `charges` charges spread
    over six years, three in four charges belonging to a customer."""
    twin = StripeTwin(api_key, now=now, id_seed=f"bulk-{seed}")
    rng = random.Random(seed)
    end = twin.timestamp()
    start = end - 6 * YEAR
    span = end - start
    cities = (("London", "GB", "E1 6AN"), ("Leeds", "GB", "LS1 4AP"),
              ("Dublin", "IE", "D02 X285"))
    owners: list[tuple[str, str, dict[str, Any]]] = []
    with twin.lock:
        for index in range(customers):
            city, country, postcode = cities[index % len(cities)]
            email = f"customer{index}@bulk.example"
            billing = {"name": f"Customer {index}", "email": email,
                       "phone": f"+44 7700 9{index % 100000:05d}",
                       "address": {"line1": f"{index % 200 + 1} High Street",
                                   "city": city, "postal_code": postcode,
                                   "country": country}}
            c = _Customer(id=twin._ids.make("cus_", 14),
                          created=start + int(rng.random() * span), seq=next(twin._seq),
                          email=email, name=billing["name"], phone=billing["phone"],
                          address=billing["address"])
            twin._insert_customer(c, sort=False)
            owners.append((c.id, email, billing))
        for index in range(charges):
            if owners and rng.random() < 0.75:
                customer_id, email, billing = owners[int(rng.random() * len(owners))]
            else:
                customer_id, email = None, f"guest{index}@bulk.example"
                billing = {"name": f"Guest {index}", "email": email}
            ch = _Charge(id=twin._ids.make("ch_", 24),
                         created=start + int(rng.random() * span),
                         seq=next(twin._seq), customer=customer_id,
                         amount=500 + int(rng.random() * 19500), billing_details=billing,
                         receipt_email=email, description=f"Order {index}",
                         metadata={"order_id": str(index)},
                         last4=f"{int(rng.random() * 10000):04d}")
            twin._insert_charge(ch, sort=False)
        twin._finish_seeding(end)
    return twin
