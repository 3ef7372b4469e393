"""How long a full retention audit takes on a large ledger, on SQLite and on PostgreSQL.

Builds a ledger of --holdings holdings (1,000,000 by default) in realistic proportions — three
shops' accounts and orders, Stripe customers and charges, Mailchimp members — with a few per
cent of them breaching the policy, then runs the full audit --runs times on each database and
prints the median. A figure, not a test: never part of the test run.

    .venv/bin/python bench/audit.py                       # SQLite, and PostgreSQL if
                                                          # $PRIVACY_LEDGER_TEST_PG is set
    .venv/bin/python bench/audit.py --pg postgresql+psycopg://postgres@127.0.0.1/test
    .venv/bin/python bench/audit.py --holdings 200000 --sqlite-only
    .venv/bin/python bench/audit.py --holdings 10000000 --no-promises --pg …  # the 10 M figure

On PostgreSQL it works in a schema of its own (dropped afterwards).
"""

from __future__ import annotations

import argparse
import io
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import create_engine, func, select, text

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from daemon.audit import RULES, run_audit  # noqa: E402
from daemon.config import PolicySettings, RetentionSettings  # noqa: E402
from daemon.ledger import (  # noqa: E402
    Holding,
    Ledger,
    ShopOption,
    ShopPlugin,
    Source,
    Subject,
    SyncRun,
)

NOW = datetime(2026, 11, 1, 6, 0, tzinfo=UTC)
SHOPS = ("woo:alpha", "woo:beta", "woo:gamma")
# (source index, record type, share of all holdings)
MIX = (("shop", "customer", 0.12), ("shop", "order", 0.48), ("stripe", "customer", 0.08),
       ("stripe", "charge", 0.17), ("mailchimp", "member", 0.15))
ORDER_STATUSES = (("completed", 0.80), ("processing", 0.05), ("refunded", 0.04),
                  ("pending", 0.03), ("failed", 0.02), ("cancelled", 0.03), ("on-hold", 0.02),
                  ("trash", 0.01))
MEMBER_STATUSES = (("subscribed", 0.70), ("unsubscribed", 0.15), ("cleaned", 0.05),
                   ("transactional", 0.08), ("archived", 0.02))
POLICY = RetentionSettings()
PERIODS = {"completed": POLICY.completed_orders, "refunded": POLICY.refunded_orders,
           "processing": timedelta(days=60), "pending": POLICY.pending_orders,
           "failed": POLICY.failed_orders, "cancelled": POLICY.cancelled_orders,
           "on-hold": POLICY.on_hold_orders, "trash": POLICY.trashed_orders}
COLUMNS = ("id", "source_id", "record_type", "external_id", "subject_id", "categories",
           "status", "anonymised", "parent_id", "created_at", "last_activity_at",
           "modified_at", "evidence", "first_seen", "last_seen", "gone_at")


@dataclass(frozen=True)
class Estate:
    subjects: list[tuple[int, str]]
    sources: list[tuple[int, str, str]]
    holdings: list[tuple[object, ...]]
    sync_runs: list[tuple[int, int, str, datetime, datetime, str]]


def _pick(rng: random.Random, weighted: tuple[tuple[str, float], ...]) -> str:
    roll, total = rng.random(), 0.0
    for value, weight in weighted:
        total += weight
        if roll < total:
            return value
    return weighted[-1][0]


def _age(rng: random.Random, period: timedelta, breach: float) -> datetime:
    """A time inside the period, or — with probability `breach` — beyond it."""
    if rng.random() < breach:
        return NOW - period - timedelta(days=rng.uniform(1, 400))
    return NOW - period * rng.uniform(0.0, 0.95)


def build_estate(holdings: int, seed: int = 7) -> Estate:
    rng = random.Random(seed)
    people = max(holdings // 3, 10)
    subjects = [(i + 1, f"person{i}@example.com") for i in range(people)]
    sources = [(1, SHOPS[0], "woocommerce"), (2, SHOPS[1], "woocommerce"),
               (3, SHOPS[2], "woocommerce"), (4, "stripe", "stripe"),
               (5, "mailchimp:news", "mailchimp")]
    # Shops hold the first 95% of people; the rest exist only in Stripe or Mailchimp.
    shop_people = int(people * 0.95)
    rows: list[tuple[object, ...]] = []
    counters: dict[tuple[int, str], int] = {}
    customers: dict[int, list[int]] = {1: [], 2: [], 3: []}
    stripe_customers: list[int] = []
    next_id = shop_rows = 0
    for kind, record_type, share in MIX:
        for _ in range(int(holdings * share)):
            next_id += 1
            source_id = {"shop": rng.randint(1, 3), "stripe": 4, "mailchimp": 5}[kind]
            key = (source_id, record_type)
            counters[key] = counters.get(key, 0) + 1
            external = str(counters[key])
            subject = rng.randint(1, shop_people)
            if kind == "shop":
                # Every person the shops hold has at least one shop record.
                shop_rows += 1
                subject = shop_rows % shop_people + 1
            status = parent = evidence = None
            activity = None
            categories = ",email,name,"
            if kind == "shop" and record_type == "customer":
                created = _age(rng, POLICY.inactive_accounts * 2, 0.0)
                activity = _age(rng, POLICY.inactive_accounts, 0.02)
                categories = ",account,billing_address,email,name,phone,"
                customers[source_id].append(counters[key])
            elif kind == "shop":
                status = _pick(rng, ORDER_STATUSES)
                created = _age(rng, PERIODS[status], 0.02)
                activity = created + timedelta(days=1)
                categories = ",billing_address,email,name,order_history,phone,"
                if NOW - created < POLICY.network_data or rng.random() < 0.03:
                    categories = categories.replace(",email,", ",email,ip_address,") \
                        .replace(",phone,", ",phone,user_agent,")
                if rng.random() < 0.0005:
                    categories = categories.replace(",billing_address,",
                                                    ",billing_address,card_number,")
                    evidence = '["card number pattern in customer_note"]'
                if customers[source_id] and rng.random() < 0.6:
                    parent = str(rng.choice(customers[source_id]))
            elif record_type == "customer":
                created = _age(rng, POLICY.stripe_customers * 2, 0.0)
                categories = ",email,name,payment_method_type,"
                if rng.random() < 0.02:
                    subject = rng.randint(shop_people + 1, people)
                stripe_customers.append(counters[key])
            elif record_type == "charge":
                created = _age(rng, POLICY.stripe_customers, 0.0)
                categories = ",billing_address,card_last4,email,payment_method_type,"
                if stripe_customers:
                    parent = f"cus_{rng.choice(stripe_customers)}"
            else:
                status = _pick(rng, MEMBER_STATUSES)
                created = _age(rng, POLICY.mailchimp_contacts * 3, 0.0)
                activity = _age(rng, POLICY.mailchimp_contacts, 0.03)
                categories = ",email,marketing_consent,name,"
                if rng.random() < 0.05:
                    subject = rng.randint(shop_people + 1, people)
            if kind == "stripe":
                external = ("cus_" if record_type == "customer" else "ch_") + external
            gone = NOW - timedelta(days=3) if rng.random() < 0.01 else None
            rows.append((next_id, source_id, record_type, external, subject, categories, status,
                         False, parent, created, activity, activity or created, evidence,
                         NOW - timedelta(days=30), NOW - timedelta(hours=6), gone))
    sync_runs = []
    for source_id, _, _ in sources:
        for day in range(30):
            # One source (mailchimp) last succeeded five days ago: sync-stale.
            status = "failed" if source_id == 5 and day < 5 else "success"
            started = NOW - timedelta(days=day, hours=1)
            sync_runs.append((len(sync_runs) + 1, source_id, "incremental", started,
                              started + timedelta(minutes=5), status))
    return Estate(subjects, sources, rows, sync_runs)


def _sqlite_time(value: object) -> object:
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    return value


def load_sqlite(url: str, estate: Estate) -> None:
    import sqlite3

    Ledger.open(url).close()
    connection = sqlite3.connect(url.removeprefix("sqlite:///"))
    with connection:
        connection.executemany(
            "INSERT INTO subjects (id, email, first_seen, last_seen) VALUES (?, ?, ?, ?)",
            [(i, e, _sqlite_time(NOW), _sqlite_time(NOW)) for i, e in estate.subjects])
        connection.executemany(
            "INSERT INTO sources (id, name, kind, created_at) VALUES (?, ?, ?, ?)",
            [(i, n, k, _sqlite_time(NOW - timedelta(days=400))) for i, n, k in estate.sources])
        connection.executemany(
            f"INSERT INTO holdings ({', '.join(COLUMNS)}) VALUES "  # noqa: S608 - constants
            f"({', '.join('?' for _ in COLUMNS)})",
            ([_sqlite_time(v) for v in row] for row in estate.holdings))
        connection.executemany(
            "INSERT INTO sync_runs (id, source_id, mode, started_at, finished_at, status, "
            "records_seen, records_changed, records_skipped, records_gone) "
            "VALUES (?, ?, ?, ?, ?, ?, 0, 0, 0, 0)",
            [(i, s, m, _sqlite_time(a), _sqlite_time(b), st)
             for i, s, m, a, b, st in estate.sync_runs])
    connection.close()


def _copy_text(rows: Iterator[tuple[object, ...]]) -> Iterator[str]:
    for row in rows:
        cells = []
        for value in row:
            if value is None:
                cells.append("\\N")
            elif isinstance(value, bool):
                cells.append("t" if value else "f")
            elif isinstance(value, datetime):
                cells.append(value.isoformat())
            else:
                cells.append(str(value).replace("\\", "\\\\").replace("\t", "\\t"))
        yield "\t".join(cells) + "\n"


def load_postgresql(url: str, estate: Estate) -> None:
    Ledger.open(url).close()
    engine = create_engine(url)
    with engine.begin() as connection:
        cursor = connection.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        for table, columns, rows in (
                ("subjects", ("id", "email", "first_seen", "last_seen"),
                 ((i, e, NOW, NOW) for i, e in estate.subjects)),
                ("sources", ("id", "name", "kind", "created_at"),
                 ((i, n, k, NOW - timedelta(days=400)) for i, n, k in estate.sources)),
                ("holdings", COLUMNS, iter(estate.holdings)),
                ("sync_runs", ("id", "source_id", "mode", "started_at", "finished_at", "status",
                               "records_seen", "records_changed", "records_skipped",
                               "records_gone"),
                 ((*run, 0, 0, 0, 0) for run in estate.sync_runs))):
            with cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
                buffer = io.StringIO()
                for line in _copy_text(rows):
                    buffer.write(line)
                    if buffer.tell() > 1 << 20:
                        copy.write(buffer.getvalue())
                        buffer = io.StringIO()
                copy.write(buffer.getvalue())
        for model in (Subject, Source, Holding, SyncRun):
            # The serials continue after the ids loaded explicitly.
            connection.execute(select(func.setval(
                func.pg_get_serial_sequence(model.__tablename__, "id"),
                select(func.max(model.id)).scalar_subquery())))
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text("VACUUM ANALYZE"))
    engine.dispose()


def measure(name: str, url: str, runs: int, holdings: int, size: Callable[[], int],
            promises: bool = True) -> None:
    from daemon.report import render_digest

    ledger = Ledger.open(url)
    try:
        times, nights = [], []
        for index in range(runs):
            # Each run a day later, so that the first inserts and the others update.
            now = NOW + timedelta(days=index)
            result = run_audit(ledger, POLICY, now=now, actor="bench")
            started = time.perf_counter()
            # The morning email's queries: what the nightly job runs after the audit.
            email = render_digest(ledger, None, now=now)
            rendered = time.perf_counter() - started
            times.append(result.seconds)
            nights.append(result.seconds + rendered)
            print(f"  {name} run {index + 1}: audit {result.seconds:.2f}s + email "
                  f"{rendered:.2f}s ({len(email.html) // 1024} KB) — {result.current:,} "
                  f"findings ({result.new:,} new, {result.ongoing:,} ongoing, "
                  f"{result.resolved:,} resolved)")
        per_rule = ", ".join(f"{rule} {counts.current:,}"
                             for rule, counts in result.per_rule.items())
        print(f"  {name} findings by rule: {per_rule}")
        print(f"{name}: median of {runs} full audits: {statistics.median(times):.2f}s; "
              f"audit and email together: {statistics.median(nights):.2f}s")
        ledger.close()
        print(f"{name}: ledger size {size() / 2**20:,.0f} MB, "
              f"{size() / 2**20 / (holdings / 1e6):,.0f} MB per million holdings")
        ledger = Ledger.open(url)
        if promises:
            measure_promises(name, ledger, runs, statistics.median(times))
    finally:
        ledger.close()


def _postgresql_size(url: str) -> int:
    """Bytes of the ledger's tables, their indexes and TOAST."""
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return int(connection.scalar(text(
                "SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c "
                "JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = current_schema() AND c.relkind = 'r'")) or 0)
    finally:
        engine.dispose()


def _shop_setup(ledger: Ledger) -> None:
    """Every shop runs the clean-up of the demo's allmyink and one plugin of each kind."""
    with ledger.session() as session:
        shops = session.scalars(select(Source.id).where(Source.kind == "woocommerce")).all()
        for source_id in shops:
            for option, days in (("woocommerce_trash_pending_orders", 30),
                                 ("woocommerce_anonymize_completed_orders", 6 * 365),
                                 ("woocommerce_delete_inactive_accounts", 730)):
                session.add(ShopOption(source_id=source_id, option=option, readable=True,
                                       period_seconds=days * 86400, value=f"{days} days",
                                       read_at=NOW))
            for plugin in ("facebook-for-woocommerce", "allmyink-label-printer"):
                session.add(ShopPlugin(source_id=source_id, plugin=f"{plugin}/{plugin}.php",
                                       slug=plugin, name=plugin, version="1", read_at=NOW))


def measure_promises(name: str, ledger: Ledger, runs: int, baseline: float) -> None:
    """The five promise rules alone (the seed policy), against the full retention audit."""
    _shop_setup(ledger)
    declared = PolicySettings(categories=["name", "billing_address", "delivery_address",
                                          "email", "phone", "payment_method_type"],
                              processors=["WordPress", "Stripe", "Mailchimp"])
    promises = [rule for rule, spec in RULES.items() if spec.reads == "policy"]
    times = []
    for index in range(runs):
        result = run_audit(ledger, POLICY, now=NOW + timedelta(days=10 + index),
                           rules=promises, actor="bench", declared=declared)
        times.append(result.seconds)
    per_rule = ", ".join(f"{rule} {counts.current:,}" for rule, counts in result.per_rule.items())
    median = statistics.median(times)
    print(f"  {name} promise findings: {per_rule}")
    print(f"{name}: median of {runs} promise audits: {median:.2f}s "
          f"({median / baseline:.2f}x the full retention audit)")
    alone = []
    for index, rule in enumerate(promises):
        result = run_audit(ledger, POLICY, now=NOW + timedelta(days=20 + index), rules=[rule],
                           actor="bench", declared=declared)
        alone.append(f"{rule} {result.seconds:.2f}s")
    print(f"  {name} each promise rule alone: {', '.join(alone)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--holdings", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--pg", default=os.environ.get("PRIVACY_LEDGER_TEST_PG"),
                        help="PostgreSQL URL (default: $PRIVACY_LEDGER_TEST_PG)")
    parser.add_argument("--sqlite-only", action="store_true")
    parser.add_argument("--promises", action=argparse.BooleanOptionalAction, default=True,
                        help="also time the five promise rules (default: yes)")
    args = parser.parse_args()

    started = time.perf_counter()
    estate = build_estate(args.holdings)
    print(f"estate: {len(estate.holdings):,} holdings, {len(estate.subjects):,} people "
          f"({time.perf_counter() - started:.1f}s to generate)")

    with tempfile.TemporaryDirectory(prefix="pl-bench-") as directory:
        url = f"sqlite:///{Path(directory) / 'ledger.db'}"
        started = time.perf_counter()
        load_sqlite(url, estate)
        print(f"SQLite: loaded in {time.perf_counter() - started:.1f}s")
        database = Path(directory) / "ledger.db"
        measure("SQLite", url, args.runs, len(estate.holdings),
                lambda: database.stat().st_size, args.promises)

    if args.sqlite_only:
        return
    if not args.pg:
        print("PostgreSQL: skipped (give --pg URL or set PRIVACY_LEDGER_TEST_PG)")
        return
    schema = f"pl_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(args.pg, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        separator = "&" if "?" in args.pg else "?"
        url = f"{args.pg}{separator}options=-csearch_path%3D{schema}"
        started = time.perf_counter()
        load_postgresql(url, estate)
        print(f"PostgreSQL: loaded in {time.perf_counter() - started:.1f}s")
        measure("PostgreSQL", url, args.runs, len(estate.holdings),
                lambda: _postgresql_size(url), args.promises)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


if __name__ == "__main__":
    main()
