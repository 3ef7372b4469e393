"""Parsers every connector relies on: emails, times, periods, card-number patterns."""

from __future__ import annotations

import random
import re
from datetime import UTC, datetime, timedelta

import pytest

from connectors.base import (
    Category,
    contains_card_number,
    has_value,
    luhn_valid,
    normalise_email,
    parse_time,
    scan_text,
)
from vocabulary import parse_duration


@pytest.mark.parametrize(("raw", "expected"), [
    ("Ada@Example.COM", "ada@example.com"),
    ("  ada@example.com \n", "ada@example.com"),
    ("not an email", None),
    ("ada @example.com", None),
    ("", None),
    (None, None),
    (42, None),
])
def test_normalise_email_lowercases_and_trims_or_refuses(raw: object, expected: str) -> None:
    assert normalise_email(raw) == expected


@pytest.mark.parametrize(("raw", "expected"), [
    ("chloe\u0301@example.org", "chlo\u00e9@example.org"),     # decomposed → composed
    ("CHLOE\u0301@Example.org", "chlo\u00e9@example.org"),
    ("\u212aelvin@example.org", "\u212aelvin@example.org"),   # Kelvin sign: never k
    ("\u212a\u0301@example.org", "\u212a\u0301@example.org"),  # nor composed into Ḱ
    ("K\u0301@example.org", "\u1e31@example.org"),
    ("\u0130stanbul@example.tr", "\u0130stanbul@example.tr"),   # İ lower-cases to i + ◌̇
    ("\u03a3\u039f\u03a6\u0399\u0391@example.gr", "\u03c3\u03bf\u03c6\u03b9\u03b1@example.gr"),
    ("stra\u00dfe@example.de", "stra\u00dfe@example.de"),      # ß stays (casefold: ss)
])
def test_normalise_email_composes_and_lowercases_but_never_makes_ascii(
        raw: str, expected: str) -> None:
    assert normalise_email(raw) == expected


def test_normalise_email_is_idempotent_and_adds_no_ascii_on_random_text() -> None:
    rng = random.Random(5)
    alphabet = ("aAeEkKsSiI\u212a\u212b\u2126\u0130\u0131\u037e\u1fef\u0301\u0308"
                "\u00e9\u00c9\u1e9e\u00df\u03a3\u1100\u1161\u11a8\uac00")
    for _ in range(3000):
        local = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 8)))
        key = normalise_email(f"{local}@example.org")
        assert key is not None and normalise_email(key) == key, repr(local)
        ascii_before = sum(c.isascii() for c in local)
        assert sum(c.isascii() for c in key.split("@")[0]) <= ascii_before, repr(local)


@pytest.mark.parametrize(("raw", "expected"), [
    ("2017-03-22T16:28:02", datetime(2017, 3, 22, 16, 28, 2, tzinfo=UTC)),
    ("2017-03-22T16:28:02Z", datetime(2017, 3, 22, 16, 28, 2, tzinfo=UTC)),
    ("2017-03-22T18:28:02+02:00", datetime(2017, 3, 22, 16, 28, 2, tzinfo=UTC)),
    ("2017-03-22 16:28:02", datetime(2017, 3, 22, 16, 28, 2, tzinfo=UTC)),
    (1490200082, datetime(2017, 3, 22, 16, 28, 2, tzinfo=UTC)),
    ("1490200082", datetime(2017, 3, 22, 16, 28, 2, tzinfo=UTC)),
    (" 1490200082 ", datetime(2017, 3, 22, 16, 28, 2, tzinfo=UTC)),
    ("00", None),
    ("99999999999999999999", None),
    ("0000-00-00 00:00:00", None),
    ("", None),
    ("yesterday", None),
    (None, None),
    (0, None),
    (True, None),
])
def test_parse_time_reads_odd_forms_or_gives_none(raw: object, expected: object) -> None:
    assert parse_time(raw) == expected


@pytest.mark.parametrize(("text", "expected"), [
    ("90d", timedelta(days=90)), ("18mo", timedelta(days=540)), ("6y", timedelta(days=2190)),
    ("12h", timedelta(hours=12)), ("30min", timedelta(minutes=30)), ("0d", timedelta(0)),
])
def test_parse_duration_reads_units(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["90", "-5d", "6 years", "", "d"])
def test_parse_duration_refuses_missing_units_and_negatives(text: str) -> None:
    with pytest.raises(ValueError, match=repr(text)):
        parse_duration(text)


@pytest.mark.parametrize(("text", "expected"), [
    ("card 4111 1111 1111 1111 exp 12/29", True),
    ("4111-1111-1111-1111", True),
    ("5555555555554444", True),
    ("4111 1111 1111 1112", False),       # fails Luhn
    ("order 123456789012", False),        # too short
    ("phone +44 7700 900123", False),
    ("0000000000000000", False),          # all one digit is no card
    ("Chloé 4111 1111 1111 1111", True),   # beside non-ASCII text
    ("٤١١١ ١١١١ ١١١١ ١١١١", True),        # Arabic-Indic digits are digits too
    ("Zoë, 26 Station Road 12-34", False),
    ("", False),
])
def test_contains_card_number_needs_a_luhn_valid_run(text: str, expected: bool) -> None:
    assert contains_card_number(text) is expected


def _card_number_by_the_pattern_alone(text: str) -> bool:
    """The rule written once, slowly: a Luhn-valid run of 13–19 digits, a space or dash
    allowed between two digits, not all one digit."""
    for match in re.finditer(r"(?<!\d)(?:\d[ -]?){12,18}\d(?!\d)", text):
        digits = re.sub(r"[ -]", "", match.group(0))
        if 13 <= len(digits) <= 19 and luhn_valid(digits) and len(set(digits)) > 1:
            return True
    return False


def _luhn_completed(rng: random.Random, length: int) -> str:
    body = "".join(rng.choice("0123456789") for _ in range(length - 1))
    return next(body + check for check in "0123456789" if luhn_valid(body + check))


def test_contains_card_number_agrees_with_the_pattern_on_random_text() -> None:
    """The quick looks before the pattern (digit count, a 13-digit run once spaces and dashes
    are gone) only ever skip text the pattern would refuse."""
    rng = random.Random(8)
    pieces = [" ", "-", "  ", "\n", "Flat ", "Road", "+44 ", "é", "٣", "/"]
    texts = []
    for _ in range(3000):
        parts = []
        for _ in range(rng.randint(1, 6)):
            kind = rng.random()
            if kind < 0.3:
                number = _luhn_completed(rng, rng.randint(12, 20))
                separator = rng.choice(["", " ", "-", "  ", " - "])
                step = rng.choice([4, 3, 5])
                parts.append(separator.join(number[i:i + step]
                                            for i in range(0, len(number), step)))
            elif kind < 0.6:
                parts.append("".join(rng.choice("0123456789") for _ in range(rng.randint(1, 9))))
            else:
                parts.append(rng.choice(pieces))
        texts.append("".join(parts))
    found = [contains_card_number(text) for text in texts]
    assert found == [_card_number_by_the_pattern_alone(text) for text in texts]
    assert 300 < sum(found) < 2700  # both answers are well represented


def test_scan_text_names_the_field_never_the_digits() -> None:
    categories: set[Category] = set()
    evidence: list[str] = []
    scan_text("customer_note", "please use 4111 1111 1111 1111", categories, evidence)
    assert categories == {Category.FREE_TEXT, Category.CARD_NUMBER}
    assert evidence == ["card number pattern in customer_note"]
    assert not any(char.isdigit() for char in evidence[0])


def test_has_value_treats_blank_and_anonymised_zeros_as_empty() -> None:
    assert not has_value("  ")
    assert not has_value("0000000000")
    assert not has_value({"a": "", "b": None})
    assert has_value({"a": "", "b": "x"})
    assert has_value("+44 7700 900123")


@pytest.mark.parametrize(("text", "expected"), [
    ("(000) 000-0000", False), ("+00 0000 000000", False), (" - ", False), ("0\t0", True),
    ("0 a 0", True), ("+44 (0) 0000", True), ("()x", True), ("\u00a0", False), ("é", True),
])
def test_has_value_sees_content_beyond_zeros_blanks_and_phone_punctuation(
        text: str, expected: bool) -> None:
    assert has_value(text) is expected
