"""Mailchimp Marketing API v3: every audience is a ledger source (`mailchimp:<list id>`)
whose members are classified into the privacy policy's categories.

Unsubscribed, cleaned and archived contacts are still held (only a permanent deletion ends
that), so every status is listed, archived ones explicitly. Members page by count/offset,
which lets pages be fetched in parallel — never more than Mailchimp's ten simultaneous
connections — and which can skip or repeat members when the audience changes while it is
read: listings de-duplicate, and a listing that saw fewer members than the audience says
it has is reported incomplete so that nothing is marked gone on its word.
"""

from __future__ import annotations

import contextvars
import hashlib
import json
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import requests
import structlog

from connectors.base import (
    Batch,
    Category,
    Key,
    KeyBatch,
    Progress,
    Record,
    Skip,
    contains_card_number,
    count_text,
    email_as_held,
    has_value,
    normalise_email,
    parse_time,
    scan_text,
)
from connectors.http import (
    APIError,
    FatalAPIError,
    HttpClient,
    RetryPolicy,
    mask_personal,
    require_api_answer,
)
from connectors.limiter import Limiter, LimiterSettings
from vocabulary import MAILCHIMP, MEMBER, utcnow

log = structlog.get_logger("connectors.mailchimp")

KIND = MAILCHIMP
RECORD_TYPE = MEMBER
MAX_PAGE_SIZE = 1000
# Mailchimp answers 429 beyond ten simultaneous connections per user.
MAX_CONCURRENCY = 10
STATUSES = ("subscribed", "unsubscribed", "cleaned", "pending", "transactional", "archived")

# Only what classification needs: whole members are slow to page and can time out.
MEMBER_FIELDS = ",".join([
    *(f"members.{name}" for name in (
        "id", "email_address", "status", "full_name", "merge_fields", "ip_signup", "ip_opt",
        "timestamp_signup", "timestamp_opt", "last_changed", "location",
        "marketing_permissions", "last_note", "unsubscribe_reason", "sms_phone_number",
    )),
    "total_items",
])
KEY_FIELDS = "members.id,total_items"
LIST_FIELDS = "lists.id,lists.name,total_items"

# The default listing and the archived one: whether the first includes archived contacts
# is not something to rely on, so they are asked for by name and de-duplicated.
LISTINGS: tuple[Mapping[str, str], ...] = ({}, {"status": "archived"})

_DATA_CENTRE = re.compile(r"[a-z]{2,}[0-9]+")


def data_centre_url(api_key: str) -> str:
    """The API address a key routes to: its suffix after the last `-` names the data centre
    (`…-us6` → https://us6.api.mailchimp.com/3.0). Raises ValueError (never quoting the key)
    when the key has no such suffix."""
    prefix, dash, centre = (api_key or "").strip().rpartition("-")
    if not dash or not prefix or not _DATA_CENTRE.fullmatch(centre):
        raise ValueError(
            "the Mailchimp API key has no data-centre suffix (a key ends in something like "
            "'-us6', which names the server to call): paste the whole key from Mailchimp "
            "(Profile → Extras → API keys), or set base_url")
    return f"https://{centre}.api.mailchimp.com/3.0"


def subscriber_hash(email: str) -> str:
    """Mailchimp's member id: the MD5 hex digest of the lower-cased address."""
    return hashlib.md5(email.strip().lower().encode(), usedforsecurity=False).hexdigest()


@dataclass(frozen=True)
class Settings:
    api_key: str = field(repr=False)
    # None: derived from the key's data-centre suffix.
    base_url: str | None = None
    # Audience ids or names; empty: every audience of the account.
    audiences: tuple[str, ...] = ()
    page_size: int = 1000
    timeout: float = 120.0
    concurrency: int = 4
    overlap: timedelta = timedelta(minutes=10)
    retry_attempts: int = 5
    # Decoded bytes one answer may hold; None: the HTTP layer's default.
    max_response_size: int | None = None
    sleep: Callable[[float], None] = field(default=time.sleep, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "audiences", tuple(self.audiences))
        if not isinstance(self.api_key, str) or not self.api_key.strip():
            raise ValueError("api_key is empty: set the Mailchimp Marketing API key")
        if not 1 <= self.page_size <= MAX_PAGE_SIZE:
            raise ValueError(f"page_size must be between 1 and {MAX_PAGE_SIZE} "
                             f"(Mailchimp's largest page), not {self.page_size}")
        if not 1 <= self.concurrency <= MAX_CONCURRENCY:
            raise ValueError(
                f"concurrency must be between 1 and {MAX_CONCURRENCY}, not {self.concurrency}: "
                f"Mailchimp allows at most {MAX_CONCURRENCY} simultaneous connections per user "
                "and answers 429 beyond that")
        if self.timeout <= 0:
            raise ValueError(f"timeout must be more than 0 seconds, not {self.timeout}")
        if self.retry_attempts < 1:
            raise ValueError(f"retry_attempts must be at least 1, not {self.retry_attempts}")
        if self.overlap < timedelta(0):
            raise ValueError("overlap must not be negative")
        if self.base_url is None:
            data_centre_url(self.api_key)
        else:
            check_base_url(self.base_url)

    @property
    def url(self) -> str:
        return (self.base_url or data_centre_url(self.api_key)).rstrip("/")


def check_base_url(url: str) -> None:
    """Raises ValueError unless the URL is https, or plain http to this machine (a twin)."""
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValueError(f"base_url {url!r} is not an http(s) address, e.g. "
                         "https://us6.api.mailchimp.com/3.0")
    # The key travels in every request: plain HTTP only to a twin on this machine.
    if parts.scheme == "http" and parts.hostname not in ("127.0.0.1", "localhost", "::1"):
        raise ValueError(f"base_url {url!r} is plain HTTP: the API key would cross the network "
                         "unencrypted; use https://")


@dataclass(frozen=True)
class AudienceInfo:
    id: str
    name: str


@dataclass(frozen=True)
class Unreadable:
    """A configured audience that cannot be read: its entry in the settings, the source it
    is recorded as (`mailchimp:<id or name>`) and why, in words that say what to do."""

    wanted: str
    source: str
    reason: str


def describe_problem(response: requests.Response) -> str | None:
    """Mailchimp's own words from its problem JSON (`title: detail`)."""
    body = response.json()
    if not isinstance(body, dict):
        return None
    title = str(body.get("title") or "").strip()
    detail = str(body.get("detail") or "").strip().rstrip(".")
    text = ": ".join(part for part in (title, detail) if part)
    return text or None


def refusal(source: str, response: requests.Response, doing: str,
            say: Callable[[str], str] = mask_personal) -> FatalAPIError:
    """A 401 or 403 in words that name what is missing and what to do (never the key:
    Mailchimp's own words pass through `say`, the client's redaction and masking)."""
    try:
        said = describe_problem(response)
    except ValueError:
        said = None
    said = say(said) if said else None
    said_text = f": {said}" if said else ""
    if response.status_code == 401:
        return FatalAPIError(
            source, f"Mailchimp refused the API key while {doing} (401{said_text}): the key "
                    "is wrong, was revoked, or is not for this data centre. Create a key under "
                    "Profile → Extras → API keys and set [mailchimp] api_key to it",
            status=401)
    return FatalAPIError(
        source, f"Mailchimp refused {doing} with this API key (403{said_text}): the key's "
                "user lacks that permission, or the account is suspended. Use a key of a user "
                "who may view and manage the audience's contacts (Admin or Manager), or ask "
                "the account owner to grant it",
        status=response.status_code)


def classify_member(member: object) -> Record | Skip:
    """A member as the ledger sees it: which categories it holds, never their values."""
    if not isinstance(member, dict):
        return Skip(RECORD_TYPE, None, "member entry is not an object")
    member_id = member.get("id")
    if not isinstance(member_id, str) or not member_id.strip():
        return Skip(RECORD_TYPE, None, "member without an id")
    categories: set[Category] = set()
    evidence: list[str] = []
    raw_email = member.get("email_address")
    if has_value(raw_email):
        categories.add(Category.EMAIL)
    if has_value(member.get("full_name")):
        categories.add(Category.NAME)
        _card_check("full_name", member.get("full_name"), categories, evidence)
    merge = member.get("merge_fields")
    for tag, value in (merge.items() if isinstance(merge, dict) else ()):
        if not has_value(value):
            continue
        name = str(tag).upper()
        where = f"merge field {tag}"
        if name in ("FNAME", "LNAME"):
            categories.add(Category.NAME)
            _card_check(where, value, categories, evidence)
        elif name == "ADDRESS":
            if isinstance(value, dict | str):
                categories.add(Category.BILLING_ADDRESS)
                _card_check(where, value, categories, evidence)
            else:
                scan_text(where, value, categories, evidence)
        elif name == "PHONE":
            categories.add(Category.PHONE)
        else:
            # A merge field the account defined itself: personal data of unknown kind.
            scan_text(where, value, categories, evidence)
    if has_value(member.get("sms_phone_number")):
        # SMS marketing keeps the number on the member itself, outside the merge fields.
        categories.add(Category.PHONE)
    if has_value(member.get("ip_signup")) or has_value(member.get("ip_opt")):
        categories.add(Category.IP_ADDRESS)
    if _has_location(member.get("location")):
        categories.add(Category.LOCATION)
    status = member.get("status") if isinstance(member.get("status"), str) else None
    permissions = member.get("marketing_permissions")
    if (isinstance(permissions, list) and permissions) or status in ("subscribed", "pending"):
        categories.add(Category.MARKETING_CONSENT)
    note = member.get("last_note")
    scan_text("last_note", note.get("note") if isinstance(note, dict) else note,
              categories, evidence)
    scan_text("unsubscribe_reason", member.get("unsubscribe_reason"), categories, evidence)
    last_changed = parse_time(member.get("last_changed"))
    opted = parse_time(member.get("timestamp_opt"))
    return Record(
        record_type=RECORD_TYPE,
        external_id=member_id.strip(),
        email=(email := normalise_email(raw_email)),
        email_as_held=email_as_held(raw_email, email),
        categories=frozenset(categories),
        status=status,
        created_at=parse_time(member.get("timestamp_signup")) or opted,
        last_activity_at=last_changed or opted,
        modified_at=last_changed,
        evidence=tuple(evidence),
    )


def _card_check(where: str, value: object, categories: set[Category],
                evidence: list[str]) -> None:
    # Names and addresses are not free text, but a card number typed into one is a breach.
    values = value.values() if isinstance(value, dict) else (value,)
    if any(contains_card_number(item) for item in values):
        categories.add(Category.CARD_NUMBER)
        note = f"card number pattern in {where}"
        if note not in evidence:
            evidence.append(note)


def _has_location(location: object) -> bool:
    if not isinstance(location, dict):
        return False
    for axis in ("latitude", "longitude"):
        value = location.get(axis)
        if isinstance(value, int | float) and not isinstance(value, bool) and value != 0:
            return True
    return has_value(location.get("country_code"))


def _member_id(item: object) -> str | None:
    if isinstance(item, dict) and isinstance(item.get("id"), str) and item["id"].strip():
        return item["id"].strip()
    return None


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds")


def make_cursor(last_changed: datetime) -> str:
    """The incremental cursor: the latest `last_changed` the ledger has committed."""
    return json.dumps({"last_changed": _iso(last_changed)})


def read_cursor(cursor: str | None) -> datetime | None:
    if cursor is None:
        return None
    try:
        data = json.loads(cursor)
    except ValueError:
        return None
    return parse_time(data.get("last_changed")) if isinstance(data, dict) else None


@dataclass
class _Page:
    offset: int
    items: list[Any]
    total: int | None
    # Ids this listing had not seen before this page (filled in as the page is taken).
    new: set[str] = field(default_factory=set)


def _read(tallies: list[_Tally]) -> int:
    """Members read so far by these listings (a member two listings hold counts twice)."""
    return sum(len(t.ids) + t.unreadable for t in tallies)


def _progress(tallies: list[_Tally]) -> Progress:
    """Members read so far against the listings' own totals (None while one is unknown)."""
    before = None if any(t.unknown_total for t in tallies[:-1]) else \
        sum(t.max_total for t in tallies[:-1])
    return tallies[-1].progress(_read(tallies), before)


@dataclass
class _Tally:
    """What one offset listing saw: the audience's size as it said it, and the distinct
    members it returned. Each listing is judged against its own total: listings may
    overlap (the default one may hold archived contacts too), so totals never add up."""

    first_total: int | None = None
    max_total: int = 0
    unknown_total: bool = False
    # total_items differed between pages: the audience changed while it was read.
    changed: bool = False
    ids: set[str] = field(default_factory=set)
    unreadable: int = 0

    def note(self, total: int | None) -> None:
        if total is None:
            self.unknown_total = True
            return
        if self.first_total is None:
            self.first_total = total
        elif total != self.first_total:
            self.changed = True
        self.max_total = max(self.max_total, total)

    def take(self, items: list[Any]) -> set[str]:
        """Count a page's members; returns the ids this listing had not seen before."""
        new: set[str] = set()
        for item in items:
            member_id = _member_id(item)
            if member_id is None:
                self.unreadable += 1
            elif member_id not in self.ids:
                self.ids.add(member_id)
                new.add(member_id)
        return new

    @property
    def complete(self) -> bool:
        return not self.unknown_total and len(self.ids) + self.unreadable >= self.max_total

    def progress(self, read: int, before: int | None) -> Progress:
        """`read` members so far against total_items (`before`: the earlier listings')."""
        known = before is not None and not self.unknown_total
        return Progress(RECORD_TYPE, read, before + self.max_total if known else None)


class MailchimpAccount:
    """One Mailchimp account (one API key): lists its audiences and hands out a connector
    per audience. All of them share one connection pool and one cap on simultaneous
    requests, so several audiences synced at once still respect Mailchimp's limit."""

    family = KIND

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.client = HttpClient(
            KIND, settings.url,
            auth=("privacy-ledger", settings.api_key),
            timeout=settings.timeout,
            retry=RetryPolicy(attempts=settings.retry_attempts),
            pool_size=settings.concurrency,
            secrets=(settings.api_key,),
            describe_error=describe_problem,
            sleep=settings.sleep,
            max_response_size=settings.max_response_size,
            # Mailchimp's ten connections per user, and a 429's Retry-After held by every
            # thread of the account, through the limiter all connectors share.
            limiter=Limiter(LimiterSettings(maximum=settings.concurrency, adaptive=False),
                            sleep=settings.sleep),
        )
        self._slots = threading.BoundedSemaphore(settings.concurrency)
        # Set by connectors(): True when the audience listing saw every audience, so that
        # sources of audiences missing from it may be taken as deleted.
        self.listing_complete = False
        self.found: list[AudienceInfo] = []

    def get(self, source: str, path: str, params: Mapping[str, Any] | None = None,
            *, ok: tuple[int, ...] = (), doing: str | None = None
            ) -> tuple[Any, requests.Response]:
        """GET JSON holding one of the account's connection slots; errors name `source`,
        and a refused key (401, 403) says what it was `doing` and what to do."""
        with self._slots:
            try:
                body, response = self.client.get_json(path, params, ok=(*ok, 401, 403))
            except APIError as exc:
                if exc.source == source:
                    raise
                raise type(exc)(source, exc.message, status=exc.status) from exc
        if response.status_code in (401, 403) and response.status_code not in ok:
            raise refusal(source, response, doing or f"reading {path}",
                          say=self.client.upstream_words)
        return body, response

    def list_audiences(self) -> tuple[list[AudienceInfo], bool]:
        """Every audience (id, name) and whether the listing is known to be complete."""
        size = self.settings.page_size
        found: dict[str, AudienceInfo] = {}
        tally = _Tally()
        offset = 0
        while True:
            body, _ = self.get(KIND, "lists",
                               {"count": size, "offset": offset, "fields": LIST_FIELDS},
                               doing="listing the account's audiences")
            lists = body.get("lists") if isinstance(body, dict) else None
            if not isinstance(lists, list):
                raise FatalAPIError(KIND, "the audience listing (GET /lists) answered without "
                                          "a list of audiences: is base_url the Marketing "
                                          "API address (…/3.0)?")
            total = body.get("total_items")
            tally.note(total if isinstance(total, int) and not isinstance(total, bool)
                       else None)
            before = len(found)
            for item in lists:
                audience_id = _member_id(item)
                if audience_id is not None and audience_id not in found:
                    found[audience_id] = AudienceInfo(audience_id, str(item.get("name") or ""))
            # A page with nothing new ends the listing (judged incomplete below if short):
            # paging on could never end when the total lies or the offset is ignored.
            if not lists or len(found) == before or (
                    len(lists) < size and offset + len(lists) >= tally.max_total):
                break
            offset += len(lists)
        complete = not tally.unknown_total and len(found) >= tally.max_total
        if not complete:
            log.warning("mailchimp.audiences_incomplete", found=len(found),
                        expected=tally.max_total)
        return list(found.values()), complete

    def connectors(self) -> list[MailchimpAudienceConnector]:
        """A connector per audience (those named in the settings, or all). Raises
        FatalAPIError when a configured audience does not exist."""
        chosen, unreadable = self.open_audiences()
        if unreadable:
            raise FatalAPIError(KIND, "; ".join(u.reason for u in unreadable))
        return chosen

    def open_audiences(self) -> tuple[list[MailchimpAudienceConnector], list[Unreadable]]:
        """A connector per audience that can be read (those named in the settings, or all),
        and the configured ones that cannot, each with the reason. Raises APIError when the
        account's audiences cannot be listed at all (a wrong or revoked key)."""
        found, complete = self.list_audiences()
        self.found = found
        self.listing_complete = complete
        if not self.settings.audiences:
            return [MailchimpAudienceConnector(self, audience) for audience in found], []
        chosen: list[AudienceInfo] = []
        unreadable: list[Unreadable] = []
        have = ", ".join(f"{a.name!r} ({a.id})" for a in found) or "none"
        for wanted in self.settings.audiences:
            matches = [a for a in found if a.id == wanted] or [
                a for a in found if a.name.strip().casefold() == wanted.strip().casefold()]
            if not matches:
                direct = self._audience_by_id(wanted)
                matches = [direct] if direct is not None else []
            if not matches:
                unreadable.append(Unreadable(wanted, f"{KIND}:{wanted.strip()}", (
                    f"audience {wanted!r} named in the configuration does not exist in this "
                    f"Mailchimp account (the key sees: {have}); correct [mailchimp] audiences, "
                    "or use the key of the account that holds it")))
            elif len(matches) > 1:
                unreadable.append(Unreadable(wanted, f"{KIND}:{wanted.strip()}", (
                    f"the audience name {wanted!r} in the configuration matches "
                    f"{len(matches)} audiences ({', '.join(a.id for a in matches)}): "
                    "name it by its id instead")))
            elif matches[0] not in chosen:
                chosen.append(matches[0])
        return [MailchimpAudienceConnector(self, audience) for audience in chosen], unreadable

    def _audience_by_id(self, audience_id: str) -> AudienceInfo | None:
        # The listing may have missed it (audiences changing while listed): ask directly.
        if not re.fullmatch(r"[0-9A-Za-z]+", audience_id):
            return None
        body, response = self.get(KIND, f"lists/{audience_id}", {"fields": "id,name"},
                                  ok=(404,))
        if response.status_code == 404 or _member_id(body) is None:
            return None
        return AudienceInfo(body["id"], str(body.get("name") or ""))

    def probe(self) -> str:
        """One small authenticated request: how many audiences the key sees."""
        body, _ = self.get(KIND, "lists", {"count": 1, "fields": "total_items"},
                           doing="listing the account's audiences")
        return count_text(body.get("total_items") if isinstance(body, dict) else None,
                          "audiences")

    def close(self) -> None:
        # Closes pooled connections; the session reopens them if used again.
        self.client.close()


class MailchimpAudienceConnector:
    """One audience's members as a ledger source."""

    kind = KIND

    def __init__(self, account: MailchimpAccount, audience: AudienceInfo) -> None:
        self.account = account
        self.settings = account.settings
        self.audience_id = audience.id
        self.audience_name = audience.name
        self.label = audience.name
        self.source = f"{KIND}:{audience.id}"

    def __repr__(self) -> str:
        return f"MailchimpAudienceConnector({self.source!r}, {self.audience_name!r})"

    # -- the Connector protocol ----------------------------------------------------------
    def pull(self, cursor: str | None) -> Iterator[Batch]:
        """Every member (cursor None: default listing + archived, de-duplicated; complete
        only when the distinct members add up to total_items) or those changed since the
        cursor, less the overlap. The cursor, on the last batch only, is
        `{"last_changed": "<ISO 8601 UTC>"}`."""
        started = utcnow()
        since = read_cursor(cursor)
        if cursor is not None and since is None:
            log.warning("mailchimp.cursor_unreadable", source=self.source)
        if since is None:
            return self._full_pull(started)
        return self._incremental_pull(since)

    def list_keys(self) -> Iterator[KeyBatch]:
        """Every member id (default listing + archived), complete only when every page came
        back and each listing's distinct ids add up to its own total_items."""
        tallies: list[_Tally] = []
        held: list[Key] | None = None
        for listing in LISTINGS:
            tally = _Tally()
            earlier = list(tallies)
            tallies.append(tally)
            for page in self._pages({**listing, "fields": KEY_FIELDS}, tally):
                keys = [Key(RECORD_TYPE, member_id) for member_id in page.new
                        if not any(member_id in t.ids for t in earlier)]
                if keys:
                    if held:
                        yield KeyBatch(held)
                    held = keys
        complete = self._judge(tallies)
        yield KeyBatch(held or [], complete=complete,
                       listed_types=frozenset({RECORD_TYPE}) if complete else frozenset())

    def probe(self) -> str:
        """One small request that reads a member, as every sync and erasure will."""
        body, _ = self._get(f"lists/{self.audience_id}/members",
                            {"count": 1, "fields": KEY_FIELDS})
        if not isinstance(body, dict) or not isinstance(body.get("members"), list):
            raise FatalAPIError(
                self.source, f"the member listing of audience {self.audience_name!r} answered "
                             "without a list of members: is base_url the Marketing API "
                             "address (…/3.0)?")
        return (f"audience {self.audience_name!r}: members readable "
                f"({count_text(body.get('total_items'), 'contacts')})")

    def lookup(self, email: str, forms: Sequence[str] = ()) -> list[dict[str, Any]]:
        """The member with this address, as Mailchimp holds it (archived ones too). A member
        is named by the MD5 of the address Mailchimp holds, lower-cased: each form given is
        tried (a decomposed é hashes apart from a composed one), and a member is kept only
        when its address normalises to the person's (U+212A lower-cases to k, yet is not k)."""
        address = normalise_email(email)
        if address is None:
            return []
        hashes = dict.fromkeys(subscriber_hash(f) for f in (address, *forms) if f.strip())
        found: dict[str, dict[str, Any]] = {}
        for member_hash in hashes:
            body, response = self._get(f"lists/{self.audience_id}/members/{member_hash}",
                                       {"exclude_fields": "_links"}, ok=(404,))
            if response.status_code == 404 or not isinstance(body, dict):
                continue
            if normalise_email(body.get("email_address")) != address:
                continue
            ident = str(body.get("id") or member_hash)
            found.setdefault(ident, {"record_type": RECORD_TYPE, "external_id": ident,
                                     "source": self.source, "audience": self.audience_name,
                                     "data": body})
        return list(found.values())

    def close(self) -> None:
        self.account.close()

    # -- pulls ---------------------------------------------------------------------------
    def _full_pull(self, started: datetime) -> Iterator[Batch]:
        tallies: list[_Tally] = []
        latest: datetime | None = None
        held: tuple[list[Record], list[Skip]] | None = None
        for listing in LISTINGS:
            tally = _Tally()
            # The listings' own id sets de-duplicate: no third copy of a large audience's.
            earlier = list(tallies)
            tallies.append(tally)
            for page in self._pages({**listing, "fields": MEMBER_FIELDS}, tally):
                records: list[Record] = []
                skipped: list[Skip] = []
                for item in page.items:
                    member_id = _member_id(item)
                    if member_id is not None:
                        # Listed on an earlier page or by an earlier listing: taken already.
                        if member_id not in page.new or any(member_id in t.ids
                                                            for t in earlier):
                            continue
                        page.new.discard(member_id)
                    latest = self._take(item, records, skipped, latest)
                if records or skipped:
                    # The last batch is held back to carry the pull's verdict and cursor.
                    if held is not None:
                        yield Batch(held[0], skipped=held[1], progress=_progress(tallies))
                    held = (records, skipped)
        complete = self._judge(tallies)
        # Changes made while the pull ran may sit on pages already read: never start the
        # next window later than this pull's start. An incomplete pull leaves no cursor, so
        # the next run lists everything again.
        cursor = None
        if complete:
            cursor = make_cursor(min(latest, started) if latest else started)
        records, skipped = held or ([], [])
        yield Batch(records, skipped=skipped, cursor=cursor, complete=complete,
                    listed_types=frozenset({RECORD_TYPE}) if complete else frozenset(),
                    progress=_progress(tallies))

    def _incremental_pull(self, since: datetime) -> Iterator[Batch]:
        params = {"fields": MEMBER_FIELDS,
                  "since_last_changed": _iso(since - self.settings.overlap),
                  "sort_field": "last_changed", "sort_dir": "ASC"}
        tallies: list[_Tally] = []
        shifted = False
        expected = 0
        latest: datetime | None = None
        held: tuple[list[Record], list[Skip]] | None = None
        for listing in LISTINGS:
            tally = _Tally()
            earlier = list(tallies)
            tallies.append(tally)
            for page in self._pages({**listing, **params}, tally):
                records: list[Record] = []
                skipped: list[Skip] = []
                in_page: set[str] = set()
                for item in page.items:
                    member_id = _member_id(item)
                    if member_id is not None:
                        if member_id in in_page:
                            continue
                        in_page.add(member_id)
                        if member_id not in page.new:
                            # On an earlier page of this listing: it changed while we paged
                            # and moved to the end, shifting the offsets after it (one
                            # member may be skipped). Another listing's copy is no shift.
                            shifted = True
                        elif any(member_id in t.ids for t in earlier):
                            continue
                    latest = self._take(item, records, skipped, latest)
                if records or skipped:
                    # The last batch is held back to carry the pull's verdict and cursor.
                    if held is not None:
                        yield Batch(held[0], skipped=held[1],
                                    progress=tally.progress(_read(tallies), expected))
                    held = (records, skipped)
            expected += tally.max_total
            shifted = shifted or tally.changed or tally.unknown_total
        if shifted:
            log.info("mailchimp.cursor_kept", source=self.source,
                     reason="audience changed while it was read")
        moved = latest is not None and not shifted and latest > since
        records, skipped = held or ([], [])
        yield Batch(records, skipped=skipped, complete=True,
                    cursor=make_cursor(latest if moved and latest else since),
                    progress=Progress(RECORD_TYPE, _read(tallies), expected))

    def _take(self, item: object, records: list[Record], skipped: list[Skip],
              latest: datetime | None) -> datetime | None:
        result = classify_member(item)
        if isinstance(result, Skip):
            skipped.append(result)
            return latest
        records.append(result)
        if result.modified_at and (latest is None or result.modified_at > latest):
            return result.modified_at
        return latest

    def _judge(self, tallies: list[_Tally]) -> bool:
        """Complete when every listing returned as many distinct members as it said it
        holds: each against its own total, whatever the listings share."""
        complete = all(tally.complete for tally in tallies)
        if not complete:
            log.warning("mailchimp.listing_incomplete", source=self.source,
                        seen=[len(t.ids) + t.unreadable for t in tallies],
                        expected=[t.max_total for t in tallies])
        return complete

    # -- paging --------------------------------------------------------------------------
    def _get(self, path: str, params: Mapping[str, Any] | None = None,
             *, ok: tuple[int, ...] = ()) -> tuple[Any, requests.Response]:
        try:
            return self.account.get(
                self.source, path, params, ok=ok,
                doing=f"reading the contacts of audience {self.audience_name!r} "
                      f"({self.audience_id})")
        except FatalAPIError as exc:
            if exc.status != 404:
                raise
            raise FatalAPIError(
                self.source, f"audience {self.audience_name!r} ({self.audience_id}) was not "
                             "found (404): it was deleted in Mailchimp, or the API key "
                             "belongs to another account", status=404) from exc

    def _page(self, params: Mapping[str, Any], offset: int) -> _Page:
        size = self.settings.page_size
        path = f"lists/{self.audience_id}/members"
        body, _ = self._get(path, {**params, "count": size, "offset": offset})
        if not isinstance(body, dict) or not isinstance(body.get("members"), list):
            raise FatalAPIError(
                self.source, f"the member listing of audience {self.audience_name!r} answered "
                             "without a list of members: is base_url the Marketing API "
                             "address (…/3.0)?")
        total = body.get("total_items")
        known = isinstance(total, int) and not isinstance(total, bool)
        return _Page(offset, body["members"], total if known else None)

    def _check_progress(self, params: Mapping[str, Any], page: _Page, new_ids: int) -> None:
        """Raises FatalAPIError when a page brings nothing new although the listing is not
        over: paging on would never end (a total_items that lies, an offset ignored)."""
        if page.items and new_ids:
            return
        if not page.items and (page.total is None or page.offset >= page.total):
            return
        listing = f"status={params['status']}" if params.get("status") else "default"
        if page.items:
            what = (f"the page at offset {page.offset} held only members already listed "
                    "(no new ids)")
        else:
            what = (f"an empty page came back at offset {page.offset} although the listing "
                    f"says it holds {page.total} members")
        raise FatalAPIError(
            self.source,
            f"the member listing ({listing}) of audience {self.audience_name!r} "
            f"({self.audience_id}) stopped making progress: {what}. The run was stopped and "
            "nothing was marked gone; if this happens again, report it to Mailchimp support "
            "with the audience id")

    def _pages(self, params: Mapping[str, Any], tally: _Tally) -> Iterator[_Page]:
        """Pages of one listing in offset order, up to `concurrency` fetched at once and
        no more than that held in memory."""
        size = self.settings.page_size
        pool = ThreadPoolExecutor(max_workers=self.settings.concurrency,
                                  thread_name_prefix=f"mailchimp-{self.audience_id}")
        pending: deque[Future[_Page]] = deque()
        next_offset = 0
        # Until the first page says how many there are, ask for one page only.
        target = size
        try:
            while True:
                while len(pending) < self.settings.concurrency and next_offset < target:
                    # Each worker runs in a copy of the caller's context (log bindings).
                    context = contextvars.copy_context()
                    pending.append(pool.submit(context.run, self._page, params, next_offset))
                    next_offset += size
                if not pending:
                    return
                page = pending.popleft().result()
                tally.note(page.total)
                page.new = tally.take(page.items)
                self._check_progress(params, page, len(page.new))
                target = max(target, page.total or 0)
                yield page
                if len(page.items) >= size and not pending and next_offset >= target:
                    # A full last page: members were added while we read; look further.
                    target = next_offset + size
        finally:
            for future in pending:
                future.cancel()
            pool.shutdown(wait=False, cancel_futures=True)


def audiences(settings: Settings) -> list[AudienceInfo]:
    """Every audience of the account the key belongs to."""
    account = MailchimpAccount(settings)
    try:
        return account.list_audiences()[0]
    finally:
        account.close()


def connect(settings: Settings) -> MailchimpAccount:
    return MailchimpAccount(settings)


# -- erasure ---------------------------------------------------------------------------------
# `DELETE /lists/{id}/members/{hash}` only archives a contact (the data stays in Mailchimp);
# an erasure request needs `POST …/actions/delete-permanent`. Mailchimp then refuses to
# re-import the address, which is what the person asked for.

_MEMBER_ID = re.compile(r"[0-9a-f]{32}")


def _member_path(connector: MailchimpAudienceConnector, record_type: str,
                 external_id: str) -> str:
    if record_type != RECORD_TYPE:
        raise ValueError(f"Mailchimp holds no record type {record_type!r}")
    if not _MEMBER_ID.fullmatch(external_id):
        raise ValueError(f"{external_id!r} is not a Mailchimp member id (a subscriber hash)")
    return f"lists/{connector.audience_id}/members/{external_id}"


def fetch(connector: MailchimpAudienceConnector, record_type: str,
          external_id: str) -> dict[str, Any] | None:
    """One member as the audience holds it now (archived too), or None when it is gone."""
    body, response = connector.account.get(
        connector.source, _member_path(connector, record_type, external_id),
        {"exclude_fields": "_links"}, ok=(404,))
    if response.status_code == 404 or not isinstance(body, dict):
        return None
    return body


def erase(connector: MailchimpAudienceConnector, action: str, record_type: str,
          external_id: str, data: Mapping[str, Any] | None = None
          ) -> tuple[str, dict[str, Any] | None]:
    """Delete one member permanently. Returns ("deleted" | "already gone", None);
    a member already gone (404) counts as done, so a repeated request is harmless."""
    if action != "delete":
        raise ValueError(f"{connector.source}: cannot {action} a Mailchimp member")
    path = _member_path(connector, record_type, external_id) + "/actions/delete-permanent"
    account = connector.account
    with account._slots:
        try:
            response = account.client.request("POST", path, ok=(401, 403, 404))
        except APIError as exc:
            raise type(exc)(connector.source, exc.message, status=exc.status) from exc
    if response.status_code in (401, 403):
        try:
            said = describe_problem(response)
        except ValueError:
            said = None
        raise FatalAPIError(
            connector.source,
            f"Mailchimp refused to delete a member of audience {connector.audience_name!r} "
            f"permanently ({response.status_code}{': ' + said if said else ''}). Check that "
            "the API key belongs to an account user allowed to delete contacts.",
            status=response.status_code)
    require_api_answer(connector.source, response, "permanent deletion of a member")
    if response.status_code == 404:
        return "already gone", None
    # Mailchimp answers a permanent deletion with 204 No Content, and nothing else.
    if response.status_code != 204:
        raise FatalAPIError(
            connector.source,
            f"Mailchimp answered the permanent deletion of a member of audience "
            f"{connector.audience_name!r} with HTTP {response.status_code} instead of 204 No "
            "Content: it is not confirmed. Check base_url, then run the erasure again.",
            status=response.status_code)
    return "deleted", None
