"""`privacy-ledger fix` against the running twins over real HTTP, on SQLite and PostgreSQL:
one finding and a whole rule, plan → --apply → live read-back, each step in the trail and
the finding resolved (the next audit agrees); what the API cannot do said with the admin
page; bad input refused (resolved, acknowledged, a read-only key's 401) with nothing lost;
a bulk fix killed with SIGKILL and run again writes each record exactly once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import select

from daemon import trail
from daemon.audit import acknowledge, current_findings, run_audit
from daemon.config import load_settings
from daemon.ledger import AuditLogEntry, Ledger
from daemon.sources import sync_configured
from sandbox.demo import RunningEstate
from sandbox.estate import CARD_IN_NOTE, OLD_NETWORK_DATA, EstateSpec
from sandbox.seed import build_estate

NOW = datetime(2026, 11, 1, 6, 0, tzinfo=UTC)
UNPAID = "unpaid-order-past-retention"


@pytest.fixture
def running() -> Iterator[RunningEstate]:
    estate = build_estate(EstateSpec(seed=11, people=40, now=NOW))
    with RunningEstate(estate) as live:
        yield live


@pytest.fixture
def config(running: RunningEstate, tmp_path: Path, ledger_url: str) -> Path:
    return running.write_config(tmp_path / "config", ledger_url=ledger_url,
                                extra="\n[fix]\nwrites_per_second = 8\n")


@pytest.fixture
def synced(config: Path) -> Iterator[Ledger]:
    settings = load_settings(config)
    # Keyed as the commands open it (the trail key in the state directory).
    opened = trail.open_ledger(settings.ledger)
    try:
        results = sync_configured(opened, settings, full=True)
        assert all(r.ok for r in results), [r.error for r in results]
        run_audit(opened, settings.retention)
        yield opened
    finally:
        opened.close()


def cli(config: Path, *args: str) -> Result:
    from daemon.cli import main

    return CliRunner().invoke(main, ["--config", str(config), *args])


def open_of(ledger: Ledger, rule: str) -> list[tuple[str | None, str | None]]:
    return [(f.source, f.external_id) for f in current_findings(ledger, rules=[rule])]


def steps(ledger: Ledger) -> list[dict[str, object]]:
    with ledger.sessions() as session:
        return [json.loads(d) for d in session.scalars(
            select(AuditLogEntry.detail).where(AuditLogEntry.action == "fix.step")
            .order_by(AuditLogEntry.id))]


def test_one_card_number_fixed_from_the_command_line(
        running: RunningEstate, config: Path, synced: Ledger) -> None:
    estate = running.estate
    person = next(p for p in estate.people if CARD_IN_NOTE in p.tags)
    (source, order) = next((s, i) for s, i in open_of(synced, "card-number-exposed")
                           if s and s.startswith("woo:")
                           and person.email in json.dumps(
                               estate.shops[s[4:]].orders.get(int(i or 0), {})))
    shop = estate.shops[source[4:]]
    writes = shop.writes
    planned = cli(config, "fix", "card-number-exposed", source, order)
    assert planned.exit_code == 0, planned.output
    assert "CLEAR-NOTE" in planned.output and "Nothing was changed" in planned.output
    assert shop.writes == writes
    done = cli(config, "fix", "card-number-exposed", source, order, "--apply", "--yes")
    assert done.exit_code == 0, done.output
    assert "note cleared" in done.output and "Verified live" in done.output
    assert shop.orders[int(order)]["customer_note"] == "" and shop.writes == writes + 1
    assert (source, order) not in open_of(synced, "card-number-exposed")
    again = run_audit(synced, load_settings(config).retention, rules=["card-number-exposed"])
    assert again.new == 0
    # A resolved finding is not fixed twice.
    twice = cli(config, "fix", "card-number-exposed", source, order, "--apply", "--yes")
    assert twice.exit_code == 1 and "was resolved on" in twice.output
    assert shop.writes == writes + 1
    (step,) = steps(synced)
    assert step["status"] == "note cleared" and step["findings_resolved"] == 1
    assert trail.verify(synced).ok


def test_network_data_is_said_plainly_with_the_admin_page(
        running: RunningEstate, config: Path, synced: Ledger) -> None:
    writes = sum(t.writes for t in running.estate.twins.values())
    result = cli(config, "fix", "--rule", "network-data-past-retention", "--apply", "--yes")
    assert result.exit_code == 0, result.output
    assert "BY HAND" in result.output and "read-only" in result.output
    assert "/wp-admin/erase-personal-data.php" in result.output
    assert "0 write(s)" in result.output
    assert sum(t.writes for t in running.estate.twins.values()) == writes
    assert any(OLD_NETWORK_DATA in p.tags for p in running.estate.people)


def test_acknowledged_and_refused_writes_change_nothing_and_lose_nothing(
        running: RunningEstate, config: Path, synced: Ledger) -> None:
    (first, second, *_) = open_of(synced, UNPAID)
    acknowledge(synced, UNPAID, first[0] or "", first[1] or "", reason="legal hold")
    held = cli(config, "fix", UNPAID, first[0] or "", first[1] or "", "--apply", "--yes")
    assert held.exit_code == 1 and "is acknowledged (legal hold)" in held.output
    shop = running.estate.shops[(second[0] or "")[4:]]
    shop.permissions = "read"
    refused = cli(config, "fix", UNPAID, second[0] or "", second[1] or "", "--apply", "--yes")
    assert refused.exit_code == 1
    assert "401" in refused.output and "Read/Write" in refused.output
    assert "NOT COMPLETE" in refused.output
    assert int(second[1] or 0) in shop.orders
    assert second in open_of(synced, UNPAID) and first in open_of(synced, UNPAID)
    (step,) = steps(synced)
    assert step["status"] == "failed" and "401" in str(step["error"])
    assert trail.verify(synced).ok
    shop.permissions = "read_write"
    fixed = cli(config, "fix", UNPAID, second[0] or "", second[1] or "", "--apply", "--yes")
    assert fixed.exit_code == 0, fixed.output
    assert int(second[1] or 0) not in shop.orders


def test_a_bulk_fix_killed_with_sigkill_completes_on_rerun_writing_each_record_once(
        running: RunningEstate, config: Path, synced: Ledger) -> None:
    shop = running.estate.shops["allmyink"]
    old = datetime.now(UTC) - timedelta(days=400)
    for n in range(16):
        shop.add_order(status="pending", date_created=old,
                       billing={"email": f"abandoned{n}@example.com"})
    settings = load_settings(config)
    sync_configured(synced, settings, full=True)
    run_audit(synced, settings.retention)
    targets = [i for s, i in open_of(synced, UNPAID) if s == "woo:allmyink"]
    assert len(targets) >= 16
    before = {i: shop.requests_to(f"/orders/{i}", "DELETE") for i in targets}
    writes = shop.writes
    entry_point = Path(sys.executable).with_name("privacy-ledger")
    command = [str(entry_point), "--config", str(config), "fix", "--rule", UNPAID,
               "--source", "allmyink", "--apply", "--yes"]
    first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             env=os.environ.copy())
    deadline = time.monotonic() + 60
    while shop.writes < writes + 5 and time.monotonic() < deadline and first.poll() is None:
        time.sleep(0.01)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert first.returncode == -signal.SIGKILL
    killed_after = shop.writes - writes
    assert 5 <= killed_after < len(targets)
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=120,
                           env=os.environ.copy())
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "Verified live" in rerun.stdout
    # Exactly once: one DELETE per order across both runs, and no other write.
    assert {i: shop.requests_to(f"/orders/{i}", "DELETE") - before[i] for i in targets} == \
        dict.fromkeys(targets, 1)
    assert shop.writes - writes == len(targets)
    assert not any(int(i) in shop.orders for i in targets)
    assert not [i for s, i in open_of(synced, UNPAID) if s == "woo:allmyink"]
    done = [s for s in steps(synced) if s["status"] in ("deleted", "already gone")]
    assert sorted(str(s["external_id"]) for s in done) == sorted(targets)
    assert trail.verify(synced).ok


def test_an_inactive_shop_manager_is_never_deleted(
        running: RunningEstate, config: Path, synced: Ledger) -> None:
    shop = running.estate.shops["allmyink"]
    old = datetime.now(UTC) - timedelta(days=4 * 365)
    staff = shop.add_customer(email="old.manager@example.com", role="shop_manager",
                              date_created=old, last_active=old)
    settings = load_settings(config)
    sync_configured(synced, settings, full=True)
    run_audit(synced, settings.retention)
    assert ("woo:allmyink", str(staff)) in open_of(synced, "inactive-account")
    writes = shop.writes
    result = cli(config, "fix", "--rule", "inactive-account", "--apply", "--yes")
    assert "staff account (role shop_manager)" in result.output
    assert staff in shop.customers
    assert ("woo:allmyink", str(staff)) in open_of(synced, "inactive-account")
    assert shop.writes - writes == len([s for s in steps(synced) if s["status"] == "deleted"
                                        and s["source"] == "woo:allmyink"])
    assert trail.verify(synced).ok


def test_a_rule_without_a_fix_says_so(config: Path, synced: Ledger) -> None:
    result = cli(config, "fix", "--rule", "sync-stale")
    assert result.exit_code == 1 and "sync-stale has no fix" in result.output
    unknown = cli(config, "fix", "--rule", "no-such-rule")
    assert unknown.exit_code == 1 and "unknown rule 'no-such-rule'" in unknown.output
    usage = cli(config, "fix", "inactive-account", "woo:allmyink")
    assert usage.exit_code == 2 and "RULE SOURCE EXTERNAL_ID" in usage.output


def test_a_record_fixed_upstream_before_its_write_is_recorded_without_writing(
        running: RunningEstate, config: Path, synced: Ledger) -> None:
    """What a rerun after a kill between a write and its ledger update meets: the record is
    already in the fixed state, so the step is recorded and the finding resolved, no write."""
    (source, order), *_ = [(s, i) for s, i in open_of(synced, UNPAID) if s and i]
    shop = running.estate.shops[source[4:]]
    shop.delete_order(int(order))
    writes = shop.writes
    result = cli(config, "fix", UNPAID, source, order, "--apply", "--yes")
    assert result.exit_code == 0, result.output
    assert "already gone" in result.output and shop.writes == writes
    (step,) = steps(synced)
    assert step["status"] == "already gone" and step["findings_resolved"] == 1
    assert (source, order) not in open_of(synced, UNPAID)
    assert trail.verify(synced).ok
