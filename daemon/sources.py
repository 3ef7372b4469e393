"""The configured sources: each configured unit of each system in connectors/registry.py
opened, and its sources synced into the ledger, one sync of a source at a time."""

from __future__ import annotations

import contextlib
import contextvars
import errno
import fcntl
import gc
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.pool import NullPool

from connectors.base import Connector, StopWaiting
from connectors.http import APIError
from daemon import shopstate
from daemon.config import Settings
from daemon.ledger import Ledger, LedgerError
from daemon.sync import (
    STOPPED,
    ProgressCallback,
    StopCheck,
    SyncResult,
    end_runs,
    live_sources,
    record_failure,
    retire_placeholders,
    retire_sources,
    sync_source,
)
from vocabulary import utcnow

log = structlog.get_logger("daemon.sources")

# A source that another sync (another process, or a thread of this one) is syncing.
BUSY = "busy"
# A sync asked to stop (its time limit, a SIGTERM) gets this long to end between batches
# before it is left behind; a thread blocked on an upstream cannot be interrupted.
STOP_GRACE = 5.0
# How often a waiting sync looks at its time limit and the stop flag.
_POLL = 0.2

class UnknownSourceError(Exception):
    pass


def select_names(settings: Settings, only: str | None) -> list[str]:
    """The configured source names to run; `only` may be a full name (woo:allmyink), a shop
    or site name (allmyink) or a system (stripe, mailchimp, woocommerce, wordpress)."""
    units = [unit for _, _, unit in settings.units()]
    names = [unit.name for unit in units]
    if only is None:
        return names
    wanted = [u.name for u in units
              if only in (u.name, u.name.split(":", 1)[-1], u.name.split(":", 1)[0], u.kind)]
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
    # The longest sources first (Stripe's cursor lists and read rate): they must not wait
    # for a free worker.
    first = {unit.name for _, _, unit in settings.units() if unit.first}
    started = sorted(names, key=lambda name: name not in first)
    with ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="sync") as pool:
        # Each thread runs in a copy of the caller's context (log bindings).
        futures = {name: pool.submit(contextvars.copy_context().run, run, name)
                   for name in started}
        return [result for name in names for result in futures[name].result()]


# ------------------------------------------------------------------- one sync at a time


class SourceBusyError(Exception):
    """Another sync holds this source; the message names it (pid, host, since when)."""


def _ledger_file(url: str) -> Path | None:
    parsed = make_url(url)
    if not parsed.drivername.startswith("sqlite"):
        return None
    database = parsed.database
    if not database or database == ":memory:":
        return None
    return Path(database).resolve()


def require_writable(url: str) -> None:
    """A SQLite ledger a sync can write: its directory (journal, WAL and lock files live
    beside it) and the file itself. Raises LedgerError naming the path and the permission."""
    ledger_file = _ledger_file(url)
    if ledger_file is None:
        return
    directory = ledger_file.parent
    user = f"uid {os.geteuid()}"
    if directory.is_dir() and not os.access(directory, os.W_OK | os.X_OK):
        raise LedgerError(
            f"the ledger's directory {directory} is not writable by this user ({user}): a "
            f"sync needs write permission on {directory} (SQLite writes its journal and lock "
            "files beside the ledger); run as the ledger's owner or grant it, e.g. chmod u+w")
    if ledger_file.exists() and not os.access(ledger_file, os.R_OK | os.W_OK):
        raise LedgerError(
            f"the ledger {ledger_file} is not writable by this user ({user}): a sync needs "
            "read and write permission on it; run as the ledger's owner or grant it")


def _since_text(moment: datetime) -> str:
    return f"{moment.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"


def _busy_message(name: str, holder: str) -> str:
    return (f"{name} is already being synced ({holder}); this sync of it did not start: wait "
            "for that one to finish")


class RunLock:
    """One sync of a configured source at a time, across processes and threads. SQLite: an
    exclusive flock on `<ledger>.sync-<source>.lock` beside the ledger, which the kernel
    drops when its holder dies, even by kill -9 (a row with pid+host would need a liveness
    check that cannot see other hosts). PostgreSQL: an advisory lock on a connection of its
    own, whose application_name says who holds it."""

    def __init__(self, ledger: Ledger, name: str) -> None:
        self.ledger = ledger
        self.name = name
        self._fd: int | None = None
        self._connection: Connection | None = None
        self._engine: Any = None

    def __enter__(self) -> RunLock:
        ledger_file = _ledger_file(str(self.ledger.engine.url))
        if ledger_file is not None:
            self._lock_file(ledger_file)
        elif self.ledger.dialect == "postgresql":
            self._lock_advisory()
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
        if self._connection is not None:
            with contextlib.suppress(Exception):
                self._connection.close()
            self._connection = None
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    def _lock_file(self, ledger_file: Path) -> None:
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", self.name)
        path = ledger_file.with_name(f"{ledger_file.name}.sync-{safe}.lock")
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise LedgerError(
                    f"cannot create the lock file {path}: {exc.strerror}; a sync needs write "
                    f"permission on {path.parent} (the ledger's directory)") from None
            raise
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            said = os.pread(fd, 200, 0).decode(errors="replace").strip()
            os.close(fd)
            raise SourceBusyError(_busy_message(self.name, said or "by another process")) \
                from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"by pid {os.getpid()} on {socket.gethostname()} since "
                      f"{_since_text(utcnow())}\n".encode(), 0)
        self._fd = fd

    def _lock_advisory(self) -> None:
        from daemon.service import lock_key

        label = f"privacy-ledger sync pid={os.getpid()} host={socket.gethostname()}"[:63]
        self._engine = create_engine(self.ledger.engine.url, poolclass=NullPool,
                                     connect_args={"application_name": label})
        connection = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        namespace = str(connection.execute(
            text("SELECT current_database() || '.' || current_schema()")).scalar())
        key = lock_key(namespace, f"run:{self.name}")
        if connection.execute(text("SELECT pg_try_advisory_lock(:key)"),
                              {"key": key}).scalar():
            self._connection = connection
            return
        unsigned = key & 0xFFFF_FFFF_FFFF_FFFF
        holder = connection.execute(text(
            "SELECT a.application_name, a.backend_start FROM pg_locks l "
            "JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.granted AND l.classid = :high "
            "AND l.objid = :low AND l.objsubid = 1 "
            "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"),
            {"high": unsigned >> 32, "low": unsigned & 0xFFFF_FFFF}).first()
        connection.close()
        self._engine.dispose()
        self._engine = None
        said = "by another process"
        if holder is not None:
            found = re.search(r"pid=(\d+) host=(\S+)", holder[0] or "")
            who = f"pid {found.group(1)} on {found.group(2)}" if found else "another process"
            said = f"by {who} since {_since_text(holder[1])}" if holder[1] else f"by {who}"
        raise SourceBusyError(_busy_message(self.name, said))


# ---------------------------------------------------------------------- one source's sync


def _limit_text(seconds: float) -> str:
    for unit, size in (("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def _sync_one(ledger: Ledger, settings: Settings, name: str, *, full: bool,
              progress: ProgressCallback | None, should_stop: StopCheck | None,
              sleep: Callable[[float], None] = time.sleep) -> list[SyncResult]:
    """One configured source, one sync of it at a time (RunLock), within its time limit
    (schedule.source_timeout). The sync runs in a thread of its own: past the limit, or
    when asked to stop, it is told to stop (between batches, and in any wait on the
    upstream); one still blocked on its upstream after STOP_GRACE is left behind, its runs
    ended as failed here, and it keeps the source's lock until it ends."""
    limit = settings.schedule.source_timeout.total_seconds()
    started = utcnow()
    told = threading.Event()
    outcome: list[list[SyncResult] | BaseException] = []

    def stop() -> bool:
        return told.is_set() or (should_stop is not None and should_stop())

    def pause(seconds: float) -> None:
        # The caller's sleep (which may itself end on a stop), in slices so a stop counts.
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if told.is_set():
                raise StopWaiting
            sleep(min(left, 1.0))
        if told.is_set():
            raise StopWaiting

    def work() -> None:
        try:
            with RunLock(ledger, name):
                outcome.append(_sync_now(ledger, settings, name, full=full,
                                         progress=progress, should_stop=stop, sleep=pause))
        except SourceBusyError as exc:
            outcome.append([SyncResult(name, 0, "full" if full else "incremental", BUSY,
                                       0, 0, 0, 0, str(exc))])
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            outcome.append(exc)

    thread = threading.Thread(target=contextvars.copy_context().run, args=(work,),
                              name=f"sync {name}", daemon=True)
    thread.start()
    reason: str | None = None
    give_up = 0.0
    deadline = time.monotonic() + limit
    while True:
        try:
            thread.join(_POLL)
        except KeyboardInterrupt:
            # Ctrl-C: the sync ends as a stop would, then the interrupt goes on.
            told.set()
            thread.join(STOP_GRACE)
            end_runs(ledger, name, started, STOPPED)
            raise
        if not thread.is_alive():
            break
        now = time.monotonic()
        if reason is None:
            if should_stop is not None and should_stop():
                reason = STOPPED
            elif now >= deadline:
                reason = (f"timed out: the sync ran longer than schedule.source_timeout "
                          f"({_limit_text(limit)}) and was stopped; the next run resumes from "
                          "its last committed batch")
                log.warning("sync.timeout", source=name, limit_s=limit)
            if reason is not None:
                told.set()
                give_up = now + STOP_GRACE
        elif now >= give_up:
            break
    if thread.is_alive():
        assert reason is not None  # noqa: S101 - the loop leaves early only after a stop
        ended = end_runs(ledger, name, started, reason)
        log.warning("sync.left_behind", source=name, runs=ended,
                    detail="still waiting on its upstream; its runs are ended as failed")
        return [SyncResult(name, run_id, "full" if full else "incremental", "failed",
                           0, 0, 0, 0, reason) for run_id in ended] or [
            SyncResult(name, 0, "full" if full else "incremental", "failed", 0, 0, 0, 0,
                       reason)]
    result = outcome[0]
    if isinstance(result, BaseException):
        raise result
    if reason is not None and reason != STOPPED:
        # Runs that stopped between batches because of the limit say so, not just "stopped".
        ended = set(end_runs(ledger, name, started, reason))
        result = [replace(r, error=reason) if r.run_id in ended else r for r in result]
    return result


def _sync_now(ledger: Ledger, settings: Settings, name: str, *, full: bool,
              progress: ProgressCallback | None, should_stop: StopCheck | None,
              sleep: Callable[[float], None] = time.sleep) -> list[SyncResult]:
    """One configured unit: every source it opens synced; every configured one it cannot
    read a failed run with the reason (a refused key fails every source the ledger knows of
    it)."""
    system, unit = next(((system, unit) for system, _, unit in settings.units()
                         if unit.name == name), (None, None))
    if system is None or unit is None:
        return []

    def failed(error: str) -> list[SyncResult]:
        names = unit.failed_sources(lambda prefix: live_sources(ledger, prefix))
        return [record_failure(ledger, source, unit.kind, error, full=full) for source in names]

    try:
        opening = unit.open(sleep=sleep)
    except ValueError as exc:
        # Settings the connector refuses: the source is still configured, and its run failed.
        return failed(f"cannot connect: {exc}")
    except StopWaiting:
        return []
    except APIError as exc:
        return failed(exc.message)
    try:
        if opening.read_for_real:
            retire_placeholders(ledger, list(opening.read_for_real))
        results = [record_failure(ledger, source, unit.kind, reason, full=full)
                   for source, reason in opening.unreadable]
        for connector in opening.connectors:
            if should_stop is not None and should_stop():
                continue
            result = sync_source(ledger, connector, full=full, progress=progress,
                                 should_stop=should_stop, batch_size=settings.ledger.batch_size)
            results.append(result)
            if result.ok and system.read_site_state is not None and settings.policy is not None:
                # What the shop runs and how it cleans up, for the promise rules of [policy].
                shopstate.refresh(ledger, connector, system.read_site_state)
        if opening.listed_all and unit.family:
            retire_sources(ledger, unit.family, [c.source for c in opening.connectors])
        return results
    finally:
        opening.close()
