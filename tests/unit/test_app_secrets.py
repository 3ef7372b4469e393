"""When the commands read secrets: the config is validated whole for every command, secret
references only checked; the values are read by the commands that use them, and from then on
redacted from every log line."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import structlog

from daemon import logs
from daemon.cli import App
from daemon.config import ConfigError, SecretNotRead, UnreadSecret

CANARY = "sk_live_CANARYreadLate51"


def config_with(tmp_path: Path, body: str) -> Path:
    tmp_path.mkdir(exist_ok=True)
    path = tmp_path / "config.toml"
    path.write_text(f'[ledger]\nstate_dir = "{tmp_path}"\n{body}')
    return path


def test_secrets_are_read_only_when_a_command_asks_and_redacted_once_read(
        tmp_path: Path) -> None:
    key = tmp_path / "stripe-key"
    key.write_text(CANARY + "\n")
    app = App(config_with(tmp_path, f'[stripe]\napi_key = "file:{key}"\n'))

    unread = app.settings.stripe
    assert unread is not None and isinstance(unread.api_key, UnreadSecret)
    with pytest.raises(SecretNotRead, match=f"secret file:{key} was not read"):
        unread.api_key.get_secret_value()
    assert CANARY not in app.settings.secret_values()
    assert CANARY not in repr(app.settings)

    read = app.settings_with_secrets.stripe
    assert read is not None and read.api_key.get_secret_value() == CANARY
    stream = io.StringIO()
    logs.configure(stream, json=True)
    structlog.get_logger("test").warning("upstream.said", body=f"bad key {CANARY}")
    assert json.loads(stream.getvalue())["body"] == "bad key ***"


def test_a_secret_that_cannot_be_read_fails_only_the_commands_that_read_it(
        tmp_path: Path) -> None:
    app = App(config_with(tmp_path, '[stripe]\napi_key = "file:/nonexistent/stripe-key"\n'
                                    '[mailchimp]\napi_key = "env:PL_TEST_NO_SUCH_VARIABLE"\n'))
    assert app.settings.source_names == ["stripe", "mailchimp"]
    with pytest.raises(ConfigError) as raised:
        app.settings_with_secrets  # noqa: B018 - reading is the point
    path = tmp_path / "config.toml"
    assert raised.value.problems == [
        f"{path}: stripe.api_key: secret file:/nonexistent/stripe-key: "
        "/nonexistent/stripe-key does not exist",
        f"{path}: mailchimp.api_key: secret env:PL_TEST_NO_SUCH_VARIABLE: environment "
        "variable PL_TEST_NO_SUCH_VARIABLE is not set"]

    # The form of a reference is still checked for every command.
    pasted = App(config_with(tmp_path / "pasted", '[stripe]\napi_key = "rk_live_pasted"\n'))
    with pytest.raises(ConfigError) as raised:
        pasted.settings  # noqa: B018
    assert raised.value.problems == [
        f"{tmp_path / 'pasted' / 'config.toml'}: stripe.api_key: write secrets as a reference "
        "— env:NAME, file:/path or credential:NAME — never the value itself in the config file"]
