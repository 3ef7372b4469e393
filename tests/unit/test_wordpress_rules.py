"""The rules on what WordPress keeps, over the ledger a sync writes (on SQLite and
PostgreSQL): a comment in spam or trash is timed from when a sync first saw it there (the
REST API gives no time of the change), commenters' network data past its period, and
inactive accounts on a site without a shop, never one that runs the site."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from connectors.base import Record
from daemon.audit import current_findings, run_audit
from daemon.config import RetentionSettings
from daemon.ledger import Ledger
from daemon.sync import upsert_records
from vocabulary import Category

NOW = datetime(2026, 11, 1, 6, 0, tzinfo=UTC)
POLICY = RetentionSettings()
DAY = timedelta(days=1)


def _comment(ident: str, status: str, *, written: datetime, email: str = "a@example.net",
             network: bool = True) -> Record:
    categories = {Category.EMAIL, Category.NAME, Category.FREE_TEXT}
    if network:
        categories |= {Category.IP_ADDRESS, Category.USER_AGENT}
    return Record("comment", ident, email, frozenset(categories), status=status,
                  created_at=written)


def _user(ident: str, role: str, *, registered: datetime, email: str) -> Record:
    return Record("user", ident, email, frozenset({Category.ACCOUNT, Category.EMAIL}),
                  status=role, created_at=registered)


def _sync(ledger: Ledger, records: list[Record], at: datetime) -> None:
    with ledger.session() as session:
        source = ledger.source(session, "wp:blog", "wordpress")
        upsert_records(session, source.id, records, at, touch_unchanged=True)


def _found(ledger: Ledger, at: datetime) -> set[tuple[str, str]]:
    run_audit(ledger, POLICY, now=at)
    return {(f.rule, f.external_id) for f in current_findings(ledger, now=at)
            if f.rule != "sync-stale"}


def test_spam_and_trash_are_timed_from_when_the_ledger_saw_the_change(ledger: Ledger) -> None:
    written = NOW - 10 * DAY
    _sync(ledger, [_comment("1", "approved", written=written),
                   _comment("2", "spam", written=written)], NOW - 40 * DAY)
    # Moved to the trash 5 days ago: written long before, trashed only now.
    _sync(ledger, [_comment("1", "trash", written=written),
                   _comment("2", "spam", written=written)], NOW - 5 * DAY)
    kept = {ident for rule, ident in _found(ledger, NOW)
            if rule == "comment-kept-in-spam-or-trash"}
    assert kept == {"2"}  # in spam since first seen 40 days ago; in the trash 5 days only
    later = {ident for rule, ident in _found(ledger, NOW + 30 * DAY)
             if rule == "comment-kept-in-spam-or-trash"}
    assert later == {"1", "2"}


def test_commenters_network_data_past_its_period(ledger: Ledger) -> None:
    old = NOW - POLICY.network_data - DAY
    _sync(ledger, [_comment("1", "approved", written=old),
                   _comment("2", "approved", written=NOW - DAY),
                   _comment("3", "approved", written=old, network=False)], NOW)
    assert {ident for rule, ident in _found(ledger, NOW)
            if rule == "comment-network-data-past-retention"} == {"1"}


def test_inactive_site_accounts_never_staff_and_not_a_recent_commenter(ledger: Ledger) -> None:
    long_ago = NOW - POLICY.inactive_accounts - 30 * DAY
    _sync(ledger, [
        _user("1", "administrator", registered=long_ago, email="boss@example.net"),
        _user("2", "editor", registered=long_ago, email="ed@example.net"),
        _user("3", "subscriber", registered=long_ago, email="gone@example.net"),
        _user("4", "subscriber", registered=long_ago, email="talks@example.net"),
        _user("5", "subscriber", registered=NOW - DAY, email="new@example.net"),
        _comment("9", "approved", written=NOW - 3 * DAY, email="talks@example.net",
                 network=False),
    ], NOW)
    assert {ident for rule, ident in _found(ledger, NOW)
            if rule == "inactive-site-account"} == {"3"}
