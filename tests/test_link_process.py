"""The daemon's MQTT client in a process of its own (issue 42): messages handed over and
acknowledged across it, forecasts published through it, a child that dies started again with
nothing lost, SIGTERM left to the daemon, and refusals counted into the metrics."""

import json
import os
import signal
import socket
import time

from prometheus_client import CollectorRegistry

from streamrnn import config
from streamrnn.daemon.metrics import Metrics
from streamrnn.intake.payload import stream_key
from streamrnn.transport.inbox import FairInbox
from streamrnn.transport.mqtt import Publisher, Subscriber
from streamrnn.transport.mqtt.process import LinkProcess


def _link(url: str, **mqtt) -> tuple[LinkProcess, FairInbox]:
    cfg = config.load(None, mqtt={"url": url, "instance": "apart", **mqtt}).mqtt
    inbox = FairInbox(1000, stream_key([cfg.sensor_topic]))
    return LinkProcess(cfg, ["plant/+/sensors/+"], inbox), inbox


def _until(what, timeout: float = 20.0, why: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not what():
        assert time.monotonic() < deadline, why
        time.sleep(0.02)


def _taken(inbox: FairInbox, n: int, timeout: float = 20.0) -> list:
    got, deadline = [], time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        got += inbox.take(n - len(got), n, 0.2)
    return got


def test_the_client_runs_apart_and_one_that_dies_is_started_again_with_nothing_lost(mosquitto):
    link, inbox = _link(mosquitto.url)
    pub = Publisher(mosquitto.url, "t-apart")
    sub = Subscriber(mosquitto.url, "t-apart-sub", ["plant/+/forecast", "streamrnn/apart/status"])
    try:
        link.start()
        _until(lambda: link.ready, why="the link process never connected")
        first = link._proc.pid
        assert first != os.getpid() and link._proc.poll() is None
        for i in range(30):
            pub.publish(f"plant/r{i % 3}/sensors/level", json.dumps({"ts": 1000.0 + i, "value": float(i)}).encode())
        pub.flush()
        got = _taken(inbox, 30)
        assert sorted(json.loads(m.payload)["value"] for m in got) == [float(i) for i in range(30)]
        link.ack_many(got[:20])  # the last ten left unacknowledged
        time.sleep(0.5)  # the acknowledgements on the wire

        os.kill(first, signal.SIGTERM)  # the daemon's group is sent SIGTERM on stop: the daemon stops it, not the signal
        time.sleep(0.3)
        assert link._proc.poll() is None and not link.check()

        os.kill(first, signal.SIGKILL)
        _until(lambda: link._proc.poll() is not None)
        assert link.check() and link.restarts == 1 and link._proc.pid != first
        metrics = Metrics(CollectorRegistry(), ["a"], 2)
        metrics.carry("link", link.counts)
        assert metrics.registry.get_sample_value("streamrnn_mqtt_client_restarts_total") == 1
        _until(lambda: link.ready, why="the new link process never connected")
        again = _taken(inbox, 10)
        assert sorted(m.payload for m in again) == sorted(m.payload for m in got[20:])  # the broker kept them
        assert {m.session for m in again}.isdisjoint({m.session for m in got})
        link.ack_many(again)

        assert link.publish_many([("plant/r0/forecast", b"f1"), ("plant/r1/forecast", b"f2")]) == [None, None]
        seen = []
        _until(lambda: seen.append(sub.messages.get(timeout=1).payload) or {b"f1", b"f2"} <= set(seen))
        assert link.stop(5.0)
        assert link._proc.poll() == 0
        status = Subscriber(mosquitto.url, "t-apart-status", ["streamrnn/apart/status"])
        assert status.messages.get(timeout=5).payload == b"offline"
        status.close()
    finally:
        link.stop(1.0)
        pub.close()
        sub.close()
    again, inbox = _link(mosquitto.url)  # the same session: nothing more was left unacknowledged
    try:
        again.start()
        _until(lambda: again.ready)
        time.sleep(0.5)
        assert inbox.empty()
    finally:
        again.stop(5.0)


def test_forecasts_its_client_refuses_are_counted_into_the_metrics():
    """Its client's queue full while the broker is away: the refusals come back as counts,
    carried into ``streamrnn_publish_failures_total``."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there
    link, _ = _link(f"mqtt://127.0.0.1:{port}", out_queue=3)
    try:
        link.start()
        assert link.publish_many([(f"plant/r{i}/forecast", b"x") for i in range(10)]) == [None] * 10
        _until(lambda: link.counts["publish_queue_full"] == 7, why=f"counts: {dict(link.counts)}")
        assert not link.ready and link.pending == 3
        metrics = Metrics(CollectorRegistry(), ["a"], 2)
        metrics.carry("link", link.counts)
        assert metrics.registry.get_sample_value("streamrnn_publish_failures_total", {"reason": "queue_full"}) == 7
    finally:
        flushed = link.stop(0.5)
    assert not flushed and link._proc.poll() == 0
