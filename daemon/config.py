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
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    Field,
    SecretStr,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from connectors.mailchimp.system import MailchimpSettings
from connectors.registry import SYSTEMS
from connectors.settings import (
    NAME,
    Period,
    ReadSecrets,
    Secret,
    SecretNotRead,
    SecretSources,
    Size,
    UnreadSecret,
    resolve_secret,
)
from connectors.settings import Section as _Section
from connectors.stripe.system import StripeSettings
from connectors.system import LinkMaker, System, Unit
from connectors.woocommerce.system import WooCommerceSettings
from connectors.wordpress.system import WordPressSettings
from daemon import catalogue
from vocabulary import Category, format_duration

__all__ = ["ConfigError", "MailchimpSettings", "ReadSecrets", "SecretNotRead", "SecretSources",
           "Settings", "Size", "StripeSettings", "UnreadSecret", "WooCommerceSettings",
           "WordPressSettings", "load_settings", "parse_settings", "resolve_secret"]


class ConfigError(Exception):
    """A config that cannot be used, with every problem found, each in one line."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


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
    spam_and_trash_comments: Period = Field(
        default=timedelta(days=30),
        description="WordPress comments in spam or trash: WordPress's scheduled delete "
                    "empties the trash after EMPTY_TRASH_DAYS (30 days) when WP-Cron runs, "
                    "and never deletes spam by itself (Akismet does, after 15 days).",
        examples=["30d"])
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


_SYSTEMS = tuple(system.kind for system in SYSTEMS)


def _categories(values: list[str], where: str) -> list[str]:
    known = [str(c) for c in Category]
    unknown = [v for v in values if v not in known]
    if unknown:
        raise ValueError(f"{where}{', '.join(repr(u) for u in unknown)}: not a category; the "
                         f"categories are: {', '.join(known)}")
    return sorted(set(values), key=known.index)


def _systems(values: dict[str, Any], what: str) -> dict[str, Any]:
    unknown = [key for key in values if key not in _SYSTEMS]
    if unknown:
        raise ValueError(f"{', '.join(repr(u) for u in unknown)}: not a system; {what} are "
                         f"keyed by: {', '.join(_SYSTEMS)}")
    return values


class PolicySettings(_Section):
    """What the published privacy policy promises: the categories of personal data it says
    are collected (for every system, and more per system), the processors it names, the
    purposes per system (for the record of processing), and its address. The audit checks
    the ledger and the shops against it; without this section nothing is claimed, so nothing
    is checked (`check` says so)."""

    url: str | None = Field(default=None,
                            description="Address of the published privacy policy (shown in "
                                        "the record of processing).",
                            examples=["https://allmyink.example/privacy-policy"])
    categories: list[str] = Field(
        default_factory=list,
        description="Categories the policy says are collected, in every system: name, email, "
                    "phone, billing_address, delivery_address, payment_method_type, "
                    "card_last4, ip_address, user_agent, order_history, marketing_consent, "
                    "account, free_text, location.",
        examples=[["name", "billing_address", "delivery_address", "email", "phone",
                   "payment_method_type"]])
    systems: dict[str, list[str]] = Field(
        default_factory=dict,
        description="More categories declared for one system only, by system (woocommerce, "
                    "stripe, mailchimp, wordpress).",
        examples=[{"mailchimp": ["marketing_consent"]}])
    processors: list[str] = Field(
        default_factory=list,
        description="The processors the policy names (WordPress, Stripe, Mailchimp, and "
                    "those of the plugin catalogue: Meta, Google, PayPal, Klaviyo, "
                    "Automattic).",
        examples=[["WordPress", "Stripe", "Mailchimp"]])
    purposes: dict[str, str] = Field(
        default_factory=dict,
        description="Why each system holds personal data, in the policy's words, by system "
                    "(for the record of processing activities).",
        examples=[{"woocommerce": "to take and deliver orders", "stripe": "to take payments",
                   "mailchimp": "to send the newsletter to those who asked for it"}])

    @field_validator("categories")
    @classmethod
    def _known_categories(cls, value: list[str]) -> list[str]:
        return _categories(value, "")

    @field_validator("systems")
    @classmethod
    def _known_systems(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        _systems(value, "per-system categories")
        return {system: _categories(items, f"{system}: ") for system, items in value.items()}

    @field_validator("purposes")
    @classmethod
    def _known_purposes(cls, value: dict[str, str]) -> dict[str, str]:
        return _systems(value, "purposes")

    @field_validator("processors")
    @classmethod
    def _known_processors(cls, value: list[str]) -> list[str]:
        known = catalogue.known_processors()
        by_word = {name.lower(): name for name in known}
        unknown = [v for v in value if v.strip().lower() not in by_word]
        if unknown:
            raise ValueError(f"{', '.join(repr(u) for u in unknown)}: not a processor this "
                             f"version knows; the processors are: {', '.join(known)}")
        return sorted({by_word[v.strip().lower()] for v in value})

    def declared(self, system: str) -> list[str]:
        """The categories declared for one system (every system's and its own)."""
        return sorted({*self.categories, *self.systems.get(system, [])})


_ADDRESS = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$")


def _address(value: str) -> str:
    address = value.strip()
    if not _ADDRESS.match(address):
        raise ValueError(f"{value!r} is not an email address (write it as name@example.com)")
    return address


class FixSettings(_Section):
    """`privacy-ledger fix`: how gently bulk fixes write to a live shop."""

    writes_per_second: float = Field(
        default=2.0, gt=0, le=20,
        description="Most writes per second to one system during a bulk fix (a live shop "
                    "must not slow down).", examples=[2.0])


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


class _Settings(_Section):
    """The whole config file but its systems' sections (Settings adds those)."""

    ledger: LedgerSettings = Field(default_factory=LedgerSettings)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)
    policy: PolicySettings | None = Field(
        default=None, description="What the published privacy policy promises; absent: "
                                  "nothing is claimed, so the promises are not checked.")
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
    fix: FixSettings = Field(default_factory=FixSettings,
                             description="`privacy-ledger fix`: bulk fixes' write rate.")

    @field_validator(*(system.section for system in SYSTEMS if system.many), check_fields=False)
    @classmethod
    def _unique_names(cls, sections: list[Any]) -> list[Any]:
        names = [section.name for section in sections]
        doubled = sorted({name for name in names if names.count(name) > 1})
        if doubled:
            raise ValueError(f"names must be unique: {', '.join(doubled)} appear twice")
        return sections

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

    def sections(self, system: System) -> list[Any]:
        """The configured sections of one system (none, one or several)."""
        value = getattr(self, system.section)
        return list(value) if isinstance(value, list) else [] if value is None else [value]

    @property
    def estate(self) -> dict[str, list[Any]]:
        """Every configured section, by system kind."""
        return {system.kind: self.sections(system) for system in SYSTEMS}

    def units(self) -> list[tuple[System, Any, Unit]]:
        """What is synced and checked, in the config's order of systems: each with its
        system and its section."""
        estate = self.estate
        return [(system, section, unit) for system in SYSTEMS
                for section in self.sections(system) for unit in system.units(section, estate)]

    @property
    def source_names(self) -> list[str]:
        return [unit.name for _, _, unit in self.units()]

    def link_makers(self) -> list[tuple[str, LinkMaker]]:
        """Each unit's source name (or the prefix of its family of sources) and its system's
        link maker for it: where the email's links point."""
        return [(unit.family or unit.name, system.links(section))
                for system, section, unit in self.units()]


def _system_fields() -> dict[str, Any]:
    """One field per system of connectors/registry.py, with that system's settings model: a
    list of tables for a system configured several times ([[woocommerce]]), else one table."""
    fields: dict[str, Any] = {}
    for system in SYSTEMS:
        if system.many:
            fields[system.section] = (list[system.settings], Field(default_factory=list))
        else:
            fields[system.section] = (system.settings | None, None)
    return fields


# Adding a system to the registry adds its section here; nothing else in this file names one.
Settings = create_model("Settings", __base__=_Settings, __module__=__name__,
                        **_system_fields())
Settings.__doc__ = "The whole config file."


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
                        and NAME.fullmatch(node["name"])):
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
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
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
