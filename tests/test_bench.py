"""Seconds-long runs of the durability benchmarks: they measure what they say (the figures
themselves come from the full commands, see docs/performance.md)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.broker


def bench(*args: str) -> tuple[int, dict]:
    r = subprocess.run([sys.executable, "-m", "streamrnn", "bench", *args, "--json"], capture_output=True, text=True, timeout=300)
    assert r.returncode in (0, 1), r.stderr[-3000:]
    return r.returncode, json.loads(r.stdout)


def test_bench_journal_smoke():
    _, r = bench("journal", "--streams", "2", "--seconds", "3", "--rounds", "1")
    assert r["off"]["messages_per_s"] > 0 and r["on"]["messages_per_s"] > 0
    assert r["on"]["records_per_sync"] >= 1 and r["on"]["journal_sync_ms"] > 0  # the journal was written and synced
    assert r["off"]["journal_sync_ms"] != r["off"]["journal_sync_ms"]  # NaN: no journal in the 'off' daemon
    assert r["cpu_ratio"] > 0 and r["latency_ratio"] > 0


def test_bench_soak_smoke():
    code, r = bench("soak", "--streams", "2", "--minutes", "0.3", "--warmup", "0.1")
    assert r["frames"] > 0 and r["checkpoints"] >= 0 and len(r["samples"]) >= 2
    assert r["rss_min_mb"] > 50 and r["spread"] >= 0 and code == (0 if r["flat"] else 1)


def test_bench_all_quick_measures_every_part_against_its_reference():
    code, r = bench("--quick")
    assert code == 0
    assert r["machine"]["cpus"] >= 1 and r["machine"]["torch"]
    ing = r["ingest"]
    assert ing["bare_per_s"] > 0 and ing["daemon_per_s"] > 0 and ing["dropped"] == 0
    assert abs(ing["ratio"] - ing["daemon_per_s"] / ing["bare_per_s"]) < 1e-9
    lat = {(x["streams"], x["phase"]): x for x in r["latency"]["rows"]}
    assert set(lat) == {(1, "idle"), (1, "retrain"), (10, "idle"), (10, "retrain")}
    for x in lat.values():
        assert (
            x["ticks"] >= 8
            and abs(x["backlog_s"]) < 60
            and x["forecasts"] > 0
            and 0 < x["close_p50_ms"] <= x["close_p99_ms"]
            and 0 < x["rtt_p50_ms"] <= x["rtt_p99_ms"] <= x["rtt_max_ms"]
        )
    for x in r["step"]["rows"]:  # a 64-frame window costs more than one step; the engine does more than its model step
        assert x["window_us"] > x["bare_us"] > 0 and x["engine_us"] > x["serving_us"] > 0
    assert [x["streams"] for x in r["streams"]["rows"] if x["device"] == "cpu"] == [1, 10]
    assert all(x["engine_ms"] >= x["recurrent_ms"] > 0 for x in r["streams"]["rows"])
    mem = r["memory"]["rows"][0]
    assert mem["bytes_per_stream"] > mem["ring"] * r["memory"]["ring_bytes_per_frame"] * 0.5  # the rings are in it


def test_the_load_at_a_steady_rate_sends_each_streams_sensors_together_and_spreads_the_streams_over_each_tick(mosquitto):
    from streamrnn.tools.loadgen import T0, publish
    from streamrnn.transport.mqtt import Subscriber

    streams, ticks, rate, channels = 4, 3, 5.0, ["a", "b", "c"]
    sub = Subscriber(mosquitto.url, "t-load", ["plant/+/sensors/+"])
    try:
        r = publish(mosquitto.url, "plant/{stream}/sensors/{feature}", channels, streams, ticks, rate, 10.0, T0, 7)
        got = [sub.messages.get(timeout=10).topic.split("/")[1] for _ in range(r["count"])]
    finally:
        sub.close()
    assert got == [f"r{s:05d}" for _ in range(ticks) for s in range(streams) for _ in channels]
    sent = [t for k in range(7, 7 + ticks) for t in r["started"][k]]
    assert sorted(r["started"]) == [7, 8, 9] and len(sent) == ticks * streams and sent == sorted(sent)
    # the last part is sent on its schedule or later; the first is at most a little late
    assert sent[-1] - sent[0] >= (ticks - 1 + (streams - 1) / streams) / rate - 0.05


def test_bench_scaleout_quick_measures_the_daemon_and_each_fleet_alike():
    code, r = bench("scaleout", "--quick")
    assert code == 0
    rows = {x["shards"]: x for x in r["rows"]}
    assert sorted(rows) == [0, 1, 2] and rows[0]["path"] == "MQTT daemon" and rows[0]["vs_daemon"] == 1.0
    for x in rows.values():
        assert x["messages_per_s"] > 0 and abs(x["vs_daemon"] - x["messages_per_s"] / rows[0]["messages_per_s"]) < 1e-9
        assert x["worker_us_per_msg"] > 0 and x["server_us_per_msg"] > 0  # each side's CPU was counted
        assert 0 < x["close_p50_ms"] <= x["close_p99_ms"] and 0 < x["rtt_p50_ms"] <= x["rtt_p99_ms"]
        assert abs(x["behind_s"]) < 60 and x["rss_mb"] > 50 and x["idle_cpu_pct"] >= 0
