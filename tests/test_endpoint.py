"""The HTTP endpoint in its own process: real sockets, a real child process."""

from __future__ import annotations

import gzip
import http.client
import socket
import time

import pytest
from prometheus_client import CollectorRegistry, Counter

from streamrnn.daemon.endpoint import Endpoint
from streamrnn.daemon.httpd import Pace


def get(port: int, path: str, headers: dict | None = None) -> tuple[int, bytes, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        r = conn.getresponse()
        return r.status, r.read(), dict(r.getheaders())
    finally:
        conn.close()


def wait_status(port: int, path: str, status: int, timeout: float = 10.0) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        try:
            if get(port, path)[0] == status:
                return time.monotonic() - start
        except OSError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"{path} never answered {status}")


@pytest.fixture
def endpoint():
    reg = CollectorRegistry()
    c = Counter("widgets", "test counter", registry=reg)
    ep = Endpoint(reg, "127.0.0.1", 0, max_age=0.2, stale_after=1.5)
    ep.start()
    yield ep, c
    ep.close()


def test_routes_health_and_readiness(endpoint):
    ep, c = endpoint
    c.inc(3)
    wait_status(ep.port, "/healthz", 200)
    assert get(ep.port, "/readyz")[0] == 503  # not ready until the daemon says so
    ep.beat(True)
    wait_status(ep.port, "/readyz", 200)
    status, body, headers = get(ep.port, "/metrics")
    assert status == 200 and b"widgets_total 3.0" in body and headers["Content-Type"].startswith("text/plain; version=")
    assert get(ep.port, "/nope")[0] == 404
    status, body, headers = get(ep.port, "/metrics", {"Accept-Encoding": "gzip"})
    assert headers.get("Content-Encoding") == "gzip" and b"widgets_total 3.0" in gzip.decompress(body)
    # fresh within max_age
    c.inc()
    time.sleep(0.3)
    assert b"widgets_total 4.0" in get(ep.port, "/metrics")[1]
    ep.beat(False)
    wait_status(ep.port, "/readyz", 503)
    # no beat for stale_after: the loop is stuck, both probes fail, /metrics still answers
    ep.beat(True)
    took = wait_status(ep.port, "/healthz", 503, timeout=5)
    assert 1.0 < took < 3.0
    assert get(ep.port, "/readyz")[0] == 503
    assert get(ep.port, "/metrics")[0] == 200


def test_a_collector_that_raises_costs_its_scrapes_not_the_heartbeat():
    class Flaky:
        broken = True

        def collect(self):
            if self.broken:
                raise RuntimeError("collector bug")
            return []

    reg = CollectorRegistry()
    flaky = Flaky()
    reg.register(flaky)
    ep = Endpoint(reg, "127.0.0.1", 0, max_age=0.2, stale_after=1.5)
    ep.start()
    try:
        for _ in range(3):
            ep.beat(True)
            assert get(ep.port, "/metrics")[0] == 503  # after the render timeout
        ep.beat(True)
        wait_status(ep.port, "/healthz", 200, timeout=1.0)  # the beat still flows
        assert get(ep.port, "/readyz")[0] == 200
        flaky.broken = False
        assert get(ep.port, "/metrics")[0] == 200  # asked again, rendered
    finally:
        ep.close()


def test_server_process_is_restarted_on_the_same_port(endpoint):
    ep, _ = endpoint
    wait_status(ep.port, "/healthz", 200)
    assert not ep.check()
    ep.proc.kill()
    ep.proc.wait()
    assert ep.check() and ep.restarts == 1
    wait_status(ep.port, "/healthz", 200)


def test_server_process_exits_with_the_daemon(endpoint):
    ep, _ = endpoint
    proc = ep.proc
    ep.close()
    assert proc.wait(5) is not None
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", ep.port), 1).close()


def test_taken_port_names_the_field():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        with pytest.raises(OSError, match="daemon.metrics_host/metrics_port"):
            Endpoint(CollectorRegistry(), "127.0.0.1", s.getsockname()[1])


def test_pace_spaces_answers_and_refuses_beyond_the_wait():
    pace = Pace(rate=100.0, max_wait=0.5)
    pace.burst = 0.0
    start = time.monotonic()
    assert all(pace.wait() for _ in range(20))
    assert time.monotonic() - start >= 0.18  # 20 answers at 100/s
    pace.next = time.monotonic() + 1.0  # a queue a second long
    assert not pace.wait()


def _threads(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(next(line for line in f if line.startswith("Threads:")).split()[1])


def test_clients_that_drop_or_idle_are_silent_bounded_and_never_lock_out_a_scrape(endpoint, capfd):
    from streamrnn.daemon.endpoint import MAX_CONNECTIONS

    ep, c = endpoint
    ep.beat(True)
    wait_status(ep.port, "/metrics", 200)
    linger = __import__("struct").pack("ii", 1, 0)  # close with a reset, as a killed client does
    for i in range(1000):
        s = socket.create_connection(("127.0.0.1", ep.port), 5)
        if i % 2:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")  # and never reads the answer
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
        s.close()
    idle = [socket.create_connection(("127.0.0.1", ep.port), 5) for _ in range(2 * MAX_CONNECTIONS)]
    try:
        for s in idle[:10]:
            s.sendall(b"GET /metr")  # slow: a request begun and not finished
        time.sleep(1.0)
        assert _threads(ep.proc.pid) <= MAX_CONNECTIONS + 5  # not a thread per socket
        for _ in range(5):  # the idle sockets give way to real requests, answered as soon as the box lets them
            for path in ("/healthz", "/metrics"):
                deadline = time.monotonic() + 30.0
                while (status := get(ep.port, path)[0]) != 200 and time.monotonic() < deadline:
                    ep.beat(True)  # on a busy box the beat may not have reached the server yet, or gone stale
                    time.sleep(0.1)
                assert status == 200, path
    finally:
        for s in idle:
            s.close()
    time.sleep(0.5)
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Error" not in err, err[-3000:]


def test_an_idle_connection_is_closed_after_the_timeout(monkeypatch):
    import streamrnn.daemon.endpoint as endpoint_module

    ep = Endpoint(CollectorRegistry(), "127.0.0.1", 0)
    ep.start()
    try:
        wait_status(ep.port, "/healthz", 200)
        s = socket.create_connection(("127.0.0.1", ep.port), 30)
        start = time.monotonic()
        assert s.recv(1) == b""  # the server closed it
        took = time.monotonic() - start
        assert endpoint_module.IDLE_TIMEOUT - 1 <= took < endpoint_module.IDLE_TIMEOUT + 10
        s.close()
    finally:
        ep.close()
