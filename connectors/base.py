"""What every connector shares: the Record it yields (its categories are vocabulary's),
the Connector protocol, and the small parsers (emails, times, card-number patterns) that
classification needs.

A connector reads an upstream system and reports *that* a category of personal data is
held, never its value: the values are read, classified and dropped here.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, runtime_checkable

from vocabulary import Category


class StopWaiting(Exception):  # noqa: N818 - an instruction, not an error
    """Raised by a connector's `sleep` (backoff, Retry-After, pacing) when its caller wants
    the work to end instead: a daemon shutting down does not wait out a rate limit."""


# Slots: a sync builds one per upstream record; half the construction time of a dict-backed
# frozen dataclass (measured), and smaller.
@dataclass(frozen=True, slots=True)
class Record:
    """One upstream record, as the ledger sees it: identifiers, categories and times only."""

    record_type: str
    external_id: str
    email: str | None
    categories: frozenset[Category]
    status: str | None = None
    created_at: datetime | None = None
    last_activity_at: datetime | None = None
    modified_at: datetime | None = None
    # Upstream id of the record this one belongs to (an order's customer, a charge's customer).
    parent_id: str | None = None
    anonymised: bool = False
    # Non-personal facts worth showing, e.g. "card number pattern in customer_note".
    evidence: tuple[str, ...] = ()
    # The email exactly as the system holds it, only when it differs from `email`.
    email_as_held: str | None = None


@dataclass(frozen=True)
class Key:
    """A record's identity upstream, as a cheap key listing returns it."""

    record_type: str
    external_id: str


@dataclass(frozen=True)
class Skip:
    """A record that could not be read, with why (no personal values in the reason)."""

    record_type: str
    external_id: str | None
    reason: str


@dataclass(frozen=True)
class Batch:
    """A slice of a pull. `cursor`, when set, may be committed together with this batch:
    everything up to it is in this batch or an earlier one. `complete` marks the last batch
    of a pull that listed everything it was asked for."""

    records: Sequence[Record]
    cursor: str | None = None
    skipped: Sequence[Skip] = ()
    complete: bool = False
    # Set on a full pull: the record types the pull listed completely, for reconciliation.
    listed_types: frozenset[str] = frozenset()
    # Keys the connector knows were deleted upstream (e.g. from an event feed).
    gone: Sequence[Key] = ()
    # How far the listing being read has come, with the upstream's own total where it has one.
    progress: Progress | None = None


@dataclass(frozen=True)
class KeyBatch:
    keys: Sequence[Key]
    complete: bool = False
    listed_types: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Progress:
    """What a connector reports while pulling, for progress bars and STATUS lines."""

    record_type: str
    done: int
    total: int | None


@runtime_checkable
class Connector(Protocol):
    """The contract every upstream module fulfils. `source` is the ledger's source name
    (`woo:<shop>`, `stripe`, `mailchimp:<audience>` or `mailchimp`)."""

    source: str
    kind: str

    def pull(self, cursor: str | None) -> Iterator[Batch]:
        """Records changed since `cursor` (everything when None), in batches."""
        ...

    def list_keys(self) -> Iterator[KeyBatch]:
        """Every record key that exists upstream now, for reconciliation."""
        ...

    def lookup(self, email: str, forms: Sequence[str] = ()) -> list[dict[str, Any]]:
        """The live records about one person (`email`: the normalised key; `forms`: the
        raw forms to ask by), as the system holds them: only records whose email
        normalises to `email`."""
        ...

    def close(self) -> None: ...


def count_text(value: object, word: str) -> str:
    """"1,234 orders" from an upstream's total, or "orders readable" when it gave none."""
    try:
        return f"{int(value):,} {word}"  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return f"{word} readable"


_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def normalise_email(value: object) -> str | None:
    """The ledger's key for an email: trimmed, composed (NFC) and lower-cased, except that a
    non-ASCII character never becomes ASCII by it (the Kelvin sign stays itself: `\u212a@x`
    and `k@x` are two mailboxes); None when the value is not an email at all."""
    if not isinstance(value, str):
        return None
    email = value.strip()
    # Nearly every address is ASCII: one call, as before.
    email = email.lower() if email.isascii() else _fold(_compose(email))
    return email if _EMAIL.match(email) else None


def _keeps_ascii(char: str, changed: str) -> bool:
    """True when turning this non-ASCII character into `changed` would make it ASCII."""
    return not char.isascii() and any(c.isascii() for c in changed)


def _compose(text: str) -> str:
    """NFC, except around characters NFC would turn into ASCII (U+212A KELVIN SIGN → K,
    U+037E GREEK QUESTION MARK → ;): those stay, and the text between them is composed."""
    pieces, start = [], 0
    for index, char in enumerate(text):
        if not char.isascii() and _keeps_ascii(char, unicodedata.normalize("NFC", char)):
            pieces += [unicodedata.normalize("NFC", text[start:index]), char]
            start = index + 1
    pieces.append(unicodedata.normalize("NFC", text[start:]))
    return "".join(pieces)


def _fold(text: str) -> str:
    """Lower-cased character by character, but a non-ASCII one whose lower case holds ASCII
    (U+212A → k, U+0130 → i + U+0307) stays; composed again after (idempotent)."""
    folded = "".join(char if _keeps_ascii(char, low := char.lower()) else low
                     for char in text)
    return _compose(folded)


def email_as_held(value: object, email: str | None) -> str | None:
    """The email exactly as a system holds it, when that differs from its key `email` (the
    ledger keeps such forms to look the person up by them); None when it is the same."""
    if email is None or not isinstance(value, str) or value == email:
        return None
    return value[:320]


# The zeros and punctuation an anonymised phone number keeps: no content on their own.
NO_CONTENT = "0 +-()"


def has_value(value: object) -> bool:
    """True when an upstream field actually holds something (not empty, not only blanks,
    not an empty object, not WooCommerce's anonymised zeros)."""
    if isinstance(value, str):
        # Something is left once blanks, zeros and that punctuation are stripped from both
        # ends exactly when some other character is in it (a regex search cost 4× this).
        return bool(value.strip().strip(NO_CONTENT))
    if value is None or value is False:
        return False
    if isinstance(value, dict):
        return any(has_value(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(has_value(v) for v in value)
    return True


_ZERO_DATES = {"", "0000-00-00 00:00:00", "0000-00-00T00:00:00", "0"}


def parse_time(value: object, *, naive_is_utc: bool = True) -> datetime | None:
    """A timezone-aware UTC datetime from ISO 8601 text, unix seconds (int or digit string),
    or None for empty, zero or unparseable values. Naive text is taken as UTC (WooCommerce's
    `*_gmt` fields carry no offset)."""
    if not isinstance(value, str):
        if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        if value <= 0:
            return None
        try:
            return datetime.fromtimestamp(value, tz=UTC)
        except (OverflowError, OSError, ValueError):
            return None
    text = value.strip()
    if naive_is_utc and len(text) == 19 and text[10] == "T":
        # WooCommerce's `*_gmt` form, "2017-03-22T16:28:02" (the zero date fails): one call.
        try:
            return datetime.fromisoformat(text + "+00:00")
        except ValueError:
            return None
    if text in _ZERO_DATES:
        return None
    if text.isdigit():
        seconds = int(text)
        try:
            return datetime.fromtimestamp(seconds, UTC) if seconds > 0 else None
        except (OverflowError, OSError, ValueError):
            return None
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(text.replace(" ", "T", 1) if "T" not in text else text)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        if not naive_is_utc:
            return None
        # Reading it again with the offset costs a fifth of datetime.replace (profiled);
        # a date alone takes no offset.
        try:
            aware = datetime.fromisoformat(text + "+00:00")
        except ValueError:
            aware = parsed
        return aware if aware.tzinfo is not None else parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def format_gmt(moment: datetime) -> str:
    """ISO 8601 in UTC without offset, the form WooCommerce's `*_gmt` filters expect."""
    return moment.astimezone(UTC).replace(tzinfo=None, microsecond=0).isoformat()


_DIGIT_RUN = re.compile(r"(?<!\d)(?:\d[ -]?){12,18}\d(?!\d)")
_THIRTEEN_DIGITS = re.compile(rb"[0-9]{13}")
_OTHER_DIGIT = re.compile(r"(?![0-9])\d")


def luhn_valid(digits: str) -> bool:
    total = 0
    for index, char in enumerate(reversed(digits)):
        digit = int(char)
        if index % 2 == 1:
            digit *= 2
            if digit > 9:
                digit -= 9
        total += digit
    return total % 10 == 0


def contains_card_number(text: object) -> bool:
    """True when the text holds a Luhn-valid run of 13–19 digits (spaces or dashes allowed
    between digits), i.e. something that looks like a full card number."""
    if not isinstance(text, str) or len(text) < 13:
        return False
    # Quick looks first, on the UTF-8 bytes: there only ASCII digits, spaces and dashes look
    # like them, which is all the pattern takes unless the text holds other digits
    # (Arabic-Indic, full-width: `\d` takes those too). A name like "Chloé" stays quick.
    if text.isascii() or not _OTHER_DIGIT.search(text):
        raw = text.encode()
        # Most text holds fewer than 13 digits: counting them costs a tenth of the scan.
        if len(raw) - len(raw.translate(None, b"0123456789")) < 13:
            return False
        # Without its spaces and dashes a card number is a run of 13 or more digits; looking
        # for one costs a tenth of the scan below, which an address's digits often start.
        if not _THIRTEEN_DIGITS.search(raw.translate(None, b" -")):
            return False
    for match in _DIGIT_RUN.finditer(text):
        digits = re.sub(r"[ -]", "", match.group(0))
        if 13 <= len(digits) <= 19 and luhn_valid(digits) and len(set(digits)) > 1:
            return True
    return False


def scan_text(field_name: str, value: object, categories: set[Category],
              evidence: list[str]) -> None:
    """Classify a free-text field: any content is `free_text`; a card-number pattern adds
    `card_number` with evidence naming the field (never the digits)."""
    if not has_value(value):
        return
    if isinstance(value, dict | list):
        for item in value.values() if isinstance(value, dict) else value:
            scan_text(field_name, item, categories, evidence)
        return
    categories.add(Category.FREE_TEXT)
    if contains_card_number(str(value)):
        categories.add(Category.CARD_NUMBER)
        note = f"card number pattern in {field_name}"
        if note not in evidence:
            evidence.append(note)
