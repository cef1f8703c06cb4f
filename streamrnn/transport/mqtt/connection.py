"""What every paho client of ours shares: TLS and credentials from the settings, no Nagle delay,
and waiting for a QoS 1 publish to be acknowledged; paho's own noise kept out of the logs."""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import struct
import time
from collections.abc import Callable

import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTErrorCode

from streamrnn.config import ConfigError, MqttSettings, broker_address


class _Benign(logging.Filter):
    """paho 2.2 logs as errors its own loop noticing a disconnect we asked for (dropped), and a
    connection lost, which is no error of ours: the link says it at warning (``disconnected``, with
    paho's reason) and reconnects, so paho's line stays, as a warning."""

    def filter(self, record: logging.LogRecord) -> bool:
        said = record.getMessage()
        if said.startswith("Client is not connected"):
            return False
        if said.startswith("failed to receive on socket") and record.levelno > logging.WARNING:
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


logging.getLogger("paho").addFilter(_Benign())
log = logging.getLogger("streamrnn.transport.mqtt")
_PUBACK = struct.Struct("!BBH")  # command, remaining length, message id: as paho packs one


def nodelay(client: paho.Client, userdata: object, sock: socket.socket) -> None:
    """on_socket_open: no Nagle delay (a QoS 1 round trip otherwise waits on delayed ACKs)."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError) as e:  # not a TCP socket (websockets, unix)
        log.debug("TCP_NODELAY not set: %s", e)


def queued(info: paho.MQTTMessageInfo, qos: int) -> paho.MQTTMessageInfo:
    """paho keeps a QoS >= 1 message published while disconnected and sends it on reconnect, but
    leaves rc at NO_CONN, which makes is_published() raise forever: mark it as the success it is."""
    if info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN and qos > 0:
        info.rc = MQTTErrorCode.MQTT_ERR_SUCCESS
    return info


def wait_sent(info: paho.MQTTMessageInfo, deadline: float) -> bool:
    try:
        info.wait_for_publish(max(0.0, deadline - time.monotonic()))
    except (RuntimeError, ValueError):  # refused or not queued
        return False
    return info.is_published()


def secure(c: paho.Client, cfg: MqttSettings) -> tuple[str, int]:
    """Set the client's credentials and, for mqtts://, TLS that verifies the broker against
    ``tls_ca`` (else the system's CAs) and presents ``tls_cert`` if given. Returns (host, port)."""
    host, port, tls = broker_address(cfg.url)
    if cfg.username is not None:
        c.username_pw_set(cfg.username, cfg.secret())
    if tls:
        try:
            ctx = ssl.create_default_context(cafile=str(cfg.tls_ca) if cfg.tls_ca else None)
            if cfg.tls_cert is not None:
                ctx.load_cert_chain(cfg.tls_cert, cfg.tls_key)
        except (OSError, ssl.SSLError) as e:
            raise ConfigError(f"mqtt.tls_ca / tls_cert / tls_key: cannot be loaded: {e}") from None
        c.tls_set_context(ctx)
    return host, port


def pubacks(client: paho.Client, mids: list[int]) -> None:
    """Acknowledge QoS 1 messages (their ``mids``) together: their PUBACKs queued as one piece of
    paho's outgoing queue (one ``send`` for them all, where paho sends each packet on its own), and
    paho's network thread woken once for them, where ``Client.ack`` wakes it once per packet (a
    syscall and a thread switch each, a large share of both threads at thousands of messages a
    second). It uses paho 2's outgoing queue and wake-up socket as ``Client._packet_queue`` does
    (paho is pinned below 3, and ``test_a_turns_messages_are_acknowledged_together...`` holds it
    to a real broker)."""
    if not mids:
        return
    packet = b"".join([_PUBACK.pack(paho.PUBACK, 2, mid) for mid in mids])
    client._out_packet.append(
        {"command": paho.PUBACK, "mid": mids[-1], "qos": 1, "pos": 0, "to_process": len(packet), "packet": packet, "info": None}
    )
    wake = client._sockpairW
    if wake is not None:
        # full: a wake is pending anyway; closed: paho is reconnecting, and its new loop writes what is queued
        with contextlib.suppress(OSError):
            wake.send(b"\0")


_READ = 65536  # bytes read from the socket at once
Publish = tuple[bytes, bytes, int, int, bool]  # a PUBLISH as read: topic, payload, message id, QoS, retain


class _Buffered:
    """A connected socket read in large pieces, each small read served from the last: paho reads
    each packet in three ``recv`` calls (the command byte, the length, the rest), a syscall each.
    ``pending()`` says what is buffered, which paho reads before it waits in ``select`` (as it does
    for TLS and websockets); everything else is the socket's."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock, self._data, self._at = sock, b"", 0

    def recv(self, n: int) -> bytes:
        if self._at >= len(self._data):
            data = self._sock.recv(max(n, _READ))
            if len(data) <= n:
                return data
            self._data, self._at = data, 0
        out = self._data[self._at : self._at + n]
        self._at += len(out)
        return out

    def pending(self) -> int:
        inner = self._sock.pending() if hasattr(self._sock, "pending") else 0
        return len(self._data) - self._at + inner

    def publishes(self) -> list[Publish]:
        """The whole QoS 0 and 1 PUBLISH packets (MQTT 3.1.1) at the head of what is buffered,
        taken: the parse of :meth:`paho.mqtt.client.Client._handle_publish` without a message
        object, a callback and two locks per packet. It stops at anything else (another packet,
        QoS 2, a packet not all here yet, one malformed), which is left to paho."""
        data, at, end, out = self._data, self._at, len(self._data), []
        while at < end:
            head = data[at]
            if head & 0xF0 != 0x30 or head & 0x06 > 2:  # not a PUBLISH, or QoS 2 (or 3, malformed)
                break
            size, shift, i = 0, 0, at + 1
            while i < end and shift < 28:
                size |= (data[i] & 127) << shift
                shift += 7
                i += 1
                if data[i - 1] < 128:
                    break
            else:
                break  # the length not all here yet (or longer than four bytes: paho says it is malformed)
            stop = i + size
            if stop > end or size < 2:
                break
            n = data[i] << 8 | data[i + 1]
            qos = (head >> 1) & 3
            body = i + 2 + n + 2 * qos
            if n == 0 or body > stop:
                break  # no topic, or one longer than the packet: malformed, paho's to refuse
            mid = data[body - 2] << 8 | data[body - 1] if qos else 0
            out.append((data[i + 2 : i + 2 + n], data[body:stop], mid, qos, bool(head & 1)))
            at = stop
        self._at = at
        return out

    def __getattr__(self, name: str) -> object:
        return getattr(self._sock, name)


class Client(paho.Client):
    """paho's client, its socket read in large pieces (:class:`_Buffered`), and each read of it
    parsed whole before paho waits again; ``after_read`` is called then (the link's process hands
    over what it parsed: one piece per read, not one per message). Where ``on_publishes`` is set,
    the QoS 0 and 1 messages a read gave are parsed together (:meth:`_Buffered.publishes`) and
    handed to it in one list, instead of one ``on_message`` call each."""

    after_read: Callable[[], None] | None = None
    on_publishes: Callable[[list[Publish]], None] | None = None

    def _create_socket(self):
        return _Buffered(super()._create_socket())

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        """paho's read, repeated while the socket holds what it read: paho's own parses one packet
        and goes back to ``select`` for the next one although it is here."""
        rc = super().loop_read(max_packets)
        while rc == MQTTErrorCode.MQTT_ERR_SUCCESS and self._sock is not None and self._sock.pending() > 0:
            if self.on_publishes is not None and self._in_packet["command"] == 0 and (got := self._sock.publishes()):
                with self._msgtime_mutex:
                    self._last_bytes_received = paho.time_func()
                self.on_publishes(got)
                continue
            rc = super().loop_read(max_packets)
        if self.after_read is not None:
            self.after_read()
        return rc
