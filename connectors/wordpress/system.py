"""WordPress as the daemon sees it: the [[wordpress]] section, one unit per site, what an
erasure does with a comment and an account, what the person reads about each, and the
site's admin screens."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field

from connectors import wordpress as connector
from connectors.base import Record
from connectors.settings import Period, Secret, Section, ShortName, SiteUrl
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
from vocabulary import COMMENT, USER, WOOCOMMERCE, WORDPRESS, Link, period_words

# Comments nobody reads: nothing to keep them for once erased.
UNPUBLISHED = frozenset({"spam", "trash"})
_WP_ID = re.compile(r"[1-9][0-9]{0,19}")


class WordPressSettings(Section):
    """A WordPress site: its comments (every status and type) and, on a site without a
    configured [[woocommerce]] shop, its accounts."""

    name: ShortName = Field(description="Short name of the site, used in the ledger as "
                                        "wp:<name>.", examples=["blog"])
    url: SiteUrl = Field(description="The site's address (the API is at <url>/wp-json/wp/v2). "
                                     "A [[woocommerce]] shop at the same address reads the "
                                     "accounts already: the site then reads comments only.",
                         examples=["https://blog.example"])
    user: str = Field(description="The WordPress user the application password belongs to: "
                                  "an administrator (moderating comments and listing users "
                                  "need it; an editor can read comments only).",
                      examples=["privacy-ledger"])
    app_password: Secret = Field(description="An application password of that user (Users → "
                                             "Profile → Application Passwords).",
                                 examples=["credential:blog-app-password"])
    erase_comments: Literal["anonymise", "delete"] = Field(
        default="anonymise",
        description="What an erasure does with a published or held comment: anonymise (as "
                    "WordPress's own eraser does: the words stay, the author's name, email, "
                    "address and browser go) or delete. Spam and trash are always deleted.",
        examples=["anonymise"])
    erase_accounts: bool = Field(
        default=False,
        description="Whether an erasure deletes the person's account on this site (never an "
                    "administrator's, shop manager's or editor's); false: the plan keeps it "
                    "and says so.", examples=[False])
    timeout: Period = Field(default=timedelta(seconds=30),
                            description="How long to wait for one answer.", examples=["30s"])

    def to_connector(self, **overrides: Any) -> connector.Settings:
        """The connector's settings; `overrides` set its other fields (sleep, retries,
        include_users)."""
        return replace(connector.Settings(
            name=self.name, url=self.url, user=self.user,
            app_password=self.app_password.get_secret_value(),
            erase_comments=self.erase_comments, erase_accounts=self.erase_accounts,
            timeout=self.timeout.total_seconds()), **overrides)


def same_site(a: str, b: str) -> bool:
    """Two addresses of one WordPress: same host (any case) and path, either scheme."""
    left, right = urlsplit(a.strip()), urlsplit(b.strip())
    return ((left.hostname or "").lower(), left.port, left.path.rstrip("/")) == (
        (right.hostname or "").lower(), right.port, right.path.rstrip("/"))


def _units(site: WordPressSettings, estate: Mapping[str, Sequence[Any]]) -> list[Unit]:
    source = f"wp:{site.name}"
    # A shop's customer listing (role=all) reads the same accounts: never count one twice.
    shop_here = any(same_site(shop.url, site.url) for shop in estate.get(WOOCOMMERCE, ()))

    def open_site(**overrides: Any) -> Opening:
        opened = connector.connect(site.to_connector(include_users=not shop_here, **overrides))
        return Opening((opened,), close=opened.close)

    return [Unit(source, WORDPRESS, open_site, expected=(source,))]


def _decide_comment(record: Record | None, retention: Any, now: datetime,
                    site: Any) -> tuple[str, str]:
    status = record.status if record else None
    if record is not None and record.anonymised:
        return KEEP, "a comment already anonymised."
    if status in UNPUBLISHED:
        return DELETE, (f"a {status} comment nobody reads: deleted for good (force=true), not "
                        "moved to the trash.")
    if site.settings.erase_comments == DELETE:
        return DELETE, ("a comment: deleted for good (force=true), as [[wordpress]] "
                        "erase_comments says.")
    return ANONYMISE, ("a comment: its words stay in the discussion; the author's name, email, "
                       "web address, IP address and browser are replaced as WordPress's own "
                       "eraser does.")


def _decide_user(record: Record | None, retention: Any, now: datetime,
                 site: Any) -> tuple[str, str]:
    role = record.status if record else None
    if role in connector.PROTECTED_ROLES:
        return KEEP, (f"an account with the role {role}, which runs the site: privacy-ledger "
                      "never deletes it; remove it in WordPress (Users) by hand, reassigning "
                      "what it wrote.")
    if not site.settings.erase_accounts:
        return KEEP, ("the site account: kept, because [[wordpress]] erase_accounts is false "
                      "for this site; delete it in WordPress (Users) or set erase_accounts.")
    return DELETE, ("the site account: deleted for good, its posts given to the user "
                    "privacy-ledger signs in as.")


def _comment_purpose(record: Record | None, retention: Any) -> tuple[str, str]:
    return ("Your comment on the site, with the name and email you gave; WordPress also "
            "records the IP address and browser it came from.",
            "While it is published; the IP address and browser details are cleared after "
            f"{period_words(retention.network_data)}.")


def _user_purpose(record: Record | None, retention: Any) -> tuple[str, str]:
    return ("Your account on the site: signing in and what you wrote.",
            "While you use it; deleted after "
            f"{period_words(retention.inactive_accounts)} with no sign-in.")


def _links(site: WordPressSettings) -> Any:
    admin = f"{site.url.rstrip('/')}/wp-admin"
    plain = PLAIN_URL.fullmatch(site.url.rstrip("/")) is not None

    def links(source: str, label: str | None, record_type: str, external_id: str,
              parent_id: str | None) -> tuple[Link, ...]:
        if not plain or not _WP_ID.fullmatch(external_id):
            return ()
        if record_type == COMMENT:
            return (Link("comment", f"{admin}/comment.php?action=editcomment&c={external_id}"),)
        if record_type == USER:
            return (Link("user account", f"{admin}/user-edit.php?user_id={external_id}"),)
        return ()

    return links


SYSTEM = System(
    kind=WORDPRESS, title="WordPress", section="wordpress", settings=WordPressSettings,
    many=True, units=_units,
    record_types={
        COMMENT: RecordType(COMMENT, "Comment", connector.classify_comment, 4,
                            _decide_comment, _comment_purpose, stays_after_anonymise=True),
        USER: RecordType(USER, "Site account", connector.classify_user, 5, _decide_user,
                         _user_purpose),
    },
    erase=connector.erase, fetch=connector.fetch,
    label=lambda opened: f"WordPress site “{opened.settings.name}” ({opened.settings.url})",
    links=_links,
)
