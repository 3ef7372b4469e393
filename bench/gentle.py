"""Benchmark 5 — gentle to a live shop: a full pull from a WooCommerce twin with finite
capacity while a shopper browses it.

The twin has W PHP workers (default 4); a page holds one for `base + per_item × records`
seconds, requests beyond W queue. A shopper (a process of its own) requests a storefront page
every 200 ms and records how long it waits. privacy-ledger's full pull of the shop is timed:

    bound = Σ worker-seconds of its pages ÷ (W − 1)

(the adaptive limiter leaves one worker for the shop's customers, so W − 1 is what it may
use), and the shopper's p95 during the pull is set against its p95 with privacy-ledger idle.
Median of `--runs` pulls for the adaptive limiter and for a fixed concurrency of 4 (the
previous behaviour), in the same run. Targets (adaptive): wall ≤ 1.25 × bound; shopper p95 ≤
1.5 × idle.

    .venv/bin/python bench/gentle.py                 # 100,000 orders, 25,000 customers
    .venv/bin/python bench/gentle.py --scale 0.2     # quicker
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import statistics
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.twins import RunningTwin, TwinFleet, TwinSpec, median  # noqa: E402

SHOPPER_EVERY = 0.2
STOREFRONT = "/shop/"


def _shop(url: str, pipe: Connection) -> None:
    """The shopper: a storefront page every 200 ms until told to stop; sends its latencies."""
    import requests

    session = requests.Session()
    latencies: list[float] = []
    due = time.monotonic()
    while not pipe.poll(max(0.0, due - time.monotonic())):
        started = time.monotonic()
        session.get(url + STOREFRONT, timeout=60)
        latencies.append(time.monotonic() - started)
        due = started + SHOPPER_EVERY
    pipe.recv()
    pipe.send(latencies)


class Shopper:
    def __init__(self, url: str) -> None:
        context = multiprocessing.get_context("spawn")
        self._pipe, child = context.Pipe()
        self._process = context.Process(target=_shop, args=(url, child), daemon=True)

    def __enter__(self) -> Shopper:
        self._process.start()
        return self

    def stop(self) -> list[float]:
        self._pipe.send("stop")
        latencies: list[float] = self._pipe.recv()
        self._process.join(timeout=10)
        return latencies

    def __exit__(self, *exc: object) -> None:
        if self._process.is_alive():
            self._process.terminate()


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1] if len(values) >= 2 else values[0]


def settings_for(twin: RunningTwin, ledger_url: str, *, adaptive: bool, concurrency: int) -> Any:
    from daemon.config import SecretSources, parse_settings

    environ = {"SHOP_KEY": twin.secrets["consumer_key"],
               "SHOP_SECRET": twin.secrets["consumer_secret"]}
    raw = {"ledger": {"url": ledger_url},
           "woocommerce": [{"name": "shop", "url": twin.url, "consumer_key": "env:SHOP_KEY",
                            "consumer_secret": "env:SHOP_SECRET", "adaptive": adaptive,
                            "concurrency": concurrency}]}
    return parse_settings(raw, origin="bench", secrets=SecretSources(environ, None))


class _Limiters:
    """The limiters a pull makes, so that the bench can say what limit they kept."""

    def __init__(self) -> None:
        from connectors import limiter

        self.made: list[Any] = []
        self._class = limiter.Limiter
        made, original = self.made, limiter.Limiter.__init__

        def init(this: Any, *args: Any, **kwargs: Any) -> None:
            original(this, *args, **kwargs)
            made.append(this)

        self._original = original
        self._class.__init__ = init  # type: ignore[method-assign]

    def close(self) -> None:
        self._class.__init__ = self._original  # type: ignore[method-assign]

    def mean_limit(self, until: float, spare: int) -> tuple[float, float]:
        """The time-weighted mean limit of the busiest limiter, and the share of its time
        above `spare` (the workers it may use)."""
        limiter = max(self.made, key=lambda made: len(made.changes))
        changes = [*limiter.changes, (until, limiter.limit)]
        spans = [(b[0] - a[0], a[1]) for a, b in zip(changes, changes[1:], strict=False)]
        total = sum(span for span, _ in spans) or 1.0
        mean = sum(span * limit for span, limit in spans) / total
        above = sum(span for span, limit in spans if limit > spare) / total
        return mean, above


def pull(twin: RunningTwin, folder: str, run: int, *, adaptive: bool, concurrency: int,
         workers: int) -> tuple[float, float, float, float, float]:
    """One full pull into a fresh ledger with the shopper browsing: (wall, bound, p95, the
    limiter's mean limit, its share of time above W − 1)."""
    from daemon.ledger import Ledger
    from daemon.sources import sync_configured

    url = f"sqlite:///{folder}/ledger-{'a' if adaptive else 'f'}{run}.db"
    ledger = Ledger.open(url)
    settings = settings_for(twin, url, adaptive=adaptive, concurrency=concurrency)
    before = twin.control("busy", method="GET")
    limiters = _Limiters()
    try:
        with Shopper(twin.url) as shopper:
            time.sleep(1.0)
            started = time.perf_counter()
            results = sync_configured(ledger, settings, full=True)
            wall = time.perf_counter() - started
            latencies = shopper.stop()
    finally:
        limiters.close()
    ledger.close()
    mean, above = limiters.mean_limit(time.monotonic(), workers - 1)
    failed = [f"{r.source}: {r.error}" for r in results if not r.ok]
    if failed:
        raise RuntimeError("the full pull failed: " + "; ".join(failed))
    after = twin.control("busy", method="GET")
    spent = sum(seconds - before.get(path, 0.0) for path, seconds in after.items()
                if path != STOREFRONT)
    return wall, spent / (workers - 1), p95(latencies), mean, above


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=1.0,
                        help="fraction of 100,000 orders and 25,000 customers (default 1)")
    parser.add_argument("--workers", type=int, default=4, help="the shop's PHP workers (4)")
    parser.add_argument("--base", type=float, default=0.2,
                        help="seconds a request holds a worker before its records (0.2)")
    parser.add_argument("--per-item", type=float, default=0.002,
                        help="seconds more per record on the page (0.002: 0.4 s a page)")
    parser.add_argument("--runs", type=int, default=3, help="pulls per mode (median; 3)")
    parser.add_argument("--fixed", action=argparse.BooleanOptionalAction, default=True,
                        help="also pull with a fixed concurrency of 4 (default: yes)")
    parser.add_argument("--idle", type=float, default=20.0,
                        help="seconds the shopper browses with privacy-ledger idle (20)")
    args = parser.parse_args()
    from daemon import logs

    logs.configure(sys.stderr, level=logging.WARNING, json=True)
    orders, customers = round(100_000 * args.scale), round(25_000 * args.scale)
    out = sys.stdout
    spec = TwinSpec("woocommerce", "shop", {"customers": customers, "orders": orders})
    with tempfile.TemporaryDirectory(prefix="bench-gentle-") as folder, \
            TwinFleet([spec]) as fleet:
        twin = fleet.twins["shop"]
        # Plain http on loopback: the daemon signs with OAuth, as WordPress checks it there.
        twin.control("knobs", {"https": False})
        twin.control("capacity", {"workers": args.workers, "base": args.base,
                                  "per_item": args.per_item})
        with Shopper(twin.url) as shopper:
            time.sleep(args.idle)
            idle = p95(shopper.stop())
        out.write(f"Benchmark 5: full pull of {orders:,} orders and {customers:,} customers from "
                  f"a shop with {args.workers} workers ({args.base * 1000:g} ms + "
                  f"{args.per_item * 1000:g} ms a record per page), a shopper every "
                  f"{SHOPPER_EVERY * 1000:g} ms; median of {args.runs}\n")
        out.write(f"  shopper p95 with privacy-ledger idle: {idle * 1000:.0f} ms\n")
        out.write(f"  {'mode':22} {'wall':>8} {'bound':>8} {'wall/bound':>10} "
                  f"{'shopper p95':>12} {'p95/idle':>9} {'mean limit':>10} "
                  f"{'time > W-1':>10}\n")
        modes = [("adaptive (AIMD, ≤ 8)", True, 8), ("fixed concurrency 4", False, 4)]
        for label, adaptive, concurrency in modes[:2 if args.fixed else 1]:
            runs = [pull(twin, folder, run, adaptive=adaptive, concurrency=concurrency,
                         workers=args.workers) for run in range(args.runs)]
            wall, bound, tail, mean, above = (median(r[i] for r in runs) for i in range(5))
            target = "  (targets ≤ 1.25, ≤ 1.5)" if adaptive else ""
            out.write(f"  {label:22} {wall:7.1f}s {bound:7.1f}s {wall / bound:10.2f} "
                      f"{tail * 1000:10.0f}ms {tail / idle:9.2f} {mean:10.2f} "
                      f"{above * 100:9.0f}%{target}\n")
            for run, (w, b, p, m, a) in enumerate(runs, 1):
                out.write(f"    run {run}: wall/bound {w / b:.2f}, p95 {p * 1000:.0f} ms, "
                          f"mean limit {m:.2f}, {a * 100:.0f}% of the time above W − 1\n")
            out.flush()


if __name__ == "__main__":
    main()
