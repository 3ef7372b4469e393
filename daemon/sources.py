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
from daemon.sync import (
    ProgressCallback,
    StopCheck,
    SyncResult,
    live_sources,
    record_failure,
    retire_placeholders,
    retire_sources,
    sync_source,
)

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
    if name == "mailchimp" and settings.mailchimp is not None:
        return _sync_mailchimp(ledger, settings, full=full, progress=progress,
                               should_stop=should_stop, sleep=sleep)
    try:
        if name.startswith("woo:"):
            shop = next(s for s in settings.woocommerce if f"woo:{s.name}" == name)
            connector = woocommerce.connect(shop.to_connector(sleep=sleep))
        elif name == "stripe" and settings.stripe is not None:
            connector = stripe.connect(settings.stripe.to_connector(sleep=sleep))
        else:
            return []
    except ValueError as exc:
        # Settings the connector refuses: the source is still configured, and its run failed.
        kind = "woocommerce" if name.startswith("woo:") else name
        return [record_failure(ledger, name, kind, f"cannot connect: {exc}", full=full)]
    with opened(connector):
        return [sync_source(ledger, connector, full=full, progress=progress,
                            should_stop=should_stop, batch_size=settings.ledger.batch_size)]


def _sync_mailchimp(ledger: Ledger, settings: Settings, *, full: bool,
                    progress: ProgressCallback | None,
                    should_stop: StopCheck | None = None,
                    sleep: Callable[[float], None] = time.sleep) -> list[SyncResult]:
    """Every audience that can be read, synced; every configured one that cannot, a failed
    run with the reason (a refused key fails every audience the ledger knows)."""
    assert settings.mailchimp is not None  # noqa: S101 - guarded by the caller
    configured = settings.mailchimp.audiences
    try:
        account = mailchimp.connect(settings.mailchimp.to_connector(sleep=sleep))
    except ValueError as exc:
        return _mailchimp_failed(ledger, configured, f"cannot connect: {exc}", full=full)
    try:
        audiences, unreadable = account.open_audiences()
    except StopWaiting:
        account.close()
        return []
    except APIError as exc:
        account.close()
        return _mailchimp_failed(ledger, configured, exc.message, full=full)
    # Stand-ins for what could not be read before: the real sources are read now.
    retire_placeholders(ledger, ["mailchimp", *(
        f"mailchimp:{wanted.strip()}" for wanted in configured
        if wanted not in {u.wanted for u in unreadable}
        and f"mailchimp:{wanted.strip()}" not in {c.source for c in audiences})])
    results = [record_failure(ledger, u.source, "mailchimp", u.reason, full=full)
               for u in unreadable]
    for connector in audiences:
        with opened(connector):
            if should_stop is not None and should_stop():
                continue
            results.append(sync_source(ledger, connector, full=full, progress=progress,
                                       should_stop=should_stop,
                                       batch_size=settings.ledger.batch_size))
    if not audiences:
        account.close()
    if account.listing_complete and not configured:
        retire_sources(ledger, "mailchimp:", [c.source for c in audiences])
    return results


def _mailchimp_failed(ledger: Ledger, configured: list[str], error: str, *,
                      full: bool) -> list[SyncResult]:
    """Failed runs when the account cannot be read at all: one per configured audience, or
    per audience the ledger knows (the account itself when it knows none)."""
    names = ([f"mailchimp:{wanted.strip()}" for wanted in configured]
             or live_sources(ledger, "mailchimp:") or ["mailchimp"])
    return [record_failure(ledger, name, "mailchimp", error, full=full)
            for name in dict.fromkeys(names)]
