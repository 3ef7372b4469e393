"""The policy's promises as rules over the ledger: what the [policy] section declares compared
with what is held (categories per system) and who holds it (the systems, and the shops'
plugins matched against the plugin catalogue), and each shop's own clean-up settings compared
with [retention] and with what is still there.

Every query here is set-based (grouped scans and joins; the only Python loops run over the
policy's own words and the catalogue, never over rows), returning the audit's columns
(target, holding_id, subject_id, source_id, detail). Without a [policy] section nothing is
claimed, so every promise rule finds nothing.

- category-not-declared: per live source and category, the live holdings holding a category
  the policy does not declare for that system (card_number has its own rule).
- processor-not-named: a live source holding live records whose processor (WordPress for a
  shop, Stripe, Mailchimp) the policy does not name; and an active plugin of a live shop whose
  catalogued processor the policy does not name.
- plugin-unclassified: an active plugin of a live shop that the catalogue does not know.
- shop-cleanup-off: a shop's own clean-up setting (read from the shop) that is off, or
  longer than the [retention] period it serves.
- shop-cleanup-not-running: a shop's clean-up setting that is on, while records it should
  have handled are still there more than CLEANUP_GRACE after their time: the evidence is how
  many, and the oldest.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    ColumnElement,
    Integer,
    Select,
    String,
    and_,
    case,
    cast,
    exists,
    false,
    func,
    literal_column,
    null,
    or_,
    select,
    union_all,
)

from daemon import catalogue
from daemon.ledger import Holding, ShopOption, ShopPlugin, Source
from vocabulary import CUSTOMER, ORDER, WOOCOMMERCE, Category, format_duration

if TYPE_CHECKING:
    from daemon.config import PolicySettings, RetentionSettings

# WooCommerce's clean-up runs once a day; a record a day or two past its time is not yet news.
CLEANUP_GRACE = timedelta(days=2)


@dataclass(frozen=True)
class CleanupTask:
    """One of WooCommerce's clean-up options: what it does to which records, and the
    [retention] key whose period it serves."""

    option: str
    label: str
    does: str
    record_type: str
    status: str | None
    parameter: str
    # The records past its period, as the finding names them.
    late: str


CLEANUP_TASKS: tuple[CleanupTask, ...] = (
    CleanupTask("woocommerce_delete_inactive_accounts", "Retain inactive accounts",
                "deletes accounts", CUSTOMER, None, "inactive_accounts",
                "accounts inactive for longer"),
    CleanupTask("woocommerce_trash_pending_orders", "Retain pending orders",
                "trashes pending orders", ORDER, "pending", "pending_orders",
                "pending orders older than that"),
    CleanupTask("woocommerce_trash_failed_orders", "Retain failed orders",
                "trashes failed orders", ORDER, "failed", "failed_orders",
                "failed orders older than that"),
    CleanupTask("woocommerce_trash_cancelled_orders", "Retain cancelled orders",
                "trashes cancelled orders", ORDER, "cancelled", "cancelled_orders",
                "cancelled orders older than that"),
    CleanupTask("woocommerce_anonymize_completed_orders", "Retain completed orders",
                "anonymises completed orders", ORDER, "completed", "completed_orders",
                "completed orders older than that, not anonymised,"),
    CleanupTask("woocommerce_anonymize_refunded_orders", "Retain refunded orders",
                "anonymises refunded orders", ORDER, "refunded", "refunded_orders",
                "refunded orders older than that, not anonymised,"),
)
ERASURE_LABELS = {
    "woocommerce_erasure_request_removes_order_data": "Erasure requests remove order data",
    "woocommerce_erasure_request_removes_download_data": "Erasure requests remove downloads",
}

CATEGORY_WORDS = {
    "name": "names", "email": "email addresses", "phone": "telephone numbers",
    "billing_address": "billing addresses", "delivery_address": "delivery addresses",
    "payment_method_type": "the payment method used", "card_last4": "the last four digits "
    "of payment cards", "ip_address": "IP addresses", "user_agent": "browser details (user "
    "agent)", "order_history": "what was ordered and when", "marketing_consent": "newsletter "
    "consent", "account": "a customer account (login)", "free_text": "notes written by the "
    "customer", "location": "approximate location", "card_number": "full card numbers",
}
SYSTEM_WORDS = {"woocommerce": "the shops (WooCommerce on WordPress)", "stripe": "Stripe",
                "mailchimp": "Mailchimp", "wordpress": "the WordPress site"}


@dataclass(frozen=True)
class Promises:
    """What a promise rule reads: the [retention] periods and the [policy] section (None:
    nothing declared, nothing checked)."""

    retention: RetentionSettings
    declared: PolicySettings | None


def _text(value: str) -> ColumnElement[str]:
    """A constant string inlined into the SQL (our own words or the catalogue's)."""
    return literal_column("'" + value.replace("'", "''") + "'", String)


def _nothing() -> Select[Any]:
    """The audit's columns, no rows."""
    return select(_text("").label("target"), cast(null(), Integer).label("holding_id"),
                  cast(null(), Integer).label("subject_id"),
                  cast(null(), Integer).label("source_id"), _text("").label("detail")).where(
        false())


def _pairs(rows: list[tuple[str, ...]], names: tuple[str, ...]) -> Any:
    """A small constant table (one SELECT of literals per row, UNION ALL), as a subquery."""
    selects = [select(*(_text(value).label(name) for value, name in zip(row, names,
                                                                          strict=True)))
               for row in rows]
    return (selects[0] if len(selects) == 1 else union_all(*selects)).subquery("pairs")


def _live_holdings() -> list[ColumnElement[bool]]:
    return [Holding.gone_at.is_(None), Source.gone_at.is_(None)]


def category_not_declared(ctx: Promises, now: datetime, dialect: str | None) -> Select[Any]:
    declared = ctx.declared
    if declared is None:
        return _nothing()
    kinds = list(catalogue.SYSTEM_PROCESSORS)
    rows = [(kind, str(category), CATEGORY_WORDS.get(str(category), str(category)))
            for kind in kinds for category in Category
            if category != Category.CARD_NUMBER and str(category) not in declared.declared(kind)]
    if not rows:
        return _nothing()
    pairs = _pairs(rows, ("kind", "category", "words"))
    # One grouped pass over the holdings: the distinct category sets are few.
    sets = (select(Holding.source_id.label("source_id"), Source.kind.label("kind"),
                   Holding.categories.label("categories"), func.count().label("n"))
            .join(Source, Source.id == Holding.source_id).where(*_live_holdings())
            .group_by(Holding.source_id, Source.kind, Holding.categories).subquery("sets"))
    held = func.sum(sets.c.n)
    return (select((_text("category:") + cast(sets.c.source_id, String) + _text(":")
                    + pairs.c.category).label("target"),
                   cast(null(), Integer).label("holding_id"),
                   cast(null(), Integer).label("subject_id"),
                   sets.c.source_id.label("source_id"),
                   (pairs.c.words + _text(" (") + pairs.c.category + _text(") held on ")
                    + cast(held, String) + _text(" record(s), not declared in the policy"))
                   .label("detail"))
            .select_from(sets)
            .join(pairs, and_(pairs.c.kind == sets.c.kind,
                              sets.c.categories.like(_text("%,") + pairs.c.category
                                                     + _text(",%"))))
            .group_by(sets.c.source_id, pairs.c.category, pairs.c.words))


def _undeclared_plugins(declared: PolicySettings) -> dict[str, catalogue.PluginEntry]:
    named = set(declared.processors)
    return {slug: entry for slug, entry in catalogue.plugins().items()
            if entry.processor != catalogue.NO_PROCESSOR and entry.processor not in named}


def _plugin_rows(*conditions: ColumnElement[bool], detail: ColumnElement[str]) -> Select[Any]:
    return (select((_text("plugin:") + cast(ShopPlugin.id, String)).label("target"),
                   cast(null(), Integer).label("holding_id"),
                   cast(null(), Integer).label("subject_id"),
                   ShopPlugin.source_id.label("source_id"), detail.label("detail"))
            .join(Source, Source.id == ShopPlugin.source_id)
            .where(Source.gone_at.is_(None), *conditions))


def processor_not_named(ctx: Promises, now: datetime, dialect: str | None) -> Select[Any]:
    declared = ctx.declared
    if declared is None:
        return _nothing()
    named = set(declared.processors)
    kinds = {kind: processor for kind, processor in catalogue.SYSTEM_PROCESSORS.items()
             if processor not in named}
    parts: list[Select[Any]] = []
    if kinds:
        detail = case(*((Source.kind == kind, _text(f"{processor} holds personal data "
                                                    "here, and the policy does not name it"))
                        for kind, processor in kinds.items()), else_=_text(""))
        parts.append(select((_text("source:") + cast(Source.id, String)).label("target"),
                            cast(null(), Integer).label("holding_id"),
                            cast(null(), Integer).label("subject_id"),
                            Source.id.label("source_id"), detail.label("detail"))
                     .where(Source.gone_at.is_(None), Source.kind.in_(list(kinds)),
                            exists().where(Holding.source_id == Source.id,
                                           Holding.gone_at.is_(None))))
    plugins = _undeclared_plugins(declared)
    if plugins:
        detail = case(*((ShopPlugin.slug == slug, _text(
            f"the plugin {entry.name} ({slug}) sends "
            f"{', '.join(CATEGORY_WORDS.get(c, c) for c in entry.categories)} to "
            f"{entry.processor} ({entry.country}), which the policy does not name "
            f"(source: {entry.source})"))
            for slug, entry in plugins.items()), else_=_text(""))
        parts.append(_plugin_rows(Source.kind == WOOCOMMERCE,
                                  ShopPlugin.slug.in_(list(plugins)), detail=detail))
    if not parts:
        return _nothing()
    return parts[0] if len(parts) == 1 else union_all(*parts).subquery("named").select()


def plugin_unclassified(ctx: Promises, now: datetime, dialect: str | None) -> Select[Any]:
    if ctx.declared is None:
        return _nothing()
    detail = (ShopPlugin.name + _text(" (") + ShopPlugin.plugin
              + _text(") is not in the plugin catalogue: whether it sends personal data, and "
                      "to whom, is not known"))
    return _plugin_rows(Source.kind == WOOCOMMERCE,
                        ShopPlugin.slug.not_in(list(catalogue.plugins())), detail=detail)


def _option_target() -> ColumnElement[str]:
    return (_text("option:") + cast(ShopOption.source_id, String) + _text(":")
            + ShopOption.option)


def shop_cleanup_off(ctx: Promises, now: datetime, dialect: str | None) -> Select[Any]:
    if ctx.declared is None:
        return _nothing()
    conditions, details = [], []
    for task in CLEANUP_TASKS:
        period = getattr(ctx.retention, task.parameter)
        seconds = int(period.total_seconds())
        this = ShopOption.option == task.option
        conditions.append(and_(this, or_(ShopOption.period_seconds.is_(None),
                                         ShopOption.period_seconds > seconds)))
        details.append((and_(this, ShopOption.period_seconds.is_(None)),
                        _text(f"{task.label}: off — the shop never {task.does}, the policy "
                              f"keeps them {format_duration(period)} ({task.parameter})")))
        details.append((this, _text(f"{task.label}: ") + func.coalesce(ShopOption.value, "")
                        + _text(f", longer than the policy's {format_duration(period)} "
                                f"({task.parameter})")))
    return (select(_option_target().label("target"), cast(null(), Integer).label("holding_id"),
                   cast(null(), Integer).label("subject_id"),
                   ShopOption.source_id.label("source_id"),
                   case(*details, else_=_text("")).label("detail"))
            .join(Source, Source.id == ShopOption.source_id)
            .where(Source.gone_at.is_(None), Source.kind == WOOCOMMERCE,
                   ShopOption.readable.is_(True), or_(*conditions)))


def _epoch(column: Any, dialect: str | None) -> ColumnElement[Any]:
    """Seconds since 1970 of a stored time, on either database."""
    if dialect == "sqlite":
        return cast(func.strftime("%s", column), Integer)
    return cast(func.extract("epoch", column), Integer)


def shop_cleanup_not_running(ctx: Promises, now: datetime, dialect: str | None) -> Select[Any]:
    if ctx.declared is None:
        return _nothing()
    grace = int(CLEANUP_GRACE.total_seconds())
    moment = int(now.timestamp())
    # One pass over the shops' holdings: each record is mapped to the clean-up task that
    # would handle it, and joined to that task's setting in its shop.
    branches = []
    for task in CLEANUP_TASKS:
        if task.record_type == CUSTOMER:
            # delete_inactive_accounts: 0 < wc_last_active < cutoff (class-wc-privacy.php).
            which = and_(Holding.record_type == CUSTOMER, Holding.last_activity_at.is_not(None),
                         Holding.status.in_(("customer", "subscriber")))
        else:
            which = and_(Holding.record_type == ORDER, Holding.status == task.status)
        branches.append((which, _text(task.option)))
    option = case(*branches, else_=null())
    # The order tasks count from the order's creation date, the accounts from last activity.
    when = case((Holding.record_type == CUSTOMER, Holding.last_activity_at),
                else_=func.coalesce(Holding.created_at, Holding.first_seen))
    late = (select(ShopOption.source_id.label("source_id"), ShopOption.option.label("option"),
                   ShopOption.value.label("value"), when.label("at"))
            .select_from(Holding)
            .join(Source, Source.id == Holding.source_id)
            .join(ShopOption, and_(ShopOption.source_id == Holding.source_id,
                                   ShopOption.option == option))
            .where(*_live_holdings(), Source.kind == WOOCOMMERCE,
                   Holding.record_type.in_((CUSTOMER, ORDER)), Holding.anonymised == false(),
                   ShopOption.period_seconds.is_not(None),
                   _epoch(when, dialect) < moment - ShopOption.period_seconds - grace)
            .subquery("late"))
    words = case(*((late.c.option == task.option, _text(
        f"the shop's own clean-up is not running: it {task.does} after ")
        + func.coalesce(late.c.value, "") + _text(f", yet {task.late} are still there: "))
        for task in CLEANUP_TASKS), else_=_text(""))
    oldest = func.substr(cast(func.min(late.c.at), String), 1, 10)
    return (select((_text("option:") + cast(late.c.source_id, String) + _text(":")
                    + late.c.option).label("target"),
                   cast(null(), Integer).label("holding_id"),
                   cast(null(), Integer).label("subject_id"),
                   late.c.source_id.label("source_id"),
                   (words + cast(func.count(), String) + _text(", the oldest from ") + oldest
                    + _text(" (WooCommerce runs it from WP-Cron / Action Scheduler, which "
                            "stops on a site without visits or a real cron)")).label("detail"))
            .group_by(late.c.source_id, late.c.option, late.c.value))


@dataclass(frozen=True)
class ShopSetting:
    """One row of the shops side by side: a shop's own setting next to the policy's."""

    shop: str
    label: str
    option: str
    shop_value: str
    policy_value: str
    verdict: str


def side_by_side(session: Any, retention: RetentionSettings) -> list[ShopSetting]:
    """Every shop's clean-up and erasure settings as last read, next to [retention]: "ok",
    "off", "longer", "not readable: …" (the reason the shop gave)."""
    from daemon.ledger import ShopRead

    reads = {(source, part): detail for source, part, ok, detail in session.execute(
        select(ShopRead.source_id, ShopRead.part, ShopRead.ok, ShopRead.detail)) if not ok}
    rows = session.execute(
        select(Source.id, Source.name, ShopOption.option, ShopOption.readable,
               ShopOption.period_seconds, ShopOption.value)
        .join(ShopOption, ShopOption.source_id == Source.id)
        .where(Source.gone_at.is_(None), Source.kind == WOOCOMMERCE)
        .order_by(Source.name)).all()
    tasks = {task.option: task for task in CLEANUP_TASKS}
    order = [task.option for task in CLEANUP_TASKS] + list(ERASURE_LABELS)
    found = []
    for source_id, name, option, readable, seconds, value in sorted(
            rows, key=lambda r: (r[1], order.index(r[2]) if r[2] in order else 99)):
        task = tasks.get(option)
        label = task.label if task else ERASURE_LABELS.get(option, option)
        policy_value = format_duration(getattr(retention, task.parameter)) if task else "-"
        if not readable:
            part = "retention" if task else "settings"
            verdict = f"not readable: {reads.get((source_id, part), 'the shop did not say')}"
            shown = "not readable"
        elif task is None:
            shown, verdict = value or "no", "ok" if value == "yes" else "off"
        elif seconds is None:
            shown, verdict = "off", "off"
        else:
            longer = seconds > getattr(retention, task.parameter).total_seconds()
            shown, verdict = value or "", "longer" if longer else "ok"
        found.append(ShopSetting(name.removeprefix("woo:"), label, option, shown,
                                 policy_value, verdict))
    return found


def unread_parts(session: Any) -> list[str]:
    """What a shop's key could not read at its last sync, and why (the permission)."""
    from daemon.ledger import ShopRead

    rows = session.execute(
        select(Source.name, ShopRead.part, ShopRead.detail)
        .join(Source, Source.id == ShopRead.source_id)
        .where(ShopRead.ok.is_(False), Source.gone_at.is_(None))
        .order_by(Source.name, ShopRead.part)).all()
    return [f"{name.removeprefix('woo:')}: {part} {detail or 'not readable'}"
            for name, part, detail in rows]


def format_side_by_side(rows: list[ShopSetting], unread: Sequence[str] = ()) -> list[str]:
    """The shops side by side, one line per setting, for the terminal and the text email."""
    if not rows:
        return [f"Not readable: {line}" for line in unread]
    shops = sorted({row.shop for row in rows})
    by = {(row.shop, row.label): row for row in rows}
    labels = list(dict.fromkeys(row.label for row in rows))
    width = max(len(label) for label in labels)
    lines = ["Each shop's own clean-up, next to the policy:",
             f"  {'':<{width}}  {'policy':<8}" + "".join(f"  {shop:<22}" for shop in shops)]
    for label in labels:
        policy_value = next(r.policy_value for r in rows if r.label == label)
        cells = []
        for shop in shops:
            row = by.get((shop, label))
            cell = "-" if row is None else row.shop_value + (
                "" if row.verdict == "ok" else " !" if row.verdict in ("off", "longer")
                else " ?")
            cells.append(f"  {cell:<22}")
        lines.append(f"  {label:<{width}}  {policy_value:<8}" + "".join(cells))
    lines = [line.rstrip() for line in lines]
    lines.append("  ! off, or longer than the policy   ? not readable")
    lines.extend(f"  ? {line}" for line in unread)
    return lines


def declared_map(declared: PolicySettings | None) -> Mapping[str, list[str]]:
    """Per system, what the policy declares (empty when there is no [policy])."""
    if declared is None:
        return {kind: [] for kind in catalogue.SYSTEM_PROCESSORS}
    return {kind: declared.declared(kind) for kind in catalogue.SYSTEM_PROCESSORS}
