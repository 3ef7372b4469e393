"""The policy's promises end to end from the demo estate (twins over HTTP on 127.0.0.1, the
seed policy's [policy] section), on SQLite and PostgreSQL: each promise finding, the shops
side by side, both documents, and a key that may not read the shop's settings."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from daemon.audit import current_findings, run_audit
from daemon.config import Settings, load_settings
from daemon.ledger import Holding, Ledger, Source, categories_of
from daemon.policy import CLEANUP_GRACE, format_side_by_side, side_by_side, unread_parts
from daemon.report import render_digest
from daemon.ropa import write_documents
from daemon.sources import sync_configured
from sandbox.demo import RunningEstate
from sandbox.estate import Estate, EstateSpec
from sandbox.seed import build_estate

NOW = datetime(2026, 11, 1, 6, 0, tzinfo=UTC)
PROMISES = ("category-not-declared", "processor-not-named", "plugin-unclassified",
            "shop-cleanup-off", "shop-cleanup-not-running")


def _sync(ledger: Ledger, settings: Settings) -> None:
    results = sync_configured(ledger, settings, full=True)
    assert all(r.ok for r in results), [r.error for r in results]


@pytest.fixture
def estate_run(ledger: Ledger, ledger_url: str,
               tmp_path: Path) -> Iterator[tuple[Estate, Ledger, Settings]]:
    estate = build_estate(EstateSpec(seed=7, people=120, now=NOW))
    shop = estate.shops["allmyink"]
    # A pending order long past allmyink's own 30-day clean-up: it should have been trashed.
    shop.add_order(status="pending", date_created=NOW - timedelta(days=200),
                   billing={"email": "late@example.com", "first_name": "Late"})
    with RunningEstate(estate) as running:
        settings = load_settings(running.write_config(tmp_path, ledger_url=ledger_url,
                                                      policy=True))
        _sync(ledger, settings)
        run_audit(ledger, settings.retention, now=NOW, declared=settings.policy)
        yield estate, ledger, settings


def _by_rule(ledger: Ledger, rule: str) -> list:
    return [f for f in current_findings(ledger, now=NOW) if f.rule == rule]


def _live_counts(ledger: Ledger, source: str) -> dict[str, int]:
    """Per category, the live holdings of one source holding it, counted here in Python."""
    with ledger.sessions() as session:
        texts = session.scalars(select(Holding.categories).join(Source).where(
            Source.name == source, Holding.gone_at.is_(None))).all()
    counts: dict[str, int] = {}
    for text in texts:
        for category in categories_of(text):
            counts[category] = counts.get(category, 0) + 1
    return counts


def test_each_category_held_but_not_declared_is_a_finding_with_its_count(
        estate_run: tuple[Estate, Ledger, Settings]) -> None:
    _, ledger, settings = estate_run
    assert settings.policy is not None
    found = {(f.source, re.search(r"\((\w+)\) held on", f.detail).group(1)): f.detail
             for f in _by_rule(ledger, "category-not-declared") if f.detail}
    for source in ("woo:allmyink", "woo:papercraft", "stripe"):
        counts = _live_counts(ledger, source)
        kind = "stripe" if source == "stripe" else "woocommerce"
        expected = {c for c in counts
                    if c not in settings.policy.declared(kind) and c != "card_number"}
        assert expected, source
        assert {c for s, c in found if s == source} == expected
        for category in expected:
            assert f"held on {counts[category]} record(s)" in found[(source, category)]
    # IP addresses on the shops' orders: the policy calls connection details non-personal.
    assert ("woo:allmyink", "ip_address") in found


def test_processors_the_policy_does_not_name_are_found_per_plugin(
        estate_run: tuple[Estate, Ledger, Settings]) -> None:
    _, ledger, _ = estate_run
    details = {(f.source, f.detail) for f in _by_rule(ledger, "processor-not-named")}
    assert {source for source, _ in details} == {"woo:allmyink", "woo:papercraft"}
    assert any("Facebook for WooCommerce" in d and "to Meta" in d for s, d in details
               if s == "woo:allmyink")
    assert any("PayPal" in d for s, d in details if s == "woo:papercraft")
    # Stripe and Mailchimp are named by the seed policy: no finding for them.
    assert not any("Stripe holds" in d or "Mailchimp holds" in d for _, d in details)


def test_a_plugin_the_catalogue_does_not_know_is_listed_never_guessed(
        estate_run: tuple[Estate, Ledger, Settings]) -> None:
    _, ledger, _ = estate_run
    found = _by_rule(ledger, "plugin-unclassified")
    assert [(f.source, "allmyink-label-printer" in (f.detail or "")) for f in found] == [
        ("woo:allmyink", True)]


def test_a_shop_whose_clean_up_is_off_is_found_setting_by_setting(
        estate_run: tuple[Estate, Ledger, Settings]) -> None:
    _, ledger, settings = estate_run
    found = _by_rule(ledger, "shop-cleanup-off")
    assert {f.source for f in found} == {"woo:papercraft"}
    assert len(found) == 6
    assert all(": off" in (f.detail or "") for f in found)
    with ledger.sessions() as session:
        rows = side_by_side(session, settings.retention)
    assert {(r.shop, r.verdict) for r in rows if r.label == "Retain pending orders"} == {
        ("allmyink", "ok"), ("papercraft", "off")}


def test_a_clean_up_that_stopped_running_is_found_with_how_many_and_the_oldest(
        estate_run: tuple[Estate, Ledger, Settings]) -> None:
    estate, ledger, _ = estate_run
    shop = estate.shops["allmyink"]
    cutoff = NOW - timedelta(days=30) - CLEANUP_GRACE
    late = [o for o in shop.orders.values() if o["status"] == "pending"
            and datetime.fromisoformat(o["date_created_gmt"]).replace(tzinfo=UTC) < cutoff]
    assert late
    oldest = min(o["date_created_gmt"][:10] for o in late)
    found = [f for f in _by_rule(ledger, "shop-cleanup-not-running")
             if "trashes pending orders" in (f.detail or "")]
    assert len(found) == 1 and found[0].source == "woo:allmyink"
    assert f"still there: {len(late)}, the oldest from {oldest}" in found[0].detail
    # papercraft has no clean-up set: nothing of it can be "not running".
    assert all(f.source == "woo:allmyink" for f in _by_rule(ledger, "shop-cleanup-not-running"))


def test_without_a_policy_section_no_promise_is_checked(
        estate_run: tuple[Estate, Ledger, Settings]) -> None:
    _, ledger, settings = estate_run
    result = run_audit(ledger, settings.retention, now=NOW + timedelta(minutes=1))
    assert all(result.per_rule[rule].current == 0 for rule in PROMISES)
    assert all(result.per_rule[rule].resolved > 0 for rule in PROMISES)


def test_the_record_of_processing_and_what_we_hold_come_from_the_ledger(
        estate_run: tuple[Estate, Ledger, Settings], tmp_path: Path) -> None:
    _, ledger, settings = estate_run
    paths = write_documents(ledger, settings.retention, settings.policy, tmp_path / "docs")
    assert sorted(p.name for p in paths) == ["ropa.csv", "ropa.html", "what-we-hold.html",
                                             "what-we-hold.txt"]
    rows = list(csv.DictReader(io.StringIO((tmp_path / "docs/ropa.csv").read_text())))
    counts = _live_counts(ledger, "woo:allmyink")
    shop = {r["category"]: r for r in rows if r["source"] == "woo:allmyink"}
    assert {c: int(r["records"]) for c, r in shop.items()} == counts
    assert shop["ip_address"]["declared"] == "NO" and shop["email"]["declared"] == "yes"
    assert "Meta" in shop["email"]["processors"]
    assert "Retain pending orders: 30 days" in shop["email"]["shop's own settings"]
    assert shop["email"]["purpose"] == "to take, deliver and account for orders"
    text = (tmp_path / "docs/what-we-hold.txt").read_text()
    assert "IP addresses, in the shops" in text
    ip_line = next(line for line in text.splitlines() if line.startswith("- IP addresses"))
    email_line = next(line for line in text.splitlines() if line.startswith("- Email"))
    assert "not declared" in ip_line and "not declared" not in email_line
    assert "not declared in the policy" in (tmp_path / "docs/ropa.html").read_text()


def test_the_email_shows_the_shops_side_by_side(
        estate_run: tuple[Estate, Ledger, Settings]) -> None:
    _, ledger, settings = estate_run
    email = render_digest(ledger, settings, now=NOW)
    assert "SIDE BY SIDE" in email.text
    assert "papercraft: Retain pending orders: off (policy: 30d) — off" in email.text
    assert "The shops' own clean-up, side by side" in email.html


def test_a_key_that_may_not_read_settings_says_which_permission_and_the_rest_runs(
        ledger: Ledger, ledger_url: str, tmp_path: Path) -> None:
    estate = build_estate(EstateSpec(seed=7, people=60, now=NOW))
    # papercraft's key belongs to a shop manager: no manage_options for the clean-up
    # options; allmyink's user may not read system_status at all.
    estate.shops["papercraft"].admin.role = "shop_manager"
    estate.shops["allmyink"].forbidden = {"system_status"}
    with RunningEstate(estate) as running:
        settings = load_settings(running.write_config(tmp_path, ledger_url=ledger_url,
                                                      policy=True))
        _sync(ledger, settings)
        result = run_audit(ledger, settings.retention, now=NOW, declared=settings.policy)
        from daemon.check import policy_checks

        checks = {c.name: c for c in policy_checks(settings)}
    with ledger.sessions() as session:
        rows = side_by_side(session, settings.retention)
    papercraft = [r for r in rows if r.shop == "papercraft" and r.label.startswith("Retain")]
    assert papercraft and all(r.shop_value == "not readable" for r in papercraft)
    assert all("manage_options" in r.verdict for r in papercraft)
    # The erasure settings of the same shop were still read.
    assert any(r.shop == "papercraft" and r.label.startswith("Erasure") and
               r.shop_value == "no" for r in rows)
    assert _by_rule(ledger, "shop-cleanup-off") == []
    assert not any(f.source == "woo:allmyink" for f in _by_rule(ledger, "plugin-unclassified"))
    assert result.per_rule["category-not-declared"].current > 0
    assert not checks["policy:woo:papercraft"].ok
    assert "manage_options" in checks["policy:woo:papercraft"].detail
    assert "system_status" in checks["policy:woo:allmyink"].detail
    assert "manage_woocommerce" in checks["policy:woo:allmyink"].detail
    # The email says what could not be read, and the audit's own lines do too.
    text = render_digest(ledger, settings, now=NOW).text
    assert "Not readable: allmyink: plugins not readable" in text
    with ledger.sessions() as session:
        lines = format_side_by_side(side_by_side(session, settings.retention),
                                    unread_parts(session))
    assert any(line.startswith("  ? allmyink: plugins") and "manage_woocommerce" in line
               for line in lines)
    assert any("papercraft: retention" in line and "manage_options" in line for line in lines)


def test_a_configured_system_whose_processor_is_not_named_is_found_too(
        estate_run: tuple[Estate, Ledger, Settings]) -> None:
    _, ledger, settings = estate_run
    assert settings.policy is not None
    only_wordpress = settings.policy.model_copy(update={"processors": ["WordPress"]})
    run_audit(ledger, settings.retention, now=NOW + timedelta(minutes=1),
              rules=["processor-not-named"], declared=only_wordpress)
    found = _by_rule(ledger, "processor-not-named")
    systems = {f.source for f in found if "holds personal data here" in (f.detail or "")}
    assert "stripe" in systems and any(s.startswith("mailchimp:") for s in systems)
    assert not any(s.startswith("woo:") for s in systems)
    # The shops' Stripe and Mailchimp plugins now send to processors the policy omits.
    assert any("WooCommerce Stripe Gateway" in (f.detail or "") for f in found)
