"""The audit trail keyed and anchored, through `privacy-ledger verify-log` and `report` on a
real ledger (SQLite and PostgreSQL): removed newest entries, an emptied trail, entries
recomputed without the key and a rewritten chain are each found; an intact chain and an
older unkeyed one verify; the morning email's head line is what `verify-log --expect`
checks."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import delete, select, update

from daemon import trail
from daemon.cli import main
from daemon.ledger import AuditLogEntry, Ledger, LedgerKey

# The text part keeps within 78 columns: the head and the command (a shell continuation)
# go on lines of their own.
EMAIL_HEAD = re.compile(r"Audit trail: (\d+) entries, head\s+([0-9a-f]{64})\.\s+Keep this email:"
                        r".*?privacy-ledger verify-log --count (\d+) --expect \\\n\s+"
                        r"([0-9a-f]{64})", re.DOTALL)


@pytest.fixture
def state(tmp_path: Path) -> Path:
    directory = tmp_path / "state-dir"
    directory.mkdir()
    return directory


@pytest.fixture
def config(tmp_path: Path, ledger_url: str, state: Path) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(f'[ledger]\nurl = "{ledger_url}"\nstate_dir = "{state}"\n',
                    encoding="utf-8")
    return path


@pytest.fixture
def ledger(ledger_url: str) -> Iterator[Ledger]:
    """The ledger as a person with access to the database sees it: no trail key."""
    opened = Ledger.open(ledger_url)
    try:
        yield opened
    finally:
        opened.close()


def cli(config: Path, *args: str) -> Result:
    return CliRunner().invoke(main, ["--config", str(config), *args])


def audited(config: Path, times: int = 4) -> None:
    """Entries in the trail as the commands write them: one `audit` entry per run."""
    for _ in range(times):
        result = cli(config, "audit")
        assert result.exit_code == 0, result.output


def rows(ledger: Ledger) -> list[AuditLogEntry]:
    with ledger.sessions() as session:
        return list(session.scalars(select(AuditLogEntry).order_by(AuditLogEntry.id)))


def unkeyed(prev: str, entry: AuditLogEntry, detail: str) -> str:
    """What an editor of the database can compute: the hash without the key."""
    payload = json.dumps([prev, entry.at.isoformat(), entry.actor, entry.action, detail],
                         separators=(",", ":"), ensure_ascii=False).encode()
    return hashlib.sha256(payload).hexdigest()


def rewrite(ledger: Ledger, start: int, detail: str,
            digest: object = unkeyed) -> None:
    """Edit entry number `start` (0-based) and recompute every hash from there on."""
    entries = rows(ledger)
    prev = entries[start - 1].hash if start else trail.GENESIS
    with ledger.session() as session:
        for index, entry in enumerate(entries[start:]):
            body = detail if index == 0 else entry.detail
            new = digest(prev, entry, body)  # type: ignore[operator]
            session.execute(update(AuditLogEntry).where(AuditLogEntry.id == entry.id)
                            .values(detail=body, prev_hash=prev, hash=new))
            prev = new


def test_intact_keyed_chain_verifies_and_reaches_the_anchor_kept_outside_the_database(
        config: Path, ledger: Ledger, state: Path) -> None:
    audited(config)
    result = cli(config, "verify-log")
    assert result.exit_code == 0, result.output
    head = rows(ledger)[-1].hash
    assert "audit_log: 4 entries, the hash chain is intact." in result.stdout
    assert f"it reaches the head anchored in {state / 'trail.anchor'}: {head} (entry 4 of 4)" \
        in result.stdout
    assert f"privacy-ledger verify-log --expect {head} --count 4" in result.stdout
    anchor = json.loads((state / "trail.anchor").read_text())
    assert (anchor["entries"], anchor["hash"]) == (4, head)
    for name in ("trail.key", "trail.anchor"):
        assert stat.S_IMODE((state / name).stat().st_mode) == 0o600
    key = (state / "trail.key").read_text().strip()
    # The key is not in the database, and it is what the hashes are made with.
    with ledger.sessions() as session:
        assert key not in list(session.scalars(select(LedgerKey.value)))
    first = rows(ledger)[0]
    payload = json.dumps([trail.GENESIS, first.at.isoformat(), first.actor, first.action,
                          first.detail], separators=(",", ":"), ensure_ascii=False).encode()
    assert first.hash == hmac.new(key.encode(), payload, hashlib.sha256).hexdigest()
    assert key not in result.output


def test_removing_the_newest_entries_is_found_by_the_anchor(
        config: Path, ledger: Ledger) -> None:
    audited(config)
    newest = [entry.id for entry in rows(ledger)[-2:]]
    with ledger.session() as session:
        session.execute(delete(AuditLogEntry).where(AuditLogEntry.id.in_(newest)))
    result = cli(config, "verify-log")
    assert result.exit_code == 1
    assert "BROKEN: the chain has 2 entries, fewer than the 4 at the head anchored in " \
        in result.stderr
    assert "the newest entries were removed" in result.stderr


def test_removing_every_entry_is_found_by_the_anchor(config: Path, ledger: Ledger) -> None:
    audited(config)
    with ledger.session() as session:
        session.execute(delete(AuditLogEntry))
    result = cli(config, "verify-log")
    assert result.exit_code == 1
    assert "the chain has 0 entries, fewer than the 4 at the head anchored in " in result.stderr
    assert "0 entries, the hash chain is intact" not in result.output


def test_an_edited_entry_with_its_unkeyed_hash_recomputed_is_found(
        config: Path, ledger: Ledger) -> None:
    audited(config)
    edited = rows(ledger)[2]
    rewrite(ledger, 2, '{"rules":[],"findings":0}')
    result = cli(config, "verify-log")
    assert result.exit_code == 1
    assert (f"entry {edited.id} (audit at {edited.at.isoformat()}) is not keyed: it was "
            "written or recomputed without the trail key") in result.stderr


def test_a_chain_rewritten_without_the_key_is_found_by_the_anchor_and_by_expect(
        config: Path, ledger: Ledger, state: Path) -> None:
    audited(config)
    before = rows(ledger)
    # Every hash recomputed from the first entry on: the chain holds together unkeyed.
    rewrite(ledger, 0, '{"rules":[],"findings":0}')
    result = cli(config, "verify-log")
    assert result.exit_code == 1
    assert (f"entry 4 of the chain is not the head anchored in {state / 'trail.anchor'} "
            f"({before[-1].hash}): the chain was rewritten") in result.stderr
    # Whoever also removed the anchor file still meets the head the email carried.
    (state / "trail.anchor").unlink()
    expected = cli(config, "verify-log", "--expect", before[-1].hash, "--count", "4")
    assert expected.exit_code == 1
    assert f"entry 4 of the chain is not the head given by --expect ({before[-1].hash})" \
        in expected.stderr


def test_a_chain_recomputed_with_another_key_is_found(config: Path, ledger: Ledger) -> None:
    audited(config)
    first = rows(ledger)[0]

    def guessed(prev: str, entry: AuditLogEntry, detail: str) -> str:
        payload = json.dumps([prev, entry.at.isoformat(), entry.actor, entry.action, detail],
                             separators=(",", ":"), ensure_ascii=False).encode()
        return hmac.new(b"g" * 64, payload, hashlib.sha256).hexdigest()

    rewrite(ledger, 0, first.detail, guessed)
    result = cli(config, "verify-log")
    assert result.exit_code == 1
    assert f"entry {first.id} (audit at " in result.stderr
    assert "was altered (or was keyed with another trail key)" in result.stderr


def test_the_emails_head_line_is_what_verify_log_expect_checks(
        config: Path, ledger: Ledger, state: Path) -> None:
    audited(config, 3)
    text = cli(config, "report", "--text")
    assert text.exit_code == 0, text.output
    found = EMAIL_HEAD.search(text.stdout)
    assert found, text.stdout
    entries, head, count, expect = found.groups()
    assert (int(entries), head) == (3, rows(ledger)[-1].hash) and (expect, count) == (head, "3")
    html = cli(config, "report", "--out", str(state.parent / "digest.html"))
    assert html.exit_code == 0, html.output
    assert head in (state.parent / "digest.html").read_text()
    audited(config, 2)  # the chain goes on after the email
    later = cli(config, "verify-log", "--expect", expect, "--count", count)
    assert later.exit_code == 0, later.output
    assert f"it reaches the head given by --expect: {head} (entry 3 of 5)" in later.stdout
    # The newest entries and the anchor file removed: only the email's head still knows.
    with ledger.session() as session:
        session.execute(delete(AuditLogEntry).where(
            AuditLogEntry.id >= rows(ledger)[2].id))
    (state / "trail.anchor").unlink()
    assert cli(config, "verify-log").exit_code == 0
    cut = cli(config, "verify-log", "--expect", expect, "--count", count)
    assert cut.exit_code == 1
    assert "the chain has 2 entries, fewer than the 3 at the head given by --expect" \
        in cut.stderr
    nowhere = cli(config, "verify-log", "--expect", expect)
    assert nowhere.exit_code == 1 and "does not reach the head given by --expect" in nowhere.stderr


def test_an_unkeyed_trail_from_before_the_key_keeps_verifying_and_is_keyed_from_then_on(
        config: Path, ledger: Ledger) -> None:
    # Written as the program did before the key: plain SHA-256.
    for n in range(2):
        trail.record(ledger, "daemon", "sync", {"source": "stripe", "n": n})
    old = cli(config, "verify-log")
    assert old.exit_code == 0, old.output
    assert "none of them is keyed yet" in old.stdout
    audited(config, 1)
    entries = rows(ledger)
    assert [e.action for e in entries] == ["sync", "sync", "trail.keyed", "audit"]
    assert json.loads(entries[2].detail) == {"unkeyed_entries": 2}
    result = cli(config, "verify-log")
    assert result.exit_code == 0, result.output
    assert "audit_log: 4 entries, the hash chain is intact." in result.stdout
    assert "the first 2 were written before the trail key and verify unkeyed" in result.stdout
    # After keyed entries, one written without the key (as an editor could) does not fit.
    trail.record(ledger, "daemon", "sync", {"source": "stripe", "n": 9})
    late = cli(config, "verify-log")
    assert late.exit_code == 1
    assert f"entry {rows(ledger)[-1].id} (sync at " in late.stderr
    assert "is not keyed" in late.stderr


def test_trail_key_from_the_config_is_used_and_a_short_one_refused(
        tmp_path: Path, ledger_url: str, ledger: Ledger, state: Path) -> None:
    secret = tmp_path / "trail-key"
    secret.write_text("k" * 40 + "\n")
    path = tmp_path / "keyed.toml"
    path.write_text(f'[ledger]\nurl = "{ledger_url}"\nstate_dir = "{state}"\n'
                    f'trail_key = "file:{secret}"\n', encoding="utf-8")
    audited(path, 2)
    assert not (state / "trail.key").exists()
    first = rows(ledger)[0]
    payload = json.dumps([trail.GENESIS, first.at.isoformat(), first.actor, first.action,
                          first.detail], separators=(",", ":"), ensure_ascii=False).encode()
    assert first.hash == hmac.new(b"k" * 40, payload, hashlib.sha256).hexdigest()
    assert cli(path, "verify-log").exit_code == 0
    secret.write_text("short-key\n")
    refused = cli(path, "verify-log")
    assert refused.exit_code == 1
    assert ("[ledger] trail_key: the trail key has 9 characters; it needs at least 32"
            in refused.stderr)
    assert "short-key" not in refused.output


def test_verify_log_refuses_an_expect_that_is_not_a_hash_and_count_without_expect(
        config: Path) -> None:
    bad = cli(config, "verify-log", "--expect", "abc")
    assert bad.exit_code == 2 and "'abc' is not a trail hash" in bad.output
    lone = cli(config, "verify-log", "--count", "3")
    assert lone.exit_code == 2 and "--count goes with --expect HASH" in lone.output
