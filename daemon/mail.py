"""The outbox and SMTP delivery. Every email is written to the outbox first, in the ledger;
delivery takes it from there. A failed send stays in the outbox and is retried with backoff,
so that an email is never lost, and each row is claimed with one compare-and-swap UPDATE and
marked sent right after the server accepted it, so that it is never sent twice.

Error messages name the server, the step and the address that failed — never the password.
"""

from __future__ import annotations

import html
import json
import re
import smtplib
import socket
import ssl
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from email import message_from_string, policy
from email.message import EmailMessage
from email.parser import HeaderParser
from email.utils import format_datetime, make_msgid
from typing import TYPE_CHECKING, Protocol

import structlog
from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.orm import Session

from daemon import trail
from daemon.ledger import Ledger, OutboxMessage
from vocabulary import utcnow

if TYPE_CHECKING:
    from daemon.config import SmtpSettings

log = structlog.get_logger("privacy_ledger.mail")

ACTOR = "mail"
# A row left 'sending' longer than this (at least) belongs to a process that died mid-send.
LEASE = timedelta(minutes=10)
FIRST_RETRY = timedelta(minutes=1)
LONGEST_RETRY = timedelta(hours=6)
# Sent emails stay in the outbox this long, then are deleted: long enough to answer "did
# yesterday's email go out, and what did it say" across a holiday, no longer (they name
# people; the trail keeps the fact that each was sent).
SENT_KEPT = timedelta(days=14)


class MailError(Exception):
    """An email that cannot be queued or delivered; the message says which step failed."""


@dataclass(frozen=True)
class RenderedEmail:
    subject: str
    text: str
    html: str


@dataclass(frozen=True)
class DeliveryResult:
    sent: int
    failed: int
    errors: tuple[str, ...]
    # Emails still in the outbox after this run (failed now, or waiting for their retry).
    waiting: int = 0

    @property
    def ok(self) -> bool:
        return self.failed == 0


class Addressing(Protocol):
    """Who an email goes to and comes from (ReportSettings fits)."""

    @property
    def recipients(self) -> Sequence[str]: ...

    @property
    def sender(self) -> str: ...


def backoff(attempts: int) -> timedelta:
    """Wait after the n-th failed attempt: one minute, doubling, at most six hours."""
    exponent = min(max(attempts - 1, 0), 20)
    return min(FIRST_RETRY * (2**exponent), LONGEST_RETRY)


def build_message(rendered: RenderedEmail, addressing: Addressing, *, now: datetime) \
        -> EmailMessage:
    """multipart/alternative: the plain text first, the HTML last (the one clients prefer)."""
    recipients = list(addressing.recipients)
    if not recipients:
        raise MailError("no recipients: set report.recipients in the config; the email was "
                        "not queued")
    domain = addressing.sender.rpartition("@")[2] or "localhost"
    message = EmailMessage()
    message["Subject"] = rendered.subject
    message["From"] = addressing.sender
    message["To"] = ", ".join(recipients)
    message["Date"] = format_datetime(now)
    # Short enough not to be folded: some receivers mishandle a folded Message-ID.
    message["Message-ID"] = make_msgid(domain=domain)
    # RFC 3834: an automatic message, so that auto-responders stay quiet.
    message["Auto-Submitted"] = "auto-generated"
    # Quoted-printable keeps the stored message 7-bit: any server relays it unchanged.
    message.set_content(rendered.text, subtype="plain", charset="utf-8",
                        cte="quoted-printable")
    message.add_alternative(rendered.html, subtype="html", charset="utf-8",
                            cte="quoted-printable")
    return message


def enqueue(ledger: Ledger, rendered: RenderedEmail, addressing: Addressing, *,
            kind: str = "digest", now: datetime | None = None) -> str:
    """Put an email in the outbox (status pending, due now); returns its Message-ID."""
    now = now or utcnow()
    message = build_message(rendered, addressing, now=now)
    message_id = str(message["Message-ID"])
    with ledger.session() as session:
        row = OutboxMessage(
            created_at=now, kind=kind, recipients=json.dumps(list(addressing.recipients)),
            subject=rendered.subject, message=message.as_string(), message_id=message_id,
            status="pending", attempts=0, next_attempt_at=now,
        )
        session.add(row)
        session.flush()
        trail.append(session, ACTOR, "email.queued",
                     {"outbox_id": row.id, "kind": kind, "message_id": message_id,
                      "recipients": len(addressing.recipients)}, at=now)
    log.info("mail.queued", outbox_id=row.id, kind=kind, message_id=message_id)
    return message_id


# --------------------------------------------------------------------------- delivery


def _due(now: datetime, lease: timedelta) -> object:
    pending = and_(OutboxMessage.status == "pending", OutboxMessage.next_attempt_at <= now)
    abandoned = and_(OutboxMessage.status == "sending", OutboxMessage.claimed_at <= now - lease)
    return or_(pending, abandoned)


def _claim(ledger: Ledger, now: datetime, lease: timedelta,
           skip: set[int]) -> OutboxMessage | None:
    """Take the oldest due row with one conditional UPDATE (compare and swap): of two
    workers racing for it, only one sees its UPDATE match, the other gets nothing back."""
    for _ in range(5):
        with ledger.session() as session:
            candidate = session.scalar(
                select(OutboxMessage.id)
                .where(_due(now, lease), OutboxMessage.id.not_in(skip or {0}))
                .order_by(OutboxMessage.id).limit(1))
            if candidate is None:
                return None
            claimed = session.execute(
                update(OutboxMessage)
                .where(OutboxMessage.id == candidate, _due(now, lease))
                .values(status="sending", claimed_at=now)
                .returning(OutboxMessage.id)
            ).scalar()
            if claimed is not None:
                return session.get(OutboxMessage, claimed)
        # Another worker took that row between the SELECT and the UPDATE: look again.
    return None


def lease_for(settings: SmtpSettings) -> timedelta:
    """How long a claimed email belongs to its worker: longer than the slowest send (each
    SMTP step may take up to the timeout), and never under ten minutes."""
    return max(LEASE, settings.timeout * 20)


def _tls_context(settings: SmtpSettings) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if settings.tls_ca_file is not None:
        try:
            context.load_verify_locations(cafile=str(settings.tls_ca_file))
        except (OSError, ssl.SSLError) as exc:
            raise MailError(f"cannot read smtp.tls_ca_file {settings.tls_ca_file}: "
                            f"{getattr(exc, 'strerror', None) or exc}") from None
    return context


def _reply(code: int, text: bytes | str) -> str:
    words = text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)
    return f"{code} {' '.join(words.split())}"[:300]


@contextmanager
def _explained(settings: SmtpSettings, *, connecting: bool = False) -> Iterator[None]:
    """Turn what smtplib, ssl and sockets raise into one MailError naming the server and
    the step that failed (never the password: no exception here carries it)."""
    where = f"{settings.host}:{settings.port}"
    timeout = settings.timeout.total_seconds()
    step = "STARTTLS with" if settings.security == "starttls" else "TLS with"
    try:
        yield
    except MailError:
        raise
    except ssl.SSLCertVerificationError as exc:
        raise MailError(f"{step} SMTP server {where} failed: {exc.verify_message}; set "
                        "smtp.tls_ca_file if it uses a private certificate") from None
    except ssl.SSLError as exc:
        raise MailError(f"{step} SMTP server {where} failed: {exc.reason or exc}; is "
                        "smtp.security right for this port (tls: 465, starttls: 587)?") \
            from None
    except smtplib.SMTPServerDisconnected as exc:
        raise MailError(f"SMTP server {where} closed the connection: "
                        f"{exc or 'no reason given'}") from None
    except smtplib.SMTPConnectError as exc:
        raise MailError(f"SMTP server {where} refused the session: "
                        f"{_reply(exc.smtp_code, exc.smtp_error)}") from None
    except smtplib.SMTPResponseException as exc:
        raise MailError(f"SMTP server {where} answered "
                        f"{_reply(exc.smtp_code, exc.smtp_error)}") from None
    except smtplib.SMTPException as exc:
        raise MailError(f"SMTP with {where} failed: {exc}") from None
    except TimeoutError:
        what = "cannot connect to" if connecting else "no answer from"
        raise MailError(f"{what} SMTP server {where}: no answer within {timeout:g}s "
                        "(smtp.timeout)") from None
    except socket.gaierror as exc:
        raise MailError(f"cannot connect to SMTP server {where}: host not found "
                        f"({exc.strerror}); check smtp.host") from None
    except OSError as exc:
        what = "cannot connect to" if connecting else "connection lost to"
        raise MailError(f"{what} SMTP server {where}: {exc.strerror or exc}") from None


def _connect(settings: SmtpSettings) -> smtplib.SMTP:
    """A session ready for MAIL FROM: connected, encrypted as configured, logged in.
    Raises MailError only."""
    where = f"{settings.host}:{settings.port}"
    timeout = settings.timeout.total_seconds()
    with _explained(settings, connecting=True):
        if settings.security == "tls":
            server: smtplib.SMTP = smtplib.SMTP_SSL(settings.host, settings.port,
                                                    timeout=timeout,
                                                    context=_tls_context(settings))
        else:
            server = smtplib.SMTP(settings.host, settings.port, timeout=timeout)
    try:
        with _explained(settings):
            server.ehlo()
            if settings.security == "starttls":
                if not server.has_extn("starttls"):
                    raise MailError(f"SMTP server {where} does not offer STARTTLS; set "
                                    "smtp.security to \"tls\" for port 465, or fix the port")
                server.starttls(context=_tls_context(settings))
                server.ehlo()
            if settings.username is not None and settings.password is not None:
                if not server.has_extn("auth"):
                    raise MailError(f"SMTP server {where} does not offer AUTH, but "
                                    "smtp.username is set")
                try:
                    server.login(settings.username, settings.password.get_secret_value())
                except smtplib.SMTPAuthenticationError as exc:
                    raise MailError(
                        f"SMTP server {where} refused the login of {settings.username!r}: "
                        f"{_reply(exc.smtp_code, exc.smtp_error)}; check smtp.username and "
                        "smtp.password") from None
    except BaseException:
        _close(server)
        raise
    return server


def probe(settings: SmtpSettings) -> None:
    """Connect, encrypt and log in as configured, then quit without sending anything.
    Raises MailError naming what failed."""
    _close(_connect(settings))


def _close(server: smtplib.SMTP) -> None:
    try:
        server.quit()
    except (smtplib.SMTPException, OSError):
        server.close()


def _transmit(settings: SmtpSettings, row: OutboxMessage) -> None:
    """Hand one message to the server, all recipients or none: a refused recipient resets
    the transaction before DATA, so a retry never duplicates the copies already accepted."""
    recipients = json.loads(row.recipients)
    if not recipients:
        raise MailError(f"outbox message {row.id} has no recipients; set report.recipients")
    sender = _envelope_sender(row.message)
    server = _connect(settings)
    try:
        with _explained(settings):
            _envelope(server, f"{settings.host}:{settings.port}", sender, recipients,
                      row.message)
    finally:
        _close(server)


def _envelope(server: smtplib.SMTP, where: str, sender: str, recipients: list[str],
              message: str) -> None:
    code, reply = server.mail(sender)
    if code != 250:
        server.rset()
        raise MailError(f"SMTP server {where} refused the sender {sender}: "
                        f"{_reply(code, reply)}; check report.sender")
    refused = []
    for recipient in recipients:
        code, reply = server.rcpt(recipient)
        if code not in (250, 251):
            refused.append(f"{recipient} ({_reply(code, reply)})")
    if refused:
        server.rset()
        raise MailError(f"SMTP server {where} refused the recipient "
                        f"{', '.join(refused)}; check report.recipients")
    # SMTP wants CRLF line ends; smtplib fixes them only for str, and the message is 7-bit.
    wire = message.replace("\r\n", "\n").replace("\n", "\r\n").encode("ascii", "replace")
    code, reply = server.data(wire)
    if code != 250:
        raise MailError(f"SMTP server {where} rejected the message: {_reply(code, reply)}")


def _envelope_sender(message: str) -> str:
    addresses = HeaderParser(policy=policy.default).parsestr(message)["From"].addresses
    if not addresses:
        raise MailError("the queued message has no From address")
    return str(addresses[0].addr_spec)


def _mark_sent(session: Session, row: OutboxMessage, now: datetime) -> bool:
    done = session.execute(
        update(OutboxMessage)
        .where(OutboxMessage.id == row.id, OutboxMessage.status == "sending",
               OutboxMessage.claimed_at == row.claimed_at)
        .values(status="sent", sent_at=now, claimed_at=None)
    ).rowcount
    trail.append(session, ACTOR, "email.sent",
                 {"outbox_id": row.id, "kind": row.kind, "message_id": row.message_id,
                  "attempts": row.attempts + 1}, at=now)
    return bool(done)


def _mark_failed(ledger: Ledger, row: OutboxMessage, now: datetime, error: str) -> datetime:
    retry_at = now + backoff(row.attempts + 1)
    with ledger.session() as session:
        session.execute(
            update(OutboxMessage)
            .where(OutboxMessage.id == row.id, OutboxMessage.status == "sending",
                   OutboxMessage.claimed_at == row.claimed_at)
            .values(status="pending", attempts=OutboxMessage.attempts + 1, last_error=error,
                    next_attempt_at=retry_at, claimed_at=None)
        )
    return retry_at


def deliver_pending(ledger: Ledger, settings: SmtpSettings, *, now: datetime | None = None,
                    limit: int = 100) -> DeliveryResult:
    """Send every due email in the outbox, oldest first; failures go back with backoff.
    `now` fixes the clock (tests); otherwise each claim reads the time afresh, so that a long
    run never claims with a stale time another worker would take for an abandoned claim."""

    def clock() -> datetime:
        return now if now is not None else utcnow()

    lease = lease_for(settings)
    sent, failed, errors = 0, 0, []
    tried: set[int] = set()
    while len(tried) < limit:
        row = _claim(ledger, clock(), lease, tried)
        if row is None:
            break
        tried.add(row.id)
        try:
            _transmit(settings, row)
        except MailError as exc:
            retry_at = _mark_failed(ledger, row, clock(), str(exc))
            failed += 1
            errors.append(f"{row.subject[:80]}: {exc}")
            log.warning("mail.failed", outbox_id=row.id, error=str(exc),
                        attempts=row.attempts + 1, retry_at=retry_at.isoformat())
            continue
        # The server has the message: record that at once. The one window left — the server
        # accepted, then this process dies before this commit — would send it again after the
        # lease; the unchanged Message-ID lets receiving servers and clients drop the copy.
        with ledger.session() as session:
            if not _mark_sent(session, row, clock()):
                log.warning("mail.lease_lost", outbox_id=row.id)
        sent += 1
        log.info("mail.sent", outbox_id=row.id, message_id=row.message_id)
    purge_sent(ledger, clock())
    with ledger.sessions() as session:
        waiting = session.scalar(select(func.count(OutboxMessage.id))
                                 .where(OutboxMessage.status != "sent")) or 0
    return DeliveryResult(sent=sent, failed=failed, errors=tuple(errors), waiting=waiting)


def _readable_text(message: str) -> str:
    """The subject and every text part of a stored message, decoded (the parts are
    quoted-printable, the HTML entity-escaped), for searching."""
    parsed = message_from_string(message, policy=policy.default)
    texts = [str(parsed.get("Subject", ""))]
    for part in parsed.walk():
        if part.get_content_maintype() == "text":
            try:
                content = part.get_content()
            except (LookupError, ValueError):
                content = part.get_payload(decode=False)
            texts.append(html.unescape(str(content)))
    return "\n".join(texts)


def purge_mail(session: Session, emails: Sequence[str]) -> tuple[int, int]:
    """Delete every outbox row whose message names any of these forms of one email, in the
    caller's transaction: queued ones are withdrawn (never sent; one being sent right now
    is too late to stop and is not retried), sent copies go. Returns (withdrawn, deleted)."""
    # Whole addresses only: erasing ana@x.com must not withdraw an email naming dana@x.com.
    needles = [re.compile(rf"(?<![\w.+%'-]){re.escape(e)}(?![\w-]|\.\w)")
               for e in dict.fromkeys(emails) if e]
    withdrawn: list[int] = []
    deleted: list[int] = []
    for ident, status, message in session.execute(
            select(OutboxMessage.id, OutboxMessage.status, OutboxMessage.message)):
        text = _readable_text(message)
        if any(needle.search(text) for needle in needles):
            (deleted if status == "sent" else withdrawn).append(ident)
    if withdrawn or deleted:
        session.execute(delete(OutboxMessage).where(OutboxMessage.id.in_(withdrawn + deleted)))
        trail.append(session, ACTOR, "email.withdrawn",
                     {"outbox_ids": sorted(withdrawn), "sent_deleted": sorted(deleted),
                      "reason": "names an erased person"})
    return len(withdrawn), len(deleted)


def purge_sent(ledger: Ledger, now: datetime) -> int:
    """Delete sent emails older than SENT_KEPT; returns how many."""
    with ledger.session() as session:
        return session.execute(delete(OutboxMessage).where(
            OutboxMessage.status == "sent", OutboxMessage.sent_at < now - SENT_KEPT)).rowcount


def next_attempt(ledger: Ledger) -> datetime | None:
    """When the earliest email still in the outbox will be tried again."""
    with ledger.sessions() as session:
        return session.scalar(select(func.min(OutboxMessage.next_attempt_at))
                              .where(OutboxMessage.status == "pending"))
