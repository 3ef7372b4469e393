"""`privacy-ledger check`: is everything the daemon needs reachable with the configured
credentials? The ledger (read only: its schema revision; a ledger that does not exist yet is
left for the daemon to create, one behind is left for it to migrate, so that a check run as
root writes nothing the service's user cannot use), one small authenticated request to every
source, and the SMTP server (connect, STARTTLS, AUTH — nothing sent); a missing [report] or
[smtp] fails. Each check gives OK or FAIL and the reason; one failing never stops the others.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from sqlalchemy import create_engine
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

from connectors.http import APIError
from connectors.system import Opening, Unit
from daemon.ledger import SCHEMA_REVISION, LedgerError, describe_url, schema_revision

if TYPE_CHECKING:
    from daemon.config import Settings


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    detail: str


# A check reports; it does not wait out retries.
_ONCE = {"retry_attempts": 1}


def _unit_checks(unit: Unit) -> Iterator[CheckResult]:
    """One configured unit: opening it (an account that lists its audiences says how many),
    then one small read from every source a sync will read, and a FAIL for each configured one
    that cannot be read."""
    opening: Opening | None = None

    def open_unit() -> str:
        nonlocal opening
        opening = unit.open(**_ONCE)
        if opening.summary is not None:
            return opening.summary
        return opening.connectors[0].probe()

    try:
        first = _attempt(unit.name, open_unit)
        yield first
        if opening is None:
            return
        for source, reason in opening.unreadable:
            yield CheckResult(source, False, reason)
        if opening.summary is not None:
            for connector in opening.connectors:
                yield _attempt(connector.source, connector.probe)
    finally:
        if opening is not None:
            opening.close()


def _probe_smtp(settings: Any) -> str:
    from daemon import mail

    mail.probe(settings)
    steps = ["connected"]
    if settings.security == "starttls":
        steps.append("STARTTLS")
    elif settings.security == "tls":
        steps.append("TLS")
    if settings.username:
        steps.append(f"logged in as {settings.username}")
    return ", ".join(steps) + " (nothing sent)"


def _attempt(name: str, probe: Callable[[], str]) -> CheckResult:
    from daemon.mail import MailError

    try:
        return CheckResult(name, True, probe())
    except APIError as exc:
        return CheckResult(name, False, exc.message)
    except (MailError, LedgerError, ValueError) as exc:
        return CheckResult(name, False, str(exc))
    except OSError as exc:
        return CheckResult(name, False, f"{type(exc).__name__}: {exc.strerror or exc}")


def _read_only_sqlite(path: Path) -> Engine:
    """An engine that reads the SQLite file and creates nothing beside it: SQLite's read-only
    mode would make the -wal and -shm files (owned by whoever runs the check) when they are
    absent, so without them the file is read as immutable (it is then fully checkpointed)."""
    wal = [path.with_name(path.name + suffix) for suffix in ("-wal", "-shm")]
    mode = "mode=ro" if all(p.exists() for p in wal) else "immutable=1"
    uri = f"file:{quote(str(path.absolute()))}?{mode}"
    return create_engine("sqlite://", poolclass=NullPool,
                         creator=lambda: sqlite3.connect(uri, uri=True, timeout=30))


def _probe_ledger(url: str) -> str:
    """The ledger's state, read only: never created, migrated or written here."""
    parsed = make_url(url)
    shown = describe_url(url)
    if parsed.drivername.startswith("sqlite"):
        path = Path(parsed.database or "")
        if not path.exists():
            return f"not created yet: the first `run` creates it in {path.parent}"
        engine = _read_only_sqlite(path)
    else:
        engine = create_engine(url, poolclass=NullPool)
    try:
        revision = schema_revision(engine)
    except SQLAlchemyError as exc:
        orig = getattr(exc, "orig", None)
        reason = str(orig or exc).strip().splitlines()[0]
        raise LedgerError(f"cannot open the ledger at {shown}: {reason}") from None
    finally:
        engine.dispose()
    if revision is None:
        return f"{shown}: no schema yet: the first `run` creates it"
    if revision == SCHEMA_REVISION:
        return f"{shown}: schema up to date"
    if revision < SCHEMA_REVISION:
        return (f"{shown}: schema {revision}, this version's is {SCHEMA_REVISION}: the "
                "daemon migrates it when it starts (`run`); nothing was changed")
    raise LedgerError(f"{shown}: schema {revision} is newer than this privacy-ledger knows "
                      f"({SCHEMA_REVISION}): upgrade privacy-ledger")


def delivery_gaps(settings: Settings) -> list[CheckResult]:
    """The nightly email's missing sections, each saying what the daemon does without it."""
    gaps = []
    if settings.report is None:
        gaps.append(CheckResult(
            "report", False, "[report] is missing: the daemon audits every night but emails "
                             "nobody; add [report] with recipients and sender"))
    if settings.smtp is None:
        what = ("the nightly email would wait in the outbox, never delivered"
                if settings.report is not None else "no email could be delivered")
        gaps.append(CheckResult(
            "smtp", False, f"[smtp] is missing: {what}; add [smtp] with host (and port, "
                           "security, username, password as needed)"))
    return gaps


def _site_state(unit: Unit, read: Callable[[Any], Any]) -> CheckResult:
    """What the promise rules read from one shop: its plugins, settings and clean-up."""
    name = f"policy:{unit.name}"
    opening = unit.open(**_ONCE)
    try:
        state = read(opening.connectors[0])
    except APIError as exc:
        return CheckResult(name, False, exc.message)
    finally:
        opening.close()
    refused = [f"{part.part}: {part.detail}" for part in state.parts if not part.ok]
    if refused:
        return CheckResult(name, False, "; ".join(refused))
    return CheckResult(name, True, f"{len(state.plugins)} active plugins, the erasure and "
                                   "clean-up settings readable")


def policy_checks(settings: Settings) -> Iterator[CheckResult]:
    """[policy]: whether it is there (without it nothing is claimed, so nothing is checked),
    and for each shop whether the key may read what the promise rules compare."""
    declared = settings.policy
    if declared is None:
        yield CheckResult("policy", True, "[policy] is missing: nothing is declared, so the "
                                          "audit checks no promise; add [policy] with the "
                                          "categories and processors your privacy policy "
                                          "names")
        return
    if not declared.categories and not declared.systems and not declared.processors:
        yield CheckResult("policy", True, "[policy] declares nothing: every category held "
                                          "and every processor will be a finding; list the "
                                          "categories and processors your policy names")
    else:
        yield CheckResult("policy", True, f"{len(declared.categories)} categories and "
                                          f"{len(declared.processors)} processors declared")
    for system, _, unit in settings.units():
        if system.read_site_state is None:
            continue
        try:
            yield _site_state(unit, system.read_site_state)
        except (ValueError, OSError) as exc:
            yield CheckResult(f"policy:{unit.name}", False, str(exc))


def run_checks(settings: Settings) -> Iterator[CheckResult]:
    """Every check, in order, as it completes."""
    yield _attempt("ledger", lambda: _probe_ledger(settings.ledger.database_url))
    for _, _, unit in settings.units():
        yield from _unit_checks(unit)
    if settings.smtp is not None:
        yield _attempt("smtp", lambda: _probe_smtp(settings.smtp))
    yield from delivery_gaps(settings)
    yield from policy_checks(settings)
