"""``streamrnn simulate --broker``: the simulated reactors published live, one message per sensor
reading on its own topic, as a plant's gateways publish them (in no fixed order)."""

from __future__ import annotations

import json
import math
import os
import random
import signal
import threading
import time
from collections.abc import Callable

import numpy as np

from streamrnn.config import Settings
from streamrnn.offline import simulator
from streamrnn.transport.mqtt import Publisher


def publish(
    settings: Settings,
    broker: str,
    streams: int,
    rate: float,
    seed: int,
    key_every: int,
    steps: int | None,
    duration: float | None,
    inject: Callable[[str, np.ndarray], np.ndarray] | None = None,
) -> int:
    """Publish ``rate`` frames a second of wall time (each one period apart in event time) until
    ``steps`` frames, ``duration`` seconds, or SIGTERM/SIGINT; 0. ``inject(stream, values)`` (a
    :class:`streamrnn.offline.faults.Injector`) breaks sensors on the way."""
    tpl = settings.mqtt.sensor_topic
    pub = Publisher(broker, f"streamrnn-sim-{os.getpid()}", cfg=settings.mqtt)  # its credentials and TLS
    reactor = simulator.Reactor(streams, seed, key_every)
    names = simulator.stream_names(streams)
    topics = [[tpl.format(stream=s, feature=f) for f in simulator.FEATURES] for s in simulator.stream_names(streams)]
    rng = random.Random(seed)
    start, sent, step = time.monotonic(), 0, 0
    stop = _stop_on_signals()
    print(f"publishing {streams} reactors x {len(simulator.FEATURES)} sensors at {rate:g} frames/s to {broker}", flush=True)
    try:
        while not stop.is_set() and (steps is None or step < steps) and (duration is None or time.monotonic() - start < duration):
            ts, values = reactor.step()
            if inject is not None:
                values = np.array([inject(name, row) for name, row in zip(names, values)])
            batch = [(topics[i][j], v) for i in range(streams) for j, v in enumerate(values[i]) if math.isfinite(v)]
            rng.shuffle(batch)  # sensors do not report in a fixed order
            for topic, v in batch:
                pub.publish(topic, json.dumps({"ts": ts, "value": v}).encode())
            sent += len(batch)
            step += 1
            stop.wait(max(0.0, start + step / rate - time.monotonic()))
    finally:  # stopped by a signal, it waits for acknowledgements only while the broker is there
        lost = pub.close(while_connected=stop.is_set())
    print(f"published {sent} messages, {step} frames per stream" + (f", {lost} not acknowledged" if lost else ""), flush=True)
    return 0


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *a: stop.set())
    return stop
