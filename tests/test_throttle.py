"""The throttle: while the inbox is backed up, a stream flooding it far beyond the others is
refused before it, and nothing else ever is."""

from __future__ import annotations

from streamrnn.throttle import SHARE, Throttle

SENSOR, FRAME = "plant/{stream}/sensors/{feature}", "plant/{stream}/frame"


def sent(t: Throttle, rates: dict[str, float], seconds: float, waiting: int) -> dict[str, int]:
    """Each stream sending ``rates[stream]`` sensor messages a second for ``seconds``, interleaved;
    how many of each were refused."""
    refused = dict.fromkeys(rates, 0)
    events = sorted((k / r, s) for s, r in rates.items() for k in range(int(r * seconds)))
    for now, stream in events:
        refused[stream] += t.allow(SENSOR.format(stream=stream, feature="level"), 100.0 + now, waiting) is not None
    return refused


def test_a_flooding_stream_is_refused_while_the_inbox_is_backed_up_and_the_others_never():
    t = Throttle({SENSOR: 1.0}, streams=100, backlog=256)
    refused = sent(t, {"good-1": 14, "good-2": 14, "runaway": 20_000}, 3.0, waiting=5_000)
    assert refused["good-1"] == refused["good-2"] == 0
    assert refused["runaway"] > 0.99 * 20_000 * 3 - 20_000  # all but its first half-second, before a median
    assert t.median < 20 and SHARE * t.median < 20_000


def test_nothing_is_refused_while_the_engine_keeps_up_nor_when_every_stream_bursts_alike():
    t = Throttle({SENSOR: 1.0}, streams=100, backlog=256)
    assert not any(sent(t, {"good": 14, "fast-replay": 5_000}, 2.0, waiting=10).values())  # the inbox is not backed up
    alike = {f"r{i}": 2_000.0 for i in range(20)}  # a burst of every stream at once
    assert not any(sent(Throttle({SENSOR: 1.0}, 100, 256), alike, 1.0, waiting=10_000).values())
    assert not any(sent(Throttle({SENSOR: 1.0}, 100, 256), {"alone": 20_000}, 1.0, waiting=10_000).values())  # no other to protect


def test_a_frame_message_weighs_as_its_sensors_and_unknown_topics_pass():
    t = Throttle({SENSOR: 1.0, FRAME: 14.0}, streams=100, backlog=0)
    assert t.stream("plant/r1/frame") == ("r1", 14.0) and t.stream("plant/r2/sensors/level") == ("r2", 1.0)
    assert t.stream("plant/r1/other") is None and t.allow("elsewhere/x", 0.0, 10**6) is None
    refused = {"by-frame": 0, "by-sensor": 0, "frames-too-fast": 0}
    for k in range(14 * 5):  # 5 s: a frame a second, its 14 sensors a second, and 14 frames a second
        now = k / 14
        if k % 14 == 0:
            refused["by-frame"] += t.allow("plant/by-frame/frame", now, 10**6) is not None
        refused["by-sensor"] += t.allow("plant/by-sensor/sensors/level", now, 10**6) is not None
        refused["frames-too-fast"] += t.allow("plant/frames-too-fast/frame", now, 10**6) is not None
    assert refused["by-frame"] == refused["by-sensor"] == 0 and refused["frames-too-fast"] > 50


def test_the_streams_kept_are_bounded():
    t = Throttle({SENSOR: 1.0}, streams=50, backlog=256)
    for i in range(10_000):
        t.allow(SENSOR.format(stream=f"id-{i}", feature="x"), i * 1e-4, 0)
    assert len(t._rates) == 50


def test_a_flood_of_ids_heard_once_each_throttles_none_of_the_good_streams():
    """The fuzz and the stream-id flood: thousands of streams heard once would make the median
    tiny, and every good stream 'far above' it; only streams heard more than once make it."""
    t = Throttle({SENSOR: 1.0}, streams=10_000, backlog=256)
    refused = 0
    for k in range(5_000):  # 2 s: a phantom id every 0.4 ms, two good streams at 14 messages a second
        now = 100.0 + k * 4e-4
        refused += t.allow(SENSOR.format(stream=f"phantom-{k}", feature="x"), now, 10_000) is not None
        if k % 178 == 0:
            for good in ("good-1", "good-2"):
                refused += t.allow(SENSOR.format(stream=good, feature="level"), now, 10_000) is not None
    assert refused == 0
