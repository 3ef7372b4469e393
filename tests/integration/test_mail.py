"""Delivery to a real SMTP server (aiosmtpd on 127.0.0.1): what arrives is parsed with the
email package; STARTTLS, implicit TLS and AUTH are exercised with a throwaway self-signed
certificate; outages, refusals and races leave every email in the outbox until it is sent,
exactly once."""

from __future__ import annotations

import email
import email.policy
import json
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from click.testing import CliRunner
from pydantic import SecretStr
from sqlalchemy import select, update

from daemon import mail, report, trail
from daemon.cli import main
from daemon.config import ReportSettings, SmtpSettings
from daemon.ledger import AuditLogEntry, Ledger, OutboxMessage, Source, SyncRun

NOW = datetime(2025, 3, 4, 6, 0, tzinfo=UTC)
DAY = timedelta(days=1)
USER, PASSWORD = "ledger", "correct-horse-battery"
OWNER = "owner@allmyink.example"
ADDRESSING = ReportSettings(recipients=[OWNER, "deputy@allmyink.example"],
                            sender="privacy-ledger@allmyink.example")


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage
    tls: bool
    login: bytes | None


class Inbox:
    """An aiosmtpd handler that keeps what it accepts and refuses the addresses it is told."""

    def __init__(self, refuse: tuple[str, ...] = (), delay: float = 0.0) -> None:
        self.received: list[Received] = []
        self.refuse = refuse
        self.delay = delay

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          rcpt_options: list[str]) -> str:
        if address in self.refuse:
            return "550 5.1.1 Recipient address rejected: User unknown"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.delay:
            time.sleep(self.delay)
        self.received.append(Received(
            mail_from=envelope.mail_from, rcpt_tos=list(envelope.rcpt_tos),
            message=email.message_from_bytes(envelope.content.replace(b"\r\n", b"\n"),
                                             policy=email.policy.default),
            tls=server.transport.get_extra_info("ssl_object") is not None,
            login=session.login_data))
        return "250 2.0.0 Message accepted for delivery"

    @property
    def message_ids(self) -> list[str]:
        return [str(r.message["Message-ID"]) for r in self.received]


def _authenticator(server: Any, session: Any, envelope: Any, mechanism: str,
                   auth_data: Any) -> AuthResult:
    ok = (isinstance(auth_data, LoginPassword) and auth_data.login == USER.encode()
          and auth_data.password == PASSWORD.encode())
    return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A throwaway self-signed certificate for 127.0.0.1 (cryptography is not installed,
    openssl is)."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True)
    return cert, key


def _server_context(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*map(str, certificate))
    return context


@pytest.fixture
def serve() -> Iterator[Any]:
    """Start aiosmtpd servers on 127.0.0.1; all are stopped after the test."""
    started: list[Controller] = []

    def start(inbox: Inbox, port: int | None = None, **kwargs: Any) -> int:
        port = port or _free_port()
        controller = Controller(inbox, hostname="127.0.0.1", port=port, **kwargs)
        controller.start()
        started.append(controller)
        return port

    yield start
    for controller in started:
        controller.stop()


def _smtp(port: int, **kwargs: Any) -> SmtpSettings:
    values: dict[str, Any] = {"host": "127.0.0.1", "port": port, "security": "none",
                              "timeout": timedelta(seconds=5)}
    values.update(kwargs)
    return SmtpSettings(**values)


def _rendered(subject: str = "privacy-ledger: 3 new findings, 41 open — allmyink, Stripe") \
        -> mail.RenderedEmail:
    return mail.RenderedEmail(subject=subject, text="Anonymise order 1234 in allmyink — ✓ 🦄\n",
                              html="<p>Anonymise order <b>1234</b> in allmyink — ✓ 🦄</p>")


def _outbox(ledger: Ledger) -> list[OutboxMessage]:
    with ledger.sessions() as session:
        return list(session.scalars(select(OutboxMessage).order_by(OutboxMessage.id)))


# --------------------------------------------------------------------------- what arrives


def test_digest_arrives_as_multipart_alternative_with_headers_and_both_parts(
        ledger: Ledger, serve: Any) -> None:
    inbox = Inbox()
    port = serve(inbox)
    with ledger.session() as session:
        session.add(Source(name="woo:allmyink", kind="woocommerce", created_at=NOW))
    rendered = report.render_digest(ledger, None, NOW)

    message_id = mail.enqueue(ledger, rendered, ADDRESSING, now=NOW)
    result = mail.deliver_pending(ledger, _smtp(port), now=NOW)

    assert (result.sent, result.failed, result.waiting) == (1, 0, 0)
    arrived, = inbox.received
    message = arrived.message
    assert arrived.mail_from == "privacy-ledger@allmyink.example"
    assert arrived.rcpt_tos == [OWNER, "deputy@allmyink.example"]
    assert message.get_content_type() == "multipart/alternative"
    plain, html = message.iter_parts()
    assert (plain.get_content_type(), html.get_content_type()) == ("text/plain", "text/html")
    assert plain.get_content_charset() == html.get_content_charset() == "utf-8"
    assert plain.get_content() == rendered.text
    assert html.get_content() == rendered.html
    assert message["Subject"] == rendered.subject
    assert "·" in message["Subject"]
    assert "=?utf-8?" in message.as_string().split("\n\n", 1)[0], "encoded, 7-bit header"
    assert message["Message-ID"] == message_id
    assert message_id.endswith("@allmyink.example>")
    assert email.utils.parsedate_to_datetime(message["Date"]) == NOW
    assert message["From"] == "privacy-ledger@allmyink.example"
    assert message["To"] == f"{OWNER}, deputy@allmyink.example"
    assert message["Auto-Submitted"] == "auto-generated"
    row, = _outbox(ledger)
    assert (row.status, row.sent_at, row.attempts, row.kind) == ("sent", NOW, 0, "digest")


def test_queued_and_sent_emails_are_in_the_audit_trail(ledger: Ledger, serve: Any) -> None:
    port = serve(Inbox())

    message_id = mail.enqueue(ledger, _rendered(), ADDRESSING, now=NOW)
    mail.deliver_pending(ledger, _smtp(port), now=NOW)

    with ledger.sessions() as session:
        entries = list(session.scalars(select(AuditLogEntry).order_by(AuditLogEntry.id)))
    assert [(e.actor, e.action) for e in entries] == [("mail", "email.queued"),
                                                      ("mail", "email.sent")]
    assert all(json.loads(e.detail)["message_id"] == message_id for e in entries)
    assert OWNER not in entries[0].detail
    assert trail.verify(ledger).ok


def test_delivery_uses_starttls_and_login_when_configured(
        sqlite_url: str, serve: Any, certificate: tuple[Path, Path]) -> None:
    inbox = Inbox()
    port = serve(inbox, tls_context=_server_context(certificate), authenticator=_authenticator,
                 auth_require_tls=True)
    ledger = Ledger.open(sqlite_url)

    mail.enqueue(ledger, _rendered(), ADDRESSING, now=NOW)
    result = mail.deliver_pending(ledger, _smtp(port, security="starttls", username=USER,
                                                password=SecretStr(PASSWORD),
                                                tls_ca_file=certificate[0]), now=NOW)

    assert result.sent == 1, result.errors
    arrived, = inbox.received
    assert arrived.tls
    assert arrived.login == USER.encode()
    ledger.close()


def test_delivery_over_implicit_tls(sqlite_url: str, serve: Any,
                                    certificate: tuple[Path, Path]) -> None:
    inbox = Inbox()
    # aiosmtpd offers AUTH over implicit TLS only when told the channel needs no STARTTLS.
    port = serve(inbox, ssl_context=_server_context(certificate), authenticator=_authenticator,
                 auth_require_tls=False)
    ledger = Ledger.open(sqlite_url)

    mail.enqueue(ledger, _rendered(), ADDRESSING, now=NOW)
    result = mail.deliver_pending(ledger, _smtp(port, security="tls", username=USER,
                                                password=SecretStr(PASSWORD),
                                                tls_ca_file=certificate[0]), now=NOW)

    assert result.sent == 1, result.errors
    assert inbox.received[0].tls and inbox.received[0].login == USER.encode()
    ledger.close()


# --------------------------------------------------------------------------- bad input


def test_refused_login_names_the_user_and_keeps_the_email(
        ledger: Ledger, serve: Any, certificate: tuple[Path, Path]) -> None:
    inbox = Inbox()
    port = serve(inbox, tls_context=_server_context(certificate), authenticator=_authenticator)
    wrong = "wrong-password-1234"

    mail.enqueue(ledger, _rendered(), ADDRESSING, now=NOW)
    result = mail.deliver_pending(ledger, _smtp(port, security="starttls", username=USER,
                                                password=SecretStr(wrong),
                                                tls_ca_file=certificate[0]), now=NOW)

    assert (result.sent, result.failed, result.waiting) == (0, 1, 1)
    error, = result.errors
    assert f"127.0.0.1:{port} refused the login of 'ledger'" in error
    assert "535" in error and "smtp.password" in error
    row, = _outbox(ledger)
    assert (row.status, row.attempts, row.next_attempt_at) == ("pending", 1,
                                                               NOW + timedelta(minutes=1))
    assert wrong not in (row.last_error or "") and wrong not in error
    assert inbox.received == []


def test_rejected_recipient_is_named_and_nobody_gets_a_copy(ledger: Ledger, serve: Any) -> None:
    inbox = Inbox(refuse=("deputy@allmyink.example",))
    port = serve(inbox)

    mail.enqueue(ledger, _rendered(), ADDRESSING, now=NOW)
    result = mail.deliver_pending(ledger, _smtp(port), now=NOW)

    assert (result.sent, result.failed) == (0, 1)
    assert "refused the recipient deputy@allmyink.example (550 5.1.1" in result.errors[0]
    assert "report.recipients" in result.errors[0]
    row, = _outbox(ledger)
    assert row.status == "pending" and "deputy@allmyink.example" in (row.last_error or "")
    assert inbox.received == [], "the accepted recipient must not get a copy before the retry"


def test_unreachable_server_names_host_and_port_and_retries_with_backoff(
        ledger: Ledger) -> None:
    port = _free_port()
    smtp = _smtp(port)
    mail.enqueue(ledger, _rendered(), ADDRESSING, now=NOW)

    first = mail.deliver_pending(ledger, smtp, now=NOW)
    too_early = mail.deliver_pending(ledger, smtp, now=NOW + timedelta(seconds=59))
    second = mail.deliver_pending(ledger, smtp, now=NOW + timedelta(minutes=1))

    assert first.errors[0].endswith(
        f"cannot connect to SMTP server 127.0.0.1:{port}: Connection refused")
    assert (too_early.sent, too_early.failed, too_early.waiting) == (0, 0, 1)
    assert second.failed == 1
    row, = _outbox(ledger)
    assert (row.status, row.attempts) == ("pending", 2)
    assert row.next_attempt_at == NOW + timedelta(minutes=1) + timedelta(minutes=2)


def test_untrusted_certificate_points_at_tls_ca_file(
        sqlite_url: str, serve: Any, certificate: tuple[Path, Path]) -> None:
    port = serve(Inbox(), tls_context=_server_context(certificate))
    ledger = Ledger.open(sqlite_url)
    mail.enqueue(ledger, _rendered(), ADDRESSING, now=NOW)

    result = mail.deliver_pending(ledger, _smtp(port, security="starttls"), now=NOW)

    assert result.failed == 1
    assert f"STARTTLS with SMTP server 127.0.0.1:{port} failed" in result.errors[0]
    assert "smtp.tls_ca_file" in result.errors[0]
    ledger.close()


def test_starttls_required_but_not_offered_says_so(sqlite_url: str, serve: Any) -> None:
    port = serve(Inbox())
    ledger = Ledger.open(sqlite_url)
    mail.enqueue(ledger, _rendered(), ADDRESSING, now=NOW)

    result = mail.deliver_pending(ledger, _smtp(port, security="starttls"), now=NOW)

    assert f"127.0.0.1:{port} does not offer STARTTLS" in result.errors[0]
    ledger.close()


def test_enqueue_without_recipients_names_report_recipients(ledger: Ledger) -> None:
    @dataclass
    class Nobody:
        recipients: tuple[str, ...] = ()
        sender: str = "privacy-ledger@allmyink.example"

    with pytest.raises(mail.MailError, match="report.recipients"):
        mail.enqueue(ledger, _rendered(), Nobody(), now=NOW)

    assert _outbox(ledger) == []


def test_sent_emails_are_deleted_after_the_retention_and_waiting_ones_never(
        ledger: Ledger, serve: Any) -> None:
    port = serve(Inbox())
    for subject, age in (("old", 20), ("recent", 2)):
        mail.enqueue(ledger, _rendered(subject), ADDRESSING, now=NOW - age * DAY)
        assert mail.deliver_pending(ledger, _smtp(port), now=NOW - age * DAY).sent == 1
    mail.enqueue(ledger, _rendered("waiting"), ADDRESSING, now=NOW - 30 * DAY)
    with ledger.session() as session:
        session.execute(update(OutboxMessage).where(OutboxMessage.subject == "waiting")
                        .values(next_attempt_at=NOW + DAY))
    mail.deliver_pending(ledger, _smtp(port), now=NOW)
    # 20 days after it was sent the copy is gone; 2 days after, kept; unsent, kept.
    assert [(m.subject, m.status) for m in _outbox(ledger)] == [("recent", "sent"),
                                                                 ("waiting", "pending")]
    assert mail.SENT_KEPT < 20 * DAY
    # The trail keeps the fact that it was sent.
    with ledger.sessions() as session:
        sent = session.scalars(select(AuditLogEntry.detail)
                               .where(AuditLogEntry.action == "email.sent")).all()
    assert len(sent) == 2


def test_backoff_doubles_from_a_minute_to_at_most_six_hours() -> None:
    waits = [mail.backoff(n) for n in (1, 2, 3, 4, 9, 10, 50)]

    assert waits[:4] == [timedelta(minutes=m) for m in (1, 2, 4, 8)]
    assert waits[4] == timedelta(minutes=256)
    assert waits[5] == waits[6] == timedelta(hours=6)


def test_lease_outlasts_the_slowest_send() -> None:
    assert mail.lease_for(_smtp(25, timeout=timedelta(seconds=5))) == timedelta(minutes=10)
    assert mail.lease_for(_smtp(25, timeout=timedelta(minutes=2))) == timedelta(minutes=40)


def test_unreadable_ca_file_names_the_key(sqlite_url: str, tmp_path: Path) -> None:
    ledger = Ledger.open(sqlite_url)
    mail.enqueue(ledger, _rendered(), ADDRESSING, now=NOW)

    result = mail.deliver_pending(ledger, _smtp(_free_port(), security="tls",
                                                tls_ca_file=tmp_path / "missing.pem"), now=NOW)

    assert "cannot read smtp.tls_ca_file" in result.errors[0]
    assert _outbox(ledger)[0].status == "pending"
    ledger.close()


# ------------------------------------------------------------- never lost, never twice


def _audit_night(ledger: Ledger, night: int) -> datetime:
    """One night's digest from the ledger, queued: what the daemon does after an audit."""
    now = NOW + timedelta(days=night)
    rendered = report.render(report.build_digest(ledger, now=now))
    mail.enqueue(ledger, rendered, ADDRESSING, now=now)
    return now


def test_each_email_is_delivered_exactly_once_when_smtp_was_down_for_three_audits(
        ledger: Ledger, serve: Any) -> None:
    port = _free_port()
    smtp = _smtp(port)
    with ledger.session() as session:
        session.add(Source(name="stripe", kind="stripe", created_at=NOW))
    for night in range(3):
        now = _audit_night(ledger, night)
        down = mail.deliver_pending(ledger, smtp, now=now)
        assert down.sent == 0 and down.waiting == night + 1

    inbox = Inbox()
    serve(inbox, port=port)
    back = NOW + timedelta(days=2, hours=7)
    result = mail.deliver_pending(ledger, smtp, now=back)
    again = mail.deliver_pending(ledger, smtp, now=back + timedelta(days=1))

    assert (result.sent, result.failed, result.waiting) == (3, 0, 0)
    assert (again.sent, again.failed) == (0, 0)
    rows = _outbox(ledger)
    assert sorted(inbox.message_ids) == sorted(r.message_id for r in rows)
    assert len(set(inbox.message_ids)) == 3
    assert all(r.status == "sent" for r in rows)
    # The third night's email says that the two before it could not be delivered.
    third = next(r.message for r in inbox.received if r.message["Message-ID"] == rows[2].message_id)
    # Unwrapped: the text part breaks its lines at 78 columns wherever words fall.
    text = " ".join(third.get_body(("plain",)).get_content().split())
    assert "EMAIL DELIVERY PROBLEMS" in text
    assert text.count("still in the outbox") == 2
    assert f"cannot connect to SMTP server 127.0.0.1:{port}" in text


def test_email_left_sending_by_a_killed_process_is_sent_after_the_lease_only(
        ledger: Ledger, serve: Any) -> None:
    inbox = Inbox()
    port = serve(inbox)
    mail.enqueue(ledger, _rendered(), ADDRESSING, now=NOW)
    with ledger.session() as session:
        session.execute(update(OutboxMessage).values(status="sending", claimed_at=NOW))

    during = mail.deliver_pending(ledger, _smtp(port), now=NOW + timedelta(minutes=9))
    after = mail.deliver_pending(ledger, _smtp(port), now=NOW + timedelta(minutes=10))

    assert (during.sent, during.waiting) == (0, 1)
    assert after.sent == 1
    assert len(inbox.received) == 1


def test_two_workers_racing_send_every_email_once(ledger: Ledger, serve: Any) -> None:
    inbox = Inbox(delay=0.05)
    port = serve(inbox)
    for number in range(6):
        mail.enqueue(ledger, _rendered(f"digest {number}"), ADDRESSING, now=NOW)
    results: list[mail.DeliveryResult] = []

    def work() -> None:
        results.append(mail.deliver_pending(ledger, _smtp(port), now=NOW))

    workers = [threading.Thread(target=work) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)

    assert sum(r.sent for r in results) == 6
    assert sorted(inbox.message_ids) == sorted(r.message_id for r in _outbox(ledger))


# --------------------------------------------------------------------------- the command


@pytest.fixture
def config_file(tmp_path: Path, sqlite_url: str) -> Any:
    def write(port: int | None, *, report_section: bool = True) -> Path:
        lines = ["[ledger]", f'url = "{sqlite_url}"']
        if report_section:
            lines += ["[report]", f'recipients = ["{OWNER}"]',
                      'sender = "privacy-ledger@allmyink.example"']
        if port is not None:
            lines += ["[smtp]", 'host = "127.0.0.1"', f"port = {port}", 'security = "none"',
                      'timeout = "5s"']
        path = tmp_path / "config.toml"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path

    ledger = Ledger.open(sqlite_url)
    with ledger.session() as session:
        source = Source(name="woo:allmyink", kind="woocommerce", created_at=NOW)
        session.add(source)
        session.flush()
        session.add(SyncRun(source_id=source.id, mode="full", started_at=NOW, finished_at=NOW,
                            status="failed", error="401 Unauthorized: check consumer_key"))
    ledger.close()
    return write


def test_report_command_prints_the_text_part_and_writes_the_html(
        config_file: Any, tmp_path: Path) -> None:
    config = config_file(None)
    out = tmp_path / "digest.html"

    printed = CliRunner().invoke(main, ["--config", str(config), "report", "--text"])
    written = CliRunner().invoke(main, ["--config", str(config), "report", "--out", str(out)])

    assert printed.exit_code == 0, printed.output
    assert "THE LEDGER IS BLIND TO allmyink" in printed.output
    assert "401 Unauthorized: check consumer_key" in printed.output
    assert written.exit_code == 0, written.output
    assert str(out) in written.output
    assert out.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")


def test_report_send_delivers_the_digest(config_file: Any, serve: Any) -> None:
    inbox = Inbox()
    port = serve(inbox)

    result = CliRunner().invoke(main, ["--config", str(config_file(port)), "report", "--send"])

    assert result.exit_code == 0, result.output
    assert "sent 1 email" in result.output
    assert inbox.received[0].message["Subject"].startswith("privacy-ledger: SYNC FAILED")


def test_report_send_fails_clearly_and_keeps_the_email_when_smtp_is_down(
        config_file: Any, sqlite_url: str) -> None:
    port = _free_port()

    result = CliRunner().invoke(main, ["--config", str(config_file(port)), "report", "--send"])

    assert result.exit_code == 1
    assert f"cannot connect to SMTP server 127.0.0.1:{port}" in result.output
    assert "stays in the outbox" in result.output
    ledger = Ledger.open(sqlite_url)
    row, = _outbox(ledger)
    assert row.status == "pending" and row.attempts == 1
    ledger.close()


def test_report_send_without_report_or_smtp_section_names_what_to_add(
        config_file: Any) -> None:
    without_report = CliRunner().invoke(
        main, ["--config", str(config_file(2525, report_section=False)), "report", "--send"])
    without_smtp = CliRunner().invoke(
        main, ["--config", str(config_file(None)), "report", "--send"])

    assert without_report.exit_code == 2
    assert "[report]" in without_report.output and "recipients" in without_report.output
    assert without_smtp.exit_code == 2
    assert "[smtp]" in without_smtp.output
