"""The configured sources: builds connectors from settings (through one small registry of
connector modules sharing `Settings`/`connect`) and syncs them into the ledger."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from connectors import mailchimp, stripe, woocommerce
from connectors.base import Connector
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


@contextmanager
def opened(connector: Connector) -> Iterator[Connector]:
    try:
        yield connector
    finally:
        connector.close()


def sync_configured(ledger: Ledger, settings: Settings, *, only: str | None = None,
                    full: bool = False,
                    progress: ProgressCallback | None = None,
                    should_stop: StopCheck | None = None) -> list[SyncResult]:
    """Sync every selected source, one after the other; one source failing never stops
    the others. `should_stop` ends the work between batches and between sources."""
    results: list[SyncResult] = []
    for name in select_names(settings, only):
        if should_stop is not None and should_stop():
            break
        if name.startswith("woo:"):
            shop = next(s for s in settings.woocommerce if f"woo:{s.name}" == name)
            with opened(woocommerce.connect(shop.to_connector())) as connector:
                results.append(sync_source(ledger, connector, full=full, progress=progress,
                                           should_stop=should_stop))
        elif name == "stripe" and settings.stripe is not None:
            with opened(stripe.connect(settings.stripe.to_connector())) as connector:
                results.append(sync_source(ledger, connector, full=full, progress=progress,
                                           should_stop=should_stop))
        elif name == "mailchimp" and settings.mailchimp is not None:
            results.extend(_sync_mailchimp(ledger, settings, full=full, progress=progress,
                                           should_stop=should_stop))
    return results


def _sync_mailchimp(ledger: Ledger, settings: Settings, *, full: bool,
                    progress: ProgressCallback | None,
                    should_stop: StopCheck | None = None) -> list[SyncResult]:
    assert settings.mailchimp is not None  # noqa: S101 - guarded by the caller
    account = mailchimp.connect(settings.mailchimp.to_connector())
    try:
        audiences = account.connectors()
    except APIError as exc:
        return [SyncResult("mailchimp", 0, "incremental", "failed", 0, 0, 0, 0, exc.message)]
    results = []
    for connector in audiences:
        with opened(connector):
            if should_stop is not None and should_stop():
                continue
            results.append(sync_source(ledger, connector, full=full, progress=progress,
                                       should_stop=should_stop))
    if account.listing_complete and not settings.mailchimp.audiences:
        retire_sources(ledger, "mailchimp:", [c.source for c in audiences])
    return results
