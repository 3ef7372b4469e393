"""systemd's notify protocol against real Unix datagram sockets bound by the test."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.notify import Notifier, Watchdog, socket_address, watchdog_interval


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(2.0)
    try:
        yield str(path), sock
    finally:
        sock.close()


def received(sock: socket.socket, timeout: float = 0.2) -> list[str]:
    found = []
    sock.settimeout(timeout)
    while True:
        try:
            found.append(sock.recv(4096).decode())
        except TimeoutError:
            return found


def test_socket_address_reads_paths_and_abstract_names() -> None:
    assert socket_address("/run/systemd/notify") == "/run/systemd/notify"
    assert socket_address("@privacy-ledger") == b"\0privacy-ledger"
    assert socket_address("") is None
    assert socket_address(None) is None
    assert socket_address("vsock:2:1234") is None


def test_watchdog_interval_is_half_of_watchdog_usec() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "120000000"}, 42) == 60.0
    assert watchdog_interval({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "42"}, 42) == 0.5


def test_watchdog_interval_is_none_when_not_asked_or_asked_of_another_pid() -> None:
    assert watchdog_interval({}, 42) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}, 42) is None
    assert watchdog_interval({"WATCHDOG_USEC": "soon"}, 42) is None
    assert watchdog_interval({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "41"}, 42) is None


def test_ready_and_status_travel_in_one_datagram(
        listener: tuple[str, socket.socket]) -> None:
    path, sock = listener
    notifier = Notifier({"NOTIFY_SOCKET": path})
    assert notifier.enabled
    assert notifier.ready("syncing allmyink: 4,100 records")
    assert sock.recv(4096).decode() == "READY=1\nSTATUS=syncing allmyink: 4,100 records"
    notifier.close()


def test_each_message_kind_has_its_systemd_spelling(
        listener: tuple[str, socket.socket]) -> None:
    path, sock = listener
    notifier = Notifier({"NOTIFY_SOCKET": path})
    notifier.status("idle")
    notifier.watchdog()
    notifier.reloading()
    notifier.stopping()
    assert received(sock) == ["STATUS=idle", "WATCHDOG=1",
                              "RELOADING=1\nSTATUS=reloading the configuration",
                              "STOPPING=1\nSTATUS=stopping: finishing the current batch"]
    notifier.close()


def test_a_newline_in_a_status_cannot_forge_another_message(
        listener: tuple[str, socket.socket]) -> None:
    path, sock = listener
    notifier = Notifier({"NOTIFY_SOCKET": path})
    notifier.status("shop\nREADY=1")
    assert sock.recv(4096).decode() == "STATUS=shop READY=1"
    notifier.close()


def test_abstract_namespace_socket_receives_messages() -> None:
    name = f"privacy-ledger-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    sock.settimeout(2.0)
    try:
        notifier = Notifier({"NOTIFY_SOCKET": "@" + name})
        assert notifier.ready()
        assert sock.recv(4096) == b"READY=1"
        notifier.close()
    finally:
        sock.close()


def test_notifier_does_nothing_outside_systemd() -> None:
    notifier = Notifier({})
    assert not notifier.enabled
    assert notifier.ready() is False


def test_notifier_never_raises_when_the_socket_is_gone(tmp_path: Path) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "missing.sock")})
    assert notifier.status("still running") is False


def test_watchdog_pings_only_while_healthy(listener: tuple[str, socket.socket]) -> None:
    path, sock = listener
    healthy = threading.Event()
    healthy.set()
    watchdog = Watchdog(Notifier({"NOTIFY_SOCKET": path}), 0.05, healthy.is_set).start()
    try:
        time.sleep(0.3)
        healthy.clear()
        time.sleep(0.1)
        pings = received(sock, 0.1)
        # One every 0.05 s for 0.3-0.4 s, with room for a loaded machine.
        assert 3 <= len(pings) <= 12 and set(pings) == {"WATCHDOG=1"}
        time.sleep(0.3)
        assert received(sock, 0.1) == []
    finally:
        watchdog.stop()


def test_watchdog_treats_a_failing_health_check_as_unhealthy(
        listener: tuple[str, socket.socket]) -> None:
    path, sock = listener

    def broken() -> bool:
        raise RuntimeError("scheduler gone")

    watchdog = Watchdog(Notifier({"NOTIFY_SOCKET": path}), 0.05, broken).start()
    try:
        time.sleep(0.2)
        assert received(sock, 0.05) == []
    finally:
        watchdog.stop()
