"""The estate's Mailchimp account: `seeded()` turns the people of sandbox.estate into the
members of two audiences, with the planted retention breaches; `bulk()` builds a large
audience quickly for benchmarks. The twin's own module knows nothing of people or plants.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from sandbox.estate import (
    ERASED_FROM_SHOPS,
    UNSUBSCRIBED_LONG_AGO,
    EstateSpec,
    Person,
    Planted,
    rng_for,
)
from sandbox.mailchimp import (
    DEFAULT_API_KEY,
    STATUSES,
    MailchimpTwin,
    Member,
    stamp,
    subscriber_hash,
)

# Rough coordinates of the estate's cities, for members' geolocation.
COORDINATES = {"London": (51.5072, -0.1276), "Leeds": (53.8008, -1.5491),
               "Bristol": (51.4545, -2.5879), "Glasgow": (55.8642, -4.2518),
               "Dublin": (53.3498, -6.2603), "Lyon": (45.764, 4.8357)}
UNSUBSCRIBE_REASONS = ("I no longer want to receive these emails",
                       "The emails are inappropriate", "I never signed up for this mailing list",
                       "N/A (Unsubscribed by an admin)")
NOTES = ("Asked about wholesale prices at the spring fair.",
         "Prefers the monthly digest only.", "Met at the trade show, interested in refills.")


def seeded(spec: EstateSpec, people: list[Person], planted: list[Planted],
           *, api_key: str = DEFAULT_API_KEY) -> MailchimpTwin:
    """The estate's two audiences, "Newsletter" and "Trade customers", holding the
    people who are in Mailchimp across every status; planted: contacts unsubscribed,
    cleaned or archived about two to three years ago (mailchimp-contact-retained),
    subscribers erased from every shop (processor-copy-orphaned), and contacts
    unsubscribed or archived half a year ago (planted clean)."""
    twin = MailchimpTwin(api_key=api_key, now=spec.now)
    now = spec.now
    rng = rng_for(spec, "mailchimp")
    newsletter = twin.add_audience("Newsletter", _list_id(rng), permissions=True,
                                   created=now - timedelta(days=8 * 365))
    trade = twin.add_audience("Trade customers", _list_id(rng),
                              created=now - timedelta(days=5 * 365))
    sources = {aid: f"mailchimp:{aid}" for aid in (newsletter, trade)}
    clean_left = min(2, spec.planted_per_tag)
    retained = 0
    for person in people:
        if not person.in_mailchimp:
            continue
        prng = rng_for(spec, "mailchimp", person.index)
        if UNSUBSCRIBED_LONG_AGO in person.tags:
            status = ("unsubscribed", "cleaned", "archived")[retained % 3]
            days = prng.uniform(730, 1000)
            member_id = _add_person(twin, newsletter, person, prng, now, status=status,
                                         changed=now - timedelta(days=days))
            planted.append(Planted("mailchimp-contact-retained", sources[newsletter],
                                   "member", member_id, person.email))
            if retained == 0:
                # An archived contact too, whatever the number of planted people.
                member_id = _add_person(twin, trade, person, prng, now, status="archived",
                                             changed=now - timedelta(days=days + 40))
                planted.append(Planted("mailchimp-contact-retained", sources[trade],
                                       "member", member_id, person.email))
            retained += 1
            continue
        if ERASED_FROM_SHOPS in person.tags:
            member_id = _add_person(twin, newsletter, person, prng, now, status="subscribed")
            planted.append(Planted("processor-copy-orphaned", sources[newsletter],
                                   "member", member_id, person.email))
            continue
        ordered = bool(person.account_shops or person.guest_shops)
        if clean_left and ordered and not person.tags:
            # Half the retention period: still allowed to be held.
            status = "unsubscribed" if clean_left == 2 else "archived"
            member_id = _add_person(twin, newsletter, person, prng, now, status=status,
                                         changed=now - timedelta(days=182))
            planted.append(Planted(None, sources[newsletter], "member", member_id,
                                   person.email))
            clean_left -= 1
            continue
        status = _ordinary_status(prng)
        if status == "transactional" and not (person.account_shops or person.guest_shops):
            # Transactional contacts come from shop orders; this person never ordered.
            status = "subscribed"
        _add_person(twin, newsletter, person, prng, now, status=status)
        if person.account_shops and prng.random() < 0.35:
            status = prng.choice(("subscribed", "subscribed", "transactional", "pending"))
            _add_person(twin, trade, person, prng, now, status=status)
    return twin


def _add_person(twin: MailchimpTwin, audience_id: str, person: Person, rng: random.Random,
                now: datetime, *, status: str, changed: datetime | None = None) -> str:
    age = max(now - person.first_seen, timedelta(days=2))
    signup = person.first_seen + timedelta(minutes=rng.randint(0, 600))
    if changed is not None and changed <= signup:
        signup = changed - timedelta(days=rng.randint(30, 400))
    if changed is None:
        if status in ("subscribed", "pending", "transactional"):
            changed = signup + age * rng.uniform(0.05, 0.95)
        else:
            # Inside the one-year retention period, with room to spare either side.
            recent = timedelta(days=rng.uniform(10, 150))
            changed = max(now - recent, signup + (now - signup) / 2)
    opted = signup + timedelta(minutes=rng.randint(1, 90)) if status != "pending" else None
    city_coords = COORDINATES.get(person.city)
    extra = None
    audience = twin.audiences[audience_id]
    if not audience.permissions:
        extra = {"COMPANY": f"{person.last_name} Trading" if rng.random() < 0.7 else ""}
    roll = rng.random()
    return twin.add_member(
        audience_id, person.email, status=status,
        first_name=person.first_name if roll < 0.92 else "",
        last_name=person.last_name if roll < 0.85 else "",
        address=({"addr1": person.address_1, "addr2": "", "city": person.city,
                  "state": "", "zip": person.postcode, "country": person.country}
                 if rng.random() < 0.4 else ""),
        phone=person.phone if rng.random() < 0.35 else "",
        merge_fields=extra,
        ip_signup=person.ip if rng.random() < 0.6 else "",
        ip_opt=person.ip if opted and rng.random() < 0.7 else "",
        timestamp_signup=signup, timestamp_opt=opted, last_changed=changed,
        location=((*city_coords, person.country)
                  if city_coords and rng.random() < 0.5 else None),
        marketing_permissions=([{"marketing_permission_id": "5fd1a3c2b7", "text": "Email",
                                 "enabled": status == "subscribed"}]
                               if audience.permissions and rng.random() < 0.5 else None),
        note=rng.choice(NOTES) if rng.random() < 0.05 else None,
        unsubscribe_reason=(rng.choice(UNSUBSCRIBE_REASONS)
                            if status == "unsubscribed" else ""),
        tags=("customer",) if person.account_shops or person.guest_shops else (),
    )


def bulk(members: int, seed: int = 7, *, now: datetime | None = None,
         api_key: str = DEFAULT_API_KEY, name: str = "Bulk audience") -> MailchimpTwin:
    """One audience of `members` contacts across every status, built in seconds (no
    per-member rendering: a few shared timestamp strings, one MD5 per member)."""
    moment = now or datetime(2026, 11, 1, 6, 0, tzinfo=UTC)
    twin = MailchimpTwin(api_key=api_key, now=moment)
    rng = random.Random(seed)
    audience_id = twin.add_audience(name, _list_id(rng), created=moment - timedelta(days=3650))
    audience = twin.audiences[audience_id]
    times = sorted(stamp(moment - timedelta(days=rng.uniform(1, 3000))) for _ in range(997))
    statuses = rng.choices(STATUSES, weights=(70, 14, 5, 4, 3, 4), k=members)
    picks = [rng.randrange(len(times)) for _ in range(members)]
    firsts = ("Ada", "Ben", "Chloe", "Dev", "Femi", "Greta", "Ines", "Kaito", "Rosa", "Wen")
    lasts = ("Evans", "Novak", "Rossi", "Tanaka", "Walsh", "Zhou", "Uddin", "Dubois")
    store = audience.members
    for index in range(members):
        email = f"bulk.{index}@example.com"
        member_id = subscriber_hash(email)
        signup = times[picks[index]]
        store[member_id] = Member(
            id=member_id, email=email, status=statuses[index],
            first_name=firsts[index % len(firsts)], last_name=lasts[index % len(lasts)],
            ip_signup="203.0.113.7" if index % 3 == 0 else "",
            timestamp_signup=signup, timestamp_opt=signup,
            last_changed=times[min(len(times) - 1, picks[index] + index % 5)],
            web_id=index + 1,
        )
    twin._changed()
    return twin


def _ordinary_status(rng: random.Random) -> str:
    return rng.choices(STATUSES, weights=(72, 12, 4, 4, 4, 4))[0]


def _list_id(rng: random.Random) -> str:
    return f"{rng.getrandbits(40):010x}"
