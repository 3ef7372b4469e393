"""The daemon's systemd STATUS while a source syncs: what its listing has read, of the
upstream's own total where the API gives one (a bare count for Stripe)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.config import load_settings
from daemon.ledger import Ledger
from daemon.notify import Notifier
from daemon.service import Daemon
from sandbox.demo import RunningEstate
from sandbox.estate import EstateSpec
from sandbox.seed import build_estate
from vocabulary import utcnow


class Recorded(Notifier):
    """The notify protocol's STATUS lines, kept instead of sent."""

    def __init__(self) -> None:
        super().__init__({})
        self.said: list[str] = []

    def status(self, text: str) -> bool:
        self.said.append(text)
        return True


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[tuple[Daemon, Recorded, RunningEstate]]:
    built = build_estate(EstateSpec(seed=2, people=40, now=utcnow().replace(microsecond=0)))
    with RunningEstate(built) as running:
        config = running.write_config(tmp_path)
        settings = load_settings(config)
        ledger = Ledger.open(settings.ledger.database_url)
        notifier = Recorded()
        made = Daemon(config, settings, ledger, notifier=notifier)
        try:
            yield made, notifier, running
        finally:
            if made.scheduler.running:
                made.scheduler.shutdown(wait=True)
            made.locks.close()
            ledger.close()


def test_the_status_names_the_listing_read_against_its_upstream_total(
        daemon: tuple[Daemon, Recorded, RunningEstate]) -> None:
    service, notifier, running = daemon
    service._sync_job("woo:allmyink", True)
    service._sync_job("stripe", True)
    customers = len(running.estate.shops["allmyink"].customers)
    assert f"syncing woo:allmyink: {customers:,}/{customers:,} customers" in notifier.said
    assert any(re.fullmatch(r"syncing woo:allmyink: [\d,]+/[\d,]+ orders", s)
               for s in notifier.said), notifier.said
    assert any(re.fullmatch(r"syncing stripe: [\d,]+ records", s) for s in notifier.said)
