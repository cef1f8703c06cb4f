"""The fair inbox (issue 39, item 6): round-robin over the streams, nothing refused while there is
room, a full inbox shedding only a stream that holds far more than its share; and a real daemon on a
real mosquitto whose good streams keep their forecasts coming while one stream floods it."""

from __future__ import annotations

import json
import queue
import threading
import time

import pytest
from conftest import DaemonProcess, write_config

from streamrnn.delivery import Delivery
from streamrnn.intake.payload import stream_key
from streamrnn.offline import simulator
from streamrnn.tools.broker import Mosquitto, mosquitto_binary
from streamrnn.transport.inbox import FairInbox
from streamrnn.transport.mqtt import Publisher, Subscriber

SENSOR = "plant/{stream}/sensors/{feature}"
key = stream_key([SENSOR, "plant/{stream}/frame"])


def msg(stream: str, n: int = 0, arrival: float = 0.0) -> Delivery:
    return Delivery(SENSOR.format(stream=stream, feature="feed_flow"), str(n).encode(), arrival, n, 1, 1)


def drain(inbox: FairInbox) -> list[Delivery]:
    return inbox.take(inbox.qsize(), inbox.qsize(), 0) if inbox.qsize() else []


def test_the_stream_key_is_the_stream_level_of_either_template():
    assert key("plant/r-1/sensors/feed_flow") == "r-1"
    assert key("plant/r-2/frame") == "r-2"
    assert key("plant/r-3/sensors/a/b") == key("junk") == ""  # no template: one shared key


def test_streams_are_served_in_turn_each_in_its_own_order():
    inbox = FairInbox(10_000, key)
    for n in range(1000):
        inbox.put(msg("flood", n))
    inbox.put(msg("good", 0))
    inbox.put(msg("good", 1))
    got = drain(inbox)
    assert [key(m.topic) for m in got[:4]] == ["flood", "good", "flood", "good"]  # behind one message, not a thousand
    assert [int(m.payload) for m in got if key(m.topic) == "flood"] == list(range(1000))


def test_streams_a_turn_has_stepped_are_skipped_and_served_first_at_the_next_take():
    """A turn steps each stream once: a take skips the streams it names (a behind daemon took
    their backlog and put it back, message by message, most of its time at 10 streams), and they
    keep their place, first at the next take; a take that skips every stream waiting gives none."""
    inbox = FairInbox(10_000, key)
    for n in range(3):
        for s in ("a", "b", "c"):
            inbox.put(msg(s, n))
    got = inbox.take(100, 100, 0, skip={"a", "b"})
    assert [(key(m.topic), int(m.payload)) for m in got] == [("c", 0), ("c", 1), ("c", 2)]
    assert inbox.qsize() == 6 and inbox.take(100, 100, 0, skip={"a", "b"}) == []
    for n in range(3, 5):
        inbox.put(msg("c", n))
    got = inbox.take(4, 2, 0)
    assert [(key(m.topic), int(m.payload)) for m in got] == [("a", 0), ("b", 0), ("c", 3), ("a", 1)]


def test_a_full_inbox_sheds_only_the_stream_over_its_share():
    inbox = FairInbox(10, key)
    for n in range(8):
        inbox.put(msg("flood", n))
    inbox.put(msg("a"))
    inbox.put(msg("b"))
    late = msg("flood", 8)
    assert inbox.put(late, timeout=0) is late  # refused at the door: it holds 8 of 10
    shed = inbox.put(msg("c"), timeout=0)  # room made for a stream within its share
    assert key(shed.topic) == "flood" and int(shed.payload) == 7  # the flood's newest
    got = drain(inbox)
    assert sorted(key(m.topic) for m in got) == ["a", "b", "c"] + ["flood"] * 7


def test_a_runaway_alone_in_a_full_inbox_is_shed_while_a_single_stream_never_is():
    inbox = FairInbox(10, key)
    inbox.put(msg("a"))
    inbox.put(msg("b"))
    drain(inbox)  # served at once: only the runaway waits, but three streams are heard
    for n in range(10):
        inbox.put(msg("flood", n))
    late = msg("flood", 10)
    assert inbox.put(late, timeout=0) is late
    assert inbox.put(msg("a"), timeout=0).payload == b"9"
    alone = FairInbox(10, key)
    for n in range(10):
        alone.put(msg("only", n))
    with pytest.raises(queue.Full):  # the one stream a box serves is held back, never shed
        alone.put(msg("only", 10), timeout=0.05)


def test_a_flood_of_stream_ids_heard_once_each_is_remembered_no_more_than_the_inbox_holds():
    inbox = FairInbox(10, key)
    for n in range(1000):
        inbox.put(msg(f"id-{n}"))
        inbox.take(1, 1, 0)
    assert len(inbox._heard) == 10 and "id-999" in inbox._heard  # the streams heard last, a bounded memory


def test_a_full_inbox_with_every_stream_within_its_share_waits_for_room():
    inbox = FairInbox(4, key)
    for s in "abcd":
        inbox.put(msg(s))
    t0 = time.monotonic()
    with pytest.raises(queue.Full):
        inbox.put(msg("e"), timeout=0.2)
    assert time.monotonic() - t0 >= 0.19
    threading.Timer(0.2, lambda: inbox.take(1, 1, 0)).start()
    assert inbox.put(msg("e"), timeout=5) is None  # in, once the engine took one
    assert sorted(key(m.topic) for m in drain(inbox)) == ["b", "c", "d", "e"]


def test_a_take_waits_for_a_message_and_the_oldest_arrival_is_known():
    inbox = FairInbox(10, key)
    assert inbox.take(10, 10, 0.05) == []
    assert inbox.oldest() is None
    threading.Timer(0.1, lambda: inbox.put(msg("a", arrival=5.0))).start()
    assert [m.arrival for m in inbox.take(10, 10, 5)] == [5.0]
    inbox.put(msg("a", arrival=3.0))
    inbox.put(msg("a", arrival=4.0))
    inbox.put(msg("b", arrival=2.0))
    assert inbox.oldest() == 2.0 and inbox.qsize() == 3


GOOD = ("reactor-01", "reactor-02")
P = simulator.PERIOD
FLOOD = 5000  # whole frames a second: what one network thread reads beside a busy engine on 2 cores


def latency_buckets(daemon: DaemonProcess) -> dict[float, float]:
    """The frame-closed-to-published histogram's cumulative buckets, by upper bound."""
    prefix = "streamrnn_forecast_latency_seconds_bucket"
    return {float(k.split('le="')[1].split('"')[0]): v for k, v in daemon.samples().items() if k.startswith(prefix)}


def p99(before: dict[float, float], after: dict[float, float]) -> float:
    """The bucket bound under which 99 % of the forecasts between two scrapes fell."""
    counts = sorted((le, after[le] - before.get(le, 0.0)) for le in after)
    return next(le for le, n in counts if n >= 0.99 * counts[-1][1])


@pytest.mark.broker
def test_a_runaway_stream_flooding_the_daemon_delays_no_other_and_only_it_is_shed(tmp_path):
    """One gateway floods a new stream with whole frames, FLOOD a second (each a new tick: frames
    thousands of times faster than its period) for 8 s, beside two good streams at 5 ticks a second.
    The good streams' forecasts keep coming every tick and none of their ticks is lost, frame close
    to publish stays near its calm p99, and the full inbox sheds the runaway's messages only,
    counted as ``rate``. Before the fair inbox the good streams waited up to 2 s behind the flood,
    and the p99 went from 5 ms to 0.5 s."""
    if mosquitto_binary() is None:
        pytest.fail("mosquitto is not installed: apt-get install mosquitto (CI installs it)")
    broker = Mosquitto(tmp_path / "broker").start()
    cfg = write_config(tmp_path / "d.toml", trainer={"enabled": False}, ring={"size": 256}, mqtt={"queue_size": 10_000})
    daemon = DaemonProcess(tmp_path, broker.url, config=cfg, instance="fair")
    good, flood = Publisher(broker.url, "t-good"), Publisher(broker.url, "t-runaway", qos=0)
    watch = Subscriber(broker.url, "t-fair-forecasts", ["plant/+/forecast"])
    stop, flooding = threading.Event(), threading.Event()
    sent = [0]

    def traffic() -> None:
        reactor, start, k = simulator.Reactor(len(GOOD), seed=3), time.monotonic(), 0
        while not stop.is_set():
            ts, values = reactor.step()
            for i, stream in enumerate(GOOD):
                for j, v in enumerate(values[i]):
                    if v == v:
                        good.publish(
                            SENSOR.format(stream=stream, feature=simulator.FEATURES[j]), json.dumps({"ts": ts, "value": v}).encode()
                        )
            k += 1
            stop.wait(max(0.0, start + k / 5.0 - time.monotonic()))

    def runaway() -> None:
        while not flooding.wait(0.05) and not stop.is_set():
            pass
        start, k = time.monotonic(), 0
        while flooding.is_set():
            doc = {"ts": simulator.T0 + k * P} | {f: (k + j) % 7 for j, f in enumerate(simulator.FEATURES)}
            flood.publish("plant/reactor-runaway/frame", json.dumps(doc).encode())
            k += 1
            sent[0] += 1
            if k % 100 == 0:
                time.sleep(max(0.0, start + k / FLOOD - time.monotonic()))

    threads = [threading.Thread(target=traffic, daemon=True), threading.Thread(target=runaway, daemon=True)]
    last: dict[str, float] = {}
    ticks: dict[str, list[float]] = {s: [] for s in GOOD}

    def forecasts(until: float) -> float:
        """Read forecasts until ``until``; the longest any good stream went without one meanwhile."""
        worst = 0.0
        while time.monotonic() < until:
            try:
                m = watch.messages.get(timeout=0.05)
                doc = json.loads(m.payload)
                last[doc["stream"]] = m.arrival
                if doc["stream"] in ticks:
                    ticks[doc["stream"]].append(doc["ts"])
            except queue.Empty:
                pass
            if all(s in last for s in GOOD):
                worst = max(worst, time.time() - min(last[s] for s in GOOD))
        return worst

    try:
        daemon.start()
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60.0
        while not all(s in last for s in GOOD) and time.monotonic() < deadline:
            forecasts(time.monotonic() + 0.2)
        h0 = latency_buckets(daemon)
        calm = forecasts(time.monotonic() + 3.0)
        h1 = latency_buckets(daemon)
        flooding.set()
        worst = forecasts(time.monotonic() + 8.0)
        h2 = latency_buckets(daemon)
        flooding.clear()
        worst = max(worst, forecasts(time.monotonic() + 2.0))
        time.sleep(1.2)  # the counts reach /metrics once a second
        shed = daemon.samples().get('streamrnn_messages_dropped_total{reason="rate"}', 0.0)
        figures = (
            f"{sent[0]} frames sent in 8 s, {shed:.0f} shed as rate; good streams' worst wait {worst:.2f} s (calm {calm:.2f} s); "
            f"frame close to publish p99 {p99(h1, h2) * 1e3:g} ms (calm {p99(h0, h1) * 1e3:g} ms)"
        )
        print(figures)
        # forecast every tick (0.2 s), give or take a busy box; a FIFO kept them 1-2 s behind the flood,
        # and its p99 was 0.5 s on an idle box (on a box shared with two CPU-bound processes the
        # fair inbox's p99 was 0.1 s: the flood's parsing takes the CPU, it does not queue the frames)
        assert worst < 1.0, figures
        assert p99(h1, h2) <= max(0.25, 4 * p99(h0, h1)), figures
        assert shed > 0, figures
        named = [line for line in daemon.log().splitlines() if "streams shed" in line]
        assert named and all("reactor-runaway" in line for line in named), named[:3]
        for s in GOOD:  # every tick of theirs was forecast: none of their messages was shed or late
            got = sorted(set(ticks[s]))
            assert len(got) > 40 and len(got) == round((got[-1] - got[0]) / P) + 1, (s, len(got))
    finally:
        stop.set()
        flooding.clear()
        for t in threads:
            t.join(10)
        for c in (good, flood, watch):
            c.close()
        daemon.kill()
        broker.stop()
