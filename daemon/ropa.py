"""Documents generated from the ledger: the Article 30 record of processing activities (per
system: categories held with counts, purposes, processors, the policy's retention periods,
the shop's own settings, the erasure method) as HTML and CSV, and a "what we hold" table in
words the owner can paste into the privacy policy, with each difference from [policy] marked.

`privacy-ledger ropa --out DIR` writes ropa.html, ropa.csv, what-we-hold.html and
what-we-hold.txt; each file whole or not at all (daemon/files.write_private)."""

from __future__ import annotations

import csv
import html
import io
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import func, select

from daemon import catalogue
from daemon.files import write_private
from daemon.ledger import Holding, Ledger, ShopPlugin, Source, categories_of
from daemon.policy import CATEGORY_WORDS, SYSTEM_WORDS, ShopSetting, declared_map, side_by_side
from daemon.report import source_label, system_order
from vocabulary import MAILCHIMP, STRIPE, WOOCOMMERCE, Category, format_duration, utcnow

if TYPE_CHECKING:
    from daemon.config import PolicySettings, RetentionSettings

# The [retention] keys that govern each system's records.
RETENTION_KEYS = {
    WOOCOMMERCE: ("inactive_accounts", "completed_orders", "refunded_orders", "pending_orders",
                  "failed_orders", "cancelled_orders", "on_hold_orders", "trashed_orders",
                  "network_data"),
    STRIPE: ("stripe_customers", "processor_copies"),
    MAILCHIMP: ("mailchimp_contacts", "processor_copies"),
}
ERASURE = {
    WOOCOMMERCE: "privacy-ledger erase: the account is deleted and the orders anonymised "
                 "through the shop's REST API (as WooCommerce's own eraser does)",
    STRIPE: "privacy-ledger erase: the Stripe customer is deleted through Stripe's API "
            "(Stripe keeps transactions as the law requires it to)",
    MAILCHIMP: "privacy-ledger erase: the contact is deleted permanently through "
               "Mailchimp's API",
}


@dataclass(frozen=True)
class Activity:
    """One system's entry in the record of processing."""

    source: str
    label: str
    kind: str
    purpose: str
    categories: tuple[tuple[str, int, bool], ...]  # (category, records, declared)
    processors: tuple[str, ...]
    retention: tuple[str, ...]
    shop_settings: tuple[ShopSetting, ...]
    erasure: str


def activities(ledger: Ledger, retention: RetentionSettings,
               declared: PolicySettings | None) -> list[Activity]:
    """The record of processing, from the ledger: one entry per live source."""
    declared_by_kind = declared_map(declared)
    purposes = declared.purposes if declared else {}
    with ledger.sessions() as session:
        sources = session.execute(select(Source.id, Source.name, Source.kind, Source.label)
                                  .where(Source.gone_at.is_(None))).all()
        # Grouped by the stored category set: few rows whatever the estate's size.
        sets = session.execute(
            select(Holding.source_id, Holding.categories, func.count())
            .where(Holding.gone_at.is_(None))
            .group_by(Holding.source_id, Holding.categories)).all()
        plugins = session.execute(select(ShopPlugin.source_id, ShopPlugin.slug,
                                         ShopPlugin.name)).all()
        shops = side_by_side(session, retention)
    counts: dict[int, dict[str, int]] = {}
    for source_id, text, count in sets:
        for category in categories_of(text):
            per = counts.setdefault(source_id, {})
            per[category] = per.get(category, 0) + count
    known = catalogue.plugins()
    order = [str(c) for c in Category]
    found = []
    for source_id, name, kind, label in sorted(sources, key=lambda s: system_order(s[1])):
        held = counts.get(source_id, {})
        cats = tuple((c, held[c], c in declared_by_kind.get(kind, []))
                     for c in sorted(held, key=lambda c: order.index(c) if c in order else 99))
        processors = [catalogue.SYSTEM_PROCESSORS.get(kind, kind)]
        for plugin_source, slug, plugin_name in plugins:
            if plugin_source != source_id:
                continue
            entry = known.get(slug)
            if entry is None:
                processors.append(f"{plugin_name}: not classified (unknown plugin)")
            elif entry.processor != catalogue.NO_PROCESSOR:
                processors.append(f"{entry.processor} ({entry.country}), through {entry.name}")
        shop_name = name.removeprefix("woo:")
        found.append(Activity(
            source=name, label=source_label(name, label), kind=kind,
            purpose=purposes.get(kind, "not declared in [policy] purposes"),
            categories=cats, processors=tuple(dict.fromkeys(processors)),
            retention=tuple(f"{key}: {format_duration(getattr(retention, key))}"
                            for key in RETENTION_KEYS.get(kind, ())),
            shop_settings=tuple(s for s in shops if kind == WOOCOMMERCE and s.shop == shop_name),
            erasure=ERASURE.get(kind, "")))
    return found


def _cell(value: object) -> object:
    """A CSV cell a spreadsheet will not run as a formula (a plugin's name is upstream text)."""
    return f"'{value}" if isinstance(value, str) and value[:1] in ("=", "+", "-", "@") \
        else value


def ropa_csv(items: list[Activity]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["system", "source", "purpose", "category", "records", "declared",
                     "processors", "retention (policy)", "shop's own settings", "erasure"])
    for item in items:
        settings = "; ".join(f"{s.label}: {s.shop_value}" for s in item.shop_settings)
        for category, records, declared in item.categories or (("", 0, True),):
            writer.writerow([_cell(value) for value in (
                item.label, item.source, item.purpose, category, records,
                "yes" if declared else "NO", "; ".join(item.processors),
                "; ".join(item.retention), settings, item.erasure)])
    return out.getvalue()


def _page(title: str, body: list[str]) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>body{{font-family:sans-serif;"
            "max-width:60em;margin:2em auto}} table{{border-collapse:collapse}} "
            "td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}}"
            " .diff{{color:#b00020;font-weight:bold}}</style></head><body>\n"
            + "\n".join(body) + "\n</body></html>\n")


def ropa_html(items: list[Activity], declared: PolicySettings | None, at: datetime) -> str:
    e = html.escape
    body = ["<h1>Record of processing activities (Art. 30 GDPR)</h1>",
            f"<p>Generated from the ledger on {at:%Y-%m-%d %H:%M} UTC."
            + (f" Published policy: <a href=\"{e(declared.url)}\">{e(declared.url)}</a>."
               if declared and declared.url else "")
            + (" No [policy] section: nothing is declared, so every category is marked."
               if declared is None else "") + "</p>"]
    for item in items:
        body.append(f"<h2>{e(item.label)} <small>({e(item.source)})</small></h2>")
        body.append("<table>")
        body.append(f"<tr><th>Purpose</th><td>{e(item.purpose)}</td></tr>")
        rows = "".join(
            f"<li>{e(CATEGORY_WORDS.get(c, c))} ({e(c)}): {n:,} records"
            + ("" if ok else " <span class=\"diff\">— not declared in the policy</span>")
            + "</li>" for c, n, ok in item.categories)
        body.append(f"<tr><th>Categories held</th><td><ul>{rows}</ul></td></tr>")
        body.append("<tr><th>Processors</th><td>" + "<br>".join(e(p) for p in item.processors)
                    + "</td></tr>")
        body.append("<tr><th>Retention (policy)</th><td>"
                    + "<br>".join(e(r) for r in item.retention) + "</td></tr>")
        if item.shop_settings:
            body.append("<tr><th>The shop's own settings</th><td>" + "<br>".join(
                e(f"{s.label}: {s.shop_value}" + ("" if s.verdict == "ok" else
                                                  f" ({s.verdict})"))
                for s in item.shop_settings) + "</td></tr>")
        body.append(f"<tr><th>Erasure</th><td>{e(item.erasure)}</td></tr></table>")
    return _page("Record of processing activities", body)


@dataclass(frozen=True)
class HeldRow:
    category: str
    words: str
    where: tuple[str, ...]
    declared: bool
    held: bool

    @property
    def mark(self) -> str:
        if self.held and not self.declared:
            return "held, not declared in the policy"
        if self.declared and not self.held:
            return "declared, not held"
        return ""


def what_we_hold(items: list[Activity], declared: PolicySettings | None) -> list[HeldRow]:
    """Per category, the systems that hold it, and its difference from [policy]."""
    declared_any = set(declared.categories) if declared else set()
    if declared:
        for extra in declared.systems.values():
            declared_any.update(extra)
    rows = []
    for category in (str(c) for c in Category):
        where = tuple(dict.fromkeys(SYSTEM_WORDS.get(i.kind, i.kind) for i in items
                                    if any(c == category for c, _, _ in i.categories)))
        undeclared_somewhere = any(c == category and not ok for i in items
                                   for c, _, ok in i.categories)
        if not where and category not in declared_any:
            continue
        rows.append(HeldRow(category, CATEGORY_WORDS.get(category, category), where,
                            category in declared_any and not undeclared_somewhere,
                            bool(where)))
    return rows


def what_we_hold_text(rows: list[HeldRow]) -> str:
    lines = ["What we hold about you", "", "We hold:"]
    for row in rows:
        if not row.held:
            continue
        lines.append(f"- {row.words[:1].upper()}{row.words[1:]}, in {', '.join(row.where)}."
                     + (f"   [{row.mark}]" if row.mark else ""))
    missing = [row for row in rows if not row.held]
    if missing:
        lines += ["", "Declared in the policy but not held anywhere now:"]
        lines += [f"- {row.words}" for row in missing]
    return "\n".join(lines) + "\n"


def what_we_hold_html(rows: list[HeldRow]) -> str:
    e = html.escape
    body = ["<h1>What we hold</h1>", "<p>Generated from what the ledger holds; rows marked "
            "differ from the declared policy.</p>", "<table><tr><th>What</th><th>Where"
            "</th><th>Difference from the policy</th></tr>"]
    for row in rows:
        body.append(f"<tr><td>{e(row.words[:1].upper() + row.words[1:])}</td>"
                    f"<td>{e(', '.join(row.where) or '—')}</td>"
                    f"<td class=\"diff\">{e(row.mark)}</td></tr>")
    body.append("</table>")
    return _page("What we hold", body)


def write_documents(ledger: Ledger, retention: RetentionSettings,
                    declared: PolicySettings | None, out: Path) -> list[Path]:
    """Write the four documents into `out` (created if needed); returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    at = utcnow()
    items = activities(ledger, retention, declared)
    rows = what_we_hold(items, declared)
    documents = {"ropa.html": ropa_html(items, declared, at), "ropa.csv": ropa_csv(items),
                 "what-we-hold.html": what_we_hold_html(rows),
                 "what-we-hold.txt": what_we_hold_text(rows)}
    paths = []
    for name, text in documents.items():
        path = out / name
        write_private(path, text, replace=True)
        paths.append(path)
    return paths
