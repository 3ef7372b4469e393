"""The morning email's open requests (days left, those due within 7 days first, overdue
said) and its fix commands: under each rule the one that fixes all of it, under each
finding its own; none for a rule without a fix. On SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import date, timedelta

from daemon import report
from daemon.audit import run_audit
from daemon.config import RetentionSettings
from daemon.ledger import Ledger
from daemon.requests import open_request
from tests.unit.test_report import NOW, Estate, estate, flat  # noqa: F401  (fixture)


def test_open_requests_are_listed_soonest_first_with_days_left(
        estate: Estate, ledger: Ledger) -> None:  # noqa: F811
    later = open_request(ledger, "access", "p-later", received=NOW.date() - timedelta(days=2),
                         now=NOW)
    soon = open_request(ledger, "erasure", "p-soon", received=date(2025, 2, 8), now=NOW)
    late = open_request(ledger, "access", "p-late", received=date(2025, 1, 20), now=NOW)
    run_audit(ledger, RetentionSettings(), now=NOW, rules=["request-overdue"])
    digest = report.build_digest(ledger, now=NOW + timedelta(seconds=1))
    (overdue,) = [g for g in digest.new_by_rule if g.rule == "request-overdue"]
    assert overdue.severity == "high" and overdue.total == 1 and overdue.fix_command == ""
    assert [r.id for r in digest.due_soon] == [late.id, soon.id]
    assert [r.id for r in digest.due_later] == [later.id]
    text = flat(report.render(digest).text)
    assert text.index(late.id) < text.index(soon.id) < text.index(later.id)
    assert f"Access request {late.id}, received 20 Jan 2025, due 20 Feb 2025: OVERDUE by " \
           "12 days" in text
    assert "due 08 Mar 2025: 4 days left" in text
    html = report.render(digest).html
    assert "Open requests" in html and "OVERDUE by 12 days" in html
    assert "p-late" not in text and "p-late" not in html
    assert "Requests past their due day" in text


def test_each_rule_says_the_command_that_fixes_all_of_it_and_each_finding_its_own(
        estate: Estate) -> None:  # noqa: F811
    estate.source("woo:allmyink")
    for number in range(2):
        holding = estate.holding("woo:allmyink", "customer", str(70 + number),
                                 f"idle{number}@example.com")
        estate.finding("inactive-account", holding)
    estate.finding("sync-stale", source="woo:allmyink", severity="high")
    digest = report.build_digest(estate.ledger, now=NOW)
    groups = {g.rule: g for g in digest.new_by_rule}
    assert groups["inactive-account"].fix_command == \
        "privacy-ledger fix --rule inactive-account"
    assert [i.fix_command for i in groups["inactive-account"].items] == [
        "privacy-ledger fix inactive-account woo:allmyink 70",
        "privacy-ledger fix inactive-account woo:allmyink 71"]
    assert groups["sync-stale"].fix_command == ""
    rendered = report.render(digest)
    text = flat(rendered.text)
    assert "Fix all of them: privacy-ledger fix --rule inactive-account" in text
    assert "Fix: privacy-ledger fix inactive-account woo:allmyink 71" in text
    assert "privacy-ledger fix inactive-account woo:allmyink 70" in rendered.html
    assert "fix --rule sync-stale" not in text
    assert all(len(line) <= 78 for line in rendered.text.splitlines())
