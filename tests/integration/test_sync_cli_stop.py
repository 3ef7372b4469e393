"""`privacy-ledger sync` stopped by a real SIGINT or SIGTERM: a subprocess against the sandbox
twins (in this process, slowed down, small batches so that the stop lands mid-source). A
stopped run keeps what it committed, is recorded as stopped (not failed), ends with one
line and the conventional exit status, and the email neither calls it a failure nor lets it
hide the complete sync before it.

Every wait is bounded and every process left running is killed at the end.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from daemon.config import load_settings
from daemon.ledger import Ledger, Source, SyncRun
from daemon.report import digest_for, render
from sandbox.demo import RunningEstate
from sandbox.estate import EstateSpec
from sandbox.seed import build_estate
from vocabulary import utcnow

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def estate() -> Iterator[RunningEstate]:
    built = build_estate(EstateSpec(people=60, now=utcnow().replace(microsecond=0)))
    with RunningEstate(built) as running:
        yield running


def start_sync(config: Path, workdir: Path, *args: str) -> subprocess.Popen[bytes]:
    program = Path(sys.executable).parent / "privacy-ledger"
    command = ([str(program)] if program.exists()
               else [sys.executable, "-c", "from daemon.cli import main; main()"])
    env = {k: v for k, v in os.environ.items() if k != "PRIVACY_LEDGER_CONFIG"}
    return subprocess.Popen(
        [*command, "--config", str(config), "sync", *args], cwd=REPO,
        stdout=(workdir / "out").open("wb"), stderr=(workdir / "err").open("wb"),
        env={**env, "PYTHONUNBUFFERED": "1"}, start_new_session=True)


def finished(process: subprocess.Popen[bytes], timeout: float) -> int:
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)
        raise AssertionError(f"sync still running after {timeout:g}s") from None


def all_runs(url: str) -> list[tuple[str, SyncRun]]:
    ledger = Ledger.open(url, migrate_schema=False)
    try:
        with ledger.sessions() as session:
            return [(name, run) for name, run in session.execute(
                select(Source.name, SyncRun).join(Source, Source.id == SyncRun.source_id)
                .order_by(SyncRun.id)).tuples()]
    finally:
        ledger.close()


def wait_for_a_committed_batch(url: str, after: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert process.poll() is None, "the sync ended before it could be stopped"
        if any(run.id > after and run.status == "running" and run.records_seen > 0
               for _, run in all_runs(url)):
            return
        time.sleep(0.05)
    raise AssertionError("no batch of the second sync was committed within 60 s")


@pytest.mark.parametrize(("number", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_stopped_cli_sync_is_recorded_as_stopped_and_the_email_does_not_call_it_failed(
        estate: RunningEstate, tmp_path: Path, number: signal.Signals, code: int) -> None:
    config = estate.write_config(tmp_path / "etc", batch_size=20)
    url = f"sqlite:///{tmp_path / 'etc' / 'ledger.db'}"
    first = start_sync(config, tmp_path)
    assert finished(first, 120) == 0, (tmp_path / "err").read_text()
    before = max(run.id for _, run in all_runs(url))

    twins = [server.twin for server in estate.servers.values()]
    for twin in twins:
        twin.faults.latency = 0.05
    try:
        second = start_sync(config, tmp_path, "--full")
        wait_for_a_committed_batch(url, before, second)
        second.send_signal(number)
        status = finished(second, 60)
    finally:
        for twin in twins:
            twin.faults.latency = 0.0
    err = (tmp_path / "err").read_text()
    assert status == code, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    last_lines = [line for line in err.splitlines() if line.startswith("sync stopped")]
    assert len(last_lines) == 1
    assert f"by {number.name}" in last_lines[0] and "kept" in last_lines[0]
    assert "next privacy-ledger sync continues" in last_lines[0]

    later = [(name, run) for name, run in all_runs(url) if run.id > before]
    stopped = [run for _, run in later if run.status == "stopped"]
    assert len(stopped) == 1 and stopped[0].error == "stopped"
    assert stopped[0].records_seen > 0 and stopped[0].finished_at is not None
    assert all(run.status in ("success", "stopped") for _, run in later)
    assert not any("internal error" in (run.error or "") for _, run in later)

    # The complete sync minutes before still counts: nothing is blind, nothing failed.
    ledger = Ledger.open(url, migrate_schema=False)
    try:
        email = render(digest_for(ledger, load_settings(config)))
    finally:
        ledger.close()
    assert "SYNC FAILED" not in email.subject and "NOT SYNCED" not in email.subject
    assert "BLIND" not in email.text.upper()

    # The next sync continues and completes.
    third = start_sync(config, tmp_path)
    assert finished(third, 120) == 0, (tmp_path / "err").read_text()
    newest = {name: run.status for name, run in all_runs(url)}
    assert set(newest.values()) == {"success"}
