"""Quiet hours: the window a shop's full pull waits for, and the config key that names it."""

from __future__ import annotations

from datetime import UTC, datetime, time
from zoneinfo import ZoneInfo

import pytest

from vocabulary.quiet import parse_window, seconds_until_quiet

LONDON = ZoneInfo("Europe/London")


def test_a_window_is_parsed_and_a_bad_one_says_how_to_write_it() -> None:
    assert parse_window("01:00-06:30") == (time(1, 0), time(6, 30))
    for bad in ("1-6", "25:00-06:00", "06:00-06:00", "night"):
        with pytest.raises(ValueError, match="HH:MM-HH:MM"):
            parse_window(bad)


def test_inside_the_window_there_is_no_wait_and_outside_it_waits_until_it_opens() -> None:
    window = parse_window("01:00-06:00")
    assert seconds_until_quiet(datetime(2026, 12, 2, 2, 0, tzinfo=UTC), window, LONDON) == 0
    # 23:00 in London (winter: UTC) → two hours to 01:00.
    assert seconds_until_quiet(datetime(2026, 12, 2, 23, 0, tzinfo=UTC), window,
                               LONDON) == 7200
    # 06:00 exactly: the window has closed; the next opens in 19 hours.
    assert seconds_until_quiet(datetime(2026, 12, 2, 6, 0, tzinfo=UTC), window,
                               LONDON) == 19 * 3600


def test_a_window_across_midnight() -> None:
    window = parse_window("22:00-05:00")
    assert seconds_until_quiet(datetime(2026, 12, 2, 23, 30, tzinfo=UTC), window, LONDON) == 0
    assert seconds_until_quiet(datetime(2026, 12, 2, 4, 59, tzinfo=UTC), window, LONDON) == 0
    assert seconds_until_quiet(datetime(2026, 12, 2, 21, 0, tzinfo=UTC), window, LONDON) == 3600


def test_the_config_refuses_bad_quiet_hours_naming_the_key() -> None:
    from daemon.config import ConfigError, SecretSources, parse_settings

    raw = {"woocommerce": [{"name": "shop", "url": "https://shop.example",
                            "consumer_key": "env:K", "consumer_secret": "env:S",
                            "quiet_hours": "late"}]}
    with pytest.raises(ConfigError, match="quiet_hours"):
        parse_settings(raw, origin="test", secrets=SecretSources({"K": "k", "S": "s"}, None))
    raw["woocommerce"][0]["quiet_hours"] = "01:00-06:00"
    settings = parse_settings(raw, origin="test",
                              secrets=SecretSources({"K": "k", "S": "s"}, None))
    assert settings.woocommerce[0].quiet_hours == "01:00-06:00"
