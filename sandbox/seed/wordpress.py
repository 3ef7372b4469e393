"""The estate's WordPress site without a shop (the owner's journal): `seeded()` turns some of
the people of sandbox.estate into commenters and members, with the planted cases WordPress
itself keeps too long — commenters' IP addresses and browsers from years ago, spam and trash
its scheduled delete never emptied, and accounts nobody uses. The twin knows nothing of
people or plants."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sandbox.estate import EstateSpec, Person, Planted, rng_for
from sandbox.wordpress import WordPressTwin

SITE = "journal"
# The sandbox site's administrator's application password, public on purpose.
ADMIN_PASSWORD = "abcd EFGH ijkl MNOP qrst UVWX"  # noqa: S105


def _stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def seeded(spec: EstateSpec, people: list[Person], planted: list[Planted], *,
           site: str = SITE) -> WordPressTwin:
    """A journal with a comment from every fifth person (some of them members), an editor,
    spam and trash left since long ago, and members who never came back."""
    rng = rng_for(spec, "wordpress", site)
    twin = WordPressTwin()
    source = f"wp:{site}"
    users: list[dict[str, Any]] = [{
        "login": "editor", "email": "editor@journal.example", "display_name": "The Editor",
        "first_name": "The", "last_name": "Editor", "role": "editor",
        "registered": _stamp(spec.now - timedelta(days=2000))}]
    comments: list[dict[str, Any]] = []
    for n, person in enumerate(people[::5], start=1):
        member = n % 3 == 0
        if member:
            # Members who joined years ago and never came back: inactive accounts.
            users.append({"login": f"reader{n:03}", "email": person.email,
                          "display_name": person.name, "first_name": person.first_name,
                          "last_name": person.last_name, "role": "subscriber",
                          "registered": _stamp(spec.now - timedelta(days=900 + n))})
        written = spec.now - timedelta(days=rng.randrange(2, 1400), minutes=n)
        status = "spam" if n % 11 == 0 else "trash" if n % 13 == 0 else \
            "hold" if n % 7 == 0 else "approved"
        comment: dict[str, Any] = {
            "author_name": person.name, "author_email": person.email, "author_url": "",
            "ip": person.ip, "user_agent": person.user_agent, "date_gmt": _stamp(written),
            "content": "Thank you for the tips on refilling cartridges!",
            "type": "comment", "status": status,
            **({"user": f"reader{n:03}"} if member else {}),
        }
        if status == "trash":
            comment["trashed_gmt"] = _stamp(written + timedelta(days=3))
        comments.append(comment)
    twin.load({"roles": {}, "users": users, "comments": comments,
               "subscriber_login": users[0]["login"],
               "subscriber_password": "wxyz ABCD efgh IJKL mnop QRST"},
              admin_password=ADMIN_PASSWORD)
    # What the audit must say under the default [retention] (network_data 1y,
    # inactive_accounts 2y): a comment's id is its place in the spec (ids start at 2), an
    # account's its place after the administrator (ids start at 1).
    written = {c["author_email"]: [] for c in comments}
    for ident, comment in enumerate(comments, start=2):
        moment = datetime.strptime(comment["date_gmt"], "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
        written[comment["author_email"]].append(moment)
        if moment < spec.now - timedelta(days=365):
            planted.append(Planted("comment-network-data-past-retention", source, "comment",
                                   str(ident), comment["author_email"]))
    threshold = spec.now - timedelta(days=730)
    for ident, user in enumerate(users, start=2):
        if user["role"] == "subscriber" and all(m < threshold for m in written[user["email"]]):
            planted.append(Planted("inactive-site-account", source, "user", str(ident),
                                   user["email"]))
    return twin
