"""The daemon's MQTT transport: the :class:`~streamrnn.transport.mqtt.link.Link` in a process of its
own (:mod:`streamrnn.transport.mqtt.child`), so that paho's parsing of every packet runs beside the
engine, not in turns with it at the interpreter lock.

The child hands over what it parsed in pieces (one per read of the socket); a thread of the daemon's
puts them into the inbox, waiting as the link's network thread waited when the inbox is full (and
the child's thread waits behind it: the broker holds the rest). Acknowledgements and forecasts go
the other way, one write per turn. The daemon sees the connection's state as the child last
reported it. Forecasts the child's client refuses (its queue full while the broker is away) come
back as counts (``publish_<reason>``), not as the answer to :meth:`LinkProcess.publish_many`: that
answer is only whether the child took them.

A child that dies is started again by :meth:`LinkProcess.check` (the daemon's once-a-second pass):
the broker kept its session, and redelivers what it had not acknowledged.
"""

from __future__ import annotations

import logging
import marshal
import queue
import socket
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterable
from multiprocessing.connection import Connection

from streamrnn import children
from streamrnn.config import MqttSettings
from streamrnn.delivery import Delivery
from streamrnn.logs import RateLimited
from streamrnn.transport.inbox import FairInbox

log = logging.getLogger("streamrnn.transport.mqtt")
_SESSIONS = 1 << 20  # session numbers each child counts from: a restarted child's never meet the last one's


class LinkProcess:
    """The :class:`~streamrnn.transport.base.Transport` the daemon uses for mqtt:// and mqtts://."""

    def __init__(
        self, cfg: MqttSettings, subscriptions: list[str], inbox: FairInbox, block: float = 1.0, log_format: str = "logfmt"
    ) -> None:
        self.cfg, self.subscriptions, self.inbox, self.block, self.log_format = cfg, subscriptions, inbox, block, log_format
        self.connected = self.subscribed = False
        self.restarts = 0
        self._pending = 0
        self._intake, self._started = True, False
        self._proc: subprocess.Popen | None = None
        self._conn: Connection | None = None
        self._lock = threading.Lock()  # one writer at a time on the link
        self._own = Counter(queue_full=0, restarts=0)  # counted here; its keys made now: counts() reads it from another thread
        self._before: Counter[str] = Counter()  # the counts of children that died
        self._child: Counter[str] = Counter()
        self._stopped = threading.Event()
        self._flushed = False
        self._errors = RateLimited(burst=5, per=60.0)

    @property
    def counts(self) -> Counter[str]:
        """The child's counts, those of the children before it, and this side's (queue_full, restarts)."""
        return self._before + self._child + self._own

    @property
    def ready(self) -> bool:
        return self.connected and self.subscribed

    @property
    def pending(self) -> int:
        """Forecasts the child's client holds that the broker has not acknowledged, as last reported."""
        return self._pending

    # -- the engine's thread ----------------------------------------------------------------
    def start(self) -> None:
        """Start the child (if forecasts have not already) and connect it."""
        self._started = True
        self._spawn()
        self._send(("start",))

    def close_intake(self) -> None:
        """Take no more messages: those in flight stay unacknowledged, for the next session."""
        self._intake = False
        self._send(("close",))

    def stop(self, timeout: float) -> bool:
        """The child publishes what it holds (up to ``timeout``), says ``offline`` and exits. True if
        everything went out."""
        if self._proc is None:
            return True
        if self._send(("stop", timeout)):
            self._stopped.wait(timeout + 5.0)
        with self._lock:
            conn, self._conn = self._conn, None
        children.stop(self._proc, 5.0, sig=0)  # it exits once it said its last word
        if conn is not None:
            conn.close()
        return self._flushed

    def ack(self, msg: Delivery) -> None:
        self.ack_many((msg,))

    def ack_many(self, msgs: Iterable[Delivery]) -> None:
        """Acknowledge messages (the child keeps to those of its current session); from any thread."""
        ids = [(m.mid, m.qos, m.session) for m in msgs if m.qos]
        if ids:
            self._send(("ack", ids))

    def publish_many(self, messages: Iterable[tuple[str, bytes]], retain: bool = False) -> list[str | None]:
        """Hand forecasts to the child (started now if it has not been: forecasts made before
        connecting wait in its client's queue). None for each it took; ``no_connection`` for each
        if it is dead (until :meth:`check` starts another)."""
        messages = list(messages)
        self._spawn()
        taken = self._send(("pub", messages, retain))
        return [None if taken else "no_connection"] * len(messages)

    def check(self) -> bool:
        """Start the child again if it died; True if it had to."""
        if self._proc is None or self._proc.poll() is None or self._stopped.is_set():
            return False
        self._errors.log(
            log,
            logging.ERROR,
            "died",
            "MQTT link process died; starting another",
            exit_code=self._proc.returncode,
            restarts=self.restarts + 1,
        )
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
        self._proc.wait()
        self._before += self._child
        self._child = Counter()
        self.connected = self.subscribed = False
        self.restarts += 1
        self._own["restarts"] += 1
        self._proc = None
        self._spawn()
        if self._started:
            self._send(("start",))
        if not self._intake:
            self._send(("close",))
        return True

    def _spawn(self) -> None:
        """Start the child if there is none (from the thread that outlives it: the kernel ends the
        child with the thread that forked it)."""
        if self._proc is not None:
            return
        ours, theirs = socket.socketpair()
        args = [sys.executable, "-m", "streamrnn.transport.mqtt.child", "--link-fd", str(theirs.fileno())]
        self._proc = children.popen(args, pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL)
        theirs.close()
        conn = Connection(ours.detach())
        settings = self.cfg.model_dump(mode="json")
        settings["password"] = self.cfg.password.get_secret_value() if self.cfg.password is not None else None
        level = logging.getLevelName(logging.getLogger().getEffectiveLevel()).lower()
        conn.send_bytes(marshal.dumps((settings, self.subscriptions, (self.restarts + 1) * _SESSIONS, self.log_format, level)))
        with self._lock:
            self._conn = conn
        threading.Thread(target=self._receive, args=(conn,), name="mqtt-link", daemon=True).start()

    def _send(self, what: tuple) -> bool:
        data = marshal.dumps(what)
        with self._lock:
            if self._conn is None:
                return False
            try:
                self._conn.send_bytes(data)
            except OSError:
                return False  # it died: check() starts another
        return True

    # -- the link's thread ------------------------------------------------------------------
    def _receive(self, conn: Connection) -> None:
        """What the child says: messages into the inbox, its state; ends with the link."""
        try:
            while True:
                kind, *said = marshal.loads(conn.recv_bytes())
                if kind == "m":
                    self._take(said[0])
                elif kind == "s":
                    self._state(*said)
                elif kind == "x":
                    self._flushed = said[0]
                    self._state(*said[1:])
                    self._stopped.set()
                    return
        except (EOFError, OSError):
            self.connected = self.subscribed = False  # it died (check() starts another) or we closed the link

    def _take(self, rows: list[tuple]) -> None:
        if not self._intake:
            return  # unacknowledged: the broker gives them to the next session
        refused = []
        for row in rows:
            m = Delivery(*row)
            try:
                shed = self.inbox.put(m, timeout=self.block)
            except queue.Full:
                self._own["queue_full"] += 1
                shed = m
            if shed is not None:  # dropped: the inbox full, or a runaway's newest shed for it
                refused.append(shed)
        if refused:
            self.ack_many(refused)

    def _state(self, connected: bool, subscribed: bool, pending: int, counts: dict[str, int]) -> None:
        self._child = Counter(counts)
        self.connected, self.subscribed, self._pending = connected, subscribed, pending
