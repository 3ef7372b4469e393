"""Which configured sources a sync runs, and in what order when several run at once."""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import select

from daemon import sources
from daemon.config import SecretSources, Settings, parse_settings
from daemon.ledger import Ledger, Source, SyncRun
from daemon.sync import SyncResult


def estate(shops: int) -> Settings:
    return parse_settings(
        {"woocommerce": [{"name": f"shop{n}", "url": f"https://shop{n}.example",
                          "consumer_key": "env:KEY", "consumer_secret": "env:KEY"}
                         for n in range(shops)],
         "stripe": {"api_key": "env:KEY"}},
        secrets=SecretSources(environ={"KEY": "ck_unit"}, credentials_dir=None))


def test_select_names_takes_a_full_name_a_shop_or_a_kind() -> None:
    settings = estate(2)
    assert sources.select_names(settings, None) == ["woo:shop0", "woo:shop1", "stripe"]
    assert sources.select_names(settings, "shop1") == ["woo:shop1"]
    assert sources.select_names(settings, "woocommerce") == ["woo:shop0", "woo:shop1"]
    with pytest.raises(sources.UnknownSourceError, match="configured: woo:shop0"):
        sources.select_names(settings, "mailchimp")


def test_stripe_starts_first_when_sources_wait_for_a_worker(
        monkeypatch: pytest.MonkeyPatch, sqlite_url: str) -> None:
    lock = threading.Lock()
    started: list[str] = []

    def fake_sync(_ledger: Ledger, _settings: Settings, name: str, **_kwargs: object
                  ) -> list[SyncResult]:
        with lock:
            started.append(name)
        time.sleep(0.05)
        return [SyncResult(name, 0, "full", "success", 0, 0, 0, 0)]

    monkeypatch.setattr(sources, "_sync_one", fake_sync)
    ledger = Ledger.open(sqlite_url)
    try:
        results = sources.sync_configured(ledger, estate(3), full=True, parallel=2)
    finally:
        ledger.close()
    # Stripe's cursor lists and read rate make it the longest: it never waits for a worker.
    assert "stripe" in started[:2]
    assert [r.source for r in results] == ["woo:shop0", "woo:shop1", "woo:shop2", "stripe"]


def test_settle_heap_collects_garbage_then_freezes_what_is_left() -> None:
    import gc
    import weakref

    class Cycle:
        def __init__(self) -> None:
            self.me = self

    leftover = Cycle()
    gone = weakref.ref(leftover)
    del leftover
    try:
        sources.settle_heap()
        # Garbage from start-up is collected first, never frozen for the process's life.
        assert gone() is None
        assert gc.get_freeze_count() > 1000
    finally:
        gc.unfreeze()


def test_source_whose_connector_cannot_be_built_gets_a_failed_run(sqlite_url: str) -> None:
    # Passes the config's checks, but the connector refuses an address without a host.
    settings = parse_settings(
        {"woocommerce": [{"name": "hostless", "url": "https://:443", "consumer_key": "env:KEY",
                          "consumer_secret": "env:KEY"}]},
        secrets=SecretSources(environ={"KEY": "ck_unit"}, credentials_dir=None))
    ledger = Ledger.open(sqlite_url)
    try:
        results = sources.sync_configured(ledger, settings, full=True)
        with ledger.sessions() as session:
            runs = session.execute(select(Source.name, SyncRun.status, SyncRun.error)
                                   .join(Source, Source.id == SyncRun.source_id)).all()
    finally:
        ledger.close()
    assert [(r.source, r.status, r.run_id > 0) for r in results] == [
        ("woo:hostless", "failed", True)]
    assert [(name, status) for name, status, _ in runs] == [("woo:hostless", "failed")]
    assert "cannot connect" in runs[0][2] and "is not an http(s) address" in runs[0][2]
