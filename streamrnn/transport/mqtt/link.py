"""The daemon's broker connection: intake into a bounded queue, forecasts and status out.

The session is persistent (fixed client id, no clean start) and subscribed at QoS 1 in
``on_connect``, so a reconnect resubscribes and the broker keeps what arrives while we are away.
Acknowledgements are manual: a message is acknowledged when the engine takes it from the queue,
and one that arrives after intake closed (shutdown) is left unacknowledged for the broker to
deliver to the next session. The network thread only converts and enqueues; when the queue stays
full it drops, counts and acknowledges (so the broker's in-flight window does not stall).
"""

from __future__ import annotations

import logging
import queue
import random
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Iterable

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from streamrnn.config import MqttSettings
from streamrnn.delivery import Delivery
from streamrnn.logs import RateLimited
from streamrnn.transport.inbox import FairInbox
from streamrnn.transport.mqtt.connection import Client, Publish, nodelay, pubacks, queued, secure, wait_sent

log = logging.getLogger("streamrnn.transport.mqtt")
_REFUSED = {MQTTErrorCode.MQTT_ERR_QUEUE_SIZE: "queue_full", MQTTErrorCode.MQTT_ERR_NO_CONN: "no_connection"}  # publish refusals


class Link:
    """One broker connection for the daemon; thread-safe where the engine thread calls it."""

    def __init__(self, cfg: MqttSettings, subscriptions: list[str], inbox: FairInbox, block: float = 1.0, session: int = 0) -> None:
        self.cfg, self.subscriptions, self.inbox, self.block = cfg, subscriptions, inbox, block
        self.status_topic = cfg.status_topic.format(instance=cfg.instance)
        self._status_topic = self.status_topic.encode()
        self.client_id = cfg.client_id or f"streamrnn-{cfg.instance}"
        self.counts: Counter[str] = Counter()  # queue_full, connects, reconnects, disconnects, status_reasserted
        self._complaints = RateLimited(burst=5, per=60.0)  # each repeating complaint, per kind
        self.connected = self.subscribed = False
        self._intake = True
        self._session = session  # counts connections on from here: a restarted link process's ids never meet its last's
        self._pending_subs: set[int] = set()
        self._outstanding: deque[paho.MQTTMessageInfo] = deque(maxlen=cfg.out_queue)  # waited for at shutdown
        self._lock = threading.Lock()

        c = Client(CallbackAPIVersion.VERSION2, client_id=self.client_id, clean_session=False, protocol=paho.MQTTv311, manual_ack=True)
        c.suppress_exceptions = True  # a bug in a callback is logged by paho, never kills the loop
        c.enable_logger(logging.getLogger("paho"))
        self.host, self.port = secure(c, cfg)
        c.will_set(self.status_topic, b"offline", qos=1, retain=True)
        c.reconnect_delay_set(cfg.reconnect_min, cfg.reconnect_max)
        c.max_inflight_messages_set(cfg.max_inflight)
        c.max_queued_messages_set(cfg.out_queue)
        c.on_socket_open = nodelay
        c.on_connect = self._on_connect
        c.on_connect_fail = self._on_connect_fail
        c.on_disconnect = self._on_disconnect
        c.on_subscribe = self._on_subscribe
        c.on_message = self._on_message  # what paho parses itself: the first of each read, QoS 2
        c.on_publishes = self._on_publishes
        self.client = c

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        """Connect in the background; paho's thread reconnects with capped, jittered backoff."""
        self.client.connect_async(self.host, self.port, keepalive=self.cfg.keepalive)
        self.client.loop_start()

    def close_intake(self) -> None:
        """Take no more messages: the broker keeps what follows for the next session."""
        self._intake = False

    def stop(self, timeout: float) -> bool:
        """Wait (up to ``timeout``) for what was published, say ``offline``, disconnect. True if all went out."""
        deadline = time.monotonic() + timeout
        flushed = self.flush(deadline)
        if self.connected:
            info = self.client.publish(self.status_topic, b"offline", qos=1, retain=True)
            wait_sent(info, deadline)
        self.client.disconnect()
        self.client.loop_stop()
        return flushed

    def flush(self, deadline: float) -> bool:
        with self._lock:
            infos = list(self._outstanding)
        return all(wait_sent(i, deadline) for i in infos)

    @property
    def pending(self) -> int:
        """Published messages not yet acknowledged by the broker (an upper bound: pruned as it goes)."""
        with self._lock:
            return len(self._outstanding)

    @property
    def ready(self) -> bool:
        return self.connected and self.subscribed

    # -- engine thread --------------------------------------------------------------------
    def ack(self, msg: Delivery) -> None:
        self.ack_many((msg,))

    def ack_many(self, msgs: Iterable[Delivery]) -> None:
        self.acknowledge([(m.mid, m.qos, m.session) for m in msgs])

    def acknowledge(self, acks: list[tuple[int, int, int]]) -> None:
        """Acknowledge messages by (message id, QoS, session), those of this session only, paho's
        network thread woken once for them all (:func:`pubacks`)."""
        if not self.connected:
            return
        now = self._session
        pubacks(self.client, [mid for mid, qos, session in acks if qos == 1 and session == now])
        for mid, qos, session in acks:
            if qos > 1 and session == now:  # QoS 2's exchange stays paho's
                self.client.ack(mid, qos)

    def publish_many(self, messages: Iterable[tuple[str, bytes]], retain: bool = False) -> list[str | None]:
        """Publish a step's forecasts: one reason it was refused (or None) per message, in order
        (queue_full, no_connection, other); the bookkeeping done once for all of them."""
        qos, taken, reasons = self.cfg.qos, [], []
        for topic, payload in messages:
            info = queued(self.client.publish(topic, payload, qos=qos, retain=retain), qos)
            if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
                taken.append(info)
                reasons.append(None)
                continue
            reasons.append(_REFUSED.get(info.rc, "other"))
        with self._lock:
            self._outstanding.extend(taken)
            while self._outstanding and self._outstanding[0].is_published():
                self._outstanding.popleft()
        return reasons

    # -- network thread -------------------------------------------------------------------
    def _on_connect(self, client: paho.Client, userdata: object, flags: object, rc: paho.ReasonCode, props: object) -> None:
        if rc.is_failure:
            extra = {"broker": self.cfg.url, "reason": str(rc)}
            if rc.value in (0x04, 0x05, 0x86, 0x87):  # bad user name or password, not authorised (3.1.1 and 5)
                extra["hint"] = "check mqtt.username, mqtt.password_file and the broker's password and ACL files"
            self._complaints.log(log, logging.ERROR, "refused", "broker refused the connection, retrying", **extra)
            return
        self._session += 1
        self.connected = True
        self.counts["connects"] += 1
        if self.counts["connects"] > 1:
            self.counts["reconnects"] += 1
        resumed = bool(getattr(flags, "session_present", False))
        said = dict(broker=self.cfg.url, client_id=self.client_id, session_present=resumed, connects=self.counts["connects"])
        self._complaints.log(log, logging.INFO, "connected", "connected", **said)
        # its own status too: anyone else's word there while it serves is said over (re-asserted)
        result, mid = client.subscribe([(t, self.cfg.qos) for t in self.subscriptions] + [(self.status_topic, 1)])
        if result == MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._pending_subs = {mid}
        else:
            log.error("subscribe failed", extra={"reason": paho.error_string(result)})

    def _on_connect_fail(self, client: paho.Client, userdata: object) -> None:
        # called in paho's ``except OSError`` around the attempt: the exception says why
        err = sys.exc_info()[1]
        self.counts["connect_failures"] += 1
        self._complaints.log(
            log,
            logging.ERROR,
            "unreachable",
            "broker unreachable, retrying",
            broker=self.cfg.url,
            error=f"{type(err).__name__}: {err}" if err else "unknown",
            attempt=self.counts["connect_failures"],
        )

    def _on_subscribe(self, client: paho.Client, userdata: object, mid: int, codes: list[paho.ReasonCode], props: object) -> None:
        *sensors, status = codes
        bad = [str(c) for c in sensors if c.is_failure]
        if bad:
            log.error("subscriptions refused", extra={"topics": self.subscriptions, "reasons": bad})
            return
        if status.is_failure:  # serving goes on; only an overwritten status stays as it is
            log.warning(
                "status topic not readable: it is not re-asserted if another client overwrites it",
                extra={"topic": self.status_topic, "reason": str(status), "hint": "grant the daemon's user readwrite on its status topic"},
            )
        self._pending_subs.discard(mid)
        if not self._pending_subs:
            self.subscribed = True
            client.publish(self.status_topic, b"online", qos=1, retain=True)
            log.info("subscribed", extra={"topics": self.subscriptions})

    def _on_disconnect(self, client: paho.Client, userdata: object, flags: object, rc: paho.ReasonCode, props: object) -> None:
        was = self.connected
        self.connected = self.subscribed = False
        if was:
            self.counts["disconnects"] += 1
            self._complaints.log(
                log,
                logging.WARNING if rc.is_failure else logging.INFO,  # our own disconnect, at shutdown: no warning
                "disconnected",
                "disconnected",
                broker=self.cfg.url,
                reason=str(rc),
                disconnects=self.counts["disconnects"],
            )
        # jitter the backoff so a fleet does not reconnect in lockstep after a broker restart
        lo = self.cfg.reconnect_min * random.uniform(0.5, 1.5)
        client.reconnect_delay_set(lo, max(lo, self.cfg.reconnect_max * random.uniform(0.8, 1.0)))

    def _on_message(self, client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        # paho keeps the topic as it came (``topic`` decodes it, and raises where it is not UTF-8)
        self._on_publishes([(msg._topic, msg.payload, msg.mid, msg.qos, bool(msg.retain))])

    def _on_publishes(self, publishes: list[Publish]) -> None:
        """What one read of the socket gave (:meth:`Client.on_publishes`), or one message paho parsed."""
        if not self._intake:
            return  # unacknowledged: redelivered to the next session
        now, session, status = time.time(), self._session, self._status_topic
        for topic, payload, mid, qos, retain in publishes:
            if topic == status:
                self._status(payload, mid, qos, retain)
                continue
            try:
                name = topic.decode()
            except UnicodeDecodeError:
                name = "\ufffd"  # refused by the parser as an unknown topic
            m = Delivery(name, payload, now, mid, qos, session, retain)
            try:
                shed = self.inbox.put(m, timeout=self.block)
            except queue.Full:
                self.counts["queue_full"] += 1
                shed = m
            if shed is not None:  # dropped: the inbox full, or a runaway's newest shed for it (maybe of a session before)
                self.ack(shed)

    def _status(self, payload: bytes, mid: int, qos: int, retain: bool) -> None:
        """A message on our own status topic: say ``online`` again if it says otherwise while we serve."""
        if qos:
            self.client.ack(mid, qos)
        # retained: the value replayed as we subscribed, which our "online" right after replaces
        if payload == b"online" or retain or not self.subscribed or not self._intake:
            return
        self.counts["status_reasserted"] += 1
        self.client.publish(self.status_topic, b"online", qos=1, retain=True)
        said = dict(topic=self.status_topic, payload=payload[:32].decode("utf-8", "replace"))
        self._complaints.log(log, logging.WARNING, "status", "status topic overwritten by another client: online again", **said)
