"""The pieces every system's settings model is made of: secret references (read only when the
command that uses them asks, through the validation context), periods, sizes and short
names. The daemon's config (daemon/config.py) validates the whole file with them once, at the
edge; each system's package declares its own section with them."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
)

from connectors.http import DEFAULT_MAX_RESPONSE_SIZE
from vocabulary import parse_duration


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
MAX_RESPONSE_DESCRIPTION = ("Largest answer read from this source, counted decoded "
                             "(a small gzip can inflate to gigabytes); past it the request "
                             "fails and says so.")

NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _short_name(value: str) -> str:
    # fullmatch: `$` also matches before a trailing newline.
    if not NAME.fullmatch(value):
        blank = " (it has blank space or a newline around it)" if value != value.strip() else ""
        raise ValueError(f"{value!r}{blank}: use lower-case letters, digits, - and _ (max 63)")
    return value


def _http_url(value: str) -> str:
    if not re.match(r"^https?://[^/\s]+", value):
        raise ValueError(f"{value!r} is not an http(s) address")
    return value.rstrip("/")


# A section's name in the ledger (woo:<name>, wp:<name>).
ShortName = Annotated[str, AfterValidator(_short_name)]
# A site's address, without its trailing slash.
SiteUrl = Annotated[str, AfterValidator(_http_url)]


def max_response_size_field() -> Any:
    """The `max_response_size` key every system's section has."""
    return Field(default=DEFAULT_MAX_RESPONSE_SIZE, description=MAX_RESPONSE_DESCRIPTION,
                 examples=["64MiB"])
