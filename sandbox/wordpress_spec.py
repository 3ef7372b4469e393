"""What a WordPress site holds, as a spec both the twin (`WordPressTwin.load`) and a real
WordPress (tests/wordpress/seed.php) are seeded from: accounts of every role, and comments of
every status and type with their authors' email, IP address and user agent. Seeded, so the
same seed gives the same site."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

AGENTS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0 Safari/537.36",
    "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15",
    "",
)
FIRST = ("Ada", "Chloé", "Dana", "Ines", "Kai", "Lena", "Noor", "Priya", "Sam", "Zoë")
LAST = ("Jansen", "Okafor", "Yilmaz", "Novak", "Silva", "Kowalski", "Murphy", "Haddad")
ROLES = {"customer": "Customer", "shop_manager": "Shop manager"}
# A sandbox account's application password, public on purpose.
SUBSCRIBER_PASSWORD = "wxyz ABCD efgh IJKL mnop QRST"  # noqa: S105


def _stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def build_spec(*, seed: int = 1, people: int = 40, comments: int = 60,
               now: datetime | None = None) -> dict[str, Any]:
    """A site with `people` accounts (one editor, one shop manager, the rest subscribers and
    customers) and `comments` comments: most approved, some pending, spam and trash (some
    trashed long ago), a few pingbacks and product reviews, guests and account holders."""
    rng = random.Random(f"wordpress-{seed}")
    now = (now or datetime.now(UTC)).replace(microsecond=0)
    users: list[dict[str, Any]] = []
    for n in range(1, people + 1):
        first, last = rng.choice(FIRST), rng.choice(LAST)
        role = "editor" if n == 2 else "shop_manager" if n == 3 else \
            rng.choice(("subscriber", "customer"))
        registered = now - timedelta(days=rng.randrange(30, 2000), minutes=n)
        users.append({
            "login": f"member{n:03}", "email": f"{first}.{last}.{n}@example.org",
            "display_name": f"{first} {last}", "first_name": first, "last_name": last,
            "role": role, "registered": _stamp(registered),
        })
    spec_comments: list[dict[str, Any]] = []
    for n in range(1, comments + 1):
        by_member = users[rng.randrange(len(users))] if users and n % 4 == 0 else None
        first, last = rng.choice(FIRST), rng.choice(LAST)
        kind = "pingback" if n % 17 == 0 else "review" if n % 5 == 0 else "comment"
        status = rng.choices(("approved", "hold", "spam", "trash"), (12, 2, 3, 2))[0]
        written = now - timedelta(days=rng.randrange(1, 1500), minutes=n)
        ip = f"192.0.2.{n % 250 + 1}" if n % 7 else f"2001:db8::{n:x}"
        comment: dict[str, Any] = {
            "author_name": by_member["display_name"] if by_member else f"{first} {last}",
            "author_email": by_member["email"] if by_member
            else f"{first.lower()}.{last.lower()}.c{n}@example.net",
            "author_url": "" if n % 3 else f"https://guest{n}.example.net",
            "ip": ip, "user_agent": rng.choice(AGENTS), "date_gmt": _stamp(written),
            "content": f"Comment number {n}.", "type": kind, "status": status,
        }
        if kind == "pingback":
            comment.update(author_email="", author_name="A linking blog", user_agent="")
        if by_member:
            comment["user"] = by_member["login"]
        if status == "trash":
            comment["trashed_gmt"] = _stamp(written + timedelta(days=rng.randrange(1, 90)))
        spec_comments.append(comment)
    subscriber = next(u["login"] for u in users if u["role"] == "subscriber") if any(
        u["role"] == "subscriber" for u in users) else users[-1]["login"]
    return {"roles": ROLES, "users": users, "comments": spec_comments,
            "subscriber_login": subscriber, "subscriber_password": SUBSCRIBER_PASSWORD}
