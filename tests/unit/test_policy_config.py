"""The [policy] section: what the published policy declares, validated at the edge."""

from __future__ import annotations

import tomllib

import pytest

from daemon.catalogue import SYSTEM_PROCESSORS, known_processors, plugins, slug_of
from daemon.config import ConfigError, parse_settings
from sandbox.demo import SEED_POLICY


def _parse(policy: dict) -> object:
    return parse_settings({"policy": policy}, origin="config.toml", read_secrets="none")


def test_the_seed_policy_parses_to_its_promises() -> None:
    settings = parse_settings(tomllib.loads("\n".join(SEED_POLICY)), read_secrets="none")
    assert settings.policy is not None
    assert settings.policy.declared("woocommerce") == sorted(
        ["name", "billing_address", "delivery_address", "email", "phone",
         "payment_method_type"])
    assert settings.policy.processors == ["Mailchimp", "Stripe", "WordPress"]
    assert settings.policy.purposes["stripe"] == "to take payments"


def test_no_policy_section_declares_nothing() -> None:
    assert parse_settings({}, read_secrets="none").policy is None


def test_per_system_categories_add_to_those_of_every_system() -> None:
    settings = _parse({"categories": ["email"], "systems": {"mailchimp": ["location"]}})
    assert settings.policy.declared("mailchimp") == ["email", "location"]
    assert settings.policy.declared("stripe") == ["email"]


def test_processors_are_matched_without_regard_to_case() -> None:
    assert _parse({"processors": ["stripe", " Meta "]}).policy.processors == ["Meta", "Stripe"]


@pytest.mark.parametrize("policy, key, named, known", [
    ({"categories": ["name", "ip_adress"]}, "policy.categories", "'ip_adress'",
     "the categories are: name, email"),
    ({"systems": {"mailchimp": ["gps"]}}, "policy.systems", "mailchimp: 'gps'",
     "the categories are: name"),
    ({"systems": {"shopify": ["name"]}}, "policy.systems", "'shopify'",
     "keyed by: woocommerce, stripe, mailchimp, wordpress"),
    ({"purposes": {"ebay": "selling"}}, "policy.purposes", "'ebay'",
     "keyed by: woocommerce"),
    ({"processors": ["Stripe", "Fooly"]}, "policy.processors", "'Fooly'",
     "the processors are: Automattic"),
    ({"colour": "red"}, "policy.colour", "unknown key", ""),
])
def test_an_unknown_value_is_a_config_error_naming_the_key_and_the_known_values(
        policy: dict, key: str, named: str, known: str) -> None:
    with pytest.raises(ConfigError) as raised:
        _parse(policy)
    (problem,) = raised.value.problems
    assert problem.startswith(f"config.toml: {key}: ")
    assert named in problem and known in problem


def test_the_catalogue_cites_a_source_for_every_plugin_and_knows_the_systems() -> None:
    entries = plugins()
    for slug in ("facebook-for-woocommerce", "google-listings-and-ads", "klaviyo",
                 "woocommerce-paypal-payments", "woocommerce-payments", "jetpack"):
        assert entries[slug].source.startswith("https://")
    assert set(SYSTEM_PROCESSORS.values()) <= set(known_processors())
    assert slug_of("facebook-for-woocommerce/facebook-for-woocommerce.php") == \
        "facebook-for-woocommerce"
    assert slug_of("hello.php") == "hello"
