"""Mailchimp as the daemon sees it: the [mailchimp] section, the account as one unit whose
ledger sources are its audiences, what an erasure does with a contact, what the person reads
about it, and the audience's page."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from pydantic import Field, model_validator

from connectors import mailchimp as connector
from connectors.base import Record
from connectors.settings import (
    Period,
    Secret,
    Section,
    Size,
    UnreadSecret,
    max_response_size_field,
)
from connectors.system import DELETE, Opening, RecordType, System, Unit
from vocabulary import MAILCHIMP, MEMBER, Link, period_words

AUDIENCES_PAGE = "https://admin.mailchimp.com/lists/"
# Contacts the newsletter still mails (or may): kept while they stay.
STAYING_CONTACTS = ("subscribed", "pending", "transactional")


class MailchimpSettings(Section):
    api_key: Secret = Field(description="Marketing API key; its suffix (…-us6) names the "
                                        "data centre.", examples=["credential:mailchimp-key"])
    base_url: str | None = Field(default=None,
                                 description="API address; absent: from the key's suffix.",
                                 examples=["https://us6.api.mailchimp.com/3.0"])
    audiences: list[str] = Field(default_factory=list,
                                 description="Audience ids or names to audit; empty: all.",
                                 examples=[["Newsletter"]])
    page_size: int = Field(default=1000, ge=1, le=1000,
                           description="Members per page (Mailchimp's largest is 1000: fewest "
                                       "requests).", examples=[1000])
    concurrency: int = Field(default=4, ge=1, le=10,
                             description="Simultaneous connections (Mailchimp allows 10; each "
                                         "holds a page in memory).", examples=[4])
    timeout: Period = Field(default=timedelta(seconds=120), description="Answer timeout.",
                            examples=["120s"])
    overlap: Period = Field(default=timedelta(minutes=10),
                            description="Re-read window before the last cursor.",
                            examples=["10min"])
    max_response_size: Size = max_response_size_field()

    @model_validator(mode="after")
    def _routable(self) -> MailchimpSettings:
        if self.base_url is None and isinstance(self.api_key, UnreadSecret):
            return self  # the data centre is checked when the key is read
        if self.base_url is None:
            connector.data_centre_url(self.api_key.get_secret_value())
        else:
            connector.check_base_url(self.base_url)
        return self

    def to_connector(self, **overrides: Any) -> connector.Settings:
        """The connector's settings; `overrides` set its other fields (sleep, retries)."""
        return replace(connector.Settings(
            api_key=self.api_key.get_secret_value(),
            base_url=self.base_url.rstrip("/") if self.base_url else None,
            audiences=tuple(self.audiences), page_size=self.page_size,
            concurrency=self.concurrency, timeout=self.timeout.total_seconds(),
            overlap=self.overlap, max_response_size=self.max_response_size,
        ), **overrides)


def _units(section: MailchimpSettings, estate: Mapping[str, Sequence[Any]]) -> list[Unit]:
    configured = [wanted.strip() for wanted in section.audiences]

    def open_account(**overrides: Any) -> Opening:
        """Every audience that can be read, and every configured one that cannot. Raises
        APIError when the account's audiences cannot be listed (a refused key)."""
        account = connector.connect(section.to_connector(**overrides))
        try:
            audiences, unreadable = account.open_audiences()
        except BaseException:
            account.close()
            raise
        missing = {u.source for u in unreadable}
        opened = {a.source for a in audiences}
        return Opening(
            tuple(audiences), tuple((u.source, u.reason) for u in unreadable),
            # Stand-ins for what could not be read before: the real sources are read now.
            read_for_real=(MAILCHIMP, *(f"{MAILCHIMP}:{wanted}" for wanted in configured
                                        if f"{MAILCHIMP}:{wanted}" not in missing | opened)),
            listed_all=account.listing_complete and not configured,
            summary=f"key accepted: {len(account.found):,} audiences", close=account.close)

    return [Unit(MAILCHIMP, MAILCHIMP, open_account, family=f"{MAILCHIMP}:",
                 expected=tuple(f"{MAILCHIMP}:{wanted}" for wanted in configured))]


def _decide_member(record: Record | None, retention: Any, now: datetime,
                   audience: Any) -> tuple[str, str]:
    status = record.status if record and record.status else "a"
    return DELETE, (f"{status} contact: deleted permanently (actions/delete-permanent), not "
                    "archived — an archived contact is still held. Mailchimp will not let the "
                    "address be imported again.")


def _member_purpose(record: Record | None, retention: Any) -> tuple[str, str]:
    if record is not None and record.status in STAYING_CONTACTS:
        return ("Sending you the newsletter.", "Until you unsubscribe.")
    return ("Remembering that you left the newsletter, so that you are not mailed again.",
            f"{period_words(retention.mailchimp_contacts)} after you left, then deleted "
            "permanently.")


def _links(section: MailchimpSettings) -> Any:
    def links(source: str, label: str | None, record_type: str, external_id: str,
              parent_id: str | None) -> tuple[Link, ...]:
        # The member's own page needs the audience's web id, which the API gives only to a
        # request for the audience itself: the audiences page, not a guessed address.
        # `label` comes made safe to show by the caller.
        audience = source.partition(":")[2]
        named = f"“{label}”" if label else audience
        return (Link(f"audience {named} in Mailchimp", AUDIENCES_PAGE),)

    return links


SYSTEM = System(
    kind=MAILCHIMP, title="Mailchimp", section="mailchimp", settings=MailchimpSettings,
    many=False, units=_units,
    record_types={MEMBER: RecordType(MEMBER, "Newsletter contact", connector.classify_member, 3,
                                     _decide_member, _member_purpose, id_is_personal=True)},
    erase=connector.erase, fetch=connector.fetch,
    label=lambda opened: f"Mailchimp audience “{opened.audience_name}”", links=_links,
)
