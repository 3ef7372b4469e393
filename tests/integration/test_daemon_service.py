"""`privacy-ledger run` as systemd runs it: a subprocess whose $NOTIFY_SOCKET is a Unix
datagram socket bound by the test, against the sandbox twins (in this process) and a real
SMTP server (aiosmtpd on 127.0.0.1, STARTTLS and AUTH). Also `run --once` and `check`.

Every wait is bounded and every daemon left running is killed at the end.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from sqlalchemy import func, select

from daemon.config import load_settings
from daemon.ledger import AuditLogEntry, Holding, Ledger, Source, Subject, SyncRun
from daemon.sources import sync_configured
from sandbox.demo import RunningEstate
from sandbox.estate import EstateSpec
from sandbox.seed import build_estate
from tests.integration.hostile_servers import HangingServer
from vocabulary import utcnow

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
CANARY = "CANARY"
SMTP_USER = "privacy-ledger"
SMTP_PASSWORD = "CANARYsmtpPassw0rd"
OWNER = "owner@allmyink.example"
SENDER = "privacy-ledger@allmyink.example"


# --------------------------------------------------------------------------- the world


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_until(condition: Callable[[], object], timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")


@dataclass
class Mailbox:
    messages: list[bytes] = field(default_factory=list)
    logins: list[str] = field(default_factory=list)
    port: int = 0
    ca_file: Path = Path()

    async def handle_DATA(self, _server: object, _session: object, envelope: object) -> str:
        self.messages.append(envelope.content)  # type: ignore[attr-defined]
        return "250 Message accepted for delivery"

    def authenticate(self, _server: object, _session: object, _envelope: object,
                     _mechanism: str, data: object) -> AuthResult:
        ok = (isinstance(data, LoginPassword) and data.login == SMTP_USER.encode()
              and data.password == SMTP_PASSWORD.encode())
        if ok:
            self.logins.append(SMTP_USER)
        return AuthResult(success=ok)


@pytest.fixture(scope="module")
def smtp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mailbox]:
    """An SMTP server on 127.0.0.1 that requires STARTTLS and AUTH (a fresh self-signed
    certificate made by openssl) and keeps what it accepts."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is needed to make the SMTP server's certificate")
    directory = tmp_path_factory.mktemp("smtp")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    mailbox = Mailbox(port=free_port(), ca_file=cert)
    controller = Controller(mailbox, hostname="127.0.0.1", port=mailbox.port,
                            tls_context=context, require_starttls=True,
                            authenticator=mailbox.authenticate, auth_require_tls=True)
    controller.start()
    try:
        yield mailbox
    finally:
        controller.stop()


@pytest.fixture(scope="module")
def estate() -> Iterator[RunningEstate]:
    """The sandbox estate on loopback, every key a canary that must never leak."""
    built = build_estate(EstateSpec(people=60, now=utcnow().replace(microsecond=0)))
    for name, twin in built.shops.items():
        twin.consumer_key = f"ck_{CANARY}wooKey_{name}"
        twin.consumer_secret = f"cs_{CANARY}wooSecret_{name}"
    built.stripe.api_key = f"sk_test_{CANARY}stripeKey51"
    built.mailchimp.api_key = f"{CANARY}0mailchimp0key0123456789abcd-us6"
    with RunningEstate(built) as running:
        yield running


def write_config(running: RunningEstate, smtp: Mailbox, directory: Path, *,
                 ledger_url: str | None = None, schedule: str = "",
                 batch_size: int | None = None) -> Path:
    secrets = directory / "secrets"
    secrets.mkdir(parents=True, mode=0o700, exist_ok=True)
    password = secrets / "smtp-password"
    password.write_text(SMTP_PASSWORD + "\n")
    password.chmod(0o600)
    extra = (f'\n[report]\nrecipients = ["{OWNER}"]\nsender = "{SENDER}"\n'
             f'\n[smtp]\nhost = "127.0.0.1"\nport = {smtp.port}\nsecurity = "starttls"\n'
             f'username = "{SMTP_USER}"\npassword = "file:{password}"\n'
             f'tls_ca_file = "{smtp.ca_file}"\ntimeout = "10s"\n'
             f"\n[schedule]\n{schedule}")
    return running.write_config(directory, ledger_url=ledger_url, batch_size=batch_size,
                                extra=extra)


# ----------------------------------------------------------------------- the daemon side


class Notifications:
    """The systemd side of the notify protocol: a datagram socket in the abstract
    namespace, every line received kept with the moment it arrived."""

    def __init__(self) -> None:
        self.name = f"privacy-ledger-test-{uuid.uuid4().hex}"
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.socket.bind(b"\0" + self.name.encode())
        self.socket.settimeout(0.1)
        self.lines: list[tuple[float, str]] = []
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        return "@" + self.name

    def _receive(self) -> None:
        while not self._closed.is_set():
            try:
                data = self.socket.recv(4096)
            except (TimeoutError, OSError):
                continue
            moment = time.monotonic()
            with self._lock:
                self.lines.extend((moment, line) for line in data.decode().split("\n"))

    def seen(self, match: Callable[[str], bool]) -> list[tuple[float, str]]:
        with self._lock:
            return [(t, line) for t, line in self.lines if match(line)]

    def wait_for(self, match: Callable[[str], bool], timeout: float, what: str) -> float:
        found = wait_until(lambda: self.seen(match), timeout, what)
        assert isinstance(found, list)
        return float(found[0][0])

    def close(self) -> None:
        self._closed.set()
        self._thread.join(timeout=2)
        self.socket.close()


class Daemon:
    def __init__(self, config: Path, workdir: Path, label: str, args: tuple[str, ...],
                 env: dict[str, str]) -> None:
        self.out, self.err = workdir / f"{label}.out", workdir / f"{label}.err"
        program = Path(sys.executable).parent / "privacy-ledger"
        command = ([str(program)] if program.exists()
                   else [sys.executable, "-c", "from daemon.cli import main; main()"])
        clean = {k: v for k, v in os.environ.items()
                 if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID",
                              "CREDENTIALS_DIRECTORY", "PRIVACY_LEDGER_CONFIG")}
        with self.out.open("wb") as out, self.err.open("wb") as err:
            self.process = subprocess.Popen(
                [*command, "--config", str(config), *args], cwd=REPO, stdout=out,
                stderr=err, env={**clean, "PYTHONUNBUFFERED": "1", **env},
                start_new_session=True)

    @property
    def pid(self) -> int:
        return self.process.pid

    def stdout(self) -> str:
        return self.out.read_text(errors="replace")

    def stderr(self) -> str:
        return self.err.read_text(errors="replace")

    def wait(self, timeout: float) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running after {timeout:g}s; stderr: "
                                 f"{self.stderr()[-2000:]}") from None


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    started: list[Daemon] = []
    sockets: list[Notifications] = []

    def start(config: Path, *args: str, label: str = "daemon",
              notify: Notifications | None = None, env: dict[str, str] | None = None
              ) -> Daemon:
        extra = dict(env or {})
        if notify is not None:
            extra["NOTIFY_SOCKET"] = notify.address
            sockets.append(notify)
        daemon = Daemon(config, tmp_path, f"{label}-{len(started)}", args or ("run",), extra)
        started.append(daemon)
        return daemon

    try:
        yield start
    finally:
        for daemon in started:
            if daemon.process.poll() is None:
                daemon.process.kill()
                daemon.process.wait(10)
        for notify in sockets:
            notify.close()


def line(prefix: str) -> Callable[[str], bool]:
    return lambda text: text.startswith(prefix)


# ------------------------------------------------------------------------ ledger views


def runs(url: str, source: str | None = None, *, since: datetime | None = None,
         status: str | None = None, mode: str | None = None) -> list[SyncRun]:
    ledger = Ledger.open(url, migrate_schema=False)
    try:
        with ledger.sessions() as session:
            query = select(SyncRun).join(Source, Source.id == SyncRun.source_id)
            if source is not None:
                query = query.where(Source.name == source)
            if since is not None:
                query = query.where(SyncRun.started_at >= since)
            if status is not None:
                query = query.where(SyncRun.status == status)
            if mode is not None:
                query = query.where(SyncRun.mode == mode)
            return list(session.scalars(query.order_by(SyncRun.started_at)))
    finally:
        ledger.close()


def source_names(url: str) -> list[str]:
    ledger = Ledger.open(url, migrate_schema=False)
    try:
        with ledger.sessions() as session:
            return sorted(session.scalars(select(Source.name)))
    finally:
        ledger.close()


def trail_count(url: str, action: str) -> int:
    ledger = Ledger.open(url, migrate_schema=False)
    try:
        with ledger.sessions() as session:
            return session.scalar(select(func.count()).select_from(AuditLogEntry)
                                  .where(AuditLogEntry.action == action)) or 0
    finally:
        ledger.close()


def snapshot(url: str) -> set[tuple[object, ...]]:
    """Everything the ledger says is held, without the times of our own runs."""
    ledger = Ledger.open(url, migrate_schema=False)
    try:
        with ledger.sessions() as session:
            rows = session.execute(
                select(Source.name, Holding.record_type, Holding.external_id, Subject.email,
                       Holding.categories, Holding.status, Holding.anonymised,
                       Holding.parent_id, Holding.created_at, Holding.last_activity_at,
                       Holding.modified_at, Holding.gone_at.is_(None))
                .join(Source, Source.id == Holding.source_id)
                .outerjoin(Subject, Subject.id == Holding.subject_id)).all()
        return {tuple(row) for row in rows}
    finally:
        ledger.close()


def every_source_synced_since(url: str, moment: datetime, expected: list[str]) -> bool:
    done = {run_source for run_source in expected
            if runs(url, run_source, since=moment, status="success")}
    return done == set(expected)


def sqlite_url(directory: Path) -> str:
    return f"sqlite:///{directory / 'ledger.db'}"


# -------------------------------------------------------------------------------- tests


def test_daemon_notifies_systemd_syncs_emails_and_stops_cleanly_on_sigterm(
        estate: RunningEstate, smtp: Mailbox, tmp_path: Path,
        spawn: Callable[..., Daemon]) -> None:
    config = write_config(estate, smtp, tmp_path / "etc",
                          schedule='sync_interval = "3s"\nsync_jitter = "0s"\n'
                                   'outbox_interval = "2s"\n')
    url = sqlite_url(tmp_path / "etc")
    mail_before = len(smtp.messages)
    notify = Notifications()
    daemon = spawn(config, notify=notify, env={"WATCHDOG_USEC": "600000"})

    ready = notify.wait_for(line("READY=1"), 30, "READY=1")
    notify.wait_for(line("STATUS=syncing woo:"), 20, "a STATUS line while syncing")
    wait_until(lambda: len(smtp.messages) > mail_before, 30, "the nightly email")
    # The nightly job does not wait for the first round's syncs: their sources may come later.
    sources = wait_until(lambda: (found := source_names(url)) and len(found) >= 5 and found,
                         30, "every source in the ledger")
    assert isinstance(sources, list)
    wait_until(lambda: all(runs(url, s, mode="incremental", status="success")
                           for s in sources), 20, "an incremental sync of every source")
    wait_until(lambda: time.monotonic() > ready + 4, 10, "a watchdog window")

    pings = notify.seen(line("WATCHDOG=1"))
    in_window = [t for t, _ in pings if ready + 1 <= t < ready + 4]
    # WATCHDOG_USEC 0.6 s: a ping every 0.3 s, ten in three seconds.
    assert 6 <= len(in_window) <= 13, in_window
    assert daemon.process.poll() is None

    stop = time.monotonic()
    daemon.process.send_signal(signal.SIGTERM)
    assert daemon.wait(30) == 0
    assert [text for t, text in notify.seen(line("STOPPING=1")) if t >= stop] == ["STOPPING=1"]

    assert len(smtp.messages) == mail_before + 1
    email = smtp.messages[-1].decode(errors="replace")
    assert f"To: {OWNER}" in email and f"From: {SENDER}" in email
    assert SMTP_USER in smtp.logins

    logged = daemon.stdout()
    records = [json.loads(text) for text in logged.splitlines() if text.strip()]
    assert records and all("event" in record for record in records)
    job_lines = [r for r in records if str(r.get("job", "")).startswith(("sync:", "full:"))]
    assert job_lines and all("source" in r and "run_id" in r for r in job_lines)
    assert not [r for r in records if r.get("level") in ("error", "critical")], logged

    ledger_bytes = b"".join(p.read_bytes() for p in (tmp_path / "etc").glob("ledger.db*"))
    assert CANARY not in logged and CANARY not in daemon.stderr()
    assert CANARY.encode() not in ledger_bytes
    assert CANARY.encode() not in smtp.messages[-1]


def test_second_daemon_on_the_same_sqlite_ledger_refuses_to_start(
        tmp_path: Path, spawn: Callable[..., Daemon]) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'[ledger]\nstate_dir = "{tmp_path}"\n')
    first_notify, second_notify = Notifications(), Notifications()
    first = spawn(config, notify=first_notify)
    first_notify.wait_for(line("READY=1"), 30, "the first daemon's READY=1")

    second = spawn(config, notify=second_notify, label="second")
    assert second.wait(30) == 1
    assert second.stderr().strip() == (
        f"cannot start: another privacy-ledger daemon is running on {tmp_path}/ledger.db "
        f"(pid {first.pid}); stop it first, or use PostgreSQL to run several")
    assert second_notify.seen(line("READY=1")) == []
    assert first.process.poll() is None
    first.process.send_signal(signal.SIGTERM)
    assert first.wait(30) == 0


def test_daemon_exits_before_ready_with_one_clear_line_on_bad_input(
        tmp_path: Path, spawn: Callable[..., Daemon]) -> None:
    state = f'[ledger]\nstate_dir = "{tmp_path}"\n'
    cases = {
        "missing config": (None, "no such config file"),
        "config not TOML": ("[ledger\n", "not valid TOML"),
        "missing credential file": (state + '[stripe]\napi_key = "file:/nonexistent/key"\n',
                                    "stripe.api_key: secret file:/nonexistent/key: "
                                    "/nonexistent/key does not exist"),
        "credential outside systemd": (state + '[stripe]\napi_key = "credential:stripe-key"\n',
                                       "$CREDENTIALS_DIRECTORY is not set"),
        "bad timezone": ('timezone = "Europe/Lundon"\n' + state,
                         "timezone: 'Europe/Lundon' is not a time zone"),
        "bad schedule": (state + '[schedule]\naudit_at = "6 o\'clock"\n',
                         "schedule.audit_at: \"6 o'clock\" is not a time of day"),
        "unreachable ledger": ('[ledger]\nurl = "postgresql+psycopg://nobody@127.0.0.1:'
                               f'{free_port()}/ledger"\n',
                               "ledger error: cannot open the ledger at postgresql"),
    }
    started = {}
    for index, (name, (text, _)) in enumerate(cases.items()):
        path = tmp_path / f"case-{index}.toml"
        if text is not None:
            path.write_text(text)
        notify = Notifications()
        started[name] = (spawn(path, notify=notify, label=f"bad-{index}"), notify)
    for name, (daemon, notify) in started.items():
        code = daemon.wait(60)
        said = [text for text in daemon.stderr().splitlines() if text.strip()]
        assert code != 0, name
        assert len(said) == 1 and cases[name][1] in said[0], (name, said)
        assert "Traceback" not in daemon.stderr() + daemon.stdout(), name
        assert notify.seen(line("READY=1")) == [], name


def test_daemon_killed_mid_sync_leaves_a_ledger_that_the_next_run_completes(
        estate: RunningEstate, smtp: Mailbox, tmp_path: Path,
        spawn: Callable[..., Daemon]) -> None:
    # Small batches, so that the kill lands between two of them inside a source.
    config = write_config(estate, smtp, tmp_path / "etc", schedule='sync_interval = "1h"\n',
                          batch_size=20)
    url = sqlite_url(tmp_path / "etc")
    twins = [server.twin for server in estate.servers.values()]
    for twin in twins:
        twin.faults.latency = 0.1
    try:
        notify = Notifications()
        first = spawn(config, notify=notify, label="killed")
        notify.wait_for(lambda text: text.startswith("STATUS=syncing woo:allmyink: ")
                        and not text.endswith(": 0 records"), 60, "a committed batch")
        first.process.kill()
        assert first.wait(10) == -signal.SIGKILL
    finally:
        for twin in twins:
            twin.faults.latency = 0.0
    cut = runs(url)
    assert [run.status for run in cut][-1] == "running", "the kill did not land mid-sync"

    restarted = utcnow()
    second = spawn(config, notify=Notifications(), label="restarted")
    truth_dir = tmp_path / "truth"
    truth_settings = load_settings(estate.write_config(truth_dir))
    truth_ledger = Ledger.open(truth_settings.ledger.database_url)
    try:
        assert all(r.ok for r in sync_configured(truth_ledger, truth_settings, full=True))
    finally:
        truth_ledger.close()
    expected = source_names(sqlite_url(truth_dir))
    wait_until(lambda: every_source_synced_since(url, restarted, expected), 60,
               "a successful run of every source after the restart")
    second.process.send_signal(signal.SIGTERM)
    assert second.wait(30) == 0
    assert runs(url, status="running") == []
    assert snapshot(url) == snapshot(sqlite_url(truth_dir))


def test_sigterm_mid_sync_commits_the_batch_and_exits_0(
        estate: RunningEstate, smtp: Mailbox, tmp_path: Path,
        spawn: Callable[..., Daemon]) -> None:
    # Small batches, so that a stop lands between two of them inside the first source.
    config = write_config(estate, smtp, tmp_path / "etc", schedule='sync_interval = "1h"\n',
                          batch_size=20)
    url = sqlite_url(tmp_path / "etc")
    twins = [server.twin for server in estate.servers.values()]
    for twin in twins:
        twin.faults.latency = 0.1
    try:
        notify = Notifications()
        daemon = spawn(config, notify=notify)
        notify.wait_for(lambda text: text.startswith("STATUS=syncing woo:allmyink: ")
                        and not text.endswith(": 0 records"), 60, "a committed batch")
        daemon.process.send_signal(signal.SIGTERM)
        assert daemon.wait(20) == 0
    finally:
        for twin in twins:
            twin.faults.latency = 0.0
    assert notify.seen(line("STOPPING=1"))
    last = runs(url)[-1]
    assert (last.status, last.error) == ("stopped", "stopped")
    assert last.records_seen > 0 and last.finished_at is not None
    assert "sync.stopped" in daemon.stdout()


def test_sigterm_while_waiting_out_a_rate_limit_ends_the_sync_at_once(
        estate: RunningEstate, smtp: Mailbox, tmp_path: Path,
        spawn: Callable[..., Daemon]) -> None:
    config = write_config(estate, smtp, tmp_path / "etc", schedule='sync_interval = "1h"\n')
    url = sqlite_url(tmp_path / "etc")
    twins = [server.twin for server in estate.servers.values()]
    # Every upstream asks to be left alone for 100 s: each sync waits out a Retry-After.
    for twin in twins:
        twin.faults.inject("status", times=10_000, status=429, retry_after="100", lasting=60)
    try:
        daemon = spawn(config)
        wait_until(lambda: "upstream.retry" in daemon.stdout(), 60, "a sync waiting out 429")
        asked = time.monotonic()
        daemon.process.send_signal(signal.SIGTERM)
        assert daemon.wait(30) == 0
        stopped_after = time.monotonic() - asked
    finally:
        for twin in twins:
            twin.faults.clear()
    assert stopped_after < 15, f"took {stopped_after:.1f}s: the Retry-After was waited out"
    ended = runs(url)
    assert ended and all(r.finished_at is not None for r in ended)
    assert ("stopped", "stopped") in {(r.status, r.error) for r in ended}
    assert "sync.stopped" in daemon.stdout()


def test_two_daemons_on_postgresql_sync_once_per_tick_and_survive_one_dying(
        estate: RunningEstate, smtp: Mailbox, tmp_path: Path, pg_url: str,
        spawn: Callable[..., Daemon]) -> None:
    interval = 2.0
    config = write_config(estate, smtp, tmp_path / "etc", ledger_url=pg_url,
                          schedule=f'sync_interval = "{int(interval)}s"\nsync_jitter = "0s"\n')
    mail_before = len(smtp.messages)
    notes = [Notifications(), Notifications()]
    first = spawn(config, notify=notes[0], label="first")
    second = spawn(config, notify=notes[1], label="second")
    for note in notes:
        note.wait_for(line("READY=1"), 30, "READY=1 from both daemons")
    wait_until(lambda: len(smtp.messages) > mail_before, 30, "the nightly email")
    sources = source_names(pg_url)
    audience = next(name for name in sources if name.startswith("mailchimp:"))
    wait_until(lambda: all(runs(pg_url, s, status="success") for s in sources), 30,
               "the first round")

    lists = estate.servers["mailchimp"].twin
    listed_before = lists.requests["GET /3.0/lists"]
    window_start = utcnow()
    time.sleep(3 * interval)
    window_end = utcnow()
    listed = lists.requests["GET /3.0/lists"] - listed_before
    # Each mailchimp sync lists the audiences once: the upstream sees one sync per tick.
    assert 2 <= listed <= 4, listed
    for name in sources:
        starts = [r.started_at for r in runs(pg_url, name, since=window_start)
                  if r.started_at <= window_end]
        assert 2 <= len(starts) <= 4, (name, starts)
        gaps = [(b - a).total_seconds() for a, b in zip(starts, starts[1:], strict=False)]
        assert all(gap >= interval / 2 for gap in gaps), (name, gaps)

    first.process.kill()
    assert first.wait(10) == -signal.SIGKILL
    killed = utcnow()
    wait_until(lambda: all(runs(pg_url, name, since=killed) for name in sources),
               4 * interval + 5, "the surviving daemon syncing every source")
    assert second.process.poll() is None
    audience_runs = runs(pg_url, audience, since=killed)
    assert all(r.status in ("success", "running") for r in audience_runs)

    second.process.send_signal(signal.SIGTERM)
    assert second.wait(30) == 0
    assert len(smtp.messages) == mail_before + 1
    assert trail_count(pg_url, "nightly") == 1


def test_sighup_reloads_the_config_and_a_broken_one_is_refused(
        tmp_path: Path, spawn: Callable[..., Daemon]) -> None:
    config = tmp_path / "config.toml"
    base = f'[ledger]\nstate_dir = "{tmp_path}"\n'
    config.write_text(base)
    notify = Notifications()
    daemon = spawn(config, notify=notify)
    notify.wait_for(line("READY=1"), 30, "READY=1")

    config.write_text(base + '[schedule]\naudit_at = "07:30"\n')
    reload_at = time.monotonic()
    daemon.process.send_signal(signal.SIGHUP)
    notify.wait_for(lambda text: text == "RELOADING=1", 10, "RELOADING=1")
    wait_until(lambda: [t for t, _ in notify.seen(line("READY=1")) if t > reload_at], 10,
               "READY=1 after the reload")
    assert [t for t, text in notify.seen(lambda text: "next audit" in text and "07:30" in text)
            if t > reload_at]

    config.write_text('timezone = "Mars/Olympus"\n' + base)
    daemon.process.send_signal(signal.SIGHUP)
    notify.wait_for(line("STATUS=reload rejected"), 10, "the rejected reload")
    assert daemon.process.poll() is None
    daemon.process.send_signal(signal.SIGTERM)
    assert daemon.wait(30) == 0
    assert "Mars/Olympus" in daemon.stdout()


def test_run_once_syncs_audits_and_emails_then_a_second_round_sends_nothing(
        estate: RunningEstate, smtp: Mailbox, tmp_path: Path,
        spawn: Callable[..., Daemon]) -> None:
    config = write_config(estate, smtp, tmp_path / "etc")
    url = sqlite_url(tmp_path / "etc")
    mail_before = len(smtp.messages)
    first = spawn(config, "run", "--once", label="once")
    assert first.wait(60) == 0, first.stderr()
    assert len(smtp.messages) == mail_before + 1
    synced = runs(url, status="success")
    assert {run.mode for run in synced} == {"full"} and len(synced) >= 5

    again = spawn(config, "run", "--once", label="again")
    assert again.wait(60) == 0, again.stderr()
    assert len(smtp.messages) == mail_before + 1
    assert len(runs(url)) == len(synced)
    assert trail_count(url, "nightly") == 1


def test_check_prints_ok_for_every_source_and_the_mail_server(
        estate: RunningEstate, smtp: Mailbox, tmp_path: Path,
        spawn: Callable[..., Daemon]) -> None:
    good = write_config(estate, smtp, tmp_path / "good")
    bad = write_config(estate, smtp, tmp_path / "bad")
    (tmp_path / "bad" / "secrets" / "stripe-key").write_text("sk_test_wrong\n")
    bad.write_text(bad.read_text().replace(f"port = {smtp.port}", f"port = {free_port()}"))
    checks = [spawn(good, "check", label="check-good"), spawn(bad, "check", label="check-bad")]
    codes = [check.wait(60) for check in checks]
    rows = [{row.split()[0]: row for row in check.stdout().splitlines()[1:]}
            for check in checks]

    assert codes[0] == 0, checks[0].stdout() + checks[0].stderr()
    audiences = {name for name in rows[0] if name.startswith("mailchimp:")}
    assert set(rows[0]) - audiences == {"config", "ledger", "woo:allmyink", "woo:papercraft",
                                        "stripe", "mailchimp", "smtp", "policy"}
    # Each audience is read as a sync will read it.
    assert audiences == set(estate.estate.mailchimp.sources())
    assert all(row.split()[1] == "OK" for row in rows[0].values()), rows[0]
    assert "orders" in rows[0]["woo:allmyink"] and "audiences" in rows[0]["mailchimp"]
    assert "STARTTLS, logged in as privacy-ledger (nothing sent)" in rows[0]["smtp"]

    assert codes[1] == 1
    assert rows[1]["stripe"].split()[1] == "FAIL" and "401" in rows[1]["stripe"]
    assert rows[1]["smtp"].split()[1] == "FAIL" and "cannot connect" in rows[1]["smtp"]
    assert rows[1]["woo:allmyink"].split()[1] == "OK"
    for check in checks:
        assert CANARY not in check.stdout() + check.stderr()
    assert len(smtp.logins) >= 1


# ------------------------------------------------------------------- nothing hangs


HUNG_ENV = {"HUNG_KEY": "ck_hung_shop_key"}


def add_hung_shop(config: Path, url: str) -> Path:
    """A shop at a server that never answers, with a per-request timeout long enough that
    only the run's own time limit (or a stop) can end its sync."""
    with config.open("a", encoding="utf-8") as out:
        out.write(f'\n[[woocommerce]]\nname = "hung"\nurl = "{url}"\n'
                  'consumer_key = "env:HUNG_KEY"\nconsumer_secret = "env:HUNG_KEY"\n'
                  'timeout = "10min"\n')
    return config


def test_a_hung_source_holds_up_neither_the_nightly_email_nor_sigterm(
        estate: RunningEstate, smtp: Mailbox, tmp_path: Path,
        spawn: Callable[..., Daemon]) -> None:
    with HangingServer() as hung:
        config = add_hung_shop(write_config(estate, smtp, tmp_path / "etc",
                                            schedule='sync_interval = "1h"\n'
                                                     'source_timeout = "1h"\n'), hung.url)
        url = sqlite_url(tmp_path / "etc")
        mail_before = len(smtp.messages)
        notify = Notifications()
        daemon = spawn(config, notify=notify, env=HUNG_ENV)
        notify.wait_for(line("READY=1"), 30, "READY=1")
        wait_until(lambda: len(smtp.messages) > mail_before, 30,
                   "the nightly email while a source hangs")
        wait_until(lambda: len(source_names(url)) >= 6 and all(
            runs(url, s, status="success") for s in source_names(url) if s != "woo:hung"),
            60, "every other source synced while one hangs")
        assert [r.status for r in runs(url, "woo:hung")] == ["running"]
        assert hung.accepted >= 1 and daemon.process.poll() is None

        stop = time.monotonic()
        daemon.process.send_signal(signal.SIGTERM)
        assert daemon.wait(30) == 0
    assert [text for t, text in notify.seen(line("STOPPING=1")) if t >= stop] == ["STOPPING=1"]
    assert runs(url, status="running") == []
    assert [(r.status, r.error) for r in runs(url, "woo:hung")] == [("failed", "stopped")]
    assert "sync.left_behind" in daemon.stdout()
    assert len(smtp.messages) == mail_before + 1


def test_run_once_ends_a_trickling_source_at_its_time_limit_and_still_emails(
        estate: RunningEstate, smtp: Mailbox, tmp_path: Path,
        spawn: Callable[..., Daemon]) -> None:
    # One byte every half second: no read timeout ever fires, only the run's limit.
    with HangingServer(trickle=0.5) as hung:
        config = add_hung_shop(write_config(estate, smtp, tmp_path / "etc",
                                            schedule='source_timeout = "15s"\n'), hung.url)
        url = sqlite_url(tmp_path / "etc")
        mail_before = len(smtp.messages)
        once = spawn(config, "run", "--once", label="once", env=HUNG_ENV)
        assert once.wait(120) == 1, once.stderr()
    assert len(smtp.messages) == mail_before + 1
    [cut] = runs(url, "woo:hung")
    assert (cut.status, cut.finished_at is not None) == ("failed", True)
    assert cut.error.startswith(
        "timed out: the sync ran longer than schedule.source_timeout (15s) and was stopped")
    others = [r for r in runs(url) if r.source_id != cut.source_id]
    assert len(others) >= 5 and all(r.status == "success" for r in others)
    assert trail_count(url, "nightly") == 1


# --------------------------------------------------------------- one sync at a time


def sync_config(directory: Path, ledger_url: str, hung_url: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    Ledger.open(ledger_url).close()
    config = directory / "sync.toml"
    config.write_text(f'[ledger]\nurl = "{ledger_url}"\n\n[schedule]\n'
                      'source_timeout = "1h"\n', encoding="utf-8")
    return add_hung_shop(config, hung_url)


def said(daemon: Daemon, prefix: str) -> list[str]:
    """The lines a command printed for people (its log lines are JSON)."""
    return [text for text in daemon.stderr().splitlines() if text.startswith(prefix)]


def test_a_second_sync_of_a_source_being_synced_exits_naming_the_first(
        tmp_path: Path, ledger_url: str, spawn: Callable[..., Daemon]) -> None:
    with HangingServer() as hung:
        config = sync_config(tmp_path / "etc", ledger_url, hung.url)
        first = spawn(config, "sync", label="first", env=HUNG_ENV)
        wait_until(lambda: runs(ledger_url, "woo:hung", status="running"), 30,
                   "the first sync under way")
        second = spawn(config, "sync", "--source", "hung", label="second", env=HUNG_ENV)
        assert second.wait(30) == 1, second.stderr()
        [message] = said(second, "woo:hung:")
        assert re.fullmatch(
            rf"woo:hung: not synced — woo:hung is already being synced \(by pid {first.pid} "
            rf"on {re.escape(socket.gethostname())} since \d{{4}}-\d\d-\d\d "
            r"\d\d:\d\d:\d\d UTC\); this sync of it did not start: wait for that one to "
            r"finish", message), message
        # The first is untouched: still running, not marked as interrupted.
        assert [(r.status, r.error) for r in runs(ledger_url, "woo:hung")] == [
            ("running", None)]
        assert first.process.poll() is None
        first.process.kill()
        first.wait(10)


def test_sync_into_a_read_only_directory_names_the_path_and_the_permission(
        tmp_path: Path) -> None:
    base = Path(tempfile.mkdtemp(prefix="pl-readonly-"))
    try:
        base.chmod(0o755)
        state = base / "state"
        state.mkdir()
        config = base / "config.toml"
        config.write_text(f'[ledger]\nstate_dir = "{state}"\n', encoding="utf-8")
        config.chmod(0o644)
        program = [str(Path(sys.executable).parent / "privacy-ledger"), "--config", str(config),
                   "sync"]
        made = subprocess.run(program, capture_output=True, text=True, timeout=60, cwd=REPO)
        assert made.returncode == 0, made.stderr
        (state / "ledger.db").chmod(0o644)
        state.chmod(0o555)
        # root writes anywhere: the refused user is then nobody.
        as_nobody = os.geteuid() == 0
        if as_nobody:
            setpriv = shutil.which("setpriv")
            if setpriv is None:
                pytest.skip("running as root, and setpriv is needed to run as another user")
            program = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", *program]
            # A checkout under a directory only root may enter (mktemp -d makes it 0700):
            # nobody cannot run the program at all, which is not what this test is about.
            probe = subprocess.run([setpriv, "--reuid=65534", "--regid=65534",
                                    "--clear-groups", program[4], "--version"],
                                   capture_output=True, text=True, timeout=60, cwd="/")
            if probe.returncode != 0:
                pytest.skip(f"running as root, and user 65534 cannot run {program[4]} "
                            "(a parent directory is closed to it): clone into a directory "
                            "others may enter to run this test")
        refused = subprocess.run(program, capture_output=True, text=True, timeout=60, cwd=REPO)
        uid = 65534 if as_nobody else os.geteuid()
    finally:
        state.chmod(0o755)
        shutil.rmtree(base)
    assert refused.returncode == 1
    assert refused.stderr.splitlines()[-1] == (
        f"ledger error: the ledger's directory {state} is not writable by this user "
        f"(uid {uid}): a sync needs write permission on {state} (SQLite writes its journal "
        "and lock files beside the ledger); run as the ledger's owner or grant it, e.g. "
        "chmod u+w")


def test_sigterm_during_run_once_with_a_hung_source_exits_at_once(
        estate: RunningEstate, smtp: Mailbox, tmp_path: Path,
        spawn: Callable[..., Daemon]) -> None:
    with HangingServer() as hung:
        config = add_hung_shop(write_config(estate, smtp, tmp_path / "etc",
                                            schedule='source_timeout = "1h"\n'), hung.url)
        url = sqlite_url(tmp_path / "etc")
        Ledger.open(url).close()
        once = spawn(config, "run", "--once", label="once", env=HUNG_ENV)
        wait_until(lambda: runs(url, "woo:hung", status="running"), 60,
                   "the hung shop's sync under way")
        once.process.send_signal(signal.SIGTERM)
        assert once.wait(30) == 0
    assert runs(url, status="running") == []
    assert [(r.status, r.error) for r in runs(url, "woo:hung")] == [("failed", "stopped")]
