import json

import pytest

from streamrnn.intake.payload import Parser, Rejected, subscription

CH = ["temp", "flow", "key"]


def parser(**kw):
    return Parser(CH, "plant/{stream}/sensors/{feature}", "plant/{stream}/frame", kw.get("max_payload", 1024), kw.get("max_abs", 1e6))


def test_sensor_object_bare_number_and_frame():
    p = parser()
    (r,) = p.parse("plant/r1/sensors/flow", b'{"ts": 1767225610, "value": 3.5}', 99.0)
    assert (r.stream, r.feature, r.ts, r.value) == ("r1", 1, 1767225610.0, 3.5)
    (r,) = p.parse("plant/r1/sensors/temp", b"42", 1767225611.5)
    assert (r.feature, r.ts, r.value) == (0, 1767225611.5, 42.0)  # no ts: stamped on arrival
    rs = p.parse("plant/r2/frame", json.dumps({"ts": 1767225620, "temp": 1, "key": None, "flow": 2.5}).encode(), 0.0)
    assert [(r.feature, r.value) for r in rs] == [(0, 1.0), (1, 2.5)]  # null: explicitly missing
    assert all(r.ts == 1767225620.0 and r.stream == "r2" for r in rs)


@pytest.mark.parametrize(
    "topic, payload, reason",
    [
        ("plant/r1/sensors/temp", b"x" * 2000, "oversize"),
        ("plant//sensors/temp", b"1", "topic"),
        ("plant/r1/sensors/temp/extra", b"1", "topic"),
        ("other/r1", b"1", "topic"),
        ("plant/r 1/sensors/temp", b"1", "stream"),
        ("plant/" + "r" * 200 + "/sensors/temp", b"1", "stream"),
        ("plant/r1/sensors/pressure", b"1", "feature"),
        ("plant/r1/frame", b'{"temp": 1, "nope": 2}', "feature"),
        ("plant/r1/sensors/temp", b"{not json", "json"),
        ("plant/r1/sensors/temp", b"\xff\xfe", "json"),
        ("plant/r1/sensors/temp", b"[" * 100000, "oversize"),
        ("plant/r1/sensors/temp", b'"12"', "type"),
        ("plant/r1/sensors/temp", b"true", "type"),
        ("plant/r1/sensors/temp", b"[1, 2]", "type"),
        ("plant/r1/sensors/temp", b'{"ts": 1767225610}', "type"),
        ("plant/r1/sensors/temp", b'{"value": 1, "unit": "C"}', "type"),
        ("plant/r1/frame", b"[1]", "type"),
        ("plant/r1/sensors/temp", b"NaN", "nonfinite"),
        ("plant/r1/sensors/temp", b'{"value": -Infinity}', "nonfinite"),
        ("plant/r1/sensors/temp", b"1e400", "nonfinite"),
        ("plant/r1/sensors/temp", b"1e300", "range"),
        ("plant/r1/sensors/temp", b"-2000000", "range"),
        ("plant/r1/sensors/temp", b'{"ts": "yesterday", "value": 1}', "ts"),
        ("plant/r1/sensors/temp", b'{"ts": -5, "value": 1}', "ts"),
        ("plant/r1/sensors/temp", b'{"ts": 1e20, "value": 1}', "ts"),
        ("plant/r1/sensors/temp", b'{"ts": NaN, "value": 1}', "ts"),
    ],
)
def test_refusals_name_their_reason(topic, payload, reason):
    with pytest.raises(Rejected) as e:
        parser(max_payload=1024 if reason != "oversize" or len(payload) < 50000 else 65536).parse(topic, payload, 1767225600.0)
    assert e.value.reason == reason, str(e.value)


def test_deeply_nested_json_is_refused_not_a_crash():
    with pytest.raises(Rejected) as e:
        parser(max_payload=10**6).parse("plant/r1/sensors/temp", b"[" * 100000, 0.0)
    assert e.value.reason == "json"


def test_subscription_filters():
    assert subscription("plant/{stream}/sensors/{feature}") == "plant/+/sensors/+"
    assert subscription("site/a/{stream}/frame") == "site/a/+/frame"


def test_a_known_topic_reads_the_same_and_the_memory_of_topics_is_bounded(monkeypatch):
    from streamrnn.intake import payload

    monkeypatch.setattr(payload, "_KNOWN", 3)
    p = parser()
    first = [p.parse(f"plant/r{i}/sensors/flow", b'{"ts": 1767225610, "value": 3.5}', 0.0)[0] for i in range(5)]
    again = [p.parse(f"plant/r{i}/sensors/flow", b'{"ts": 1767225620, "value": 4.5}', 0.0)[0] for i in range(5)]
    assert [(r.stream, r.feature) for r in again] == [(r.stream, r.feature) for r in first] == [(f"r{i}", 1) for i in range(5)]
    assert [r.value for r in again] == [4.5] * 5 and len(p._known) <= 3
    with pytest.raises(Rejected) as e:  # a remembered topic's payload is still checked
        p.parse("plant/r4/sensors/flow", b"NaN", 0.0)
    assert e.value.reason == "nonfinite"


def test_a_ts_ahead_of_the_arrival_clock_by_more_than_max_future_is_refused_as_future():
    p = Parser(CH, "plant/{stream}/sensors/{feature}", "plant/{stream}/frame", 1024, 1e6, max_future=300.0)
    now = 1767225600.0
    (r,) = p.parse("plant/r1/sensors/temp", json.dumps({"ts": now + 299.0, "value": 1}).encode(), now)
    assert r.ts == now + 299.0  # a clock a little ahead is a clock
    for payload in ({"ts": 32503680000.0, "value": 1}, {"ts": now + 301.0, "value": 1}):  # year 3000; just past the bound
        with pytest.raises(Rejected) as e:
            p.parse("plant/r1/sensors/temp", json.dumps(payload).encode(), now)
        assert e.value.reason == "future"
    with pytest.raises(Rejected) as e:
        p.parse("plant/r1/frame", json.dumps({"ts": now + 3600, "temp": 1}).encode(), now)
    assert e.value.reason == "future"


def test_stream_ids_outside_the_allow_list_are_refused_as_stream():
    import re

    p = Parser(CH, "plant/{stream}/sensors/{feature}", "plant/{stream}/frame", 1024, 1e6, allow=re.compile(r"reactor-\d+\Z"))
    assert p.parse("plant/reactor-7/sensors/temp", b"1", 1.0)[0].stream == "reactor-7"
    for topic in ("plant/phantom-1/sensors/temp", "plant/reactor-x/frame"):
        with pytest.raises(Rejected) as e:
            p.parse(topic, b'{"temp": 1}' if topic.endswith("frame") else b"1", 1.0)
        assert e.value.reason == "stream" and "streams.allow" in str(e.value)
