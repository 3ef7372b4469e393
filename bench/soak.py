"""Soak: privacy-ledger attacked the way production will attack it, and a figure that says
nothing was lost.

The sandbox estate (seeded) runs in this process on 127.0.0.1, with a real SMTP server
(aiosmtpd) beside it; the daemon is `privacy-ledger run`, a child process with a config whose
syncs run every few seconds. For --minutes (10 by default) this script at once:

- changes the estate through the twins (new customers, orders, charges, subscribers;
  updates, status changes, trash and restore from the trash, anonymisation, deletions,
  unsubscribes, archiving, resubscribing, permanent deletions) and so moves the ground truth;
- injects faults at random into random twins: 429 with Retry-After, 500/502/503, dropped
  connections, answers slower than the client's timeout, truncated JSON, an HTML page with
  200, a 401 for a few seconds, every answer slow for a while, a body trickled a few bytes a
  second (past the request's total deadline), a body over the response limit, a gzip bomb,
  a redirect to another host name that answers an empty listing, listings that page for ever
  for a while (a shop's pages alternating, Stripe's has_more with the same ids, Mailchimp
  repeating its last page past a total of ten million); and makes the SMTP server
  refuse (451, at MAIL or at DATA) for a while;
- plants records no ledger column can hold (a Stripe customer whose email is over 320
  characters, a shop order whose status is over 40): each must be skipped with its reason,
  never stop its source, never be held;
- kills the daemon with SIGKILL at random moments (--kills, at least 20 in 10 minutes by
  default) and starts it again a second later, as systemd's Restart=always, RestartSec=1s;
- lets "nights" pass: every minute the config's `audit_at` and `full_sync` move to the next
  minute (the daemon is sent SIGHUP when it is up, and any restart reads the file), so that
  the daemon's own nightly audit + email and its weekly reconciliation run several times;
- sends the digest from the command line too (`privacy-ledger report --send`) at random
  moments, as an owner would, racing the daemon for the outbox;
- samples the daemon's ledger every few seconds for holdings marked gone that are still
  upstream (ids are never reused here, so such a holding was wrongly marked gone).

Then the end, in this order: the twins and SMTP are healed, the daemon is stopped (SIGTERM),
one clean `privacy-ledger sync --full` and one `privacy-ledger audit --json` run as child
processes, and a last outbox delivery pass runs with the clock a day ahead (the retries the
outbox's backoff would make later; a row claimed by a killed daemon is taken up once its lease
is over). It prints kills survived, faults injected by kind, holdings against the ground
truth, findings against the rules applied to the ground truth, emails expected against
delivered, and whether the audit trail verifies; it exits 1 on any mismatch.

What "findings against the rules applied to the ground truth" compares: for the rules with a
plain definition (order-past-retention, unpaid-order-past-retention,
mailchimp-contact-retained, stripe-customer-inactive, card-number-exposed in shop notes and
meta, sync-stale) the expected findings are computed here in plain Python from the twins' raw
records and compared both ways; for every rule, each finding must be on a record that exists
upstream, each planted breach the soak never touched must be found, and each record planted
clean that the soak never touched must have no finding.

    .venv/bin/python bench/soak.py                        # 10 minutes, 24 kills
    .venv/bin/python bench/soak.py --minutes 1 --kills 3 --seed 3
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.parser import BytesHeaderParser
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from aiosmtpd.controller import Controller  # noqa: E402
from sqlalchemy import func, select  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from connectors.base import normalise_email  # noqa: E402
from daemon import logs, mail, trail  # noqa: E402
from daemon.config import Settings, load_settings  # noqa: E402
from daemon.ledger import AuditLogEntry, Holding, Ledger, OutboxMessage, Source, SyncRun  # noqa: E402
from sandbox.demo import RunningEstate  # noqa: E402
from sandbox.estate import Estate, EstateSpec  # noqa: E402
from sandbox.seed import build_estate  # noqa: E402
from tests.integration.estate_helpers import estate_truth, ledger_truth  # noqa: E402
from vocabulary import utcnow  # noqa: E402

ZONE = "Europe/London"
OWNER = "owner@shop.example"
SENDER = "privacy-ledger@shop.example"
# The client's answer timeout; a "timeout" fault holds the answer longer than this.
CLIENT_TIMEOUT = 3
FAULT_KINDS = ("429", "500", "502", "503", "drop", "timeout", "truncate", "html", "401",
               "trickle", "oversize", "bomb", "redirect", "endless", "slow", "smtp")
# Larger than the response limit the soak's config sets: read to the limit, then refused.
RESPONSE_LIMIT_MB = 8
OVERSIZE_BYTES = 12 * 2**20
BOMB_BYTES = 256 * 2**20
EXACT_RULES = ("order-past-retention", "unpaid-order-past-retention",
               "mailchimp-contact-retained", "stripe-customer-inactive", "card-number-exposed",
               "sync-stale")
Key = tuple[str, str, str]


def _say(text: str) -> None:
    print(text, flush=True)


# ------------------------------------------------------------------------------- SMTP sink


class Sink:
    """An SMTP server's handler: keeps the Message-ID of every message it accepts, and
    answers 451 (at MAIL or at DATA) while told to refuse."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.received: list[str] = []
        self._refuse_until = 0.0
        self._refuse_at = "MAIL"
        self.refused = 0

    def refuse(self, seconds: float, at: str) -> None:
        with self._lock:
            self._refuse_until = time.monotonic() + seconds
            self._refuse_at = at

    def heal(self) -> None:
        with self._lock:
            self._refuse_until = 0.0

    def _refusing(self, step: str) -> bool:
        with self._lock:
            refusing = self._refuse_at == step and time.monotonic() < self._refuse_until
            if refusing:
                self.refused += 1
            return refusing

    async def handle_MAIL(self, _server: object, _session: object, envelope: Any,
                          address: str, options: list[str]) -> str:
        if self._refusing("MAIL"):
            return "451 4.3.2 Not accepting mail right now, try again later"
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_DATA(self, _server: object, _session: object, envelope: Any) -> str:
        if self._refusing("DATA"):
            return "451 4.3.0 Message not accepted right now, try again later"
        message_id = BytesHeaderParser().parsebytes(envelope.content)["Message-ID"]
        with self._lock:
            self.received.append(str(message_id).strip())
        return "250 Message accepted for delivery"

    def messages(self) -> list[str]:
        with self._lock:
            return list(self.received)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# ------------------------------------------------------------------------------ the daemon


def program() -> list[str]:
    found = Path(sys.executable).parent / "privacy-ledger"
    return [str(found)] if found.exists() else [sys.executable, "-c",
                                                "from daemon.cli import main; main()"]


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items()
             if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID",
                          "CREDENTIALS_DIRECTORY", "PRIVACY_LEDGER_CONFIG")}
    return {**clean, "PYTHONUNBUFFERED": "1", **(extra or {})}


class NotifySocket:
    """systemd's side of the notify protocol: which daemon (by pid, from the sender's
    credentials) said READY=1."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.socket.bind(b"\0" + name.encode())
        self.socket.settimeout(0.1)
        self._ready: set[int] = set()
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._receive, name="notify", daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        return "@" + self.name

    def _receive(self) -> None:
        room = socket.CMSG_SPACE(struct.calcsize("3i"))
        while not self._closed.is_set():
            try:
                data, ancillary, _flags, _addr = self.socket.recvmsg(4096, room)
            except (TimeoutError, OSError):
                continue
            pid = next((struct.unpack("3i", payload[:12])[0] for level, kind, payload
                        in ancillary if level == socket.SOL_SOCKET
                        and kind == socket.SCM_CREDENTIALS), None)
            if pid is not None and b"READY=1" in data.split(b"\n"):
                with self._lock:
                    self._ready.add(pid)

    def ready(self, pid: int) -> bool:
        with self._lock:
            return pid in self._ready

    def close(self) -> None:
        self._closed.set()
        self._thread.join(timeout=2)
        self.socket.close()


class Supervisor:
    """Runs the daemon as systemd would (Restart=always, RestartSec=1s) and kills it with
    SIGKILL at the planned moments."""

    def __init__(self, config: Path, log: Path, notify: NotifySocket) -> None:
        self.config = config
        self.log = log
        self.notify = notify
        self.process: subprocess.Popen[bytes] | None = None
        self.lock = threading.Lock()
        self.starts = 0
        self.kills = 0
        self.own_exits: list[int] = []

    def start(self) -> None:
        with self.log.open("ab") as out:
            out.write(f"--- start {self.starts + 1} at {utcnow().isoformat()}\n".encode())
            out.flush()
            self.process = subprocess.Popen(
                [*program(), "--config", str(self.config), "run"], cwd=REPO, stdout=out,
                stderr=subprocess.STDOUT, env=child_env({"NOTIFY_SOCKET": self.notify.address}),
                start_new_session=True)
        self.starts += 1

    def kill(self) -> None:
        with self.lock:
            if self.process is not None and self.process.poll() is None:
                self.process.send_signal(signal.SIGKILL)
                self.process.wait(30)
                self.kills += 1

    def reload(self) -> bool:
        """SIGHUP, only once the daemon said READY=1 (before, its handler is not set)."""
        with self.lock:
            process = self.process
            if process is None or process.poll() is not None or \
                    not self.notify.ready(process.pid):
                return False
            process.send_signal(signal.SIGHUP)
            return True

    def run(self, kill_at: list[float], stop: threading.Event) -> None:
        """Keep the daemon up until `stop`; kill it at each monotonic moment in `kill_at`."""
        planned = sorted(kill_at)
        self.start()
        while not stop.is_set():
            if planned and time.monotonic() >= planned[0]:
                planned.pop(0)
                self.kill()
                time.sleep(1.0)
                with self.lock:
                    self.start()
            with self.lock:
                code = self.process.poll() if self.process is not None else None
            if code is not None:
                self.own_exits.append(code)
                time.sleep(1.0)
                with self.lock:
                    self.start()
            stop.wait(0.05)

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM once the daemon is READY (as systemd stops a started unit), and wait
        (SIGKILL after `timeout`). Returns the exit status."""
        with self.lock:
            process = self.process
            if process is None:
                return None
            deadline = time.monotonic() + timeout
            while process.poll() is None and not self.notify.ready(process.pid) \
                    and time.monotonic() < deadline:
                time.sleep(0.05)
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    return process.wait(timeout)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(10)
                    return None
            return process.returncode


def cli(config: Path, *args: str, timeout: float, log: Path) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([*program(), "--config", str(config), *args], cwd=REPO,
                            capture_output=True, text=True, timeout=timeout, env=child_env(),
                            check=False)
    with log.open("a", encoding="utf-8") as out:
        out.write(f"--- {' '.join(args)} → {result.returncode}\n{result.stdout[-4000:]}"
                  f"{result.stderr[-4000:]}\n")
    return result


# ---------------------------------------------------------------------------- the config


def next_minute(zone: ZoneInfo) -> datetime:
    """The start of the next local minute (at least 5 s ahead)."""
    moment = datetime.now(zone) + timedelta(seconds=65)
    return moment.replace(second=0, microsecond=0)


class ConfigFile:
    """The estate's config plus report, SMTP and a schedule whose "night" can be moved;
    rewritten whole and renamed, so that a daemon starting never reads half a file."""

    def __init__(self, running: RunningEstate, directory: Path, smtp_port: int) -> None:
        self.path = directory / "config.toml"
        base = running.write_config(directory, extra=(
            f'\n[report]\nrecipients = ["{OWNER}"]\nsender = "{SENDER}"\n'
            f'\n[smtp]\nhost = "127.0.0.1"\nport = {smtp_port}\nsecurity = "none"\n'
            f'timeout = "5s"\n'))
        # Every source answers within the client timeout, or the request is retried.
        self.base = re.sub(r"(?m)^((?:url|base_url) = .*)$",
                           rf'\1\ntimeout = "{CLIENT_TIMEOUT}s"\n'
                           rf'max_response_size = "{RESPONSE_LIMIT_MB}MiB"',
                           base.read_text("utf-8"))

    def write(self, night: datetime) -> Path:
        text = (self.base + f'\n[schedule]\nsync_interval = "3s"\nsync_jitter = "0s"\n'
                f'outbox_interval = "2s"\naudit_at = "{night:%H:%M}"\n'
                f'full_sync = "{night:%a %H:%M}"\n')
        partial = self.path.with_name("config.toml.new")
        partial.write_text(text, encoding="utf-8")
        partial.replace(self.path)
        return self.path


# --------------------------------------------------------------------------- the estate


@dataclass
class Mutations:
    done: Counter[str] = field(default_factory=Counter)
    # Records whose upstream data (or whose dependants) the soak changed.
    touched: set[Key] = field(default_factory=set)
    touched_emails: set[str] = field(default_factory=set)
    # Records planted with a value no ledger column can hold: skipped, never held.
    unstorable: set[Key] = field(default_factory=set)


CARD_NOTE = "Please charge my card 4111 1111 1111 1111 exp 08/29, thanks"
STATUSES = ("pending", "processing", "on-hold", "completed", "cancelled", "refunded", "failed")


class Mutator:
    """Random changes to the estate, as shops, payments and newsletters make them. Every
    record of every other person planted with a known answer is left alone, so that what the
    audit must say of them stays known however long the soak runs."""

    def __init__(self, estate: Estate, rng: random.Random) -> None:
        self.estate = estate
        self.rng = rng
        self.log = Mutations()
        self._serial = 0
        people = sorted({p.email for p in estate.planted})
        spared = set(people[::2])
        self.protected: set[Key] = {(s, t, i) for s, t, i, email in estate_truth(estate)
                                    if email in spared}
        self.protected |= {(p.source, p.record_type, p.external_id) for p in estate.planted
                           if p.email in spared}

    def _free(self, source: str, record_type: str, ids: Iterable[Any]) -> list[Any]:
        return [i for i in ids if (source, record_type, str(i)) not in self.protected]

    def _email(self) -> str:
        self._serial += 1
        return f"soak.{self._serial}.{self.rng.randrange(10**6)}@example.org"

    def step(self) -> None:
        actions: list[tuple[float, Callable[[], str | None]]] = [
            (3, self.woo_add_customer), (5, self.woo_add_order), (4, self.woo_update_order),
            (1.5, self.woo_trash_order), (1.5, self.woo_restore_order),
            (1, self.woo_delete_order), (1, self.woo_anonymise),
            (1, self.woo_update_customer), (0.6, self.woo_delete_customer),
            (1, self.woo_last_active), (0.3, self.woo_card_note),
            (2, self.stripe_add_customer), (3, self.stripe_add_charge),
            (1, self.stripe_update_customer), (0.6, self.stripe_delete_customer),
            (1, self.stripe_refund), (3, self.mc_add_member), (1, self.mc_update_member),
            (1, self.mc_unsubscribe), (1, self.mc_archive), (1.5, self.mc_resubscribe),
            (0.6, self.mc_delete), (0.2, self.stripe_add_unstorable),
            (0.2, self.woo_add_unstorable_order),
        ]
        action = self.rng.choices([a for _, a in actions], [w for w, _ in actions])[0]
        done = action()
        if done:
            self.log.done[done] += 1

    # -- WooCommerce ------------------------------------------------------------------------
    def _shop(self) -> tuple[str, Any]:
        name = self.rng.choice(sorted(self.estate.shops))
        return f"woo:{name}", self.estate.shops[name]

    def _touch(self, source: str, record_type: str, ident: object,
               email: str | None = None) -> None:
        self.log.touched.add((source, record_type, str(ident)))
        if email:
            self.log.touched_emails.add(normalise_email(email) or email)

    def woo_add_customer(self) -> str:
        source, shop = self._shop()
        email = self._email()
        ident = shop.add_customer(email=email, first_name="Soak", last_name="Tester",
                                  billing={"email": email, "first_name": "Soak",
                                           "phone": "+44 7700 900123"})
        self._touch(source, "customer", ident, email)
        return "woo add customer"

    def woo_add_order(self, note: str = "") -> str:
        source, shop = self._shop()
        with shop.lock:
            customers = self._free(source, "customer", sorted(shop.customers))
        customer_id, email = 0, self._email()
        if customers and self.rng.random() < 0.6:
            customer_id = self.rng.choice(customers)
            with shop.lock:
                record = shop.customers.get(customer_id)
                email = (record or {}).get("email") or email
            self._touch(source, "customer", customer_id, email)
        ident = shop.add_order(
            customer_id=customer_id, status=self.rng.choice(("pending", "processing",
                                                             "completed", "on-hold")),
            billing={"email": email, "first_name": "Soak", "last_name": "Buyer",
                     "address_1": "1 Soak Street", "city": "Leeds", "postcode": "LS1 4AP"},
            customer_ip_address="203.0.113.77", customer_user_agent="Mozilla/5.0 (soak)",
            payment_method="stripe", payment_method_title="Card", customer_note=note)
        self._touch(source, "order", ident, email)
        return "woo add order" + (" with a card number in its note" if note else "")

    def woo_card_note(self) -> str:
        return self.woo_add_order(note=CARD_NOTE)

    def woo_add_unstorable_order(self) -> str:
        source, shop = self._shop()
        # A plugin's custom status: the REST API returns whatever slug it registered.
        ident = shop.add_order(
            customer_id=0, status="awaiting-supplier-confirmation-of-stock-level",
            billing={"email": self._email(), "first_name": "Soak"},
            payment_method="stripe", payment_method_title="Card")
        self.log.unstorable.add((source, "order", str(ident)))
        # Left alone from now on: a status changed by another mutation would be storable.
        self.protected.add((source, "order", str(ident)))
        return "woo add order with a 45-character status"

    def _order(self, source: str, shop: Any) -> int | None:
        with shop.lock:
            orders = self._free(source, "order", sorted(shop.orders))
        return self.rng.choice(orders) if orders else None

    def woo_update_order(self) -> str | None:
        source, shop = self._shop()
        ident = self._order(source, shop)
        if ident is None:
            return None
        fields: dict[str, Any] = {"status": self.rng.choice(STATUSES)}
        if self.rng.random() < 0.2:
            fields["customer_note"] = ""
        shop.update_order(ident, **fields)
        self._touch(source, "order", ident)
        return "woo update order"

    def woo_trash_order(self) -> str | None:
        source, shop = self._shop()
        ident = self._order(source, shop)
        if ident is None:
            return None
        shop.trash_order(ident)
        self._touch(source, "order", ident)
        return "woo trash order"

    def woo_restore_order(self) -> str | None:
        source, shop = self._shop()
        with shop.lock:
            trashed = self._free(source, "order", sorted(
                i for i, o in shop.orders.items() if o["status"] == "trash"))
        if not trashed:
            return None
        ident = self.rng.choice(trashed)
        shop.update_order(ident, status=self.rng.choice(("processing", "completed",
                                                         "on-hold")))
        self._touch(source, "order", ident)
        return "woo restore order from the trash"

    def woo_delete_order(self) -> str | None:
        source, shop = self._shop()
        ident = self._order(source, shop)
        if ident is None:
            return None
        shop.delete_order(ident)
        self._touch(source, "order", ident)
        return "woo delete order"

    def woo_anonymise(self) -> str | None:
        source, shop = self._shop()
        ident = self._order(source, shop)
        if ident is None:
            return None
        shop.anonymise_order(ident)
        self._touch(source, "order", ident)
        return "woo anonymise order"

    def _customer(self, source: str, shop: Any) -> int | None:
        with shop.lock:
            customers = self._free(source, "customer", sorted(shop.customers))
        return self.rng.choice(customers) if customers else None

    def woo_update_customer(self) -> str | None:
        source, shop = self._shop()
        ident = self._customer(source, shop)
        if ident is None:
            return None
        shop.update_customer(ident, first_name=self.rng.choice(("Ann", "Bo", "Cy")))
        self._touch(source, "customer", ident)
        return "woo update customer"

    def woo_delete_customer(self) -> str | None:
        source, shop = self._shop()
        ident = self._customer(source, shop)
        if ident is None:
            return None
        with shop.lock:
            orders = [o for o, data in shop.orders.items() if data["customer_id"] == ident]
        shop.delete_customer(ident)
        self._touch(source, "customer", ident)
        for order in orders:
            self._touch(source, "order", order)
        return "woo delete customer"

    def woo_last_active(self) -> str | None:
        source, shop = self._shop()
        ident = self._customer(source, shop)
        if ident is None:
            return None
        shop.set_last_active(ident, utcnow())
        self._touch(source, "customer", ident)
        return "woo customer visits"

    # -- Stripe -----------------------------------------------------------------------------
    def stripe_add_customer(self) -> str:
        email = self._email()
        ident = self.estate.stripe.add_customer(email=email, name="Soak Payer")
        self._touch("stripe", "customer", ident, email)
        return "stripe add customer"

    def stripe_add_unstorable(self) -> str:
        # Stripe takes emails up to 512 characters; the ledger's column holds 320.
        email = f"soak.{self.rng.randrange(10**6)}@{'x' * 60}.{'y' * 60}.{'z' * 60}.{'w' * 60}" \
                f".{'v' * 60}.example.org"
        ident = self.estate.stripe.add_customer(email=email, name="Soak Long")
        self.log.unstorable.add(("stripe", "customer", ident))
        self.protected.add(("stripe", "customer", ident))
        return "stripe add customer with a 340-character email"

    def stripe_add_charge(self) -> str:
        stripe = self.estate.stripe
        customers = self._free("stripe", "customer", stripe.customer_ids())
        customer = self.rng.choice(customers) if customers and self.rng.random() < 0.7 \
            else None
        email = (stripe.customer(customer) or {}).get("email") if customer else None
        email = email or self._email()
        ident = stripe.add_charge(customer=customer, amount=self.rng.randrange(500, 9000),
                                  billing_details={"email": email, "name": "Soak Payer"},
                                  receipt_email=email)
        if customer:
            self._touch("stripe", "customer", customer, email)
        self._touch("stripe", "charge", ident, email)
        return "stripe add charge"

    def stripe_update_customer(self) -> str | None:
        customers = self._free("stripe", "customer", self.estate.stripe.customer_ids())
        if not customers:
            return None
        ident = self.rng.choice(customers)
        self.estate.stripe.update_customer(ident, name=self.rng.choice(("A B", "C D")))
        self._touch("stripe", "customer", ident)
        return "stripe update customer"

    def stripe_delete_customer(self) -> str | None:
        customers = self._free("stripe", "customer", self.estate.stripe.customer_ids())
        if not customers:
            return None
        ident = self.rng.choice(customers)
        self.estate.stripe.delete_customer(ident)
        self._touch("stripe", "customer", ident)
        return "stripe delete customer"

    def stripe_refund(self) -> str | None:
        charges = self._free("stripe", "charge", self.estate.stripe.charge_ids())
        if not charges:
            return None
        ident = self.rng.choice(charges)
        amount = (self.estate.stripe.charge(ident) or {}).get("amount", 1000)
        self.estate.stripe.update_charge(ident, refunded=True, amount_refunded=amount)
        self._touch("stripe", "charge", ident)
        return "stripe refund charge"

    # -- Mailchimp --------------------------------------------------------------------------
    def _audience(self) -> str:
        with self.estate.mailchimp.lock:
            return self.rng.choice(sorted(self.estate.mailchimp.audiences))

    def _member(self, audience: str, statuses: tuple[str, ...] | None = None) -> str | None:
        twin = self.estate.mailchimp
        with twin.lock:
            members = self._free(f"mailchimp:{audience}", "member", sorted(
                m.id for m in twin.audiences[audience].members.values()
                if statuses is None or m.status in statuses))
        return self.rng.choice(members) if members else None

    def mc_add_member(self) -> str:
        audience = self._audience()
        email = self._email()
        ident = self.estate.mailchimp.add_member(audience, email, first_name="Soak")
        self._touch(f"mailchimp:{audience}", "member", ident, email)
        return "mailchimp add member"

    def mc_update_member(self) -> str | None:
        audience = self._audience()
        ident = self._member(audience)
        if ident is None:
            return None
        self.estate.mailchimp.update_member(audience, ident, first_name="Changed")
        self._touch(f"mailchimp:{audience}", "member", ident)
        return "mailchimp update member"

    def mc_unsubscribe(self) -> str | None:
        audience = self._audience()
        ident = self._member(audience, ("subscribed", "pending"))
        if ident is None:
            return None
        self.estate.mailchimp.unsubscribe(audience, ident)
        self._touch(f"mailchimp:{audience}", "member", ident)
        return "mailchimp unsubscribe"

    def mc_archive(self) -> str | None:
        audience = self._audience()
        ident = self._member(audience)
        if ident is None:
            return None
        self.estate.mailchimp.archive(audience, ident)
        self._touch(f"mailchimp:{audience}", "member", ident)
        return "mailchimp archive"

    def mc_resubscribe(self) -> str | None:
        audience = self._audience()
        ident = self._member(audience, ("unsubscribed", "cleaned", "archived"))
        if ident is None:
            return None
        self.estate.mailchimp.update_member(audience, ident, status="subscribed")
        self._touch(f"mailchimp:{audience}", "member", ident)
        return "mailchimp resubscribe"

    def mc_delete(self) -> str | None:
        audience = self._audience()
        ident = self._member(audience)
        if ident is None:
            return None
        self.estate.mailchimp.delete_permanent(audience, ident)
        self._touch(f"mailchimp:{audience}", "member", ident)
        return "mailchimp delete permanently"


# ----------------------------------------------------------------------------- the faults


class Chaos:
    """Faults at random into random twins, and SMTP refusing for a while."""

    def __init__(self, running: RunningEstate, sink: Sink, rng: random.Random) -> None:
        self.twins = {name: server.twin for name, server in running.servers.items()}
        self.sink = sink
        self.rng = rng
        self.injected: Counter[str] = Counter()

    def inject(self) -> None:
        kind = self.rng.choice(FAULT_KINDS)
        self.injected[kind] += 1
        if kind == "smtp":
            self.sink.refuse(self.rng.uniform(5, 25), self.rng.choice(("MAIL", "DATA")))
            return
        twin = self.twins[self.rng.choice(sorted(self.twins))]
        times = self.rng.randint(1, 3)
        if kind in ("429", "500", "502", "503"):
            twin.faults.inject("status", times=times, status=int(kind),
                               retry_after="1" if kind == "429" else None)
        elif kind == "401":
            twin.faults.inject("status", times=10**6, status=401,
                               lasting=self.rng.uniform(3, 10))
        elif kind == "timeout":
            twin.faults.inject("hang", times=1, seconds=CLIENT_TIMEOUT + 2)
        elif kind == "trickle":
            # 64 bytes a second: a page takes minutes, the request's deadline a few seconds.
            twin.faults.inject("trickle", times=1, size=64, seconds=1.0)
        elif kind == "oversize":
            twin.faults.inject("oversize", times=1, size=OVERSIZE_BYTES)
        elif kind == "bomb":
            twin.faults.inject("bomb", times=1, size=BOMB_BYTES)
        elif kind == "endless":
            self._endless(twin, True)
            calm = threading.Timer(self.rng.uniform(4, 12), self._endless, args=(twin, False))
            calm.daemon = True
            calm.start()
        elif kind == "slow":
            # Every answer late for a while: long listings, wide windows for races.
            twin.faults.latency = self.rng.uniform(0.05, 0.25)
            calm = threading.Timer(self.rng.uniform(5, 20), self._calm, args=(twin,))
            calm.daemon = True
            calm.start()
        else:
            twin.faults.inject(kind, times=times)

    def _calm(self, twin: Any) -> None:
        twin.faults.latency = 0.0

    def _endless(self, twin: Any, on: bool) -> None:
        """Each twin's own knob for listings that never end (None: truthful again)."""
        if hasattr(twin, "stick_paging"):
            for resource in ("customers", "charges", "events"):
                twin.stick_paging(resource, self.rng.choice(("ignore_cursor", "more_forever"))
                                  if on else None)
        elif hasattr(twin, "set_listing_fault"):
            twin.set_listing_fault("repeat" if on else None)
        else:
            with twin.lock:
                twin.paging_fault = self.rng.choice(("repeat", "alternate", "growing")) \
                    if on else None
                twin.paging_fault_pages = 200

    def heal(self) -> None:
        for twin in self.twins.values():
            twin.faults.clear()
            self._endless(twin, False)
        self.sink.heal()

    def hits(self) -> Counter[str]:
        """Requests the twins actually answered with a fault, by kind."""
        total: Counter[str] = Counter()
        for twin in self.twins.values():
            for label, count in twin.faults.injected.items():
                kind = label.removeprefix("status:")
                total["timeout" if kind == "hang" else kind] += count
            # A listing that never ends hits no single request: its windows are counted.
        total["endless"] = self.injected["endless"]
        return total


# ------------------------------------------------------------------------ ledger checks


def live_keys(truth: set[tuple[str, str, str, str | None]]) -> set[Key]:
    return {(source, record_type, ident) for source, record_type, ident, _ in truth}


def gone_keys(ledger: Ledger) -> set[Key]:
    query = (select(Source.name, Holding.record_type, Holding.external_id)
             .join(Source, Source.id == Holding.source_id)
             .where(Holding.gone_at.is_not(None)))
    with ledger.sessions() as session:
        return {(s, t, i) for s, t, i in session.execute(query).tuples()}


def duplicated(ledger: Ledger) -> int:
    query = (select(Holding.source_id, Holding.record_type, Holding.external_id)
             .group_by(Holding.source_id, Holding.record_type, Holding.external_id)
             .having(func.count(Holding.id) > 1))
    with ledger.sessions() as session:
        return len(session.execute(query).all())


class Sampler:
    """Reads the daemon's ledger while it runs: holdings marked gone whose record is still
    upstream. The ledger is read before the twins, so a record deleted in between is never
    taken for one wrongly gone."""

    def __init__(self, url: str, estate: Estate) -> None:
        self.url = url
        self.estate = estate
        self.samples = 0
        self.wrongly_gone: set[Key] = set()
        self._ledger: Ledger | None = None

    def sample(self) -> None:
        try:
            if self._ledger is None:
                if not Path(make_url(self.url).database or "").exists():
                    return
                self._ledger = Ledger.open(self.url, migrate_schema=False)
            gone = gone_keys(self._ledger)
        except Exception:  # noqa: BLE001 - not created yet, or busy: sample next time
            return
        self.wrongly_gone |= gone & live_keys(estate_truth(self.estate))
        self.samples += 1

    def close(self) -> None:
        if self._ledger is not None:
            self._ledger.close()


# ----------------------------------------------------------------- expected findings


_DIGIT_RUN = re.compile(r"\d(?:[ -]?\d)*")


def _luhn(digits: str) -> bool:
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = int(char) * (2 if index % 2 else 1)
        total += value - 9 if value > 9 else value
    return total % 10 == 0


def has_card_number(value: object) -> bool:
    """Any string in `value` holding a run of 13–19 digits (spaces or dashes between) that
    is Luhn-valid and not one digit repeated."""
    if isinstance(value, dict):
        return any(has_card_number(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(has_card_number(v) for v in value)
    if not isinstance(value, str):
        return False
    for match in _DIGIT_RUN.finditer(value):
        digits = re.sub(r"[ -]", "", match.group(0))
        if 13 <= len(digits) <= 19 and len(set(digits)) > 1 and _luhn(digits):
            return True
    return False


def _gmt(text: str | None) -> datetime | None:
    if not text:
        return None
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def expected_findings(estate: Estate, policy: Any, now: datetime) -> dict[str, set[Key]]:
    """The plain rules, applied in plain Python to the twins' raw records."""
    found: dict[str, set[Key]] = {rule: set() for rule in EXACT_RULES}
    completed = {"completed": policy.completed_orders, "refunded": policy.refunded_orders}
    unpaid = {"pending": policy.pending_orders, "failed": policy.failed_orders,
              "cancelled": policy.cancelled_orders, "on-hold": policy.on_hold_orders,
              "trash": policy.trashed_orders}
    for name, shop in estate.shops.items():
        source = f"woo:{name}"
        with shop.lock:
            orders = {i: dict(o) for i, o in shop.orders.items()}
            customers = {i: dict(c) for i, c in shop.customers.items()}
        for ident, order in orders.items():
            key = (source, "order", str(ident))
            meta = {m["key"]: m["value"] for m in order.get("meta_data", [])}
            anonymised = meta.get("_anonymized") == "yes"
            created = _gmt(order["date_created_gmt"])
            status = order["status"]
            assert created is not None  # noqa: S101 - every order has a creation date
            if status in completed and not anonymised and created < now - completed[status]:
                found["order-past-retention"].add(key)
            if status in unpaid and not anonymised and created < now - unpaid[status]:
                found["unpaid-order-past-retention"].add(key)
            item_meta = [m.get("value") for item in order.get("line_items", [])
                         for m in item.get("meta_data", [])]
            if has_card_number([order.get("customer_note"), list(meta.values()), item_meta,
                                order.get("billing"), order.get("shipping")]):
                found["card-number-exposed"].add(key)
        for ident, customer in customers.items():
            meta_values = [m["value"] for m in customer.get("meta_data", [])]
            if has_card_number([meta_values, customer.get("billing"),
                                customer.get("shipping")]):
                found["card-number-exposed"].add((source, "customer", str(ident)))
    stripe = estate.stripe
    threshold = int((now - policy.stripe_customers).timestamp())
    customers = {cid: stripe.customer(cid) or {} for cid in stripe.customer_ids()}
    charges = [stripe.charge(ch) or {} for ch in stripe.charge_ids()]
    recent_people: set[str] = set()
    recent_customers: set[str] = set()
    for charge in charges:
        if charge.get("created", 0) < threshold:
            continue
        owner = charge.get("customer")
        if owner:
            recent_customers.add(owner)
        person = normalise_email((charge.get("billing_details") or {}).get("email")) \
            or normalise_email(charge.get("receipt_email")) \
            or normalise_email(customers.get(owner or "", {}).get("email"))
        if person:
            recent_people.add(person)
    for cid, customer in customers.items():
        email = normalise_email(customer.get("email"))
        if customer.get("created", 0) < threshold and cid not in recent_customers \
                and (email is None or email not in recent_people):
            found["stripe-customer-inactive"].add(("stripe", "customer", cid))
    twin = estate.mailchimp
    with twin.lock:
        for audience in twin.audiences.values():
            for member in audience.members.values():
                changed = _gmt(member.last_changed)
                if member.status in ("unsubscribed", "cleaned", "archived") and changed \
                        and changed < now - policy.mailchimp_contacts:
                    found["mailchimp-contact-retained"].add(
                        (f"mailchimp:{audience.id}", "member", member.id))
    return found


# --------------------------------------------------------------------------- the report


@dataclass
class Verdict:
    lines: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def line(self, text: str) -> None:
        self.lines.append(text)

    def check(self, ok: bool, problem: str) -> None:
        if not ok:
            self.problems.append(problem)


def _sample(keys: set[Key] | set[str], count: int = 5) -> str:
    shown = sorted(keys)[:count]
    return ", ".join("/".join(k) if isinstance(k, tuple) else k for k in shown) + (
        ", …" if len(keys) > count else "")


def compare_holdings(verdict: Verdict, ledger: Ledger, estate: Estate,
                     sampler: Sampler, gone_before: set[Key], mutations: Mutations) -> None:
    unstorable = mutations.unstorable
    truth = {row for row in estate_truth(estate) if row[:3] not in unstorable}
    held = ledger_truth(ledger)
    truth_keys, held_keys = live_keys(truth), live_keys(held)
    held_unstorable = unstorable & held_keys
    verdict.line(f"records no column can hold: {len(unstorable)} planted, "
                 f"{len(held_unstorable)} held")
    verdict.check(not held_unstorable, f"held although unstorable: {_sample(held_unstorable)}")
    missing, extra = truth_keys - held_keys, held_keys - truth_keys
    truth_email = {(s, t, i): e for s, t, i, e in truth}
    wrong_person = {(s, t, i) for s, t, i, e in held
                    if (s, t, i) in truth_email and truth_email[(s, t, i)] != e}
    wrongly_gone = sampler.wrongly_gone | (gone_before & truth_keys) | \
        (gone_keys(ledger) & truth_keys)
    twice = duplicated(ledger)
    verdict.line(f"holdings vs ground truth: {len(truth_keys)} upstream, {len(held_keys)} held "
                 f"— {len(missing)} missing, {len(extra)} extra, {len(wrong_person)} held "
                 f"under another person, {len(wrongly_gone)} wrongly gone, {twice} duplicated")
    verdict.line(f"  (missing/extra after the final `sync --full`; wrongly gone: sampled "
                 f"{sampler.samples} times while the daemon ran, on its ledger before the "
                 f"final sync, and after it)")
    verdict.check(not missing, f"missing: {_sample(missing)}")
    verdict.check(not extra, f"extra: {_sample(extra)}")
    verdict.check(not wrong_person, f"held under another person: {_sample(wrong_person)}")
    verdict.check(not wrongly_gone, f"wrongly gone: {_sample(wrongly_gone)}")
    verdict.check(twice == 0, f"{twice} holdings duplicated")


def compare_findings(verdict: Verdict, findings: list[dict[str, Any]], estate: Estate,
                     settings: Settings, mutations: Mutations, now: datetime) -> None:
    by_rule: dict[str, set[Key]] = {}
    for item in findings:
        key = (item["source"], item.get("record_type") or "", item.get("external_id") or "")
        by_rule.setdefault(item["rule"], set()).add(key)
    expected = expected_findings(estate, settings.retention, now)
    parts = []
    for rule in EXACT_RULES:
        got, want = by_rule.get(rule, set()), expected[rule]
        parts.append(f"{rule} {len(got)}/{len(want)}")
        verdict.check(got == want, f"{rule}: {len(want - got)} expected but not found "
                                   f"({_sample(want - got)}), {len(got - want)} found but not "
                                   f"expected ({_sample(got - want)})")
    verdict.line("findings vs rules on ground truth (found/expected, computed here from the "
                 "twins' raw records): " + ", ".join(parts))
    upstream = live_keys(estate_truth(estate))
    phantom = {key for rule, keys in by_rule.items() if rule != "sync-stale"
               for key in keys if key not in upstream}
    emails_touched = mutations.touched_emails
    untouched = [p for p in estate.planted
                 if (p.source, p.record_type, p.external_id) not in mutations.touched
                 and p.email not in emails_touched
                 and (p.source, p.record_type, p.external_id) in upstream]
    breaches = [p for p in untouched if p.rule is not None]
    clean = [p for p in untouched if p.rule is None]
    missed = {(p.source, p.record_type, p.external_id) for p in breaches
              if (p.source, p.record_type, p.external_id) not in by_rule.get(p.rule or "", set())}
    flagged = {(p.source, p.record_type, p.external_id) for p in clean
               if any((p.source, p.record_type, p.external_id) in keys
                      for keys in by_rule.values())}
    other = sorted(set(by_rule) - set(EXACT_RULES))
    counts = ", ".join(f"{rule} {len(by_rule[rule])}" for rule in other) or "none"
    verdict.line(f"  other rules (not recomputed: {counts}): {len(phantom)} findings on a "
                 f"record not upstream; planted breaches untouched by the soak found "
                 f"{len(breaches) - len(missed)}/{len(breaches)}; records planted clean "
                 f"untouched flagged {len(flagged)}/{len(clean)}")
    verdict.check(not phantom, f"findings on records not upstream: {_sample(phantom)}")
    verdict.check(not missed, f"planted breaches not found: {_sample(missed)}")
    verdict.check(not flagged, f"records planted clean flagged: {_sample(flagged)}")


def compare_emails(verdict: Verdict, ledger: Ledger, sink: Sink, before_final: int) -> None:
    """Every outbox row's Message-ID must reach the SMTP server exactly once."""
    with ledger.sessions() as session:
        rows = session.execute(select(OutboxMessage.message_id, OutboxMessage.status)).all()
        nightly = {json.loads(detail).get("message_id") for detail in session.scalars(
            select(AuditLogEntry.detail).where(AuditLogEntry.action == "nightly"))}
    expected = Counter(message_id for message_id, _ in rows)
    received = Counter(sink.messages())
    lost = {m for m in expected if received[m] == 0}
    twice = {m for m, n in received.items() if n > 1}
    unknown = {m for m in received if m not in expected}
    queued_twice = {m for m, n in expected.items() if n > 1}
    unsent = sum(1 for _, status in rows if status != "sent")
    by_daemon = sum(1 for m in expected if m in nightly)
    final = len(sink.messages()) - before_final
    verdict.line(f"emails: {len(rows)} expected (outbox rows: {by_daemon} queued by the "
                 f"daemon's nightly job, {len(rows) - by_daemon} by `report --send`), "
                 f"{sum(received.values())} delivered ({final} of them in the final pass) — "
                 f"{len(lost)} lost, {len(twice)} duplicated, {len(unknown)} not in the "
                 f"outbox, {unsent} rows not marked sent")
    verdict.check(not lost, f"emails lost: {_sample(lost)}")
    verdict.check(not twice, f"emails duplicated: {_sample(twice)}")
    verdict.check(not unknown, f"emails delivered but not in the outbox: {_sample(unknown)}")
    verdict.check(not queued_twice, f"Message-IDs queued twice: {_sample(queued_twice)}")
    verdict.check(unsent == 0, f"{unsent} outbox rows not marked sent")


def internal_errors(verdict: Verdict, ledger: Ledger) -> None:
    """Sync runs that ended on an internal error (a bug, not an upstream failure)."""
    with ledger.sessions() as session:
        errors = Counter(session.scalars(select(SyncRun.error).where(
            SyncRun.error.like("internal error%"))))
    verdict.line(f"internal errors in sync runs: {sum(errors.values())}"
                 + (f" ({', '.join(f'{e} ×{n}' for e, n in errors.items())})" if errors
                    else ""))
    verdict.check(not errors, f"sync runs ended on an internal error: {dict(errors)}")


# ------------------------------------------------------------------------------- the run


@dataclass
class Options:
    minutes: float
    kills: int
    seed: int
    people: int
    workdir: Path | None
    keep: bool


def _every(stop: threading.Event, low: float, high: float, rng: random.Random,
           work: Callable[[], None]) -> None:
    while not stop.wait(rng.uniform(low, high)):
        work()


@contextlib.contextmanager
def threads(stop: threading.Event) -> Iterator[list[threading.Thread]]:
    started: list[threading.Thread] = []
    try:
        yield started
    finally:
        stop.set()
        for thread in started:
            thread.join(timeout=180)


def kill_moments(start: float, seconds: float, kills: int, rng: random.Random) -> list[float]:
    """One kill at a random moment in each of `kills` equal slots (never in the first 3 s)."""
    slot = seconds / max(kills, 1)
    return [start + max(3.0, slot * i + rng.uniform(0.1, 0.95) * slot) for i in range(kills)]


@dataclass
class World:
    """What the soak runs and watches."""

    estate: Estate
    running: RunningEstate
    sink: Sink
    config: ConfigFile
    settings: Settings
    supervisor: Supervisor
    mutator: Mutator
    chaos: Chaos
    sampler: Sampler
    cli_log: Path
    sends: Counter[str] = field(default_factory=Counter)
    nights: Counter[str] = field(default_factory=Counter)


def attack(world: World, options: Options, rng: random.Random) -> None:
    """The timed part: every kind of chaos at once until the time is up."""
    seconds = options.minutes * 60
    zone = ZoneInfo(ZONE)
    stop = threading.Event()
    started = time.monotonic()
    end = started + seconds

    def send_report() -> None:
        try:
            result = cli(world.config.path, "report", "--send", timeout=120,
                         log=world.cli_log)
        except subprocess.TimeoutExpired:
            world.sends["timed out"] += 1
            return
        world.sends[f"exit {result.returncode}"] += 1

    def new_night() -> None:
        world.config.write(next_minute(zone))
        world.nights["nights"] += 1
        world.nights["SIGHUP"] += world.supervisor.reload()

    kills = kill_moments(started, seconds, options.kills,
                         random.Random(rng.random()))  # noqa: S311 - chaos, not security
    periodic: list[tuple[str, float, float, Callable[[], None]]] = [
        ("mutator", 0.05, 0.4, world.mutator.step),
        ("chaos", 1.0, 4.0, world.chaos.inject),
        ("nights", 60.0, 60.0, new_night),
        ("reports", 10.0, 30.0, send_report),
        ("sampler", 0.5, 1.0, world.sampler.sample),
    ]
    plan: list[tuple[str, Callable[..., None], tuple[Any, ...]]] = [
        ("supervisor", world.supervisor.run, (kills, stop))]
    for name, low, high, work in periodic:
        own = random.Random(rng.random())  # noqa: S311 - chaos, not security
        plan.append((name, _every, (stop, low, high, own, work)))
    with threads(stop) as workers:
        for name, target, args in plan:
            thread = threading.Thread(target=target, args=args, name=name, daemon=True)
            thread.start()
            workers.append(thread)
        while time.monotonic() < end:
            time.sleep(min(10.0, max(0.0, end - time.monotonic())))
            _say(f"  … {max(0.0, end - time.monotonic()):4.0f} s left: "
                 f"{world.supervisor.kills} kills, {sum(world.chaos.injected.values())} "
                 f"faults, {sum(world.mutator.log.done.values())} changes, "
                 f"{len(world.sink.messages())} emails received")


def settle(world: World, options: Options, verdict: Verdict) -> None:
    """The end: heal, stop the daemon, one clean full sync and audit, a last delivery pass
    with the clock a day ahead, then every comparison."""
    world.chaos.heal()
    code = world.supervisor.stop()
    supervisor, chaos = world.supervisor, world.chaos
    own = supervisor.own_exits
    verdict.line(f"kills survived: {supervisor.kills} (daemon started {supervisor.starts} "
                 f"times; {len(own)} exits on its own{': ' + str(own) if own else ''}; "
                 f"stopped at the end with SIGTERM: exit {code})")
    verdict.check(supervisor.kills >= options.kills,
                  f"only {supervisor.kills} kills of {options.kills} planned")
    verdict.check(not own, f"the daemon exited on its own: {own}")
    verdict.check(code == 0, f"the daemon did not stop cleanly on SIGTERM (exit {code})")
    hits = chaos.hits()
    verdict.line("faults injected by kind (injections/requests hit): "
                 + ", ".join(f"{k} {chaos.injected[k]}/{hits[k]}" for k in FAULT_KINDS
                             if k not in ("slow", "smtp"))
                 + f", slow upstream {chaos.injected['slow']} windows"
                 + f", smtp refusing {chaos.injected['smtp']}/{world.sink.refused}")
    done = world.mutator.log.done
    verdict.line(f"estate changes: {sum(done.values())} ("
                 + ", ".join(f"{k} {n}" for k, n in sorted(done.items())) + ")")
    verdict.line(f"nights: {world.nights['nights']} (SIGHUP sent {world.nights['SIGHUP']}); "
                 f"report --send runs: {sum(world.sends.values())} ("
                 + ", ".join(f"{k}: {n}" for k, n in sorted(world.sends.items())) + ")")
    url = world.settings.ledger.database_url
    # With the trail's seal, as the daemon: its entries are keyed, and so are ours.
    ledger = Ledger.open(url, migrate_schema=False, seal=trail.seal_for(world.settings.ledger))
    try:
        gone_before = gone_keys(ledger)
        sync = cli(world.config.path, "sync", "--full", timeout=600, log=world.cli_log)
        verdict.check(sync.returncode == 0, f"the final sync --full failed: "
                                            f"{(sync.stdout + sync.stderr)[-500:]}")
        audit_at = utcnow()
        audit = cli(world.config.path, "audit", "--json", timeout=600, log=world.cli_log)
        verdict.check(audit.returncode == 0, f"the final audit failed: {audit.stderr[-500:]}")
        findings = json.loads(audit.stdout) if audit.returncode == 0 else []
        before_final = len(world.sink.messages())
        assert world.settings.smtp is not None  # noqa: S101 - ConfigFile writes [smtp]
        final = mail.deliver_pending(ledger, world.settings.smtp,
                                     now=utcnow() + timedelta(days=1))
        verdict.check(final.failed == 0, f"the final delivery pass failed: "
                                         f"{final.errors[:3]}")
        compare_holdings(verdict, ledger, world.estate, world.sampler, gone_before,
                         world.mutator.log)
        compare_findings(verdict, findings, world.estate, world.settings, world.mutator.log,
                         audit_at)
        compare_emails(verdict, ledger, world.sink, before_final)
        internal_errors(verdict, ledger)
        checked = trail.verify(ledger)
        verdict.line(f"audit trail: {'verifies' if checked.ok else 'BROKEN'} "
                     f"({checked.entries} entries)")
        verdict.check(checked.ok, f"audit trail: {checked.problem}")
    finally:
        ledger.close()


def soak(options: Options) -> int:
    rng = random.Random(options.seed)  # noqa: S311 - chaos, not security
    workdir = options.workdir or Path(tempfile.mkdtemp(prefix="privacy-ledger-soak-"))
    workdir.mkdir(parents=True, exist_ok=True)
    estate = build_estate(EstateSpec(seed=options.seed, people=options.people,
                                     now=utcnow().replace(microsecond=0)))
    sink = Sink()
    smtp_port = free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=smtp_port)
    notify = NotifySocket(f"privacy-ledger-soak-{os.getpid()}-{options.seed}")
    verdict = Verdict()
    _say(f"privacy-ledger soak: {options.minutes:g} min, {options.kills} kills planned, seed "
         f"{options.seed}, {options.people} people, SQLite ledger; work dir {workdir}")
    controller.start()
    sampler: Sampler | None = None
    # This process's own log lines (the last delivery pass) go to a file, not the figures.
    own_log = (workdir / "soak.log").open("a", encoding="utf-8")
    logs.configure(own_log, json=True)
    try:
        with RunningEstate(estate) as running:
            config = ConfigFile(running, workdir, smtp_port)
            config.write(datetime.now(ZoneInfo(ZONE)).replace(second=0, microsecond=0))
            settings = load_settings(config.path)
            sampler = Sampler(settings.ledger.database_url, estate)
            world = World(
                estate=estate, running=running, sink=sink, config=config, settings=settings,
                supervisor=Supervisor(config.path, workdir / "daemon.log", notify),
                mutator=Mutator(estate, random.Random(rng.random())),  # noqa: S311
                chaos=Chaos(running, sink, random.Random(rng.random())),  # noqa: S311
                sampler=sampler, cli_log=workdir / "cli.log")
            try:
                attack(world, options, rng)
            finally:
                world.chaos.heal()
                world.supervisor.stop()
            settle(world, options, verdict)
    finally:
        if sampler is not None:
            sampler.close()
        controller.stop()
        notify.close()
        own_log.close()
    for text in verdict.lines:
        _say(text)
    if verdict.problems:
        _say("MISMATCH:")
        for problem in verdict.problems:
            _say(f"  - {problem}")
        _say(f"logs kept in {workdir}")
        return 1
    _say("result: PASS — nothing lost")
    if not options.keep and options.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0,
                        help="How long the estate is attacked (default 10).")
    parser.add_argument("--kills", type=int, default=None,
                        help="SIGKILLs of the daemon (default: 2.4 a minute, at least 3).")
    parser.add_argument("--seed", type=int, default=7, help="Seed of the estate and chaos.")
    parser.add_argument("--people", type=int, default=150, help="People in the estate.")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="Keep the config, ledger and logs here (default: a temporary "
                             "directory, removed when the soak passes).")
    parser.add_argument("--keep", action="store_true",
                        help="Keep the temporary directory even when the soak passes.")
    args = parser.parse_args(argv)
    kills = args.kills if args.kills is not None else max(3, round(args.minutes * 2.4))
    return soak(Options(minutes=args.minutes, kills=kills, seed=args.seed, people=args.people,
                        workdir=args.workdir, keep=args.keep))


if __name__ == "__main__":
    sys.exit(main())
