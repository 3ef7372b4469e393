"""systemd's notify protocol, without a library: one datagram per message to the Unix socket
named by $NOTIFY_SOCKET (READY=1, STATUS=…, WATCHDOG=1, STOPPING=1, RELOADING=1), and a
watchdog thread that pings at half of $WATCHDOG_USEC while the daemon is healthy.

Outside systemd (no $NOTIFY_SOCKET) every call does nothing, so the daemon runs the same in a
terminal.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable, Mapping

import structlog

log = structlog.get_logger("daemon.notify")


def socket_address(value: str | None) -> str | bytes | None:
    """The address to send to: a path, or an abstract name (a leading @ becomes NUL)."""
    if not value:
        return None
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    # systemd also allows vsock:… addresses; a daemon on the host never gets one.
    return None


def watchdog_interval(environ: Mapping[str, str], pid: int) -> float | None:
    """Seconds between pings (half of $WATCHDOG_USEC), or None when systemd asked for none
    or asked another process ($WATCHDOG_PID names a different pid)."""
    usec = environ.get("WATCHDOG_USEC", "").strip()
    if not usec.isdigit() or int(usec) == 0:
        return None
    owner = environ.get("WATCHDOG_PID", "").strip()
    if owner and (not owner.isdigit() or int(owner) != pid):
        return None
    return int(usec) / 1_000_000 / 2


class Notifier:
    """Sends notify messages to systemd; a no-op when $NOTIFY_SOCKET is not set."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.address = socket_address(env.get("NOTIFY_SOCKET"))
        self._lock = threading.Lock()
        self._socket: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *lines: str) -> bool:
        """Send these lines as one datagram. Returns whether it was sent; a failure is logged
        once per message and never raised (the daemon must not die for its supervisor)."""
        if self.address is None or not lines:
            return False
        payload = "\n".join(line.replace("\n", " ") for line in lines).encode()
        with self._lock:
            try:
                if self._socket is None:
                    self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                    self._socket.setblocking(True)
                    self._socket.settimeout(2.0)
                self._socket.sendto(payload, self.address)
            except OSError as exc:
                log.warning("notify.failed", message=lines[0][:40], error=exc.strerror or
                            type(exc).__name__)
                return False
        return True

    def ready(self, status: str | None = None) -> bool:
        return self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={text}")

    def reloading(self) -> bool:
        return self.send("RELOADING=1", "STATUS=reloading the configuration")

    def stopping(self, status: str = "stopping: finishing the current batch") -> bool:
        return self.send("STOPPING=1", f"STATUS={status}")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def close(self) -> None:
        with self._lock:
            if self._socket is not None:
                self._socket.close()
                self._socket = None


class Watchdog:
    """Pings WATCHDOG=1 every `interval` seconds from its own thread, but only while
    `healthy()` says so: a daemon whose scheduler stopped dispatching stops pinging, and
    systemd restarts it."""

    def __init__(self, notifier: Notifier, interval: float,
                 healthy: Callable[[], bool]) -> None:
        self.notifier = notifier
        self.interval = interval
        self.healthy = healthy
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="watchdog", daemon=True)
        self._sick = False

    def start(self) -> Watchdog:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.interval + 1)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                ok = self.healthy()
            except Exception:  # noqa: BLE001 - a failing check is an unhealthy daemon
                ok = False
            if ok:
                self.notifier.watchdog()
                if self._sick:
                    log.info("watchdog.healthy_again")
                self._sick = False
            elif not self._sick:
                log.error("watchdog.unhealthy", detail="not pinging systemd's watchdog")
                self._sick = True
            self._stop.wait(self.interval)
