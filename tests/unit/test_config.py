"""Config: validated once, every problem named with file and key, secrets by reference."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from daemon import audit
from daemon import config as config_module
from daemon.cli import main
from daemon.config import (
    ConfigError,
    SecretSources,
    example_toml,
    load_settings,
    parse_settings,
)
from vocabulary import format_duration, parse_duration

REPO = Path(__file__).resolve().parents[2]
CANARY = "ck_CANARY_7f3a9e"


def sources(tmp_path: Path, **env: str) -> SecretSources:
    return SecretSources(environ=env, credentials_dir=tmp_path)


def shop(**overrides: object) -> dict[str, object]:
    return {"name": "allmyink", "url": "https://allmyink.example",
            "consumer_key": "env:KEY", "consumer_secret": "env:SECRET", **overrides}


def test_example_config_is_current() -> None:
    assert (REPO / "config" / "example.toml").read_text(encoding="utf-8") == example_toml(), \
        "config/example.toml is stale: run `privacy-ledger config-example > config/example.toml`"


def test_example_config_validates_when_its_credentials_exist(tmp_path: Path) -> None:
    for name in ("allmyink-key", "allmyink-secret", "stripe-key", "mailchimp-key",
                 "blog-app-password", "smtp-password"):
        (tmp_path / name).write_text("value-of-" + name + "-us6\n")
    settings = load_settings(REPO / "config" / "example.toml", secrets=sources(tmp_path))
    assert settings.woocommerce[0].name == "allmyink"


def test_secret_references_resolve_from_env_file_and_credentials(tmp_path: Path) -> None:
    (tmp_path / "secret-file").write_text("from-file\n")
    (tmp_path / "cred").write_text("from-credential\n")
    settings = parse_settings(
        {"woocommerce": [shop(consumer_key="env:KEY",
                              consumer_secret=f"file:{tmp_path / 'secret-file'}")],
         "stripe": {"api_key": "credential:cred"}},
        secrets=sources(tmp_path, KEY=CANARY))
    assert settings.woocommerce[0].consumer_key.get_secret_value() == CANARY
    assert settings.woocommerce[0].consumer_secret.get_secret_value() == "from-file"
    assert settings.stripe is not None
    assert settings.stripe.api_key.get_secret_value() == "from-credential"
    assert CANARY not in repr(settings) and CANARY not in str(settings)
    assert CANARY in settings.secret_values()


def test_every_problem_is_reported_at_once_with_its_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_settings({"woocommerce": [shop(url="ftp://x", per_page=500)],
                        "retention": {"completed_orders": "6", "network_data": "-1d"},
                        "timezone": "Mars/Olympus"},
                       origin="/etc/pl.toml", secrets=sources(tmp_path))
    problems = caught.value.problems
    joined = "\n".join(problems)
    assert all(p.startswith("/etc/pl.toml: ") for p in problems)
    assert "woocommerce[allmyink].url" in joined
    assert "woocommerce[allmyink].per_page" in joined
    assert "woocommerce[allmyink].consumer_key: secret env:KEY: environment variable KEY " \
           "is not set" in joined
    assert "retention.completed_orders: '6' is not a period" in joined
    assert "retention.network_data: '-1d' is negative" in joined
    assert "timezone: 'Mars/Olympus' is not a time zone" in joined


def test_secret_values_written_into_the_file_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="write secrets as a reference") as caught:
        parse_settings({"stripe": {"api_key": CANARY}}, secrets=sources(tmp_path))
    assert CANARY not in str(caught.value)


def test_missing_credential_names_the_reference(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"secret credential:nope: .*nope does not exist"):
        parse_settings({"stripe": {"api_key": "credential:nope"}}, secrets=sources(tmp_path))


def test_credential_without_credentials_directory_says_what_to_do() -> None:
    with pytest.raises(ConfigError, match="LoadCredential=stripe"):
        parse_settings({"stripe": {"api_key": "credential:stripe"}},
                       secrets=SecretSources(environ={}, credentials_dir=None))


def test_unknown_keys_are_typos(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"woocommerce\[allmyink\].consumer_kee: unknown key"):
        parse_settings({"woocommerce": [shop(consumer_kee="x")]},
                       secrets=sources(tmp_path, KEY="k", SECRET="s"))


def test_shop_names_must_be_unique(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="allmyink appear twice"):
        parse_settings({"woocommerce": [shop(), shop()]},
                       secrets=sources(tmp_path, KEY="k", SECRET="s"))


def test_mailchimp_key_without_data_centre_needs_base_url(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="mailchimp"):
        parse_settings({"mailchimp": {"api_key": "env:MC"}},
                       secrets=sources(tmp_path, MC="0123456789abcdef"))
    settings = parse_settings({"mailchimp": {"api_key": "env:MC",
                                             "base_url": "http://127.0.0.1:9/3.0"}},
                              secrets=sources(tmp_path, MC="0123456789abcdef"))
    assert settings.mailchimp is not None


def test_missing_and_malformed_files_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such config file"):
        load_settings(tmp_path / "absent.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[ledger\nurl = 3\n")
    with pytest.raises(ConfigError, match=rf"{bad}: not valid TOML"):
        load_settings(bad)


def test_cli_prints_one_line_per_problem_and_no_traceback(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('[[woocommerce]]\nname = "Bad Name"\nurl = "x"\n')
    result = CliRunner().invoke(main, ["--config", str(path), "sync"])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert all(line.startswith(f"config error: {path}: ") for line in lines)
    assert len(lines) == 4
    assert "Traceback" not in result.output


@pytest.mark.parametrize(("section", "key"), [("schedule", "sync_interval"),
                                              ("retention", "cancelled_orders")])
def test_a_bare_m_is_refused_naming_minutes_and_months(section: str, key: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_settings({section: {key: "15m"}})
    [problem] = error.value.problems
    assert f"{section}.{key}" in problem
    assert "15min" in problem and "15mo" in problem


def test_min_is_minutes_and_mo_is_months() -> None:
    settings = parse_settings({"schedule": {"sync_interval": "15min", "sync_jitter": "1min"},
                               "retention": {"cancelled_orders": "15mo"}})
    assert settings.schedule.sync_interval == timedelta(minutes=15)
    assert settings.retention.cancelled_orders == timedelta(days=450)


def test_check_fails_on_a_sync_interval_in_m(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(f'[ledger]\nurl = "sqlite:///{tmp_path / "l.db"}"\n'
                    '[schedule]\nsync_interval = "15m"\n', encoding="utf-8")
    result = CliRunner().invoke(main, ["--config", str(path), "check"])
    # A config error: exit 2, as for every command (the README's check step).
    assert result.exit_code == 2
    [line] = [line for line in result.output.splitlines() if line.startswith("config")]
    assert "FAIL" in line and "schedule.sync_interval" in line and "15min" in line


@pytest.mark.parametrize("period", [
    timedelta(days=540), timedelta(days=450), timedelta(days=730), timedelta(days=90),
    timedelta(days=30), timedelta(days=366), timedelta(weeks=3), timedelta(hours=12),
    timedelta(minutes=15), timedelta(seconds=45), timedelta(0), timedelta(days=1, hours=1),
])
def test_every_period_shown_reads_back_as_the_same_period(period: timedelta) -> None:
    shown = format_duration(period)
    assert parse_duration(shown) == period
    assert audit.format_period(period) == shown
    # The example config writes periods through the same formatter.
    assert config_module._toml_value(period) == f'"{shown}"'


def test_period_messages_write_periods_as_the_config_does() -> None:
    with pytest.raises(ConfigError) as error:
        parse_settings({"schedule": {"sync_interval": "15min"}})
    assert "sync_jitter (5min) must be at most a quarter of sync_interval (15min)" in \
        error.value.problems[0]


def test_eighteen_months_print_as_18mo_everywhere() -> None:
    assert format_duration(timedelta(days=540)) == "18mo"
    assert audit.format_period(timedelta(days=540)) == "18mo"
    assert config_module._toml_value(timedelta(days=540)) == '"18mo"'


def test_a_secret_file_gives_its_first_line_only(tmp_path: Path) -> None:
    (tmp_path / "key").write_text(f"  {CANARY}  \r\nrotated by Jo on 2026-11-01\n")
    (tmp_path / "cred").write_text(f"{CANARY}-cred\n\n# note\n")
    settings = parse_settings(
        {"woocommerce": [shop(consumer_key=f"file:{tmp_path / 'key'}",
                              consumer_secret="credential:cred")]},
        secrets=sources(tmp_path))
    assert settings.woocommerce[0].consumer_key.get_secret_value() == CANARY
    assert settings.woocommerce[0].consumer_secret.get_secret_value() == f"{CANARY}-cred"


def test_a_secret_file_whose_first_line_is_empty_says_where_to_write(tmp_path: Path) -> None:
    (tmp_path / "key").write_text(f"\n{CANARY}\n")
    with pytest.raises(ConfigError) as caught:
        parse_settings({"woocommerce": [shop(consumer_key=f"file:{tmp_path / 'key'}")]},
                       secrets=sources(tmp_path, SECRET="x" * 10))
    assert f"woocommerce[allmyink].consumer_key: secret file:{tmp_path / 'key'}: the first " \
        "line" in str(caught.value)
    assert "is empty" in str(caught.value) and CANARY not in str(caught.value)


@pytest.mark.parametrize("bad", ["\t", "\r", "\x00", "\x1b", "\x7f", "\x85", "\x0b"])
def test_a_secret_with_a_control_character_is_refused_without_echoing_it(
        tmp_path: Path, bad: str) -> None:
    value = f"{CANARY}{bad}tail-of-the-secret"
    (tmp_path / "cred").write_bytes(value.encode() + b"\n")
    with pytest.raises(ConfigError) as caught:
        parse_settings({"woocommerce": [shop(consumer_secret="credential:cred")],
                        "stripe": {"api_key": "env:STRIPE"}},
                       secrets=sources(tmp_path, KEY="k" * 10, STRIPE=value))
    problems = caught.value.problems
    assert len(problems) == 2, problems
    assert problems[0].startswith("config: woocommerce[allmyink].consumer_secret: secret "
                                  "credential:cred: the value holds a control character")
    assert problems[1].startswith("config: stripe.api_key: secret env:STRIPE: the value holds "
                                  "a control character")
    assert f"character {len(CANARY) + 1} of {len(value)}" in problems[1]
    for text in problems:
        assert CANARY not in text and "tail-of-the-secret" not in text


def test_max_response_size_takes_a_unit_and_reaches_the_connector(tmp_path: Path) -> None:
    settings = parse_settings(
        {"woocommerce": [shop(max_response_size="8MiB")],
         "stripe": {"api_key": "env:KEY", "max_response_size": "500 KB"},
         "mailchimp": {"api_key": "env:KEY", "base_url": "https://us6.api.mailchimp.com/3.0"}},
        secrets=sources(tmp_path, KEY="k" * 10, SECRET="s" * 10))
    assert settings.woocommerce[0].to_connector().max_response_size == 8 << 20
    assert settings.stripe is not None and settings.mailchimp is not None
    assert settings.stripe.to_connector().max_response_size == 500_000
    assert settings.mailchimp.to_connector().max_response_size == 64 << 20


@pytest.mark.parametrize(("value", "words"), [
    (64, "64 has no unit: write e.g. \"64MiB\""),
    ("lots", "'lots' is not a size: write a whole number and a unit, e.g. 512KiB, 64MiB, "
             "1GiB"),
    ("1KiB", "'1KiB' is too small for one page of an API: use 64KiB or more"),
])
def test_a_bad_max_response_size_names_the_key(tmp_path: Path, value: object,
                                               words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_settings({"woocommerce": [shop(max_response_size=value)]},
                       secrets=sources(tmp_path, KEY="k" * 10, SECRET="s" * 10))
    assert caught.value.problems == [
        f"config: woocommerce[allmyink].max_response_size: {words}"]
