"""The sandbox estate running on 127.0.0.1, and a config file pointing privacy-ledger at it:
what the demo, the end-to-end tests and the benchmarks start from."""

from __future__ import annotations

import os
from contextlib import ExitStack
from pathlib import Path
from types import TracebackType

from sandbox.estate import Estate
from sandbox.server import TwinServer


def _write_secret(directory: Path, name: str, value: str) -> Path:
    path = directory / name
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(value + "\n")
    return path


# The seed privacy policy's promises: "name, billing and delivery addresses, email address,
# and telephone numbers … payment method"; browser and connection details "non-personal";
# processors WordPress, Stripe and Mailchimp.
SEED_POLICY = (
    "[policy]",
    'url = "https://allmyink.example/privacy-policy"',
    'categories = ["name", "billing_address", "delivery_address", "email", "phone", '
    '"payment_method_type"]',
    'processors = ["WordPress", "Stripe", "Mailchimp"]',
    "",
    "[policy.purposes]",
    'woocommerce = "to take, deliver and account for orders"',
    'stripe = "to take payments"',
    'mailchimp = "to send the newsletter to those who asked for it"',
)


class RunningEstate:
    """Starts every twin of an estate on loopback; writes a config (secrets in files, 0600)
    that points privacy-ledger at them."""

    def __init__(self, estate: Estate) -> None:
        self.estate = estate
        self.servers: dict[str, TwinServer] = {}
        self._stack = ExitStack()

    def __enter__(self) -> RunningEstate:
        for name, twin in self.estate.twins.items():
            self.servers[name] = self._stack.enter_context(TwinServer(twin))
            if name.startswith("wp:"):
                twin.url = self.servers[name].url  # the links the site gives name itself
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self._stack.close()

    def url(self, source: str) -> str:
        return self.servers[source].url

    def write_config(self, directory: Path, *, ledger_url: str | None = None,
                     batch_size: int | None = None, extra: str = "",
                     policy: bool = False) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        secrets = directory / "secrets"
        secrets.mkdir(mode=0o700, exist_ok=True)
        lines = ["# Written by privacy-ledger's sandbox: every system is a twin on 127.0.0.1.",
                 'timezone = "Europe/London"', "", "[ledger]",
                 f'state_dir = "{directory}"']
        if ledger_url:
            lines.append(f'url = "{ledger_url}"')
        if batch_size:
            lines.append(f"batch_size = {batch_size}")
        for shop, twin in self.estate.shops.items():
            key = _write_secret(secrets, f"{shop}-key", twin.consumer_key)
            secret = _write_secret(secrets, f"{shop}-secret", twin.consumer_secret)
            lines += ["", "[[woocommerce]]", f'name = "{shop}"',
                      f'url = "{self.url("woo:" + shop)}"',
                      f'consumer_key = "file:{key}"', f'consumer_secret = "file:{secret}"']
        stripe_key = _write_secret(secrets, "stripe-key", self.estate.stripe.api_key)
        lines += ["", "[stripe]", f'api_key = "file:{stripe_key}"',
                  f'base_url = "{self.url("stripe")}"']
        mailchimp_key = _write_secret(secrets, "mailchimp-key", self.estate.mailchimp.api_key)
        lines += ["", "[mailchimp]", f'api_key = "file:{mailchimp_key}"',
                  f'base_url = "{self.url("mailchimp")}/3.0"']
        for site, twin in self.estate.sites.items():
            password = _write_secret(secrets, f"{site}-app-password", twin.admin_password)
            lines += ["", "[[wordpress]]", f'name = "{site}"',
                      f'url = "{self.url("wp:" + site)}"', f'user = "{twin.admin_user}"',
                      f'app_password = "file:{password}"']
        if policy:
            lines += ["", *SEED_POLICY]
        path = directory / "config.toml"
        path.write_text("\n".join(lines) + "\n" + extra, encoding="utf-8")
        return path
