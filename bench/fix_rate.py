"""How fast a bulk `fix` writes to one live shop: throttled at [fix] writes_per_second, and
unthrottled as the baseline in the same run.

Starts the sandbox twins on loopback, adds --orders abandoned orders past their period to
one shop, syncs and audits, then runs `fix --rule unpaid-order-past-retention` through
daemon.fix (plan, live read, write, ledger update, trail entry, read-back) and prints the
writes per second the shop saw: median of --runs fresh estates for each rate. A figure,
not a test.

    .venv/bin/python bench/fix_rate.py                  # 2/s (the default) against unthrottled
    .venv/bin/python bench/fix_rate.py --rate 5 --orders 30 --runs 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from daemon import trail  # noqa: E402
from daemon.access import open_systems  # noqa: E402
from daemon.audit import run_audit  # noqa: E402
from daemon.config import load_settings  # noqa: E402
from daemon.fix import apply_fix, plan_rule  # noqa: E402
from daemon.sources import sync_configured  # noqa: E402
from sandbox.demo import RunningEstate  # noqa: E402
from sandbox.estate import EstateSpec  # noqa: E402
from sandbox.seed import build_estate  # noqa: E402

RULE = "unpaid-order-past-retention"


def one_run(rate: float, orders: int) -> tuple[float, int]:
    """(writes per second the shop saw, writes) for one fresh estate."""
    estate = build_estate(EstateSpec(seed=5, people=10, now=datetime.now(UTC)))
    with RunningEstate(estate) as running, tempfile.TemporaryDirectory() as work:
        shop_name = next(iter(estate.shops))
        shop = estate.shops[shop_name]
        old = datetime.now(UTC) - timedelta(days=400)
        for n in range(orders):
            shop.add_order(status="pending", date_created=old,
                           billing={"email": f"bench{n}@example.com"})
        directory = Path(work)
        settings = load_settings(running.write_config(
            directory / "config", ledger_url=f"sqlite:///{directory / 'ledger.db'}"))
        ledger = trail.open_ledger(settings.ledger)
        try:
            sync_configured(ledger, settings, full=True)
            run_audit(ledger, settings.retention)
            plan = plan_rule(ledger, RULE, source=shop_name)
            before = shop.writes
            with open_systems(settings) as systems:
                started = time.perf_counter()
                result = apply_fix(ledger, systems, plan, settings.retention, rate=rate)
                elapsed = time.perf_counter() - started
            if not result.complete:
                raise SystemExit(f"the fix did not complete: "
                                 f"{[o.error for o in result.outcomes if not o.ok]}")
            writes = shop.writes - before
        finally:
            ledger.close()
    # n writes spaced by the throttle span n-1 gaps: the rate between the first and last.
    return (writes - 1) / elapsed if writes > 1 else float("nan"), writes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=2.0, help="writes_per_second to test")
    parser.add_argument("--orders", type=int, default=20)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    figures = {}
    for label, rate in (("unthrottled", 10_000.0), (f"throttled {args.rate:g}/s", args.rate)):
        rates = []
        for _ in range(args.runs):
            per_second, writes = one_run(rate, args.orders)
            rates.append(per_second)
        figures[label] = statistics.median(rates)
        print(f"{label:<16} {figures[label]:8.2f} writes/s to one shop "
              f"(median of {args.runs} runs, {writes} writes each: "
              f"{', '.join(f'{r:.2f}' for r in rates)})")
    base, throttled = figures.values()
    print(f"throttled / unthrottled: {throttled / base:.3f}; configured {args.rate:g}/s, "
          f"seen {throttled:.2f}/s")


if __name__ == "__main__":
    main()
