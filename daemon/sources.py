"""The configured sources: builds connectors from settings (through one small registry of
connector modules sharing `Settings`/`connect`) and syncs them into the ledger."""

from __future__ import annotations

import contextvars
import gc
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

from connectors import mailchimp, stripe, woocommerce
from connectors.base import Connector, StopWaiting
from connectors.http import APIError
from daemon.config import Settings
from daemon.ledger import Ledger
from daemon.sync import ProgressCallback, StopCheck, SyncResult, retire_sources, sync_source

REGISTRY = {"woocommerce": woocommerce, "stripe": stripe, "mailchimp": mailchimp}


class UnknownSourceError(Exception):
    pass


def select_names(settings: Settings, only: str | None) -> list[str]:
    """The configured source names to run; `only` may be a full name (woo:allmyink), a shop
    name (allmyink) or a kind (stripe, mailchimp, woocommerce)."""
    names = settings.source_names
    if only is None:
        return names
    wanted = [n for n in names if only in (n, n.split(":", 1)[-1], n.split(":", 1)[0])
              or (only == "woocommerce" and n.startswith("woo:"))]
    if not wanted:
        raise UnknownSourceError(
            f"no source named {only!r}; configured: {', '.join(names) or 'none'}")
    return wanted


def settle_heap() -> None:
    """Once a process has loaded what syncing needs (modules, config, the ledger's engine):
    move those objects out of the garbage collector's sight. Its full collections otherwise
    walk them again and again during a sync (4 % of a sync's instructions, callgrind)."""
    gc.collect()
    gc.freeze()


@contextmanager
def opened(connector: Connector) -> Iterator[Connector]:
    try:
        yield connector
    finally:
        connector.close()


def sync_configured(ledger: Ledger, settings: Settings, *, only: str | None = None,
                    full: bool = False,
                    progress: ProgressCallback | None = None,
                    should_stop: StopCheck | None = None,
                    parallel: int = 1,
                    sleep: Callable[[float], None] = time.sleep) -> list[SyncResult]:
    """Sync every selected source; one source failing never stops the others. `should_stop`
    ends the work between batches and between sources. With `parallel` > 1 that many sources
    sync at once, each in its own thread (their waits on upstream latency overlap; each
    source still keeps its own connection limits, and the ledger's writes stay one
    transaction per batch). Results come back in the configured order either way. `sleep` is
    how connectors wait (backoff, pacing): one that raises StopWaiting ends a sync at once."""
    names = select_names(settings, only)

    def run(name: str) -> list[SyncResult]:
        if should_stop is not None and should_stop():
            return []
        return _sync_one(ledger, settings, name, full=full, progress=progress,
                         should_stop=should_stop, sleep=sleep)

    if parallel <= 1 or len(names) <= 1:
        return [result for name in names for result in run(name)]
    # Stripe first: its cursor lists and read rate make it the longest source, and it
    # must not wait for a free worker.
    started = sorted(names, key=lambda name: name != "stripe")
    with ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="sync") as pool:
        # Each thread runs in a copy of the caller's context (log bindings).
        futures = {name: pool.submit(contextvars.copy_context().run, run, name)
                   for name in started}
        return [result for name in names for result in futures[name].result()]


def _sync_one(ledger: Ledger, settings: Settings, name: str, *, full: bool,
              progress: ProgressCallback | None, should_stop: StopCheck | None,
              sleep: Callable[[float], None] = time.sleep) -> list[SyncResult]:
    connector: Connector
    if name.startswith("woo:"):
        shop = next(s for s in settings.woocommerce if f"woo:{s.name}" == name)
        connector = woocommerce.connect(shop.to_connector(sleep=sleep))
    elif name == "stripe" and settings.stripe is not None:
        connector = stripe.connect(settings.stripe.to_connector(sleep=sleep))
    elif name == "mailchimp" and settings.mailchimp is not None:
        return _sync_mailchimp(ledger, settings, full=full, progress=progress,
                               should_stop=should_stop, sleep=sleep)
    else:
        return []
    with opened(connector):
        return [sync_source(ledger, connector, full=full, progress=progress,
                            should_stop=should_stop, batch_size=settings.ledger.batch_size)]


def _sync_mailchimp(ledger: Ledger, settings: Settings, *, full: bool,
                    progress: ProgressCallback | None,
                    should_stop: StopCheck | None = None,
                    sleep: Callable[[float], None] = time.sleep) -> list[SyncResult]:
    assert settings.mailchimp is not None  # noqa: S101 - guarded by the caller
    account = mailchimp.connect(settings.mailchimp.to_connector(sleep=sleep))
    try:
        audiences = account.connectors()
    except StopWaiting:
        account.close()
        return []
    except APIError as exc:
        account.close()
        return [SyncResult("mailchimp", 0, "incremental", "failed", 0, 0, 0, 0, exc.message)]
    results = []
    for connector in audiences:
        with opened(connector):
            if should_stop is not None and should_stop():
                continue
            results.append(sync_source(ledger, connector, full=full, progress=progress,
                                       should_stop=should_stop,
                                       batch_size=settings.ledger.batch_size))
    if account.listing_complete and not settings.mailchimp.audiences:
        retire_sources(ledger, "mailchimp:", [c.source for c in audiences])
    return results
