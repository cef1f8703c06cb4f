"""What the daemon (one box, MQTT) and a shard (a fleet, NATS) share: the engine thread's
lifecycle around their loops. Signals stop it; the watchdog is fed every turn; readiness is said
the moment it changes; once a second the slow pass beats the metrics endpoint (restarting its
server process if it died) and refreshes the gauges."""

from __future__ import annotations

import logging
import queue
import signal
import threading
import time

import torch

from streamrnn.config import Settings
from streamrnn.daemon.endpoint import Endpoint
from streamrnn.daemon.metrics import Metrics
from streamrnn.daemon.notify import Notifier
from streamrnn.delivery import Delivery

log = logging.getLogger(__name__)

BATCH = 10_000  # messages taken per turn at most: bounds the time between two wall-clock checks
_EVERY = 1.0  # seconds between slow passes (skill, gauges)


class Service:
    """The lifecycle of an engine thread's loop; a subclass sets ``link`` (its transport) and
    implements ``turn``, ``_readiness`` and ``_gauges``."""

    link: object

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings, self.metrics = settings, metrics
        d = settings.daemon
        self.http = None
        if d.metrics_port is not None:
            self.http = Endpoint(metrics.registry, d.metrics_host, d.metrics_port, d.metrics_max_rate, log_format=d.log_format)
        self.notify = Notifier.from_env()
        self.stopping = threading.Event()
        self._last_slow = -float("inf")
        self._was_ready = False

    def ready(self) -> bool:
        """Connected and subscribed (or joined), and not stopping: ``/readyz``."""
        return self.link.ready and not self.stopping.is_set()

    def stop(self) -> None:
        self.stopping.set()

    def _start(self) -> None:
        """Before the loop, on the engine's thread: signals, torch's threads, the metrics endpoint."""
        if threading.current_thread() is threading.main_thread():
            stop_on_signals(self.stopping)
        if self.settings.threads:
            torch.set_num_threads(self.settings.threads)  # from the engine's thread, before its first step
        if self.http:
            self.http.start()

    def _pulse(self) -> bool:
        """Every turn: the watchdog fed, readiness said when it changes. True once a second, after
        the endpoint's beat: time for the slow pass."""
        self.notify.watchdog()
        ready = self.ready()
        if ready != self._was_ready:  # said at once, not at the next slow pass
            self._readiness(ready)
            self._was_ready = ready
            if self.http:
                self.http.beat(ready)
        now = time.monotonic()
        if now - self._last_slow < _EVERY:
            return False
        self._last_slow = now
        if self.http:
            self.http.beat(ready)
            if self.http.check():
                self.metrics.endpoint_restarts.inc()
        self._gauges()
        return True

    def _readiness(self, ready: bool) -> None:
        raise NotImplementedError

    def _gauges(self) -> None:
        raise NotImplementedError


def stop_on_signals(stopping: threading.Event) -> None:
    """SIGTERM, SIGINT and SIGHUP (a closing terminal: there is nothing to reload) set ``stopping``;
    a second one exits at once."""

    def handler(signum: int, frame: object) -> None:
        if stopping.is_set():
            log.warning("second signal: exiting at once")
            raise SystemExit(130)
        log.info("stopping", extra={"signal": signal.Signals(signum).name})
        stopping.set()

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, handler)


def take(inbox: queue.Queue[Delivery], wait: float) -> list[Delivery]:
    """What waits in the inbox, up to BATCH messages; waiting ``wait`` seconds for the first."""
    try:
        out = [inbox.get(timeout=wait) if wait > 0 else inbox.get_nowait()]
    except queue.Empty:
        return []
    try:
        while len(out) < BATCH:
            out.append(inbox.get_nowait())
    except queue.Empty:
        pass  # drained
    return out
