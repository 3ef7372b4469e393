"""How many requests one upstream gets at once, and how fast: one `Limiter` per source.

Adaptive mode is delay-based AIMD (the additive-increase / multiplicative-decrease of
Netflix's concurrency-limits `AIMDLimit`, driven by latency as TCP Vegas is):

- start at `initial` (1) requests in flight; after each window (as many answers as the limit,
  all sent since the limit last changed) whose mean latency stays within `tolerance` of the
  long-term latency (a moving average of the windows', as Netflix's Gradient2 keeps), raise
  the limit by one, up to `maximum`;
- when a window's mean latency rises past that (and past three standard errors of the shop's
  usual noise), the shop is queueing our requests: its capacity is about limit × long-term ÷
  latency (Little's law, which holds for the mean: a median hides the one request in five
  that waits a whole page for a worker), at most one less than the limit that rose, and the
  limit drops to that capacity less `headroom` (one worker left for the shop's customers,
  whose waits our own latency cannot show while we hold every worker but none queues);
- a 429 or 503 halves the limit at once and holds every request to the source for its
  Retry-After;
- once settled, it probes one step higher only every `probe_every` windows, so that a shop
  that got faster is used, and a shop that did not sees one short window of probing.

Fixed mode keeps `maximum` in flight. Either way `rate` (requests a second, a token bucket)
bounds the pace: Stripe's 100 reads/s live and 25 in test mode, a shop's
`max_requests_per_second`.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

# Statuses that say "slower": rate limited, or the server is out of workers.
THROTTLED = frozenset({429, 503})


class TokenBucket:
    """At most `rate` requests a second on average, bursts up to one second's worth. A request
    that finds the bucket empty takes a token on credit and sleeps until it is paid back."""

    def __init__(self, rate: float, sleep: Callable[[float], None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.capacity = max(1.0, rate)
        self.tokens = self.capacity
        self.sleep = sleep
        self.clock = clock
        self._stamp = clock()
        self._lock = threading.Lock()

    def take(self) -> None:
        if self.rate <= 0:
            return
        with self._lock:
            now = self.clock()
            self.tokens = min(self.capacity, self.tokens + (now - self._stamp) * self.rate)
            self._stamp = now
            self.tokens -= 1.0
            wait = -self.tokens / self.rate if self.tokens < 0 else 0.0
        if wait > 0:
            self.sleep(wait)


@dataclass(frozen=True)
class LimiterSettings:
    """`adaptive` False: always `maximum` in flight. `rate`: requests a second (None: no
    bound)."""

    maximum: int = 8
    adaptive: bool = True
    initial: int = 1
    minimum: int = 1
    rate: float | None = None
    # A window's mean latency this many times the no-load latency means queueing.
    tolerance: float = 1.15
    headroom: int = 1
    probe_every: int = 200


class Limiter:
    """Gates every request to one source: `with limiter.slot() as slot: …; slot.done(status)`.
    Thread-safe; waits with `sleep` (the daemon's stoppable wait)."""

    def __init__(self, settings: LimiterSettings | None = None, *,
                 sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings = settings or LimiterSettings()
        if settings.maximum < 1:
            raise ValueError("a limiter's maximum must be at least 1")
        self.clock = clock
        self.sleep = sleep
        self.bucket = TokenBucket(settings.rate, sleep, clock) if settings.rate else None
        start = settings.initial if settings.adaptive else settings.maximum
        self.limit = max(settings.minimum, min(settings.maximum, start))
        self.in_flight = 0
        self.peak = 0
        # The usual latency of an answer per size class, the last window's mean ratio to it,
        # and the variance of the ratios of windows that did not rise (the shop's noise).
        self._usual: dict[int, float] = {}
        self._seen: dict[int, int] = {}
        self.baseline: float | None = None
        self._variance = 0.0
        self.backoffs = 0
        self._window: list[float] = []
        self._throttled = False
        self._steady = 0
        # Past a knee, the limit grows only by probing (the "congestion avoidance" phase).
        self._settled = False
        self._hold_until = 0.0
        self._hold_for = 0.0
        self._changed_at = float("-inf")
        self._busiest = 0
        self._holds = 0
        self._served = threading.local()
        self._cond = threading.Condition()
        # The limit after every window, and (moment, limit) at every change, for benchmarks
        # and tests to read.
        self.history: list[int] = [self.limit]
        self.changes: list[tuple[float, int]] = [(clock(), self.limit)]

    # -- gate ---------------------------------------------------------------------------------
    def acquire(self) -> float:
        """Wait for a free slot (and a token, and the end of a Retry-After hold); returns the
        moment the request starts."""
        with self._cond:
            hold = self._hold_until - self.clock()
            # Just set: wait the upstream's own figure (a few ms longer is harmless).
            if hold > self._hold_for - 0.05:
                hold = self._hold_for
            # A thread waits out each hold once (its clock may be a test's, standing still).
            if getattr(self._served, "hold", 0) == self._holds:
                hold = 0.0
            self._served.hold = self._holds
        if hold > 0:
            # Once, for the whole hold: `sleep` may be the daemon's (stoppable) or a test's.
            self.sleep(hold)
        with self._cond:
            while self.in_flight >= self.limit:
                # Woken by a release; a timeout so that a lowered limit is seen.
                self._cond.wait(0.5)
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
            self._busiest = max(self._busiest, self.in_flight)
        if self.bucket is not None:
            self.bucket.take()
        return self.clock()

    def release(self, started: float, status: int | None, *,
                retry_after: float | None = None, size: int = 0) -> None:
        """One request done: `status` None for a transport failure (not a latency sample);
        `size` the answer's bytes."""
        latency = self.clock() - started
        with self._cond:
            self.in_flight -= 1
            if status is not None and status >= 400 and retry_after:
                self._hold(retry_after)
            if status in THROTTLED:
                self._throttle()
            elif status is not None and status < 500 and started >= self._changed_at:
                # Requests sent before the limit last changed say nothing of the new limit.
                self._sample(latency, size)
            self._cond.notify_all()

    @contextmanager
    def slot(self) -> Iterator[_Slot]:
        started = self.acquire()
        slot = _Slot()
        try:
            yield slot
        finally:
            self.release(started, slot.status, retry_after=slot.retry_after, size=slot.size)

    # -- the algorithm (called under the lock) ------------------------------------------------
    def _hold(self, retry_after: float) -> None:
        if self.clock() + retry_after > self._hold_until:
            self._hold_until = self.clock() + retry_after
            self._hold_for = retry_after
            self._holds += 1

    def _throttle(self) -> None:
        if not self.settings.adaptive:
            return
        if not self._throttled:
            self._throttled = True
            self._set(max(self.settings.minimum, self.limit // 2), settled=True)

    def _sample(self, latency: float, size: int) -> None:
        if not self.settings.adaptive:
            return
        # Latency is compared within a size class (powers of two of the answer's bytes): a
        # shop takes longer to build a full page than the last, short one.
        self._window.append((latency, size.bit_length()))
        if len(self._window) < self.limit:
            return
        window, self._window = self._window, []
        # Raised only when the limit was used: a reader slower than the shop is no signal.
        saturated, self._busiest = self._busiest >= self.limit, self.in_flight
        ratios = [latency / self._usual.setdefault(kind, latency) for latency, kind in window]
        ratio = statistics.fmean(ratios)
        throttled, self._throttled = self._throttled, False
        # A noisy shop's windows differ by chance: a rise must also pass three standard errors.
        noise = 3 * (self._variance / len(ratios)) ** 0.5
        rising = ratio > max(self.settings.tolerance, 1 + noise) \
            and self.limit > self.settings.minimum
        if not rising:
            spread = statistics.fmean((r - 1) ** 2 for r in ratios)
            self._variance += 0.1 * (spread - self._variance)
        # The usual latency follows slowly while latency rises (a shop that got slower for
        # good), faster otherwise (as Netflix's Gradient2 keeps a long-term average).
        weight = 0.05 if rising else 0.2
        for latency, kind in window:
            # The first answers of a class are averaged plainly (one alone is a poor guess).
            seen = self._seen[kind] = self._seen.get(kind, 0) + 1
            self._usual[kind] += max(weight, 1 / seen) * (latency - self._usual[kind])
        self.baseline = ratio
        if throttled:
            self._set(self.limit, settled=True)
        elif rising:
            capacity = round(self.limit / ratio)
            self._set(max(self.settings.minimum,
                          min(self.limit - 1, capacity) - self.settings.headroom), settled=True)
        elif not saturated:
            self.history.append(self.limit)
        elif not self._settled or self._steady + 1 >= self.settings.probe_every:
            # Slow start, or a probe: one step up a window until latency rises.
            self._set(min(self.settings.maximum, self.limit + 1), settled=False)
        else:
            self._steady += 1
            self.history.append(self.limit)

    def _set(self, limit: int, *, settled: bool) -> None:
        if limit < self.limit:
            self.backoffs += 1
        if limit != self.limit:
            self._changed_at = self.clock()
            self._window = []
            self.changes.append((self._changed_at, limit))
        self.limit = limit
        self._settled = settled
        self._steady = 0
        self.history.append(limit)


class _Slot:
    """What the request holding a slot reports back: its HTTP status (None: no answer), the
    Retry-After it was given and its size."""

    def __init__(self) -> None:
        self.status: int | None = None
        self.retry_after: float | None = None
        self.size = 0

    def done(self, status: int, retry_after: float | None = None, size: int = 0) -> None:
        self.status = status
        self.retry_after = retry_after
        self.size = size
