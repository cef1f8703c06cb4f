"""The NATS JetStream transport (``nats://`` broker URLs): sensors kept durably by JetStream, forecasts
out on NATS subjects, while sensors and forecast readers stay on MQTT.

A NATS server with its MQTT listener maps the MQTT topic ``plant/r1/sensors/level`` to the subject
``plant.r1.sensors.level`` and back (see :func:`subject`). The daemon creates what it needs itself,
idempotently: a stream that keeps the sensor subjects, and a durable pull consumer named for its
instance. It fetches into the daemon's inbox and acknowledges a message only when the daemon says
so (once it is in the journal, as with MQTT); one the inbox has no room for is handed back to
JetStream for later, not dropped. Forecasts are published on the forecast subject, which MQTT
readers receive on their topic; the status is published the same way, but not retained (JetStream
keeps MQTT's retained messages for MQTT clients only).

nats-py is asyncio: the link runs an event loop on a thread of its own, as paho runs its network
thread; the engine thread only hands it work.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Iterable
from typing import TYPE_CHECKING

from streamrnn.config import MqttSettings
from streamrnn.logs import RateLimited
from streamrnn.transport import Delivery

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.js.client import JetStreamContext

log = logging.getLogger(__name__)

STREAM = "STREAMRNN_SENSORS"  # the JetStream stream that keeps the sensor subjects
_BATCH = 256  # messages fetched at once at most
_ACK_WAIT = 60.0  # seconds JetStream waits for an acknowledgement before it delivers again


def subject(topic: str) -> str:
    """The NATS subject of an MQTT topic or filter, as the NATS server's MQTT listener maps them
    (``/`` -> ``.``, a ``.`` within a level -> ``//``, ``+`` -> ``*``, ``#`` -> ``>``)."""
    return ".".join({"+": "*", "#": ">"}.get(level, level.replace(".", "//")) for level in topic.split("/"))


def topic(subj: str) -> str:
    """The MQTT topic of a NATS subject (the inverse of :func:`subject` for topics)."""
    return "/".join(level.replace("\0", ".") for level in subj.replace("//", "\0").split("."))


class JetStreamLink:
    """One NATS connection for the daemon, with a durable consumer of the sensor subjects; a
    :class:`~streamrnn.transport.Transport`."""

    def __init__(self, cfg: MqttSettings, subscriptions: list[str], inbox: queue.Queue[Delivery], block: float = 1.0) -> None:
        self.cfg, self.inbox, self.block = cfg, inbox, block
        self.subjects = [subject(s) for s in subscriptions]
        self.durable = f"streamrnn-{cfg.instance}"
        self.status_subject = subject(cfg.status_topic.format(instance=cfg.instance))
        self.counts: Counter[str] = Counter()
        self.connected = self.subscribed = False
        self._complaints = RateLimited(burst=5, per=60.0)
        self._intake = True
        self._session = 0
        self._held: dict[int, object] = {}  # delivery id -> the JetStream message to acknowledge
        self._next = 0
        self._unsent = 0  # forecasts handed over, not yet flushed to the server
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._stopping: asyncio.Event | None = None
        self._rebind = False
        self._up = asyncio.Event()  # connected once: what was published before waits for it
        self._nc = None
        self._thread = threading.Thread(target=self._run, name="nats", daemon=True)

    # -- what the daemon asks ---------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self.connected and self.subscribed

    @property
    def pending(self) -> int:
        return self._unsent

    def start(self) -> None:
        self._thread.start()

    def close_intake(self) -> None:
        """Take no more messages; those fetched and not taken are delivered again to the next session."""
        self._intake = False

    def stop(self, timeout: float) -> bool:
        """Say offline, flush what was published, close; whether everything went out in time."""
        if not self._thread.is_alive():
            return True
        done = asyncio.run_coroutine_threadsafe(self._close(), self._loop)
        try:
            flushed = done.result(timeout)
        except Exception as e:  # a timeout, or the connection gone: what was unsent is lost
            log.warning("nats connection not closed cleanly: %s", e)
            flushed = False
        self._thread.join(max(0.1, timeout))
        return flushed

    def ack(self, msg: Delivery) -> None:
        with self._lock:
            m = self._held.pop(msg.mid, None)
        if m is not None and msg.session == self._session:
            self._loop.call_soon_threadsafe(lambda: self._loop.create_task(self._acked(m)))

    def publish_many(self, messages: Iterable[tuple[str, bytes]], retain: bool = False) -> list[str | None]:
        """Hand the messages to the connection's thread (taken while disconnected, too: the client
        buffers them until it reconnects); None for each, as a taken MQTT publish."""
        batch = [(subject(t), p) for t, p in messages]
        with self._lock:
            self._unsent += len(batch)
        self._loop.call_soon_threadsafe(lambda: self._loop.create_task(self._publish(batch)))
        return [None] * len(batch)

    # -- the connection's thread ------------------------------------------------------------
    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._main())
        finally:
            self._loop.close()

    async def _main(self) -> None:
        import nats

        self._stopping = asyncio.Event()
        nc = await self._connect()
        if nc is None:
            return
        sub = None
        while not self._stopping.is_set():
            if sub is None or self._rebind:  # at start, and after the server came back: resume from the ack floor
                self._rebind, self.subscribed = False, False
                try:
                    sub = await bind(nc, self.subjects, self.durable, min(self.cfg.queue_size, 65536))
                except Exception as e:  # the server not ready yet (JetStream recovering): again shortly
                    self._complaints.log(log, logging.WARNING, "bind", "consumer not bound", error=f"{type(e).__name__}: {e}")
                    await asyncio.sleep(self.cfg.reconnect_min)
                    continue
                self.subscribed = True
                await nc.publish(self.status_subject, b"online")
            if not self._intake:
                await asyncio.sleep(0.05)
                continue
            try:
                msgs = await sub.fetch(_BATCH, timeout=0.5)
            except (TimeoutError, nats.errors.TimeoutError):
                continue
            except Exception as e:  # the connection lost or a server error: try again, said at a bounded rate
                self._complaints.log(log, logging.WARNING, "fetch", "fetch failed", error=f"{type(e).__name__}: {e}")
                await asyncio.sleep(0.5)
                continue
            for m in msgs:
                await self._take(m)

    async def _connect(self):
        """The connection, tried again with backoff until the server answers (or the daemon stops):
        a daemon started before its server waits for it, as the MQTT link does."""
        import nats

        cfg, wait = self.cfg, self.cfg.reconnect_min
        while not self._stopping.is_set():
            try:
                nc = await nats.connect(
                    cfg.url,
                    name=self.durable,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=cfg.reconnect_min,
                    user=cfg.username,
                    password=cfg.secret(),
                    disconnected_cb=self._disconnected,
                    reconnected_cb=self._reconnected,
                    error_cb=self._error,
                )
            except Exception as e:  # refused, unreachable: said at a bounded rate, tried again
                self._complaints.log(
                    log, logging.WARNING, "connect", "nats server unreachable", broker=cfg.url, error=f"{type(e).__name__}: {e}"
                )
                await asyncio.sleep(wait)
                wait = min(2 * wait, cfg.reconnect_max)
                continue
            self.connected = True
            self.counts["connects"] += 1
            log.info("connected", extra={"broker": cfg.url, "stream": STREAM, "consumer": self.durable})
            self._nc = nc
            self._up.set()
            return nc
        return None

    async def _take(self, m) -> None:
        """Into the inbox; if it stays full for ``block`` seconds, back to JetStream for later."""
        with self._lock:
            self._next += 1
            mid, self._held[self._next] = self._next, m
        d = Delivery(topic(m.subject), m.data, time.time(), mid, 1, self._session)
        deadline = time.monotonic() + self.block
        while time.monotonic() <= deadline:
            try:
                return self.inbox.put_nowait(d)
            except queue.Full:
                await asyncio.sleep(0.01)
        with self._lock:
            self._held.pop(mid, None)
        self.counts["queue_full"] += 1
        await m.nak(delay=1.0)

    async def _acked(self, m) -> None:
        try:
            await m.ack()
        except Exception as e:  # delivered again after ack_wait: the journal or the engine's late check drops it
            self._complaints.log(log, logging.WARNING, "ack", "acknowledgement failed", error=f"{type(e).__name__}: {e}")

    async def _publish(self, batch: list[tuple[str, bytes]]) -> None:
        """After the first connection (a restart's replayed forecasts are handed over before it)."""
        await self._up.wait()
        for subj, payload in batch:
            try:
                await self._nc.publish(subj, payload)
            except Exception as e:
                self.counts["publish_failed"] += 1
                self._complaints.log(log, logging.WARNING, "publish", "publish failed", error=f"{type(e).__name__}: {e}")
        with self._lock:
            self._unsent -= len(batch)

    async def _close(self) -> bool:
        self._stopping.set()
        nc = self._nc
        if nc is None or nc.is_closed:
            return False
        await nc.publish(self.status_subject, b"offline")
        while self._unsent > 0:
            await asyncio.sleep(0.01)
        await nc.flush(timeout=5)
        await nc.close()
        self.connected = self.subscribed = False
        return True

    async def _disconnected(self) -> None:
        self.connected = False
        self.counts["disconnects"] += 1

    async def _reconnected(self) -> None:
        self.connected = True
        self._rebind = True
        self.counts["reconnects"] += 1
        log.info("reconnected", extra={"broker": self.cfg.url})

    async def _error(self, e: Exception) -> None:
        self._complaints.log(log, logging.WARNING, "error", "nats error", error=f"{type(e).__name__}: {e}")


async def bind(nc: Client, subjects: list[str], durable: str, max_ack_pending: int) -> JetStreamContext.PullSubscription:
    """The stream over the sensor subjects and this instance's durable consumer, made if missing
    (idempotently), bound. What was delivered to this instance before and not acknowledged (it
    stopped, or was killed) is delivered again now, in order, from the last acknowledged message
    on, as an MQTT broker resumes a persistent session: JetStream alone would wait ``ack_wait``
    and then deliver it behind newer readings, which would come too late for their frames."""
    import nats
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

    js = nc.jetstream()
    try:
        await js.stream_info(STREAM)
    except nats.js.errors.NotFoundError:
        await js.add_stream(name=STREAM, subjects=subjects)
    start = {"deliver_policy": DeliverPolicy.ALL}
    try:
        info = await js.consumer_info(STREAM, durable)
    except nats.js.errors.NotFoundError:
        info = None  # the first start: made below
    if info is not None and info.num_ack_pending:  # delivered to a daemon that stopped before acknowledging
        start = {"deliver_policy": DeliverPolicy.BY_START_SEQUENCE, "opt_start_seq": info.ack_floor.stream_seq + 1}
        await js.delete_consumer(STREAM, durable)
        log.info("resuming from the last acknowledged message", extra={"sequence": start["opt_start_seq"] - 1})
        info = None
    if info is None:  # made afresh; one that exists goes on where it is (its policies cannot be changed)
        consumer = ConsumerConfig(
            durable_name=durable,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=_ACK_WAIT,
            filter_subjects=subjects,
            max_ack_pending=max_ack_pending,
            **start,
        )
        await js.add_consumer(STREAM, consumer)
    return await js.pull_subscribe_bind(durable, STREAM)
