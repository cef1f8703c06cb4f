from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import DATA, interruptible

from streamrnn import cli
from streamrnn.offline import replay, simulator

TEP_ANALYSERS = ",".join(f"XMEAS_{i}" for i in range(37, 42))


def test_simulator_is_seeded_and_deterministic(tmp_path):
    a, b, c = tmp_path / "a.csv", tmp_path / "b.csv", tmp_path / "c.csv"
    simulator.write_csv(a, 200, 2, seed=3)
    simulator.write_csv(b, 200, 2, seed=3)
    simulator.write_csv(c, 200, 2, seed=4)
    assert a.read_bytes() == b.read_bytes() != c.read_bytes()
    rows = list(csv.DictReader(a.read_text().splitlines()))
    assert len(rows) == 400 and set(rows[0]) == {"ts", "stream", *simulator.FEATURES}
    measured = sum(r[simulator.KEY] != "" for r in rows)
    assert 0 < measured <= 400 / 30 + 2  # the key variable is sampled rarely


def test_replay_cli_writes_forecasts_report_and_plot(tmp_path):
    data = tmp_path / "sim.csv"
    assert cli.main(["simulate", "--csv", str(data), "--steps", "400", "--streams", "2", "--seed", "1"]) == 0
    out, rep, png = tmp_path / "f.csv", tmp_path / "r.json", tmp_path / "p.png"
    args = [
        "replay",
        str(data),
        "--stream-column",
        "stream",
        "--inputs",
        "reactor_temp,coolant_flow,feed_temp",
        "--targets",
        f"reactor_temp,{simulator.KEY}",
        "--horizon",
        "3",
        "--out",
        str(out),
        "--report",
        str(rep),
        "--plot",
        str(png),
        "--quiet",
    ]
    assert cli.main(args) == 0
    report = json.loads(rep.read_text())
    assert report["frames"] == 800 and report["streams"] == 2
    assert set(report["retrains"]) == {"promoted", "rejected", "failed"}
    t = report["targets"]["reactor_temp"]
    assert t["horizons"] == [1, 2, 3] and all(len(t[k]) == 3 for k in ("mse", "mae", "persistence_mse", "skill", "coverage"))
    with open(out) as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["stream", "ts", "target", "step", "value", "lower", "upper"]
    assert len(rows) == 800 * 2 * 3
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"


def test_forecasts_never_depend_on_later_rows(tmp_path):
    """Rewriting every value after row n changes no forecast made at or before row n."""
    data = tmp_path / "d.csv"
    simulator.write_csv(data, 300, 1, seed=2)
    rows = list(csv.reader(data.read_text().splitlines()))
    poisoned = tmp_path / "p.csv"
    with open(poisoned, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(rows[0])
        for i, r in enumerate(rows[1:]):
            w.writerow(r if i < 200 else r[:2] + ["1e9"] * (len(r) - 2))
    outs = []
    for src in (data, poisoned):
        out = tmp_path / f"out-{src.stem}.csv"
        assert cli.main(["replay", str(src), "--stream-column", "stream", "--horizon", "3", "--out", str(out), "--quiet"]) == 0
        outs.append([r for r in csv.DictReader(out.read_text().splitlines()) if float(r["ts"]) < simulator.T0 + 200 * simulator.PERIOD])
    assert outs[0] == outs[1] and len(outs[0]) > 0


def test_sampled_columns_turn_repeats_into_missing(tmp_path):
    p = tmp_path / "s.csv"
    p.write_text("t,x,y\n0,1,5\n1,1,5\n2,2,5\n3,2,6\n")
    t = replay.read_table(p, sampled=["y"])
    assert np.isnan(t.values[1:3, 1]).all() and t.values[3, 1] == 6 and t.values[1, 0] == 1
    assert t.period == 1.0


def _skill_ok(rep: dict, targets: list[str]) -> None:
    for name in targets:
        skill = [s for s in rep["targets"][name]["skill"] if s is not None]
        assert np.mean(skill) > 0, (name, skill)
        assert min(skill) > -0.02, (name, skill)


@pytest.mark.slow
@pytest.mark.skipif(not (DATA / "tep" / "d00_te.csv").exists(), reason="shared/data is not beside the checkout")
def test_tep_analysers_beat_persistence(tmp_path):
    rep_path = tmp_path / "tep.json"
    assert (
        cli.main(
            [
                "replay",
                str(DATA / "tep" / "d00_te.csv"),
                "--time-column",
                "none",
                "--period",
                "180",
                "--targets",
                TEP_ANALYSERS,
                "--sampled",
                TEP_ANALYSERS,
                "--horizon",
                "10",
                "--report",
                str(rep_path),
                "--quiet",
            ]
        )
        == 0
    )
    _skill_ok(json.loads(rep_path.read_text()), TEP_ANALYSERS.split(","))


@pytest.mark.slow
@pytest.mark.skipif(not (DATA / "ett" / "ETTh1.csv").exists(), reason="shared/data is not beside the checkout")
def test_ett_oil_temperature_beats_persistence(tmp_path):
    rep_path = tmp_path / "ett.json"
    assert (
        cli.main(["replay", str(DATA / "ett" / "ETTh1.csv"), "--targets", "OT", "--horizon", "24", "--report", str(rep_path), "--quiet"])
        == 0
    )
    rep = json.loads(rep_path.read_text())
    assert rep["frames"] == 17420
    _skill_ok(rep, ["OT"])


@pytest.mark.slow
def test_simulator_key_variable_and_auxiliaries_beat_persistence(tmp_path):
    data, rep_path = tmp_path / "sim.csv", tmp_path / "sim.json"
    simulator.write_csv(data, 3000, 2, seed=11)
    assert (
        cli.main(
            [
                "replay",
                str(data),
                "--stream-column",
                "stream",
                "--inputs",
                ",".join(simulator.AUXILIARIES),
                "--targets",
                ",".join(simulator.FEATURES),
                "--horizon",
                "10",
                "--report",
                str(rep_path),
                "--quiet",
            ]
        )
        == 0
    )
    rep = json.loads(rep_path.read_text())
    _skill_ok(rep, [simulator.KEY])
    aux = [np.mean([s for s in rep["targets"][n]["skill"] if s is not None]) for n in simulator.AUXILIARIES]
    assert np.mean(aux) > 0, aux


def test_a_replay_repeats_bit_for_bit_beside_a_cpu_bound_load(tmp_path):
    """Retrains in a replay are budgeted in steps and epochs, never in wall-clock seconds: a busy
    machine gives the same forecasts as an idle one."""
    import subprocess
    import sys

    data = tmp_path / "sim.csv"
    simulator.write_csv(data, 700, 1, seed=5)
    cfg = tmp_path / "small.toml"  # small and quick, with a wall-clock budget a loaded machine would hit
    cfg.write_text(
        "[model]\nhidden_size = 16\nhead_hidden = 16\n[ring]\nsize = 512\n"
        "[trainer]\nwindow = 16\nmin_frames = 200\nretrain_every = 200\nmax_epochs = 3\nmax_seconds = 0.05\n"
    )
    args = ["replay", str(data), "--config", str(cfg), "--stream-column", "stream", "--horizon", "3", "--quiet", "--seed", "1"]
    idle, busy = tmp_path / "idle.csv", tmp_path / "busy.csv"
    idle_report, busy_report = tmp_path / "idle.json", tmp_path / "busy.json"
    assert cli.main([*args, "--out", str(idle), "--report", str(idle_report)]) == 0
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        assert cli.main([*args, "--out", str(busy), "--report", str(busy_report)]) == 0
    finally:
        for p in burners:
            p.kill()
            p.wait()
    assert sum(json.loads(idle_report.read_text())["retrains"].values()) >= 2  # it did retrain
    assert idle.read_bytes() == busy.read_bytes()


def test_a_file_without_a_time_column_is_refused_naming_the_column_and_the_way_out(tmp_path, capsys):
    """Issue 40: a flow in the first column was taken for unix time, a stream id there failed
    with 'Invalid isoformat string'. Either is refused, naming the column and --time-column none."""
    flows = tmp_path / "flows.csv"
    flows.write_text("feed,level,temp\n" + "".join(f"{18 + 0.3 * ((-1) ** i)},{1 + 0.01 * i},{300 + i % 3}\n" for i in range(300)))
    ids = tmp_path / "ids.csv"
    ids.write_text("stream,level\n" + "".join(f"reactor-01,{1 + 0.01 * i}\n" for i in range(300)))
    for path, said in ((flows, "does not look like a time: row 3 goes back"), (ids, "is not a time: row 2 has 'reactor-01'")):
        assert cli.main(["replay", str(path), "--quiet"]) == 1
        err = capsys.readouterr().err
        assert f"column '{path.read_text().split(',')[0]}' (the first, taken for the time) {said}" in err, err
        assert "--time-column none --period SECONDS" in err
    assert cli.main(["replay", str(flows), "--time-column", "none", "--period", "60", "--quiet"]) == 0  # the way out


def test_ctrl_c_during_a_replay_says_one_line_exits_130_and_leaves_no_partial_output(tmp_path):
    data, out = tmp_path / "sim.csv", tmp_path / "forecasts.csv"
    assert cli.main(["simulate", "--csv", str(data), "--steps", "3000", "--streams", "2", "--seed", "1"]) == 0
    out.write_text("the run before\n")
    proc = interruptible(
        [sys.executable, "-m", "streamrnn", "replay", str(data), "--stream-column", "stream", "--out", str(out)],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not list(tmp_path.glob(".forecasts.csv.*.tmp")):  # it is writing
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        err = proc.communicate(timeout=300)[1]  # seconds; minutes only on a box loaded far beyond its cores
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 130 and err.strip() == "streamrnn replay: interrupted", err
    assert out.read_text() == "the run before\n" and not list(tmp_path.glob(".forecasts.csv.*"))
