"""Several daemons on one PostgreSQL ledger share a round (daemon/claims.py): real
`privacy-ledger run --once` processes against the sandbox twins; each source is synced by
exactly one of them, the nightly audit and email run once, and a daemon killed mid-source
has its claim taken over by another once its lease runs out."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.exc import ProgrammingError

from daemon.ledger import Ledger, SourceClaim
from sandbox.demo import RunningEstate
from tests.integration.test_daemon_service import (  # noqa: F401 - fixtures
    Daemon,
    Mailbox,
    estate,
    runs,
    smtp,
    source_names,
    spawn,
    trail_count,
    wait_until,
    write_config,
)

pytestmark = pytest.mark.slow

# A day: both daemons of a test start in the same cycle.
SCHEDULE = 'sync_interval = "1d"\nsync_jitter = "0s"\nparallel_syncs = 2\nclaim_lease = "2s"\n'


def claims(url: str) -> list[SourceClaim]:
    """The ledger's claims (none before a daemon has created the schema)."""
    ledger = Ledger.open(url, migrate_schema=False)
    try:
        with ledger.sessions() as session:
            return list(session.scalars(select(SourceClaim).order_by(SourceClaim.source)))
    except ProgrammingError:
        return []
    finally:
        ledger.close()


def test_two_daemons_share_a_round_each_source_synced_once_and_one_nightly(
        estate: RunningEstate, smtp: Mailbox, tmp_path: Path, pg_url: str,  # noqa: F811
        spawn: Callable[..., Daemon]) -> None:  # noqa: F811
    config = write_config(estate, smtp, tmp_path / "etc", ledger_url=pg_url, schedule=SCHEDULE)
    mail_before = len(smtp.messages)
    # Slow answers: the round lasts long enough for both daemons to be claiming in it.
    for server in estate.servers.values():
        server.twin.faults.latency = 0.05
    try:
        daemons = [spawn(config, "run", "--once", label=label) for label in ("one", "two")]
        for daemon in daemons:
            assert daemon.wait(120) == 0, daemon.stderr()[-2000:]
    finally:
        for server in estate.servers.values():
            server.twin.faults.latency = 0.0
    sources = source_names(pg_url)
    assert sources
    for name in sources:
        assert [r.status for r in runs(pg_url, name)] == ["success"], name
    held = claims(pg_url)
    assert all(claim.done_at is not None for claim in held)
    assert len({claim.cycle for claim in held}) == 1
    pids = {f":{daemon.pid}" for daemon in daemons}
    assert {claim.holder[claim.holder.rindex(":"):] for claim in held} <= pids
    assert trail_count(pg_url, "nightly") == 1
    wait_until(lambda: len(smtp.messages) >= mail_before + 1, 30, "the nightly email")
    time.sleep(1.0)
    assert len(smtp.messages) == mail_before + 1


def test_a_killed_daemons_claim_is_taken_over_after_its_lease(
        estate: RunningEstate, smtp: Mailbox, tmp_path: Path, pg_url: str,  # noqa: F811
        spawn: Callable[..., Daemon]) -> None:  # noqa: F811
    config = write_config(estate, smtp, tmp_path / "etc", ledger_url=pg_url,
                          schedule=SCHEDULE.replace("parallel_syncs = 2", "parallel_syncs = 1"))
    for server in estate.servers.values():
        server.twin.faults.latency = 0.3
    try:
        first = spawn(config, "run", "--once", label="first")
        mid_source = wait_until(
            lambda: next((c for c in claims(pg_url) if c.holder and c.done_at is None
                          and c.holder.endswith(f":{first.pid}")), None),
            60, "the first daemon holding a claim")
        first.process.kill()
        assert first.wait(10) == -signal.SIGKILL
        second = spawn(config, "run", "--once", label="second")
        assert second.wait(180) == 0, second.stderr()[-2000:]
    finally:
        for server in estate.servers.values():
            server.twin.faults.latency = 0.0
    taken = next(c for c in claims(pg_url) if c.source == mid_source.source)
    assert taken.holder.endswith(f":{second.pid}")
    assert taken.cycle == mid_source.cycle and taken.done_at is not None
    # Not before the lease ran out.
    assert (taken.claimed_at - mid_source.claimed_at).total_seconds() >= 2.0
    assert "claim.taken_over" in second.stderr() + second.stdout()
    assert all(c.done_at is not None for c in claims(pg_url))
    # The source the dead daemon held (the mailchimp job: one ledger source per audience)
    # got a successful run from the second.
    held = [name for name in source_names(pg_url)
            if name == mid_source.source or name.startswith(mid_source.source + ":")]
    assert held
    for name in held:
        assert any(r.status == "success" for r in runs(pg_url, name)), name
