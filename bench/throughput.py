"""Benchmark 1 — throughput at zero latency: N WooCommerce customers (50,000 by default) through
the whole pipeline (HTTP, classification, upsert into a fresh SQLite ledger, cursor) against
the floor: a minimal loop over the same twin that only fetches the same pages with one pooled
`requests.Session`, decodes them and inserts three columns per customer with `executemany`
into SQLite (one commit per page, WAL, synchronous=NORMAL — the ledger's own settings).

The twin runs in a process of its own; every measured run is a fresh process too, so that
its peak RSS is its own. Prints records/s of both (median of --runs), their ratio and the
peak RSS of each. Targets: pipeline ≥ 50 % of the floor, peak RSS ≤ 150 MB.

    .venv/bin/python bench/throughput.py
    .venv/bin/python bench/throughput.py --customers 20000 --runs 1
    .venv/bin/python bench/throughput.py --profile pipeline.html   # pyinstrument, if installed

Shops are read with HTTP Basic here, as HTTPS shops are (the twin is plain HTTP on loopback).
"""

from __future__ import annotations

import argparse
import multiprocessing
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.twins import RunningTwin, TwinFleet, TwinSpec, median, peak_rss_mb, run_as_the_unit_does  # noqa: E402

PER_PAGE = 100


def _pipeline(url: str, secrets: dict[str, str], profile: str | None) -> dict[str, Any]:
    import logging

    from connectors import woocommerce
    from daemon import logs
    from daemon.ledger import Ledger
    from daemon.sources import settle_heap
    from daemon.sync import sync_source

    # The daemon's own logging (JSON lines), warnings only.
    logs.configure(sys.stderr, level=logging.WARNING, json=True)
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as folder:
        ledger = Ledger.open(f"sqlite:///{folder}/ledger.db")
        connector = woocommerce.connect(woocommerce.Settings(
            name="bulk", url=url, consumer_key=secrets["consumer_key"],
            consumer_secret=secrets["consumer_secret"], auth="basic"))
        settle_heap()  # as the daemon and `privacy-ledger sync` do before they sync
        profiler = _profiler(profile)
        started = time.perf_counter()
        result = sync_source(ledger, connector, full=True)
        seconds = time.perf_counter() - started
        if profiler is not None:
            profiler.stop()
            _write_profile(profiler, profile or "")
        connector.close()
        ledger.engine.dispose()
        if not result.ok:
            raise RuntimeError(f"the sync failed: {result.error}")
        return {"records": result.seen, "seconds": seconds, "rss": peak_rss_mb()}


def _floor(url: str, secrets: dict[str, str], profile: str | None) -> dict[str, Any]:
    import requests

    session = requests.Session()
    session.auth = (secrets["consumer_key"], secrets["consumer_secret"])
    with tempfile.TemporaryDirectory(prefix="bench-floor-") as folder:
        db = sqlite3.connect(f"{folder}/floor.db")
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, email TEXT, modified TEXT)")
        profiler = _profiler(profile)
        started = time.perf_counter()
        records = 0
        page = 1
        while True:
            response = session.get(f"{url}/wp-json/wc/v3/customers", params={
                "role": "all", "orderby": "id", "order": "asc", "per_page": PER_PAGE,
                "page": page}, timeout=30)
            response.raise_for_status()
            items = response.json()
            db.executemany("INSERT INTO customers VALUES (?, ?, ?)",
                           [(c["id"], c["email"], c["date_modified_gmt"]) for c in items])
            db.commit()
            records += len(items)
            if page >= int(response.headers["X-WP-TotalPages"]):
                break
            page += 1
        seconds = time.perf_counter() - started
        if profiler is not None:
            profiler.stop()
            _write_profile(profiler, profile or "")
        db.close()
    return {"records": records, "seconds": seconds, "rss": peak_rss_mb()}


def _profiler(path: str | None) -> Any:
    if not path:
        return None
    from pyinstrument import Profiler

    profiler = Profiler(interval=0.001)
    profiler.start()
    return profiler


def _write_profile(profiler: Any, path: str) -> None:
    text = profiler.output_html() if path.endswith(".html") else profiler.output_text(
        unicode=False, color=False)
    Path(path).write_text(text)


_KINDS = {"pipeline": _pipeline, "floor": _floor}


def _child(kind: str, url: str, secrets: dict[str, str], profile: str | None,
           queue: Any) -> None:
    queue.put(_KINDS[kind](url, secrets, profile))


def measure(kind: str, twin: RunningTwin, profile: str | None = None) -> dict[str, Any]:
    """One run in a fresh process (its peak RSS is its own)."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_child, args=(kind, twin.url, twin.secrets, profile,
                                                   queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def main() -> None:
    run_as_the_unit_does()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=50_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--profile", metavar="HTML",
                        help="write a pyinstrument profile of the last pipeline run (.html, "
                        "else text)")
    parser.add_argument("--profile-floor", metavar="HTML",
                        help="write a pyinstrument profile of the last floor run")
    args = parser.parse_args()

    spec = TwinSpec("woocommerce", "bulk", {"customers": args.customers, "orders": 0})
    out = sys.stdout
    with TwinFleet([spec]) as fleet:
        twin = fleet.twins["bulk"]
        measure("floor", twin)  # warm the twin's caches and the OS's, not counted
        runs: dict[str, list[dict[str, Any]]] = {"floor": [], "pipeline": []}
        for run in range(args.runs):
            last = run == args.runs - 1
            for kind in ("floor", "pipeline"):
                profile = args.profile if kind == "pipeline" else args.profile_floor
                result = measure(kind, twin, profile if last else None)
                runs[kind].append(result)
                out.write(f"  run {run + 1} {kind:8}  {result['records']:>7,} records  "
                          f"{result['seconds']:6.2f} s  "
                          f"{result['records'] / result['seconds']:>8,.0f} records/s  "
                          f"peak RSS {result['rss']:.0f} MB\n")
                out.flush()
    rate = {kind: median(r["records"] / r["seconds"] for r in results)
            for kind, results in runs.items()}
    rss = {kind: max(r["rss"] for r in results) for kind, results in runs.items()}
    ratio = rate["pipeline"] / rate["floor"]
    out.write(
        f"\nBenchmark 1: {args.customers:,} WooCommerce customers at zero latency "
        f"(median of {args.runs})\n"
        f"  floor     {rate['floor']:>8,.0f} records/s   peak RSS {rss['floor']:.0f} MB\n"
        f"  pipeline  {rate['pipeline']:>8,.0f} records/s   peak RSS {rss['pipeline']:.0f} MB\n"
        f"  pipeline / floor = {ratio:.0%}   (target ≥ 50 %; peak RSS target ≤ 150 MB)\n")


if __name__ == "__main__":
    main()
