"""The request register on SQLite and PostgreSQL: due dates by calendar month, one extension
within the first month, closing, an overdue request as a high finding, and the bad input
(unknown id, a future date, a late extension) refused with nothing written. Through click
too: the register and the trail hold no email."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from daemon import trail
from daemon.access import person_ref
from daemon.audit import current_findings, run_audit
from daemon.cli import main
from daemon.config import RetentionSettings
from daemon.ledger import AuditLogEntry, Ledger, Request
from daemon.requests import (
    RegisterError,
    add_months,
    attach,
    close_request,
    extend_request,
    list_requests,
    open_request,
    parse_received,
)

NOW = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)
ADA = "ada@example.com"


def entries(ledger: Ledger) -> list[AuditLogEntry]:
    with ledger.sessions() as session:
        return list(session.scalars(select(AuditLogEntry).order_by(AuditLogEntry.id)))


@pytest.mark.parametrize(("received", "due"), [
    (date(2026, 1, 31), date(2026, 2, 28)), (date(2024, 1, 31), date(2024, 2, 29)),
    (date(2026, 3, 15), date(2026, 4, 15)), (date(2026, 12, 5), date(2027, 1, 5))])
def test_due_is_one_calendar_month_after_receipt(received: date, due: date) -> None:
    assert add_months(received, 1) == due


def test_open_extend_close_and_the_trail(ledger: Ledger) -> None:
    person = person_ref(ledger, ADA)
    opened = open_request(ledger, "erasure", person, received=date(2026, 11, 20), now=NOW)
    assert (opened.due, opened.days_left(NOW.date()), opened.status) == (
        date(2026, 12, 20), 18, "open")
    extended = extend_request(ledger, opened.id, "three shops and a dispute", now=NOW)
    assert extended.due == date(2027, 2, 20) and extended.extended
    with pytest.raises(RegisterError, match="extended already"):
        extend_request(ledger, opened.id, "again", now=NOW)
    closed = close_request(ledger, opened.id, now=NOW)
    assert closed.status == "closed" and list_requests(ledger) == []
    actions = [e.action for e in entries(ledger)]
    assert actions == ["request.open", "request.extend", "request.close"]
    assert all(ADA not in e.detail for e in entries(ledger))
    assert "three shops" not in entries(ledger)[1].detail
    assert trail.verify(ledger).ok


def test_bad_input_is_refused_and_changes_nothing(ledger: Ledger) -> None:
    person = person_ref(ledger, ADA)
    with pytest.raises(RegisterError, match="in the future"):
        parse_received("2026-12-03", NOW)
    with pytest.raises(RegisterError, match="not a date"):
        parse_received("3rd of May", NOW)
    old = open_request(ledger, "access", person, received=date(2026, 10, 1), now=NOW)
    before = len(entries(ledger))
    with pytest.raises(RegisterError, match=r"within the first month \(by 2026-11-01\)"):
        extend_request(ledger, old.id, "complex", now=NOW)
    with pytest.raises(RegisterError, match="no request 'nosuchid'"):
        close_request(ledger, "nosuchid", now=NOW)
    with pytest.raises(RegisterError, match="no request"):
        extend_request(ledger, "nosuchid", "x", now=NOW)
    assert len(entries(ledger)) == before
    (still,) = list_requests(ledger)
    assert (still.due, still.extended) == (date(2026, 11, 1), False)


def test_export_and_erase_attach_to_the_open_request_or_open_one(ledger: Ledger) -> None:
    person = person_ref(ledger, ADA)
    opened = open_request(ledger, "erasure", person, received=date(2026, 11, 28), now=NOW)
    assert attach(ledger, "erasure", person, "abc123", now=NOW).id == opened.id
    fresh = attach(ledger, "access", person, "def456", now=NOW)
    assert fresh.id != opened.id and fresh.received == NOW.date()
    assert {v.id for v in list_requests(ledger)} == {opened.id, fresh.id}


def test_an_overdue_request_is_a_high_finding_until_closed(ledger: Ledger) -> None:
    policy = RetentionSettings()
    person = person_ref(ledger, ADA)
    late = open_request(ledger, "access", person, received=date(2026, 10, 31), now=NOW)
    due_today = open_request(ledger, "access", person, received=date(2026, 11, 2), now=NOW)
    run_audit(ledger, policy, now=NOW, rules=["request-overdue"])
    (finding,) = current_findings(ledger, now=NOW, rules=["request-overdue"])
    assert finding.severity == "high"
    assert finding.detail == "access request received 2026-10-31, due 2026-11-30"
    close_request(ledger, late.id, now=NOW)
    result = run_audit(ledger, policy, now=NOW + timedelta(minutes=1), rules=["request-overdue"])
    assert result.resolved == 1 and result.current == 0
    result = run_audit(ledger, policy, now=NOW + timedelta(days=1), rules=["request-overdue"])
    assert result.new == 1, due_today


def test_the_request_commands_through_click(tmp_path: Path, sqlite_url: str) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'[ledger]\nurl = "{sqlite_url}"\n', encoding="utf-8")

    def run(*args: str) -> tuple[int, str]:
        result = CliRunner().invoke(main, ["--config", str(config), "request", *args])
        return result.exit_code, result.output

    today = datetime.now(UTC).date()
    code, out = run("open", "erasure", "Ada@Example.com", "--received", today.isoformat())
    assert code == 0, out
    request_id = out.split()[1]
    assert f"due {add_months(today, 1).isoformat()}" in out
    code, out = run("list")
    assert code == 0 and request_id in out and "day(s) left" in out and "1 trail entry" in out
    code, out = run("open", "access", ADA, "--received", "2999-01-01")
    assert code == 1 and "in the future" in out
    code, out = run("extend", "0000deadbeef", "--reason", "complex")
    assert code == 1 and "no request '0000deadbeef'" in out
    code, out = run("extend", request_id, "--reason", "complex")
    assert code == 0 and "extended" in out
    code, out = run("close", request_id)
    assert code == 0 and "closed" in out
    ledger = Ledger.open(sqlite_url)
    try:
        with ledger.sessions() as session:
            (row,) = session.scalars(select(Request))
        assert row.person == person_ref(ledger, ADA)
        assert all("ada" not in e.detail.lower() for e in entries(ledger))
    finally:
        ledger.close()
