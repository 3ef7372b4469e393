"""The long-running daemon (`privacy-ledger run`): one process, APScheduler 3 jobs for the
incremental syncs, the weekly full reconciliation, the nightly audit + email and the outbox
retries; systemd's notify protocol (READY, STATUS, WATCHDOG, STOPPING, RELOADING); SIGTERM
stops between batches, SIGHUP reloads the config.

What ran, and when, is ledger data, never scheduler state: jobs live in APScheduler's memory
store, and each job asks the ledger whether its tick was already done (by this daemon before
a restart, or by another daemon on the same PostgreSQL ledger). On SQLite one daemon holds a
lock file for its whole life; on PostgreSQL every job holds an advisory lock while it runs, and
a job that finds it held waits: it takes over when the holder died, skips when it finished.
"""

from __future__ import annotations

import contextlib
import contextvars
import fcntl
import hashlib
import logging
import os
import re
import signal
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from datetime import time as clock
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, TextIO
from zoneinfo import ZoneInfo

import structlog
from apscheduler.events import (
    EVENT_JOB_ERROR,
    EVENT_JOB_MAX_INSTANCES,
    EVENT_JOB_MISSED,
    EVENT_SCHEDULER_STARTED,
    JobEvent,
    JobExecutionEvent,
    SchedulerEvent,
)
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy import Engine, create_engine, func, or_, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from connectors.base import Progress, StopWaiting
from daemon import logs, trail
from daemon.ledger import AuditLogEntry, Ledger, Source, SyncRun
from daemon.notify import Notifier, Watchdog, watchdog_interval
from daemon.sync import INTERRUPTED, STOPPED
from vocabulary import system_name, utcnow

if TYPE_CHECKING:
    from daemon.config import Settings

log = structlog.get_logger("daemon.service")

ACTOR = "daemon"
NIGHTLY = "nightly"
# A sync tick is taken as done when a run of that source started less than this fraction
# of the interval ago (jitter is at most a quarter of it, so one daemon never skips itself).
TICK_FRACTION = 0.5
# Runs that did not really try: killed with their process, or stopped between batches.
_NOT_ATTEMPTS = (INTERRUPTED, STOPPED)


class StartupError(Exception):
    """The daemon cannot start; the message is the one line systemctl status shows."""


# ---------------------------------------------------------------------------- schedules


def previous_daily(now: datetime, hour: int, minute: int, zone: ZoneInfo) -> datetime:
    """The latest local `hour:minute` at or before `now`, in UTC."""
    local = now.astimezone(zone)
    for back in range(3):
        moment = datetime.combine(local.date() - timedelta(days=back), clock(hour, minute),
                                  tzinfo=zone)
        if moment <= now:
            return moment.astimezone(UTC)
    raise AssertionError("unreachable: a day back always precedes now")  # pragma: no cover


def previous_weekly(now: datetime, weekday: int, hour: int, minute: int,
                    zone: ZoneInfo) -> datetime:
    """The latest local `weekday hour:minute` (Monday = 0) at or before `now`, in UTC."""
    local = now.astimezone(zone)
    for back in range(9):
        day = local.date() - timedelta(days=back)
        if day.weekday() != weekday:
            continue
        moment = datetime.combine(day, clock(hour, minute), tzinfo=zone)
        if moment <= now:
            return moment.astimezone(UTC)
    raise AssertionError("unreachable: a week back always precedes now")  # pragma: no cover


# ------------------------------------------------------------------------------- locks


class InstanceLock:
    """One daemon per SQLite ledger: an exclusive flock on `<ledger file>.lock`, held for the
    life of the process (the kernel drops it when the process dies, even by kill -9)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    @classmethod
    def for_url(cls, url: str) -> InstanceLock | None:
        """The lock for a SQLite file ledger; None for PostgreSQL (jobs lock there)."""
        parsed = make_url(url)
        if not parsed.drivername.startswith("sqlite"):
            return None
        database = parsed.database
        if not database or database == ":memory:":
            return None
        ledger_file = Path(database).resolve()
        return cls(ledger_file.with_name(ledger_file.name + ".lock"))

    def acquire(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StartupError(f"cannot create the lock file {self.path}: {exc.strerror}; "
                               "check that the state directory is writable") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            ledger_file = self.path.with_name(self.path.name.removesuffix(".lock"))
            raise StartupError(f"another privacy-ledger daemon is running on {ledger_file} "
                               f"(pid {holder}); stop it first, or use PostgreSQL to run "
                               "several") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def lock_key(namespace: str, name: str) -> int:
    """A stable signed 64-bit advisory-lock key for a job in one ledger."""
    digest = hashlib.sha256(f"privacy-ledger:{namespace}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class JobLocks:
    """Keeps a job from running twice at once: a thread lock in this process, and on
    PostgreSQL an advisory lock on a connection of its own, held while the job runs (a
    daemon that dies loses its connection, and so its locks)."""

    def __init__(self, ledger: Ledger) -> None:
        self._local: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self._engine: Engine | None = None
        self._namespace = ""
        if ledger.dialect == "postgresql":
            self._engine = create_engine(ledger.engine.url, poolclass=NullPool)
            with self._engine.connect() as connection:
                # Advisory locks are per database: two ledgers in two schemas must not meet.
                self._namespace = str(connection.execute(
                    text("SELECT current_database() || '.' || current_schema()")).scalar())

    @contextlib.contextmanager
    def hold(self, name: str) -> Iterator[bool]:
        """Yields True when this process got the lock, False when another run holds it."""
        with self._guard:
            local = self._local.setdefault(name, threading.Lock())
        if not local.acquire(blocking=False):
            yield False
            return
        try:
            if self._engine is None:
                yield True
                return
            key = lock_key(self._namespace, name)
            with self._engine.connect().execution_options(
                    isolation_level="AUTOCOMMIT") as connection:
                got = bool(connection.execute(text("SELECT pg_try_advisory_lock(:key)"),
                                              {"key": key}).scalar())
                try:
                    yield got
                finally:
                    if got:
                        with contextlib.suppress(Exception):
                            connection.execute(text("SELECT pg_advisory_unlock(:key)"),
                                               {"key": key})
        finally:
            local.release()

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()


# ------------------------------------------------------------------------ ledger checks


def _source_filter(name: str) -> Any:
    # An account's job (`mailchimp`) syncs one ledger source per audience: mailchimp:<id>.
    named = system_name(name)
    if named is not None and named.one_account and name == named.prefix:
        return or_(Source.name == name, Source.name.like(f"{name}:%"))
    return Source.name == name


def last_sync_started(ledger: Ledger, name: str, modes: tuple[str, ...]) -> datetime | None:
    """When the latest real attempt to sync this configured source in these modes started
    (runs killed with their process or stopped between batches do not count)."""
    with ledger.sessions() as session:
        return session.scalar(
            select(func.max(SyncRun.started_at))
            .join(Source, Source.id == SyncRun.source_id)
            .where(_source_filter(name), SyncRun.mode.in_(modes),
                   or_(SyncRun.status == "success",
                       (SyncRun.status == "failed") & SyncRun.error.is_not(None)
                       & SyncRun.error.not_in(_NOT_ATTEMPTS))))


def syncing_sources(ledger: Ledger) -> list[str]:
    """The sources with a sync running now (in this daemon or another)."""
    with ledger.sessions() as session:
        return sorted(session.scalars(
            select(Source.name).distinct().join(SyncRun, SyncRun.source_id == Source.id)
            .where(SyncRun.status == "running")))


def last_entry(ledger: Ledger, action: str) -> datetime | None:
    with ledger.sessions() as session:
        return session.scalar(select(func.max(AuditLogEntry.at))
                              .where(AuditLogEntry.action == action))


# ------------------------------------------------------------------------ nightly work


def nightly(ledger: Ledger, settings: Settings, *, now: datetime | None = None) -> dict[str, Any]:
    """The nightly work: the audit, then the digest queued in the outbox when a report is
    configured (sending is the outbox's job). Returns counts for the trail, never personal
    values."""
    from daemon import audit, mail, report

    # Never waits on a sync: the audit reads what is committed, and says who was syncing.
    still = syncing_sources(ledger)
    result = audit.run_audit(ledger, settings.retention, now=now, actor=ACTOR,
                             declared=settings.policy)
    done: dict[str, Any] = {"new": result.new, "ongoing": result.ongoing,
                            "resolved": result.resolved}
    if still:
        done["still_syncing"] = still
    if settings.report is not None:
        rendered = report.render_digest(ledger, settings, now=now)
        done["message_id"] = mail.enqueue(ledger, rendered, settings.report, now=now)
    return done


def _safe_text(value: object, limit: int = 300) -> str:
    """An error message fit for the trail and the email: secrets redacted, email addresses
    masked (SQL errors can quote row values), one line, bounded."""
    redacted = logs.redact_processor(None, "", {"text": str(value)})["text"]
    line = " ".join(str(redacted).split())
    line = re.sub(r"[^\s@'\"()<>=,]+@[^\s@'\"()<>=,]+", "<email>", line)
    return line[:limit]


# ------------------------------------------------------------------------------ daemon


@dataclass(frozen=True)
class JobSpec:
    """One scheduled job: its id, what it locks and what it runs. `wait`: how long the job
    waits for its lock when another run holds it (None: it is skipped at once). A run that
    ends without finishing — its daemon died and PostgreSQL dropped its lock — is taken over;
    one that finished leaves its record, and the job then finds its tick already done."""

    id: str
    lock: str
    run: Callable[[], str]
    wait: timedelta | None = None


class Daemon:
    """The scheduler, its jobs, the notify protocol and the signals."""

    def __init__(self, config_path: Path, settings: Settings, ledger: Ledger, *,
                 notifier: Notifier | None = None,
                 load: Callable[[Path], Settings] | None = None) -> None:
        self.config_path = config_path
        self.settings = settings
        self.ledger = ledger
        self.notifier = notifier or Notifier()
        self._load = load
        self.locks = JobLocks(ledger)
        self.stopping = threading.Event()
        self._wake = threading.Event()
        self._reload_requested = False
        self._started = threading.Event()
        self._heartbeat = time.monotonic()
        self._ping_every = watchdog_interval(os.environ, os.getpid())
        self._last: dict[str, str] = {}
        self._active: set[str] = set()
        self._status_lock = threading.Lock()
        self._sync_slots = threading.BoundedSemaphore(settings.schedule.parallel_syncs)
        self.scheduler = BackgroundScheduler(
            timezone=UTC,
            # Room for every source's sync, the nightly job, the outbox and the startup
            # round, also after a reload adds a few sources.
            executors={"default": ThreadPoolExecutor(max(8, len(settings.source_names) + 4)),
                       "heartbeat": ThreadPoolExecutor(1)},
            job_defaults={"coalesce": True, "max_instances": 1},
        )
        self.scheduler.add_listener(self._on_started, EVENT_SCHEDULER_STARTED)
        self.scheduler.add_listener(self._on_job_event, EVENT_JOB_ERROR | EVENT_JOB_MISSED
                                    | EVENT_JOB_MAX_INSTANCES)

    # -- scheduling ------------------------------------------------------------------------
    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.settings.timezone)

    def schedule(self) -> None:
        """Add (or replace) every job the settings call for; remove the others."""
        plan = self.settings.schedule
        wanted: set[str] = set()

        def add(job_id: str, trigger: Any, func: Callable[..., None], *args: Any,
                grace: timedelta | None, executor: str = "default") -> None:
            wanted.add(job_id)
            self.scheduler.add_job(
                func, trigger, args=args, id=job_id, name=job_id, replace_existing=True,
                misfire_grace_time=max(1, int(grace.total_seconds())) if grace else None,
                executor=executor)

        interval = plan.sync_interval
        first = {unit.name for _, _, unit in self.settings.units() if unit.first}
        for name in self.settings.source_names:
            add(f"sync:{name}",
                IntervalTrigger(seconds=interval.total_seconds(),
                                jitter=int(plan.sync_jitter.total_seconds()) or None),
                self._sync_job, name, False, grace=interval)
            hour, minute = plan.full_sync_time
            # Stripe's listing is the longest (cursor lists, a read rate): it starts a few
            # seconds before the others so that it never waits for a parallel_syncs slot.
            add(f"full:{name}",
                CronTrigger(day_of_week=plan.full_sync_weekday, hour=hour, minute=minute,
                            second=0 if name in first else 5, timezone=self.zone),
                self._sync_job, name, True, grace=plan.misfire_grace)
        hour, minute = plan.audit_time
        add(NIGHTLY, CronTrigger(hour=hour, minute=minute, timezone=self.zone),
            self._nightly_job, False, grace=plan.misfire_grace)
        if self.settings.smtp is not None:
            add("outbox", IntervalTrigger(seconds=plan.outbox_interval.total_seconds()),
                self._outbox_job, grace=plan.outbox_interval)
        if self._ping_every is not None:
            add("heartbeat", IntervalTrigger(seconds=self._ping_every), self._beat,
                grace=timedelta(seconds=self._ping_every), executor="heartbeat")
        for job in self.scheduler.get_jobs():
            if job.id not in wanted and not job.id.startswith("startup"):
                job.remove()

    # -- jobs ------------------------------------------------------------------------------
    def _run(self, spec: JobSpec, *, source: str | None = None) -> None:
        """Every job: fresh log context, the lock, a STATUS line after. An exception is left
        to APScheduler, whose error event logs and records it."""
        structlog.contextvars.clear_contextvars()
        context: dict[str, Any] = {"job": spec.id, "run_id": uuid.uuid4().hex[:12]}
        if source is not None:
            context["source"] = source
        structlog.contextvars.bind_contextvars(**context)
        if self.stopping.is_set():
            return
        outcome = "failed"
        with self._status_lock:
            self._active.add(spec.id)
        deadline = time.monotonic() + (spec.wait.total_seconds() if spec.wait else 0.0)
        # How often a waiting job tries the lock again: a dead daemon's lock is gone at once.
        poll = min(30.0, max(0.2, self.settings.schedule.claim_lease.total_seconds() / 4))
        waited = False
        try:
            while True:
                with self.locks.hold(spec.lock) as got:
                    if got:
                        outcome = spec.run()
                        return
                left = deadline - time.monotonic()
                if left <= 0:
                    log.info("job.skipped", reason="running elsewhere (this daemon or "
                                                   "another on the same ledger)")
                    outcome = "skipped"
                    return
                if not waited:
                    waited = True
                    log.info("job.waiting", reason="running elsewhere; taken over if that "
                                                   "run ends without finishing",
                             wait_s=round(left))
                if self.stopping.wait(min(poll, left)):
                    outcome = "stopped"
                    return
        finally:
            self._finished(spec.id, outcome)

    def _sync_job(self, name: str, full: bool, *, claimed: bool = False) -> None:
        plan = self.settings.schedule
        fired = utcnow()
        # A claimed sync is the round's own; a scheduled one waits for a run elsewhere, at
        # most until its tick is past (half an interval; the weekly one, misfire_grace).
        wait = None if claimed else (plan.misfire_grace if full
                                     else plan.sync_interval * TICK_FRACTION)
        self._run(JobSpec(f"{'full' if full else 'sync'}:{name}", f"sync:{name}",
                          lambda: self._sync(name, full, claimed=claimed, now=fired), wait),
                  source=name)

    def _sync(self, name: str, full: bool, *, claimed: bool = False,
              now: datetime | None = None) -> str:
        """`now`: when the job fired (a job that waited for a run elsewhere judges its tick
        by that moment)."""
        from daemon.sources import BUSY, sync_configured

        now = now or utcnow()
        if full:
            plan = self.settings.schedule
            hour, minute = plan.full_sync_time
            since = previous_weekly(now, plan.full_sync_weekday, hour, minute, self.zone)
            last = last_sync_started(self.ledger, name, ("full",))
        else:
            since = now - self.settings.schedule.sync_interval * TICK_FRACTION
            last = last_sync_started(self.ledger, name, ("incremental", "full"))
        # Claimed: the claim is this round's record; a source taken over from a daemon that
        # died mid-sync is synced again, though that daemon's run started this tick.
        if not claimed and last is not None and last >= since:
            log.info("job.skipped", reason="already done for this tick",
                     last_started=last.isoformat())
            return "skipped"
        if full and self._wait_for_quiet_hours(name) == "stopped":
            return "stopped"
        # Read once: a reload's new limit applies to the syncs that start after it.
        slots = self._sync_slots
        while not slots.acquire(timeout=1.0):
            if self.stopping.is_set():
                return "stopped"
        try:
            results = sync_configured(self.ledger, self.settings, only=name, full=full,
                                      progress=self._progress,
                                      should_stop=self.stopping.is_set, sleep=self.pause)
        finally:
            slots.release()
        if not results:
            return "stopped"
        if all(r.status == BUSY for r in results):
            log.info("job.skipped", reason=results[0].error)
            return "skipped"
        return "ok" if all(r.ok for r in results) else (
            "stopped" if any(r.error == STOPPED for r in results) else "failed")

    def _wait_for_quiet_hours(self, name: str) -> str:
        """A shop's full pull waits for its quiet hours (no parallel_syncs slot is held
        meanwhile); "stopped" when the daemon is asked to stop while waiting."""
        from vocabulary import quiet

        # Any system's section may name quiet hours (WooCommerce's do).
        shop = next((section for _, section, unit in self.settings.units() if unit.name == name),
                    None)
        if shop is None or getattr(shop, "quiet_hours", None) is None:
            return "ok"
        window = quiet.parse_window(shop.quiet_hours)
        wait = quiet.seconds_until_quiet(utcnow(), window, self.zone)
        if wait > 0:
            log.info("sync.waiting_for_quiet_hours", quiet_hours=shop.quiet_hours,
                     wait_s=round(wait))
            self.notifier.status(f"{name}: full pull waits for quiet hours {shop.quiet_hours}")
            if self.stopping.wait(wait):
                return "stopped"
        return "ok"

    def pause(self, seconds: float) -> None:
        """How connectors wait (backoff, Retry-After, pacing) in the daemon: cut short by a
        stop, which then ends the sync (StopWaiting) instead of waiting out the upstream."""
        if self.stopping.wait(seconds):
            raise StopWaiting

    def _nightly_job(self, catch_up: bool) -> None:
        self._run(JobSpec(NIGHTLY, NIGHTLY, lambda: self._nightly(catch_up),
                          self.settings.schedule.misfire_grace))

    def _nightly(self, catch_up: bool) -> str:
        now = utcnow()
        hour, minute = self.settings.schedule.audit_time
        scheduled = previous_daily(now, hour, minute, self.zone)
        last = last_entry(self.ledger, NIGHTLY)
        if last is not None and last >= scheduled:
            log.info("job.skipped", reason="the audit for this night already ran",
                     last=last.isoformat())
            return "skipped"
        log.info("nightly.start", catch_up=catch_up, scheduled=scheduled.isoformat())
        self.notifier.status("auditing the ledger")
        done = nightly(self.ledger, self.settings)
        trail.record(self.ledger, ACTOR, NIGHTLY,
                     {**done, "scheduled": scheduled.isoformat(), "catch_up": catch_up})
        log.info("nightly.done", **done)
        # Sent at once rather than at the next outbox tick; the night is recorded as done
        # first, so a failure here retries the email, never the whole night.
        return self._outbox() if "message_id" in done else "ok"

    def _outbox_job(self) -> None:
        self._run(JobSpec("outbox", "outbox", self._outbox))

    def _outbox(self) -> str:
        from daemon import mail

        if self.settings.smtp is None:
            return "skipped"
        delivered = mail.deliver_pending(self.ledger, self.settings.smtp)
        if delivered.sent or delivered.failed:
            log.info("outbox.done", sent=delivered.sent, failed=delivered.failed,
                     waiting=delivered.waiting)
        return "ok" if not delivered.failed else "failed"

    def _startup_syncs(self) -> list[tuple[str, bool]]:
        """The first round's syncs: every source, in full when this week's reconciliation
        was missed."""
        plan = self.settings.schedule
        hour, minute = plan.full_sync_time
        since = previous_weekly(utcnow(), plan.full_sync_weekday, hour, minute, self.zone)
        round_ = []
        for name in self.settings.source_names:
            last_full = last_sync_started(self.ledger, name, ("full",))
            round_.append((name, last_full is None or last_full < since))
        return round_

    def _start_round(self) -> None:
        """The first round after a start, as one-off jobs side by side: each source's sync
        and the nightly audit if the last one was missed, which never waits on a sync (it
        audits the ledger as it is and says which sources are still syncing)."""
        for name, full in self._startup_syncs():
            self.scheduler.add_job(self._sync_job, args=(name, full), id=f"startup:{name}",
                                   name=f"startup:{name}", misfire_grace_time=None)
        self.scheduler.add_job(self._nightly_job, args=(True,), id="startup:nightly",
                               name="startup:nightly", misfire_grace_time=None)

    def _claimed_round(self) -> None:
        """One round shared with every daemon on this PostgreSQL ledger: parallel_syncs
        workers claim sources one at a time (daemon/claims.py) until every source of the
        round is done, by this daemon or another; a claim whose lease ran out is taken over."""
        from daemon.claims import Claims, cycle_of

        plan = self.settings.schedule
        fulls = dict(self._startup_syncs())
        names = list(fulls)
        cycle = cycle_of(utcnow(), plan.sync_interval)
        claims = Claims(self.ledger, lease=plan.claim_lease)
        log.info("round.shared", cycle=cycle, holder=claims.holder, sources=len(names))

        # Set when one of this daemon's workers finishes a source: the others look again at
        # once rather than at their next poll (which is for other daemons' claims and leases).
        progressed = threading.Event()
        poll = min(1.0, max(0.2, plan.claim_lease.total_seconds() / 8))

        def work() -> None:
            while not self.stopping.is_set():
                name = claims.claim_next(names, cycle)
                if name is None:
                    if claims.unfinished(names, cycle) == 0:
                        return
                    # Held by live daemons: wait for one to finish or for a lease to end.
                    progressed.wait(poll)
                    progressed.clear()
                    continue
                job = f"{'full' if fulls[name] else 'sync'}:{name}"
                try:
                    with claims.holding(name, cycle):
                        self._isolated(job, lambda name=name: self._sync_job(
                            name, fulls[name], claimed=True))
                finally:
                    progressed.set()

        workers = [threading.Thread(target=contextvars.copy_context().run,
                                    args=(self._isolated, "round", work),
                                    name=f"round {index}", daemon=True)
                   for index in range(plan.parallel_syncs)]
        for thread in workers:
            thread.start()
        for thread in workers:
            while thread.is_alive():
                thread.join(0.5)

    def _startup(self) -> None:
        """`run --once`: every source synced side by side (parallel_syncs at a time, each
        within schedule.source_timeout), then the nightly audit if the last one was
        missed. On PostgreSQL the round is shared with the other daemons of the ledger."""
        if self.ledger.dialect == "postgresql":
            self._claimed_round()
            if not self.stopping.is_set():
                self._isolated(NIGHTLY, lambda: self._nightly_job(True))
            return
        threads = [threading.Thread(
            target=contextvars.copy_context().run,
            args=(self._isolated, f"{'full' if full else 'sync'}:{name}",
                  lambda name=name, full=full: self._sync_job(name, full)),
            name=f"once {name}", daemon=True) for name, full in self._startup_syncs()]
        for thread in threads:
            thread.start()
        for thread in threads:
            while thread.is_alive():
                thread.join(0.5)
        if not self.stopping.is_set():
            self._isolated(NIGHTLY, lambda: self._nightly_job(True))

    def _isolated(self, job_id: str, step: Callable[[], None]) -> None:
        """One step of the startup round: an error is reported as a job error and the round
        goes on."""
        try:
            step()
        except Exception as exc:  # noqa: BLE001 - reported, as APScheduler would
            self._job_failed(job_id, exc, traceback.format_exc())

    def _beat(self) -> None:
        self._heartbeat = time.monotonic()

    # -- status ----------------------------------------------------------------------------
    def _progress(self, source: str, progress: Progress) -> None:
        of = f"/{progress.total:,}" if progress.total is not None else ""
        self.notifier.status(f"syncing {source}: {progress.done:,}{of} {progress.record_type}s")

    def _finished(self, job_id: str, outcome: str) -> None:
        moment = utcnow().astimezone(self.zone).strftime("%H:%M")
        with self._status_lock:
            self._last[job_id] = f"{outcome} at {moment}"
            self._active.discard(job_id)
            busy = sorted(self._active)
        if self.stopping.is_set():
            return
        self.notifier.status(f"running {', '.join(busy)}" if busy else self.idle_status())

    def idle_status(self) -> str:
        nightly_job = self.scheduler.get_job(NIGHTLY)
        upcoming = getattr(nightly_job, "next_run_time", None)
        failed = sorted(job for job, text in self._last.items() if text.startswith("failed"))
        parts = [f"idle, {len(self.settings.source_names)} sources"]
        if upcoming is not None:
            parts.append(f"next audit {upcoming.astimezone(self.zone):%a %H:%M %Z}")
        if failed:
            parts.append(f"last run failed: {', '.join(failed)}")
        return "; ".join(parts)

    # -- events ----------------------------------------------------------------------------
    def _on_started(self, _event: SchedulerEvent) -> None:
        self._started.set()
        self.notifier.ready(f"ready, {len(self.settings.source_names)} sources; first sync "
                            "round starting")
        log.info("daemon.ready", sources=self.settings.source_names,
                 notify=self.notifier.enabled, watchdog_s=self._ping_every)

    def _on_job_event(self, event: JobEvent) -> None:
        if event.code == EVENT_JOB_MAX_INSTANCES:
            log.info("job.skipped", job=event.job_id, reason="still running from its last "
                                                             "tick")
            return
        if event.code == EVENT_JOB_MISSED:
            scheduled = getattr(event, "scheduled_run_time", None)
            log.warning("job.missed", job=event.job_id,
                        scheduled=scheduled.isoformat() if scheduled else None)
            self._record("job_missed", {"job": event.job_id,
                                        "scheduled": scheduled.isoformat() if scheduled
                                        else None})
            return
        if isinstance(event, JobExecutionEvent) and event.exception is not None:
            self._job_failed(event.job_id, event.exception, event.traceback)

    def _job_failed(self, job_id: str, exc: BaseException, trace: str | None) -> None:
        """Logged, recorded in the trail for the next email, and the daemon goes on."""
        message = _safe_text(exc)
        with self._status_lock:
            self._last[job_id] = "failed"
        log.error("job.error", job=job_id, error_type=type(exc).__name__, error=message,
                  traceback=trace)
        self._record("job_error", {"job": job_id, "error_type": type(exc).__name__,
                                   "error": message})

    def _record(self, action: str, detail: dict[str, Any]) -> None:
        try:
            trail.record(self.ledger, ACTOR, action, detail)
        except Exception as exc:  # noqa: BLE001 - the ledger may be what failed
            log.error("trail.failed", action=action, error=_safe_text(exc))

    # -- signals ---------------------------------------------------------------------------
    def request_stop(self, *_args: object) -> None:
        self.stopping.set()
        self._wake.set()

    def request_reload(self, *_args: object) -> None:
        self._reload_requested = True
        self._wake.set()

    def reload(self) -> bool:
        """Re-read the config file. A config that does not load (or that moves the ledger)
        is logged and the running one kept."""
        from daemon.config import ConfigError, load_settings

        loader = self._load or load_settings
        try:
            fresh = loader(self.config_path)
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("reload.rejected", problem=problem)
            self.notifier.status(f"reload rejected, running the previous config: "
                                 f"{exc.problems[0]}")
            return False
        if fresh.ledger.database_url != self.settings.ledger.database_url:
            log.error("reload.rejected", problem="ledger.url or ledger.state_dir changed: "
                                                 "restart the daemon to move the ledger")
            self.notifier.status("reload rejected: the ledger moved; restart to apply")
            return False
        self.notifier.reloading()
        logs.add_secrets(fresh.secret_values())
        if fresh.schedule.parallel_syncs != self.settings.schedule.parallel_syncs:
            self._sync_slots = threading.BoundedSemaphore(fresh.schedule.parallel_syncs)
        self.settings = fresh
        self.schedule()
        log.info("daemon.reloaded", sources=fresh.source_names)
        self.notifier.ready(self.idle_status())
        return True

    def healthy(self) -> bool:
        """For the watchdog: the scheduler runs and still dispatches jobs."""
        if not self._started.is_set():
            return True
        if not self.scheduler.running:
            return False
        allowed = 3 * (self._ping_every or 1.0) + 1.0
        return time.monotonic() - self._heartbeat < allowed

    # -- life ------------------------------------------------------------------------------
    def run_once(self) -> int:
        """One round without a scheduler: the startup round, then the outbox. Returns 1 when
        a job failed."""
        self._startup()
        if self.settings.smtp is not None and not self.stopping.is_set():
            self._isolated("outbox", self._outbox_job)
        self.locks.close()
        failed = sorted(job for job, said in self._last.items() if said.startswith("failed"))
        if failed:
            log.error("daemon.round_failed", jobs=failed)
        return 1 if failed else 0

    def serve(self) -> int:
        """Start, wait for signals, stop. Returns the exit status."""
        if self.stopping.is_set():
            log.info("daemon.stopped", detail="asked to stop before it was ready")
            self.locks.close()
            return 0
        self.schedule()
        self._start_round()
        watchdog = (Watchdog(self.notifier, self._ping_every, self.healthy)
                    if self._ping_every else None)
        self._heartbeat = time.monotonic()
        self.scheduler.start()
        if watchdog is not None:
            watchdog.start()
        try:
            while not self.stopping.is_set():
                self._wake.wait()
                self._wake.clear()
                if self._reload_requested and not self.stopping.is_set():
                    self._reload_requested = False
                    self.reload()
        finally:
            self.stopping.set()
            self.notifier.stopping()
            log.info("daemon.stopping")
            self.scheduler.shutdown(wait=True)
            if watchdog is not None:
                watchdog.stop()
            self.locks.close()
            log.info("daemon.stopped")
        return 0


class _ToStructlog(logging.Handler):
    """Library warnings (urllib3, APScheduler, …) as structlog lines, redacted like ours."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            structlog.get_logger(record.name).log(
                record.levelno, "library." + record.levelname.lower(),
                message=record.getMessage(),
                exception="".join(traceback.format_exception(*record.exc_info))
                if record.exc_info and record.exc_info[0] else None)
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


def _route_stdlib_logging() -> None:
    root = logging.getLogger()
    if not any(isinstance(h, _ToStructlog) for h in root.handlers):
        root.addHandler(_ToStructlog(logging.WARNING))
    # Job errors, misses and overlaps are logged (and recorded) by the daemon's listeners.
    logging.getLogger("apscheduler.executors").setLevel(logging.CRITICAL)
    logging.getLogger("apscheduler.scheduler").setLevel(logging.ERROR)


def _install_signals(daemon: Daemon) -> Callable[[], None]:
    def on_term(_signum: int, _frame: FrameType | None) -> None:
        daemon.request_stop()

    def on_hup(_signum: int, _frame: FrameType | None) -> None:
        daemon.request_reload()

    previous = {sig: signal.signal(sig, handler) for sig, handler in
                ((signal.SIGTERM, on_term), (signal.SIGINT, on_term),
                 (signal.SIGHUP, on_hup))}

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    return restore


def run_daemon(config_path: Path, settings: Settings, *, once: bool = False,
               stream: TextIO | None = None) -> int:
    """`privacy-ledger run`: everything before READY=1 that can fail raises StartupError (or
    the ledger's LedgerError) with one line for the operator. `once`: one round, then exit."""
    logs.configure(stream)
    logs.add_secrets(settings.secret_values())
    _route_stdlib_logging()
    stop_early = threading.Event()
    # A SIGTERM during the start (migrations can take a while) ends it cleanly.
    early = {sig: signal.signal(sig, lambda *_: stop_early.set())
             for sig in (signal.SIGTERM, signal.SIGINT)}
    lock = InstanceLock.for_url(settings.ledger.database_url)
    ledger: Ledger | None = None
    try:
        if lock is not None:
            lock.acquire()
        ledger = trail.open_ledger(settings.ledger)
        daemon = Daemon(config_path, settings, ledger)
        from daemon.sources import settle_heap

        settle_heap()
    except BaseException:
        if ledger is not None:
            ledger.close()
        if lock is not None:
            lock.release()
        for sig, handler in early.items():
            signal.signal(sig, handler)
        raise
    restore = _install_signals(daemon)
    if stop_early.is_set():
        daemon.request_stop()
    try:
        return daemon.run_once() if once else daemon.serve()
    finally:
        restore()
        daemon.notifier.close()
        ledger.close()
        if lock is not None:
            lock.release()
