"""The whole estate through the real connectors, over real HTTP, into a real ledger (SQLite
and PostgreSQL): the ledger ends with exactly what the twins hold, nothing personal is
stored, and a sync killed with SIGKILL resumes to the same result."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import inspect, select, text

from daemon.ledger import Ledger, SyncRun
from daemon.sources import sync_configured
from sandbox.demo import RunningEstate
from sandbox.estate import EstateSpec
from sandbox.seed import build_estate
from tests.integration.estate_helpers import estate_truth, holding_count, ledger_truth, settings_for

NOW = datetime(2026, 11, 1, 6, 0, tzinfo=UTC)
CLI = Path(sys.executable).with_name("privacy-ledger")


@pytest.fixture
def running(tmp_path: Path) -> Iterator[RunningEstate]:
    estate = build_estate(EstateSpec(seed=11, people=60, now=NOW))
    with RunningEstate(estate) as live:
        yield live


def test_full_sync_of_the_estate_equals_ground_truth(
        running: RunningEstate, ledger: Ledger, ledger_url: str, tmp_path: Path) -> None:
    settings = settings_for(running, tmp_path, ledger_url)
    results = sync_configured(ledger, settings, full=True)
    assert results and all(r.ok for r in results), [r.error for r in results]
    assert ledger_truth(ledger) == estate_truth(running.estate)
    again = sync_configured(ledger, settings)
    assert all(r.ok for r in again) and sum(r.changed for r in again) == 0


def test_changes_upstream_reach_the_ledger(
        running: RunningEstate, ledger: Ledger, ledger_url: str, tmp_path: Path) -> None:
    settings = settings_for(running, tmp_path, ledger_url)
    sync_configured(ledger, settings, full=True)
    shop = next(iter(running.estate.shops.values()))
    new_customer = shop.add_customer(email="New.Person@Example.com", first_name="New")
    shop.add_order(customer_id=new_customer, status="processing",
                   billing={"email": "new.person@example.com", "first_name": "New"})
    some_order = next(iter(sorted(shop.orders)))
    shop.trash_order(some_order)
    gone_customer = next(iter(sorted(shop.customers)))
    shop.delete_customer(gone_customer)
    stripe = running.estate.stripe
    new_stripe = stripe.add_customer(email="new.person@example.com", name="New Person")
    stripe.delete_customer(next(c for c in stripe.customer_ids() if c != new_stripe))
    mailchimp = running.estate.mailchimp
    audience = mailchimp.sources()[0].split(":", 1)[1]
    mailchimp.add_member(audience, "new.person@example.com", status="unsubscribed")

    incremental = sync_configured(ledger, settings)
    assert all(r.ok for r in incremental), [r.error for r in incremental]
    held = ledger_truth(ledger)
    assert (shop.source, "customer", str(new_customer), "new.person@example.com") in held
    assert sum(1 for row in held if row[3] == "new.person@example.com") >= 4

    full = sync_configured(ledger, settings, full=True)
    assert all(r.ok for r in full)
    assert ledger_truth(ledger) == estate_truth(running.estate)
    assert not any(row[:3] == (shop.source, "customer", str(gone_customer)) for row in
                   ledger_truth(ledger))


CANARIES = {
    "name": "Zqxcanaryname", "street": "77 Canarystreet Row", "phone": "+44 7700 431999",
    "note": "Canarynote leave by the blue door", "ip": "198.51.100.77",
    "agent": "CanaryAgent/9.9", "meta": "canarymetavalue", "city": "Canaryville",
}


def plant_canaries(running: RunningEstate) -> None:
    c = CANARIES
    shop = next(iter(running.estate.shops.values()))
    address = {"first_name": c["name"], "last_name": c["name"], "address_1": c["street"],
               "city": c["city"], "phone": c["phone"], "email": "canary@example.com"}
    customer = shop.add_customer(email="canary@example.com", first_name=c["name"],
                                 last_name=c["name"], billing=address,
                                 shipping={k: v for k, v in address.items()
                                           if k not in ("email", "phone")},
                                 meta_data={"favourite": c["meta"]})
    shop.add_order(customer_id=customer, status="completed", billing=address,
                   customer_ip_address=c["ip"], customer_user_agent=c["agent"],
                   customer_note=c["note"], meta_data={"gift_message": c["meta"]})
    stripe = running.estate.stripe
    customer_id = stripe.add_customer(
        email="canary@example.com", name=c["name"], phone=c["phone"],
        address={"line1": c["street"], "city": c["city"]}, description=c["note"],
        metadata={"note": c["meta"]})
    stripe.add_charge(customer=customer_id, billing_details={
        "name": c["name"], "email": "canary@example.com", "phone": c["phone"],
        "address": {"line1": c["street"], "city": c["city"]}}, description=c["note"])
    mailchimp = running.estate.mailchimp
    audience = mailchimp.sources()[0].split(":", 1)[1]
    mailchimp.add_member(audience, "canary@example.com", first_name=c["name"],
                         last_name=c["name"], phone=c["phone"],
                         address={"addr1": c["street"], "city": c["city"]},
                         ip_signup=c["ip"], note=c["note"])


def every_text_in(ledger: Ledger) -> str:
    """Every value of every column of every table, as text."""
    chunks: list[str] = []
    with ledger.engine.connect() as connection:
        for table in inspect(connection).get_table_names():
            for row in connection.execute(text(f'SELECT * FROM "{table}"')):  # noqa: S608
                chunks.extend(str(value) for value in row)
    return "\n".join(chunks)


def test_canary_values_never_reach_the_ledger(
        running: RunningEstate, ledger: Ledger, ledger_url: str, tmp_path: Path) -> None:
    plant_canaries(running)
    settings = settings_for(running, tmp_path, ledger_url)
    results = sync_configured(ledger, settings, full=True)
    assert all(r.ok for r in results), [r.error for r in results]
    held = ledger.holdings_for("canary@example.com")
    assert {h.source.split(":")[0] for h in held} >= {"woo", "stripe", "mailchimp"}
    stored = every_text_in(ledger)
    for canary in CANARIES.values():
        assert canary not in stored
    if ledger_url.startswith("sqlite"):
        ledger.close()
        for path in tmp_path.glob("ledger.db*"):
            raw = path.read_bytes()
            for canary in CANARIES.values():
                assert canary.encode() not in raw, f"{canary} in {path.name}"


def _wait_for_committed_batch(ledger: Ledger, process: subprocess.Popen[bytes],
                              deadline: float, log_path: Path) -> None:
    while time.monotonic() < deadline:
        with ledger.sessions() as session:
            seen = session.scalar(select(SyncRun.records_seen)
                                  .where(SyncRun.status == "running")
                                  .order_by(SyncRun.id.desc()).limit(1))
        if seen:
            return
        if process.poll() is not None:
            pytest.fail(f"the sync ended before it could be killed: {process.returncode}\n"
                        + log_path.read_text(errors="replace")[-3000:])
        time.sleep(0.02)
    pytest.fail("no batch was committed in time")


@pytest.mark.slow
def test_sync_killed_mid_run_resumes_to_ground_truth(
        running: RunningEstate, ledger: Ledger, ledger_url: str, tmp_path: Path) -> None:
    config = running.write_config(tmp_path, ledger_url=ledger_url)
    for server in running.servers.values():
        server.twin.faults.latency = 0.15
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    log_path = tmp_path / "killed-sync.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen([str(CLI), "--config", str(config), "sync", "--full"],
                                   env=env, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        _wait_for_committed_batch(ledger, process, time.monotonic() + 60, log_path)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == -signal.SIGKILL
    partial = holding_count(ledger)
    assert 0 < partial < len(estate_truth(running.estate))
    for server in running.servers.values():
        server.twin.faults.latency = 0
    resumed = subprocess.run([str(CLI), "--config", str(config), "sync"], env=env,
                             capture_output=True, timeout=120, check=False)
    assert resumed.returncode == 0, resumed.stderr.decode()[-2000:]
    assert ledger_truth(ledger) == estate_truth(running.estate)
    assert holding_count(ledger) == len(estate_truth(running.estate))
    with ledger.sessions() as session:
        statuses = session.scalars(select(SyncRun.status).order_by(SyncRun.id)).all()
    assert "running" not in statuses and "failed" in statuses


def test_ledger_rows_carry_no_dates_in_the_future_of_the_estate(
        running: RunningEstate, ledger: Ledger, ledger_url: str, tmp_path: Path) -> None:
    sync_configured(ledger, settings_for(running, tmp_path, ledger_url), full=True)
    with ledger.engine.connect() as connection:
        latest = connection.execute(text("SELECT max(created_at) FROM holdings")).scalar()
    assert latest is not None
    assert str(latest) <= str((NOW + timedelta(days=1)).replace(tzinfo=None))
