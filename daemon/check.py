"""`privacy-ledger check`: is everything the daemon needs reachable with the configured
credentials? The ledger (opened, migrations run), one small authenticated request to every
source, and the SMTP server (connect, STARTTLS, AUTH — nothing sent). Each check gives OK or
FAIL and the reason; one failing never stops the others.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from connectors import mailchimp, stripe, woocommerce
from connectors.http import APIError
from daemon.ledger import Ledger, LedgerError, describe_url

if TYPE_CHECKING:
    from daemon.config import Settings


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    detail: str


# A check reports; it does not wait out retries.
_ONCE = {"retry_attempts": 1}


def _probe(connector: Any) -> str:
    try:
        return connector.probe()
    finally:
        connector.close()


def _mailchimp_checks(section: Any) -> Iterator[CheckResult]:
    """The key (the account's audiences listed), then every audience a sync will read:
    one member read from each, and a FAIL for each configured one that does not exist."""
    account: Any = None
    opened: list[Any] = []
    unreadable: list[Any] = []

    def probe_account() -> str:
        nonlocal account, opened, unreadable
        account = mailchimp.connect(section.to_connector(**_ONCE))
        opened, unreadable = account.open_audiences()
        return f"key accepted: {len(account.found):,} audiences"

    try:
        yield _attempt("mailchimp", probe_account)
        for missing in unreadable:
            yield CheckResult(missing.source, False, missing.reason)
        for connector in opened:
            yield _attempt(connector.source, connector.probe)
    finally:
        if account is not None:
            account.close()


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


def _probe_ledger(url: str) -> str:
    ledger = Ledger.open(url)
    try:
        return f"{describe_url(url)}: schema up to date"
    finally:
        ledger.close()


def run_checks(settings: Settings) -> Iterator[CheckResult]:
    """Every check, in order, as it completes."""
    yield _attempt("ledger", lambda: _probe_ledger(settings.ledger.database_url))
    for shop in settings.woocommerce:
        yield _attempt(f"woo:{shop.name}", lambda shop=shop: _probe(
            woocommerce.connect(shop.to_connector(**_ONCE))))
    if settings.stripe is not None:
        yield _attempt("stripe", lambda: _probe(
            stripe.connect(settings.stripe.to_connector(**_ONCE))))
    if settings.mailchimp is not None:
        yield from _mailchimp_checks(settings.mailchimp)
    if settings.smtp is not None:
        yield _attempt("smtp", lambda: _probe_smtp(settings.smtp))
    elif settings.report is not None:
        yield CheckResult("smtp", False, "[report] is set but [smtp] is not: the nightly "
                                         "email would wait in the outbox")
