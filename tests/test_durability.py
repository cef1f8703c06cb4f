"""Crash safety end to end: real daemons killed with SIGKILL, a real mosquitto, real files."""

from __future__ import annotations

import copy
import random
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from conftest import DaemonProcess, write_config
from test_daemon import P, a_model, drain, publish_rows, sim_rows

from streamrnn import config
from streamrnn.daemon import checkpoint
from streamrnn.daemon.checkpoint import Store, layout
from streamrnn.engine import forecast
from streamrnn.engine.engine import Engine
from streamrnn.engine.frame import Frame
from streamrnn.offline import simulator
from streamrnn.transport.mqtt import Publisher, Subscriber

pytestmark = pytest.mark.broker


def reference(settings, model, rows) -> dict:
    """What a daemon that never stopped forecasts: each stream through an engine of its own
    (values and nowcasts depend on the stream's own state only)."""
    out = {}
    for name in sorted({s for _, s, _ in rows}):
        engine = Engine(settings, copy.deepcopy(model), 0)
        order = [simulator.FEATURES.index(c) for c in engine.channels]
        for ts, s, v in rows:
            if s == name:
                (fc,) = engine.step([Frame(s, ts, v[order])])
                out[(s, ts)] = forecast.document(fc, P)
    return out


def _num(xs):
    return np.array([np.nan if x is None else x for x in xs], dtype=float)


def corrupt_newest(folder, how: str, rng: random.Random) -> None:
    newest = sorted(folder.glob("checkpoint-*.pt"))[-1]
    data = bytearray(newest.read_bytes())
    if how == "truncate":
        del data[rng.randrange(1, len(data)) :]
    else:
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    newest.write_bytes(bytes(data))


def test_kill_9_at_random_moments_loses_no_frame_and_forecasts_go_on_as_if_it_never_stopped(mosquitto, tmp_path):
    rng = random.Random(6)
    rows = sim_rows(streams=2, steps=500)
    model_path = tmp_path / "model.pt"
    model = a_model(model_path, rows)
    state = tmp_path / "state"
    cfg = write_config(
        tmp_path / "d.toml",
        trainer={"enabled": False},
        checkpoint={"dir": str(state), "every": 1.0, "keep": 3},
        mqtt={"reconnect_min": 0.2, "reconnect_max": 1.0},
    )
    sub = Subscriber(mosquitto.url, "t-forecasts", ["plant/+/forecast"])
    d = DaemonProcess(tmp_path, mosquitto.url, config=cfg, model=model_path).start()
    pub = Publisher(mosquitto.url, "t-sensors")
    killed = threading.Event()  # the stream's last tick waits for the kills
    sender = threading.Thread(target=publish_rows, args=(pub, rows), kwargs={"rate": 20.0, "last": killed}, daemon=True)
    sender.start()
    try:
        # three kills at random moments of the 25 s stream; before the 2nd and 3rd restart the newest
        # checkpoint is torn or has a flipped bit, so the one before it (and more journal) is used
        for how in (None, "truncate", "flip"):
            time.sleep(rng.uniform(2.0, 5.0))
            d.kill()
            if how:
                corrupt_newest(state / "checkpoints", how, rng)
            d.start()
        killed.set()
        sender.join()
        pub.close(60)
        got = drain(sub, quiet=5.0)
    finally:
        sub.close()
        d.kill()

    want = reference(config.load(cfg), model, rows)
    have = {(m["stream"], m["ts"]) for m in got}
    missing = set(want) - have
    assert not missing, f"{len(missing)} frames without a forecast, e.g. {sorted(missing)[:5]}"
    assert len(have) == len(got) or len(got) - len(have) < len(rows) // 2  # replays repeat a few, not everything
    for m in got:  # every forecast, replayed ones too, as the daemon that never stopped made it
        w = want[(m["stream"], m["ts"])]
        assert m["model"]["version"] == 0
        for t, body in w["targets"].items():
            h = m["targets"][t]
            np.testing.assert_allclose(
                _num(h["values"] + [h["now"]]),
                _num(body["values"] + [body["now"]]),
                rtol=1e-5,
                atol=1e-5,
                err_msg=f"{m['stream']} {m['ts']} {t}",
            )
    log = d.log()
    assert log.count("checkpoint restored") == 3 and log.count("checkpoint skipped") == 2
    assert "journal replayed" in log


FAULTS = '''
"""Loaded by every interpreter of the test's daemon (PYTHONPATH): the trainer fails on purpose,
the n-th retrain (seed n) with the n-th fault of TEST_STREAMRNN_FAULTS."""
import os

faults = os.environ.get("TEST_STREAMRNN_FAULTS", "").split(",")
if faults != [""]:
    import time

    import numpy as np

    from streamrnn.learning import judge
    from streamrnn.engine.snapshot import TrainReport, Verdict

    def retrain(snapshot, spec, state, settings, seed):
        kind = faults[(seed - 1) % len(faults)]
        if kind == "raise":
            raise RuntimeError("injected fault")
        if kind == "hang":
            time.sleep(3600)
        if kind == "oom":
            hold = [np.ones(2**22) for _ in range(10**5)]  # 32 MiB at a time, up to 3 TiB
        if kind == "nan":
            weights = {k: np.full(tuple(v.shape), np.nan, np.float32) for k, v in state.items()}
            hidden = np.zeros((spec.state_layers, spec.num_layers, len(snapshot.streams), spec.hidden_size), np.float32)
            return Verdict("promoted", TrainReport(status="ok"), "challenger", weights, hidden, 1.0, 0.5, 1.0)
        raise AssertionError(f"unknown fault {kind}")

    judge.retrain = retrain
'''


def test_a_trainer_that_raises_returns_nan_hangs_or_runs_out_of_memory_never_touches_serving(mosquitto, tmp_path):
    (tmp_path / "faults").mkdir()
    (tmp_path / "faults" / "sitecustomize.py").write_text(FAULTS)
    rate = 20.0
    # the deadline leaves a loaded machine time to start the trainer's interpreter and torch first;
    # the trainer at the daemon's priority, so that other work on the machine cannot starve it
    cfg = write_config(
        tmp_path / "d.toml", trainer={"min_frames": 40, "retrain_every": 20, "deadline": 30.0, "max_memory": 256, "priority": "normal"}
    )
    env = {"PYTHONPATH": str(tmp_path / "faults"), "TEST_STREAMRNN_FAULTS": "raise,nan,hang,oom"}
    signs = ("injected fault", "weights are not finite", "passed its deadline", "MemoryError")
    d = DaemonProcess(tmp_path, mosquitto.url, config=cfg, env=env).start()
    try:
        sub = Subscriber(mosquitto.url, "t-forecasts", ["plant/+/forecast"])
        pub = Publisher(mosquitto.url, "t-sensors")
        rows = sim_rows(streams=1, steps=12_000)
        sent, stop = [], threading.Event()

        def publish() -> None:  # frames at a steady rate until every fault has come
            for i, row in enumerate(rows):
                if stop.is_set():
                    return
                publish_rows(pub, [row])
                sent.append(row)
                stop.wait(max(0.0, start + (i + 1) / rate - time.monotonic()))

        start = time.monotonic()
        feeder = threading.Thread(target=publish, daemon=True)
        feeder.start()
        deadline = time.monotonic() + 500
        while not all(sign in d.log() for sign in signs) and time.monotonic() < deadline:
            time.sleep(1.0)
        stop.set()
        feeder.join(30)
        pub.close()
        got = drain(sub, quiet=4.0)
        sub.close()
        log = d.log()
        for sign in signs:  # each fault came, and was a failed retrain
            assert sign in log, sign
        assert sorted((m["stream"], m["ts"]) for m in got) == sorted((s, ts) for ts, s, _ in sent)  # every frame, once
        gaps = np.diff([m["_arrival"] for m in got])[:-1]  # the last frame closes by the wall clock
        assert gaps.max() < 10 / rate, f"forecasts stalled for {gaps.max():.2f} s"
        assert {m["model"]["version"] for m in got} == {0}
        failed = d.sample("streamrnn_retrains_total", outcome="failed")
        assert failed >= 4 and d.sample("streamrnn_retrains_total", outcome="promoted") == 0 and d.sample("streamrnn_model_version") == 0
        assert d.proc.poll() is None
    finally:
        d.kill()


def test_a_checkpoint_for_another_model_stops_the_daemon_at_start_naming_the_difference(tmp_path):
    state = tmp_path / "state"
    old = config.load(None, model={"hidden_size": 32}, checkpoint={"dir": str(state)})
    engine = Engine(old)
    Store(state / "checkpoints").write(7, {"seq": 7, "layout": layout(old), "engine": engine.state(), "assembler": {}})
    cfg = write_config(tmp_path / "d.toml", checkpoint={"dir": str(state)})  # hidden_size back to its default
    r = subprocess.run(
        [sys.executable, "-m", "streamrnn", "run", "--config", str(cfg), "--broker", "mqtt://127.0.0.1:9"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2  # a configuration error: systemd does not restart it (RestartPreventExitStatus)
    assert "was made for another model or feature set" in r.stderr and "model.hidden_size: checkpoint 32, configuration 64" in r.stderr
    assert "Traceback" not in r.stderr


def test_a_checkpoint_dir_that_cannot_be_written_fails_at_start_naming_the_field(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    cfg = write_config(tmp_path / "d.toml", checkpoint={"dir": str(blocker / "state")})
    r = subprocess.run(
        [sys.executable, "-m", "streamrnn", "run", "--config", str(cfg), "--broker", "mqtt://127.0.0.1:9"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2 and "checkpoint.dir:" in r.stderr and "cannot be created or written" in r.stderr, r.stderr


def test_a_full_disk_under_checkpoint_dir_is_counted_and_logged_and_forecasts_go_on(mosquitto, tmp_path, tiny_disk):
    disk = tiny_disk("512k")  # a checkpoint of two streams takes about 1.4 MB: none fits
    cfg = write_config(tmp_path / "d.toml", trainer={"enabled": False}, checkpoint={"dir": str(disk), "every": 1.0})
    d = DaemonProcess(tmp_path, mosquitto.url, config=cfg).start()
    try:
        sub = Subscriber(mosquitto.url, "t-forecasts", ["plant/+/forecast"])
        pub = Publisher(mosquitto.url, "t-sensors")
        rows = sim_rows(streams=2, steps=300)
        publish_rows(pub, rows, rate=20)
        pub.close()
        got = drain(sub, quiet=4.0)
        sub.close()
        assert {(m["stream"], m["ts"]) for m in got} == {(s, ts) for ts, s, _ in rows}
        time.sleep(1.2)
        assert (
            d.sample("streamrnn_checkpoints_total", outcome="failed") >= 5
            and d.sample("streamrnn_checkpoints_total", outcome="written") == 0
        )
        assert "checkpoint failed" in d.log() and "No space left on device" in d.log()
        assert len(list((disk / "journal").iterdir())) <= 2  # failed writes retry their segment (issue 39)
        assert d.proc.poll() is None
        assert d.terminate() == 0  # the last checkpoint fails too: still a clean exit
    finally:
        d.kill()
    assert not [p for p in (disk / "checkpoints").iterdir() if p.suffix == ".tmp"]  # no temporary file left behind


def test_a_checkpoint_sound_on_disk_whose_state_is_not_is_skipped_for_the_one_before(mosquitto, tmp_path):
    """Issue 39: a checksum says a file is the one written, not that what was written is sound. A
    newer checkpoint with NaN hidden states is refused whole, counted and logged, the one before it
    restored, and every forecast after it has values."""
    state = tmp_path / "state"
    cfg = write_config(tmp_path / "d.toml", trainer={"enabled": False}, checkpoint={"dir": str(state), "every": 1.0})
    rows = sim_rows(streams=2, steps=200)
    d = DaemonProcess(tmp_path, mosquitto.url, config=cfg).start()
    pub = Publisher(mosquitto.url, "t-sensors")
    try:
        publish_rows(pub, rows[:200], rate=50)
        time.sleep(1.0)
        assert d.terminate() == 0  # its last checkpoint written
        store = Store(state / "checkpoints")
        seq, path = store.paths()[-1]
        poisoned = checkpoint.decode(path.read_bytes())
        poisoned["engine"]["bank"]["hidden"][...] = np.nan
        store.write(seq + 1, poisoned)  # a good checksum over a bad state
        sub = Subscriber(mosquitto.url, "t-forecasts", ["plant/+/forecast"])
        d = DaemonProcess(tmp_path, mosquitto.url, config=cfg).start()
        assert d.sample("streamrnn_checkpoints_skipped_total") == 1
        assert "checkpoint skipped: unusable" in d.log() and "bank.hidden is not finite" in d.log()
        assert f"seq={seq}" in d.log().split("checkpoint restored", 1)[1].splitlines()[0], d.log()[-2000:]
        publish_rows(pub, rows[200:], rate=50)
        got = drain(sub, quiet=3.0)
        sub.close()
        values = [_num(t["values"]) for m in got for t in m["targets"].values()]
        assert got and np.mean([np.isfinite(v).all() for v in values]) > 0.9  # held NaN, every one was null
        assert d.terminate() == 0
    finally:
        pub.close()
        d.kill()
