"""`privacy-ledger audit` and `privacy-ledger ack` through click, on a config file and a real
ledger (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import select

from daemon.cli import main
from daemon.ledger import AuditLogEntry, Holding, Ledger, Source, Subject, SyncRun
from vocabulary import utcnow

JSON_KEYS = ["rule", "severity", "source", "record_type", "external_id", "email",
             "first_detected", "last_detected", "status", "detail"]


@pytest.fixture
def config(tmp_path: Path, ledger_url: str) -> Path:
    """A config with only a ledger, and a ledger holding one old pending order with a card
    number in its note, in a shop synced an hour ago."""
    now = utcnow()
    ledger = Ledger.open(ledger_url)
    with ledger.session() as session:
        shop = Source(name="woo:allmyink", kind="woocommerce", created_at=now - timedelta(400))
        person = Subject(email="ada@example.com", first_seen=now, last_seen=now)
        session.add_all([shop, person])
        session.flush()
        session.add(SyncRun(source_id=shop.id, mode="full", status="success",
                            started_at=now - timedelta(hours=1), finished_at=now))
        session.add(Holding(source_id=shop.id, record_type="order", external_id="1234",
                            subject_id=person.id, categories=",card_number,email,free_text,",
                            status="pending", anonymised=False, created_at=now - timedelta(90),
                            evidence='["card number pattern in customer_note"]',
                            first_seen=now, last_seen=now))
    ledger.close()
    path = tmp_path / "config.toml"
    path.write_text(f'[ledger]\nurl = "{ledger_url}"\n', encoding="utf-8")
    return path


def invoke(config: Path, *args: str) -> Result:
    return CliRunner().invoke(main, ["--config", str(config), *args])


def test_audit_json_lists_findings_with_exactly_the_documented_keys(config: Path) -> None:
    result = invoke(config, "audit", "--json")
    assert result.exit_code == 0, result.output
    findings = json.loads(result.stdout)
    assert [f["rule"] for f in findings] == ["card-number-exposed",
                                             "unpaid-order-past-retention"]
    for finding in findings:
        assert list(finding) == JSON_KEYS
        assert (finding["source"], finding["record_type"], finding["external_id"],
                finding["email"], finding["status"]) == (
            "woo:allmyink", "order", "1234", "ada@example.com", "new")
        assert finding["first_detected"].endswith("Z")

    again = json.loads(invoke(config, "audit", "--json").stdout)
    assert {f["status"] for f in again} == {"open"}


def test_audit_prints_a_summary_grouped_by_rule_with_what_to_do(config: Path) -> None:
    result = invoke(config, "audit")
    assert result.exit_code == 0, result.output
    assert "2 finding(s): 2 new, 0 open, 0 acknowledged." in result.output
    assert "[high] card-number-exposed (1)" in result.output
    assert "→ delete order 1234 in allmyink permanently (empty the trash)" in result.output
    # The command that fixes it, and the one that fixes all of the rule.
    assert "privacy-ledger fix unpaid-order-past-retention woo:allmyink 1234" in result.output
    assert "fix all of them: privacy-ledger fix --rule unpaid-order-past-retention" \
        in result.output


def test_audit_runs_only_the_rule_asked_for(config: Path) -> None:
    result = invoke(config, "audit", "--json", "--rule", "card-number-exposed")
    assert result.exit_code == 0, result.output
    assert [f["rule"] for f in json.loads(result.stdout)] == ["card-number-exposed"]


def test_audit_rejects_an_unknown_rule_naming_it_and_the_known_ones(config: Path) -> None:
    result = invoke(config, "audit", "--rule", "card-numbers")
    assert result.exit_code == 2
    assert "unknown rule 'card-numbers'" in result.output
    assert "card-number-exposed" in result.output


def test_audit_filters_by_source_and_rejects_an_unknown_one(config: Path) -> None:
    shown = invoke(config, "audit", "--json", "--source", "allmyink")
    assert len(json.loads(shown.stdout)) == 2
    unknown = invoke(config, "audit", "--source", "papercraft")
    assert unknown.exit_code == 2
    assert "no source 'papercraft'" in unknown.output


def test_ack_marks_the_finding_acknowledged_and_records_it(config: Path,
                                                           ledger_url: str) -> None:
    invoke(config, "audit")
    until = (utcnow() + timedelta(days=30)).date().isoformat()
    result = invoke(config, "ack", "card-number-exposed", "allmyink", "1234",
                    "--reason", "customer disputes the charge", "--until", until)
    assert result.exit_code == 0, result.output
    assert f"acknowledged until {until}: card-number-exposed woo:allmyink order 1234" \
        in result.output
    statuses = {f["rule"]: f["status"]
                for f in json.loads(invoke(config, "audit", "--json").stdout)}
    assert statuses == {"card-number-exposed": "acknowledged",
                        "unpaid-order-past-retention": "open"}
    ledger = Ledger.open(ledger_url)
    with ledger.sessions() as session:
        actions = session.scalars(select(AuditLogEntry.action)
                                  .order_by(AuditLogEntry.id)).all()
    ledger.close()
    assert actions == ["audit", "ack", "audit"]


def test_ack_of_a_finding_that_does_not_exist_fails_naming_it(config: Path) -> None:
    invoke(config, "audit")
    result = invoke(config, "ack", "order-past-retention", "woo:allmyink", "1234",
                    "--reason", "x")
    assert result.exit_code == 1
    assert "no current order-past-retention finding for woo:allmyink 1234" in result.output


@pytest.mark.parametrize("until, message", [
    ("31/12/2027", "'31/12/2027' is not a date: write YYYY-MM-DD"),
    ("2001-01-01", "2001-01-01 is in the past"),
])
def test_ack_rejects_a_bad_until_date(config: Path, until: str, message: str) -> None:
    result = invoke(config, "ack", "card-number-exposed", "allmyink", "1234", "--reason", "x",
                    "--until", until)
    assert result.exit_code == 2
    assert message in result.output


def test_ack_rejects_an_unknown_rule(config: Path) -> None:
    result = invoke(config, "ack", "stale", "allmyink", "1234", "--reason", "x")
    assert result.exit_code == 1
    assert "unknown rule 'stale'; the rules are: inactive-account" in result.output
