"""The HTTP endpoint: ``/metrics``, ``/healthz``, ``/readyz``, served from a process of its own.

Answering HTTP in the daemon's interpreter would make every scrape compete with the engine for the
interpreter lock (a step gives it up at each torch call and waits to get it back). So the daemon
binds the socket (a taken port fails at start, and the port outlives a restart of the server),
hands it to a child process that answers HTTP, and sends that child only what it needs: readiness,
the time of the engine loop's last beat, and a rendering of the registry on request, at most once
per ``max_age`` seconds however many scrapers ask. The engine thread only sets a variable; a thread
of the daemon's does the talking, so a stuck server process cannot stall the engine. ``/healthz``
is 200 while the engine loop has beaten in the last ``stale_after`` seconds; ``/readyz`` is 200
while the daemon says it is ready (and the loop beats).

The server process is :mod:`streamrnn.daemon.httpd`, started by :class:`Endpoint` only.
"""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest

from streamrnn import children
from streamrnn.logs import RateLimited

log = logging.getLogger(__name__)

LINK_STATE, LINK_METRICS, LINK_RENDER = b"S", b"M", b"R"  # what the daemon and the server process say over their link
_TICK = 0.1  # seconds between two looks at the engine's state
MAX_CONNECTIONS = 128  # open at once; more are closed as they come (Prometheus and the probes need a few)
IDLE_TIMEOUT = 10.0  # seconds a connection may wait for a request or a request's next byte


class Endpoint:
    """The daemon's side: owns the listening socket and the server process, renders on request."""

    def __init__(
        self,
        registry: CollectorRegistry,
        host: str,
        port: int,
        max_rate: float = 20.0,
        max_age: float = 1.0,
        stale_after: float = 10.0,
        log_format: str = "logfmt",
    ) -> None:
        self.registry, self.max_rate, self.max_age, self.stale_after, self.log_format = registry, max_rate, max_age, stale_after, log_format
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.sock.bind((host, port))
        except OSError as e:
            self.sock.close()
            raise OSError(f"daemon.metrics_host/metrics_port: cannot listen on {host}:{port}: {e.strerror}") from e
        self.sock.listen(128)
        self.port: int = self.sock.getsockname()[1]
        self.proc: subprocess.Popen | None = None
        self.link: Connection | None = None
        self._state = (False, time.monotonic())  # (ready, last beat of the engine loop), set by beat()
        self.restarts = 0
        self._errors = RateLimited(burst=5, per=60.0)

    def start(self) -> None:
        ours, theirs = socket.socketpair()
        fds = (self.sock.fileno(), theirs.fileno())
        args = [
            sys.executable,
            "-m",
            "streamrnn.daemon.httpd",
            "--listen-fd",
            str(fds[0]),
            "--link-fd",
            str(fds[1]),
            "--max-age",
            str(self.max_age),
            "--stale-after",
            str(self.stale_after),
            "--max-rate",
            str(self.max_rate),
            "--log-format",
            self.log_format,
        ]
        self.proc = children.popen(args, pass_fds=fds, stdin=subprocess.DEVNULL)
        theirs.close()
        self.link = Connection(ours.detach())
        threading.Thread(target=self._talk, args=(self.link,), name="endpoint-link", daemon=True).start()

    def beat(self, ready: bool) -> None:
        """Engine thread: the loop is alive, and whether the daemon is ready. Never blocks: a
        thread of its own carries it to the server process within ``_TICK`` seconds."""
        self._state = (ready, time.monotonic())

    def check(self) -> bool:
        """Restart the server process if it died; True if it had to."""
        if self.proc is None or self.proc.poll() is None:
            return False
        self._errors.log(
            log,
            logging.ERROR,
            "died",
            "metrics endpoint process died; restarting it",
            exit_code=self.proc.returncode,
            restarts=self.restarts + 1,
        )
        self._close_link()
        self.restarts += 1
        self.start()
        return True

    def close(self) -> None:
        self._close_link()
        if self.proc is not None:
            children.stop(self.proc, 2.0, sig=0)  # it exits when the link closes
        self.sock.close()

    def _close_link(self) -> None:
        if self.link is not None:
            self.link.close()
            self.link = None

    def _talk(self, link: Connection) -> None:
        """Render on request, pass readiness and heartbeat on; ends when the link does."""
        sent = None
        try:
            while True:
                if link.poll(_TICK):
                    link.recv_bytes()
                    try:
                        body = generate_latest(self.registry)
                    except Exception as e:  # a collector's bug costs that scrape (a 503), never the heartbeat
                        self._errors.log(
                            log, logging.ERROR, "render", "rendering the metrics failed", exc_info=True, error=f"{type(e).__name__}: {e}"
                        )
                    else:
                        link.send_bytes(LINK_METRICS + body)
                state = self._state
                if state != sent:
                    link.send_bytes(LINK_STATE + f"{int(state[0])} {state[1]!r}".encode())
                    sent = state
        except (EOFError, OSError):
            return  # closed by us, or the process died: check() restarts it


# -- the server process ------------------------------------------------------------------
