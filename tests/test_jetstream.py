"""The NATS JetStream transport against a real nats-server (JetStream and its MQTT listener, on
loopback ports): sensors published over MQTT, forecasts read over MQTT, the daemon on nats://."""

import random
import re
import threading
import time

import numpy as np
import pytest
from conftest import DaemonProcess, write_config
from test_daemon import P, _num, a_model, collect, drain, publish_rows, sim_rows
from test_durability import reference

from streamrnn import config
from streamrnn.tools.natsd import NatsServer
from streamrnn.transport import jetstream
from streamrnn.transport.jetstream import subject, topic
from streamrnn.transport.mqtt import Publisher, Subscriber


@pytest.fixture
def nats_server(tmp_path):
    server = NatsServer(tmp_path / "nats").start().ready()
    yield server
    server.stop()


@pytest.mark.parametrize(
    "mqtt, nats",
    [("plant/r-01/sensors/level", "plant.r-01.sensors.level"), ("plant/+/sensors/+", "plant.*.sensors.*"), ("a/b.c/#", "a.b//c.>")],
)
def test_topics_map_to_subjects_as_the_nats_mqtt_listener_maps_them(mqtt, nats) -> None:
    assert subject(mqtt) == nats
    if "+" not in mqtt and "#" not in mqtt:
        assert topic(nats) == mqtt


def test_a_sensor_stream_made_before_the_clock_ticks_is_given_them_and_one_of_other_partitions_refused(nats_server) -> None:
    """A fleet upgraded in place goes on with the stream its older shards made (the clock ticks'
    subject added, the readings kept); a stream made for another partition count is refused."""
    import asyncio

    import nats
    from nats.js.api import StreamConfig, SubjectTransform

    cfg = config.load(None).shards
    templates = [config.load(None).mqtt.sensor_topic]
    sensors, source, destination = jetstream.partitioned(templates, cfg.partitions)

    async def go() -> tuple[list[str], int, str]:
        nc = await nats.connect(nats_server.url)
        try:
            js = nc.jetstream()
            transform = SubjectTransform(src=source, dest=destination)
            await js.add_stream(StreamConfig(name=jetstream.STREAM, subjects=sensors, subject_transform=transform))
            await js.publish("plant.r1.sensors.level", b"1")
            await jetstream.prepare(nc, templates, "plant/{stream}/forecast", cfg)
            await js.publish(jetstream.clock(3), b"")
            info = await js.stream_info(jetstream.STREAM)
            refused = ""
            try:
                await jetstream.prepare(nc, templates, "plant/{stream}/forecast", cfg.model_copy(update={"partitions": 5}))
            except config.ConfigError as e:
                refused = str(e)
            return info.config.subjects, info.state.messages, refused
        finally:
            await nc.close()

    subjects, messages, refused = asyncio.run(go())
    assert sorted(subjects) == sorted([*sensors, jetstream.clock("*")]) and messages == 2
    assert "was made for" in refused


def test_sensors_over_mqtt_through_jetstream_give_each_stream_and_tick_one_forecast_as_replay(nats_server, tmp_path) -> None:
    """The daemon on nats:// as on mqtt://: one forecast per (stream, tick), read over MQTT on the
    forecast topic, its values and nowcasts those of an engine stepping each stream's frames alone."""
    rows = sim_rows(streams=2, steps=40)
    model_path = tmp_path / "model.pt"
    model = a_model(model_path, rows)
    cfg = write_config(tmp_path / "d.toml", trainer={"enabled": False}, frames={"lateness": 2 * P})
    d = DaemonProcess(tmp_path, nats_server.url, config=cfg, model=model_path, instance="js").launch()
    try:
        d.ready(60)
        sub = Subscriber(nats_server.mqtt_url, "t-forecasts", ["plant/+/forecast"])
        pub = Publisher(nats_server.mqtt_url, "t-sensors")
        publish_rows(pub, rows, random.Random(1), spill=0.3)
        pub.close()
        got = collect(sub, len(rows), timeout=90)
        time.sleep(1.0)
        assert sub.messages.empty(), "more forecasts than frames"
        sub.close()
        assert d.sample("streamrnn_messages_received_total") == sum(int(np.isfinite(v).sum()) for _, _, v in rows)
    finally:
        code = d.terminate(30)
    assert code == 0 and "Traceback" not in d.log() and "level=error" not in d.log(), d.log()[-3000:]
    assert sorted((m["stream"], m["ts"]) for m in got) == sorted((s, ts) for ts, s, _ in rows), d.log()[-3000:]
    by_key = {(m["stream"], m["ts"]): m for m in got}
    for key, want in reference(config.load(cfg), model, rows).items():  # each stream through an engine of its own
        for t, body in want["targets"].items():
            have = by_key[key]["targets"][t]
            np.testing.assert_allclose(_num(have["values"] + [have["now"]]), _num(body["values"] + [body["now"]]), rtol=2e-6)


def test_a_shard_reports_skill_and_its_gauges_as_a_daemon_does(nats_server, tmp_path) -> None:
    """Issue 40: a shard's messages had "skill": null for every target, its skill gauges NaN and its
    ring gauges 0, as only the daemon fed them from its engine. Now one path feeds both."""
    rows = sim_rows(streams=2, steps=120)
    model_path = tmp_path / "model.pt"
    a_model(model_path, rows)
    cfg = write_config(tmp_path / "d.toml", trainer={"enabled": False})
    d = DaemonProcess(tmp_path, nats_server.url, config=cfg, model=model_path, instance="js").launch()
    try:
        d.ready(60)
        sub = Subscriber(nats_server.mqtt_url, "t-forecasts", ["plant/+/forecast"])
        pub = Publisher(nats_server.mqtt_url, "t-sensors")
        publish_rows(pub, rows, rate=30.0)  # 4 s: the gauges are fed once a second meanwhile
        pub.close()
        got = collect(sub, len(rows), timeout=90)
        sub.close()
        time.sleep(1.5)
        skill = d.sample("streamrnn_forecast_skill_ratio", target="reactor_temp", horizon="1")
        assert np.isfinite(skill), "the shard's skill gauge is not fed"
        assert d.sample("streamrnn_ring_frames") == len(rows) and d.sample("streamrnn_streams_active") == 2
        assert 0 < d.sample("streamrnn_ring_fill_ratio") <= 1
    finally:
        code = d.terminate(30)
    assert code == 0, d.log()[-3000:]
    late = [m for m in got if m["ts"] >= max(m["ts"] for m in got) - 20 * P]  # scored by then
    assert any(t["skill"] is not None for m in late for t in m["targets"].values()), late[-1]


def test_kill_9_loses_no_frame_the_restart_takes_what_jetstream_kept(nats_server, tmp_path) -> None:
    """The daemon killed twice mid-stream and started again: it takes its partitions back from
    their checkpoints, JetStream delivers what came after them, and every (stream, tick) gets its
    forecast, as a daemon that never stopped made it."""
    rng = random.Random(3)
    rows = sim_rows(streams=2, steps=400)
    model_path = tmp_path / "model.pt"
    model = a_model(model_path, rows)
    cfg = write_config(tmp_path / "d.toml", trainer={"enabled": False}, checkpoint={"every": 1.0})
    sub = Subscriber(nats_server.mqtt_url, "t-forecasts", ["plant/+/forecast"])
    d = DaemonProcess(tmp_path, nats_server.url, config=cfg, model=model_path, instance="js").launch().ready(60)
    pub = Publisher(nats_server.mqtt_url, "t-sensors")
    killed = threading.Event()  # the stream's last tick waits for the kills
    sender = threading.Thread(target=publish_rows, args=(pub, rows), kwargs={"rate": 20.0, "last": killed}, daemon=True)
    sender.start()
    try:
        for _ in range(2):
            time.sleep(rng.uniform(2.0, 5.0))
            d.kill()
            d.launch().ready(60)
        killed.set()
        sender.join()
        pub.close(60)
        got = drain(sub, quiet=12.0)
        assert d.terminate(30) == 0
        d.launch().ready(60)  # nothing pending now: the consumer goes on as it is
    finally:
        sub.close()
        d.kill()
    log = d.log()
    assert "consumer not bound" not in log and "publish failed" not in log, log[-3000:]  # the replayed forecasts too
    want = reference(config.load(cfg), model, rows)
    have = {(m["stream"], m["ts"]) for m in got}
    missing = set(want) - have
    assert not missing, f"{len(missing)} frames without a forecast, e.g. {sorted(missing)[:5]}\n{d.log()[-3000:]}"
    for m in got:  # replayed ones too, as the daemon that never stopped made them
        for t, body in want[(m["stream"], m["ts"])]["targets"].items():
            h = m["targets"][t]
            np.testing.assert_allclose(_num(h["values"] + [h["now"]]), _num(body["values"] + [body["now"]]), rtol=1e-5, atol=1e-5)
    # each restart took the partitions of the two streams from their checkpoints
    assert len(re.findall(r'msg="partition claimed" partition=\d+ after=[1-9]', log)) >= 3, log[-3000:]


def test_the_server_stopped_and_started_again_loses_no_frame(nats_server, tmp_path) -> None:
    """nats-server goes down twice mid-stream (the daemon, the sensors and the readers reconnect):
    every (stream, tick) is stepped and its forecast published, once.
    Forecasts published while a reader's server is down are core NATS messages and are not kept
    for it (a cluster keeps readers connected to the other servers): a few ticks around each stop."""
    rows = sim_rows(streams=2, steps=300)
    third = len(rows) // 3
    cfg = write_config(tmp_path / "d.toml", trainer={"enabled": False}, mqtt={"reconnect_min": 0.2, "reconnect_max": 1.0})
    d = DaemonProcess(tmp_path, nats_server.url, config=cfg, instance="js").launch().ready(60)
    sub = Subscriber(nats_server.mqtt_url, "t-forecasts-persistent", ["plant/+/forecast"], clean=False)
    pub = Publisher(nats_server.mqtt_url, "t-sensors")
    try:
        sent = 0
        for part, down in ((rows[:third], 1.0), (rows[third : 2 * third], 0.5), (rows[2 * third :], None)):
            publish_rows(pub, part, rate=100)
            pub.flush()
            sent += len(part)
            if down is not None:
                # by events: the server goes down once the daemon has stepped what came (but each
                # stream's last tick, still open), not while a busy box still works through it
                until = time.monotonic() + 120
                while d.sample("streamrnn_frames_closed_total") < sent - 2 and time.monotonic() < until:
                    time.sleep(0.2)
                nats_server.stop()
                time.sleep(down)
                nats_server.start().ready()
                pub.wait_connected()
                sub.wait_connected()  # by events: what is forecast from here on reaches the reader
        pub.close(60)
        got = drain(sub, quiet=12.0)
        # the last ticks close once the partitions are quiet (frames.idle_close + 5 s without a
        # message, JetStream saying nothing waits): on a busy machine, later than the drain's quiet
        deadline = time.monotonic() + 30
        while d.sample("streamrnn_frames_closed_total") < len(rows) and time.monotonic() < deadline:
            time.sleep(0.5)
        got += drain(sub, quiet=2.0)
        reconnects = d.sample("streamrnn_mqtt_reconnects_total")
        frames, published = d.sample("streamrnn_frames_closed_total"), d.sample("streamrnn_forecasts_published_total")
    finally:
        sub.close()
        d.terminate(30)
    assert frames == published == len(rows), d.log()[-3000:]  # every frame stepped and forecast, none twice
    missing = {(s, ts) for ts, s, _ in rows} - {(m["stream"], m["ts"]) for m in got}
    # only around the two stops: the ticks closed while the reader was away, a few of each stream
    assert len(missing) <= 2 * 2 * 2, f"{len(missing)} forecasts not received, e.g. {sorted(missing)[:5]}"
    assert reconnects >= 2


def test_a_shard_refuses_a_partition_checkpoint_whose_state_is_not_sound_and_replays(nats_server, tmp_path) -> None:
    """Issue 39: a partition checkpoint with a good checksum and NaN hidden states was served: every
    forecast of its streams null until a newer champion came. A shard refuses it at the claim and
    replays what JetStream kept."""
    import asyncio

    from streamrnn.daemon import checkpoint
    from streamrnn.transport import jetstream

    rows = sim_rows(streams=2, steps=80)
    model_path = tmp_path / "model.pt"
    a_model(model_path, rows)
    cfg = write_config(tmp_path / "d.toml", trainer={"enabled": False}, checkpoint={"every": 1.0})
    first = DaemonProcess(tmp_path, nats_server.url, config=cfg, model=model_path, instance="js").launch()
    sub = Subscriber(nats_server.mqtt_url, "t-forecasts", ["plant/+/forecast"])
    pub = Publisher(nats_server.mqtt_url, "t-sensors")
    try:
        first.ready(60)
        publish_rows(pub, rows[:100], rate=50.0)
        collect(sub, 100, timeout=60)
        assert first.terminate(30) == 0  # its partitions' last checkpoints stored

        async def poison() -> int:
            import nats

            nc = await nats.connect(nats_server.url)
            try:
                store = await nc.jetstream().object_store(jetstream.STATE)
                poisoned = 0
                for info in await store.list():
                    if info.name.startswith("partition-"):
                        state = checkpoint.decode((await store.get(info.name)).data)
                        if state["engine"]["bank"]["names"]:
                            state["engine"]["bank"]["hidden"][...] = np.nan
                            await store.put(info.name, checkpoint.encode(state))  # a good checksum over a bad state
                            poisoned += 1
                return poisoned
            finally:
                await nc.close()

        assert asyncio.run(poison()) >= 1
        d = DaemonProcess(tmp_path, nats_server.url, config=cfg, model=model_path, instance="js").launch()
        d.ready(60)
        publish_rows(pub, rows[100:], rate=50.0)
        got = [m for m in drain(sub, quiet=4.0) if m["ts"] > max(ts for ts, _, _ in rows[:100])]
        assert got and d.sample("streamrnn_checkpoints_skipped_total") >= 1
        assert "partition checkpoint unusable" in d.log() and "bank.hidden is not finite" in d.log()
        values = [_num(t["values"]) for m in got for t in m["targets"].values()]
        assert np.mean([np.isfinite(v).all() for v in values]) > 0.9  # served from NaN states, every one was null
        assert d.terminate(30) == 0
    finally:
        pub.close()
        sub.close()
