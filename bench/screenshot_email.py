"""A headless Chromium screenshot of the morning email, so that a person can look at its
layout. Not a test and never part of the test run; commit no image.

    .venv/bin/python bench/screenshot_email.py demo-out/digest.html       # an HTML file
    .venv/bin/python bench/screenshot_email.py --config demo-out/config.toml --audit
                                              # the demo's ledger (after `make demo`)

`make email-screenshot` runs the demo and then the second form. Needs Chromium
(`apt-get install chromium`); prints the paths of the HTML and the PNG it wrote.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

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
                        help="the PNG to write (default demo-out/email.png)")
    parser.add_argument("--width", type=int, default=760, help="window width in pixels")
    parser.add_argument("--height", type=int, default=3600, help="window height in pixels")
    args = parser.parse_args()
    if (args.html is None) == (args.config is None):
        parser.error("give either an HTML file or --config")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    html = args.html or render_from_config(args.config, args.out.with_suffix(".html"),
                                           audit=args.audit)
    screenshot(html, args.out, width=args.width, height=args.height)
    print(f"html: {html}")
    print(f"png:  {args.out}")


if __name__ == "__main__":
    main()
