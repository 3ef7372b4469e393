"""`privacy-ledger verify-log` through click on a real ledger: an intact chain, an edited row
and a removed one named, and the entries of one person found by reference, never by email."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import delete, select, update

from daemon import trail
from daemon.access import person_ref
from daemon.cli import main
from daemon.ledger import AuditLogEntry, Ledger


@pytest.fixture
def ledger(sqlite_url: str) -> Iterator[Ledger]:
    opened = Ledger.open(sqlite_url)
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture
def config(tmp_path: Path, sqlite_url: str, ledger: Ledger) -> Path:
    """A config with only a ledger, whose trail holds a sync, two requests about Ada and one
    about Grace."""
    trail.record(ledger, "daemon", "sync", {"source": "stripe", "status": "success"})
    for email, action in (("ada@example.com", "export"), ("grace@example.com", "export"),
                          ("ada@example.com", "erasure.done")):
        trail.record(ledger, "cli", action, {"request": action,
                                             "person": person_ref(ledger, email)})
    path = tmp_path / "config.toml"
    path.write_text(f'[ledger]\nurl = "{sqlite_url}"\n', encoding="utf-8")
    return path


def invoke(config: Path, *args: str) -> Result:
    return CliRunner().invoke(main, ["--config", str(config), "verify-log", *args])


def ids(ledger: Ledger) -> list[int]:
    with ledger.sessions() as session:
        return list(session.scalars(select(AuditLogEntry.id).order_by(AuditLogEntry.id)))


def test_verify_log_passes_and_prints_the_head_hash_when_the_chain_is_intact(
        config: Path, ledger: Ledger) -> None:
    result = invoke(config)
    assert result.exit_code == 0, result.output
    assert "audit_log: 4 entries, the hash chain is intact." in result.stdout
    with ledger.sessions() as session:
        head = session.scalar(select(AuditLogEntry.hash).order_by(AuditLogEntry.id.desc()))
    assert f"latest hash: {head}" in result.stdout


def test_verify_log_fails_naming_the_entry_when_a_row_was_edited(
        config: Path, ledger: Ledger) -> None:
    edited = ids(ledger)[1]
    with ledger.session() as session:
        session.execute(update(AuditLogEntry).where(AuditLogEntry.id == edited)
                        .values(detail='{"request":"export","person":"p-someone-else"}'))
    result = invoke(config)
    assert result.exit_code == 1
    assert f"entry {edited} (export at " in result.stderr and "was altered" in result.stderr
    assert "BROKEN" in result.stderr


def test_verify_log_fails_naming_the_entry_after_a_removed_one(
        config: Path, ledger: Ledger) -> None:
    removed, following = ids(ledger)[1:3]
    with ledger.session() as session:
        session.execute(delete(AuditLogEntry).where(AuditLogEntry.id == removed))
    result = invoke(config)
    assert result.exit_code == 1
    assert f"entry {following} does not follow the entry before it" in result.stderr


def test_verify_log_lists_one_persons_entries_by_their_reference_only(
        config: Path, ledger: Ledger) -> None:
    result = invoke(config, "--person", " Ada@Example.com ")
    assert result.exit_code == 0, result.output
    listed = [line for line in result.stdout.splitlines() if line.startswith("  #")]
    assert [line.split()[4] for line in listed] == ["export", "erasure.done"]
    reference = person_ref(ledger, "ada@example.com")
    assert all(reference in line for line in listed)
    with ledger.sessions() as session:
        assert not any("@" in detail for detail in session.scalars(select(AuditLogEntry.detail)))
    nobody = invoke(config, "--person", "nobody@example.com")
    assert nobody.exit_code == 0 and "no entry about nobody@example.com" in nobody.stdout


def test_verify_log_refuses_a_person_that_is_not_an_email(config: Path) -> None:
    result = invoke(config, "--person", "ada")
    assert result.exit_code == 2 and "'ada' is not an email address" in result.output


def test_person_reference_is_stable_per_ledger_and_differs_between_ledgers(
        ledger: Ledger, tmp_path: Path) -> None:
    first = person_ref(ledger, "ada@example.com")
    assert person_ref(ledger, " ADA@example.com") == first
    assert person_ref(ledger, "grace@example.com") != first
    other = Ledger.open(f"sqlite:///{tmp_path / 'other.db'}")
    try:
        assert person_ref(other, "ada@example.com") != first
    finally:
        other.close()
    assert first.startswith("p-") and len(first) == 34
