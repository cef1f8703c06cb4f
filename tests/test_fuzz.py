"""10,000 fuzzed topics and payloads (hypothesis, derandomised) through a real daemon: it keeps
forecasting, counts every message by reason, keeps its state finite and its memory within caps."""

from __future__ import annotations

import json
import time
from collections import Counter

import numpy as np
import pytest
from conftest import DaemonProcess, write_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from paho.mqtt.client import topic_matches_sub
from test_daemon import drain, publish_rows, sim_rows

from streamrnn import config
from streamrnn.daemon import checkpoint
from streamrnn.intake.payload import STREAM_RE, Parser, Rejected
from streamrnn.offline import simulator
from streamrnn.transport.mqtt import Publisher, Subscriber

pytestmark = pytest.mark.broker
SUBSCRIPTIONS = ("plant/+/sensors/+", "plant/+/frame")
T0 = 1767225600.0

# topic levels: plausible or hostile (blanks, unicode), but publishable: no wildcards, no control
# characters or non-characters (a broker disconnects a client that sends those)
level = st.text(st.characters(blacklist_categories=("Cs", "Cc", "Cn"), blacklist_characters="+#/"), max_size=20)
streams = (
    st.from_regex(STREAM_RE, fullmatch=True).map(lambda s: s[:12]) | st.sampled_from(["reactor-02", "reactor-03"]) | level
)  # reactor-01: the good traffic
features = st.sampled_from(simulator.FEATURES) | level
numbers = st.floats() | st.integers(-(10**40), 10**40) | st.floats(-1e3, 1e3)
stamps = st.floats(T0 - 1e3, T0 + 1e4) | st.integers(T0, T0 + 10**4) | numbers | st.text(max_size=5) | st.none() | st.booleans()
json_values = st.recursive(
    st.none() | st.booleans() | numbers | st.text(max_size=10),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
    max_leaves=8,
)
topics = st.one_of(
    st.builds("plant/{}/sensors/{}".format, streams, features),
    st.builds("plant/{}/frame".format, streams),
    st.lists(level, min_size=1, max_size=5).map("/".join),
)
payloads = st.one_of(
    numbers.map(lambda x: json.dumps(x).encode()),
    st.fixed_dictionaries({"value": numbers | json_values}, optional={"ts": stamps, "extra": json_values}).map(
        lambda d: json.dumps(d).encode()
    ),
    st.dictionaries(st.sampled_from([*simulator.FEATURES, "ts", "other"]), numbers | st.none() | json_values, max_size=16).map(
        lambda d: json.dumps(d).encode()
    ),
    json_values.map(lambda d: json.dumps(d).encode()),
    st.binary(max_size=300),
    st.integers(60_000, 70_000).map(lambda n: b"[" + b"1," * (n // 2) + b"1]"),
)


def fuzzed(n: int = 10_000, per_batch: int = 100) -> list[tuple[str, bytes]]:
    """``n`` (topic, payload) pairs, the same on every run."""
    out: list[tuple[str, bytes]] = []

    @settings(max_examples=n // per_batch + 10, derandomize=True, database=None, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(st.tuples(topics, payloads), min_size=per_batch, max_size=per_batch))
    def collect(batch):
        out.extend((t, p) for t, p in batch if t and len(t.encode()) < 60_000)

    collect()
    return out[:n]


def test_ten_thousand_fuzzed_messages_are_each_counted_and_leave_the_state_finite_and_memory_capped(mosquitto, tmp_path):
    msgs = fuzzed()
    assert len(msgs) == 10_000
    state = tmp_path / "state"
    cfg = write_config(tmp_path / "d.toml", trainer={"enabled": False}, streams={"max_streams": 20}, checkpoint={"dir": str(state)})
    s = config.load(cfg)
    parser = Parser(s.channels, s.mqtt.sensor_topic, s.mqtt.frame_topic, s.mqtt.max_payload, s.frames.max_abs, s.frames.max_future)
    delivered = [(t, p) for t, p in msgs if any(topic_matches_sub(sub, t) for sub in SUBSCRIPTIONS)]
    expected: Counter[str] = Counter()
    for t, p in delivered:
        try:
            parser.parse(t, p, time.time())  # the daemon's clock: a ts past it by max_future is refused
            expected["accepted"] += 1
        except Rejected as e:
            expected[e.reason] += 1
    assert len(delivered) >= 5_000 and expected["accepted"] >= 500 and len(expected) >= 9, expected

    d = DaemonProcess(tmp_path, mosquitto.url, config=cfg).start()
    try:
        sub = Subscriber(mosquitto.url, "t-forecasts", ["plant/+/forecast"])
        pub = Publisher(mosquitto.url, "t-fuzz")
        rows = sim_rows(streams=1, steps=60)
        publish_rows(pub, rows[:20])
        time.sleep(1.5)
        rss0 = d.sample("process_resident_memory_bytes")
        for i, (t, p) in enumerate(msgs):
            pub.publish(t, p)
            if i % 250 == 0 and len(rows) > 20 + i // 250:  # good traffic in between
                publish_rows(pub, [rows[20 + i // 250]])
        publish_rows(pub, rows[20 + len(msgs) // 250 + 1 :])
        pub.close(60)
        got = drain(sub, quiet=4.0)
        sub.close()
        want = len(delivered) + sum(1 for _, _, v in rows for x in v if np.isfinite(x))
        deadline = time.monotonic() + 30
        while d.sample("streamrnn_messages_received_total") < want and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(1.2)  # counters are carried to /metrics once a second
        assert d.sample("streamrnn_messages_received_total") == want
        for reason, n in expected.items():
            if reason != "accepted":
                assert d.sample("streamrnn_messages_dropped_total", reason=reason) == n, reason
        assert {(m["stream"], m["ts"]) for m in got} >= {(st_, ts) for ts, st_, _ in rows}  # it kept forecasting
        # at the cap, new ids took the places of those on probation (none of them lasted 10 frames)
        assert d.sample("streamrnn_streams_active") <= 20 and d.sample("streamrnn_streams_reset_total", reason="displaced") > 0
        rss1 = d.sample("process_resident_memory_bytes")
        assert rss1 - rss0 < 100e6, f"resident memory grew by {(rss1 - rss0) / 1e6:.0f} MB"
        assert d.terminate() == 0
    finally:
        d.kill()
    (_, path, final), *_ = checkpoint.Store(state / "checkpoints").candidates()
    eng = final["engine"]
    assert all(np.isfinite(w).all() for w in eng["weights"].values())
    assert np.isfinite(eng["bank"]["hidden"]).all()
    for name in ("held", "centre"):
        assert not np.isinf(eng["bank"][name]).any()
    assert all(not np.isinf(r["values"]).any() for r in eng["rings"].values())
    print(f"fuzz: {len(msgs)} messages, {len(delivered)} delivered, {dict(expected)}; RSS {rss0 / 1e6:.0f} -> {rss1 / 1e6:.0f} MB")
