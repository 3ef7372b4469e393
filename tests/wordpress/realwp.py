"""A real WordPress (Debian's package) on 127.0.0.1 for the contract tests: its own copy of
the site, a database of its own in the machine's MariaDB, served by PHP's built-in server,
seeded from the same spec as the twin. `RealWordPress.start()` raises `Unavailable` with the
reason when something it needs is missing, so the tests can skip and say why.

Facts it relies on (Debian 12, WordPress 6.1): Debian's wp-config.php only reads
/etc/wordpress, so the site gets its own; Debian's bundled libraries are relative symlinks
that break in a copy, so the tree is copied dereferenced; `php -S` has no rewrite rules, so a
router sends every missing path to index.php; application passwords need HTTPS unless the
environment type is `local`.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

WORDPRESS = Path("/usr/share/wordpress")
HERE = Path(__file__).resolve().parent
ADMIN_USER = "admin"
ADMIN_EMAIL = "admin@example.test"
# A fixed application password (WordPress strips the spaces), so runs are repeatable.
APP_PASSWORD = "abcd EFGH ijkl MNOP qrst UVWX"
DB_HOST = os.environ.get("PRIVACY_LEDGER_TEST_MARIADB", "127.0.0.1:3306")


class Unavailable(Exception):
    """A real WordPress cannot run here; the message says what is missing."""


@dataclass(frozen=True)
class Site:
    url: str
    admin_user: str
    app_password: str
    # A subscriber's application password: authenticated but not allowed to edit.
    subscriber_user: str
    subscriber_password: str
    root: Path

    @property
    def rest(self) -> str:
        return f"{self.url}/wp-json"


def _run(args: list[str], **options: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, check=False, timeout=120,
                          stdin=subprocess.DEVNULL, **options)


def _mariadb(sql: str) -> None:
    host, _, port = DB_HOST.partition(":")
    done = _run(["mariadb", "-uroot", f"-h{host}", f"-P{port or 3306}", "-e", sql])
    if done.returncode != 0:
        raise Unavailable(f"MariaDB at {DB_HOST} (root, no password) refused: "
                          f"{done.stderr.strip()[:200]}")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def missing() -> str | None:
    """What this machine lacks for a real WordPress, or None."""
    if not (WORDPRESS / "wp-includes" / "version.php").exists():
        return "Debian's wordpress package is not installed (make test installs it as root)"
    if shutil.which("php") is None:
        return "php-cli is not installed (make test installs it as root)"
    modules = _run(["php", "-m"]).stdout.split()
    if "mysqli" not in modules:
        return "php-mysql is not installed (make test installs it as root)"
    if shutil.which("mariadb") is None:
        return "the MariaDB client is not installed"
    return None


class RealWordPress:
    """One real WordPress site, from nothing to serving, and back to nothing."""

    def __init__(self, state_dir: Path, spec: dict[str, Any]) -> None:
        self.state_dir = state_dir
        self.spec = spec
        self.database = f"wp_it_{os.getpid()}_{secrets.token_hex(3)}"
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server: subprocess.Popen[bytes] | None = None
        self.site: Site | None = None
        self.seeded: dict[str, Any] = {}

    def start(self) -> Site:
        reason = missing()
        if reason:
            raise Unavailable(reason)
        _mariadb(f"CREATE DATABASE `{self.database}` CHARACTER SET utf8mb4 "
                 "COLLATE utf8mb4_unicode_ci")
        try:
            root = self._copy_site()
            self._php(root, "install.php")
            spec = {**self.spec, "app_password": APP_PASSWORD}
            (self.state_dir / "seed.json").write_text(json.dumps(spec), encoding="utf-8")
            self.seeded = json.loads(self._php(root, "seed.php",
                                               str(self.state_dir / "seed.json")))
            seeded = self.seeded
            self._serve(root)
            self.site = Site(self.url, ADMIN_USER, APP_PASSWORD, seeded["subscriber_user"],
                             seeded["subscriber_password"], root)
            self._wait_until_serving()
        except BaseException:
            self.stop()
            raise
        return self.site

    def stop(self) -> None:
        if self._server is not None and self._server.poll() is None:
            # php -S with workers forks: its whole process group goes.
            os.killpg(self._server.pid, signal.SIGTERM)
            try:
                self._server.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self._server.pid, signal.SIGKILL)
                self._server.wait(10)
        self._server = None
        try:
            _mariadb(f"DROP DATABASE IF EXISTS `{self.database}`")
        except Unavailable:
            pass

    # -- the steps --------------------------------------------------------------------------
    def _copy_site(self) -> Path:
        root = self.state_dir / "site"
        shutil.copytree(WORDPRESS, root, symlinks=False, ignore_dangling_symlinks=True,
                        ignore=shutil.ignore_patterns(".htaccess", "wp-config.php"))
        host, _, port = DB_HOST.partition(":")
        salts = "\n".join(f"define('{name}', '{secrets.token_hex(32)}');" for name in (
            "AUTH_KEY", "SECURE_AUTH_KEY", "LOGGED_IN_KEY", "NONCE_KEY", "AUTH_SALT",
            "SECURE_AUTH_SALT", "LOGGED_IN_SALT", "NONCE_SALT"))
        (root / "wp-config.php").write_text(f"""<?php
define('DB_NAME', '{self.database}');
define('DB_USER', 'root');
define('DB_PASSWORD', '');
define('DB_HOST', '{host}:{port or 3306}');
define('DB_CHARSET', 'utf8mb4');
define('DB_COLLATE', '');
{salts}
$table_prefix = 'wp_';
define('WP_HOME', '{self.url}');
define('WP_SITEURL', '{self.url}');
define('WP_ENVIRONMENT_TYPE', 'local');
define('WP_CONTENT_DIR', __DIR__ . '/wp-content');
define('DISABLE_WP_CRON', true);
define('AUTOMATIC_UPDATER_DISABLED', true);
define('WP_HTTP_BLOCK_EXTERNAL', true);
define('WP_DEBUG', false);
if (!defined('ABSPATH')) define('ABSPATH', __DIR__ . '/');
require_once ABSPATH . 'wp-settings.php';
""", encoding="utf-8")
        mu = root / "wp-content" / "mu-plugins"
        mu.mkdir(parents=True, exist_ok=True)
        # No mail transfer agent here: WordPress's mails (install, new users) go nowhere.
        (mu / "no-mail.php").write_text(
            "<?php\nfunction wp_mail() { return true; }\n", encoding="utf-8")
        return root

    def _php(self, root: Path, script: str, *args: str) -> str:
        done = _run(["php", str(HERE / script), str(root), *args], cwd=root)
        if done.returncode != 0:
            raise Unavailable(f"WordPress {script} failed ({done.returncode}): "
                              f"{(done.stdout + done.stderr).strip()[-400:]}")
        return done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""

    def _serve(self, root: Path) -> None:
        log = (self.state_dir / "php-server.log").open("wb")
        self._server = subprocess.Popen(
            ["php", "-S", f"127.0.0.1:{self.port}", "-t", str(root),
             str(HERE / "router.php")],
            cwd=root, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, env={**os.environ, "PHP_CLI_SERVER_WORKERS": "4"})

    def _wait_until_serving(self) -> None:
        deadline = time.monotonic() + 30
        last = ""
        while time.monotonic() < deadline:
            if self._server is not None and self._server.poll() is not None:
                break
            try:
                answer = requests.get(f"{self.url}/wp-json/wp/v2/users/me",
                                      params={"context": "edit"},
                                      auth=(ADMIN_USER, APP_PASSWORD), timeout=5)
                if answer.status_code == 200:
                    return
                last = f"{answer.status_code} {answer.text[:200]}"
            except requests.RequestException as exc:
                last = type(exc).__name__
            time.sleep(0.1)
        log = (self.state_dir / "php-server.log").read_text("utf-8", "replace")[-400:]
        raise Unavailable(f"the WordPress server did not answer as expected ({last}); {log}")
