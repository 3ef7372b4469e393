"""The contract suite's two WordPress servers: the twin (sandbox/wordpress.py) and a real
WordPress (Debian's package, tests/wordpress/realwp.py), seeded from one spec. A test that
takes `wordpress` runs against both; where they answer differently, the real one is right.
The real server skips, saying why, where the machine cannot run it."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from sandbox.server import TwinServer
from sandbox.wordpress import WordPressTwin
from sandbox.wordpress_spec import build_spec
from tests.wordpress.realwp import APP_PASSWORD, RealWordPress, Unavailable, missing

NOW = datetime(2026, 11, 1, 6, 0, tzinfo=UTC)


@dataclass
class Server:
    kind: str
    url: str
    admin: tuple[str, str]
    subscriber: tuple[str, str]
    seeded: dict[str, Any]
    spec: dict[str, Any]
    _maintenance: Any

    @property
    def rest(self) -> str:
        return f"{self.url}/wp-json/wp/v2"

    def maintenance(self, on: bool) -> None:
        self._maintenance(on)


@pytest.fixture(scope="session")
def wp_spec() -> dict[str, Any]:
    return build_spec(seed=1, people=30, comments=60, now=NOW)


@pytest.fixture(scope="session")
def twin_wordpress(wp_spec: dict[str, Any]) -> Iterator[Server]:
    twin = WordPressTwin()
    with TwinServer(twin) as server:
        twin.url = server.url
        seeded = twin.load(wp_spec, admin_password=APP_PASSWORD)

        def maintenance(on: bool) -> None:
            twin.maintenance = on

        yield Server("twin", server.url, ("admin", APP_PASSWORD),
                     (seeded["subscriber_user"], seeded["subscriber_password"]), seeded,
                     wp_spec, maintenance)


@pytest.fixture(scope="session")
def real_wordpress(wp_spec: dict[str, Any],
                   tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    reason = missing()
    if reason:
        pytest.skip(f"real WordPress: {reason}")
    real = RealWordPress(tmp_path_factory.mktemp("wordpress"), wp_spec)
    try:
        site = real.start()
    except Unavailable as exc:
        pytest.skip(f"real WordPress: {exc}")
    flag = Path(site.root) / ".maintenance"

    def maintenance(on: bool) -> None:
        if on:
            flag.write_text("<?php $upgrading = time();", encoding="utf-8")
        else:
            flag.unlink(missing_ok=True)

    try:
        yield Server("real", site.url, (site.admin_user, site.app_password),
                     (site.subscriber_user, site.subscriber_password), real.seeded, wp_spec,
                     maintenance)
    finally:
        real.stop()


@pytest.fixture(params=["twin", "real"])
def wordpress(request: pytest.FixtureRequest) -> Server:
    """The same test against the twin and against a real WordPress."""
    return request.getfixturevalue(f"{request.param}_wordpress")
