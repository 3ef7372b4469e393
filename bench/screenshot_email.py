"""Headless Chromium screenshots of the morning email, at a desktop width (760 px) and a
phone's (400 px), so that a person can look at its layout. Not a test and never part of the
test run; commit no image.

    .venv/bin/python bench/screenshot_email.py demo-out/digest.html       # an HTML file
    .venv/bin/python bench/screenshot_email.py --config demo-out/config.toml --audit
                                              # the demo's ledger (after `make demo`)

`make email-screenshot` runs the demo and then the second form, writing
demo-out/email-760.png and demo-out/email-400.png. `--width` (repeatable) picks other
widths. Needs Chromium (`apt-get install chromium`); prints the paths it wrote.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# A desktop client's reading pane, and a phone held upright.
DEFAULT_WIDTHS = (760, 400)
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def render_from_config(config: Path, html_out: Path, *, audit: bool) -> Path:
    """The digest of the ledger that config names, written as HTML."""
    from daemon import audit as audit_module
    from daemon.config import load_settings
    from daemon.ledger import Ledger
    from daemon.report import render_digest

    settings = load_settings(config)
    ledger = Ledger.open(settings.ledger.database_url)
    try:
        if audit:
            audit_module.run_audit(ledger, settings.retention)
        rendered = render_digest(ledger, settings)
    finally:
        ledger.close()
    html_out.write_text(rendered.html, encoding="utf-8")
    print(f"subject: {rendered.subject}")
    return html_out


def screenshot(html: Path, png: Path, *, width: int, height: int) -> None:
    browser = next((found for name in BROWSERS if (found := shutil.which(name))), None)
    if browser is None:
        sys.exit("no Chromium found: apt-get install chromium (or set PATH)")
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             "--no-first-run", f"--user-data-dir={profile}", f"--window-size={width},{height}",
             f"--screenshot={png.resolve()}", html.resolve().as_uri()],
            check=True, capture_output=True, timeout=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("html", nargs="?", type=Path, help="an HTML email to photograph")
    parser.add_argument("--config", type=Path, help="render the digest of this config's ledger")
    parser.add_argument("--audit", action="store_true",
                        help="run the audit on that ledger first (the demo's is throwaway)")
    parser.add_argument("--out", type=Path, default=Path("demo-out/email.png"),
                        help="the PNGs to write: email.png gives email-760.png, email-400.png")
    parser.add_argument("--width", type=int, action="append", dest="widths",
                        help="window width in pixels, repeatable (default: 760 and 400)")
    parser.add_argument("--height", type=int, default=6400,
                        help="window height in pixels (the whole email at 400 px)")
    args = parser.parse_args()
    if (args.html is None) == (args.config is None):
        parser.error("give either an HTML file or --config")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    html = args.html or render_from_config(args.config, args.out.with_suffix(".html"),
                                           audit=args.audit)
    print(f"html: {html}")
    for width in args.widths or DEFAULT_WIDTHS:
        png = args.out.with_name(f"{args.out.stem}-{width}{args.out.suffix or '.png'}")
        screenshot(html, png, width=width, height=args.height)
        print(f"png:  {png}")


if __name__ == "__main__":
    main()
