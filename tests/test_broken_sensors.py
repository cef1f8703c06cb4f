"""A fault on one channel never makes a forecast worse than holding the last value: per fault kind,
a short replay of the simulator with the fault injected, scored per fault window against the
fault-free run (:mod:`streamrnn.offline.faultreport`), the issue's bounds asserted."""

from __future__ import annotations

import pytest

from streamrnn import config
from streamrnn.offline import faultreport, faults, replay, simulator

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


# Open (issue 38), measured on this replay: a level shift or a drift too small to be out of range is
# taken as the process; the linear contender, which learnt that this controlled temperature returns
# to its set point, forecasts the return, and the trust draws it in only part of the way in 200
# frames (bias: the channel 4.83 within its bound of 5.04, the coolant's outlet temperature beside
# it 0.0797 against a bound of 0.0793; drift: 13.71 against persistence's 13.16 and a bound of 13.36).
UNDETECTED = {"bias", "drift"}


@pytest.mark.slow
@pytest.mark.parametrize("kind", faults.KINDS)
def test_a_broken_sensor_costs_its_own_forecast_no_more_than_persistence_and_the_others_nothing(sim, kind):
    table, settings, fault_free = sim
    rep = faultreport.run(table, settings, [faults.Fault(kind, CHANNEL, ONSET)], fault_free=fault_free)
    (window,) = rep["windows"]
    report = faultreport.format_report(rep)
    own = window["channels"][CHANNEL]
    others = {k: v for k, v in window["channels"].items() if k != CHANNEL}
    kept = own["served"] <= own["bound"] and all(v["ok"] for v in others.values())
    if kind in UNDETECTED and not kept:
        pytest.xfail(f"{kind}: undetected, the linear contender pulls it back (open)\n{report}")
    assert own["served"] <= own["bound"], report  # its persistence MSE + 0.25 x its MSE outside the fault
    assert all(v["ok"] for v in others.values()), report  # 1.05 x max(persistence, fault-free served)
    assert own["recovered"], report  # two lookbacks after it cleared, as good as the fault-free run
