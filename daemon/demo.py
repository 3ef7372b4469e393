"""`privacy-ledger demo`: the sandbox estate on 127.0.0.1, synced into a fresh ledger, and a
summary of what was found and where to look next; with `--serve` the twins keep answering
until Ctrl-C, so that sync, export and erase can be tried against them."""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from sqlalchemy import func, select

from daemon.audit import AuditResult, FindingView, current_findings, run_audit
from daemon.config import load_settings
from daemon.ledger import Holding, Ledger, Source, Subject
from daemon.report import render_digest
from daemon.sources import sync_configured
from daemon.trail import open_ledger
from sandbox.demo import RunningEstate
from sandbox.estate import EstateSpec
from sandbox.seed import build_estate
from vocabulary import utcnow


def invoked_as(argv0: str | None = None) -> str:
    """The program as the user can type it again: its bare name when that is what PATH finds,
    else its path relative to the working directory (or absolute when outside it)."""
    program = Path(argv0 if argv0 is not None else sys.argv[0])
    found = shutil.which(program.name)
    if found and Path(found).resolve() == program.resolve():
        return program.name
    return shlex.quote(_shown_path(program))


def _shown_path(path: Path) -> str:
    resolved = path.resolve() if path.is_absolute() or path.exists() else path
    try:
        relative = Path(os.path.relpath(resolved))
    except ValueError:
        return str(resolved)
    return str(resolved) if relative.parts[:1] == ("..",) else str(relative)


def run_demo(out: Path, *, people: int = 300, seed: int = 7,
             serve: Callable[[], None] | None = None) -> Iterator[str]:
    """Start the estate, sync it into a fresh ledger under `out`, and say what was found.
    With `serve`, the twins keep answering while it runs (it returns on Ctrl-C)."""
    out = out.resolve()
    # A fresh ledger: the old one's trail anchor would not fit it.
    for stale in ("ledger.db", "ledger.db-wal", "ledger.db-shm", "trail.anchor"):
        (out / stale).unlink(missing_ok=True)
    spec = EstateSpec(seed=seed, people=people, now=utcnow().replace(microsecond=0),
                      sites=("journal",))
    estate = build_estate(spec)
    yield (f"Sandbox estate (seed {seed}): {len(spec.shops)} WooCommerce shops, Stripe and "
           f"Mailchimp, {people} people, on 127.0.0.1.")
    with RunningEstate(estate) as running:
        config = running.write_config(out, policy=True)
        settings = load_settings(config)
        ledger = open_ledger(settings.ledger)
        try:
            for result in sync_configured(ledger, settings, full=True):
                yield (f"  synced {result.source:<28} {result.status:<8} "
                       f"{result.seen:>6,} records"
                       + (f"  ({result.error})" if result.error else ""))
            yield from summary(ledger)
            result = run_audit(ledger, settings.retention, declared=settings.policy)
            yield from findings_summary(ledger, result)
            email = render_digest(ledger, settings)
            html_path, text_path = out / "digest.html", out / "digest.txt"
            html_path.write_text(email.html, encoding="utf-8")
            text_path.write_text(email.text, encoding="utf-8")
            yield ""
            yield f"The morning email: {email.subject}"
            yield f"  open it in a browser: {html_path}"
            yield f"  plain-text part:      {text_path}"
        finally:
            ledger.close()
        sample = next((p.email for p in estate.people
                       if p.account_shops and p.in_stripe and p.in_mailchimp),
                      estate.people[0].email)
        command = f"{invoked_as()} --config {shlex.quote(_shown_path(config))}"
        yield ""
        yield f"Ledger: {settings.ledger.database_url}"
        yield "Look next (the ledger, no upstream needed):"
        yield f"  {command} where {shlex.quote(sample)}"
        yield f"  {command} audit"
        yield f"  {command} ropa --out {shlex.quote(_shown_path(out / 'ropa'))}"
        if serve is None:
            yield ("The sandbox has stopped, so sync, export and erase have nothing to talk "
                   "to now: run the demo with --serve to keep it answering and try them.")
            return
        yield "Against the sandbox, which keeps answering on 127.0.0.1 until Ctrl-C:"
        yield f"  {command} sync --source stripe"
        exports = shlex.quote(_shown_path(out / "export"))
        yield f"  {command} export {shlex.quote(sample)} --out {exports}"
        yield f"  {command} erase {shlex.quote(sample)}"
        yield "Serving; press Ctrl-C to stop."
        serve()
        yield "Sandbox stopped."


def serve_until_stopped() -> None:
    """Wait for Ctrl-C (or SIGTERM), keeping the process's servers answering meanwhile."""
    stopped = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    try:
        while not stopped.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)


def summary(ledger: Ledger) -> Iterator[str]:
    """People held, and live holdings per source and record type."""
    with ledger.sessions() as session:
        people = session.scalar(select(func.count()).select_from(Subject))
        rows = session.execute(
            select(Source.name, Holding.record_type, func.count())
            .join(Holding, Holding.source_id == Source.id)
            .where(Holding.gone_at.is_(None))
            .group_by(Source.name, Holding.record_type)
            .order_by(Source.name, Holding.record_type)).all()
    yield f"The ledger holds {people:,} people:"
    for source, record_type, count in rows:
        yield f"  {source:<28} {count:>6,} {record_type}s"


def findings_summary(ledger: Ledger, result: AuditResult) -> Iterator[str]:
    """Findings per rule, with the first one's action as an example."""
    findings = current_findings(ledger)
    yield ""
    yield (f"Audit: {len(findings)} finding(s) — {result.new} new, {result.ongoing} ongoing, "
           f"{result.resolved} resolved ({result.seconds:.2f}s)")
    by_rule: dict[str, list[FindingView]] = {}
    for finding in findings:
        by_rule.setdefault(finding.rule, []).append(finding)
    width = max((len(rule) for rule in by_rule), default=0)
    for rule, items in by_rule.items():
        yield f"  {rule:<{width}} {len(items):>4}  e.g. {items[0].action}"
