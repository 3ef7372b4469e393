"""The retention audit: the policy's rules as set-based queries over the ledger, and the
findings they keep up to date (new, ongoing, resolved; acknowledged by the owner).

Each rule is a small named unit: its id (stable: it appears in JSON and in the email), a
severity, the [retention] parameter it reads, a one-line reason citing the GDPR principle it
serves, what the owner should do, and one SELECT over the ledger that runs unchanged on
SQLite and PostgreSQL. Thresholds are computed here (`now - period`) and bound as
parameters; no rule loops over rows in Python. A holding that is gone, and every holding of
a source that is gone, never matches.

What each rule means, exactly ("older than the period" is `date < now - period`):

- inactive-account: a live shop account (woo customer, not anonymised) whose last activity
  (wc_last_active, else its creation) is older than `inactive_accounts`, and with no order in
  the same shop — linked by customer id or by the same person — created within the period.
- order-past-retention: a live, not anonymised order, completed (`completed_orders`) or
  refunded (`refunded_orders`), created before its period — the order's creation date, as
  WooCommerce's own "anonymise completed orders" cleanup counts it.
- unpaid-order-past-retention: a live, not anonymised order that is pending, failed,
  cancelled, on-hold or in the trash, created before its status's period.
- network-data-past-retention: a live order still holding an IP address or user agent,
  created before `network_data`.
- processor-copy-orphaned: a live Stripe customer or Mailchimp member, itself older than
  `processor_copies`, of a person whom no shop holds (no live, not anonymised shop record)
  and whom no shop let go within that grace (gone, or anonymised, within it) — provided the
  person was a shop's customer: the ledger saw a shop record of them, or Stripe holds them
  (payments come from the shops), or the member is "transactional" (Mailchimp for
  WooCommerce's buyers without newsletter consent). A person only ever subscribed to the
  newsletter holds their own consent and is not a processor copy. A live order inside its
  retention period is a shop holding, so it keeps the copies justified; an order past it is
  order-past-retention's finding, and its copies follow it.
- stripe-customer-inactive: a live Stripe customer created before `stripe_customers` with no
  charge (by customer id, or of the same person) created within the period.
- mailchimp-contact-retained: a live Mailchimp member unsubscribed, cleaned or archived whose
  last change is older than `mailchimp_contacts`.
- card-number-exposed: any live holding with the card_number category (no period).
- sync-stale: a live source whose last successful pull (incremental or full) finished before
  `sync_stale`, or that never succeeded and was created before it.

Findings live across runs, one per (rule, target): new ones are inserted; ones still true get
`last_detected`; ones no longer true get `resolved_at`. A resolved finding that comes back is
re-opened as new (first_detected moves to now, a former acknowledgement is dropped: it was
given for the situation that ended). Status when listed: "acknowledged" while an
acknowledgement holds (no end, or its end is still ahead), else "new" when only the latest
audit that saw it has seen it (first_detected == last_detected), else "open".
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, tzinfo
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    Column,
    ColumnElement,
    Integer,
    MetaData,
    Select,
    String,
    Table,
    and_,
    case,
    cast,
    exists,
    false,
    func,
    insert,
    literal,
    literal_column,
    null,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.orm import Session, aliased

from daemon import fix_words, requests, trail
from daemon import policy as promises
from daemon.ledger import Finding, Holding, Ledger, Source, Subject, SyncRun, UTCDateTime
from daemon.policy import Promises
from vocabulary import (
    COMMENT,
    CUSTOMER,
    MAILCHIMP,
    MEMBER,
    ORDER,
    STRIPE,
    SYSTEM_NAMES,
    USER,
    WOOCOMMERCE,
    WORDPRESS,
    format_duration,
    system_name,
    utcnow,
)

if TYPE_CHECKING:
    from daemon.config import PolicySettings, RetentionSettings

SEVERITIES = ("high", "medium", "low")
STATUSES = ("new", "open", "acknowledged")

COMPLETED_STATUSES = {"completed": "completed_orders", "refunded": "refunded_orders"}
UNPAID_STATUSES = {"pending": "pending_orders", "failed": "failed_orders",
                   "cancelled": "cancelled_orders", "on-hold": "on_hold_orders",
                   "trash": "trashed_orders"}
RETAINED_CONTACT_STATUSES = ("unsubscribed", "cleaned", "archived")
# Mailchimp for WooCommerce adds buyers without newsletter consent as "transactional".
SHOP_ONLY_CONTACT_STATUSES = ("transactional",)
PULL_MODES = ("incremental", "full")


class AuditError(Exception):
    """Bad input to the audit (an unknown rule, source or finding); the message names it."""


class UnknownRuleError(AuditError):
    pass


class UnknownSourceError(AuditError):
    pass


class FindingNotFoundError(AuditError):
    pass


def format_period(period: timedelta) -> str:
    """A period as the config writes it: 6y, 18mo, 90d, 12h, 30min, 45s."""
    return format_duration(period)


def _text(value: str) -> ColumnElement[str]:
    """A constant string inlined into the SQL (own text only), so that it can be concatenated
    and inserted on both databases without parameter type guessing."""
    return literal_column("'" + value.replace("'", "''") + "'", String)


def _at(moment: datetime) -> ColumnElement[datetime]:
    return literal(moment, UTCDateTime())


def _age(record: Any) -> ColumnElement[Any]:
    """When a record came to be: its upstream creation time, else when the ledger first saw it."""
    return func.coalesce(record.created_at, record.first_seen)


def _period(policy: Any, parameter: str) -> timedelta:
    value = getattr(policy, parameter)
    if not isinstance(value, timedelta):
        raise AuditError(f"retention.{parameter}: {value!r} is not a period")
    if value < timedelta(0):
        raise AuditError(f"retention.{parameter}: {format_period(value)} is negative: a period "
                         "must be zero or more")
    return value


def _holding_rows(detail: ColumnElement[str]) -> Select[Any]:
    """The columns every holding rule returns, over live holdings of live sources."""
    target = _text("holding:") + cast(Holding.id, String)
    return (select(target.label("target"), Holding.id.label("holding_id"),
                   Holding.subject_id.label("subject_id"),
                   Holding.source_id.label("source_id"), detail.label("detail"))
            .select_from(Holding).join(Source, Source.id == Holding.source_id)
            .where(Holding.gone_at.is_(None), Source.gone_at.is_(None)))


def _per_status(policy: Any, now: datetime, periods: Mapping[str, str],
                suffix: str = "") -> tuple[ColumnElement[bool], ColumnElement[str]]:
    """`status = s AND created < now - period(s)` for each status, and a detail per status."""
    conditions = []
    details = []
    for status, parameter in periods.items():
        period = _period(policy, parameter)
        conditions.append(and_(Holding.status == status, _age(Holding) < now - period))
        label = "trashed" if status == "trash" else status
        details.append((Holding.status == status,
                        _text(f"{label} order older than {format_period(period)} "
                              f"({parameter}){suffix}")))
    return or_(*conditions), case(*details, else_=_text(f"order past its period{suffix}"))


def _inactive_account(policy: Any, now: datetime, dialect: str | None) -> Select[Any]:
    period = _period(policy, "inactive_accounts")
    threshold = now - period
    order = aliased(Holding)
    recent_order = [order.source_id == Holding.source_id, order.record_type == "order",
                    _age(order) >= threshold]
    return _holding_rows(_text(f"no order and no activity for more than "
                               f"{format_period(period)}")).where(
        Source.kind == WOOCOMMERCE, Holding.record_type == CUSTOMER,
        Holding.anonymised == false(),
        func.coalesce(Holding.last_activity_at, Holding.created_at, Holding.first_seen)
        < threshold,
        ~exists().where(order.parent_id == Holding.external_id, *recent_order),
        ~exists().where(order.subject_id == Holding.subject_id, *recent_order),
    )


def _order_past_retention(policy: Any, now: datetime, dialect: str | None) -> Select[Any]:
    condition, detail = _per_status(policy, now, COMPLETED_STATUSES, ", not anonymised")
    return _holding_rows(detail).where(
        Source.kind == WOOCOMMERCE, Holding.record_type == ORDER,
        Holding.status.in_(list(COMPLETED_STATUSES)), Holding.anonymised == false(), condition)


def _unpaid_order_past_retention(policy: Any, now: datetime, dialect: str | None) -> Select[Any]:
    condition, detail = _per_status(policy, now, UNPAID_STATUSES)
    return _holding_rows(detail).where(
        Source.kind == WOOCOMMERCE, Holding.record_type == ORDER,
        Holding.status.in_(list(UNPAID_STATUSES)), Holding.anonymised == false(), condition)


def _network_data(policy: Any, now: datetime, kind: str, record_type: str,
                  what: str) -> Select[Any]:
    """Records of one kind still holding an IP address or user agent past network_data."""
    period = _period(policy, "network_data")
    ip = Holding.categories.like("%,ip_address,%")
    agent = Holding.categories.like("%,user_agent,%")
    detail = case(
        (and_(ip, agent), _text("IP address and user agent")),
        (ip, _text("IP address")),
        else_=_text("user agent"),
    ) + _text(f" still stored, {what} older than {format_period(period)}")
    return _holding_rows(detail).where(
        Source.kind == kind, Holding.record_type == record_type, or_(ip, agent),
        _age(Holding) < now - period)


def _network_data_past_retention(policy: Any, now: datetime, dialect: str | None) -> Select[Any]:
    return _network_data(policy, now, WOOCOMMERCE, ORDER, "order")


def _comment_network_data(policy: Any, now: datetime, dialect: str | None) -> Select[Any]:
    return _network_data(policy, now, WORDPRESS, COMMENT, "comment")


# The ledger's own time of a comment's status change (comments have no modified date):
# sync keeps it in modified_at; a comment first seen in spam has been there at least since.
def _comment_kept_deleted(policy: Any, now: datetime, dialect: str | None) -> Select[Any]:
    period = _period(policy, "spam_and_trash_comments")
    detail = case(
        (Holding.status == "trash",
         _text(f"in the trash for more than {format_period(period)}: WordPress's scheduled "
               "delete did not run (WP-Cron)")),
        else_=_text(f"in spam for more than {format_period(period)}: WordPress never deletes "
                    "spam by itself"))
    return _holding_rows(detail).where(
        Source.kind == WORDPRESS, Holding.record_type == COMMENT,
        Holding.status.in_(["spam", "trash"]),
        func.coalesce(Holding.modified_at, Holding.first_seen) < now - period)


# Accounts that run the site are never reported for deletion (nor deleted).
SITE_STAFF_ROLES = ("administrator", "shop_manager", "editor")


def _inactive_site_account(policy: Any, now: datetime, dialect: str | None) -> Select[Any]:
    period = _period(policy, "inactive_accounts")
    threshold = now - period
    comment = aliased(Holding)
    return _holding_rows(_text(f"no sign-up and no comment for more than "
                               f"{format_period(period)}")).where(
        Source.kind == WORDPRESS, Holding.record_type == USER,
        or_(Holding.status.is_(None), Holding.status.not_in(SITE_STAFF_ROLES)),
        func.coalesce(Holding.last_activity_at, Holding.created_at, Holding.first_seen)
        < threshold,
        ~exists().where(comment.source_id == Holding.source_id,
                        comment.record_type == COMMENT, comment.gone_at.is_(None),
                        comment.subject_id == Holding.subject_id, _age(comment) >= threshold),
    )


def _processor_copy_orphaned(policy: Any, now: datetime, dialect: str | None) -> Select[Any]:
    period = _period(policy, "processor_copies")
    threshold = now - period
    shop = aliased(Holding)
    shops = (select(Source.id).where(Source.kind == WOOCOMMERCE, Source.gone_at.is_(None))
             .scalar_subquery())
    # Held now (live, not anonymised), or let go within the grace: gone_at, or for an
    # anonymised record its last change.
    held_lately = or_(and_(shop.gone_at.is_(None), shop.anonymised == false()),
                      func.coalesce(shop.gone_at, shop.modified_at, shop.last_seen) >= threshold)
    stripe_customer = and_(Source.kind == STRIPE, Holding.record_type == CUSTOMER)
    mailchimp_member = and_(Source.kind == MAILCHIMP, Holding.record_type == MEMBER)
    detail = case((Source.kind == STRIPE, _text("held by Stripe")),
                  else_=_text("held by Mailchimp")) + _text(
        f", but by no shop for more than {format_period(period)}")
    query = _holding_rows(detail)

    # Planned as hash (anti) joins on PostgreSQL, index probes on SQLite (which has the
    # statistics for it: the audit refreshes them first).
    def shop_holding(*conditions: ColumnElement[bool]) -> ColumnElement[bool]:
        return exists().where(shop.subject_id == Holding.subject_id,
                              shop.source_id.in_(shops), *conditions)

    not_held_lately = ~shop_holding(held_lately)
    held_before = shop_holding()
    payment = aliased(Holding)
    payments = select(Source.id).where(Source.kind == STRIPE, Source.gone_at.is_(None))
    # Evidence the person was a shop's customer (not only a newsletter subscriber): a shop
    # record the ledger saw, a copy only a shop creates, or a payment (they come from shops).
    was_customer = or_(
        Source.kind == STRIPE, Holding.status.in_(SHOP_ONLY_CONTACT_STATUSES), held_before,
        exists().where(payment.subject_id == Holding.subject_id,
                       payment.source_id.in_(payments.scalar_subquery()),
                       payment.gone_at.is_(None)))
    return query.where(or_(stripe_customer, mailchimp_member), Holding.subject_id.is_not(None),
                       _age(Holding) < threshold, not_held_lately, was_customer)


def _stripe_customer_inactive(policy: Any, now: datetime, dialect: str | None) -> Select[Any]:
    period = _period(policy, "stripe_customers")
    threshold = now - period
    charge = aliased(Holding)
    recent_charge = [charge.source_id == Holding.source_id, charge.record_type == "charge",
                     _age(charge) >= threshold]
    return _holding_rows(_text(f"no charge for more than {format_period(period)}")).where(
        Source.kind == STRIPE, Holding.record_type == CUSTOMER,
        _age(Holding) < threshold,
        ~exists().where(charge.parent_id == Holding.external_id, *recent_charge),
        ~exists().where(charge.subject_id == Holding.subject_id, *recent_charge),
    )


def _mailchimp_contact_retained(policy: Any, now: datetime, dialect: str | None) -> Select[Any]:
    period = _period(policy, "mailchimp_contacts")
    detail = Holding.status + _text(f" contact kept more than {format_period(period)} "
                                    "after its last change")
    return _holding_rows(detail).where(
        Source.kind == MAILCHIMP, Holding.record_type == MEMBER,
        Holding.status.in_(RETAINED_CONTACT_STATUSES),
        func.coalesce(Holding.last_activity_at, Holding.created_at, Holding.first_seen)
        < now - period)


def _card_number_exposed(policy: Any, now: datetime, dialect: str | None) -> Select[Any]:
    # Evidence is a JSON list of plain sentences; its brackets and quotes are dropped.
    evidence = func.replace(func.replace(func.replace(
        func.coalesce(Holding.evidence, ""), '["', ""), '"]', ""), '","', "; ")
    detail = case((evidence == "", _text("card number pattern found")), else_=evidence)
    return _holding_rows(detail).where(Holding.categories.like("%,card_number,%"))


def _sync_stale(policy: Any, now: datetime, dialect: str | None) -> Select[Any]:
    period = _period(policy, "sync_stale")
    last_success = (select(func.max(SyncRun.finished_at))
                    .where(SyncRun.source_id == Source.id, SyncRun.status == "success",
                           SyncRun.mode.in_(PULL_MODES))
                    .scalar_subquery())
    detail = case((last_success.is_(None), _text("never synced successfully")),
                  else_=_text(f"no successful sync for more than {format_period(period)}"))
    return (select((_text("source:") + cast(Source.id, String)).label("target"),
                   cast(None, Integer).label("holding_id"),
                   cast(None, Integer).label("subject_id"),
                   Source.id.label("source_id"), detail.label("detail"))
            .where(Source.gone_at.is_(None),
                   func.coalesce(last_success, Source.created_at) < now - period))


@dataclass(frozen=True)
class Rule:
    """One retention rule: what it finds, why (GDPR), what to do, and its query."""

    id: str
    severity: str
    parameter: str | None
    finds: str
    reason: str
    # Owner's words; {record} is e.g. "order 1234 in allmyink" or "the Stripe customer cus_1".
    action: str
    build: Callable[[Any, datetime, str | None], Select[Any]] = field(repr=False)
    # "retention": the build reads [retention]; "policy": it reads policy.Promises.
    reads: str = "retention"

    def query(self, policy: RetentionSettings, now: datetime,
              dialect: str | None = None) -> Select[Any]:
        """Rows (target, holding_id, subject_id, source_id, detail) for what is true now.
        `dialect` only picks between shapes of the same query that one planner runs faster;
        every shape is plain SQL that runs on SQLite and PostgreSQL alike."""
        return self.build(policy, now, dialect)

    def period(self, policy: RetentionSettings) -> timedelta | None:
        return _period(policy, self.parameter) if self.parameter else None

    def argument(self, policy: RetentionSettings, declared: PolicySettings | None) -> Any:
        """What the rule's query is built from."""
        return Promises(policy, declared) if self.reads == "policy" else policy

    @property
    def parameters(self) -> tuple[str, ...]:
        """Every [retention] key the rule reads (the per-status order rules read several)."""
        if self.id == "order-past-retention":
            return tuple(COMPLETED_STATUSES.values())
        if self.id == "unpaid-order-past-retention":
            return tuple(UNPAID_STATUSES.values())
        return (self.parameter,) if self.parameter else ()


RULES: dict[str, Rule] = {rule.id: rule for rule in (
    Rule("inactive-account", "medium", "inactive_accounts",
         "a shop account with no order and no activity for longer than its period",
         "Art. 5(1)(e) storage limitation: an account nobody uses is no longer needed.",
         "delete {record}", _inactive_account),
    Rule("order-past-retention", "medium", "completed_orders",
         "a completed or refunded order past its retention period and not anonymised",
         "Art. 5(1)(e) storage limitation: past the accounting period the order's personal "
         "fields serve no purpose.",
         "anonymise {record}", _order_past_retention),
    Rule("unpaid-order-past-retention", "medium", "pending_orders",
         "a pending, failed, cancelled, on-hold or trashed order past its (short) period",
         "Art. 5(1)(e) storage limitation: an order that never went through is no "
         "accounting record to keep.",
         "delete {record} permanently (empty the trash)", _unpaid_order_past_retention),
    Rule("network-data-past-retention", "low", "network_data",
         "an IP address or user agent still stored on an order older than its period",
         "Art. 5(1)(c) data minimisation: network data serves fraud checks for a while, "
         "not the years of accounting.",
         "remove the IP address and user agent from {record}", _network_data_past_retention),
    Rule("processor-copy-orphaned", "high", "processor_copies",
         "a person held by Stripe or Mailchimp whom no shop holds any more",
         "Art. 5(1)(e) storage limitation: a processor's copy has no purpose once no shop "
         "holds the person (the shops' erasers never reach it).",
         "permanently delete {record}", _processor_copy_orphaned),
    Rule("stripe-customer-inactive", "medium", "stripe_customers",
         "a Stripe customer with no charge for longer than its period",
         "Art. 5(1)(e) storage limitation: a payment customer nobody charges is no longer "
         "needed.",
         "delete {record}", _stripe_customer_inactive),
    Rule("mailchimp-contact-retained", "low", "mailchimp_contacts",
         "an unsubscribed, cleaned or archived contact kept longer than its period",
         "Art. 5(1)(e) storage limitation: a contact who left the list is still personal "
         "data until deleted permanently.",
         "permanently delete {record}", _mailchimp_contact_retained),
    Rule("card-number-exposed", "high", None,
         "a card-number pattern in a note or meta field",
         "Art. 5(1)(f) and Art. 32 integrity and confidentiality (and PCI DSS): the policy "
         "says card details are never visible to the shop.",
         "remove the card number from {record} and tell the customer", _card_number_exposed),
    Rule("comment-network-data-past-retention", "low", "network_data",
         "a WordPress comment's IP address or user agent kept longer than its period",
         "Art. 5(1)(c) data minimisation: WordPress keeps a commenter's IP address and "
         "browser for ever; they serve spam checks for a while, not the life of the site.",
         "remove the IP address and user agent from {record}", _comment_network_data),
    Rule("comment-kept-in-spam-or-trash", "medium", "spam_and_trash_comments",
         "a WordPress comment in spam or trash for longer than WordPress's own clean-up "
         "would keep it",
         "Art. 5(1)(e) storage limitation: a comment nobody reads still holds its author's "
         "name, email, IP address and browser.",
         "delete {record} permanently (empty spam and trash)", _comment_kept_deleted),
    Rule("inactive-site-account", "medium", "inactive_accounts",
         "an account on a WordPress site without a shop, unused for longer than its period",
         "Art. 5(1)(e) storage limitation: an account nobody uses is no longer needed.",
         "delete {record}", _inactive_site_account),
    Rule("sync-stale", "high", "sync_stale",
         "a source with no successful sync within its period",
         "Art. 5(2) accountability: without a recent sync the ledger cannot show what is "
         "held there.",
         "check the credentials and reachability of {source}: {last_sync}", _sync_stale),
    Rule("erased-person-reappeared", "high", None,
         "a person erased before is held again (re-imported, re-created)",
         "Art. 17 right to erasure: an erased person put back by a plugin or an import is an "
         "erasure undone.",
         "erase {record} again, or `ack` it with the reason if the person came back by their "
         "own choice (a new order)", requests.reappeared_query),
    Rule("request-overdue", "high", None,
         "an access or erasure request not answered by its due day",
         "Art. 12(3): a request must be answered within one month (three when extended "
         "within the first).",
         "answer it now and close it (`privacy-ledger request list`)",
         requests.overdue_query),
    # The promises of [policy] (daemon/policy.py): none without the section.
    Rule("category-not-declared", "medium", None,
         "a category of personal data held that the privacy policy does not declare",
         "Art. 13(1)(c) and 5(1)(a) transparency: people must be told what is collected.",
         "declare it in the published policy and in [policy] categories, or stop collecting "
         "it in {source}", promises.category_not_declared, reads="policy"),
    Rule("processor-not-named", "high", None,
         "personal data sent to a processor the privacy policy does not name",
         "Art. 13(1)(e) and 28: the recipients of personal data must be named, and each "
         "processor bound by a contract.",
         "name the processor in the published policy and in [policy] processors, or stop "
         "sending it data from {source}", promises.processor_not_named, reads="policy"),
    Rule("plugin-unclassified", "low", None,
         "an active plugin the plugin catalogue does not know",
         "Art. 30 records of processing: every recipient of personal data must be known.",
         "find out whether this plugin of {source} sends personal data and to whom (its "
         "documentation), and add it to daemon/data/plugins.toml",
         promises.plugin_unclassified, reads="policy"),
    Rule("shop-cleanup-off", "medium", None,
         "a shop's own clean-up setting that is off or longer than the policy's period",
         "Art. 5(1)(e) storage limitation: the shop keeps records longer than the policy "
         "says.",
         "set it in {source}'s WooCommerce → Settings → Accounts & Privacy → Personal data "
         "retention to the policy's period", promises.shop_cleanup_off, reads="policy"),
    Rule("shop-cleanup-not-running", "high", None,
         "a shop's own clean-up is set, yet records past its period are still there",
         "Art. 5(1)(e) storage limitation and 5(2) accountability: the clean-up the policy "
         "relies on silently stopped.",
         "make WP-Cron run on {source} (a real cron job calling wp-cron.php, or `wp cron "
         "event run --due-now`), then check WooCommerce → Status → Scheduled Actions for "
         "woocommerce_cleanup_personal_data", promises.shop_cleanup_not_running, reads="policy"),
)}
RULE_IDS: tuple[str, ...] = tuple(RULES)


def rules_for(ids: Iterable[str] | None) -> list[Rule]:
    """The rules with these ids (all when None), in their canonical order."""
    if ids is None:
        return list(RULES.values())
    wanted = list(ids)
    unknown = [rule_id for rule_id in wanted if rule_id not in RULES]
    if unknown:
        raise UnknownRuleError(f"unknown rule {unknown[0]!r}; the rules are: "
                               f"{', '.join(RULE_IDS)}")
    return [rule for rule in RULES.values() if rule.id in wanted]


@dataclass(frozen=True)
class RuleCounts:
    current: int
    new: int
    resolved: int


@dataclass(frozen=True)
class AuditResult:
    """What one audit run changed. `new` counts re-opened findings too."""

    at: datetime
    rules: tuple[str, ...]
    new: int
    ongoing: int
    resolved: int
    seconds: float
    per_rule: Mapping[str, RuleCounts]

    @property
    def current(self) -> int:
        return self.new + self.ongoing


_scratch = MetaData()
# The targets each rule finds now, computed once per run; the findings are updated from it.
_current = Table(
    "audit_current", _scratch,
    Column("rule", String(60), nullable=False),
    Column("target", String(100), nullable=False),
    Column("holding_id", Integer),
    Column("subject_id", Integer),
    Column("source_id", Integer),
    Column("severity", String(20), nullable=False),
    Column("detail", String()),
    # Set when a finding (live or resolved) already exists for the target.
    Column("known", Integer),
    prefixes=["TEMPORARY"],
)


def _lock(session: Session) -> None:
    """One audit at a time: two would insert the same new findings."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(7106252272)"))
    else:
        # Take SQLite's write lock now, before reading, so the writes below cannot go stale.
        session.execute(text("UPDATE findings SET id = id WHERE 0"))


def run_audit(ledger: Ledger, policy: RetentionSettings, *, now: datetime | None = None,
              rules: Iterable[str] | None = None, actor: str = "daemon",
              declared: PolicySettings | None = None) -> AuditResult:
    """Run the rules (all, or these ids) and bring the findings up to date, in one
    transaction, with one audit_log entry of counts per rule. `declared`: the [policy]
    section (None: the promise rules find nothing)."""
    started = time.perf_counter()
    selected = rules_for(rules)
    # Full precision: two audits never share a moment, so "new" (first == last) stays exact.
    moment = (now or utcnow()).astimezone(UTC)
    queries = [(rule, rule.build(rule.argument(policy, declared), moment, ledger.dialect))
               for rule in selected]
    rule_ids = [rule.id for rule in selected]
    f = Finding.__table__
    c = _current
    ledger.refresh_statistics()
    with ledger.session() as session:
        _lock(session)
        # Subjects get their keyed hash first: erased-person-reappeared joins on it.
        requests.stamp_subjects(session)
        connection = session.connection()
        # A run that failed on SQLite may leave its scratch table on the pooled connection.
        c.drop(connection, checkfirst=True)
        c.create(connection)
        for rule, query in queries:
            rows = query.subquery()
            connection.execute(insert(c).from_select(
                ["rule", "target", "holding_id", "subject_id", "source_id", "severity",
                 "detail"],
                select(_text(rule.id), rows.c.target, rows.c.holding_id,
                       rows.c.subject_id, rows.c.source_id, _text(rule.severity),
                       rows.c.detail)))
        connection.execute(text("CREATE INDEX ix_audit_current ON audit_current "
                                "(rule, target)"))
        # Temporary tables get no automatic statistics; without them PostgreSQL guesses.
        connection.execute(text("ANALYZE audit_current"))
        per_rule = _count(connection, rule_ids)
        matches = and_(f.c.rule == c.c.rule, f.c.target == c.c.target)
        # Marked before inserting: an INSERT that probes the table it fills can go quadratic.
        connection.execute(update(c).where(exists().where(matches)).values(known=1))
        was_resolved = f.c.resolved_at.is_not(None)
        # Still true, or true again: SET expressions all read the row as it was.
        connection.execute(update(f).where(matches).values(
            last_detected=moment, detail=c.c.detail, severity=c.c.severity,
            holding_id=c.c.holding_id, subject_id=c.c.subject_id, source_id=c.c.source_id,
            resolved_at=None,
            first_detected=case((was_resolved, _at(moment)), else_=f.c.first_detected),
            acknowledged_at=case((was_resolved, null()), else_=f.c.acknowledged_at),
            ack_reason=case((was_resolved, null()), else_=f.c.ack_reason),
            ack_until=case((was_resolved, null()), else_=f.c.ack_until)))
        connection.execute(insert(f).from_select(
            ["rule", "target", "holding_id", "subject_id", "source_id", "severity",
             "detail", "first_detected", "last_detected"],
            select(c.c.rule, c.c.target, c.c.holding_id, c.c.subject_id, c.c.source_id,
                   c.c.severity, c.c.detail, _at(moment), _at(moment))
            .where(c.c.known.is_(None))))
        connection.execute(update(f).where(
            f.c.resolved_at.is_(None), f.c.rule.in_(rule_ids),
            ~exists().where(matches)).values(resolved_at=moment))
        c.drop(connection)
        totals = {key: sum(getattr(counts, key) for counts in per_rule.values())
                  for key in ("current", "new", "resolved")}
        trail.append(session, actor, "audit", {
            "at": moment.isoformat(), "new": totals["new"],
            "ongoing": totals["current"] - totals["new"], "resolved": totals["resolved"],
            "rules": {rule_id: {"current": counts.current, "new": counts.new,
                                "resolved": counts.resolved}
                      for rule_id, counts in per_rule.items()}})
    return AuditResult(at=moment, rules=tuple(rule_ids), new=totals["new"],
                       ongoing=totals["current"] - totals["new"], resolved=totals["resolved"],
                       seconds=time.perf_counter() - started, per_rule=per_rule)


def _count(connection: Any, rule_ids: Sequence[str]) -> dict[str, RuleCounts]:
    """Per rule, before the findings change: true now, new (or back), and no longer true."""
    f = Finding.__table__
    c = _current
    matches = and_(f.c.rule == c.c.rule, f.c.target == c.c.target)
    current = dict(connection.execute(
        select(c.c.rule, func.count()).group_by(c.c.rule)).tuples().all())
    new = dict(connection.execute(
        select(c.c.rule, func.count())
        .where(~exists().where(matches, f.c.resolved_at.is_(None)))
        .group_by(c.c.rule)).tuples().all())
    resolved = dict(connection.execute(
        select(f.c.rule, func.count())
        .where(f.c.resolved_at.is_(None), f.c.rule.in_(rule_ids), ~exists().where(matches))
        .group_by(f.c.rule)).tuples().all())
    return {rule_id: RuleCounts(current=current.get(rule_id, 0), new=new.get(rule_id, 0),
                                resolved=resolved.get(rule_id, 0))
            for rule_id in rule_ids}


@dataclass(frozen=True)
class FindingView:
    """One finding as the CLI, the demo and the email show it."""

    rule: str
    severity: str
    source: str | None
    record_type: str | None
    external_id: str | None
    email: str | None
    first_detected: datetime
    last_detected: datetime
    # new, open or acknowledged; "resolved" for what resolved_since() returns.
    status: str
    detail: str | None
    action: str
    resolved_at: datetime | None = None
    ack_reason: str | None = None
    ack_until: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        """Exactly the keys of `privacy-ledger audit --json`; times ISO 8601 UTC."""
        return {"rule": self.rule, "severity": self.severity, "source": self.source,
                "record_type": self.record_type, "external_id": self.external_id,
                "email": self.email, "first_detected": iso_utc(self.first_detected),
                "last_detected": iso_utc(self.last_detected), "status": self.status,
                "detail": self.detail}


def iso_utc(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _status(now: datetime) -> ColumnElement[str]:
    held = and_(Finding.acknowledged_at.is_not(None),
                or_(Finding.ack_until.is_(None), Finding.ack_until > now))
    return case((held, _text("acknowledged")),
                (Finding.first_detected == Finding.last_detected, _text("new")),
                else_=_text("open"))


def _record_words(kind: str | None, source: str, record_type: str | None,
                  external_id: str | None, email: str | None) -> str:
    """A record as the owner finds it in that system's screens."""
    named = system_name(source)
    rest = source.partition(":")[2]
    if named is not None and named.bare:
        if record_type == CUSTOMER:
            return f"customer account {external_id} in {rest}"
        return f"{record_type} {external_id} in {rest}"
    if named is not None and named.one_account:
        # The id of a member is a hash of the email: the email says who it is.
        where = f" in audience {rest}" if rest else ""
        return f"the {named.title} contact {email or external_id}{where}"
    if named is not None:
        where = f" on {rest}" if rest else ""
        what = "account" if record_type == USER else record_type
        return f"the {named.title} {what} {external_id}{where}"
    return f"{record_type} {external_id} in {source}"


def action_for(rule: Rule, kind: str | None, source: str, record_type: str | None,
               external_id: str | None, email: str | None, last_sync: datetime | None) -> str:
    """What the owner should do about one finding, in the rule's words."""
    last = (f"last successful sync {last_sync.astimezone(UTC):%Y-%m-%d %H:%M} UTC"
            if last_sync else "it never synced successfully")
    return rule.action.format(
        record=_record_words(kind, source, record_type, external_id, email),
        source=source, last_sync=last)


# The name daemon/report.py calls.
_action = action_for


def _views(session: Session, query: Select[Any], now: datetime,
           status: ColumnElement[str] | None) -> list[FindingView]:
    last_sync = dict(session.execute(
        select(SyncRun.source_id, func.max(SyncRun.finished_at))
        .where(SyncRun.status == "success", SyncRun.mode.in_(PULL_MODES))
        .group_by(SyncRun.source_id)).tuples().all())
    views = []
    for row in session.execute(query.add_columns(
            (status if status is not None else _text("resolved")).label("status"))):
        rule = RULES.get(row.rule)
        source = row.source or "-"
        action = action_for(rule, row.kind, source, row.record_type, row.external_id,
                         row.email, last_sync.get(row.source_id)) if rule else ""
        views.append(FindingView(
            rule=row.rule, severity=row.severity, source=row.source,
            record_type=row.record_type, external_id=row.external_id, email=row.email,
            first_detected=row.first_detected, last_detected=row.last_detected,
            status=row.status, detail=row.detail, action=action,
            resolved_at=row.resolved_at, ack_reason=row.ack_reason, ack_until=row.ack_until))
    order = {rule_id: index for index, rule_id in enumerate(RULE_IDS)}
    views.sort(key=lambda v: (SEVERITIES.index(v.severity) if v.severity in SEVERITIES else 9,
                              order.get(v.rule, 99), v.source or "", v.record_type or "",
                              v.external_id or ""))
    return views


def _findings_query() -> Select[Any]:
    return (select(Finding.rule, Finding.severity, Finding.source_id,
                   Source.name.label("source"), Source.kind, Holding.record_type,
                   Holding.external_id, Subject.email, Finding.first_detected,
                   Finding.last_detected, Finding.detail, Finding.resolved_at,
                   Finding.ack_reason, Finding.ack_until)
            .select_from(Finding)
            .outerjoin(Holding, Holding.id == Finding.holding_id)
            .outerjoin(Source, Source.id == Finding.source_id)
            .outerjoin(Subject, Subject.id == Finding.subject_id))


def current_findings(ledger: Ledger, *, now: datetime | None = None,
                     rules: Iterable[str] | None = None,
                     sources: Iterable[str] | None = None) -> list[FindingView]:
    """The findings not resolved, most severe first, with their status at `now`."""
    moment = now or utcnow()
    query = _findings_query().where(Finding.resolved_at.is_(None))
    if rules is not None:
        query = query.where(Finding.rule.in_([rule.id for rule in rules_for(rules)]))
    with ledger.sessions() as session:
        if sources is not None:
            ids = [resolve_source(session, name).id for name in sources]
            query = query.where(Finding.source_id.in_(ids))
        return _views(session, query, moment, _status(moment))


def resolved_since(ledger: Ledger, since: datetime) -> list[FindingView]:
    """The findings resolved at or after `since` (status "resolved")."""
    query = _findings_query().where(Finding.resolved_at >= since)
    with ledger.sessions() as session:
        return _views(session, query, since, None)


def counts_by_rule(ledger: Ledger, *, now: datetime | None = None) -> dict[str, dict[str, int]]:
    """For every rule, how many current findings are new, open and acknowledged."""
    moment = now or utcnow()
    status = _status(moment).label("status")
    counts = {rule_id: dict.fromkeys(STATUSES, 0) for rule_id in RULE_IDS}
    with ledger.sessions() as session:
        rows = session.execute(select(Finding.rule, status, func.count())
                               .where(Finding.resolved_at.is_(None))
                               .group_by(Finding.rule, status)).tuples()
        for rule_id, state, count in rows:
            counts.setdefault(rule_id, dict.fromkeys(STATUSES, 0))[state] = count
    return counts


def resolve_source(session: Session, name: str) -> Source:
    """The ledger source a person means: its name (woo:allmyink, stripe,
    mailchimp:abc123), a shop name (allmyink), or a kind with one source (mailchimp)."""
    sources = list(session.scalars(select(Source).order_by(Source.name)))
    bare = [f"{named.prefix}:{name}" for named in SYSTEM_NAMES if named.bare]
    for wanted in (name, *bare):
        for source in sources:
            if source.name == wanted:
                return source
    prefixed = [source for source in sources if source.name.startswith(f"{name}:")]
    if len(prefixed) == 1:
        return prefixed[0]
    known = ", ".join(source.name for source in sources) or "none yet (run a sync first)"
    if prefixed:
        raise UnknownSourceError(f"source {name!r} is ambiguous: say which of "
                                 f"{', '.join(s.name for s in prefixed)}")
    raise UnknownSourceError(f"no source {name!r} in the ledger; the sources are: {known}")


def until_end_of(day: str, now: datetime | None = None) -> datetime:
    """`--until 2026-12-31` as the first instant after that day (UTC)."""
    try:
        parsed = date.fromisoformat(day.strip())
    except ValueError:
        raise AuditError(f"--until {day!r} is not a date: write YYYY-MM-DD, "
                         "e.g. 2027-03-31") from None
    end = datetime(parsed.year, parsed.month, parsed.day, tzinfo=UTC) + timedelta(days=1)
    if end <= (now or utcnow()):
        raise AuditError(f"--until {day} is in the past: an acknowledgement must end later")
    return end


def acknowledge(ledger: Ledger, rule_id: str, source: str, external_id: str, *,
                reason: str, until: datetime | None = None, record_type: str | None = None,
                now: datetime | None = None, actor: str = "owner") -> FindingView:
    """The owner acknowledges a current finding (a legal hold, a dispute): it stays listed as
    acknowledged until `until` (for good when None). Recorded in the audit trail (the
    reason as a digest: the trail cannot forget a name typed into it)."""
    rule = rules_for([rule_id])[0]
    moment = now or utcnow()
    why = " ".join(reason.split())
    if not why:
        raise AuditError("--reason is empty: say why the finding is accepted "
                         "(e.g. \"legal hold until the dispute ends\")")
    if until is not None and until <= moment:
        raise AuditError(f"--until {until.date().isoformat()} is in the past")
    with ledger.session() as session:
        found_source = resolve_source(session, source)
        query = select(Finding.id, Holding.record_type).outerjoin(
            Holding, Holding.id == Finding.holding_id).where(
            Finding.rule == rule.id, Finding.resolved_at.is_(None),
            Finding.source_id == found_source.id)
        if external_id == "-":
            query = query.where(Finding.holding_id.is_(None))
        else:
            query = query.where(Holding.external_id == external_id)
            if record_type is not None:
                query = query.where(Holding.record_type == record_type)
        matches = session.execute(query).tuples().all()
        if not matches:
            raise FindingNotFoundError(
                f"no current {rule.id} finding for {found_source.name} {external_id}; "
                f"`privacy-ledger audit --rule {rule.id}` lists them")
        if len(matches) > 1:
            kinds = ", ".join(sorted(str(kind) for _, kind in matches))
            raise AuditError(f"{found_source.name} has several records {external_id} with a "
                             f"{rule.id} finding ({kinds}): give --record-type")
        finding_id, kind = matches[0]
        session.execute(update(Finding).where(Finding.id == finding_id).values(
            acknowledged_at=moment, ack_reason=why, ack_until=until))
        # The reason is free text that may name someone: the append-only trail keeps its
        # digest (which proves what was written), the finding keeps the text.
        trail.append(session, actor, "ack", {
            "finding": finding_id, "rule": rule.id, "source": found_source.name,
            "record_type": kind, "external_id": external_id,
            "reason_sha256": hashlib.sha256(why.encode()).hexdigest(),
            "until": until.isoformat() if until else None}, at=moment)
        view = _views(session, _findings_query().where(Finding.id == finding_id), moment,
                      _status(moment))
    return view[0]


def format_findings(findings: Sequence[FindingView], *, result: AuditResult | None = None,
                    zone: tzinfo = UTC) -> list[str]:
    """A readable summary grouped by rule, most severe first, with what to do for each."""
    tally = {state: sum(1 for f in findings if f.status == state) for state in STATUSES}
    lines = []
    if result is not None:
        at = result.at.astimezone(zone)
        lines.append(f"Audit of {at:%Y-%m-%d %H:%M} ({len(result.rules)} rules, "
                     f"{result.seconds:.1f}s): {result.new} new, {result.ongoing} ongoing, "
                     f"{result.resolved} resolved.")
    if not findings:
        lines.append("No findings: the ledger shows nothing kept beyond the retention policy.")
        return lines
    lines.append(f"{len(findings)} finding(s): {tally['new']} new, {tally['open']} open, "
                 f"{tally['acknowledged']} acknowledged.")
    current_rule = None
    for finding in findings:
        if finding.rule != current_rule:
            current_rule = finding.rule
            rule = RULES.get(finding.rule)
            count = sum(1 for f in findings if f.rule == finding.rule)
            lines.append("")
            lines.append(f"[{finding.severity}] {finding.rule} ({count}): "
                         f"{rule.finds if rule else ''}")
            if rule:
                lines.append(f"    {rule.reason}")
            fix_all = fix_words.fix_all_command(finding.rule)
            if fix_all:
                lines.append(f"    fix all of them: {fix_all}")
        record = " ".join(part for part in (finding.source, finding.record_type,
                                            finding.external_id) if part)
        who = f" {finding.email}" if finding.email else ""
        since = finding.first_detected.astimezone(zone)
        lines.append(f"  {finding.status.upper():<13}{record}{who} — {finding.detail or ''} "
                     f"(since {since:%Y-%m-%d})")
        if finding.status == "acknowledged":
            until = ""
            if finding.ack_until is not None:
                last_day = (finding.ack_until - timedelta(seconds=1)).astimezone(UTC)
                until = f" until {last_day:%Y-%m-%d}"
            lines.append(f"  {'':<13}acknowledged{until}: {finding.ack_reason}")
        else:
            lines.append(f"  {'':<13}→ {finding.action}")
            command = fix_words.fix_command(finding.rule, finding.source, finding.external_id)
            if command:
                lines.append(f"  {'':<13}  {command}")
    return lines
