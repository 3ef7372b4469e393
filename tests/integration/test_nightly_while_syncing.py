"""The nightly audit and email never wait on a sync: with a source hung on an upstream that
never answers, the nightly job runs on the ledger as it is, says which sources were still
syncing (in the trail and in the email), and the hung sync still ends when it is told to
stop, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable

from sqlalchemy import select

from daemon.config import SecretSources, parse_settings
from daemon.ledger import AuditLogEntry, Ledger, Source, SyncRun
from daemon.report import render_digest
from daemon.service import ACTOR, nightly
from daemon.sources import sync_configured
from tests.integration.hostile_servers import HangingServer


def wait_until(condition: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")


def hung_runs(ledger: Ledger) -> list[tuple[str, str | None]]:
    with ledger.sessions() as session:
        return [(r.status, r.error) for r in session.scalars(
            select(SyncRun).join(Source, Source.id == SyncRun.source_id)
            .where(Source.name == "woo:hung").order_by(SyncRun.id))]


def test_nightly_audits_while_a_source_hangs_and_names_it_as_still_syncing(
        ledger_url: str) -> None:
    with HangingServer() as hung:
        settings = parse_settings(
            {"ledger": {"url": ledger_url}, "schedule": {"source_timeout": "1h"},
             "woocommerce": [{"name": "hung", "url": hung.url, "consumer_key": "env:KEY",
                              "consumer_secret": "env:KEY", "timeout": "10min"}],
             "report": {"recipients": ["owner@allmyink.example"],
                        "sender": "privacy-ledger@allmyink.example"}},
            secrets=SecretSources(environ={"KEY": "ck_hung_unit"}, credentials_dir=None))
        ledger = Ledger.open(ledger_url)
        stop = threading.Event()
        worker = threading.Thread(target=sync_configured, args=(ledger, settings),
                                  kwargs={"should_stop": stop.is_set}, daemon=True)
        try:
            worker.start()
            wait_until(lambda: hung_runs(ledger) == [("running", None)], 30,
                       "the sync of the hung shop under way")

            done = nightly(ledger, settings)
            assert done["still_syncing"] == ["woo:hung"]
            rendered = render_digest(ledger, settings)
            for part in (rendered.text, rendered.html):
                assert "Still syncing when this was written" in part
                assert "(woo:hung) since" in part

            stop.set()
            worker.join(30)
            assert not worker.is_alive(), "the hung sync did not end when told to stop"
            assert hung_runs(ledger) == [("failed", "stopped")]
            with ledger.sessions() as session:
                trail = [json.loads(e.detail) for e in session.scalars(
                    select(AuditLogEntry).where(AuditLogEntry.action == "sync",
                                                AuditLogEntry.actor == ACTOR))]
            assert [(t["source"], t["status"], t["error"]) for t in trail] == [
                ("woo:hung", "failed", "stopped")]
        finally:
            stop.set()
            ledger.close()


def test_a_sync_past_its_time_limit_ends_failed_with_the_reason_and_keeps_it(
        ledger_url: str) -> None:
    with HangingServer() as hung:
        settings = parse_settings(
            {"ledger": {"url": ledger_url}, "schedule": {"source_timeout": "1s"},
             "woocommerce": [{"name": "hung", "url": hung.url, "consumer_key": "env:KEY",
                              "consumer_secret": "env:KEY", "timeout": "10min"}]},
            secrets=SecretSources(environ={"KEY": "ck_hung_unit"}, credentials_dir=None))
        ledger = Ledger.open(ledger_url)
        try:
            [result] = sync_configured(ledger, settings)
            reason = ("timed out: the sync ran longer than schedule.source_timeout (1s) and "
                      "was stopped; the next run resumes from its last committed batch")
            assert (result.source, result.status, result.error) == ("woo:hung", "failed",
                                                                    reason)
            assert hung_runs(ledger) == [("failed", reason)]
            # The sync left behind wakes up (its connection dropped) and ends on its own:
            # the run keeps the reason it was given.
            [behind] = [t for t in threading.enumerate() if t.name == "sync woo:hung"]
            hung.drop()
            behind.join(30)
            assert not behind.is_alive()
            assert hung_runs(ledger) == [("failed", reason)]
            # The source's lock went with it: the next sync starts (and times out again).
            [again] = sync_configured(ledger, settings)
            assert again.error == reason and len(hung_runs(ledger)) == 2
        finally:
            ledger.close()
