"""What a shop said about itself, stored in the ledger: replaced whole at each read, its
upstream words made safe to show, and safe in the record of processing's CSV."""

from __future__ import annotations

import csv
import io

from sqlalchemy import select

from connectors.woocommerce import ActivePlugin, ShopOptionValue, ShopPart, ShopState
from daemon.config import PolicySettings, RetentionSettings
from daemon.ledger import Ledger, ShopOption, ShopPlugin, ShopRead
from daemon.ropa import activities, ropa_csv
from daemon.shopstate import plugins_of, store

HOSTILE = "=HYPERLINK(\"http://evil.example\")\u202e\x1b[31m Label\nPrinter"


def _state(*plugins: ActivePlugin, ok: bool = True) -> ShopState:
    return ShopState(plugins, (ShopOptionValue("woocommerce_trash_pending_orders", ok,
                                               30 * 86400 if ok else None,
                                               "30 days" if ok else None),),
                     (ShopPart("plugins", True, "2 active plugins"),
                      ShopPart("retention", ok, None if ok else "not readable (\x07bell)")))


def test_each_read_replaces_what_the_ledger_knew_of_the_shop(ledger: Ledger) -> None:
    store(ledger, "woo:allmyink", _state(ActivePlugin("a/a.php", "A", "1"),
                                         ActivePlugin("b/b.php", "B", None)))
    store(ledger, "woo:allmyink", _state(ActivePlugin("b/b.php", "B", "2"), ok=False))
    assert plugins_of(ledger, "woo:allmyink") == ["b/b.php"]
    with ledger.sessions() as session:
        option = session.scalars(select(ShopOption)).one()
        read = session.scalars(select(ShopRead).where(ShopRead.part == "retention")).one()
    assert (option.readable, option.period_seconds) == (False, None)
    assert read.ok is False and read.detail == "not readable ( bell)"


def test_a_plugins_own_words_are_stored_safe_and_kept_out_of_csv_formulas(
        ledger: Ledger) -> None:
    store(ledger, "woo:allmyink", _state(ActivePlugin("label-printer/x.php", HOSTILE, "1")))
    with ledger.sessions() as session:
        name = session.scalars(select(ShopPlugin.name)).one()
    assert "\u202e" not in name and "\x1b" not in name and "\n" not in name
    declared = PolicySettings(purposes={"woocommerce": "=1+1 to take orders"})
    rows = list(csv.reader(io.StringIO(ropa_csv(activities(ledger, RetentionSettings(),
                                                           declared)))))
    (row,) = rows[1:]
    assert row[2] == "'=1+1 to take orders"
    assert "Label Printer: not classified" in row[6]
    assert all(not cell.startswith(("=", "+", "-", "@")) for row in rows for cell in row)
