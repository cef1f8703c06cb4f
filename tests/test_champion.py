"""The fleet's champion on nats://: one shard retrains (the trainer's lease), every shard serves
what it stores; when the trainer dies another shard takes its lease and trains on. Real
nats-server and shard processes on loopback."""

import asyncio
import time

import numpy as np
import pytest
from conftest import DaemonProcess, write_config
from test_daemon import a_model, drain, publish_rows, sim_rows

from streamrnn import config
from streamrnn.daemon import checkpoint
from streamrnn.engine import model
from streamrnn.engine.engine import Engine
from streamrnn.engine.frame import Frame
from streamrnn.engine.model import build
from streamrnn.fleet import fleetstore
from streamrnn.fleet.champion import Champion, merged, serve, unfit
from streamrnn.tools.natsd import NatsServer
from streamrnn.transport import jetstream
from streamrnn.transport.mqtt import Publisher, Subscriber

LEASE = 2.0


def retrains(d: DaemonProcess) -> float:
    return sum(v for k, v in d.samples().items() if k.startswith("streamrnn_retrains_total"))


def until(what, timeout: float, logs) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        assert time.monotonic() < deadline, "\n".join(x.log()[-2000:] for x in logs)
        time.sleep(0.2)


def test_one_shard_trains_every_shard_serves_its_champion_and_another_trains_when_it_dies(tmp_path) -> None:
    server = NatsServer(tmp_path / "nats").start().ready()
    rows = sim_rows(streams=6, steps=400)
    model_path = tmp_path / "model.pt"
    a_model(model_path, rows[: 6 * 100])
    cfg = write_config(
        tmp_path / "d.toml",
        # at the daemon's priority, one thread: on a box busy with other work, a trainer that takes
        # only idle CPU time (the default) waits for minutes, past its deadline
        trainer={
            "min_frames": 20,
            "retrain_every": 100,
            "interval": 1.0,
            "window": 8,
            "segment_windows": 1,
            "burn_in": 0,
            "max_epochs": 4,
            "threads": 1,
            "priority": "normal",
        },
        checkpoint={"every": 1.0},
        shards={"partitions": 8, "lease": LEASE},
    )
    shards = [DaemonProcess(tmp_path, server.url, config=cfg, model=model_path, instance=f"s{i}").launch() for i in range(2)]
    sub = Subscriber(server.mqtt_url, "t-forecasts", ["plant/+/forecast"])
    pub = Publisher(server.mqtt_url, "t-sensors")
    try:
        for s in shards:
            s.ready(60)
        publish_rows(pub, rows[: 6 * 150], rate=50.0)
        version = lambda s: s.sample("streamrnn_model_version")
        # by events: both serving a new champion (minutes on a busy box: a retrain that failed or
        # was rejected is followed by the next)
        until(lambda: min(version(s) for s in shards) >= 1 and len({version(s) for s in shards}) == 1, 600, shards)
        trained = [retrains(s) for s in shards]
        assert sorted(x > 0 for x in trained) == [False, True], trained  # one trainer for the fleet
        trainer, other = shards if trained[0] else shards[::-1]
        served = version(other)
        drain(sub, quiet=2.0)
        publish_rows(pub, rows[6 * 150 : 6 * 170], rate=50.0)
        got = drain(sub, quiet=3.0)
        # what both shards forecast after it: by a champion no older than the one both served
        assert len({m["stream"] for m in got}) == 6 and all(m["model"]["version"] >= served for m in got), got[:3]

        trainer.kill()  # kill -9: its lease lapses, the other takes it and trains on
        publish_rows(pub, rows[6 * 170 :], rate=50.0)
        until(lambda: retrains(other) > 0 and version(other) > served, 300, shards)
        assert "trainer's lease taken" in other.log()
    finally:
        pub.close()
        sub.close()
        codes = [s.terminate(30) for s in shards if s.proc is not None and s.proc.poll() is None]
        server.stop()
    assert codes == [0], other.log()[-3000:]
    for s in shards:
        assert "Traceback" not in s.log() and "champion refused" not in s.log(), s.log()[-3000:]


def store(url: str, data: bytes, description: str) -> None:
    """Put an object as the fleet's champion, as a broken or foreign writer might."""

    async def go() -> None:
        import nats
        from nats.js.api import ObjectMeta

        nc = await nats.connect(url)
        try:
            objects = await nc.jetstream().object_store(jetstream.STATE)
            await objects.put(fleetstore.NAME, data, meta=ObjectMeta(name=fleetstore.NAME, description=description))
        finally:
            await nc.close()

    asyncio.run(go())


def trainer_lease(url: str) -> tuple[bytes, int] | None:
    """The KV entry ``owner.trainer``: (value, revision), None where none is."""

    async def go():
        import nats

        nc = await nats.connect(url)
        try:
            kv = await nc.jetstream().key_value(jetstream.BUCKET)
            entry = await kv.get(f"owner.{fleetstore.TRAINER}")
            return entry.value, entry.revision
        except nats.js.errors.KeyNotFoundError:
            return None
        finally:
            await nc.close()

    return asyncio.run(go())


def test_a_bad_champion_costs_one_refusal_never_the_trainers_lease_nor_a_good_champion_after_it(tmp_path) -> None:
    """Issue 39: a champion whose description is no number, then one labelled v1000105 that is no
    checkpoint, then a good v106: the trainer keeps renewing its lease through both bad ones, each is
    refused once, and v106 is served. The shard's partition checkpoints count as the daemon's do."""
    server = NatsServer(tmp_path / "nats").start().ready()
    rows = sim_rows(streams=4, steps=120)
    model_path = tmp_path / "model.pt"
    a_model(model_path, rows)
    cfg = write_config(
        tmp_path / "d.toml",
        trainer={"min_frames": 100000},  # trains (it takes the trainer's lease) but never retrains here
        checkpoint={"every": 1.0},
        shards={"partitions": 4, "lease": LEASE},
    )
    shard = DaemonProcess(tmp_path, server.url, config=cfg, model=model_path, instance="s0").launch()
    pub = Publisher(server.mqtt_url, "t-sensors")
    try:
        shard.ready(60)
        publish_rows(pub, rows, rate=100.0)
        until(lambda: shard.sample("streamrnn_checkpoints_total", outcome="written") > 0, 30, [shard])
        assert shard.sample("streamrnn_checkpoint_size_bytes") > 0 and shard.sample("streamrnn_checkpoint_duration_seconds_count") > 0
        assert shard.sample("streamrnn_checkpoint_last_success_timestamp_seconds") > 0
        until(lambda: trainer_lease(server.url) is not None, 30, [shard])
        value, _ = trainer_lease(server.url)
        assert value.startswith(b"s0")

        refused = lambda: shard.log().count("stored champion unusable")
        store(server.url, b"garbage", "not a version")
        until(lambda: refused() == 1, 10, [shard])
        store(server.url, b"garbage", "1000105")
        until(lambda: refused() == 2, 10, [shard])
        for _ in range(3):  # three leases on: still ours, renewed each round
            time.sleep(LEASE)
            held = trainer_lease(server.url)
            assert held is not None and held[0] == value, shard.log()[-3000:]
        assert refused() == 2 and shard.sample("streamrnn_champions_refused_total") == 2  # each once, not each round

        weights = {k: v.numpy() for k, v in model.load(model_path)[0].state_dict().items()}
        good = Champion(106, weights).state(config.load(None))
        store(server.url, checkpoint.encode(good), "106")
        until(lambda: shard.sample("streamrnn_model_version") == 106, 30, [shard])
    finally:
        pub.close()
        code = shard.terminate(30)
        server.stop()
    assert code == 0, shard.log()[-3000:]
    assert "Traceback" not in shard.log() and "lease round failed" not in shard.log(), shard.log()[-3000:]


def frames(stream: str, n: int, channels: int, t0: float = 1000.0) -> list[Frame]:
    rng = np.random.default_rng(len(stream))
    return [Frame(stream, t0 + i, rng.normal(size=channels).astype(np.float32)) for i in range(n)]


def test_an_engine_serves_a_champion_warmed_over_its_rings_and_refuses_one_that_does_not_fit() -> None:
    s = config.load(None)
    engine = Engine(s)
    for i in range(40):
        engine.step([f for name in ("a", "b") for f in frames(name, 40, len(engine.channels))[i : i + 1]])
    other = build(engine.spec, seed=99)
    weights = {k: v.detach().numpy() for k, v in other.state_dict().items()}
    champ = Champion(3, weights)
    assert unfit(champ, engine.model) is None
    before = engine.bank.hidden.clone()
    serve(engine, champ)
    assert engine.version == 3 and all(np.array_equal(v.numpy(), weights[k]) for k, v in engine.model.state_dict().items())
    assert not np.allclose(engine.bank.hidden.numpy(), before.numpy())  # warmed by the new weights over the rings
    assert np.isfinite(engine.bank.hidden.numpy()).all()
    serve(engine, Champion(2, {k: v * 0 for k, v in weights.items()}))  # older: not served
    assert engine.version == 3
    snaps = [engine.snapshot(), engine.snapshot()]
    both = merged(snaps)
    assert both.streams == snaps[0].streams * 2 and both.frames == 2 * snaps[0].frames and len(both.held) == 4
    bad = dict(weights, **{next(iter(weights)): np.full_like(next(iter(weights.values())), np.nan)})
    assert "not finite" in unfit(Champion(4, bad), engine.model)
    assert "do not fit" in unfit(Champion(4, {k: v[..., :1] for k, v in weights.items()}), engine.model)


@pytest.mark.parametrize("linear", [None, {"x": 1}])
def test_champion_state_round_trips_and_another_models_is_refused(linear) -> None:
    s = config.load(None)
    weights = {k: v.detach().numpy() for k, v in build(Engine(s).spec, seed=1).state_dict().items()}
    back = Champion.from_state(Champion(5, weights, linear).state(s), s)
    assert back.version == 5 and back.linear == linear and set(back.weights) == set(weights)
    other = s.model_copy(update={"model": s.model.model_copy(update={"hidden_size": s.model.hidden_size * 2})})
    with pytest.raises(ValueError):
        Champion.from_state(Champion(5, weights).state(other), s)
