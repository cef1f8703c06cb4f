"""Plain MQTT clients for the tools and the tests: a publisher that keeps QoS 1 messages in flight
up to a window, and a subscriber whose messages land in a queue. Same TLS, credentials and socket
options as the daemon's link."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from streamrnn.config import MqttSettings
from streamrnn.delivery import Delivery
from streamrnn.transport.mqtt.connection import nodelay, queued, secure

log = logging.getLogger(__name__)


def _open(
    url: str,
    client_id: str,
    timeout: float,
    setup: Callable[[paho.Client], None] | None = None,
    clean: bool = True,
    cfg: MqttSettings | None = None,
) -> paho.Client:
    """A connected client for tools (TCP_NODELAY, its network thread running and reconnecting);
    credentials and TLS from ``cfg`` where given."""
    c = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean, protocol=paho.MQTTv311)
    c.suppress_exceptions = True
    settings = (cfg or MqttSettings()).model_copy(update={"url": url})
    host, port = secure(c, settings)
    c.reconnect_delay_set(settings.reconnect_min, settings.reconnect_max)  # not paho's 2 minutes
    c.on_socket_open = nodelay
    if setup:
        setup(c)
    done = threading.Event()
    result: list[paho.ReasonCode] = []

    def on_connect(client: paho.Client, userdata: object, flags: object, rc: paho.ReasonCode, props: object) -> None:
        result.append(rc)
        done.set()

    c.on_connect = on_connect
    try:
        c.connect(host, port, keepalive=30)
    except OSError as e:  # refused, unreachable, no such host: say where it tried
        raise ConnectionError(f"no MQTT connection to {url}: {e.strerror or e}") from e
    c.loop_start()
    if not done.wait(timeout) or result[0].is_failure:
        c.loop_stop()
        raise ConnectionError(f"no MQTT connection to {host}:{port}: {result[0] if result else 'timed out'}")
    return c


def _wait_connected(client: paho.Client, who: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not client.is_connected():
        if time.monotonic() > deadline:
            raise ConnectionError(f"{who} not reconnected")
        time.sleep(0.02)


class Publisher:
    """A plain publishing client for tools (the simulator, tests, benchmarks): a bounded window of
    unacknowledged messages, every result checked."""

    def __init__(
        self, url: str, client_id: str, qos: int = 1, window: int = 1000, timeout: float = 10.0, cfg: MqttSettings | None = None
    ) -> None:
        self.qos, self.window, self.url = qos, window, url
        self._open: deque[paho.MQTTMessageInfo] = deque()
        self.client = _open(url, client_id, timeout, lambda c: c.max_inflight_messages_set(min(window, 65000)), cfg=cfg)
        self._lost: float | None = None  # when the connection was lost (monotonic)
        self.client.on_disconnect, self.client.on_connect = self._on_disconnect, self._on_connect

    def _on_disconnect(self, client: paho.Client, userdata: object, flags: object, rc: paho.ReasonCode, props: object) -> None:
        if rc.is_failure:  # not our own disconnect(): paho reconnects with backoff
            self._lost = time.monotonic()
            log.warning("broker %s lost (%s): reconnecting", self.url, rc)

    def _on_connect(self, client: paho.Client, userdata: object, flags: object, rc: paho.ReasonCode, props: object) -> None:
        if rc.is_failure:
            log.warning("broker %s refused the connection (%s): trying again", self.url, rc)
        elif self._lost is not None:
            log.warning("broker %s reconnected after %.1f s", self.url, time.monotonic() - self._lost)
            self._lost = None

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        while len(self._open) >= self.window:
            self._open.popleft().wait_for_publish(30)
        info = queued(self.client.publish(topic, payload, qos=self.qos, retain=retain), self.qos)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise ConnectionError(f"publish to {topic} refused: {paho.error_string(info.rc)}")
        if self.qos:
            self._open.append(info)
        while self._open and self._open[0].is_published():
            self._open.popleft()

    def flush(self, timeout: float = 30.0, while_connected: bool = False) -> int:
        """Wait until the broker acknowledged everything published so far, at most ``timeout``
        seconds; with ``while_connected``, no longer than the connection lasts (paho sends again
        what is open after a reconnect, so a plain flush waits a broker restart out). Returns how
        many are left unacknowledged."""
        deadline, refused = time.monotonic() + timeout, 0
        while self._open and time.monotonic() < deadline:
            if while_connected and not self.client.is_connected():
                break
            try:
                self._open[0].wait_for_publish(min(0.2, deadline - time.monotonic()))
            except (RuntimeError, ValueError):  # refused or not queued: it never will be sent
                self._open.popleft()
                refused += 1
                continue
            if self._open[0].is_published():
                self._open.popleft()
        left = refused + len(self._open)
        self._open.clear()
        return left

    def wait_connected(self, timeout: float = 30.0) -> None:
        """Wait for the connection (after a broker restart): what is published while disconnected
        is queued and may be sent after what is published once reconnected, out of order."""
        _wait_connected(self.client, "publisher", timeout)

    def close(self, timeout: float = 30.0, while_connected: bool = False) -> int:
        """Flush (as :meth:`flush`), disconnect and stop the network thread. Returns how many
        messages the broker never acknowledged."""
        left = self.flush(timeout, while_connected)
        self.client.disconnect()
        self.client.loop_stop()
        return left


class Subscriber:
    """A plain subscribing client for tools: messages land in ``messages`` (a queue of Delivery).
    With ``clean=False`` the broker keeps its session (and what arrives) across a disconnect."""

    def __init__(
        self,
        url: str,
        client_id: str,
        topics: list[str],
        qos: int = 1,
        timeout: float = 10.0,
        clean: bool = True,
        cfg: MqttSettings | None = None,
    ) -> None:
        self.messages: queue.Queue[Delivery] = queue.Queue()
        subscribed = threading.Event()

        def setup(c: paho.Client) -> None:
            c.on_subscribe = lambda *a: subscribed.set()
            c.on_message = lambda client, userdata, msg: self.messages.put(
                Delivery(msg.topic, msg.payload, time.time(), msg.mid, msg.qos, 0)
            )

        self.client = _open(url, client_id, timeout, setup, clean, cfg)
        self.client.subscribe([(t, qos) for t in topics])
        if not subscribed.wait(timeout):
            raise ConnectionError(f"subscription to {topics} not acknowledged")

    def wait_connected(self, timeout: float = 30.0) -> None:
        """Wait for the connection (after a broker restart; with ``clean=False`` the session and
        its subscriptions come back with it)."""
        _wait_connected(self.client, "subscriber", timeout)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
