"""The shop's own answers about itself, connector against the WooCommerce twin over HTTP:
active plugins from system_status, the erasure settings from settings/account, the clean-up
periods from wc-admin/options, and what each role's key may read (OAuth over plain HTTP, and
Basic behind https)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests

from connectors.woocommerce import (
    RETENTION_OPTIONS,
    Settings,
    connect,
    read_shop_state,
    relative_period,
)
from sandbox import woocommerce_admin as admin
from sandbox.server import TwinServer
from sandbox.woocommerce import WooCommerceTwin


@pytest.fixture(params=[False, True], ids=["oauth", "basic"])
def shop(request: pytest.FixtureRequest) -> Iterator[tuple[WooCommerceTwin, TwinServer]]:
    twin = WooCommerceTwin("allmyink", https=request.param)
    twin.admin.plugins.append(admin.plugin(
        "facebook-for-woocommerce/facebook-for-woocommerce.php", "Facebook for WooCommerce",
        "3.5.7", "Facebook"))
    twin.admin.options["woocommerce_trash_pending_orders"] = admin.period(30, "days")
    twin.admin.options["woocommerce_anonymize_completed_orders"] = admin.period(6, "years")
    twin.admin.options["woocommerce_erasure_request_removes_order_data"] = "yes"
    with TwinServer(twin) as server:
        yield twin, server


def _state(twin: WooCommerceTwin, server: TwinServer):
    connector = connect(Settings(name="allmyink", url=server.url,
                                 consumer_key=twin.consumer_key,
                                 consumer_secret=twin.consumer_secret,
                                 sleep=lambda _: None, retry_attempts=1, timeout=5.0,
                                 auth="basic" if twin.https else "auto"))
    try:
        return read_shop_state(connector)
    finally:
        connector.close()


def test_an_administrators_key_reads_plugins_erasure_and_clean_up(shop) -> None:
    twin, server = shop
    state = _state(twin, server)
    assert all(part.ok for part in state.parts), state.parts
    assert [p.plugin for p in state.plugins] == [p["plugin"] for p in twin.admin.plugins]
    options = {o.option: o for o in state.options}
    assert options["woocommerce_trash_pending_orders"].period_seconds == 30 * 86400
    assert options["woocommerce_anonymize_completed_orders"].value == "6 years"
    assert options["woocommerce_trash_failed_orders"].period_seconds is None
    assert options["woocommerce_trash_failed_orders"].value == "off"
    assert options["woocommerce_erasure_request_removes_order_data"].value == "yes"
    assert options["woocommerce_erasure_request_removes_download_data"].value == "no"


def test_a_shop_managers_key_reads_everything_but_the_clean_up_periods(shop) -> None:
    twin, server = shop
    twin.admin.role = "shop_manager"
    state = _state(twin, server)
    parts = {part.part: part for part in state.parts}
    assert parts["plugins"].ok and parts["settings"].ok
    assert not parts["retention"].ok
    assert "manage_options" in parts["retention"].detail
    assert "cannot view these options" in parts["retention"].detail
    assert {o.option for o in state.options if not o.readable} == set(RETENTION_OPTIONS)


def test_a_user_who_may_not_read_system_status_is_told_which_capability(shop) -> None:
    twin, server = shop
    twin.forbidden = {"system_status"}
    state = _state(twin, server)
    parts = {part.part: part for part in state.parts}
    assert not parts["plugins"].ok and state.plugins == ()
    assert "manage_woocommerce" in parts["plugins"].detail
    assert parts["settings"].ok and parts["retention"].ok


def test_the_rest_settings_api_leaves_the_retention_options_out_as_woocommerce_does(
        shop) -> None:
    twin, server = shop
    if not twin.https:
        pytest.skip("read with Basic auth: the shape does not depend on the signature")
    auth = (twin.consumer_key, twin.consumer_secret)
    listed = requests.get(f"{server.url}/wp-json/wc/v3/settings/account", auth=auth,
                          timeout=5).json()
    ids = {item["id"] for item in listed}
    assert "woocommerce_erasure_request_removes_order_data" in ids
    assert ids.isdisjoint(RETENTION_OPTIONS)
    one = requests.get(f"{server.url}/wp-json/wc/v3/settings/account/"
                       "woocommerce_delete_inactive_accounts", auth=auth, timeout=5)
    assert one.status_code == 404 and one.json()["code"] == "rest_setting_setting_invalid"
    status = requests.get(f"{server.url}/wp-json/wc/v3/system_status",
                          params={"_fields": "active_plugins"}, auth=auth, timeout=5).json()
    assert list(status) == ["active_plugins"]
    assert set(status["active_plugins"][0]) == {
        "plugin", "name", "version", "version_latest", "url", "author_name", "author_url",
        "network_activated"}


@pytest.mark.parametrize("value, expected", [
    ({"number": "24", "unit": "months"}, (24 * 30 * 86400, "24 months")),
    ({"number": "", "unit": "months"}, (None, "off")),
    ("", (None, "off")),
    ({"number": "0", "unit": "days"}, (None, "off")),
    ({"number": "3", "unit": "fortnights"}, (None, "off")),
    ({"number": "x", "unit": "days"}, (None, "off")),
    (False, (None, "off")),
])
def test_a_relative_period_is_read_as_woocommerce_parses_it(value, expected) -> None:
    assert relative_period(value) == expected


def test_a_site_that_is_not_production_refuses_the_clean_up_options_to_everyone(shop) -> None:
    twin, server = shop
    twin.admin.environment = "staging"
    parts = {part.part: part for part in _state(twin, server).parts}
    assert parts["plugins"].ok and parts["settings"].ok and not parts["retention"].ok
    assert "non-production environments" in parts["retention"].detail
    assert "production" in parts["retention"].detail.split(":")[-1]
