"""A WooCommerce shop name is the whole value: a trailing newline or blank does not pass,
and the message names the file and the key on one line."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from daemon.cli import main
from daemon.config import ConfigError, load_settings

SHOP = ('[[woocommerce]]\nname = "{name}"\nurl = "https://allmyink.example"\n'
        'consumer_key = "env:KEY"\nconsumer_secret = "env:SECRET"\n')


@pytest.mark.parametrize("name", [r"allmyink\n", r"allmyink\r\n", "allmyink ", r"\nallmyink"])
def test_shop_name_with_a_newline_or_blank_around_it_is_refused_naming_the_key(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setenv("KEY", "ck_unit")
    monkeypatch.setenv("SECRET", "cs_unit")
    path = tmp_path / "config.toml"
    path.write_text(SHOP.format(name=name))
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    [problem] = caught.value.problems
    value = name.replace(r"\n", "\n").replace(r"\r", "\r")
    assert problem.startswith(f"{path}: woocommerce[0].name: {value!r} ")
    assert "blank space or a newline" in problem
    assert "\n" not in problem and "\r" not in problem


def test_cli_prints_the_bad_shop_name_on_one_line(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEY", "ck_unit")
    monkeypatch.setenv("SECRET", "cs_unit")
    path = tmp_path / "config.toml"
    path.write_text(SHOP.format(name=r"allmyink\n"))
    result = CliRunner().invoke(main, ["--config", str(path), "sync"])
    assert result.exit_code == 2
    assert result.output.splitlines() == [
        f"config error: {path}: woocommerce[0].name: 'allmyink\\n' (it has blank space or a "
        "newline around it): use lower-case letters, digits, - and _ (max 63)"]


def test_a_good_shop_name_still_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEY", "ck_unit")
    monkeypatch.setenv("SECRET", "cs_unit")
    path = tmp_path / "config.toml"
    path.write_text(SHOP.format(name="all-my_ink2"))
    assert load_settings(path).source_names == ["woo:all-my_ink2"]
