"""A system is one unit: each system's package declares its settings, units, record types,
erasure and links in one descriptor; the registry lists them; the daemon names none of them."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from connectors.registry import SYSTEMS, system_for
from connectors.wordpress.system import same_site
from daemon.config import Settings, parse_settings
from vocabulary import SYSTEM_NAMES, source_kind

ROOT = Path(__file__).resolve().parents[2]
# The daemon's modules that route through the registry. The audit's rules and the demo are
# about particular systems' data by design (a rule on WooCommerce orders names them).
ROUTED = ("sources.py", "check.py", "access.py", "erasure.py", "report.py", "sync.py",
          "service.py", "cli.py", "config.py", "mail.py", "terminal.py", "fix.py",
          "fix_words.py", "requests.py")


def test_every_registered_system_has_its_config_section_and_its_name() -> None:
    fields = Settings.model_fields
    for system in SYSTEMS:
        assert system.section in fields
        annotation = str(fields[system.section].annotation)
        assert system.settings.__name__ in annotation
        assert system_for(system.kind) is system
        assert system.kind in {named.kind for named in SYSTEM_NAMES}
        assert system.record_types and all(
            name == described.name for name, described in system.record_types.items())


@pytest.mark.parametrize("module", ROUTED)
def test_the_daemon_switches_on_no_system_name(module: str) -> None:
    names = {s.kind for s in SYSTEMS} | {named.prefix for named in SYSTEM_NAMES}
    tree = ast.parse((ROOT / "daemon" / module).read_text(encoding="utf-8"))
    # Docstrings may give examples; code may not compare with a name.
    prose = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Expr)}
    # A setting's documented examples are data for the reader, not a comparison.
    prose |= {id(inner) for node in ast.walk(tree)
              if isinstance(node, ast.keyword) and node.arg in ("examples", "description")
              for inner in ast.walk(node.value)}
    literals = [node.value for node in ast.walk(tree)
                if isinstance(node, ast.Constant) and isinstance(node.value, str)
                and id(node) not in prose
                and (node.value in names or any(node.value.startswith(f"{n}:") for n in names))]
    assert literals == [], f"daemon/{module} names a system: {literals}"


def _settings(**sections: object) -> Settings:
    return parse_settings(sections, read_secrets="none")


def test_units_come_from_each_configured_section_in_registry_order() -> None:
    keys = {"consumer_key": "env:K", "consumer_secret": "env:S"}
    settings = _settings(
        wordpress=[{"name": "blog", "url": "https://blog.example", "user": "u",
                    "app_password": "env:P"}],
        mailchimp={"api_key": "env:M", "base_url": "http://127.0.0.1:1/3.0"},
        stripe={"api_key": "env:S"},
        woocommerce=[{"name": "a", "url": "https://a.example", **keys},
                     {"name": "b", "url": "https://b.example", **keys}])
    assert settings.source_names == ["woo:a", "woo:b", "stripe", "mailchimp", "wp:blog"]
    assert [source_kind(name) for name in settings.source_names] == [
        "woocommerce", "woocommerce", "stripe", "mailchimp", "wordpress"]
    assert [key for key, _ in settings.link_makers()] == [
        "woo:a", "woo:b", "stripe", "mailchimp:", "wp:blog"]


@pytest.mark.parametrize("shop, site, same", [
    ("https://shop.example", "https://shop.example/", True),
    ("http://SHOP.example", "https://shop.example", True),
    ("https://shop.example/store", "https://shop.example", False),
    ("https://shop.example:8443", "https://shop.example", False),
    ("https://other.example", "https://shop.example", False),
])
def test_a_site_and_a_shop_are_one_wordpress_by_host_and_path(shop: str, site: str,
                                                              same: bool) -> None:
    assert same_site(shop, site) is same


def test_a_site_under_a_configured_shop_reads_no_accounts(monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    monkeypatch.setenv("K", "ck_x")
    monkeypatch.setenv("P", "abcd efgh ijkl mnop qrst uvwx")
    site = {"name": "blog", "url": "https://shop.example", "user": "u", "app_password": "env:P"}
    shop = {"name": "shop", "url": "https://shop.example/", "consumer_key": "env:K",
            "consumer_secret": "env:K"}
    for shops, users in (([shop], False), ([], True)):
        settings = parse_settings({"wordpress": [site], "woocommerce": shops})
        unit = next(u for _, _, u in settings.units() if u.name == "wp:blog")
        opening = unit.open()
        try:
            assert opening.connectors[0].settings.include_users is users
        finally:
            opening.close()


def test_two_sites_with_one_name_are_refused() -> None:
    from daemon.config import ConfigError

    site = {"name": "blog", "url": "https://a.example", "user": "u", "app_password": "env:P"}
    with pytest.raises(ConfigError) as refused:
        _settings(wordpress=[site, {**site, "url": "https://b.example"}])
    assert "wordpress: names must be unique: blog appear twice" in str(refused.value)
