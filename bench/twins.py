"""Bulk twins served from a process of their own, for the benchmarks.

The twins are Python too: served from the benchmark's own process they would compete with
the sync for the interpreter lock and the figures would measure the twins. `TwinFleet` spawns
a child process per twin that builds its estate with the twin's `bulk()` and serves it on
127.0.0.1; the benchmark steers them through the twins' control API (`/__twin__/`:
latency, stats, mutations), never by touching their objects.

Also the small helpers every benchmark shares: peak RSS and medians.
"""

from __future__ import annotations

import multiprocessing
import os
import resource
import statistics
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@dataclass(frozen=True)
class TwinSpec:
    """One twin to build: kind (woocommerce | stripe | mailchimp), a name, `bulk()` sizes."""

    kind: str
    name: str
    sizes: dict[str, int] = field(default_factory=dict)
    seed: int = 7


@dataclass(frozen=True)
class RunningTwin:
    spec: TwinSpec
    url: str
    # Credentials the twin accepts (consumer key/secret, API key).
    secrets: dict[str, str]

    def control(self, action: str, payload: dict[str, Any] | None = None,
                method: str = "POST") -> Any:
        response = requests.request(method, f"{self.url}/__twin__/{action}",
                                    json=payload or {}, timeout=120)
        response.raise_for_status()
        return response.json()

    def set_latency(self, seconds: float) -> None:
        self.control("latency", {"seconds": seconds})

    def stats(self) -> dict[str, Any]:
        return self.control("stats", method="GET")

    def requests_made(self) -> int:
        """Requests the twin answered (the control API not counted)."""
        return sum(self.stats()["requests"].values())


def _build(spec: TwinSpec) -> tuple[Any, dict[str, str]]:
    if spec.kind == "woocommerce":
        from sandbox.seed import woocommerce as seed_woocommerce

        twin = seed_woocommerce.bulk(spec.sizes.get("customers", 0),
                                     spec.sizes.get("orders", 0), seed=spec.seed,
                                     shop=spec.name)
        return twin, {"consumer_key": twin.consumer_key,
                      "consumer_secret": twin.consumer_secret}
    if spec.kind == "stripe":
        from sandbox.seed import stripe as seed_stripe

        twin = seed_stripe.bulk(spec.sizes.get("customers", 0), spec.sizes.get("charges", 0),
                                seed=spec.seed)
        return twin, {"api_key": twin.api_key}
    if spec.kind == "mailchimp":
        from sandbox.seed import mailchimp as seed_mailchimp

        twin = seed_mailchimp.bulk(spec.sizes.get("members", 0), seed=spec.seed)
        audience = next(iter(twin.audiences))
        return twin, {"api_key": twin.api_key, "audience": audience}
    raise ValueError(f"unknown twin kind {spec.kind!r}")


def _serve(specs: list[TwinSpec], pipe: Connection) -> None:
    from sandbox.server import TwinServer

    servers = []
    answer = []
    try:
        for spec in specs:
            twin, secrets = _build(spec)
            server = TwinServer(twin).start()
            servers.append(server)
            answer.append((server.url, secrets))
        pipe.send(("ok", answer))
        # Serve until the parent says stop (or goes away).
        try:
            pipe.recv()
        except EOFError:
            pass
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which raises
        pipe.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        for server in servers:
            server.stop()


class TwinFleet:
    """Twins served by child processes, one per twin (built in parallel, and a busy twin
    never slows another). Use as a context manager."""

    def __init__(self, specs: Iterable[TwinSpec]) -> None:
        self.specs = list(specs)
        self.twins: dict[str, RunningTwin] = {}
        self._children: list[tuple[multiprocessing.process.BaseProcess, Connection]] = []

    def __enter__(self) -> TwinFleet:
        context = multiprocessing.get_context("spawn")
        try:
            for spec in self.specs:
                parent, child = context.Pipe()
                process = context.Process(target=_serve, args=([spec], child),
                                          name=f"bench-twin-{spec.name}", daemon=True)
                process.start()
                self._children.append((process, parent))
            for spec, (_, pipe) in zip(self.specs, self._children, strict=True):
                status, answer = pipe.recv()
                if status != "ok":
                    raise RuntimeError(f"twin {spec.name} could not start: {answer}")
                url, secrets = answer[0]
                self.twins[spec.name] = RunningTwin(spec, url, secrets)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for _, pipe in self._children:
            try:
                pipe.send("stop")
            except (BrokenPipeError, OSError):
                pass
        for process, _ in self._children:
            process.join(timeout=30)
            if process.is_alive():
                process.terminate()
                process.join(timeout=5)
        self._children.clear()

    def set_latency(self, seconds: float) -> None:
        for twin in self.twins.values():
            twin.set_latency(seconds)

    def requests_made(self) -> dict[str, int]:
        return {name: twin.requests_made() for name, twin in self.twins.items()}


def run_as_the_unit_does() -> None:
    """Re-run this script with the environment systemd/privacy-ledger.service gives the daemon
    (MALLOC_ARENA_MAX, which glibc reads only when a process starts), so that memory figures
    are the daemon's."""
    unit = (ROOT / "systemd" / "privacy-ledger.service").read_text()
    wanted = dict(item.split("=", 1) for line in unit.splitlines()
                  if line.startswith("Environment=") for item in line[12:].split())
    if all(os.environ.get(name) == value for name, value in wanted.items()):
        return
    os.execve(sys.executable, [sys.executable, *sys.argv],  # noqa: S606 - ourselves
              {**os.environ, **wanted})


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MB (Linux reports kB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


class Stopwatch:
    def __enter__(self) -> Stopwatch:
        self.start = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start
