"""The endpoint's server process (``python -m streamrnn.daemon.httpd --listen-fd N --link-fd M``, started
by :class:`streamrnn.daemon.endpoint.Endpoint` only): answers ``/metrics``, ``/healthz`` and ``/readyz`` on
the socket the daemon bound, from what the daemon sends over the link, with bounded connections, idle
timeouts and a paced rendering."""

from __future__ import annotations

import argparse
import gzip
import logging
import os
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from multiprocessing.connection import Connection

from prometheus_client.exposition import CONTENT_TYPE_LATEST

from streamrnn.daemon.endpoint import IDLE_TIMEOUT, LINK_METRICS, LINK_RENDER, LINK_STATE, MAX_CONNECTIONS
from streamrnn.logs import RateLimited

log = logging.getLogger("streamrnn.daemon.endpoint")


class Pace:
    """At most ``rate`` answers a second (a second's worth at once after a pause); the rest wait
    their turn, or get a 503 if it is more than ``max_wait`` away. Scrapes answered at any rate
    cost the machine: on a two-core edge box, a thousand a second slowed the engine by half."""

    def __init__(self, rate: float, max_wait: float = 8.0) -> None:
        self.gap, self.max_wait = 1.0 / rate, max_wait
        self.burst = 1.0
        self.lock = threading.Lock()
        self.next = 0.0

    def wait(self) -> bool:
        now = time.monotonic()
        with self.lock:
            slot = max(self.next, now - self.burst)
            if slot - now > self.max_wait:
                return False
            self.next = slot + self.gap
        if slot > now:
            time.sleep(slot - now)
        return True


class _Shared:
    def __init__(self, link: Connection, max_age: float) -> None:
        self.link, self.max_age = link, max_age
        self.cond = threading.Condition()
        self.beat = time.monotonic()
        self.ready = False
        self.body = b""
        self.gzipped: bytes | None = None  # made once per rendering, for the first scraper that asks
        self.rendered = -float("inf")
        self.asked = False

    def metrics(self, gzipped: bool, timeout: float = 5.0) -> bytes | None:
        with self.cond:
            if time.monotonic() - self.rendered > self.max_age:
                since = self.rendered
                if not self.asked:
                    self.asked = True
                    self.link.send_bytes(LINK_RENDER)
                if not self.cond.wait_for(lambda: self.rendered != since, timeout):
                    self.asked = False  # the next scrape asks again
                    return None
            if not gzipped:
                return self.body
            if self.gzipped is None:
                self.gzipped = gzip.compress(self.body, compresslevel=1)
            return self.gzipped

    def listen(self) -> None:
        """Take the daemon's messages; when it goes away (even by kill -9), so does this process."""
        while True:
            try:
                data = self.link.recv_bytes()
            except (EOFError, OSError):
                os._exit(0)
            kind, body = data[:1], data[1:]
            with self.cond:
                if kind == LINK_STATE:  # the engine loop's own beat: CLOCK_MONOTONIC is one clock for all processes
                    ready, beat = body.split()
                    self.ready, self.beat = ready == b"1", float(beat)
                elif kind == LINK_METRICS:
                    self.body, self.gzipped, self.rendered, self.asked = body, None, time.monotonic(), False
                    self.cond.notify_all()


class _Server(ThreadingHTTPServer):
    """A thread per connection, at most ``max_connections`` of them. One more takes the place of
    the connection idle the longest (a scraper or probe is never locked out by idle sockets); if
    none is idle it is closed as it comes. A client that goes away is normal and silent; any other
    error is one line, at a bounded rate, never a traceback per connection."""

    daemon_threads = True

    def __init__(self, sock: socket.socket, handler: type[BaseHTTPRequestHandler], max_connections: int = MAX_CONNECTIONS) -> None:
        super().__init__(sock.getsockname()[:2], handler, bind_and_activate=False)
        self.socket.close()
        self.socket = sock
        self.slots = threading.BoundedSemaphore(max_connections)
        self.idle: dict[socket.socket, None] = {}  # connections waiting for a request, oldest first
        self.lock = threading.Lock()
        self.errors = RateLimited(burst=5, per=60.0)

    def waiting(self, conn: socket.socket, idle: bool) -> None:
        """The handler's word: ``conn`` waits for a request (True) or is answering one."""
        with self.lock:
            if idle:
                self.idle[conn] = None
            else:
                self.idle.pop(conn, None)

    def process_request(self, request: socket.socket, client_address: object) -> None:  # type: ignore[override]
        if not self.slots.acquire(blocking=False):
            with self.lock:
                oldest = next(iter(self.idle), None)
                self.idle.pop(oldest, None)
            if oldest is not None:
                try:
                    oldest.shutdown(socket.SHUT_RDWR)  # its thread reads the end and leaves
                except OSError:
                    pass  # closed meanwhile: its slot is coming back all the same
            if oldest is None or not self.slots.acquire(timeout=1.0):
                self.shutdown_request(request)
                return
        try:
            super().process_request(request, client_address)
        except Exception:  # no thread could be started: the slot is given back here
            self.slots.release()
            raise

    def process_request_thread(self, request: socket.socket, client_address: object) -> None:  # type: ignore[override]
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.waiting(request, False)
            self.slots.release()

    def handle_error(self, request: object, client_address: object) -> None:
        e = sys.exc_info()[1]
        if isinstance(e, (ConnectionError, TimeoutError)):
            return  # the client went away or stalled: its business
        self.errors.log(log, logging.ERROR, "http", "metrics endpoint: request failed", error=f"{type(e).__name__}: {e}")


def _handler(shared: _Shared, pace: Pace, stale_after: float) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as Prometheus scrapes
        timeout = IDLE_TIMEOUT  # an idle or stalled client gives up its thread
        disable_nagle_algorithm = True  # headers and body are two writes: without it, 40 ms of delayed ACK each

        def handle_one_request(self) -> None:
            self.server.waiting(self.connection, True)  # type: ignore[attr-defined]
            super().handle_one_request()

        def parse_request(self) -> bool:
            whole = super().parse_request()  # a client slow to send its headers stays evictable
            self.server.waiting(self.connection, False)  # type: ignore[attr-defined]
            return whole

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                if not pace.wait():
                    self._send(503, b"too many scrapes\n")
                    return
                gz = "gzip" in self.headers.get("Accept-Encoding", "")
                body = shared.metrics(gz)
                if body is None:
                    self._send(503, b"metrics not rendered in time\n")
                else:
                    self._send(200, body, CONTENT_TYPE_LATEST, "gzip" if gz else None)
            elif path == "/healthz":
                age = time.monotonic() - shared.beat
                ok = age < stale_after
                self._send(200 if ok else 503, b"ok\n" if ok else f"engine loop silent for {age:.0f} s\n".encode())
            elif path == "/readyz":
                ok = shared.ready and time.monotonic() - shared.beat < stale_after
                self._send(200 if ok else 503, b"ready\n" if ok else b"not ready\n")
            else:
                self._send(404, b"not found\n")

        def _send(self, code: int, body: bytes, ctype: str = "text/plain; charset=utf-8", encoding: str | None = None) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            if encoding:
                self.send_header("Content-Encoding", encoding)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass  # scrapes are not events

    return Handler


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m streamrnn.daemon.httpd")
    p.add_argument("--listen-fd", type=int, required=True)
    p.add_argument("--link-fd", type=int, required=True)
    p.add_argument("--max-age", type=float, default=1.0)
    p.add_argument("--stale-after", type=float, default=10.0)
    p.add_argument("--max-rate", type=float, default=20.0)
    p.add_argument("--log-format", default="logfmt")
    args = p.parse_args()
    try:
        os.nice(10)  # under a flood of scrapes, the engine's process comes first
    except OSError as e:  # not permitted: it serves all the same
        log.debug("endpoint keeps the daemon's priority: %s", e)
    from streamrnn import logs

    logs.setup(args.log_format)
    sock = socket.socket(fileno=args.listen_fd)
    shared = _Shared(Connection(args.link_fd), args.max_age)
    server = _Server(sock, _handler(shared, Pace(args.max_rate), args.stale_after))
    threading.Thread(target=shared.listen, name="link", daemon=True).start()
    server.serve_forever()


if __name__ == "__main__":
    main()
