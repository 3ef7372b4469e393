"""The command line: a thin click layer that parses, calls the library and prints."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click

from connectors.base import normalise_email
from daemon import logs
from daemon.config import ConfigError, Settings, load_settings
from daemon.ledger import Ledger, LedgerError

DEFAULT_CONFIG = Path("/etc/privacy-ledger/config.toml")


class App:
    """What every command shares: the config path, loaded once on first use."""

    def __init__(self, config_path: Path) -> None:
        self.config_path = config_path
        self._settings: Settings | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings(self.config_path)
            logs.add_secrets(self._settings.secret_values())
        return self._settings

    def ledger(self) -> Ledger:
        return Ledger.open(self.settings.ledger.database_url)


class _Group(click.Group):
    """Turns the errors meant for people into one clear line and an exit status."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ConfigError as exc:
            for problem in exc.problems:
                click.echo(f"config error: {problem}", err=True)
            ctx.exit(2)
        except LedgerError as exc:
            click.echo(f"ledger error: {exc}", err=True)
            ctx.exit(1)


def _time(value: Any) -> str:
    return value.strftime("%Y-%m-%d") if value else "-"


@click.group(cls=_Group)
@click.option("--config", "config_path", type=click.Path(path_type=Path, dir_okay=False),
              envvar="PRIVACY_LEDGER_CONFIG", default=DEFAULT_CONFIG, show_default=True,
              help="The TOML config file (or $PRIVACY_LEDGER_CONFIG).")
@click.version_option(package_name="privacy-ledger")
@click.pass_context
def main(ctx: click.Context, config_path: Path) -> None:
    """privacy-ledger: who is held where, which categories of personal data, since when."""
    ctx.obj = App(config_path)
    logs.configure(sys.stderr)


def _progress_printer() -> Callable[[str, int], None] | None:
    if not sys.stderr.isatty():
        return None

    def show(source: str, done: int) -> None:
        click.echo(f"\r{source}: {done:,} records", err=True, nl=False)

    return show


@main.command()
@click.option("--source", "only", metavar="NAME",
              help="Only this source: woo:<shop>, a shop name, stripe or mailchimp.")
@click.option("--full", is_flag=True,
              help="List everything and mark what is no longer upstream as gone.")
@click.pass_obj
def sync(app: App, only: str | None, full: bool) -> None:
    """Pull the configured sources into the ledger."""
    from daemon.sources import UnknownSourceError, sync_configured

    ledger = app.ledger()
    try:
        results = sync_configured(ledger, app.settings, only=only, full=full,
                                  progress=_progress_printer())
    except UnknownSourceError as exc:
        raise click.UsageError(str(exc)) from None
    finally:
        ledger.close()
    if sys.stderr.isatty():
        click.echo("", err=True)
    for result in results:
        line = (f"{result.source}: {result.status} ({result.mode}) — {result.seen:,} seen, "
                f"{result.changed:,} changed, {result.skipped:,} skipped, "
                f"{result.gone:,} gone")
        click.echo(line + (f" — {result.error}" if result.error else ""))
    if any(not r.ok for r in results):
        sys.exit(1)


@main.command()
@click.argument("email")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--current", is_flag=True, help="Leave out holdings gone upstream.")
@click.pass_obj
def where(app: App, email: str, as_json: bool, current: bool) -> None:
    """Every holding of one person: source, record, categories, dates."""
    normalised = normalise_email(email)
    if normalised is None:
        raise click.BadParameter(f"{email!r} is not an email address", param_hint="EMAIL")
    ledger = app.ledger()
    try:
        holdings = ledger.holdings_for(normalised, include_gone=not current)
    finally:
        ledger.close()
    if as_json:
        click.echo(json.dumps([asdict(h) for h in holdings], default=str, indent=2))
        return
    if not holdings:
        click.echo(f"{normalised} is held nowhere the ledger knows of.")
        return
    click.echo(f"{normalised} — {len(holdings)} holding(s)")
    for h in holdings:
        state = f"gone {_time(h.gone_at)}" if h.gone_at else (h.status or "held")
        if h.anonymised:
            state += ", anonymised"
        click.echo(f"  {h.source:<24} {h.record_type:<10} {h.external_id:<20} {state:<16} "
                   f"created {_time(h.created_at)}  seen {_time(h.first_seen)}"
                   f"–{_time(h.last_seen)}")
        click.echo(f"  {'':<24} {', '.join(h.categories)}")
        for note in h.evidence:
            click.echo(f"  {'':<24} ! {note}")


@main.command()
@click.option("--out", type=click.Path(path_type=Path, file_okay=False),
              default=Path("demo-out"), show_default=True,
              help="Directory for the demo's config, secrets and ledger.")
@click.option("--people", default=300, show_default=True, help="People in the estate.")
@click.option("--seed", default=7, show_default=True, help="Seed of the estate.")
def demo(out: Path, people: int, seed: int) -> None:
    """Start the sandbox estate on 127.0.0.1, sync it into a fresh ledger, show the result."""
    from daemon.demo import run_demo

    for line in run_demo(out, people=people, seed=seed):
        click.echo(line)
