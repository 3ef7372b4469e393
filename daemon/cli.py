"""The command line: a thin click layer that parses, calls the library and prints."""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click

from connectors.base import Progress
from daemon import logs
from daemon.config import (
    ConfigError,
    ReadSecrets,
    Settings,
    UnreadSecret,
    load_settings,
    unread_references,
)
from daemon.ledger import Ledger, LedgerError

DEFAULT_CONFIG = Path("/etc/privacy-ledger/config.toml")
# Where the README keeps the files the unit's LoadCredential= lines load.
CREDENTIALS = Path("/etc/privacy-ledger/credentials")


class SecretsUnreadable(ConfigError):
    """Secrets a command uses that cannot be read here, and how to run it where they can."""

    def __init__(self, problems: list[str], hint: list[str]) -> None:
        super().__init__(problems)
        self.hint = hint


class App:
    """What every command shares: the config path, loaded once on first use. The whole file
    is validated for every command; secrets are read only by the commands that use them."""

    def __init__(self, config_path: Path) -> None:
        self.config_path = config_path
        self._settings: Settings | None = None
        self._with_secrets: Settings | None = None

    @property
    def settings(self) -> Settings:
        """The config, validated whole; its secret references checked, not read."""
        if self._settings is None:
            self._settings = load_settings(self.config_path, read_secrets="none")
        return self._settings

    @property
    def settings_with_secrets(self) -> Settings:
        """The config with every secret read: for sync, run, check, export, erase, fix --apply and
        report --send."""
        if self._with_secrets is None:
            self._with_secrets = self._read_secrets("all", unread_references(self.settings))
        return self._with_secrets

    def _read_secrets(self, scope: ReadSecrets, references: list[str]) -> Settings:
        try:
            settings = load_settings(self.config_path, read_secrets=scope)
        except ConfigError as exc:
            raise SecretsUnreadable(exc.problems, how_to_run(self.config_path, references)) \
                from None
        logs.add_secrets(settings.secret_values())
        return settings

    def ledger(self, *, keyed: bool = True) -> Ledger:
        """The ledger; `keyed` (commands that append to the audit trail or verify it): with the
        trail's seal, reading [ledger] trail_key when the config sets it."""
        from daemon.trail import open_ledger

        if not keyed:
            return Ledger.open(self.settings.ledger.database_url)
        ledger_settings = self.settings.ledger
        if self._with_secrets is not None:
            ledger_settings = self._with_secrets.ledger
        elif isinstance(ledger_settings.trail_key, UnreadSecret):
            ledger_settings = self._read_secrets(
                "ledger", [ledger_settings.trail_key.reference]).ledger
        return open_ledger(ledger_settings)


def _this_command(config_path: Path) -> list[str]:
    """The command line being run, with the config's absolute path (systemd-run starts in /)."""
    program = Path(sys.argv[0]).absolute()
    args = sys.argv[1:]
    while args and (args[0] == "--config" or args[0].startswith("--config=")):
        args = args[2:] if args[0] == "--config" else args[1:]
    name = str(program) if program.name == "privacy-ledger" else "privacy-ledger"
    return [name, "--config", str(config_path.absolute()), *args]


def how_to_run(config_path: Path, references: list[str]) -> list[str]:
    """What to do when a command's credential:NAME secrets cannot be read: they exist only
    inside the service, so run the command as systemd runs the service."""
    names = [ref.partition(":")[2] for ref in references if ref.startswith("credential:")]
    if not names or "CREDENTIALS_DIRECTORY" in os.environ:
        return []
    loads = [f"--property=LoadCredential={name}:{CREDENTIALS / name}" for name in names]
    this = _this_command(config_path)
    as_service = ["sudo", "systemd-run", "-P", "--wait", "--property=DynamicUser=yes",
                  "--property=StateDirectory=privacy-ledger", *loads, *this]
    as_root = ["sudo", f"CREDENTIALS_DIRECTORY={CREDENTIALS}", *this]
    return [f"this command reads the secrets {', '.join(names)}, which systemd gives only to "
            "the service ($CREDENTIALS_DIRECTORY). Run it with them, as the service runs "
            "(the paths are those of your unit's LoadCredential= lines):",
            f"  {shlex.join(as_service)}",
            f"or, with plain credential files named as the secrets in {CREDENTIALS}, as root "
            "(what it writes, e.g. export's files, is then root's):",
            f"  {shlex.join(as_root)}",
            "or write these secrets as env:NAME or file:/path references in the config."]


class _Group(click.Group):
    """Turns the errors meant for people into one clear line and an exit status."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ConfigError as exc:
            for problem in exc.problems:
                click.echo(f"config error: {problem}", err=True)
            for line in getattr(exc, "hint", []):
                click.echo(line, err=True)
            ctx.exit(2)
        except LedgerError as exc:
            click.echo(f"ledger error: {exc}", err=True)
            ctx.exit(1)


# Characters a terminal acts on rather than shows: C0 and C1 controls (ANSI sequences start
# with ESC or CSI; CR and LF forge lines), DEL, bidi overrides and Unicode line breaks.
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029"
                       "\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escaped(text: object, *, in_json: bool = False) -> str:
    """Text that came from upstream, fit for the terminal: every control character written
    as an escape (lossless, unlike the email's shown(): an id stays copyable). `in_json`:
    JSON output, where json.dumps leaves DEL, C1 and bidi characters raw; they become
    \\uXXXX, which only occurs inside JSON strings, so the document stays the same."""

    def escape(match: re.Match[str]) -> str:
        char = match.group()
        if in_json:
            # A raw newline there is json.dumps's indentation, never a string's.
            return char if char == "\n" else f"\\u{ord(char):04x}"
        return _NAMED.get(char) or (f"\\x{ord(char):02x}" if ord(char) < 0x100
                                    else f"\\u{ord(char):04x}")

    return _CONTROLS.sub(escape, str(text))


def _time(value: Any) -> str:
    return value.strftime("%Y-%m-%d") if value else "-"


@click.group(cls=_Group)
@click.option("--config", "config_path", type=click.Path(path_type=Path, dir_okay=False),
              envvar="PRIVACY_LEDGER_CONFIG", default=DEFAULT_CONFIG, show_default=True,
              help="The TOML config file (or $PRIVACY_LEDGER_CONFIG).")
@click.option("--verbose", "-v", is_flag=True,
              help="Log at debug level (or set $PRIVACY_LEDGER_LOG_LEVEL: debug, info, "
                   "warning, error).")
@click.version_option(package_name="privacy-ledger")
@click.pass_context
def main(ctx: click.Context, config_path: Path, verbose: bool) -> None:
    """privacy-ledger: who is held where, which categories of personal data, since when."""
    ctx.obj = App(config_path)
    try:
        level = logs.parse_level(os.environ.get(logs.LEVEL_ENV) or "info")
    except ValueError as exc:
        raise ConfigError([str(exc)]) from None
    logs.set_level(logging.DEBUG if verbose else level)
    logs.configure(sys.stderr)


@main.command("config-example")
def config_example() -> None:
    """Print an example config with every key explained (config/example.toml)."""
    from daemon.config import example_toml

    click.echo(example_toml(), nl=False)


def command_reference() -> str:
    """Every command's --help, as the README's command reference shows it."""
    parts = []
    root = click.Context(main, info_name="privacy-ledger", terminal_width=88,
                         max_content_width=88)
    parts.append(f"```\n{main.get_help(root)}\n```")
    for name in sorted(main.commands):
        command = main.commands[name]
        if command.hidden:
            continue
        context = click.Context(command, info_name=name, parent=root, terminal_width=88,
                                max_content_width=88)
        parts.append(f"### `{name}`\n\n```\n{command.get_help(context)}\n```")
    return "\n\n".join(parts) + "\n"


@main.command("command-reference", hidden=True)
def print_command_reference() -> None:
    """Print the README's command reference (kept current by a test)."""
    click.echo(command_reference(), nl=False)


# Log events a sync's own summary line says again (one line per source, not three).
_SAID_BY_SUMMARY = ("sync.start", "sync.done", "sync.failed", "sync.stopped")


@contextmanager
def _sync_display(*, quiet: bool) -> Iterator[Callable[[str, Progress], None] | None]:
    """What a sync shows while it runs: bars on a terminal (stderr), log lines above them
    (on any terminal, none of the events its summary lines restate); nothing when stderr is
    not a terminal (log lines as configured); with `quiet`, no bars and only errors logged."""
    if quiet:
        with logs.shown_on(leave_out=_SAID_BY_SUMMARY, least=logging.ERROR):
            yield None
        return
    if not sys.stderr.isatty():
        yield None
        return
    if os.environ.get("TERM") == "dumb":
        # A dumb terminal (an editor's shell) would show a bar's cursor moves as text.
        with logs.shown_on(leave_out=_SAID_BY_SUMMARY):
            yield None
        return
    from daemon.terminal import SyncDisplay

    with SyncDisplay(sys.stderr) as display, \
            logs.shown_on(display.log_stream, leave_out=_SAID_BY_SUMMARY):
        yield lambda source, progress: display.update(_escaped(source), progress)


def _summary_line(result: Any) -> str:
    """One line for one source's sync: how it ended, what it read and changed, and why."""
    from daemon.sources import BUSY

    if result.status == BUSY:
        return _escaped(f"{result.source}: not synced — {result.error}")
    line = (f"{result.source}: {result.status} ({result.mode}) — {result.seen:,} seen, "
            f"{result.changed:,} changed, {result.skipped:,} skipped, {result.gone:,} gone")
    return _escaped(line + (f" — {result.error}" if result.error and not result.stopped
                            else ""))


def _result_json(result: Any) -> dict[str, Any]:
    return {**asdict(result), "ok": result.ok}


class _StopSignals:
    """SIGINT and SIGTERM during a CLI sync: the first asks the sync to stop between
    batches (and cuts a backoff wait short); a second one interrupts at once."""

    def __init__(self) -> None:
        import threading

        self.signal: int | None = None
        self._asked = threading.Event()

    def __enter__(self) -> _StopSignals:
        import signal

        self._previous = {number: signal.signal(number, self._handle)
                          for number in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *_exc: object) -> None:
        import signal

        for number, handler in self._previous.items():
            signal.signal(number, handler)

    def _handle(self, number: int, _frame: object) -> None:
        if self._asked.is_set():
            raise KeyboardInterrupt
        self.signal = number
        self._asked.set()

    def asked(self) -> bool:
        return self._asked.is_set()

    def sleep(self, seconds: float) -> None:
        from connectors.base import StopWaiting

        if self._asked.wait(seconds):
            raise StopWaiting


def _stopped_line(stop: _StopSignals, results: list[Any], selected: list[str]) -> str:
    """The one line a stopped sync ends with: what was kept, and that the next continues."""
    import signal

    name = signal.Signals(stop.signal).name if stop.signal else "SIGINT"
    done = {r.source for r in results} | {r.source.split(":", 1)[0] for r in results}
    left = [n for n in selected if n not in done]
    read = f"{sum(r.seen for r in results):,} records read" if results else \
        "the batch being written was rolled back"
    rest = f"; not started: {', '.join(left)}" if left else ""
    return (f"sync stopped by {name}: everything committed before the stop is kept "
            f"({read}{rest}); the next privacy-ledger sync continues from there.")


@main.command()
@click.option("--source", "only", metavar="NAME",
              help="Only this source: woo:<shop>, a shop name, stripe or mailchimp.")
@click.option("--full", is_flag=True,
              help="List everything and mark what is no longer upstream as gone.")
@click.option("--quiet", "-q", is_flag=True,
              help="No progress and no log lines below errors; print only the sources that "
                   "did not succeed (nothing when every source did).")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON array on stdout, a result per source (source, status, ok, "
                   "mode, seen, changed, skipped, gone, error, run_id), and nothing else.")
@click.pass_obj
def sync(app: App, only: str | None, full: bool, quiet: bool, as_json: bool) -> None:
    """Pull the configured sources into the ledger.

    On a terminal a bar per source shows the progress (the upstream's total where its API
    gives one), then one line per source says how it ended. Ctrl-C or SIGTERM stops between
    batches: what was committed stays, the next sync continues from there. Exits 1 when a
    source failed, 130 when stopped by SIGINT, 143 by SIGTERM."""
    from daemon.sources import (
        BUSY,
        UnknownSourceError,
        require_writable,
        select_names,
        settle_heap,
        sync_configured,
    )

    settings = app.settings_with_secrets
    require_writable(settings.ledger.database_url)
    results: list[Any] = []
    selected: list[str] = []
    with _StopSignals() as stop:
        ledger = app.ledger()
        settle_heap()
        try:
            selected = select_names(settings, only)
            with _sync_display(quiet=quiet) as progress:
                results = sync_configured(ledger, settings, only=only, full=full,
                                          progress=progress, should_stop=stop.asked,
                                          sleep=stop.sleep)
        except UnknownSourceError as exc:
            raise click.UsageError(str(exc)) from None
        except KeyboardInterrupt:
            stop.signal = stop.signal or 2  # SIGINT
        finally:
            ledger.close()
    if as_json:
        click.echo(_escaped(json.dumps([_result_json(r) for r in results], default=str,
                                       indent=2, ensure_ascii=False), in_json=True))
    for result in [] if as_json else results:
        if quiet and result.ok:
            continue
        click.echo(_summary_line(result), err=result.status == BUSY)
    if stop.signal is not None:
        click.echo(_stopped_line(stop, results, selected), err=True)
        sys.exit(128 + stop.signal)
    if any(not r.ok for r in results):
        sys.exit(1)


def _blind_spot_lines(app: App, ledger: Ledger) -> list[str]:
    """What the ledger's results leave out (report.blind_spots), one sentence each."""
    from zoneinfo import ZoneInfo

    from daemon.report import blind_spot_text, blind_spots_for

    zone = ZoneInfo(app.settings.timezone)
    return [blind_spot_text(spot, zone, "These results")
            for spot in blind_spots_for(ledger, app.settings)]


def _say(lines: list[str], *, err: bool = False) -> None:
    for line in lines:
        click.echo(line, err=err)


def _email(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    """An EMAIL argument or option as typed (Stripe matches emails exactly: erase and export
    look up this form as well as the normalised one); a usage error naming the parameter
    when it is not an email address."""
    from daemon.access import RequestError, require_email

    try:
        return value.strip() if value is not None and require_email(value) else None
    except RequestError as exc:
        raise click.BadParameter(str(exc)) from None


@main.command()
@click.argument("email", callback=_email)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--current", is_flag=True, help="Leave out holdings gone upstream.")
@click.pass_obj
def where(app: App, email: str, as_json: bool, current: bool) -> None:
    """Every holding of one person: source, record, categories, dates."""
    from daemon.access import require_email

    email = require_email(email)
    ledger = app.ledger(keyed=False)
    try:
        holdings = ledger.holdings_for(email, include_gone=not current)
        blind = _blind_spot_lines(app, ledger)
    finally:
        ledger.close()
    # Above the results; beside JSON on stderr, so that stdout stays JSON.
    _say(blind, err=as_json)
    if as_json:
        click.echo(_escaped(json.dumps([asdict(h) for h in holdings], default=str, indent=2),
                            in_json=True))
        return
    if not holdings:
        click.echo(f"{email} is held nowhere the ledger knows of.")
        return
    click.echo(f"{email} — {len(holdings)} holding(s)")
    for h in holdings:
        state = f"gone {_time(h.gone_at)}" if h.gone_at else (h.status or "held")
        if h.anonymised:
            state += ", anonymised"
        click.echo(_escaped(f"  {h.source:<24} {h.record_type:<10} {h.external_id:<20} "
                            f"{state:<16} created {_time(h.created_at)}  seen "
                            f"{_time(h.first_seen)}–{_time(h.last_seen)}"))
        click.echo(_escaped(f"  {'':<24} {', '.join(h.categories)}"))
        for note in h.evidence:
            click.echo(_escaped(f"  {'':<24} ! {note}"))


@main.command()
@click.option("--out", type=click.Path(path_type=Path, file_okay=False),
              default=Path("demo-out"), show_default=True,
              help="Directory for the demo's config, secrets and ledger.")
@click.option("--people", default=300, show_default=True, help="People in the estate.")
@click.option("--seed", default=7, show_default=True, help="Seed of the estate.")
@click.option("--serve", is_flag=True,
              help="Keep the sandbox answering on 127.0.0.1 until Ctrl-C, to try sync, export "
                   "and erase against it with the config the demo wrote.")
def demo(out: Path, people: int, seed: int, serve: bool) -> None:
    """Start the sandbox estate on 127.0.0.1, sync it into a fresh ledger, show the result."""
    from daemon.demo import run_demo, serve_until_stopped

    for line in run_demo(out, people=people, seed=seed,
                         serve=serve_until_stopped if serve else None):
        click.echo(line)


@main.command()
@click.option("--once", is_flag=True,
              help="Do one round and exit (for a systemd timer): sync every source (in full "
                   "when this week's reconciliation is due), audit and email when tonight's "
                   "is due, deliver the outbox. Exits 1 if anything failed.")
@click.pass_obj
def run(app: App, once: bool) -> None:
    """Run as a daemon: scheduled syncs, the nightly audit and email, outbox retries.

    Speaks systemd's notify protocol (Type=notify); SIGTERM stops after the current batch,
    SIGHUP reloads the config. Logs are JSON lines when stdout is not a terminal."""
    import structlog

    from daemon.check import delivery_gaps
    from daemon.service import StartupError, run_daemon

    try:
        settings = app.settings_with_secrets
    except SecretsUnreadable as exc:
        # Under systemd: one line per problem in the journal, no shell advice.
        raise ConfigError(exc.problems) from None
    # The daemon's log (stdout, JSON lines for the journal) says first what it cannot do.
    logs.configure()
    for gap in delivery_gaps(settings):
        structlog.get_logger("daemon.service").warning("config.incomplete", section=gap.name,
                                                       problem=gap.detail)
    try:
        code = run_daemon(app.config_path, settings, once=once)
    except StartupError as exc:
        click.echo(f"cannot start: {exc}", err=True)
        sys.exit(1)
    sys.exit(code)


@main.command()
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON array on stdout, a result per check (name, ok, detail), "
                   "and nothing else.")
@click.pass_obj
def check(app: App, as_json: bool) -> None:
    """Check the config, the ledger, every source (one small request each) and the SMTP
    server (connect, STARTTLS, login; nothing is sent). Exits 1 if anything failed."""
    from daemon.check import CheckResult, run_checks

    results: list[CheckResult] = []

    def show(result: CheckResult) -> None:
        results.append(result)
        if not as_json:
            click.echo(_escaped(f"{result.name:<28} {'OK' if result.ok else 'FAIL':<6} "
                                f"{result.detail}"))

    if not as_json:
        click.echo(f"{'CHECK':<28} {'RESULT':<6} DETAIL")
    try:
        settings = app.settings_with_secrets
    except ConfigError as exc:
        for problem in exc.problems:
            show(CheckResult("config", False, problem))
        for line in getattr(exc, "hint", []):
            click.echo(line, err=True)
        settings = None
    if settings is not None:
        show(CheckResult("config", True, str(app.config_path)))
        for result in run_checks(settings):
            show(result)
    if as_json:
        click.echo(_escaped(json.dumps([asdict(r) for r in results], indent=2,
                                       ensure_ascii=False), in_json=True))
    if settings is None:
        # A config error: exit 2, as for every command (the README's check step).
        sys.exit(2)
    if not all(r.ok for r in results):
        sys.exit(1)


@main.command("report")
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False),
              help="Write the HTML email to this new file (mode 0600) and print its path. An "
                   "existing file or a symlink is refused.")
@click.option("--force", is_flag=True,
              help="With --out: replace an existing file (in one step; a symlink is still "
                   "refused).")
@click.option("--text", "show_text", is_flag=True, help="Print the plain-text part.")
@click.option("--send", is_flag=True,
              help="Queue the email in the outbox and deliver what is due there.")
@click.pass_obj
def report_command(app: App, out: Path | None, force: bool, show_text: bool,
                   send: bool) -> None:
    """The morning email, computed from the ledger: print it (the default), save its HTML,
    or send it. A send that fails leaves the email in the outbox to be retried."""
    from daemon import mail
    from daemon.files import RefusedPath, write_private
    from daemon.report import digest_for, render

    settings = app.settings_with_secrets if send else app.settings
    if send and settings.report is None:
        raise ConfigError([f"{app.config_path}: report --send needs a [report] section with "
                           "recipients and sender"])
    if send and settings.smtp is None:
        raise ConfigError([f"{app.config_path}: report --send needs an [smtp] section with "
                           "at least host (and port, security, username, password as needed)"])
    ledger = app.ledger(keyed=send)
    try:
        rendered = render(digest_for(ledger, settings))
        if out is not None:
            try:
                write_private(out, rendered.html, replace=force)
            except RefusedPath as exc:
                hint = " (--force replaces it)" if exc.reason == "exists already" else ""
                raise click.FileError(str(out), hint=f"{exc.reason}{hint}") from None
            except OSError as exc:
                raise click.FileError(str(out), hint=exc.strerror) from None
            click.echo(str(out))
        if show_text or not (out or send):
            click.echo(rendered.text, nl=False)
        if not send or settings.report is None or settings.smtp is None:
            return
        mail.enqueue(ledger, rendered, settings.report)
        result = mail.deliver_pending(ledger, settings.smtp)
        retry_at = mail.next_attempt(ledger)
    finally:
        ledger.close()
    click.echo(f"sent {result.sent} email{'s' if result.sent != 1 else ''}")
    for error in result.errors:
        click.echo(f"delivery failed: {error}", err=True)
    if result.failed:
        when = f" (next attempt {retry_at:%Y-%m-%d %H:%M} UTC)" if retry_at else ""
        click.echo(f"the email stays in the outbox and will be retried{when}", err=True)
        sys.exit(1)


@main.command()
@click.option("--json", "as_json", is_flag=True,
              help="Print a JSON array (rule, severity, source, record_type, external_id, "
                   "email, first_detected, last_detected, status, detail).")
@click.option("--rule", "rule_ids", multiple=True, metavar="ID",
              help="Only this rule (repeatable).")
@click.option("--source", "source_names", multiple=True, metavar="NAME",
              help="Show only findings of this source: woo:<shop>, a shop name, stripe, "
                   "mailchimp:<audience> (repeatable).")
@click.pass_obj
def audit(app: App, as_json: bool, rule_ids: tuple[str, ...],
          source_names: tuple[str, ...]) -> None:
    """Run the retention rules, update the findings and list the current ones."""
    from zoneinfo import ZoneInfo

    from daemon.audit import (
        UnknownRuleError,
        UnknownSourceError,
        current_findings,
        format_findings,
        rules_for,
        run_audit,
    )

    try:
        rules = [rule.id for rule in rules_for(rule_ids or None)]
    except UnknownRuleError as exc:
        raise click.BadParameter(str(exc), param_hint="--rule") from None
    ledger = app.ledger()
    try:
        result = run_audit(ledger, app.settings.retention, rules=rules, actor="cli",
                           declared=app.settings.policy)
        findings = current_findings(ledger, now=result.at, rules=rules,
                                    sources=source_names or None)
        blind = _blind_spot_lines(app, ledger)
        shops = _shop_lines(app, ledger)
    except UnknownSourceError as exc:
        raise click.BadParameter(str(exc), param_hint="--source") from None
    finally:
        ledger.close()
    _say(blind, err=as_json)
    if as_json:
        click.echo(_escaped(json.dumps([finding.to_json() for finding in findings], indent=2,
                                       ensure_ascii=False), in_json=True))
        return
    for line in format_findings(findings, result=result, zone=ZoneInfo(app.settings.timezone)):
        click.echo(_escaped(line))
    if shops:
        click.echo("")
    for line in shops:
        click.echo(_escaped(line))


@main.command()
@click.option("--out", "out", required=True,
              type=click.Path(path_type=Path, file_okay=False),
              help="Directory for ropa.html, ropa.csv, what-we-hold.html and what-we-hold.txt "
                   "(created if needed; those files are replaced, each in one step).")
@click.pass_obj
def ropa(app: App, out: Path) -> None:
    """Write the record of processing activities (Art. 30) and the "what we hold" table,
    generated from the ledger and compared with [policy]."""
    from daemon.files import RefusedPath
    from daemon.ropa import write_documents

    if app.settings.policy is None:
        click.echo(f"{app.config_path}: no [policy] section: nothing is declared, so every "
                   "category held is marked as a difference", err=True)
    ledger = app.ledger()
    try:
        paths = write_documents(ledger, app.settings.retention, app.settings.policy, out)
    except RefusedPath as exc:
        raise click.ClickException(f"cannot write {exc.path}: {exc.reason}") from None
    except OSError as exc:
        raise click.ClickException(f"cannot write into {out}: {exc.strerror}") from None
    finally:
        ledger.close()
    for path in paths:
        click.echo(_escaped(str(path)))


def _shop_lines(app: App, ledger: Any) -> list[str]:
    """The shops' own clean-up side by side (when [policy] is set and shops were read)."""
    from daemon.policy import format_side_by_side, side_by_side, unread_parts

    if app.settings.policy is None:
        return []
    with ledger.sessions() as session:
        return format_side_by_side(side_by_side(session, app.settings.retention),
                                   unread_parts(session))


@main.command()
@click.argument("rule")
@click.argument("source")
@click.argument("external_id")
@click.option("--reason", required=True,
              help="Why the finding is accepted (a legal hold, a dispute); kept with the "
                   "finding, its digest in the audit trail.")
@click.option("--until", "until_day", metavar="DATE",
              help="Last day the acknowledgement holds (YYYY-MM-DD); absent: until resolved.")
@click.option("--record-type", metavar="TYPE",
              help="customer, order, …: only when the source has two records with this id.")
@click.pass_obj
def ack(app: App, rule: str, source: str, external_id: str, reason: str,
        until_day: str | None, record_type: str | None) -> None:
    """Acknowledge a finding: RULE SOURCE EXTERNAL_ID (use - for a source's own finding)."""
    from daemon.audit import AuditError, acknowledge, until_end_of

    try:
        until = until_end_of(until_day) if until_day is not None else None
    except AuditError as exc:
        raise click.BadParameter(str(exc), param_hint="--until") from None
    ledger = app.ledger()
    try:
        finding = acknowledge(ledger, rule, source, external_id, reason=reason, until=until,
                              record_type=record_type, actor="cli")
    except AuditError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        ledger.close()
    record = " ".join(part for part in (finding.source, finding.record_type,
                                        finding.external_id) if part)
    held = f" until {until_day}" if until_day else ""
    click.echo(f"acknowledged{held}: {finding.rule} {record}")


@main.command()
@click.argument("email", callback=_email)
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), default=Path("."),
              show_default=True,
              help="Directory for the copy (made 0700 if missing; the files are 0600).")
@click.pass_obj
def export(app: App, email: str, out: Path) -> None:
    """Answer an access request: look EMAIL up live in every shop, Stripe and Mailchimp and
    write what is held (a JSON file, and a page the person can read). Exits 1 when a system
    did not answer: the copy is then not complete."""
    from daemon.access import RequestError, person_ref, run_export, summary_lines
    from daemon.requests import attach

    settings = app.settings_with_secrets
    ledger = app.ledger()
    try:
        blind = _blind_spot_lines(app, ledger)
        result = run_export(ledger, settings, email, out)
        registered = attach(ledger, "access", person_ref(ledger, email), result.request_id)
    except RequestError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        ledger.close()
    _say(blind)
    click.echo(f"wrote {result.json_path}")
    click.echo(f"wrote {result.html_path}")
    for line in summary_lines(result.answers):
        click.echo(line)
    click.echo(f"request {registered.id}: due {registered.due.isoformat()} "
               "(`privacy-ledger request close " + registered.id + "` once sent)")
    if not result.complete:
        missing = ", ".join(a.source for a in result.answers if not a.answered)
        click.echo(f"INCOMPLETE: {missing} did not answer, so this copy is NOT everything held "
                   f"about {email}. Do not send it as the full answer; run export again "
                   "once the system answers.", err=True)
        sys.exit(1)
    if result.records == 0:
        click.echo(f"{email} is held nowhere: every system answered and none holds anything "
                   "about this address (the files say so).")


@main.command()
@click.argument("email", callback=_email)
@click.option("--apply", "do_apply", is_flag=True,
              help="Carry the plan out. Without it only the plan is shown: nothing changes.")
@click.option("--yes", is_flag=True, help="With --apply: do not ask for confirmation.")
@click.pass_obj
def erase(app: App, email: str, do_apply: bool, yes: bool) -> None:
    """Answer an erasure request: plan, per system and record, what is deleted, anonymised
    or kept (and why); with --apply, do it, record every step in the audit trail, update the
    ledger and verify live that nothing else is left. Safe to run again: a run that stopped
    half-way is completed by the next. Exits 1 unless verified complete."""
    from daemon.access import RequestError, open_systems
    from daemon.erasure import apply_plan, make_plan, plan_lines, result_lines
    from daemon.requests import attach

    settings = app.settings_with_secrets
    ledger = app.ledger()
    try:
        with open_systems(settings) as systems:
            plan = make_plan(ledger, systems, settings.retention, email)
            for line in plan_lines(plan):
                click.echo(_escaped(line))
            unanswered = ", ".join(a.source for a in plan.lookup.failed)
            if not plan.complete:
                click.echo(_escaped(f"INCOMPLETE: {unanswered} did not answer; what is held "
                                    "there is not in this plan. Run the command again once "
                                    "it answers."), err=True)
            if not plan.steps and plan.complete:
                click.echo(f"{email} is held nowhere: every system answered; nothing to "
                           "erase.")
                return
            if not do_apply:
                click.echo("Nothing was changed: this is the plan only. Run again with --apply "
                           "to carry it out.")
                sys.exit(0 if plan.complete else 1)
            changes = len(plan.changes)
            if changes and not yes and not click.confirm(
                    f"Apply {changes} change(s) for {email}? Deletions cannot be undone.",
                    default=False):
                click.echo("Cancelled: nothing was changed.")
                sys.exit(1)
            result = apply_plan(ledger, systems, plan, settings.retention)
        registered = attach(ledger, "erasure", plan.person, plan.request_id)
    except RequestError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        ledger.close()
    for line in result_lines(result):
        click.echo(_escaped(line))
    click.echo(f"request {registered.id}: due {registered.due.isoformat()}")
    if not result.complete:
        sys.exit(1)


def _head_hash(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    cleaned = value.strip().lower()
    if len(cleaned) != 64 or any(c not in "0123456789abcdef" for c in cleaned):
        raise click.BadParameter(f"{value!r} is not a trail hash (64 hexadecimal characters, "
                                 "as the email's audit trail line shows it)")
    return cleaned


@main.command("verify-log")
@click.option("--person", metavar="EMAIL", callback=_email,
              help="Also list the entries about this person (exports, erasure steps), found "
                   "by its keyed hash: the trail never holds the email.")
@click.option("--expect", "expect_hash", metavar="HASH", callback=_head_hash,
              help="A head noted elsewhere (the morning email's audit trail line): fail "
                   "unless the chain still reaches it.")
@click.option("--count", "expect_count", type=click.IntRange(min=1), metavar="N",
              help="With --expect: the number of entries the chain had at that head.")
@click.pass_obj
def verify_log(app: App, person: str | None, expect_hash: str | None,
               expect_count: int | None) -> None:
    """Recompute the audit trail's hash chain (keyed with the trail key); name the first entry
    that was altered or removed, and check that the chain still reaches the last anchor kept
    in the state directory and the head given by --expect. Exits 1 when it does not."""
    from daemon import trail
    from daemon.access import entries_about

    if expect_count is not None and expect_hash is None:
        raise click.UsageError("--count goes with --expect HASH")
    expect = (trail.Anchor(entries=expect_count or 0, hash=expect_hash)
              if expect_hash is not None else None)
    ledger = app.ledger()
    try:
        result = trail.verify(ledger, expect=expect)
        entries = entries_about(ledger, person) if person is not None else []
    finally:
        ledger.close()
    if result.ok:
        click.echo(f"audit_log: {result.entries} entries, the hash chain is intact.")
        if result.unkeyed and result.unkeyed == result.entries:
            click.echo("  none of them is keyed yet (written before the trail key): whoever "
                       "edits the database could recompute them; the next entry is keyed.")
        elif result.unkeyed:
            click.echo(f"  the first {result.unkeyed} were written before the trail key and "
                       "verify unkeyed; every later one is keyed.")
        for line in (*result.reached, *result.notes):
            click.echo(f"  {line}")
        if result.head:
            click.echo(f"latest hash: {result.head} ({result.entries} entries). To check later "
                       "that none was removed: privacy-ledger verify-log --expect "
                       f"{result.head} --count {result.entries}")
    else:
        verified = (f" Entries before {result.first_bad_id} verify;"
                    if result.first_bad_id is not None else "")
        click.echo(f"audit_log: the hash chain is BROKEN: {result.problem}.{verified} restore "
                   "the ledger from a backup to see what was changed.", err=True)
    for entry in entries:
        click.echo(f"  #{entry.id} {entry.at:%Y-%m-%d %H:%M:%S} {entry.actor} {entry.action} "
                   f"{entry.detail}")
    if person is not None and not entries:
        click.echo(f"no entry about {person}")
    if not result.ok:
        sys.exit(1)


@main.group()
def request() -> None:
    """The register of access and erasure requests: due one calendar month after receipt,
    extendable once by two months within the first. The register names people by keyed
    hash only."""


@request.command("open")
@click.argument("kind", type=click.Choice(["access", "erasure"]))
@click.argument("email", callback=_email)
@click.option("--received", metavar="DATE",
              help="The day the request arrived (YYYY-MM-DD); absent: today.")
@click.pass_obj
def request_open(app: App, kind: str, email: str, received: str | None) -> None:
    """Register a request: KIND (access or erasure) and the person's EMAIL."""
    from daemon.access import person_ref
    from daemon.requests import RegisterError, open_request, parse_received
    from vocabulary import utcnow

    ledger = app.ledger()
    try:
        day = parse_received(received, utcnow())
        opened = open_request(ledger, kind, person_ref(ledger, email), received=day)
    except RegisterError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        ledger.close()
    click.echo(f"request {opened.id} opened: {kind} of {email}, received "
               f"{opened.received.isoformat()}, due {opened.due.isoformat()}")


def _request_line(view: Any, today: Any, trail_entries: int) -> str:
    left = view.days_left(today)
    if view.status != "open":
        state = f"closed {view.closed.isoformat() if view.closed else ''}"
    elif left < 0:
        state = f"OVERDUE by {-left} day(s)"
    else:
        state = f"{left} day(s) left"
    extended = " (extended)" if view.extended else ""
    return (f"  {view.id}  {view.kind:<8} received {view.received.isoformat()}  due "
            f"{view.due.isoformat()}{extended}  {state}  {view.person}  "
            f"{trail_entries} trail entr{'y' if trail_entries == 1 else 'ies'}")


@request.command("list")
@click.option("--all", "include_closed", is_flag=True, help="Closed requests too.")
@click.pass_obj
def request_list(app: App, include_closed: bool) -> None:
    """The open requests, the soonest due first, with the days left."""
    from daemon.requests import list_requests, trail_count
    from vocabulary import utcnow

    ledger = app.ledger(keyed=False)
    try:
        views = list_requests(ledger, include_closed=include_closed)
        lines = [_request_line(v, utcnow().date(), trail_count(ledger, v.id)) for v in views]
    finally:
        ledger.close()
    if not views:
        click.echo("no open request" if not include_closed else "no request")
    for line in lines:
        click.echo(line)


@request.command("extend")
@click.argument("request_id", metavar="ID")
@click.option("--reason", required=True,
              help="Why the request is complex (tell the person within the first month).")
@click.pass_obj
def request_extend(app: App, request_id: str, reason: str) -> None:
    """Extend a request by two months (once, within its first month)."""
    from daemon.requests import RegisterError, extend_request

    ledger = app.ledger()
    try:
        view = extend_request(ledger, request_id, reason)
    except RegisterError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        ledger.close()
    click.echo(f"request {view.id} extended: due {view.due.isoformat()}. Tell the person, "
               "with the reason, before the first month ends.")


@request.command("close")
@click.argument("request_id", metavar="ID")
@click.pass_obj
def request_close(app: App, request_id: str) -> None:
    """Close a request once it is answered."""
    from daemon.requests import RegisterError, close_request

    ledger = app.ledger()
    try:
        view = close_request(ledger, request_id)
    except RegisterError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        ledger.close()
    late = " (after its due day)" if view.closed and view.closed > view.due else ""
    click.echo(f"request {view.id} closed{late}")


@main.command()
@click.argument("target", nargs=-1, metavar="[RULE SOURCE EXTERNAL_ID]")
@click.option("--rule", "rule_id", metavar="RULE",
              help="Fix every current finding of this rule (acknowledged ones are left).")
@click.option("--source", "source_name", metavar="NAME",
              help="With --rule: only this source's findings.")
@click.option("--record-type", metavar="TYPE",
              help="customer, order, …: only when the source has two records with this id.")
@click.option("--apply", "do_apply", is_flag=True,
              help="Carry the plan out. Without it only the plan is shown: nothing changes.")
@click.option("--yes", is_flag=True, help="With --apply: do not ask for confirmation.")
@click.pass_obj
def fix(app: App, target: tuple[str, ...], rule_id: str | None, source_name: str | None,
        record_type: str | None, do_apply: bool, yes: bool) -> None:
    """Fix findings: one (RULE SOURCE EXTERNAL_ID) or all of --rule RULE. Plans first; with
    --apply writes upstream (throttled: [fix] writes_per_second), records each step in the
    audit trail, resolves the finding and reads each record back. Safe to run again after
    a stop: nothing is written twice. Exits 1 unless every write is verified."""
    from daemon.access import open_systems
    from daemon.audit import AuditError
    from daemon.fix import FixError, apply_fix, plan_lines, plan_one, plan_rule, result_lines

    if (rule_id is None) == (len(target) == 0) or (target and len(target) != 3):
        raise click.UsageError("give RULE SOURCE EXTERNAL_ID for one finding, or --rule RULE "
                               "[--source NAME] for all of a rule")
    if source_name is not None and rule_id is None:
        raise click.UsageError("--source goes with --rule")
    # The plan reads only the ledger: secrets are read when the plan is applied.
    settings = app.settings
    # Each source's configured address, where its system has one (a shop, a site).
    shop_urls = {unit.name: section.url.rstrip("/") for _, section, unit in settings.units()
                 if isinstance(getattr(section, "url", None), str)}
    ledger = app.ledger()
    try:
        if rule_id is not None:
            plan = plan_rule(ledger, rule_id, source=source_name, shop_urls=shop_urls)
        else:
            plan = plan_one(ledger, *target, record_type=record_type, shop_urls=shop_urls)
        for line in plan_lines(plan):
            click.echo(_escaped(line))
        if not plan.writes:
            return
        if not do_apply:
            click.echo("Nothing was changed: this is the plan only. Run again with --apply "
                       "to carry it out.")
            return
        if not yes and not click.confirm(f"Apply {len(plan.writes)} write(s)? Deletions "
                                         "cannot be undone.", default=False):
            click.echo("Cancelled: nothing was changed.")
            sys.exit(1)
        with open_systems(app.settings_with_secrets) as systems:
            result = apply_fix(ledger, systems, plan, settings.retention,
                               rate=settings.fix.writes_per_second)
    except (FixError, AuditError) as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        ledger.close()
    for line in result_lines(result):
        click.echo(_escaped(line))
    if not result.complete:
        sys.exit(1)
