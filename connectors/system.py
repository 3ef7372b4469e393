"""What one upstream system is, as the daemon sees it: each system's package exports one
`System` (its settings section; how its configured sources are opened, probed and labelled;
per record type how a record is classified, titled, explained to the person and erased; where
the owner acts on a record). connectors/registry.py lists them, one line each, and the daemon
loops over that list: it never switches on a system's name.

The daemon hands its own settings in as plain objects (`retention`: the [retention] periods by
key; `estate`: every configured section by system): this package never imports the daemon.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from pydantic import BaseModel

from connectors.base import Record, Skip
from vocabulary import Link

# What an erasure does with one record.
DELETE = "delete"
ANONYMISE = "anonymise"
KEEP = "keep"


class Retention(Protocol):
    """The [retention] periods, by key (inactive_accounts, completed_orders, …)."""

    def __getattr__(self, key: str) -> timedelta: ...


def _nothing() -> None:
    return None


@dataclass(frozen=True)
class Opening:
    """What opening one configured unit gave: a connector per ledger source it can read, the
    configured sources it cannot (with the reason), and what the daemon may conclude."""

    connectors: tuple[Any, ...]
    unreadable: tuple[tuple[str, str], ...] = ()
    # Stand-ins the ledger keeps for sources that could not be read before, read now.
    read_for_real: tuple[str, ...] = ()
    # Every source of the unit's family was listed: those not listed are gone upstream.
    listed_all: bool = False
    # What a check says of the unit itself (an account that lists its audiences).
    summary: str | None = None
    close: Callable[[], None] = _nothing


@dataclass(frozen=True)
class Unit:
    """One configured thing that is synced, checked and named on the command line as one: a
    shop, the Stripe account, the Mailchimp account (every audience of it), a WordPress site.
    `open(**overrides)` raises ValueError for settings the connector refuses and APIError
    when the account itself cannot be read."""

    name: str
    kind: str
    open: Callable[..., Opening]
    # The prefix of the ledger sources it holds when they are several (one per audience).
    family: str | None = None
    # The sources its failure is recorded under when nothing can be opened.
    expected: tuple[str, ...] = ()
    # Synced before the others when sources run side by side (the longest one).
    first: bool = False

    def failed_sources(self, known: Callable[[str], list[str]]) -> list[str]:
        """Where a failure to open is recorded: the configured sources, else those the ledger
        knows of the family (`known(prefix)`), else the unit itself."""
        names = list(self.expected) or (known(self.family) if self.family else [])
        return list(dict.fromkeys(names or [self.name]))


@dataclass(frozen=True)
class RecordType:
    """One kind of record a system holds, and what the daemon does with it."""

    name: str
    # What the person reads: "Order 1042", "Newsletter contact".
    title: str
    classify: Callable[[Any], Record | Skip]
    # Where its step comes in an erasure (orders before the account that placed them).
    erase_order: int
    # (record, retention, now, connector) → (action, reason), for an erasure.
    decide: Callable[[Record | None, Any, datetime, Any], tuple[str, str]]
    # (record, retention) → (why it is held, how long), in words for the person.
    purpose: Callable[[Record | None, Any], tuple[str, str]]
    # An anonymised record stays upstream: the ledger re-reads it instead of marking it gone.
    stays_after_anonymise: bool = False
    # The id names the person (Mailchimp's is a hash of the email): kept out of the trail and
    # out of the title.
    id_is_personal: bool = False


# A configured address links only if it is a plain http(s) URL that cannot break out of an
# attribute or a line.
PLAIN_URL = re.compile(r"https?://[^\s\"'<>\\`{}|^]+")

LinkMaker = Callable[[str, str | None, str, str, str | None], tuple[Link, ...]]


def no_links(source: str, label: str | None, record_type: str, external_id: str,
             parent_id: str | None) -> tuple[Link, ...]:
    return ()


@dataclass(frozen=True)
class System:
    """One upstream system. `units(section, estate)` turns one configured section into what
    is synced (`estate`: every configured section, by system kind, for a system whose reading
    depends on another's, as a WordPress site's users do on a shop at the same address)."""

    kind: str
    title: str
    # The config key: [[woocommerce]] (many) or [stripe] (one).
    section: str
    settings: type[BaseModel]
    many: bool
    units: Callable[[Any, Mapping[str, Sequence[Any]]], list[Unit]]
    record_types: Mapping[str, RecordType]
    # (connector, action, record type, external id, data) → (status, the record after).
    erase: Callable[..., tuple[str, dict[str, Any] | None]]
    # (connector, record type, external id) → the record's data, None when it is gone.
    fetch: Callable[[Any, str, str], dict[str, Any] | None]
    # (connector) → the system's name for a request's page.
    label: Callable[[Any], str]
    # (section) → where the owner acts on a record of this section's sources.
    links: Callable[[Any], LinkMaker] = field(default=lambda section: no_links)
    # (connector) → what the site itself runs and how it cleans up (a shop's active plugins
    # and own retention settings), read after each successful sync; None: nothing to read.
    read_site_state: Callable[[Any], Any] | None = None
    # What the config example says of the section.
    description: str = ""

    def record_type(self, name: str) -> RecordType | None:
        return self.record_types.get(name)


def keep_reason(kind: str, record_type: str) -> tuple[str, str]:
    return KEEP, f"privacy-ledger cannot erase a {kind} {record_type}: do it by hand"
