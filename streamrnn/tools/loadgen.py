"""Load for ``streamrnn bench``, each part a process of its own (``python -m streamrnn.tools.loadgen``).

- ``publish``: a raw MQTT 3.1.1 publisher that writes pre-encoded QoS 1 PUBLISH packets as fast as
  the broker reads them (paho's publisher tops out near 11,000 QoS 1 messages/s, below what a
  subscriber takes): in one burst, or at a steady rate, each stream's sensors together and the
  streams evenly spread over each tick, as a plant's controllers report; it prints when it sent
  each tick, or each stream's part of each tick.
- ``bare``: the reference subscriber: paho-mqtt doing only ``json.loads``, which is the practical
  limit of Python and paho on the same broker and the same stream.
"""

from __future__ import annotations

import argparse
import json
import socket
import struct
import sys
import threading
import time
from urllib.parse import urlparse

SENSORS = 14  # one stream per 14 sensors, as the simulated reactor has
T0 = 1.7e9  # event time of tick 0


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        n, byte = n >> 7, n & 0x7F
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _str(s: bytes) -> bytes:
    return struct.pack("!H", len(s)) + s


def packet(topic: str, payload: bytes, mid: int) -> bytes:
    """A QoS 1 PUBLISH."""
    body = _str(topic.encode()) + struct.pack("!H", mid) + payload
    return b"\x32" + _varint(len(body)) + body


def tick_packets(
    template: str, streams: int, channels: list[str], tick: int, period: float, t0: float, mid: int
) -> tuple[list[bytes], int]:
    """Every sensor of every stream for one tick, a buffer per stream; and the next message id."""
    ts = t0 + tick * period
    out = []
    for s in range(streams):
        one = []
        for j, name in enumerate(channels):
            payload = b'{"ts":%.3f,"value":%.6f}' % (ts, 1.0 + 0.01 * ((tick * 7 + s * 3 + j) % 100))
            one.append(packet(template.format(stream=f"r{s:05d}", feature=name), payload, mid))
            mid = mid % 65535 + 1
        out.append(b"".join(one))
    return out, mid


class RawPublisher:
    """One TCP connection; PUBACKs are read and counted by a thread of its own."""

    def __init__(self, url: str, client_id: str) -> None:
        u = urlparse(url)
        self.sock = socket.create_connection((u.hostname, u.port or 1883), timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        body = _str(b"MQTT") + b"\x04\x02" + struct.pack("!H", 60) + _str(client_id.encode())
        self.sock.sendall(b"\x10" + _varint(len(body)) + body)
        ack = self.sock.recv(4)
        if len(ack) < 4 or ack[0] != 0x20 or ack[3] != 0:
            raise ConnectionError(f"broker refused the bench publisher: {ack!r}")
        self.acked = 0
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        left = 0
        while True:
            try:
                data = self.sock.recv(1 << 16)
            except OSError:
                return
            if not data:
                return
            left += len(data)
            self.acked += left // 4  # PUBACK: 0x40 0x02 id id
            left %= 4

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def wait_acked(self, count: int, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while self.acked < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.acked} of {count} messages acknowledged by the broker")
            time.sleep(0.005)

    def close(self) -> None:
        try:
            self.sock.sendall(b"\xe0\x00")
        finally:
            self.sock.close()


def publish(
    url: str, template: str, channels: list[str], streams: int, ticks: int, rate: float | None, period: float, t0: float, first_tick: int
) -> dict:
    """``ticks`` ticks of every sensor of ``streams`` streams: all at once (``rate`` None), or
    ``rate`` ticks per second with stream ``s`` of each tick sent ``s / streams`` of a tick after
    its first. Returns when the burst started (``{first_tick: t}``), or when each stream's part of
    each tick was sent (``{tick: [t per stream]}``, wall clock), and the count."""
    pub = RawPublisher(url, f"bench-load-{time.monotonic_ns()}")
    mid, bufs = 1, []
    for k in range(first_tick, first_tick + ticks):
        buf, mid = tick_packets(template, streams, channels, k, period, t0, mid)
        bufs.append(buf)
    count = ticks * streams * len(channels)
    started: dict[int, float | list[float]] = {}
    if rate is None:
        data = b"".join(b"".join(b) for b in bufs)
        start = time.time()
        for i in range(0, len(data), 1 << 16):
            pub.send(data[i : i + (1 << 16)])
        started[first_tick] = start
    else:
        begin = time.monotonic() + 0.2
        for i, parts in enumerate(bufs):
            times = started[first_tick + i] = []
            for s, part in enumerate(parts):
                delay = begin + (i + s / streams) / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                times.append(time.time())
                pub.send(part)
    sent = time.time()
    pub.wait_acked(count)
    pub.close()
    return {"count": count, "started": started, "sent": sent, "acked": time.time()}


def bare(url: str, topic: str, count: int) -> dict:
    """Subscribe, say ``ready``, take ``count`` messages doing only ``json.loads``; return the
    wall-clock times of the first and the last."""
    import paho.mqtt.client as paho

    u = urlparse(url)
    got = {"n": 0, "first": 0.0, "last": 0.0}
    done = threading.Event()

    def on_message(client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        json.loads(msg.payload)
        got["n"] += 1
        if got["n"] == 1:
            got["first"] = time.time()
        if got["n"] >= count:
            got["last"] = time.time()
            done.set()

    subscribed = threading.Event()
    c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"bench-bare-{time.monotonic_ns()}", clean_session=True)
    c.on_message = on_message
    c.on_connect = lambda client, userdata, flags, rc, props: client.subscribe(topic, qos=1)
    c.on_subscribe = lambda *a: subscribed.set()
    c.on_socket_open = lambda client, userdata, sock: sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    c.connect(u.hostname, u.port or 1883)
    c.loop_start()
    if not subscribed.wait(30):
        raise TimeoutError("bare subscriber: no SUBACK")
    print("ready", flush=True)
    if not done.wait(600):
        raise TimeoutError(f"bare subscriber: {got['n']} of {count} messages")
    c.disconnect()
    c.loop_stop()
    return got


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m streamrnn.tools.loadgen")
    p.add_argument("what", choices=["publish", "bare"])
    p.add_argument("--broker", required=True)
    p.add_argument("--topic", required=True, help="publish: template with {stream} and {feature}; bare: the filter")
    p.add_argument("--channels", default=",".join(f"x{j:02d}" for j in range(SENSORS)), help="publish: the sensor names, comma-separated")
    p.add_argument("--streams", type=int, default=10)
    p.add_argument("--ticks", type=int, default=1000)
    p.add_argument("--first-tick", type=int, default=1)
    p.add_argument("--rate", type=float, help="ticks per second, the streams spread over each (default: one burst)")
    p.add_argument("--period", type=float, default=10.0, help="event-time seconds between ticks")
    p.add_argument("--t0", type=float, default=T0)
    p.add_argument("--count", type=int, help="bare: messages to take")
    a = p.parse_args(argv)
    if a.what == "bare":
        out = bare(a.broker, a.topic, a.count)
    else:
        out = publish(a.broker, a.topic, a.channels.split(","), a.streams, a.ticks, a.rate, a.period, a.t0, a.first_tick)
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
