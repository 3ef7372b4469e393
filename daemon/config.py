"""The TOML config file → validated, typed settings, once, at the edge.

Every problem in a file is reported at once, each naming the file and the key
(`config.toml: woocommerce[allmyink].consumer_key: …`). Secrets are written as references
(`env:NAME`, `file:/path`, `credential:NAME`) and resolved here only, when the command that
uses them asks (`read_secrets`): the others check a reference's form and leave it unread.
Inside the program a secret is a `SecretStr` whose repr is `**********`.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from connectors import http
from connectors import mailchimp as mailchimp_connector
from connectors import stripe as stripe_connector
from connectors import woocommerce as woocommerce_connector
from daemon import quiet
from vocabulary import format_duration, parse_duration


class ConfigError(Exception):
    """A config that cannot be used, with every problem found, each in one line."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


@dataclass(frozen=True)
class SecretSources:
    """Where secret references are looked up; the process environment by default."""

    environ: Mapping[str, str]
    credentials_dir: Path | None

    @classmethod
    def from_process(cls) -> SecretSources:
        directory = os.environ.get("CREDENTIALS_DIRECTORY")
        return cls(environ=dict(os.environ), credentials_dir=Path(directory) if directory else None)


def _read_secret_file(path: Path, what: str) -> str:
    """The first line of the file, trimmed (the rest may be a comment or a stray line)."""
    try:
        # Bytes, not text mode: a carriage return inside the line must be refused, not
        # taken as its end (a CRLF file still works: strip() drops the final one).
        value = path.read_bytes().decode("utf-8").partition("\n")[0].strip()
    except UnicodeDecodeError:
        raise ValueError(f"{what}: {path} is not UTF-8 text") from None
    except FileNotFoundError:
        raise ValueError(f"{what}: {path} does not exist") from None
    except PermissionError:
        raise ValueError(f"{what}: {path} is not readable by this user") from None
    except OSError as exc:
        raise ValueError(f"{what}: {path} cannot be read ({exc.strerror})") from None
    if not value:
        raise ValueError(f"{what}: the first line of {path} is empty: write the secret there")
    return value


def _printable(value: str, what: str) -> str:
    """The secret, refused when it holds a control character: sent in a header it would make
    the HTTP library raise an error quoting the header, i.e. the secret itself."""
    for position, char in enumerate(value, start=1):
        if ord(char) < 0x20 or 0x7F <= ord(char) < 0xA0:
            raise ValueError(
                f"{what}: the value holds a control character (U+{ord(char):04X}, character "
                f"{position} of {len(value)}): write the secret alone, on one line")
    return value


def resolve_secret(reference: str, sources: SecretSources) -> str:
    """The secret a reference points at. Errors name the reference, never a value."""
    return _printable(_resolve(reference, sources), f"secret {reference}")


def _resolve(reference: str, sources: SecretSources) -> str:
    kind, _, name = reference.partition(":")
    if kind == "env" and name:
        value = sources.environ.get(name, "")
        if not value:
            raise ValueError(f"secret {reference}: environment variable {name} is not set")
        return value
    if kind == "file" and name:
        return _read_secret_file(Path(name), f"secret {reference}")
    if kind == "credential" and name:
        if sources.credentials_dir is None:
            raise ValueError(
                f"secret {reference}: $CREDENTIALS_DIRECTORY is not set; under systemd add "
                f"LoadCredential={name}:/path/to/file to the unit, or use file:/path")
        if "/" in name or name in (".", ".."):
            raise ValueError(f"secret {reference}: a credential name cannot contain '/'")
        return _read_secret_file(sources.credentials_dir / name, f"secret {reference}")
    raise ValueError(
        "write secrets as a reference — env:NAME, file:/path or credential:NAME — "
        "never the value itself in the config file")


class SecretNotRead(RuntimeError):
    """A secret used before its command read it (load_settings(read_secrets="all"))."""


class UnreadSecret(SecretStr):
    """A secret reference whose form is checked but whose value is not read yet: commands
    that use no secret run without the service's credentials. Its value cannot be taken."""

    def __init__(self, reference: str) -> None:
        super().__init__(reference)
        self.reference = reference

    def get_secret_value(self) -> str:
        raise SecretNotRead(f"secret {self.reference} was not read: the command that uses it "
                            "loads the settings with read_secrets=\"all\"")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, UnreadSecret) and other.reference == self.reference

    def __hash__(self) -> int:
        return hash(self.reference)


# Which secrets a parse reads: every one, only the ledger's (the trail key), or none.
ReadSecrets = Literal["all", "ledger", "none"]


def _reference_form(reference: str) -> str:
    """The reference when it is one resolve_secret can read; its errors, without reading."""
    kind, _, name = reference.partition(":")
    if kind not in ("env", "file", "credential") or not name:
        raise ValueError(
            "write secrets as a reference — env:NAME, file:/path or credential:NAME — "
            "never the value itself in the config file")
    if kind == "credential" and ("/" in name or name in (".", "..")):
        raise ValueError(f"secret {reference}: a credential name cannot contain '/'")
    return reference


def _secret(value: Any, info: ValidationInfo) -> Any:
    if isinstance(value, SecretStr):
        return value
    if not isinstance(value, str):
        raise ValueError("a secret reference is text such as env:NAME")
    context = info.context or {}
    scope = context.get("read", "all")
    in_ledger = (info.config or {}).get("title") == "LedgerSettings"
    if scope == "none" or (scope == "ledger" and not in_ledger):
        return UnreadSecret(_reference_form(value.strip()))
    sources = context.get("secrets") or SecretSources.from_process()
    return SecretStr(resolve_secret(value.strip(), sources))


def _period(value: Any) -> Any:
    if isinstance(value, timedelta):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        raise ValueError(f"{value!r} has no unit: write e.g. \"{value}d\" or \"{value}s\"")
    return parse_duration(str(value))


_SIZE_UNITS = {"B": 1, "KB": 1000, "MB": 1000**2, "GB": 1000**3,
               "KIB": 1024, "MIB": 1024**2, "GIB": 1024**3}


def _size(value: Any) -> Any:
    """`64MiB`, `512KiB`, `1GB` → bytes; a number needs its unit."""
    if isinstance(value, int) and not isinstance(value, bool):
        raise ValueError(f"{value!r} has no unit: write e.g. \"64MiB\"")
    match = re.fullmatch(r"\s*(\d+)\s*([KMG]i?B|B)\s*", str(value), re.IGNORECASE)
    if not match:
        raise ValueError(f"{value!r} is not a size: write a whole number and a unit, e.g. "
                         "512KiB, 64MiB, 1GiB")
    size = int(match.group(1)) * _SIZE_UNITS[match.group(2).upper()]
    if size < 64 * 1024:
        raise ValueError(f"{value!r} is too small for one page of an API: use 64KiB or more")
    return size


Secret = Annotated[SecretStr, BeforeValidator(_secret)]
Period = Annotated[timedelta, BeforeValidator(_period)]
Size = Annotated[int, BeforeValidator(_size)]
_MAX_RESPONSE_DESCRIPTION = ("Largest answer read from this source, counted decoded "
                             "(a small gzip can inflate to gigabytes); past it the request "
                             "fails and says so.")

_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LedgerSettings(_Section):
    state_dir: Path = Field(
        default_factory=lambda: Path(os.environ.get("STATE_DIRECTORY", "/var/lib/privacy-ledger")),
        description="Directory for the SQLite ledger, the lock file and the audit "
                    "trail's key and anchor (systemd's "
                    "StateDirectory= sets $STATE_DIRECTORY, used when this key is absent).",
        examples=["/var/lib/privacy-ledger"],
    )
    url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the ledger. Absent: a SQLite file ledger.db in state_dir. "
                    "PostgreSQL for large estates or several daemons: postgresql+psycopg://…",
        examples=["postgresql+psycopg://privacy_ledger@db.internal/privacy_ledger"],
    )
    batch_size: int = Field(default=2000, ge=1, le=10_000,
                            description="Records upserted per transaction.", examples=[2000])
    trail_key: Secret | None = Field(
        default=None,
        description="Key of the audit trail's hash chain (at least 32 characters, e.g. "
                    "`openssl rand -hex 32`), kept out of the database so that whoever edits "
                    "the database cannot rewrite the trail. Absent: the file trail.key in "
                    "state_dir, made on first use. Daemons sharing one ledger need the same key.",
        examples=["credential:trail-key"])

    @field_validator("url")
    @classmethod
    def _known_database(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("sqlite:", "postgresql")):
            raise ValueError("the ledger runs on SQLite (sqlite:///path) or PostgreSQL "
                             "(postgresql+psycopg://user@host/db)")
        return value

    @property
    def database_url(self) -> str:
        return self.url or f"sqlite:///{self.state_dir / 'ledger.db'}"


class WooCommerceSettings(_Section):
    name: str = Field(description="Short name of the shop, used in the ledger as woo:<name>.",
                      examples=["allmyink"])
    url: str = Field(description="The shop's address (the API is at <url>/wp-json/wc/v3). "
                                 "HTTPS uses HTTP Basic; plain HTTP uses OAuth 1.0a signatures.",
                     examples=["https://allmyink.example"])
    consumer_key: Secret = Field(description="REST API consumer key (read permission is "
                                             "enough for auditing).",
                                 examples=["credential:allmyink-key"])
    consumer_secret: Secret = Field(description="REST API consumer secret.",
                                    examples=["credential:allmyink-secret"])
    per_page: int = Field(default=100, ge=1, le=100, description="Records per page (≤ 100).",
                          examples=[100])
    concurrency: int = Field(default=8, ge=1, le=16,
                             description="Most pages fetched at once from this shop. With "
                                         "adaptive, the ceiling: it starts at one and rises "
                                         "while the shop answers as fast.", examples=[8])
    adaptive: bool = Field(default=True,
                           description="Raise the pages in flight while the shop's response "
                                       "times stay flat and lower them when they rise or on "
                                       "429/503 (delay-based AIMD, one worker left for the "
                                       "shop's customers); false: always `concurrency`.",
                           examples=[True])
    max_requests_per_second: float | None = Field(
        default=None, gt=0, le=1000,
        description="Requests a second to this shop at most (unset: no bound beyond the "
                    "adaptive limit).", examples=[10])
    quiet_hours: str | None = Field(
        default=None,
        description="Local time window (HH:MM-HH:MM, may cross midnight) the weekly full "
                    "pull waits for, so that it reads the whole shop when customers are few "
                    "(incremental syncs run at any time).", examples=["01:00-06:00"])
    timeout: Period = Field(default=timedelta(seconds=30),
                            description="How long to wait for one answer.", examples=["30s"])
    overlap: Period = Field(default=timedelta(minutes=10),
                            description="Incremental syncs re-read this much before the last "
                                        "cursor, so that nothing modified during a run is missed.",
                            examples=["10min"])
    max_response_size: Size = Field(default=http.DEFAULT_MAX_RESPONSE_SIZE,
                                    description=_MAX_RESPONSE_DESCRIPTION, examples=["64MiB"])

    @field_validator("name")
    @classmethod
    def _short_name(cls, value: str) -> str:
        # fullmatch: `$` also matches before a trailing newline.
        if not _NAME.fullmatch(value):
            blank = " (it has blank space or a newline around it)" if value != value.strip() \
                else ""
            raise ValueError(f"{value!r}{blank}: use lower-case letters, digits, - and _ "
                             "(max 63)")
        return value

    @field_validator("quiet_hours")
    @classmethod
    def _window(cls, value: str | None) -> str | None:
        if value is not None:
            quiet.parse_window(value)
        return value

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError(f"{value!r} is not an http(s) address")
        return value.rstrip("/")

    def to_connector(self, **overrides: Any) -> woocommerce_connector.Settings:
        """The connector's settings; `overrides` set its other fields (sleep, retries)."""
        return replace(woocommerce_connector.Settings(
            name=self.name, url=self.url,
            consumer_key=self.consumer_key.get_secret_value(),
            consumer_secret=self.consumer_secret.get_secret_value(),
            per_page=self.per_page, concurrency=self.concurrency, adaptive=self.adaptive,
            max_requests_per_second=self.max_requests_per_second,
            timeout=self.timeout.total_seconds(), overlap=self.overlap,
            max_response_size=self.max_response_size,
        ), **overrides)


class StripeSettings(_Section):
    api_key: Secret = Field(description="A restricted key with Read on Customers, Charges "
                                        "and Events (rk_live_…); erase also needs Write on "
                                        "Customers.",
                            examples=["credential:stripe-key"])
    base_url: str = Field(default="https://api.stripe.com",
                          description="API address: https, or plain http only to this machine "
                                      "(127.0.0.0/8, ::1, localhost: the sandbox twins).",
                          examples=["https://api.stripe.com"])
    requests_per_second: float = Field(default=20.0, gt=0, le=100,
                                       description="Read requests per second, well under "
                                                   "Stripe's limit.", examples=[20])
    timeout: Period = Field(default=timedelta(seconds=30), description="Answer timeout.",
                            examples=["30s"])
    overlap: Period = Field(default=timedelta(minutes=10),
                            description="Re-read window before the last cursor.",
                            examples=["10min"])
    max_response_size: Size = Field(default=http.DEFAULT_MAX_RESPONSE_SIZE,
                                    description=_MAX_RESPONSE_DESCRIPTION, examples=["64MiB"])

    @field_validator("base_url")
    @classmethod
    def _encrypted_unless_local(cls, value: str) -> str:
        stripe_connector.check_base_url(value)
        return value

    @property
    def key_is_read(self) -> bool:
        """False when this command did not read the key (links needing its mode are left
        out rather than guessed)."""
        return not isinstance(self.api_key, UnreadSecret)

    def to_connector(self, **overrides: Any) -> stripe_connector.Settings:
        """The connector's settings; `overrides` set its other fields (sleep, retries)."""
        return replace(stripe_connector.Settings(
            api_key=self.api_key.get_secret_value(), base_url=self.base_url.rstrip("/"),
            requests_per_second=self.requests_per_second,
            timeout=self.timeout.total_seconds(), overlap=self.overlap,
            max_response_size=self.max_response_size,
        ), **overrides)


class MailchimpSettings(_Section):
    api_key: Secret = Field(description="Marketing API key; its suffix (…-us6) names the "
                                        "data centre.", examples=["credential:mailchimp-key"])
    base_url: str | None = Field(default=None,
                                 description="API address; absent: from the key's suffix.",
                                 examples=["https://us6.api.mailchimp.com/3.0"])
    audiences: list[str] = Field(default_factory=list,
                                 description="Audience ids or names to audit; empty: all.",
                                 examples=[["Newsletter"]])
    page_size: int = Field(default=1000, ge=1, le=1000,
                           description="Members per page (Mailchimp's largest is 1000: fewest "
                                       "requests).", examples=[1000])
    concurrency: int = Field(default=4, ge=1, le=10,
                             description="Simultaneous connections (Mailchimp allows 10; each "
                                         "holds a page in memory).", examples=[4])
    timeout: Period = Field(default=timedelta(seconds=120), description="Answer timeout.",
                            examples=["120s"])
    overlap: Period = Field(default=timedelta(minutes=10),
                            description="Re-read window before the last cursor.",
                            examples=["10min"])
    max_response_size: Size = Field(default=http.DEFAULT_MAX_RESPONSE_SIZE,
                                    description=_MAX_RESPONSE_DESCRIPTION, examples=["64MiB"])

    @model_validator(mode="after")
    def _routable(self) -> MailchimpSettings:
        if self.base_url is None and isinstance(self.api_key, UnreadSecret):
            return self  # the data centre is checked when the key is read
        if self.base_url is None:
            mailchimp_connector.data_centre_url(self.api_key.get_secret_value())
        else:
            mailchimp_connector.check_base_url(self.base_url)
        return self

    def to_connector(self, **overrides: Any) -> mailchimp_connector.Settings:
        """The connector's settings; `overrides` set its other fields (sleep, retries)."""
        return replace(mailchimp_connector.Settings(
            api_key=self.api_key.get_secret_value(),
            base_url=self.base_url.rstrip("/") if self.base_url else None,
            audiences=tuple(self.audiences), page_size=self.page_size,
            concurrency=self.concurrency, timeout=self.timeout.total_seconds(),
            overlap=self.overlap, max_response_size=self.max_response_size,
        ), **overrides)


class RetentionSettings(_Section):
    """How long each kind of record may be kept. Periods take a unit: d, w, mo (30 days),
    y (365 days); a bare m is refused (minutes or months?)."""

    inactive_accounts: Period = Field(
        default=timedelta(days=730),
        description="Shop accounts with no order and no login for this long are deleted "
                    "(WooCommerce: delete inactive accounts).", examples=["2y"])
    pending_orders: Period = Field(
        default=timedelta(days=30),
        description="Unpaid pending orders: nothing to keep once abandoned.", examples=["30d"])
    failed_orders: Period = Field(
        default=timedelta(days=30),
        description="Failed orders: kept only to investigate the failure.", examples=["30d"])
    cancelled_orders: Period = Field(
        default=timedelta(days=90),
        description="Cancelled orders: long enough to answer questions.", examples=["90d"])
    on_hold_orders: Period = Field(
        default=timedelta(days=90),
        description="On-hold orders that never went further.", examples=["90d"])
    trashed_orders: Period = Field(
        default=timedelta(days=90),
        description="Orders in the trash still hold every personal field until it is "
                    "emptied.", examples=["90d"])
    completed_orders: Period = Field(
        default=timedelta(days=6 * 365),
        description="Completed orders are accounting records: UK businesses keep them for "
                    "six years, then anonymise.", examples=["6y"])
    refunded_orders: Period = Field(
        default=timedelta(days=6 * 365),
        description="Refunded orders, as completed ones (accounting records).", examples=["6y"])
    network_data: Period = Field(
        default=timedelta(days=365),
        description="IP address and user agent on orders: useful against fraud for a "
                    "while, not for the six years of accounting.", examples=["1y"])
    processor_copies: Period = Field(
        default=timedelta(days=30),
        description="Grace for Stripe or Mailchimp to hold someone no shop holds any more.",
        examples=["30d"])
    stripe_customers: Period = Field(
        default=timedelta(days=730),
        description="A Stripe customer with no charge for this long is no longer needed.",
        examples=["2y"])
    mailchimp_contacts: Period = Field(
        default=timedelta(days=365),
        description="Unsubscribed, cleaned or archived contacts are still personal data.",
        examples=["1y"])
    sync_stale: Period = Field(
        default=timedelta(days=2),
        description="A source with no successful sync for this long leaves the ledger blind.",
        examples=["2d"])


_ADDRESS = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$")


def _address(value: str) -> str:
    address = value.strip()
    if not _ADDRESS.match(address):
        raise ValueError(f"{value!r} is not an email address (write it as name@example.com)")
    return address


class ReportSettings(_Section):
    """The nightly email: who gets it and how much it lists."""

    recipients: list[str] = Field(
        description="Who receives the nightly email (at least one address).",
        examples=[["owner@allmyink.example"]])
    sender: str = Field(
        description="The From address; its domain also names the Message-ID.",
        examples=["privacy-ledger@allmyink.example"])
    max_per_rule: int = Field(
        default=10, ge=1, le=1000,
        description="New findings listed per rule; the email says how many more and the "
                    "command that lists them all.", examples=[10])

    @field_validator("recipients")
    @classmethod
    def _recipients(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("no recipients: list at least one address, e.g. "
                             "recipients = [\"owner@example.com\"]")
        return [_address(item) for item in value]

    @field_validator("sender")
    @classmethod
    def _sender(cls, value: str) -> str:
        return _address(value)


class SmtpSettings(_Section):
    """The mail server that delivers the nightly email."""

    host: str = Field(description="SMTP server name or address.", examples=["smtp.example.com"])
    port: int = Field(default=587, ge=1, le=65535,
                      description="SMTP port: 587 for STARTTLS, 465 for implicit TLS, 25 for a "
                                  "local relay.", examples=[587])
    security: Literal["starttls", "tls", "none"] = Field(
        default="starttls",
        description="starttls: upgrade a plain connection (port 587); tls: TLS from the first "
                    "byte (port 465); none: no encryption (a relay on localhost only).",
        examples=["starttls"])
    username: str | None = Field(default=None,
                                 description="Login name; absent: no AUTH.",
                                 examples=["privacy-ledger@example.com"])
    password: Secret | None = Field(default=None,
                                    description="Login password, as a secret reference.",
                                    examples=["credential:smtp-password"])
    timeout: Period = Field(default=timedelta(seconds=30),
                            description="How long to wait for the server at each step.",
                            examples=["30s"])
    tls_ca_file: Path | None = Field(
        default=None,
        description="PEM file of the certificate authority (or self-signed certificate) to "
                    "trust for this server; absent: the system's trust store.",
        examples=["/etc/privacy-ledger/smtp-ca.pem"])

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        host = value.strip()
        if not host or any(c.isspace() or c in "/:@" for c in host):
            raise ValueError(f"{value!r} is not a host name (write e.g. smtp.example.com, "
                             "and the port in smtp.port)")
        return host

    @field_validator("timeout")
    @classmethod
    def _positive(cls, value: timedelta) -> timedelta:
        if value.total_seconds() <= 0:
            raise ValueError("the timeout must be more than zero, e.g. 30s")
        return value

    @model_validator(mode="after")
    def _login(self) -> SmtpSettings:
        if (self.username is None) != (self.password is None):
            raise ValueError("set both smtp.username and smtp.password, or neither")
        if self.username is not None and self.security == "none":
            raise ValueError("a login over security = \"none\" would send the password in "
                             "clear: use \"starttls\" or \"tls\"")
        return self


_CLOCK = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")
_WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


def _clock(value: str) -> tuple[int, int]:
    match = _CLOCK.match(value.strip())
    if not match:
        raise ValueError(f"{value!r} is not a time of day: write HH:MM on a 24-hour clock, "
                         "e.g. \"06:00\"")
    return int(match.group(1)), int(match.group(2))


def _weekday(value: str) -> int:
    word = value.strip().lower()
    for index, day in enumerate(_WEEKDAYS):
        if word in (day, day[:3]):
            return index
    raise ValueError(f"{value!r} is not a day of the week: write mon, tue, wed, thu, fri, "
                     "sat or sun")


class ScheduleSettings(_Section):
    """When `privacy-ledger run` does what. Times of day are local times in the zone named by
    the top-level `timezone` key; periods take a unit (s, min, h, d; min for minutes: a bare
    m is refused)."""

    sync_interval: Period = Field(
        default=timedelta(hours=1),
        description="How often each source is synced incrementally (what changed since its "
                    "last run).", examples=["1h"])
    sync_jitter: Period = Field(
        default=timedelta(minutes=5),
        description="Each sync starts up to this much later than its interval says, so that "
                    "sources (and several daemons) do not all call out at once. At most a "
                    "quarter of sync_interval.", examples=["5min"])
    full_sync: str = Field(
        default="sun 03:00",
        description="The weekly full reconciliation, as a day and a local time: every source "
                    "is listed in full and what is no longer upstream is marked gone.",
        examples=["sun 03:00"])
    audit_at: str = Field(
        default="06:00",
        description="Local time (HH:MM, 24-hour clock) of the nightly audit and email. A "
                    "daemon that was down at that time audits as soon as it is back (once).",
        examples=["06:00"])
    outbox_interval: Period = Field(
        default=timedelta(minutes=5),
        description="How often emails the mail server has not accepted yet are retried.",
        examples=["5min"])
    parallel_syncs: int = Field(
        default=3, ge=1, le=16,
        description="How many sources sync at the same time; the others wait their turn. "
                    "The weekly reconciliation starts every source at once: each source "
                    "syncing adds its connections and some 15 MB of memory.",
        examples=[3])
    misfire_grace: Period = Field(
        default=timedelta(hours=6),
        description="How late the nightly audit or the weekly reconciliation may still start "
                    "(after a suspend, a clock step or a long job) instead of waiting for the "
                    "next one.", examples=["6h"])
    source_timeout: Period = Field(
        default=timedelta(hours=2),
        description="The longest one source's sync may run. Past it the sync is stopped and "
                    "recorded as failed with that reason (the next run resumes from its last "
                    "committed batch), so a source that hangs never holds up the others.",
        examples=["2h"])

    claim_lease: Period = Field(
        default=timedelta(minutes=2),
        description="Several daemons on one PostgreSQL ledger share its sources, each claimed "
                    "by one daemon a round; a daemon renews its claim every third of this. "
                    "A claim not renewed for this long (its daemon died) is taken over.",
        examples=["2min"])

    @field_validator("sync_interval", "outbox_interval", "misfire_grace", "source_timeout",
                     "claim_lease")
    @classmethod
    def _at_least_a_second(cls, value: timedelta) -> timedelta:
        if value < timedelta(seconds=1):
            raise ValueError("must be at least 1s")
        return value

    @field_validator("full_sync")
    @classmethod
    def _day_and_time(cls, value: str) -> str:
        parts = value.split()
        if len(parts) != 2:
            raise ValueError(f"{value!r}: write a day and a time, e.g. \"sun 03:00\"")
        day, (hour, minute) = _weekday(parts[0]), _clock(parts[1])
        return f"{_WEEKDAYS[day][:3]} {hour:02d}:{minute:02d}"

    @field_validator("audit_at")
    @classmethod
    def _time_of_day(cls, value: str) -> str:
        hour, minute = _clock(value)
        return f"{hour:02d}:{minute:02d}"

    @model_validator(mode="after")
    def _jitter_fits(self) -> ScheduleSettings:
        if self.sync_jitter * 4 > self.sync_interval:
            raise ValueError(f"sync_jitter ({format_duration(self.sync_jitter)}) must be at "
                             f"most a quarter of sync_interval "
                             f"({format_duration(self.sync_interval)})")
        return self

    @property
    def audit_time(self) -> tuple[int, int]:
        """(hour, minute) of the nightly audit, local time."""
        return _clock(self.audit_at)

    @property
    def full_sync_weekday(self) -> int:
        """Day of the weekly full reconciliation, Monday = 0."""
        return _weekday(self.full_sync.split()[0])

    @property
    def full_sync_time(self) -> tuple[int, int]:
        return _clock(self.full_sync.split()[1])


class Settings(_Section):
    """The whole config file."""

    ledger: LedgerSettings = Field(default_factory=LedgerSettings)
    woocommerce: list[WooCommerceSettings] = Field(default_factory=list)
    stripe: StripeSettings | None = None
    mailchimp: MailchimpSettings | None = None
    retention: RetentionSettings = Field(default_factory=RetentionSettings)
    timezone: str = Field(default="Europe/London",
                          description="Local time zone for schedules and the email.",
                          examples=["Europe/London"])
    report: ReportSettings | None = Field(
        default=None, description="The nightly email; absent: no email is sent.")
    smtp: SmtpSettings | None = Field(
        default=None, description="The mail server that delivers the nightly email.")
    schedule: ScheduleSettings = Field(
        default_factory=ScheduleSettings,
        description="When the daemon (privacy-ledger run) syncs, audits and emails.")

    @field_validator("woocommerce")
    @classmethod
    def _unique_shops(cls, shops: list[WooCommerceSettings]) -> list[WooCommerceSettings]:
        names = [shop.name for shop in shops]
        doubled = sorted({name for name in names if names.count(name) > 1})
        if doubled:
            raise ValueError(f"shop names must be unique: {', '.join(doubled)} appear twice")
        return shops

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{value!r} is not a time zone (e.g. Europe/London)") from None
        return value

    def secret_values(self) -> list[str]:
        """Every resolved secret, so that logs can redact them."""
        found: list[str] = []

        def walk(model: BaseModel) -> None:
            for name in type(model).model_fields:
                value = getattr(model, name)
                if isinstance(value, SecretStr) and not isinstance(value, UnreadSecret):
                    found.append(value.get_secret_value())
                elif isinstance(value, BaseModel):
                    walk(value)
                elif isinstance(value, list):
                    for item in value:
                        if isinstance(item, BaseModel):
                            walk(item)

        walk(self)
        return found

    @property
    def source_names(self) -> list[str]:
        names = [f"woo:{shop.name}" for shop in self.woocommerce]
        if self.stripe:
            names.append("stripe")
        if self.mailchimp:
            names.append("mailchimp")
        return names


def _location(raw: Mapping[str, Any], loc: tuple[Any, ...]) -> str:
    """`woocommerce[allmyink].consumer_key` from pydantic's ('woocommerce', 0, 'consumer_key')."""
    parts: list[str] = []
    node: Any = raw
    for item in loc:
        if isinstance(item, int):
            label = str(item)
            if isinstance(node, list) and item < len(node):
                node = node[item]
                if (isinstance(node, Mapping) and isinstance(node.get("name"), str)
                        and _NAME.fullmatch(node["name"])):
                    # Only a valid name labels the table: any other text could forge lines.
                    label = node["name"]
            parts[-1:] = [f"{parts[-1]}[{label}]"] if parts else [f"[{label}]"]
            continue
        if isinstance(item, str) and item.startswith(("function-", "function_")):
            continue
        parts.append(str(item))
        node = node.get(item) if isinstance(node, Mapping) else None
    return ".".join(parts) or "(top level)"


def _message(error: Mapping[str, Any]) -> str:
    text = str(error.get("msg", "invalid"))
    text = text.removeprefix("Value error, ")
    if error.get("type") == "extra_forbidden":
        return "unknown key (a typo? config/example.toml lists every key)"
    if error.get("type") == "missing":
        return "missing: this key is required"
    return text


def parse_settings(raw: Mapping[str, Any], *, origin: str = "config",
                   secrets: SecretSources | None = None,
                   read_secrets: ReadSecrets = "all") -> Settings:
    """Validate a parsed TOML document. Raises ConfigError listing every problem.
    `read_secrets`: which secret references are read; the others are only checked as
    references (UnreadSecret)."""
    try:
        return Settings.model_validate(
            raw, context={"secrets": secrets or SecretSources.from_process(),
                          "read": read_secrets})
    except ValidationError as exc:
        problems = [f"{origin}: {_location(raw, tuple(err['loc']))}: {_message(err)}"
                    for err in exc.errors(include_input=False, include_url=False)]
        raise ConfigError(problems) from None


def load_settings(path: Path, *, secrets: SecretSources | None = None,
                  read_secrets: ReadSecrets = "all") -> Settings:
    """Read, parse and validate a config file. Raises ConfigError naming the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{path}: no such config file (start from config/example.toml)"]) \
            from None
    except PermissionError:
        raise ConfigError([f"{path}: not readable by this user"]) from None
    except IsADirectoryError:
        raise ConfigError([f"{path}: is a directory, not a config file"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{path}: is not UTF-8 text"]) from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: not valid TOML: {exc}"]) from None
    return parse_settings(raw, origin=str(path), secrets=secrets, read_secrets=read_secrets)


def unread_references(settings: Settings) -> list[str]:
    """The secret references a settings object holds unread, in the file's order."""
    found: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, UnreadSecret):
            found.append(value.reference)
        elif isinstance(value, BaseModel):
            for name in type(value).model_fields:
                walk(getattr(value, name))
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(settings)
    return found


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, timedelta):
        return _toml_value(_period_text(value))
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _period_text(value: timedelta) -> str:
    return format_duration(value)


def _section_lines(model: type[BaseModel]) -> list[str]:
    lines: list[str] = []
    for name, info in model.model_fields.items():
        lines.extend(f"# {part}" for part in _wrap(info.description or name))
        # Factory defaults depend on the environment ($STATE_DIRECTORY): not shown.
        if not info.is_required() and info.default_factory is None and info.default is not None:
            lines.append(f"# default: {_toml_value(info.default)}")
        if not info.is_required() and not info.examples:
            lines.append(f"# {name} =")
        elif not info.is_required() and (info.default is None
                                         or info.default_factory is not None):
            # No default, or one made at run time (state_dir from $STATE_DIRECTORY, every
            # audience): shown commented, so the example runs as the default.
            lines.append(f"# {name} = {_toml_value(info.examples[0])}")
        else:
            lines.append(f"{name} = {_toml_value(info.examples[0])}")
        lines.append("")
    return lines


def _wrap(text: str, width: int = 88) -> list[str]:
    words, lines, line = text.split(), [], ""
    for word in words:
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return [*lines, line] if line else lines


def example_toml() -> str:
    """config/example.toml, generated from the models: every key, its description and an
    example. A test fails when the checked-in file is stale."""
    out = ["# privacy-ledger configuration: every key, with what it means and an example.",
           "# Generated by `privacy-ledger config-example` from daemon/config.py; edit there.",
           "# Secrets are references: env:NAME, file:/path or credential:NAME (a file in",
           "# $CREDENTIALS_DIRECTORY, as systemd's LoadCredential= provides).", ""]
    tables: list[tuple[str, type[BaseModel], bool]] = []
    for name, info in Settings.model_fields.items():
        annotation = info.annotation
        args = [a for a in getattr(annotation, "__args__", ()) if a is not type(None)]
        inner = args[0] if args else annotation
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            tables.append((name, inner, getattr(annotation, "__origin__", None) is list))
            continue
        out.extend(f"# {part}" for part in _wrap(info.description or name))
        out.append(f"{name} = {_toml_value(info.examples[0] if info.examples else info.default)}")
        out.append("")
    for name, model, is_list in tables:
        doc = (model.__doc__ or "").strip()
        out.append(f"[[{name}]]" if is_list else f"[{name}]")
        if doc and model is not _Section:
            out.extend(f"# {part}" for part in _wrap(" ".join(doc.split())))
        out.append("")
        out.extend(_section_lines(model))
    return "\n".join(out).rstrip() + "\n"
