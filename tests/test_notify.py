"""sd_notify over a real Unix datagram socket, from the Notifier and from a real daemon process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from streamrnn.daemon.notify import Notifier


@pytest.fixture
def listener(tmp_path):
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(0.2)
    yield path, sock
    sock.close()


def timed(sock: socket.socket, until: float) -> list[tuple[float, str]]:
    """(arrival, message) of what comes within ``until`` seconds."""
    out = []
    deadline = time.monotonic() + until
    while time.monotonic() < deadline:
        try:
            out.append((time.monotonic(), sock.recv(4096).decode()))
        except TimeoutError:
            continue
    return out


def received(sock: socket.socket, until: float) -> list[str]:
    out = []
    deadline = time.monotonic() + until
    while time.monotonic() < deadline:
        try:
            out.append(sock.recv(4096).decode())
        except TimeoutError:
            continue
    return out


def test_messages_and_watchdog_pace(listener, monkeypatch):
    path, sock = listener
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "400000")
    n = Notifier.from_env()
    assert "NOTIFY_SOCKET" not in os.environ and "WATCHDOG_USEC" not in os.environ  # children do not inherit it
    assert n.interval == pytest.approx(0.2)
    n.ready("serving")
    assert sock.recv(4096).decode() == f"READY=1\nSTATUS=serving\nMAINPID={os.getpid()}"
    start = time.monotonic()
    while time.monotonic() - start < 1.0:
        n.watchdog()
        time.sleep(0.01)
    pings = received(sock, 0.3)
    assert pings and set(pings) == {"WATCHDOG=1"} and 4 <= len(pings) <= 6
    n.stopping()
    assert sock.recv(4096).decode() == "STOPPING=1\nSTATUS=stopping"
    n.close()


def test_abstract_namespace(monkeypatch):
    name = f"streamrnn-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    try:
        n = Notifier(f"@{name}")
        n.status("x")
        assert sock.recv(100) == b"STATUS=x"
        n.close()
    finally:
        sock.close()


def test_unset_is_a_no_op_and_a_dead_socket_is_not_fatal(tmp_path, monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    n = Notifier.from_env()
    assert not n.enabled and not n.send("READY=1")
    n.watchdog()
    gone = Notifier(str(tmp_path / "nobody-listens"))
    assert not gone.send("READY=1")  # logged, not raised
    gone.close()


def test_watchdog_for_another_pid_is_ignored(monkeypatch, tmp_path):
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "s"))
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    monkeypatch.setenv("WATCHDOG_PID", "1")
    n = Notifier.from_env()
    assert n.enabled and n.interval is None
    n.close()


@pytest.mark.broker
def test_daemon_speaks_sd_notify(listener, mosquitto, tmp_path):
    """READY once serving, STATUS on readiness, WATCHDOG from the loop, STOPPING on SIGTERM."""
    path, sock = listener
    env = {**os.environ, "NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000", "STREAMRNN_TRAINER__ENABLED": "false"}
    log = open(tmp_path / "daemon.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamrnn", "run", "--broker", mosquitto.url, "--instance", "notify"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        msgs: list[tuple[float, str]] = []
        deadline = time.monotonic() + 120  # however long a loaded machine takes to start it
        while time.monotonic() < deadline and not any(m.startswith("STATUS=ready") for _, m in msgs):
            msgs += timed(sock, 0.5)
        msgs += timed(sock, 4.0)  # then 4 s of its loop
        said = [m for _, m in msgs]
        assert any(m.startswith("READY=1\n") and f"MAINPID={proc.pid}" in m for m in said), said
        assert any(m.startswith("STATUS=ready") for m in said), said
        pings = [t for t, m in msgs if m == "WATCHDOG=1"]
        assert len(pings) >= 4 and max(np.diff(pings)) < 1.0, pings  # every half second, from the engine loop: never past WATCHDOG_USEC
        proc.terminate()
        assert proc.wait(30) == 0
        assert "STOPPING=1\nSTATUS=stopping" in received(sock, 0.5)
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
