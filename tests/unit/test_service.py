"""The daemon's parts in-process, on SQLite and PostgreSQL: schedules and their config, the
instance lock, job locks, "already done this tick" from the ledger, the nightly job once per
night, job errors recorded (redacted) without stopping the daemon, and reload."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select

from daemon import logs, trail
from daemon.config import ConfigError, SecretSources, Settings, parse_settings
from daemon.ledger import AuditLogEntry, Ledger, SyncRun
from daemon.notify import Notifier
from daemon.service import (
    NIGHTLY,
    Daemon,
    InstanceLock,
    JobLocks,
    StartupError,
    _safe_text,
    last_sync_started,
    lock_key,
    previous_daily,
    previous_weekly,
)
from daemon.sync import INTERRUPTED, STOPPED
from vocabulary import utcnow

LONDON = ZoneInfo("Europe/London")


def settings_for(url: str, **raw: object) -> Settings:
    return parse_settings({"ledger": {"url": url}, **raw},
                          secrets=SecretSources(environ={"KEY": "sk_test_unit_canary_91"},
                                                credentials_dir=None))


@pytest.fixture
def make_daemon(ledger: Ledger, ledger_url: str) -> Iterator[object]:
    made: list[Daemon] = []

    def make(**raw: object) -> Daemon:
        daemon = Daemon(Path("config.toml"), settings_for(ledger_url, **raw), ledger,
                        notifier=Notifier({}))
        made.append(daemon)
        return daemon

    yield make
    for daemon in made:
        if daemon.scheduler.running:
            daemon.scheduler.shutdown(wait=True)
        daemon.locks.close()


def entries(ledger: Ledger, action: str) -> list[dict[str, object]]:
    with ledger.sessions() as session:
        return [json.loads(e.detail) for e in session.scalars(
            select(AuditLogEntry).where(AuditLogEntry.action == action)
            .order_by(AuditLogEntry.id))]


def add_run(ledger: Ledger, source: str, *, started: datetime, status: str = "success",
            mode: str = "incremental", error: str | None = None) -> None:
    with ledger.session() as session:
        row = ledger.source(session, source, source.split(":")[0])
        session.add(SyncRun(source_id=row.id, mode=mode, started_at=started, status=status,
                            error=error, finished_at=started))


# ------------------------------------------------------------------------------ schedules


def test_previous_daily_is_todays_time_once_it_has_passed() -> None:
    now = datetime(2026, 1, 10, 7, 0, tzinfo=UTC)
    assert previous_daily(now, 6, 0, LONDON) == datetime(2026, 1, 10, 6, 0, tzinfo=UTC)
    early = datetime(2026, 1, 10, 5, 59, tzinfo=UTC)
    assert previous_daily(early, 6, 0, LONDON) == datetime(2026, 1, 9, 6, 0, tzinfo=UTC)


def test_previous_daily_follows_the_local_clock_across_summer_time() -> None:
    # 29 March 2026: London moves to BST at 01:00 UTC; 06:00 local is then 05:00 UTC.
    after = datetime(2026, 3, 29, 5, 30, tzinfo=UTC)
    assert previous_daily(after, 6, 0, LONDON) == datetime(2026, 3, 29, 5, 0, tzinfo=UTC)
    before = datetime(2026, 3, 29, 4, 30, tzinfo=UTC)
    assert previous_daily(before, 6, 0, LONDON) == datetime(2026, 3, 28, 6, 0, tzinfo=UTC)


def test_previous_weekly_finds_the_last_matching_day_and_time() -> None:
    sunday = 6
    wednesday = datetime(2026, 1, 14, 12, 0, tzinfo=UTC)
    assert previous_weekly(wednesday, sunday, 3, 0, LONDON) == \
        datetime(2026, 1, 11, 3, 0, tzinfo=UTC)
    sunday_early = datetime(2026, 1, 11, 2, 0, tzinfo=UTC)
    assert previous_weekly(sunday_early, sunday, 3, 0, LONDON) == \
        datetime(2026, 1, 4, 3, 0, tzinfo=UTC)


def test_schedule_accepts_seconds_and_day_names() -> None:
    plan = parse_settings({"schedule": {"sync_interval": "5s", "sync_jitter": "1s",
                                        "full_sync": "Saturday 4:30", "audit_at": "7:05",
                                        "outbox_interval": "2s"}}).schedule
    assert plan.sync_interval == timedelta(seconds=5)
    assert (plan.full_sync, plan.full_sync_weekday, plan.full_sync_time) == \
        ("sat 04:30", 5, (4, 30))
    assert (plan.audit_at, plan.audit_time) == ("07:05", (7, 5))


def test_schedule_defaults_are_hourly_syncs_and_a_six_oclock_audit() -> None:
    plan = parse_settings({}).schedule
    assert plan.sync_interval == timedelta(hours=1)
    assert plan.audit_at == "06:00" and plan.full_sync == "sun 03:00"


@pytest.mark.parametrize(("schedule", "says"), [
    ({"audit_at": "25:00"}, "schedule.audit_at: '25:00' is not a time of day"),
    ({"audit_at": "six"}, "schedule.audit_at: 'six' is not a time of day"),
    ({"full_sync": "someday 03:00"}, "schedule.full_sync: 'someday' is not a day of the week"),
    ({"full_sync": "03:00"}, "schedule.full_sync: '03:00': write a day and a time"),
    ({"sync_interval": "0s"}, "schedule.sync_interval: must be at least 1s"),
    ({"sync_interval": 60}, "schedule.sync_interval: 60 has no unit"),
    ({"sync_jitter": "30min"}, "sync_jitter (30min) must be at most a quarter of sync_interval"),
    ({"every": "1h"}, "schedule.every: unknown key"),
])
def test_bad_schedule_is_refused_naming_the_key(schedule: dict[str, object], says: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_settings({"schedule": schedule})
    assert any(says in problem for problem in caught.value.problems), caught.value.problems


def test_bad_timezone_is_refused_naming_the_key() -> None:
    with pytest.raises(ConfigError, match="timezone: 'Europe/Lundon' is not a time zone"):
        parse_settings({"timezone": "Europe/Lundon"})


# ---------------------------------------------------------------------------------- locks


def test_second_instance_lock_names_the_ledger_and_the_holders_pid(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    first = InstanceLock.for_url(url)
    second = InstanceLock.for_url(url)
    assert first is not None and second is not None
    assert first.path == tmp_path / "ledger.db.lock"
    first.acquire()
    try:
        with pytest.raises(StartupError) as caught:
            second.acquire()
        assert str(caught.value).startswith(
            f"another privacy-ledger daemon is running on {tmp_path / 'ledger.db'} "
            f"(pid {__import__('os').getpid()})")
    finally:
        first.release()
    second.acquire()
    second.release()


def test_postgresql_ledgers_take_no_instance_lock() -> None:
    assert InstanceLock.for_url("postgresql+psycopg://u@db/ledger") is None


def test_lock_keys_differ_per_job_and_per_ledger() -> None:
    assert lock_key("db.a", "sync:stripe") == lock_key("db.a", "sync:stripe")
    assert lock_key("db.a", "sync:stripe") != lock_key("db.b", "sync:stripe")
    assert lock_key("db.a", "sync:stripe") != lock_key("db.a", NIGHTLY)
    assert -2**63 <= lock_key("db.a", "x") < 2**63


def test_a_job_lock_is_held_once_until_released(ledger: Ledger) -> None:
    locks = JobLocks(ledger)
    try:
        with locks.hold("sync:stripe") as first:
            with locks.hold("sync:stripe") as again, locks.hold("nightly") as other:
                assert (first, again, other) == (True, False, True)
        with locks.hold("sync:stripe") as later:
            assert later
    finally:
        locks.close()


def test_two_daemons_on_postgresql_never_hold_the_same_job(pg_url: str) -> None:
    first_ledger, second_ledger = Ledger.open(pg_url), Ledger.open(pg_url)
    first, second = JobLocks(first_ledger), JobLocks(second_ledger)
    try:
        with first.hold("sync:stripe") as mine:
            with second.hold("sync:stripe") as theirs, second.hold("sync:woo:a") as free:
                assert (mine, theirs, free) == (True, False, True)
        with second.hold("sync:stripe") as theirs_now:
            assert theirs_now
    finally:
        for item in (first, second, first_ledger, second_ledger):
            item.close()


def test_last_sync_ignores_runs_killed_or_stopped(ledger: Ledger) -> None:
    t = datetime(2026, 5, 1, 10, 0, tzinfo=UTC)
    add_run(ledger, "stripe", started=t)
    add_run(ledger, "stripe", started=t + timedelta(minutes=1), status="failed",
            error=INTERRUPTED)
    add_run(ledger, "stripe", started=t + timedelta(minutes=2), status="failed", error=STOPPED)
    add_run(ledger, "stripe", started=t + timedelta(minutes=3), status="running")
    assert last_sync_started(ledger, "stripe", ("incremental",)) == t
    add_run(ledger, "stripe", started=t + timedelta(minutes=4), status="failed",
            error="the credentials were refused (401)")
    assert last_sync_started(ledger, "stripe", ("incremental",)) == t + timedelta(minutes=4)
    assert last_sync_started(ledger, "stripe", ("full",)) is None


def test_last_sync_of_mailchimp_covers_every_audience(ledger: Ledger) -> None:
    t = datetime(2026, 5, 1, 10, 0, tzinfo=UTC)
    add_run(ledger, "mailchimp:aaa", started=t)
    add_run(ledger, "mailchimp:bbb", started=t + timedelta(seconds=5), mode="full")
    assert last_sync_started(ledger, "mailchimp", ("incremental", "full")) == \
        t + timedelta(seconds=5)
    assert last_sync_started(ledger, "stripe", ("incremental", "full")) is None


def test_sync_job_is_skipped_when_this_tick_already_ran(ledger: Ledger, make_daemon) -> None:
    daemon = make_daemon(schedule={"sync_interval": "1h"})
    add_run(ledger, "stripe", started=utcnow() - timedelta(minutes=10))
    # No source "stripe" is configured: running the sync would raise, skipping does not.
    assert daemon._sync("stripe", False) == "skipped"


def test_syncs_beyond_parallel_syncs_wait_their_turn(ledger: Ledger, make_daemon,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    from daemon import sources

    daemon = make_daemon(schedule={"parallel_syncs": 2})
    lock = threading.Lock()
    running = {"now": 0, "most": 0}

    def slow_sync(*_args: object, **_kwargs: object) -> list[object]:
        with lock:
            running["now"] += 1
            running["most"] = max(running["most"], running["now"])
        time.sleep(0.2)
        with lock:
            running["now"] -= 1
        return []

    monkeypatch.setattr(sources, "sync_configured", slow_sync)
    threads = [threading.Thread(target=daemon._sync, args=(f"woo:shop{n}", True))
               for n in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert running == {"now": 0, "most": 2}


def test_a_sync_waiting_for_its_turn_gives_up_when_the_daemon_stops(
        ledger: Ledger, make_daemon, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    from daemon import sources

    daemon = make_daemon(schedule={"parallel_syncs": 1})
    release = threading.Event()
    monkeypatch.setattr(sources, "sync_configured",
                        lambda *_a, **_k: release.wait(10) and [])
    first = threading.Thread(target=daemon._sync, args=("woo:first", True))
    first.start()
    time.sleep(0.2)
    outcome: list[str] = []
    waiting = threading.Thread(target=lambda: outcome.append(daemon._sync("woo:second", True)))
    waiting.start()
    time.sleep(0.2)
    daemon.request_stop()
    waiting.join(timeout=5)
    release.set()
    first.join(timeout=5)
    assert outcome == ["stopped"]


def test_connectors_wait_in_the_daemon_until_it_stops(ledger: Ledger, make_daemon) -> None:
    from connectors.base import StopWaiting

    daemon = make_daemon()
    daemon.pause(0.01)
    daemon.request_stop()
    started = time.monotonic()
    with pytest.raises(StopWaiting):
        daemon.pause(30)
    assert time.monotonic() - started < 1


def test_nightly_runs_once_per_night_across_daemons(ledger: Ledger, make_daemon) -> None:
    first, second = make_daemon(), make_daemon()
    assert first._nightly(True) == "ok"
    assert second._nightly(False) == "skipped"
    assert first._nightly(False) == "skipped"
    done = entries(ledger, NIGHTLY)
    assert len(done) == 1 and done[0]["catch_up"] is True
    assert len(entries(ledger, "audit")) <= 1
    assert trail.verify(ledger).ok


def test_nightly_runs_again_once_the_next_audit_time_passed(ledger: Ledger,
                                                            make_daemon) -> None:
    daemon = make_daemon()
    yesterday = previous_daily(utcnow(), 6, 0, LONDON) - timedelta(minutes=1)
    trail.record(ledger, "daemon", NIGHTLY, {"scheduled": "old"})
    with ledger.session() as session:
        entry = session.scalars(select(AuditLogEntry)
                                .where(AuditLogEntry.action == NIGHTLY)).one()
        entry.at = yesterday
    assert daemon._nightly(False) == "ok"
    assert len(entries(ledger, NIGHTLY)) == 2


# ------------------------------------------------------------------------- job errors


def test_a_job_that_raises_is_recorded_redacted_and_the_daemon_goes_on(
        ledger: Ledger, make_daemon) -> None:
    logs.add_secrets(["sk_test_unit_canary_91"])
    daemon = make_daemon()
    calls: list[int] = []

    def boom() -> None:
        calls.append(1)
        raise RuntimeError("upsert failed for ada@example.com using sk_test_unit_canary_91")

    daemon.scheduler.add_job(boom, "interval", seconds=0.2, id="boom")
    daemon.scheduler.start()
    deadline = time.monotonic() + 10
    while len(entries(ledger, "job_error")) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert daemon.scheduler.running
    daemon.scheduler.shutdown(wait=True)
    recorded = entries(ledger, "job_error")
    assert len(recorded) >= 2 and len(calls) >= 2
    assert recorded[0] == {"job": "boom", "error_type": "RuntimeError",
                           "error": "upsert failed for <email> using ***"}
    assert daemon._last["boom"] == "failed"


def test_safe_text_masks_secrets_and_emails_on_one_line() -> None:
    logs.add_secrets(["sk_test_unit_canary_91"])
    said = _safe_text('Key (email)=("Ada@Example.com") exists\nkey sk_test_unit_canary_91')
    assert said == 'Key (email)=("<email>") exists key ***'
    assert len(_safe_text("x" * 1000)) == 300


# ----------------------------------------------------------------------- jobs and reload


def test_schedule_adds_a_job_per_source_and_the_nightly_at_local_time(ledger_url: str,
                                                                      make_daemon) -> None:
    daemon = make_daemon(stripe={"api_key": "env:KEY"},
                         smtp={"host": "127.0.0.1", "port": 2525, "security": "none"},
                         schedule={"audit_at": "06:30"})
    daemon.schedule()
    # Job defaults (coalesce, max_instances) apply once the scheduler holds the jobs.
    daemon.scheduler.start(paused=True)
    jobs = {job.id: job for job in daemon.scheduler.get_jobs()}
    assert set(jobs) == {"sync:stripe", "full:stripe", NIGHTLY, "outbox"}
    after = datetime(2026, 7, 1, 12, 0, tzinfo=UTC)
    fire = jobs[NIGHTLY].trigger.get_next_fire_time(None, after)
    assert fire.astimezone(UTC) == datetime(2026, 7, 2, 5, 30, tzinfo=UTC)
    assert jobs[NIGHTLY].misfire_grace_time == 6 * 3600
    assert jobs["sync:stripe"].coalesce and jobs["sync:stripe"].max_instances == 1


def test_weekly_reconciliation_starts_stripe_before_the_shops(ledger_url: str,
                                                              make_daemon) -> None:
    daemon = make_daemon(stripe={"api_key": "env:KEY"},
                         woocommerce=[{"name": "shop", "url": "https://shop.example",
                                       "consumer_key": "env:KEY", "consumer_secret": "env:KEY"}],
                         schedule={"full_sync": "sun 03:00"})
    daemon.schedule()
    jobs = {job.id: job for job in daemon.scheduler.get_jobs()}
    after = datetime(2026, 7, 1, 12, 0, tzinfo=UTC)
    stripe = jobs["full:stripe"].trigger.get_next_fire_time(None, after)
    shop = jobs["full:woo:shop"].trigger.get_next_fire_time(None, after)
    assert stripe.astimezone(LONDON) == datetime(2026, 7, 5, 3, 0, tzinfo=LONDON)
    assert shop - stripe == timedelta(seconds=5)


def test_reload_replaces_the_jobs_and_keeps_the_old_config_when_the_new_fails(
        ledger_url: str, make_daemon) -> None:
    daemon = make_daemon(stripe={"api_key": "env:KEY"})
    daemon.schedule()
    replies: list[object] = [settings_for(ledger_url),
                             ConfigError(["config.toml: timezone: 'Mars' is not a time zone"]),
                             settings_for("sqlite:////elsewhere/ledger.db")]

    def load(_path: Path) -> Settings:
        reply = replies.pop(0)
        if isinstance(reply, Exception):
            raise reply
        assert isinstance(reply, Settings)
        return reply

    daemon._load = load
    assert daemon.reload()
    assert {job.id for job in daemon.scheduler.get_jobs()} == {NIGHTLY}
    kept = daemon.settings
    assert not daemon.reload()
    assert not daemon.reload()
    assert daemon.settings is kept


def test_a_sync_job_is_skipped_while_another_sync_holds_the_source(ledger: Ledger,
                                                                    make_daemon) -> None:
    from daemon.sources import RunLock, SourceBusyError

    # Nothing listens on port 9: a sync that started would record a failed run.
    daemon = make_daemon(stripe={"api_key": "env:KEY", "base_url": "http://127.0.0.1:9/v1"})
    with RunLock(ledger, "stripe"):
        assert daemon._sync("stripe", False) == "skipped"
        with pytest.raises(SourceBusyError, match=r"stripe is already being synced \(by pid "
                                                  rf"{os.getpid()} on "):
            RunLock(ledger, "stripe").__enter__()
    with ledger.sessions() as session:
        assert session.scalars(select(SyncRun)).all() == []
    with RunLock(ledger, "stripe"):
        pass  # released with its holder


# A process that holds a job's advisory lock, as another daemon running that job would.
HOLDER = """
import sys, time
from daemon.ledger import Ledger
from daemon.service import JobLocks
ledger = Ledger.open(sys.argv[1])
locks = JobLocks(ledger)
with locks.hold(sys.argv[2]) as got:
    print("held" if got else "refused", flush=True)
    time.sleep(60)
"""


def _hold_elsewhere(url: str, lock: str) -> object:
    import subprocess
    import sys

    holder = subprocess.Popen([sys.executable, "-c", HOLDER, url, lock],  # noqa: S603
                              stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).resolve().parents[2])
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    return holder


def test_a_scheduled_sync_takes_over_from_a_daemon_killed_mid_run(pg_url: str) -> None:
    """Another daemon holds stripe's sync and is SIGKILLed: PostgreSQL drops its lock, and
    the job waiting here runs the sync (no source answers on port 9: a failed run is
    recorded, which shows the sync ran)."""
    import signal
    import threading

    ledger = Ledger.open(pg_url)
    daemon = Daemon(Path("config.toml"), settings_for(
        pg_url, schedule={"sync_interval": "1h", "claim_lease": "1s"},
        stripe={"api_key": "env:KEY", "base_url": "http://127.0.0.1:9/v1"}), ledger,
        notifier=Notifier({}))
    holder = _hold_elsewhere(pg_url, "sync:stripe")
    try:
        job = threading.Thread(target=daemon._sync_job, args=("stripe", False))
        job.start()
        time.sleep(1.0)
        assert job.is_alive(), "the job waits while the other daemon's run holds the lock"
        with ledger.sessions() as session:
            assert session.scalars(select(SyncRun)).all() == []
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
        job.join(timeout=30)
        assert not job.is_alive()
        assert daemon._last["sync:stripe"].startswith("failed at ")
        with ledger.sessions() as session:
            assert [run.status for run in session.scalars(select(SyncRun))] == ["failed"]
    finally:
        if holder.poll() is None:
            holder.kill()
        daemon.locks.close()
        ledger.close()


def test_a_scheduled_sync_finished_elsewhere_is_not_run_again(pg_url: str) -> None:
    """The other daemon's run finishes (its run recorded, its lock released): the job that
    waited finds this tick done and skips."""
    import threading

    ledger = Ledger.open(pg_url)
    daemon = Daemon(Path("config.toml"), settings_for(
        pg_url, schedule={"sync_interval": "1h", "claim_lease": "1s"},
        stripe={"api_key": "env:KEY", "base_url": "http://127.0.0.1:9/v1"}), ledger,
        notifier=Notifier({}))
    holder = _hold_elsewhere(pg_url, "sync:stripe")
    try:
        job = threading.Thread(target=daemon._sync_job, args=("stripe", False))
        job.start()
        time.sleep(0.6)
        add_run(ledger, "stripe", started=utcnow() - timedelta(seconds=30))
        holder.terminate()
        holder.wait(timeout=10)
        job.join(timeout=30)
        assert daemon._last["sync:stripe"].startswith("skipped at ")
        with ledger.sessions() as session:
            assert [run.status for run in session.scalars(select(SyncRun))] == ["success"]
    finally:
        if holder.poll() is None:
            holder.kill()
        daemon.locks.close()
        ledger.close()


def test_a_scheduled_sync_held_past_its_tick_is_skipped(ledger_url: str,
                                                        ledger: Ledger) -> None:
    """A run of the same source in this daemon outlasts half the interval: the waiting tick
    gives up, says so, and runs nothing."""
    daemon = Daemon(Path("config.toml"), settings_for(
        ledger_url, schedule={"sync_interval": "2s", "sync_jitter": "0s",
                              "claim_lease": "1s"},
        stripe={"api_key": "env:KEY", "base_url": "http://127.0.0.1:9/v1"}), ledger,
        notifier=Notifier({}))
    try:
        started = time.monotonic()
        with daemon.locks.hold("sync:stripe") as got:
            assert got
            daemon._sync_job("stripe", False)
        assert 0.9 <= time.monotonic() - started < 5
        assert daemon._last["sync:stripe"].startswith("skipped at ")
        with ledger.sessions() as session:
            assert session.scalars(select(SyncRun)).all() == []
    finally:
        daemon.locks.close()
