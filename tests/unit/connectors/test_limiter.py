"""The adaptive limiter: rises while latency stays flat, backs off when it rises and on
429/503 (holding every request for the Retry-After), keeps a fixed limit and a rate."""

from __future__ import annotations

import threading

import pytest

from connectors.limiter import Limiter, LimiterSettings


class Clock:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def answer(limiter: Limiter, clock: Clock, latency: float, status: int = 200,
           retry_after: float | None = None) -> None:
    started = limiter.acquire()
    clock.now += latency
    limiter.release(started, status, retry_after=retry_after)


def window(limiter: Limiter, clock: Clock, latency: float) -> None:
    """As many requests as the limit, all in flight at once, each answered in `latency`."""
    started = [limiter.acquire() for _ in range(limiter.limit)]
    clock.now += latency
    for moment in started:
        limiter.release(moment, 200, size=40_000)


def make(**options: object) -> tuple[Limiter, Clock]:
    clock = Clock()
    return Limiter(LimiterSettings(**options), sleep=clock.sleep, clock=clock), clock  # type: ignore[arg-type]


def test_starts_at_one_and_rises_while_latency_stays_flat() -> None:
    limiter, clock = make(maximum=8)
    assert limiter.limit == 1
    for _ in range(5):
        window(limiter, clock, 0.1)
    assert limiter.limit == 6


def test_backs_off_to_the_shops_capacity_less_headroom_when_latency_rises() -> None:
    limiter, clock = make(maximum=8)
    for _ in range(4):
        window(limiter, clock, 0.1)
    assert limiter.limit == 5
    # Five in flight on four workers: each answer takes 5/4 as long (Little's law).
    window(limiter, clock, 0.125)
    assert limiter.limit == 3
    assert limiter.backoffs == 1
    clock.now += 0.01
    # Settled: flat windows keep it there until the next probe.
    for _ in range(10):
        window(limiter, clock, 0.1)
    assert limiter.limit == 3


def test_probes_again_after_probe_every_windows() -> None:
    limiter, clock = make(maximum=8, probe_every=5)
    for _ in range(4):
        window(limiter, clock, 0.1)
    window(limiter, clock, 0.125)
    assert limiter.limit == 3
    clock.now += 0.01
    for _ in range(5):
        window(limiter, clock, 0.1)
    assert limiter.limit == 4


def test_a_429_halves_the_limit_and_holds_every_request_for_its_retry_after() -> None:
    limiter, clock = make(maximum=8)
    for _ in range(5):
        window(limiter, clock, 0.1)
    assert limiter.limit == 6
    answer(limiter, clock, 0.1, status=429, retry_after=7)
    assert limiter.limit == 3
    before = clock.now
    limiter.acquire()
    assert clock.now - before >= 7 - 0.1 - 1e-9
    assert sum(clock.slept) >= 6.9


def test_a_503_backs_off_too_and_transport_failures_are_no_sample() -> None:
    limiter, clock = make(maximum=8, initial=4)
    answer(limiter, clock, 30.0, status=None)  # type: ignore[arg-type]
    assert limiter.limit == 4 and limiter.baseline is None and limiter.history == [4]
    answer(limiter, clock, 0.1, status=503)
    assert limiter.limit == 2


def test_a_reader_slower_than_the_shop_does_not_raise_the_limit() -> None:
    limiter, clock = make(maximum=8, initial=3)
    for _ in range(6):
        # One request at a time, though three are allowed: no evidence that more would do.
        answer(limiter, clock, 0.1)
    assert limiter.limit == 3


def test_fixed_mode_keeps_its_limit_whatever_the_latency() -> None:
    limiter, clock = make(maximum=4, adaptive=False)
    assert limiter.limit == 4
    for latency in (0.1, 0.5, 2.0, 9.0):
        window(limiter, clock, latency)
    answer(limiter, clock, 0.1, status=429)
    assert limiter.limit == 4


def test_rate_bounds_the_pace() -> None:
    limiter, clock = make(maximum=4, adaptive=False, rate=2.0)
    for _ in range(6):
        answer(limiter, clock, 0.0)
    # A burst of two, then each request waits half a second.
    assert sum(clock.slept) == pytest.approx(2.0)


def test_never_more_in_flight_than_the_limit_across_threads() -> None:
    limiter = Limiter(LimiterSettings(maximum=3, adaptive=False))
    # Three must be inside at once before any leaves: the peak is at least the limit.
    gate = threading.Barrier(3)
    held = threading.Event()

    def worker() -> None:
        with limiter.slot() as slot:
            gate.wait(timeout=5)
            held.wait(timeout=5)
            slot.done(200)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for thread in threads:
        thread.start()
    held.set()
    for thread in threads:
        thread.join(timeout=10)
    assert limiter.peak == 3


def test_one_answer_in_five_waiting_a_whole_page_is_a_rise() -> None:
    # Five in flight on four workers that finish together: four answers take a page's time,
    # the fifth waits for a worker and takes two. The median is flat; the mean is 6/5.
    limiter, clock = make(maximum=8)
    for _ in range(4):
        window(limiter, clock, 0.1)
    assert limiter.limit == 5
    started = [limiter.acquire() for _ in range(5)]
    clock.now += 0.1
    for moment in started[:4]:
        limiter.release(moment, 200, size=40_000)
    clock.now += 0.1
    limiter.release(started[4], 200, size=40_000)
    assert limiter.limit == 3


def shop_with_a_customer(workers: int, pages: int) -> tuple[Limiter, list[float], float]:
    """A pull of `pages` pages through the limiter from a shop with `workers` PHP workers (a
    page holds one for 0.4 s, requests beyond them queue in order) while a customer asks for
    a 50 ms page every 200 ms: (the limiter, the customer's latencies, the share of the pull
    the limit spent above workers − 1)."""
    import heapq
    import itertools

    limiter, clock = make(maximum=8)
    events: list[tuple[float, int, str, float]] = []
    order = itertools.count()
    queue: list[tuple[str, float]] = []
    busy = sent = done = 0
    waits: list[float] = []
    above = 0.0

    def arrive(kind: str, started: float) -> None:
        nonlocal busy
        if busy < workers:
            busy += 1
            service = 0.4 if kind == "page" else 0.05
            heapq.heappush(events, (clock.now + service, next(order), kind, started))
        else:
            queue.append((kind, started))

    heapq.heappush(events, (clock.now, next(order), "customer arrives", clock.now))
    begun = last = clock.now
    while done < pages:
        while sent < pages and limiter.in_flight < limiter.limit:
            sent += 1
            arrive("page", limiter.acquire())
        moment, _, kind, started = heapq.heappop(events)
        if limiter.limit > workers - 1:
            above += moment - last
        clock.now = last = moment
        if kind == "customer arrives":
            arrive("customer", moment)
            heapq.heappush(events, (moment + 0.2, next(order), kind, moment + 0.2))
            continue
        busy -= 1
        if queue:
            arrive(*queue.pop(0))
        if kind == "page":
            done += 1
            limiter.release(started, 200, size=40_000)
        else:
            waits.append(moment - started)
    return limiter, waits, above / (clock.now - begun)


def test_a_shared_shop_settles_one_worker_below_its_capacity() -> None:
    limiter, waits, above = shop_with_a_customer(workers=4, pages=1500)
    # Probing past the knee costs a few windows; the rest of the pull leaves a worker free.
    assert limiter.limit == 3
    assert above < 0.05
    waits.sort()
    assert waits[int(len(waits) * 0.95)] == pytest.approx(0.05)
