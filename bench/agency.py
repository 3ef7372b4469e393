"""Benchmark 6 — an agency's estate on one PostgreSQL: 200 shops (2,500 customers and 10,000
orders each, 50 ms a request), synced in one full round by 1, 2 and 4 daemons
(`privacy-ledger run --once`, real processes) sharing one ledger.

Prints per daemon count: the wall time of the round, requests per source (each source
synced exactly once: one successful run each, and the same requests as with one daemon)
the peak RSS and CPU seconds of each daemon, and how busy the machine's cores were (a round
that keeps every core busy is bound by CPU, not by the shops' latency). Targets: 4 daemons
≤ 0.35 × the wall of 1; every source once; ≤ 150 MB each.

    .venv/bin/python bench/agency.py --pg postgresql+psycopg://postgres@127.0.0.1:5432/test
    .venv/bin/python bench/agency.py --pg … --shops 20 --scale 0.1     # a smaller estate
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.twins import TwinSpec, _serve  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


class ShopFleet:
    """Many shop twins served by a few processes (a process per shop would not fit)."""

    def __init__(self, specs: list[TwinSpec], processes: int) -> None:
        self.groups = [specs[index::processes] for index in range(processes)]
        self.urls: dict[str, tuple[str, dict[str, str]]] = {}
        self._children: list[Any] = []

    def __enter__(self) -> ShopFleet:
        context = multiprocessing.get_context("spawn")
        for group in self.groups:
            parent, child = context.Pipe()
            process = context.Process(target=_serve, args=(group, child), daemon=True)
            process.start()
            self._children.append((process, parent, group))
        for _process, pipe, group in self._children:
            status, answer = pipe.recv()
            if status != "ok":
                raise RuntimeError(f"twins could not start: {answer}")
            for spec, (url, secrets) in zip(group, answer, strict=True):
                self.urls[spec.name] = (url, secrets)
        return self

    def __exit__(self, *exc: object) -> None:
        for process, pipe, _ in self._children:
            try:
                pipe.send("stop")
            except OSError:
                pass
            process.join(timeout=30)

    def requests(self) -> dict[str, int]:
        import requests

        counts = {}
        for name, (url, _) in self.urls.items():
            stats = requests.get(f"{url}/__twin__/stats", timeout=60).json()
            counts[name] = sum(stats["requests"].values())
        return counts

    def set_latency(self, seconds: float) -> None:
        import requests

        for url, _ in self.urls.values():
            requests.post(f"{url}/__twin__/latency", json={"seconds": seconds}, timeout=60)
            requests.post(f"{url}/__twin__/knobs", json={"https": False}, timeout=60)


def write_config(folder: Path, fleet: ShopFleet, ledger_url: str, parallel: int) -> Path:
    secrets = folder / "secrets"
    secrets.mkdir(exist_ok=True)
    lines = ['timezone = "UTC"', "", "[ledger]", f'state_dir = "{folder}"',
             f'url = "{ledger_url}"', "", "[schedule]", f"parallel_syncs = {parallel}",
             'sync_interval = "1d"', 'claim_lease = "30s"']
    for name, (url, keys) in sorted(fleet.urls.items()):
        for kind in ("consumer_key", "consumer_secret"):
            path = secrets / f"{name}-{kind}"
            path.write_text(keys[kind])
            path.chmod(0o600)
        lines += ["", "[[woocommerce]]", f'name = "{name}"', f'url = "{url}"',
                  f'consumer_key = "file:{secrets / (name + "-consumer_key")}"',
                  f'consumer_secret = "file:{secrets / (name + "-consumer_secret")}"']
    path = folder / f"config-{uuid.uuid4().hex[:6]}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def fresh_schema(pg: str) -> tuple[str, str]:
    """A new, empty schema: its name, and the ledger URL whose search_path it is."""
    from sqlalchemy import create_engine, text

    schema = f"bench_agency_{uuid.uuid4().hex[:10]}"
    engine = create_engine(pg, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    engine.dispose()
    separator = "&" if "?" in pg else "?"
    return schema, f"{pg}{separator}options=-csearch_path%3D{schema}"


def runs_per_source(url: str) -> dict[str, list[str]]:
    from sqlalchemy import select

    from daemon.ledger import Ledger, Source, SyncRun

    ledger = Ledger.open(url, migrate_schema=False)
    try:
        with ledger.sessions() as session:
            rows = session.execute(select(Source.name, SyncRun.status)
                                   .join(SyncRun, SyncRun.source_id == Source.id)).all()
    finally:
        ledger.close()
    found: dict[str, list[str]] = {}
    for name, status in rows:
        found.setdefault(name, []).append(status)
    return found


def busy_cores() -> tuple[float, float]:
    """(seconds the machine's cores were busy, seconds they were idle) since boot."""
    fields = [float(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    idle = fields[3] + fields[4]
    hertz = os.sysconf("SC_CLK_TCK")
    return (sum(fields[:8]) - idle) / hertz, idle / hertz


def _first_errors(log: Path, count: int = 5) -> str:
    """The first errors a daemon logged (the round's summary names every job, not why)."""
    errors = []
    for line in log.read_text(errors="replace").splitlines():
        if '"error"' in line and '"daemon.round_failed"' not in line:
            errors.append(line[:1500])
    return "\n".join(errors[:count]) or log.read_text(errors="replace")[-3000:]


def round_with(daemons: int, fleet: ShopFleet, folder: Path, pg: str,
               parallel: int) -> tuple[float, list[float], list[float], float,
                                       dict[str, list[str]], dict[str, int]]:
    schema, url = fresh_schema(pg)
    try:
        return _round_in(url, daemons, fleet, folder, parallel)
    finally:
        drop_schema(pg, schema)


def drop_schema(pg: str, schema: str) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(pg, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    engine.dispose()


def _round_in(url: str, daemons: int, fleet: ShopFleet, folder: Path,
              parallel: int) -> tuple[float, list[float], list[float], float,
                                      dict[str, list[str]], dict[str, int]]:
    from daemon.ledger import Ledger

    Ledger.open(url).close()  # the schema made before the clock starts, as in a running estate
    config = write_config(folder, fleet, url, parallel)
    before = fleet.requests()
    program = Path(sys.executable).parent / "privacy-ledger"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    busy_before, idle_before = busy_cores()
    started = time.perf_counter()
    processes = [subprocess.Popen([str(program), "--config", str(config), "run", "--once"],  # noqa: S603
                                  cwd=ROOT, env=env, stderr=subprocess.STDOUT,
                                  stdout=(folder / f"d{daemons}-{n}.err").open("wb"))
                 for n in range(daemons)]
    rss, cpu = [], []
    try:
        for n, process in enumerate(processes):
            _, status, usage = os.wait4(process.pid, 0)
            process.returncode = os.waitstatus_to_exitcode(status)
            if process.returncode != 0:
                raise RuntimeError(f"a daemon exited {process.returncode}:\n"
                                   + _first_errors(folder / f"d{daemons}-{n}.err"))
            rss.append(usage.ru_maxrss / 1024)
            cpu.append(usage.ru_utime + usage.ru_stime)
    finally:
        # The others would hold the schema dropped next.
        for process in processes:
            if process.returncode is None:
                process.kill()
                process.wait()
    wall = time.perf_counter() - started
    busy, idle = busy_cores()
    # The share of the machine's cores that were busy (daemons, twins and PostgreSQL alike).
    load = (busy - busy_before) / max(1e-9, (busy - busy_before) + (idle - idle_before))
    after = fleet.requests()
    return (wall, rss, cpu, load, runs_per_source(url),
            {n: after[n] - before[n] for n in after})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pg", required=True, help="PostgreSQL SQLAlchemy URL")
    parser.add_argument("--shops", type=int, default=200)
    parser.add_argument("--scale", type=float, default=1.0,
                        help="fraction of 2,500 customers and 10,000 orders a shop (1)")
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--parallel", type=int, default=3,
                        help="schedule.parallel_syncs of every daemon (3, the default)")
    parser.add_argument("--daemons", default="1,2,4")
    parser.add_argument("--twin-processes", type=int, default=4)
    args = parser.parse_args()
    customers, orders = round(2_500 * args.scale), round(10_000 * args.scale)
    specs = [TwinSpec("woocommerce", f"shop{index:03d}",
                      {"customers": customers, "orders": orders}, seed=index + 1)
             for index in range(args.shops)]
    out = sys.stdout
    out.write(f"Benchmark 6: {args.shops} shops × ({customers:,} customers, {orders:,} orders), "
              f"{args.latency * 1000:g} ms a request, one PostgreSQL ledger, "
              f"parallel_syncs {args.parallel} a daemon\n")
    out.write(f"  {'daemons':>7} {'wall':>8} {'× 1':>6} {'requests/source':>16} "
              f"{'runs/source':>12} {'peak RSS each (MB)':>20} {'CPU s each':>16} "
              f"{'cores busy':>10}\n")
    out.flush()
    with tempfile.TemporaryDirectory(prefix="bench-agency-") as name, \
            ShopFleet(specs, args.twin_processes) as fleet:
        fleet.set_latency(args.latency)
        first_wall = None
        first_requests = None
        for count in (int(n) for n in args.daemons.split(",")):
            wall, rss, cpu, load, runs, requests = round_with(count, fleet, Path(name), args.pg,
                                                   args.parallel)
            first_wall = first_wall or wall
            first_requests = first_requests or requests
            once = all(statuses == ["success"] for statuses in runs.values()) \
                and len(runs) == args.shops
            same = requests == first_requests
            per_source = sorted(requests.values())
            spread = (f"{per_source[0]}–{per_source[-1]}" if per_source[0] != per_source[-1]
                      else f"{per_source[0]}")
            out.write(f"  {count:7} {wall:7.1f}s {wall / first_wall:6.2f} "
                      f"{spread + (' (=)' if same else ' (≠)'):>16} "
                      f"{'1 each' if once else 'NOT once':>12} "
                      f"{', '.join(f'{r:.0f}' for r in rss):>20} "
                      f"{', '.join(f'{c:.0f}' for c in cpu):>16} "
                      f"{load * 100:9.0f}%\n")
            out.flush()


if __name__ == "__main__":
    main()
