"""The metric set: conventions, closed label sets, the capped per-stream series."""

from __future__ import annotations

import numpy as np
import torch
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from streamrnn.daemon import observe
from streamrnn.daemon.metrics import Metrics


def families(reg: CollectorRegistry) -> dict:
    return {f.name: f for f in text_string_to_metric_families(generate_latest(reg).decode())}


def test_names_follow_prometheus_conventions():
    reg = CollectorRegistry()
    Metrics(reg, ["a", "b"], 3)
    fams = families(reg)
    ours = {n: f for n, f in fams.items() if n.startswith("streamrnn_")}
    assert len(ours) >= 30 and "process_resident_memory_bytes" in fams and "python_info" in fams
    for name, fam in ours.items():
        if fam.type == "counter":
            assert all(s.name.endswith("_total") for s in fam.samples), name
        if fam.type == "histogram":
            assert name.endswith("_seconds"), name
        assert not name.endswith("_created")
    # every reason and outcome is exported from the start: rate() and the dashboard see zeros, not gaps
    dropped = {s.labels["reason"] for s in fams["streamrnn_messages_dropped"].samples}
    assert {"json", "late", "capacity", "queue_full", "internal"} <= dropped
    assert {s.labels["outcome"] for s in fams["streamrnn_retrains"].samples} == {"promoted", "rejected", "failed"}
    skill = fams["streamrnn_forecast_skill_ratio"].samples
    assert {(s.labels["target"], s.labels["horizon"]) for s in skill} == {(t, str(k)) for t in "ab" for k in (1, 2, 3)}


def test_quality_lands_on_its_target_and_step():
    reg = CollectorRegistry()
    m = Metrics(reg, ["a", "b"], 3)
    scores = {k: np.full((3, 2), np.nan) for k in ("mse", "persistence_mse", "skill", "coverage")}
    scores["skill"][1, 0] = 0.25
    scores["coverage"][2, 1] = 0.875
    m.set_quality(scores)
    fams = families(reg)
    skill = {(s.labels["target"], s.labels["horizon"]): s.value for s in fams["streamrnn_forecast_skill_ratio"].samples}
    cov = {(s.labels["target"], s.labels["horizon"]): s.value for s in fams["streamrnn_interval_coverage_ratio"].samples}
    assert skill[("a", "2")] == 0.25 and np.isnan(skill[("b", "2")]) and cov[("b", "3")] == 0.875


def test_per_stream_series_are_off_by_default_and_capped():
    reg = CollectorRegistry()
    Metrics(reg).set_streams({"s1": 1.0})
    assert "streamrnn_stream_last_frame_timestamp_seconds" not in families(reg)

    reg = CollectorRegistry()
    m = Metrics(reg, stream_cap=2)
    m.set_streams({"s1": 1.0, "s2": 2.0, "s3": 3.0})
    shown = lambda: {s.labels["stream"]: s.value for s in families(reg)["streamrnn_stream_last_frame_timestamp_seconds"].samples}
    assert shown() == {"s1": 1.0, "s2": 2.0}
    m.set_streams({"s2": 4.0, "s3": 5.0})  # s1 left: its series goes, s3 takes the free place
    assert shown() == {"s2": 4.0, "s3": 5.0}


def test_streams_that_sent_nothing_for_ten_periods_are_counted_quiet():
    """Issue 40: no alert could say that some reactors fell silent while others send."""
    import time

    from streamrnn import config
    from streamrnn.engine.engine import Engine
    from streamrnn.engine.frame import Frame

    settings = config.load(None, trainer={"enabled": False})
    engine = Engine(settings)
    period, now = settings.features.period, time.time()
    values = np.ones(len(engine.channels))
    engine.step([Frame("quiet", 1000.0, values)], now=now - 11 * period)  # heard last eleven periods ago
    engine.step([Frame("alive", 1000.0, values)], now=now)
    reg = CollectorRegistry()
    m = Metrics(reg, engine.spec.targets, engine.spec.horizon)
    observe.engines(m, [engine], settings.ring.size, quiet_after=10 * period)
    assert families(reg)["streamrnn_streams_quiet"].samples[0].value == 1
    observe.engines(m, [engine], settings.ring.size, quiet_after=12 * period)
    assert families(reg)["streamrnn_streams_quiet"].samples[0].value == 0


def test_the_engines_of_a_shard_report_as_one_engine_their_totals_pooled():
    """Issue 40: one path for a daemon's engine and a shard's partitions; the live scores are of
    the errors summed over the partitions, as one engine holding every stream would sum them."""
    from conftest import sine_frames, small_settings

    from streamrnn.engine.engine import Engine
    from streamrnn.engine.frame import Frame
    from streamrnn.engine.scores import scored

    settings = small_settings()
    engines = [Engine(settings), Engine(settings)]
    for i, (s, ts, v) in enumerate(sine_frames(300, streams=2)):
        engines[i % 2].step([Frame(s, ts, v)])
    reg = CollectorRegistry()
    m = Metrics(reg, engines[0].spec.targets, engines[0].spec.horizon)
    skill = observe.engines(m, engines, settings.ring.size)
    fams = families(reg)
    assert fams["streamrnn_streams_active"].samples[0].value == 2
    assert fams["streamrnn_ring_frames"].samples[0].value == sum(n for e in engines for n in e.ring_frames()) == 600
    pooled = scored({k: engines[0].evaluator.live[k] + engines[1].evaluator.live[k] for k in engines[0].evaluator.live})
    target = engines[0].spec.targets[0]
    got = {s.labels["horizon"]: s.value for s in fams["streamrnn_forecast_mse"].samples if s.labels["target"] == target}
    np.testing.assert_allclose([got[str(k + 1)] for k in range(engines[0].spec.horizon)], pooled["mse"][:, 0])
    assert skill[target] is not None and np.isclose(skill[target], np.nanmean(pooled["skill"][:, 0]), atol=1e-4)


def test_a_fleet_and_one_daemon_on_the_same_frames_report_the_same_gauges():
    """Issue 40: the gauges of a shard whose partitions hold the streams agree with those of one
    daemon's engine holding them all, on the same frames: streams, rings and suspect sensors
    exactly; the live scores within what each partition's own gate and bands move them (each
    partition draws those from its own streams' errors)."""
    from conftest import sine_frames, small_settings

    from streamrnn.engine.engine import Engine
    from streamrnn.engine.frame import Frame
    from streamrnn.engine.model import ModelSpec, build

    settings = small_settings()
    model = build(ModelSpec.from_settings(settings), seed=1)
    with torch.no_grad():  # forecasts that depend on its states (an untrained head is persistence)
        torch.manual_seed(1)
        model.fc2.weight.normal_(0.0, 0.3)
    daemon, fleet = Engine(settings, model), [Engine(settings, model), Engine(settings, model)]
    for s, ts, v in sine_frames(400, streams=4):
        v = v.copy()
        if s == "s1" and ts / settings.features.period >= 300:
            v[0] = 1e3  # a broken sensor, suspect in both to the end
        daemon.step([Frame(s, ts, v)])
        fleet[int(s[1:]) % 2].step([Frame(s, ts, v)])
    reports = []
    for engines in ([daemon], fleet):
        reg = CollectorRegistry()
        m = Metrics(reg, daemon.spec.targets, daemon.spec.horizon)
        reports.append((observe.engines(m, engines, settings.ring.size), families(reg)))
    (one, d), (pooled, f) = reports
    for name in ("streamrnn_streams_active", "streamrnn_ring_frames", "streamrnn_ring_fill_ratio", "streamrnn_streams_quiet"):
        assert d[name].samples[0].value == f[name].samples[0].value, name
    suspect = lambda fams: {s.labels["feature"]: s.value for s in fams["streamrnn_channels_suspect"].samples}
    assert suspect(d) == suspect(f) and suspect(d)["a"] == 1
    # the live scores fade per scoring pass, so a partition's weigh its own streams' passes: close,
    # not equal; the skill and coverage further by each partition's own gate and bands
    for name, close in (
        ("streamrnn_persistence_mse", lambda a, b: abs(a - b) <= 0.02 * abs(a)),
        ("streamrnn_forecast_skill_ratio", lambda a, b: abs(a - b) <= 0.05),
        ("streamrnn_interval_coverage_ratio", lambda a, b: abs(a - b) <= 0.05),
    ):
        a = {(s.labels["target"], s.labels["horizon"]): s.value for s in d[name].samples}
        b = {(s.labels["target"], s.labels["horizon"]): s.value for s in f[name].samples}
        assert a.keys() == b.keys() and all(np.isfinite(v) and close(v, b[k]) for k, v in a.items()), (name, a, b)
    assert one.keys() == pooled.keys() and all(abs(one[t] - pooled[t]) <= 0.02 for t in one), (one, pooled)
    assert any(abs(v) > 0.01 for v in one.values())  # skill of a forecast of its own, not persistence's 0
