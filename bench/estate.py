"""Benchmarks 2 and 3 — a large estate with upstream latency, synced in full and then
incrementally.

Benchmark 2: 4 shops × (25,000 customers, 100,000 orders), Stripe (80,000 customers,
300,000 charges) and Mailchimp (150,000 members), every twin answering after 50 ms, synced
in full into a fresh SQLite ledger through `sync_configured` (the product's path, default
settings), three sources at a time as the daemon's weekly reconciliation runs them
(schedule.parallel_syncs; Stripe, the longest, first), in the environment the systemd unit
gives the daemon. Prints the wall time, the requests each system answered, the peak RSS of
this process (the sync; the twins run in processes of their own) and the ratio of wall time
to the lower bound the APIs force:

    bound(system) = max(pages × latency ÷ concurrency, pages ÷ rate limit)

where pages is the least number of pages that lists the system's records (its records ÷
the page size, per listing), concurrency the simultaneous requests its API allows (4 per
WooCommerce shop, 10 for Mailchimp, for Stripe the 2 cursor lists that can be read side by
side) and the rate limit Stripe's configured read rate (20 requests/s). The issue's bound is
Σ bound(system), systems synced one after another; were every source synced at once the
bound would be max bound(system); both ratios are printed.

Benchmark 3: change 1 % of the records in the twins (a realistic mix: new orders whose
checkout updates the customer's account, orders fulfilled, refunded or trashed, new
accounts; Stripe charges and customers created, updated and refunded; Mailchimp members
changed and unsubscribed), sync incrementally and compare the requests made with the ideal
Σ(changed ÷ page size + one probe per source), page size = the API's largest page (100,
100, 1,000).

    .venv/bin/python bench/estate.py                      # full size, 50 ms, 3 sources at once
    .venv/bin/python bench/estate.py --scale 0.1          # a tenth of the estate
    .venv/bin/python bench/estate.py --parallel 1         # sources one after another
    .venv/bin/python bench/estate.py --latency 0 --skip-full-timing   # benchmark 3 quickly
"""

from __future__ import annotations

import argparse
import logging
import math
import random
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.twins import RunningTwin, TwinFleet, TwinSpec, peak_rss_mb, run_as_the_unit_does  # noqa: E402

SHOPS = ("north", "south", "east", "west")
WOO_PAGE, STRIPE_PAGE, MAILCHIMP_PAGE = 100, 100, 1000
WOO_CONCURRENCY, MAILCHIMP_CONCURRENCY, STRIPE_LISTS = 4, 10, 2
STRIPE_RATE = 20.0


@dataclass(frozen=True)
class Sizes:
    customers: int
    orders: int
    stripe_customers: int
    charges: int
    members: int

    @classmethod
    def scaled(cls, scale: float) -> Sizes:
        def n(value: int) -> int:
            return max(10, round(value * scale))

        return cls(n(25_000), n(100_000), n(80_000), n(300_000), n(150_000))


def specs(sizes: Sizes) -> list[TwinSpec]:
    fleet = [TwinSpec("woocommerce", shop, {"customers": sizes.customers, "orders": sizes.orders},
                      seed=index + 1) for index, shop in enumerate(SHOPS)]
    fleet.append(TwinSpec("stripe", "stripe", {"customers": sizes.stripe_customers,
                                               "charges": sizes.charges}))
    fleet.append(TwinSpec("mailchimp", "mailchimp", {"members": sizes.members}))
    return fleet


def settings_for(fleet: TwinFleet, ledger_url: str) -> Any:
    from daemon.config import SecretSources, parse_settings

    environ: dict[str, str] = {}
    raw: dict[str, Any] = {"ledger": {"url": ledger_url}, "woocommerce": []}
    for shop in SHOPS:
        twin = fleet.twins[shop]
        environ[f"{shop.upper()}_KEY"] = twin.secrets["consumer_key"]
        environ[f"{shop.upper()}_SECRET"] = twin.secrets["consumer_secret"]
        raw["woocommerce"].append({"name": shop, "url": twin.url,
                                   "consumer_key": f"env:{shop.upper()}_KEY",
                                   "consumer_secret": f"env:{shop.upper()}_SECRET"})
    environ["STRIPE_KEY"] = fleet.twins["stripe"].secrets["api_key"]
    raw["stripe"] = {"api_key": "env:STRIPE_KEY", "base_url": fleet.twins["stripe"].url}
    environ["MAILCHIMP_KEY"] = fleet.twins["mailchimp"].secrets["api_key"]
    raw["mailchimp"] = {"api_key": "env:MAILCHIMP_KEY",
                        "base_url": fleet.twins["mailchimp"].url + "/3.0"}
    return parse_settings(raw, origin="bench", secrets=SecretSources(environ, None))


# -- what the estate holds, for the lower bound ----------------------------------------------


def _woo_total(twin: RunningTwin, path: str, params: dict[str, Any]) -> int:
    answer = requests.get(f"{twin.url}/wp-json/wc/v3/{path}", params={**params, "per_page": 1},
                          auth=(twin.secrets["consumer_key"], twin.secrets["consumer_secret"]),
                          timeout=60)
    answer.raise_for_status()
    return int(answer.headers["X-WP-Total"])


def _mailchimp_total(twin: RunningTwin, **params: Any) -> int:
    answer = requests.get(
        f"{twin.url}/3.0/lists/{twin.secrets['audience']}/members",
        params={**params, "count": 1, "fields": "total_items"},
        auth=("bench", twin.secrets["api_key"]), timeout=60)
    answer.raise_for_status()
    return int(answer.json()["total_items"])


@dataclass(frozen=True)
class Bound:
    system: str
    pages: int
    seconds: float
    formula: str


def plain_http(fleet: TwinFleet) -> None:
    """The shops as WordPress on plain http: the daemon signs with OAuth there, as WooCommerce
    checks it (the bulk twins start behind HTTPS, so that the bounds above count pages with
    Basic auth)."""
    for twin in fleet.twins.values():
        if twin.spec.kind == "woocommerce":
            twin.control("knobs", {"https": False})


def lower_bounds(fleet: TwinFleet, sizes: Sizes, latency: float) -> list[Bound]:
    bounds = []
    for shop in SHOPS:
        twin = fleet.twins[shop]
        listings = (_woo_total(twin, "customers", {"role": "all"}),
                    _woo_total(twin, "orders", {"status": "any"}),
                    _woo_total(twin, "orders", {"status": "trash"}))
        pages = sum(max(1, math.ceil(n / WOO_PAGE)) for n in listings)
        bounds.append(Bound(f"woo:{shop}", pages, pages * latency / WOO_CONCURRENCY,
                            f"{pages} pages × {latency:g} s ÷ {WOO_CONCURRENCY}"))
    pages = (math.ceil(sizes.stripe_customers / STRIPE_PAGE)
             + math.ceil(sizes.charges / STRIPE_PAGE) + 1)
    by_latency, by_rate = pages * latency / STRIPE_LISTS, pages / STRIPE_RATE
    bounds.append(Bound("stripe", pages, max(by_latency, by_rate),
                        f"max({pages} × {latency:g} s ÷ {STRIPE_LISTS}, "
                        f"{pages} ÷ {STRIPE_RATE:g}/s)"))
    twin = fleet.twins["mailchimp"]
    listings = (_mailchimp_total(twin), _mailchimp_total(twin, status="archived"))
    pages = sum(max(1, math.ceil(n / MAILCHIMP_PAGE)) for n in listings)
    bounds.append(Bound("mailchimp", pages, pages * latency / MAILCHIMP_CONCURRENCY,
                        f"{pages} pages × {latency:g} s ÷ {MAILCHIMP_CONCURRENCY}"))
    return bounds


# -- benchmark 2 -------------------------------------------------------------------------------


def _timed_sync(fleet: TwinFleet, ledger: Any, settings: Any, *, full: bool, parallel: int,
                latency: float) -> tuple[list[Any], float, dict[str, int]]:
    """One sync of every source with the twins answering after `latency`: its results, wall
    time and the requests each twin answered. Raises when a source failed."""
    from daemon.sources import sync_configured

    fleet.set_latency(latency)
    before = fleet.requests_made()
    started = time.perf_counter()
    results = sync_configured(ledger, settings, full=full, parallel=parallel)
    wall = time.perf_counter() - started
    after = fleet.requests_made()
    fleet.set_latency(0)
    failed = [f"{r.source}: {r.error}" for r in results if not r.ok]
    if failed:
        kind = "full" if full else "incremental"
        raise RuntimeError(f"the {kind} sync failed: " + "; ".join(failed))
    return results, wall, {name: after[name] - before[name] for name in after}


def full_sync(fleet: TwinFleet, settings: Any, ledger: Any, sizes: Sizes, latency: float,
              parallel: int, out: Any) -> None:
    bounds = lower_bounds(fleet, sizes, latency)
    plain_http(fleet)
    results, wall, made = _timed_sync(fleet, ledger, settings, full=True, parallel=parallel,
                                      latency=latency)
    seen = sum(r.seen for r in results)
    total = sum(b.seconds for b in bounds)
    widest = max(b.seconds for b in bounds)
    out.write(f"\nBenchmark 2: full sync, {seen:,} records, latency {latency * 1000:g} ms, "
              f"{parallel} source(s) at a time\n")
    out.write(f"  {'system':12} {'requests':>9} {'pages':>7}  lower bound\n")
    for bound in bounds:
        name = bound.system.split(":")[-1] if bound.system.startswith("woo:") else bound.system
        out.write(f"  {bound.system:12} {made[name]:9,} {bound.pages:7,}  {bound.seconds:7.1f} s = "
                  f"{bound.formula}\n")
    out.write("  time per source: " + ", ".join(
        f"{name} {seconds:.0f} s" for name, seconds in run_times(ledger).items()) + "\n")
    out.write(f"  wall time {wall:.1f} s; Σ bound {total:.1f} s → ratio {wall / total:.2f} "
              f"(target ≤ 1.3); max bound {widest:.1f} s → ratio {wall / widest:.2f}\n")
    out.write(f"  peak RSS of the sync process {peak_rss_mb():.0f} MB (target ≤ 150 MB)\n")
    out.flush()


def run_times(ledger: Any) -> dict[str, float]:
    """Seconds each source's latest run took, from the ledger's own record of it."""
    from sqlalchemy import select

    from daemon.ledger import Source, SyncRun

    with ledger.sessions() as session:
        rows = session.execute(
            select(Source.name, SyncRun.started_at, SyncRun.finished_at)
            .join(Source, Source.id == SyncRun.source_id).order_by(SyncRun.id)).all()
    return {name: (end - start).total_seconds() for name, start, end in rows if end}


# -- benchmark 3 -------------------------------------------------------------------------------


@dataclass
class Changes:
    system: str
    records: int = 0
    ideal_pages: float = 0.0


def _woo_changes(twin: RunningTwin, sizes: Sizes, rng: random.Random, share: float) -> Changes:
    """1 % of a shop's records: new orders (two in three by an account holder, whose account
    the checkout updates), orders fulfilled or refunded by the shop, a few trashed, and new
    accounts without an order yet."""
    budget = max(4, round((sizes.customers + sizes.orders) * share))
    new_orders = budget * 3 // 10
    owners = rng.sample(range(2, sizes.customers + 2), min(sizes.customers, new_orders * 2 // 3))
    fulfilled = budget * 4 // 10
    trashed = max(1, budget // 100)
    new_accounts = max(1, budget - new_orders - len(owners) - fulfilled - trashed)
    for index in range(new_orders):
        owner = owners[index] if index < len(owners) else 0
        twin.control("add_order", {"customer_id": owner, "status": "processing",
                                   "billing": {"email": f"checkout{index}@bench.example",
                                               "first_name": "Bench"}})
        if owner:
            twin.control("update_customer", {"id": owner,
                                             "billing": {"address_1": f"{index} New Road"}})
    first_order, last_order = 100, 100 + sizes.orders - 1
    for ident in rng.sample(range(first_order, last_order + 1), fulfilled + trashed)[:fulfilled]:
        twin.control("update_order", {"id": ident, "status": "completed"})
    for ident in rng.sample(range(first_order, last_order + 1), trashed):
        twin.control("trash_order", {"id": ident})
    for index in range(new_accounts):
        twin.control("add_customer", {"email": f"new{index}@bench.example",
                                      "first_name": "New"})
    changed = new_orders + len(owners) + fulfilled + trashed + new_accounts
    return Changes(f"woo:{twin.spec.name}", changed, changed / WOO_PAGE + 1)


def _stripe_ids(twin: RunningTwin, path: str, count: int) -> list[str]:
    ids: list[str] = []
    after = None
    while len(ids) < count:
        params: dict[str, Any] = {"limit": 100, **({"starting_after": after} if after else {})}
        answer = requests.get(f"{twin.url}/v1/{path}", params=params, timeout=60,
                              headers={"Authorization": f"Bearer {twin.secrets['api_key']}"})
        answer.raise_for_status()
        page = answer.json()
        ids.extend(item["id"] for item in page["data"])
        if not page["has_more"]:
            break
        after = ids[-1]
    return ids[:count]


def _stripe_changes(twin: RunningTwin, sizes: Sizes, rng: random.Random,
                    share: float) -> Changes:
    """1 %: new customers and charges, customers updated, charges refunded."""
    budget = max(4, round((sizes.stripe_customers + sizes.charges) * share))
    new_customers, updated = budget * 8 // 100, budget * 13 // 100
    refunded = budget * 26 // 100
    new_charges = budget - new_customers - updated - refunded
    customers = _stripe_ids(twin, "customers", updated)
    charges = _stripe_ids(twin, "charges", refunded)
    created = [twin.control("add_customer", {"email": f"stripe{index}@bench.example",
                                             "name": "Bench Person"})["result"]
               for index in range(new_customers)]
    payers = created + customers
    for index in range(new_charges):
        twin.control("add_charge", {
            "customer": payers[index % len(payers)] if payers and index % 4 else None,
            "amount": 1999, "billing_details": {"email": f"charge{index}@bench.example",
                                                "name": "Bench Person"}})
    for ident in customers:
        twin.control("update_customer", {"id": ident, "phone": "+44 7700 900999"})
    for ident in charges:
        twin.control("update_charge", {"id": ident, "refunded": True, "amount_refunded": 500})
    changed = new_customers + updated + refunded + new_charges
    return Changes("stripe", changed, changed / STRIPE_PAGE + 1)


def _mailchimp_changes(twin: RunningTwin, sizes: Sizes, rng: random.Random,
                       share: float) -> Changes:
    """1 %: members who changed their details, unsubscribed, or joined."""
    budget = max(3, round(sizes.members * share))
    audience = twin.secrets["audience"]
    joined = budget // 5
    unsubscribed = budget // 5
    chosen = rng.sample(range(sizes.members), budget - joined)
    for index in chosen[:unsubscribed]:
        twin.control("unsubscribe", {"audience_id": audience,
                                     "member": f"bulk.{index}@example.com"})
    for index in chosen[unsubscribed:]:
        twin.control("update_member", {"audience_id": audience,
                                       "member": f"bulk.{index}@example.com",
                                       "first_name": "Changed"})
    for index in range(joined):
        twin.control("add_member", {"audience_id": audience,
                                    "email": f"joined{index}@bench.example"})
    return Changes("mailchimp", budget, budget / MAILCHIMP_PAGE + 1)


def incremental_sync(fleet: TwinFleet, settings: Any, ledger: Any, sizes: Sizes,
                     share: float, parallel: int, latency: float, out: Any) -> None:
    rng = random.Random(8)  # noqa: S311 - benchmark data
    jobs: list[Callable[[], Changes]] = [
        *(lambda twin=fleet.twins[shop]: _woo_changes(twin, sizes, rng, share)
          for shop in SHOPS),
        lambda: _stripe_changes(fleet.twins["stripe"], sizes, rng, share),
        lambda: _mailchimp_changes(fleet.twins["mailchimp"], sizes, rng, share),
    ]
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        changes = list(pool.map(lambda job: job(), jobs))
    results, wall, made = _timed_sync(fleet, ledger, settings, full=False, parallel=parallel,
                                      latency=latency)
    out.write(f"\nBenchmark 3: incremental sync after changing {share:.0%} of the records "
              f"({wall:.1f} s at {latency * 1000:g} ms latency)\n")
    out.write(f"  {'source':12} {'changed':>8} {'ideal':>7} {'requests':>9}\n")
    made_total = 0
    for change in changes:
        name = change.system.split(":")[-1] if change.system.startswith("woo:") \
            else change.system
        made_total += made[name]
        out.write(f"  {change.system:12} {change.records:8,} {change.ideal_pages:7.1f} "
                  f"{made[name]:9,}\n")
    ideal = sum(c.ideal_pages for c in changes)
    out.write(f"  requests {made_total:,} against the ideal {ideal:.1f} = Σ(changed ÷ page size "
              f"+ 1) → ratio {made_total / ideal:.2f} (target ≤ 1.1)\n")
    out.write(f"  records changed in the ledger: {sum(r.changed for r in results):,}\n")
    out.flush()


def main() -> None:
    run_as_the_unit_does()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=1.0,
                        help="fraction of the estate's size (default 1.0)")
    parser.add_argument("--latency", type=float, default=0.05,
                        help="seconds every twin waits before answering (default 0.05)")
    parser.add_argument("--parallel", type=int,
                        help="sources synced at once (default: the daemon's "
                        "schedule.parallel_syncs, 3)")
    parser.add_argument("--change", type=float, default=0.01,
                        help="share of records changed for benchmark 3 (default 0.01)")
    parser.add_argument("--ledger", help="SQLAlchemy URL (default: a fresh SQLite file)")
    parser.add_argument("--skip-incremental", action="store_true")
    parser.add_argument("--skip-full-timing", action="store_true",
                        help="run the full sync at zero latency, only to prepare benchmark 3")
    args = parser.parse_args()
    # The daemon's own logging (JSON lines), warnings only: the figures stay readable.
    from daemon import logs

    logs.configure(sys.stderr, level=logging.WARNING, json=True)
    from daemon.ledger import Ledger

    out = sys.stdout
    sizes = Sizes.scaled(args.scale)
    out.write(f"estate at scale {args.scale:g}: 4 shops × ({sizes.customers:,} customers, "
              f"{sizes.orders:,} orders), Stripe ({sizes.stripe_customers:,} customers, "
              f"{sizes.charges:,} charges), Mailchimp ({sizes.members:,} members)\n")
    out.flush()
    with tempfile.TemporaryDirectory(prefix="bench-estate-") as folder, \
            TwinFleet(specs(sizes)) as fleet:
        url = args.ledger or f"sqlite:///{folder}/ledger.db"
        ledger = Ledger.open(url)
        settings = settings_for(fleet, url)
        args.parallel = args.parallel or settings.schedule.parallel_syncs
        from daemon.sources import settle_heap

        settle_heap()  # as the daemon and `privacy-ledger sync` do before they sync
        if args.skip_full_timing:
            from daemon.sources import sync_configured

            plain_http(fleet)
            sync_configured(ledger, settings, full=True, parallel=args.parallel)
        else:
            full_sync(fleet, settings, ledger, sizes, args.latency, args.parallel, out)
        if not args.skip_incremental:
            incremental_sync(fleet, settings, ledger, sizes, args.change, args.parallel,
                             args.latency, out)
        ledger.close()


if __name__ == "__main__":
    main()
