"""The nightly digest: the one email the owner reads each morning, computed from the ledger
only (holdings, findings, sync runs and the outbox) and rendered through three Jinja2
templates (daemon/templates/digest.subject.txt, digest.txt, digest.html).

`build_digest` gathers the figures into frozen dataclasses with set-based queries;
`render` turns a digest into a subject, a plain-text part and an HTML part;
`render_digest` does both for the configured settings (the demo and the CLI call it).
Every string that came from upstream (emails, ids, errors) is made safe to show here:
controls and bidi overrides replaced, length capped; the HTML template escapes it. Links to
where the owner acts (links_for) are built only from configured addresses (AdminPlaces) and
ids of the upstream's shape, never from an address an upstream sent. The plain-text part
keeps within TEXT_WIDTH columns (wrap_text).
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, tzinfo
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from sqlalchemy import and_, case, distinct, func, or_, select
from sqlalchemy.orm import Session

from daemon import audit, policy, trail
from daemon.fix_words import fix_all_command, fix_command
from daemon.ledger import (
    AuditLogEntry,
    Finding,
    Holding,
    Ledger,
    OutboxMessage,
    Source,
    Subject,
    SyncRun,
    categories_of,
)
from daemon.mail import RenderedEmail
from daemon.requests import DUE_SOON, RequestView, open_requests
from vocabulary import SYSTEM_NAMES, Category, Link, system_name, utcnow

if TYPE_CHECKING:
    from daemon.config import RetentionSettings, Settings

DIGEST_KIND = "digest"
DEFAULT_WINDOW = timedelta(hours=24)
DEFAULT_STALE_AFTER = timedelta(days=2)
DEFAULT_CAP = 10
# On a day with nothing new, this many still-open findings are listed (oldest first).
STILL_OPEN_CAP = 20
# The plain-text part's width: every line fits a terminal and a mail client's quoting.
TEXT_WIDTH = 78
TEMPLATES = Path(__file__).with_name("templates")

# Email headings for the audit's rules; severity, reason and action come from daemon/audit.py.
RULE_TITLES: dict[str, str] = {
    "inactive-account": "Inactive shop accounts",
    "order-past-retention": "Orders past retention",
    "unpaid-order-past-retention": "Unpaid orders past retention",
    "network-data-past-retention": "IP addresses and browsers kept too long",
    "processor-copy-orphaned": "Stripe and Mailchimp copies of people no shop holds",
    "stripe-customer-inactive": "Stripe customers with no recent charge",
    "mailchimp-contact-retained": "Former Mailchimp contacts still held",
    "card-number-exposed": "Full card numbers stored",
    "comment-network-data-past-retention": "Commenters' IP addresses and browsers kept too long",
    "comment-kept-in-spam-or-trash": "Comments left in spam and trash",
    "inactive-site-account": "Inactive WordPress accounts",
    "sync-stale": "Systems the ledger cannot see",
    "erased-person-reappeared": "Erased people held again",
    "request-overdue": "Requests past their due day",
}


@dataclass(frozen=True)
class RuleText:
    """How the email names a rule, how bad it is and why it matters."""

    title: str
    severity: str
    reason: str


def rule_text(rule: str, severity: str = "medium") -> RuleText:
    """The rule's heading, severity and reason (a rule the audit no longer knows keeps the
    severity stored with its findings)."""
    spec = audit.RULES.get(rule)
    if spec is None:
        return RuleText(shown(rule, 60), severity, "")
    return RuleText(RULE_TITLES.get(rule, spec.finds[:1].upper() + spec.finds[1:]),
                    spec.severity, spec.reason)


def _rank(severity: str, rule: str) -> tuple[int, int, str]:
    order = audit.SEVERITIES
    rules = audit.RULE_IDS
    return (order.index(severity) if severity in order else len(order),
            rules.index(rule) if rule in rules else len(rules), rule)


def action_for(rule: str, source: str, kind: str, record_type: str, external_id: str,
               email: str, last_sync: datetime | None = None) -> str:
    """What to do about one finding, in the words of the audit's rule."""
    spec = audit.RULES.get(rule)
    if spec is None:
        return f"review {record_type or 'record'} {external_id} in {source_label(source)}"
    return audit._action(spec, kind, source, record_type, external_id, email, last_sync)


def list_command(rule: str) -> str:
    """The command that lists every finding of a rule."""
    return f"privacy-ledger audit --rule {rule}"


# --------------------------------------------------------------------------- the data


@dataclass(frozen=True)
class Headline:
    people: int
    systems: int
    open: int
    new: int
    resolved: int
    acknowledged: int


@dataclass(frozen=True)
class MatrixRow:
    """One system: records held, people held, and people held per category."""

    source: str
    label: str
    records: int
    people: int
    counts: tuple[int, ...]


@dataclass(frozen=True)
class FindingItem:
    """One finding: the record it is about, what to do in the owner's words, and the
    pages where it is done."""

    source: str
    record_type: str
    external_id: str
    email: str
    action: str
    detail: str
    first_detected: datetime
    links: tuple[Link, ...] = ()
    title: str = ""
    severity: str = ""
    # `privacy-ledger fix …` for this one finding; empty when its rule has no fix.
    fix_command: str = ""


@dataclass(frozen=True)
class RuleGroup:
    rule: str
    title: str
    severity: str
    reason: str
    total: int
    items: tuple[FindingItem, ...]
    more: int
    list_command: str
    # The one command that fixes every finding of the rule; empty when it has no fix.
    fix_command: str = ""


@dataclass(frozen=True)
class RuleCount:
    rule: str
    title: str
    severity: str
    new: int
    open: int
    acknowledged: int
    resolved: int


@dataclass(frozen=True)
class SyncHealth:
    """One system's sync: `state` is failed, never, stale or ok (problems first)."""

    source: str
    label: str
    state: str
    last_success: datetime | None
    last_failure: datetime | None
    last_error: str
    records_seen: int | None
    # A sync of it was still running when the digest was made: what it says predates it.
    syncing_since: datetime | None = None

    @property
    def problem(self) -> bool:
        return self.state != "ok"


@dataclass(frozen=True)
class DeliveryProblem:
    """An earlier email that did not go through at the first try."""

    subject: str
    created_at: datetime
    attempts: int
    last_error: str
    delivered_at: datetime | None


@dataclass(frozen=True)
class JobProblem:
    """A scheduled job that failed or was missed since the last email."""

    at: datetime
    job: str
    what: str


@dataclass(frozen=True)
class Digest:
    generated_at: datetime
    since: datetime
    timezone: str
    headline: Headline
    categories: tuple[str, ...]
    matrix: tuple[MatrixRow, ...]
    new_by_rule: tuple[RuleGroup, ...]
    rule_counts: tuple[RuleCount, ...]
    sync: tuple[SyncHealth, ...]
    delivery_problems: tuple[DeliveryProblem, ...]
    # The systems with open findings, as the subject line names them.
    open_systems: tuple[str, ...] = field(default=())
    job_problems: tuple[JobProblem, ...] = field(default=())
    # The audit trail's head when the email was made: noted outside the ledger, it shows
    # later whether entries were removed or rewritten (verify-log --expect).
    trail_head: trail.Anchor | None = None
    # The configured sources the ledger is blind to (blind_spots); None: every problem.
    blind: tuple[SyncHealth, ...] | None = None
    # When the previous digest was queued; None for the first email.
    previous: datetime | None = None
    # On a day with nothing new: the oldest open findings, and how many more are open.
    still_open: tuple[FindingItem, ...] = field(default=())
    still_open_more: int = 0
    # Open access and erasure requests, the soonest due first (daemon/requests.py).
    requests: tuple[RequestView, ...] = field(default=())

    def days_left(self, request: RequestView) -> int:
        return request.days_left(self.generated_at.date())

    @property
    def due_soon(self) -> tuple[RequestView, ...]:
        """Requests due within 7 days (or overdue): the email lists them first."""
        return tuple(r for r in self.requests if self.days_left(r) <= DUE_SOON.days)

    @property
    def due_later(self) -> tuple[RequestView, ...]:
        return tuple(r for r in self.requests if self.days_left(r) > DUE_SOON.days)
    # Each shop's own clean-up next to [retention] (daemon/policy.py), when [policy] is set.
    shops: tuple[policy.ShopSetting, ...] = field(default=())
    # What a shop's key could not read (plugins, settings, clean-up), with the permission.
    shops_unread: tuple[str, ...] = field(default=())

    @property
    def sync_problems(self) -> tuple[SyncHealth, ...]:
        if self.blind is not None:
            return self.blind
        return tuple(s for s in self.sync if s.problem)

    @property
    def first(self) -> bool:
        """No digest was sent before this one: nothing may speak of a previous email."""
        return self.previous is None

    @property
    def still_syncing(self) -> tuple[SyncHealth, ...]:
        return tuple(s for s in self.sync if s.syncing_since is not None)

    @property
    def verdict(self) -> str:
        """blind (a system not synced), action (open findings) or well."""
        if self.sync_problems:
            return "blind"
        return "action" if self.headline.open else "well"

    @property
    def matrix_max(self) -> int:
        return max((c for row in self.matrix for c in row.counts), default=0)


# --------------------------------------------------------------------------- text safety

_BIDI = dict.fromkeys(map(ord, "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e"
                                "\u2066\u2067\u2068\u2069"), "\ufffd")


def shown(value: object, limit: int = 120) -> str:
    """A value from upstream made safe to show in one line: bidi overrides and controls
    replaced (they could reorder what the owner reads), whitespace collapsed, length capped."""
    if value is None:
        return ""
    text = str(value).translate(_BIDI)
    text = "".join(" " if unicodedata.category(c) == "Cc" else c for c in text)
    text = re.sub(r"\s+", " ", text).strip()
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def source_label(name: str, label: str | None = None) -> str:
    """woo:allmyink → allmyink, stripe → Stripe, mailchimp:abc → Mailchimp “Newsletter”
    (the audience's name, when the ledger has it; else its id), wp:blog → WordPress blog."""
    named = system_name(name)
    rest = name.partition(":")[2]
    if named is None:
        return shown(name, 60)
    if named.bare:
        return shown(rest, 60)
    if label and shown(label, 40):
        return f"{named.title} “{shown(label, 40)}”"
    return f"{named.title} {shown(rest, 40)}".strip()


def system_order(name: str) -> tuple[int, str]:
    """In the order the systems are named (shops, Stripe, Mailchimp, WordPress), each by
    name."""
    named = system_name(name)
    return (SYSTEM_NAMES.index(named) if named else len(SYSTEM_NAMES), name)


def _system(name: str) -> str:
    """The system as the subject line names it: the shop, or the system whose sources are
    one account to the owner (Mailchimp), or the source."""
    named = system_name(name)
    return named.title if named is not None and named.one_account else source_label(name)


# --------------------------------------------------------------------------- links

LinkMaker = Callable[[str, "str | None", str, str, "str | None"], tuple[Link, ...]]


@dataclass(frozen=True)
class AdminPlaces:
    """Where the email's links point, built by each configured system from its configured
    addresses (never an address an upstream supplied): by source name, or by the prefix of
    a family of sources (`mailchimp:`)."""

    makers: tuple[tuple[str, LinkMaker], ...] = ()

    def maker(self, source: str) -> LinkMaker | None:
        return next((make for key, make in self.makers
                     if source == key or (key.endswith(":") and source.startswith(key))), None)


def admin_places(settings: Settings | None) -> AdminPlaces:
    """The places of these settings' systems (each system's own link maker)."""
    return AdminPlaces() if settings is None else AdminPlaces(tuple(settings.link_makers()))


def links_for(places: AdminPlaces, source: str, label: str | None, record_type: str,
              external_id: str, parent_id: str | None = None) -> tuple[Link, ...]:
    """The pages where the owner acts on one record (the shop's order screen, the Stripe
    customer, the Mailchimp audience, the WordPress comment); the system checks each id for
    its upstream's shape, and one that does not fit gets no link."""
    make = places.maker(source)
    if make is None:
        return ()
    return make(source, shown(label, 40) if label else None, record_type, external_id,
                parent_id)


# --------------------------------------------------------------------------- queries


def _acknowledged(now: datetime) -> Any:
    return and_(Finding.acknowledged_at.is_not(None),
                or_(Finding.ack_until.is_(None), Finding.ack_until > now))


def _previous_digest(session: Session, now: datetime) -> datetime | None:
    return session.scalar(select(func.max(OutboxMessage.created_at)).where(
        OutboxMessage.kind == DIGEST_KIND, OutboxMessage.created_at < now))


def _headline_counts(session: Session) -> tuple[int, int]:
    live = select(Source.id).where(Source.gone_at.is_(None)).scalar_subquery()
    people = session.scalar(
        select(func.count(distinct(Holding.subject_id)))
        .where(Holding.gone_at.is_(None), Holding.source_id.in_(live),
               Holding.subject_id.is_not(None))) or 0
    systems = session.scalar(select(func.count(Source.id)).where(Source.gone_at.is_(None))) or 0
    return people, systems


def _people_with(session: Session, source_id: int, texts: Sequence[str] | None) -> int:
    """People with a live holding in the source whose categories text is one of `texts`
    (None: any)."""
    query = (select(func.count(distinct(Holding.subject_id)))
             .where(Holding.source_id == source_id, Holding.gone_at.is_(None)))
    if texts is not None:
        query = query.where(Holding.categories.in_(texts))
    return session.scalar(query) or 0


def _matrix(session: Session) -> tuple[tuple[str, ...], tuple[MatrixRow, ...]]:
    """Records and people per live source, and people per category held.

    A source holds few distinct category texts (a shop's orders share one or two), so one
    grouped pass finds them, and a category's people are counted over the texts that hold
    it — one distinct count per set of texts, shared by the categories every text holds —
    rather than a distinct count of every category over every row (many times slower at
    millions of holdings, and the same numbers)."""
    everything = [str(c) for c in Category]
    sources = session.execute(select(Source.id, Source.name, Source.label)
                              .where(Source.gone_at.is_(None))).all()
    texts: dict[int, dict[str, int]] = {}
    # Read from ix_holdings_live alone (live holdings by source, categories and person).
    for source_id, text, records in session.execute(
            select(Holding.source_id, Holding.categories, func.count())
            .where(Holding.gone_at.is_(None))
            .group_by(Holding.source_id, Holding.categories)):
        texts.setdefault(source_id, {})[text] = records
    rows = []
    for source_id, name, label in sources:
        held = texts.get(source_id, {})
        counted: dict[frozenset[str], int] = {}

        def people(with_texts: frozenset[str], source_id: int = source_id,
                   held: dict[str, int] = held, counted: dict[frozenset[str], int] = counted
                   ) -> int:
            if not with_texts:
                return 0
            if with_texts not in counted:
                every = len(with_texts) == len(held)
                counted[with_texts] = _people_with(session, source_id,
                                                   None if every else sorted(with_texts))
            return counted[with_texts]

        per_category = [people(frozenset(text for text in held
                                         if category in categories_of(text)))
                        for category in everything]
        rows.append((name, sum(held.values()), people(frozenset(held)), per_category, label))
    rows.sort(key=lambda row: system_order(row[0]))
    used = [i for i, _ in enumerate(everything) if any(row[3][i] for row in rows)]
    categories = tuple(everything[i] for i in used)
    matrix = tuple(
        MatrixRow(source=shown(name, 80), label=source_label(name, label), records=records,
                  people=people_count, counts=tuple(counts[i] for i in used))
        for name, records, people_count, counts, label in rows
    )
    return categories, matrix


def _rule_counts(session: Session, now: datetime, since: datetime) -> tuple[RuleCount, ...]:
    acked = _acknowledged(now)
    unresolved = Finding.resolved_at.is_(None)

    def count_where(condition: Any) -> Any:
        return func.sum(case((condition, 1), else_=0))

    rows = session.execute(
        select(Finding.rule, func.max(Finding.severity),
               count_where(and_(unresolved, ~acked, Finding.first_detected >= since)),
               count_where(and_(unresolved, ~acked)),
               count_where(and_(unresolved, acked)),
               count_where(Finding.resolved_at >= since))
        .group_by(Finding.rule)
    ).all()
    counts = []
    for rule, severity, new, open_, acknowledged, resolved in rows:
        if not (new or open_ or acknowledged or resolved):
            continue
        text = rule_text(rule, severity)
        counts.append(RuleCount(rule=rule, title=text.title, severity=text.severity,
                                new=int(new or 0), open=int(open_ or 0),
                                acknowledged=int(acknowledged or 0), resolved=int(resolved or 0)))
    counts.sort(key=lambda c: _rank(c.severity, c.rule))
    return tuple(counts)


def _finding_query() -> Any:
    source_id = func.coalesce(Finding.source_id, Holding.source_id)
    subject_id = func.coalesce(Finding.subject_id, Holding.subject_id)
    return (
        select(Finding.rule, Finding.first_detected, Finding.detail, Source.name, Source.kind,
               Holding.record_type, Holding.external_id, Subject.email, Source.label,
               Holding.parent_id, Finding.severity)
        .select_from(Finding)
        .outerjoin(Holding, Holding.id == Finding.holding_id)
        .outerjoin(Source, Source.id == source_id)
        .outerjoin(Subject, Subject.id == subject_id)
    )


def _finding_item(row: Any, last_success: dict[str, datetime | None],
                  places: AdminPlaces) -> FindingItem:
    """One row of _finding_query as the email shows it."""
    (rule, first, detail, source, kind, record_type, external_id, email, label, parent,
     severity) = row
    name = shown(source, 80)
    ident, address, what = shown(external_id, 60), shown(email, 80), shown(record_type, 40)
    # The audit's words name an audience by the part after the colon: give it the name.
    named = system_name(source or "")
    words_source = (f"{named.prefix}:“{shown(label, 40)}”"
                    if named is not None and named.one_account and label and shown(label, 40)
                    else name)
    text = rule_text(rule, severity or "medium")
    return FindingItem(
        source=source_label(source or "", label), record_type=what, external_id=ident,
        email=address, detail=shown(detail, 200), first_detected=first,
        action=shown(action_for(rule, words_source, kind or "", what, ident, address,
                                last_success.get(name)), 300),
        links=links_for(places, source or "", label, record_type or "", external_id or "",
                        parent),
        title=text.title, severity=text.severity,
        fix_command=shown(fix_command(rule, source, external_id) or "", 300))


def _new_groups(session: Session, counts: Sequence[RuleCount], now: datetime,
                since: datetime, cap: int,
                last_success: dict[str, datetime | None],
                places: AdminPlaces = AdminPlaces()) -> tuple[RuleGroup, ...]:
    groups = []
    for count in counts:
        if not count.new:
            continue
        rows = session.execute(
            _finding_query()
            .where(Finding.rule == count.rule, Finding.resolved_at.is_(None),
                   ~_acknowledged(now), Finding.first_detected >= since)
            .order_by(Finding.first_detected, Finding.id)
            .limit(cap)
        ).all()
        items = [_finding_item(row, last_success, places) for row in rows]
        groups.append(RuleGroup(rule=count.rule, title=count.title, severity=count.severity,
                                reason=rule_text(count.rule, count.severity).reason,
                                total=count.new, items=tuple(items),
                                more=max(0, count.new - len(items)),
                                list_command=list_command(count.rule),
                                fix_command=fix_all_command(count.rule) or ""))
    return tuple(groups)


def _still_open(session: Session, now: datetime, since: datetime, cap: int,
                last_success: dict[str, datetime | None],
                places: AdminPlaces) -> tuple[tuple[FindingItem, ...], int]:
    """The oldest `cap` findings still open from before `since`, and how many more there are."""
    still = and_(Finding.resolved_at.is_(None), ~_acknowledged(now),
                 Finding.first_detected < since)
    rows = session.execute(_finding_query().where(still)
                           .order_by(Finding.first_detected, Finding.id).limit(cap)).all()
    total = session.scalar(select(func.count(Finding.id)).where(still)) or 0
    items = tuple(_finding_item(row, last_success, places) for row in rows)
    return items, max(0, total - len(items))


def _is_shop(name: str) -> bool:
    named = system_name(name)
    return named is not None and named.bare


def _open_systems(session: Session, now: datetime) -> tuple[str, ...]:
    """The subject line's list: the shop with most open findings, "N more shops", then
    Stripe and Mailchimp."""
    source_id = func.coalesce(Finding.source_id, Holding.source_id)
    rows = session.execute(
        select(Source.name, func.count(Finding.id))
        .select_from(Finding)
        .outerjoin(Holding, Holding.id == Finding.holding_id)
        .join(Source, Source.id == source_id)
        .where(Finding.resolved_at.is_(None), ~_acknowledged(now))
        .group_by(Source.name)
    ).all()
    open_count = {name: count for name, count in rows}
    shops = sorted((name for name in open_count if _is_shop(name)),
                   key=lambda name: (-open_count[name], name))
    names: list[str] = []
    if shops:
        names.append(source_label(shops[0]))
        if len(shops) > 1:
            more = len(shops) - 1
            names.append(f"{more} more shop{'s' if more > 1 else ''}")
    others = {(system_order(name)[0], _system(name)) for name in open_count
              if not _is_shop(name)}
    names.extend(name for _, name in sorted(others))
    return tuple(names)


_STATE_ORDER = {"failed": 0, "never": 1, "stale": 2, "ok": 3}


def _sync_health(session: Session, now: datetime, stale_after: timedelta,
                 configured: Sequence[str]) -> tuple[SyncHealth, ...]:
    health = []
    sources = session.execute(select(Source.id, Source.name, Source.label)
                              .where(Source.gone_at.is_(None)).order_by(Source.name)).all()
    for source_id, name, label in sources:
        success = session.execute(
            select(SyncRun.finished_at, SyncRun.records_seen)
            .where(SyncRun.source_id == source_id, SyncRun.status == "success",
                   SyncRun.mode.in_(audit.PULL_MODES))
            .order_by(SyncRun.finished_at.desc()).limit(1)).first()
        failure = session.execute(
            select(func.coalesce(SyncRun.finished_at, SyncRun.started_at), SyncRun.error)
            .where(SyncRun.source_id == source_id, SyncRun.status == "failed")
            .order_by(func.coalesce(SyncRun.finished_at, SyncRun.started_at).desc())
            .limit(1)).first()
        syncing = session.scalar(
            select(func.min(SyncRun.started_at))
            .where(SyncRun.source_id == source_id, SyncRun.status == "running"))
        last_ok = success[0] if success else None
        last_failed = failure[0] if failure else None
        if last_failed is not None and (last_ok is None or last_failed > last_ok):
            state = "failed"
        elif last_ok is None:
            state = "never"
        elif now - last_ok > stale_after:
            state = "stale"
        else:
            state = "ok"
        health.append(SyncHealth(
            source=shown(name, 80), label=source_label(name, label), state=state,
            last_success=last_ok,
            last_failure=last_failed, last_error=shown(failure[1] if failure else "", 300),
            records_seen=success[1] if success else None, syncing_since=syncing))
    known = [name for _, name, _ in sources]
    for name in configured:
        if not any(k == name or k.startswith(f"{name}:") for k in known):
            health.append(SyncHealth(source=shown(name, 80), label=source_label(name),
                                     state="never",
                                     last_success=None, last_failure=None, last_error="",
                                     records_seen=None))
    health.sort(key=lambda h: (_STATE_ORDER[h.state], system_order(h.source)))
    return tuple(health)


def _configured(name: str, configured: Sequence[str]) -> bool:
    return any(name == c or name.startswith(f"{c}:") for c in configured)


def _blind_spots(session: Session, now: datetime, stale_after: timedelta,
                 configured: Sequence[str]) -> tuple[SyncHealth, ...]:
    return tuple(h for h in _sync_health(session, now, stale_after, configured)
                 if h.problem and _configured(h.source, configured))


def blind_spots(ledger: Ledger, configured: Sequence[str], *,
                stale_after: timedelta = DEFAULT_STALE_AFTER,
                now: datetime | None = None) -> tuple[SyncHealth, ...]:
    """The configured sources whose data the ledger cannot vouch for: never synced, last
    sync failed, or no successful sync for longer than `stale_after` (a stopped run is
    neither). Every surface that shows the ledger's results (where, audit, export, the
    email) names these above them."""
    with ledger.sessions() as session:
        return _blind_spots(session, now or utcnow(), stale_after, configured)


def blind_spots_for(ledger: Ledger, settings: Settings,
                    now: datetime | None = None) -> tuple[SyncHealth, ...]:
    """blind_spots for the configured sources and stale period of these settings."""
    return blind_spots(ledger, settings.source_names, stale_after=settings.retention.sync_stale,
                       now=now)


def _when(moment: datetime | None, zone: tzinfo) -> str:
    if moment is None:
        return "never"
    local = moment.astimezone(zone)
    return f"{local:%Y-%m-%d %H:%M} {local.tzname()}"


def blind_spot_text(spot: SyncHealth, zone: tzinfo, results: str = "these results") -> str:
    """One sentence naming a blind spot, for above the results it leaves out."""
    name = spot.label if spot.label.lower() == spot.source.lower() else \
        f"{spot.label} ({spot.source})"
    if spot.state == "never":
        why = "it has never been read"
    elif spot.state == "failed":
        why = f"its last sync failed at {_when(spot.last_failure, zone)}: " \
              f"{spot.last_error or 'no reason recorded'}"
        if spot.last_success is not None:
            why += f" (last complete read {_when(spot.last_success, zone)})"
    else:
        why = f"it has not been read since {_when(spot.last_success, zone)}"
    return f"{results} leave out {name}: {why}"


def _delivery_problems(session: Session, since: datetime) -> tuple[DeliveryProblem, ...]:
    rows = session.execute(
        select(OutboxMessage.subject, OutboxMessage.created_at, OutboxMessage.attempts,
               OutboxMessage.last_error, OutboxMessage.sent_at)
        .where(OutboxMessage.attempts > 0, OutboxMessage.last_error.is_not(None),
               or_(OutboxMessage.status != "sent", OutboxMessage.sent_at >= since))
        .order_by(OutboxMessage.created_at).limit(20)
    ).all()
    return tuple(DeliveryProblem(subject=shown(subject, 120), created_at=created,
                                 attempts=attempts, last_error=shown(error, 300),
                                 delivered_at=sent)
                 for subject, created, attempts, error, sent in rows)


def _job_problems(session: Session, since: datetime) -> tuple[JobProblem, ...]:
    """Jobs the daemon recorded as failed or missed in the trail since `since`."""
    rows = session.execute(
        select(AuditLogEntry.at, AuditLogEntry.action, AuditLogEntry.detail)
        .where(AuditLogEntry.action.in_(("job_error", "job_missed")),
               AuditLogEntry.at >= since)
        .order_by(AuditLogEntry.id).limit(20)
    ).all()
    problems = []
    for at, action, detail in rows:
        data = json.loads(detail or "{}")
        what = (f"failed: {data.get('error_type', 'error')}: {data.get('error', '')}"
                if action == "job_error" else "missed its scheduled time")
        problems.append(JobProblem(at=at, job=shown(data.get("job", "?"), 60),
                                   what=shown(what, 300)))
    return tuple(problems)


def build_digest(ledger: Ledger, *, now: datetime | None = None, since: datetime | None = None,
                 cap_per_rule: int = DEFAULT_CAP, timezone: str = "UTC",
                 stale_after: timedelta = DEFAULT_STALE_AFTER,
                 configured_sources: Sequence[str] = (),
                 places: AdminPlaces | None = None,
                 retention: RetentionSettings | None = None) -> Digest:
    """Everything the morning email says, from the ledger. `since` defaults to when the
    previous digest was queued (or 24 hours ago); `configured_sources` names sources from the
    config so that one never synced still shows; `places` are the configured addresses the
    findings link to (none: no links)."""
    places = places or AdminPlaces()
    now = now or utcnow()
    if cap_per_rule < 1:
        raise ValueError(f"cap_per_rule must be at least 1, not {cap_per_rule}")
    ZoneInfo(timezone)
    with ledger.sessions() as session:
        previous = _previous_digest(session, now)
        if since is None:
            since = previous or now - DEFAULT_WINDOW
        people, systems = _headline_counts(session)
        categories, matrix = _matrix(session)
        counts = _rule_counts(session, now, since)
        health = _sync_health(session, now, stale_after, configured_sources)
        blind = _blind_spots(session, now, stale_after, configured_sources) \
            if configured_sources else None
        last_success = {h.source: h.last_success for h in health}
        groups = _new_groups(session, counts, now, since, cap_per_rule, last_success, places)
        still_open, still_more = ((), 0) if any(c.new for c in counts) else \
            _still_open(session, now, since, STILL_OPEN_CAP, last_success, places)
        delivery = _delivery_problems(session, since)
        jobs = _job_problems(session, since)
        open_systems = _open_systems(session, now)
        trail_head = trail.head(session)
        register = open_requests(session)
        shops = tuple(policy.side_by_side(session, retention)) if retention else ()
        unread = tuple(shown(line, 400) for line in policy.unread_parts(session)) \
            if retention else ()
    headline = Headline(people=people, systems=systems,
                        open=sum(c.open for c in counts), new=sum(c.new for c in counts),
                        resolved=sum(c.resolved for c in counts),
                        acknowledged=sum(c.acknowledged for c in counts))
    return Digest(generated_at=now, since=since, timezone=timezone, headline=headline,
                  categories=categories, matrix=matrix, new_by_rule=groups, rule_counts=counts,
                  sync=health, delivery_problems=delivery, open_systems=open_systems,
                  job_problems=jobs, trail_head=trail_head, blind=blind, previous=previous,
                  still_open=still_open, still_open_more=still_more, requests=register,
                  shops=shops, shops_unread=unread)


# --------------------------------------------------------------------------- rendering


def columns(text: str) -> int:
    """The columns a string takes on a terminal: wide (East Asian) characters two,
    combining marks none."""
    return sum(0 if unicodedata.combining(c) else
               2 if unicodedata.east_asian_width(c) in ("W", "F") else 1 for c in text)


def ljust(text: object, width: int) -> str:
    """Padded on the right to `width` columns (by columns, not characters)."""
    value = str(text)
    return value + " " * max(0, width - columns(value))


def rjust(text: object, width: int) -> str:
    """Padded on the left to `width` columns: numbers line up on their last digit."""
    value = str(text)
    return " " * max(0, width - columns(value)) + value


def _cut(word: str, room: int) -> list[str]:
    """A word too long for a line, in pieces of at most `room` columns."""
    pieces, piece = [], ""
    for char in word:
        if piece and columns(piece + char) > room:
            pieces.append(piece)
            piece = ""
        piece += char
    return [*pieces, piece] if piece else pieces


def wrap_text(text: object, indent: str = "", first: str | None = None,
              links: bool = False, width: int = TEXT_WIDTH) -> str:
    """Text in lines of at most `width` columns, the first starting with `first` (default
    `indent`), the others with `indent`; a word too long for a line is cut. With `links`,
    a URL (one the email built) is never cut, as a cut one cannot be followed: it starts
    a line of its own when it does not fit, indented less when it needs the room."""
    lead = indent if first is None else first
    lines: list[str] = []
    line, empty = lead, True
    for word in str(text).split():
        room = width - columns(indent)
        if columns(word) > room and not (links and re.match(r"https?://", word)):
            pieces = _cut(word, room)
        else:
            pieces = [word]
        for piece in pieces:
            if not empty and columns(line) + 1 + columns(piece) > width:
                lines.append(line)
                line, empty = indent, True
            if empty and columns(line) + columns(piece) > width:
                line = line[:max(0, width - columns(piece))]
            line = line + piece if empty else f"{line} {piece}"
            empty = False
    lines.append(line.rstrip() if empty else line)
    return "\n".join(lines)

# Blues from light to dark for the heat table; card numbers are always red.
_HEAT = ("#f4f8fc", "#dbe9f6", "#bcd7ee", "#8fbfe0", "#5a9fd0", "#2e7bbf", "#125a9c")


def heat_style(count: int, largest: int, category: str = "") -> str:
    """Inline CSS for one matrix cell, shaded by count on a log scale."""
    if count and category == Category.CARD_NUMBER:
        return "background:#c62828;color:#ffffff;font-weight:bold"
    if not count or not largest:
        return "background:#ffffff;color:#b0b7bf"
    level = max(1, math.ceil((len(_HEAT) - 1) * math.log1p(count) / math.log1p(largest)))
    colour = _HEAT[min(level, len(_HEAT) - 1)]
    return f"background:{colour};color:{'#ffffff' if level >= 4 else '#1b2733'}"


def _environment(zone: tzinfo) -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(enabled_extensions=("html",), default_for_string=True,
                                     default=False),
        undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True,
        keep_trailing_newline=True,
    )

    def local(moment: datetime | None, fmt: str = "%a %d %b %Y %H:%M") -> str:
        if moment is None:
            return "never"
        shown_at = moment.astimezone(zone)
        # A time of day needs its zone to be read right; a date alone does not.
        zone_name = f" {shown_at.tzname()}" if "%H" in fmt else ""
        return f"{shown_at.strftime(fmt)}{zone_name}"

    def ago(moment: datetime | None, now: datetime) -> str:
        if moment is None:
            return "never"
        seconds = max(0, int((now - moment).total_seconds()))
        for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
            if seconds >= size:
                amount = seconds // size
                return f"{amount} {unit}{'s' if amount != 1 else ''} ago"
        return "just now"

    def plural(count: int, word: str, many: str | None = None) -> str:
        return f"{count:,} {word if count == 1 else many or word + 's'}"

    env.filters.update(local=local, ago=ago, label=lambda c: str(c).replace("_", " "),
                       wrap=wrap_text, ljust=ljust, rjust=rjust,
                       capitalize_first=lambda s: s[:1].upper() + s[1:],
                       blind_text=lambda spot: blind_spot_text(spot, zone, "this email's figures"))
    env.globals.update(heat=heat_style, plural=plural, width=TEXT_WIDTH)
    return env


def _one_line(text: str) -> str:
    """A header-safe subject: one line, no controls, no more than 250 characters."""
    return shown(text, 250)


def render(digest: Digest) -> RenderedEmail:
    """The digest as an email: subject, plain-text part and HTML part."""
    env = _environment(ZoneInfo(digest.timezone))
    context = {"d": digest, "now": digest.generated_at}
    subject = _one_line(env.get_template("digest.subject.txt").render(context))
    text = env.get_template("digest.txt").render(context)
    html = env.get_template("digest.html").render(context)
    return RenderedEmail(subject=subject, text=text, html=html)


def render_digest(ledger: Ledger, settings: Settings | None = None,
                  now: datetime | None = None) -> RenderedEmail:
    """The morning email for these settings (time zone, stale period, list cap, configured
    sources); defaults when settings is None. The demo and the CLI call this."""
    return render(digest_for(ledger, settings, now))


def digest_for(ledger: Ledger, settings: Settings | None = None,
               now: datetime | None = None) -> Digest:
    """build_digest with its parameters taken from the settings."""
    if settings is None:
        return build_digest(ledger, now=now)
    report = settings.report
    return build_digest(
        ledger, now=now, timezone=settings.timezone,
        stale_after=settings.retention.sync_stale,
        cap_per_rule=report.max_per_rule if report else DEFAULT_CAP,
        configured_sources=settings.source_names, places=admin_places(settings),
        retention=settings.retention if settings.policy is not None else None,
    )
