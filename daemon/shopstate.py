"""What a shop runs and how it cleans up, kept in the ledger: after each sync of a shop its
active plugins and own privacy settings are read (connectors.woocommerce.read_shop_state)
and stored here, so that the audit compares them with [policy] from the ledger alone."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from typing import Any

import structlog
from sqlalchemy import delete, select

from connectors.http import APIError
from connectors.woocommerce import ShopState
from daemon.catalogue import slug_of
from daemon.ledger import Ledger, ShopOption, ShopPlugin, ShopRead, Source
from vocabulary import WOOCOMMERCE, utcnow

log = structlog.get_logger("daemon.shopstate")
# Bidi overrides and isolates, which could reorder what the owner reads.
_BIDI = dict.fromkeys(map(ord, "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e"
                                "\u2066\u2067\u2068\u2069"), "\ufffd")


def _plain(value: str, limit: int) -> str:
    """The shop's own words made safe to store and show: controls and bidi overrides
    replaced, whitespace collapsed, length capped."""
    text = "".join(" " if unicodedata.category(c) == "Cc" else c for c in value.translate(_BIDI))
    return re.sub(r"\s+", " ", text).strip()[:limit]


def store(ledger: Ledger, source_name: str, state: ShopState) -> None:
    """Replace what the ledger knows of the shop by `state`, in one transaction; a part that
    could not be read keeps no stale rows (its read says why)."""
    now = utcnow()
    with ledger.session() as session:
        source = ledger.source(session, source_name, WOOCOMMERCE)
        session.execute(delete(ShopPlugin).where(ShopPlugin.source_id == source.id))
        seen: set[str] = set()
        for plugin in state.plugins:
            if plugin.plugin in seen:
                continue
            seen.add(plugin.plugin)
            session.add(ShopPlugin(source_id=source.id, plugin=_plain(plugin.plugin, 300),
                                   slug=_plain(slug_of(plugin.plugin), 200),
                                   name=_plain(plugin.name, 300),
                                   version=_plain(plugin.version or "", 60) or None,
                                   read_at=now))
        session.execute(delete(ShopOption).where(ShopOption.source_id == source.id))
        for option in state.options:
            session.add(ShopOption(source_id=source.id, option=option.option,
                                   readable=option.readable,
                                   period_seconds=option.period_seconds,
                                   value=(option.value or "")[:100] or None, read_at=now))
        session.execute(delete(ShopRead).where(ShopRead.source_id == source.id))
        for part in state.parts:
            session.add(ShopRead(source_id=source.id, part=part.part, ok=part.ok,
                                 detail=_plain(part.detail or "", 1000) or None, read_at=now))


def refresh(ledger: Ledger, connector: Any, read: Callable[[Any], ShopState]) -> None:
    """Read the shop's plugins and settings (`read`: its system's reader) and store them; a
    failure is logged and leaves what the ledger had (the sync itself is not failed by it)."""
    try:
        state = read(connector)
    except APIError as exc:
        log.warning("shopstate.unreadable", source=connector.source, error=exc.message)
        return
    store(ledger, connector.source, state)


def plugins_of(ledger: Ledger, source_name: str) -> list[str]:
    """The plugin paths stored for one shop (for tests and the CLI)."""
    with ledger.sessions() as session:
        return list(session.scalars(
            select(ShopPlugin.plugin).join(Source, Source.id == ShopPlugin.source_id)
            .where(Source.name == source_name).order_by(ShopPlugin.plugin)))
