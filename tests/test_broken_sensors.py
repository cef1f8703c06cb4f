"""A fault on one channel never makes a forecast worse than holding the last value: per fault kind,
a short replay of the simulator with the fault injected, scored per fault window against the
fault-free run (:mod:`streamrnn.faultreport`), the issue's bounds asserted."""

from __future__ import annotations

import pytest

from streamrnn import config, faultreport, faults, replay, simulator

ROWS, ONSET = 1300, 700
CHANNEL = "reactor_temp"  # an input of every other target: a fault there could drag them all


@pytest.fixture(scope="module")
def sim(tmp_path_factory) -> tuple[replay.Table, config.Settings, dict]:
    path = tmp_path_factory.mktemp("sim") / "sim.csv"
    simulator.write_csv(path, ROWS, streams=1, seed=1)
    table = replay.read_table(path, "", "stream")
    features = {
        "inputs": list(simulator.FEATURES),
        "targets": list(simulator.FEATURES),
        "period": table.period,
        "horizon": faultreport.STEPS,
    }
    small = {"model": {"hidden_size": 32, "head_hidden": 32}, "trainer": {"max_epochs": 8, "priority": "normal"}}
    settings = config.load(None, features=features, device="cpu", **small)
    return table, settings, faultreport.clean(table, settings)


@pytest.mark.slow
@pytest.mark.parametrize("kind", faults.KINDS)
def test_a_broken_sensor_costs_its_own_forecast_no_more_than_persistence_and_the_others_nothing(sim, kind):
    table, settings, fault_free = sim
    rep = faultreport.run(table, settings, [faults.Fault(kind, CHANNEL, ONSET)], fault_free=fault_free)
    (window,) = rep["windows"]
    report = faultreport.format_report(rep)
    own = window["channels"][CHANNEL]
    assert own["served"] <= own["bound"], report  # its persistence MSE + 0.25 x its MSE outside the fault
    others = {k: v for k, v in window["channels"].items() if k != CHANNEL}
    assert all(v["ok"] for v in others.values()), report  # 1.05 x max(persistence, fault-free served)
    assert own["recovered"], report  # two lookbacks after it cleared, as good as the fault-free run
