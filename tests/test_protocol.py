"""The linear contender and the online forecasting protocol of the literature."""

from __future__ import annotations

import numpy as np
import pytest

from streamrnn.engine import readout, ridgeform
from streamrnn.engine.linear import OnlineRidge
from streamrnn.learning import examples
from streamrnn.offline import protocol


def ar_process(n: int = 2000, seed: int = 0) -> np.ndarray:
    """Three variables a linear model can learn: an AR(1), a noisy sine, and a lagged copy of the first."""
    rng = np.random.default_rng(seed)
    x = np.zeros((n, 3))
    for t in range(1, n):
        x[t, 0] = 0.9 * x[t - 1, 0] + rng.normal()
        x[t, 1] = np.sin(0.1 * t) + 0.1 * rng.normal()
        x[t, 2] = 0.5 * x[t - 1, 0] + 0.1 * rng.normal()
    return x


def test_the_linear_family_learns_a_linear_process_online_and_beats_persistence_at_every_horizon():
    scores = protocol.evaluate(ar_process(), lambda i: None, 12, lookback=24)
    mse = protocol.table(scores, (1, 6, 12))
    for h, row in mse.items():
        assert row["linear"] < 0.7 * row["persistence"], (h, row)
    assert mse["1"]["streamrnn"] is None  # nothing served: not scored


def test_untrained_it_forecasts_no_change():
    r = OnlineRidge(3, [0, 2], 4, 8, np.zeros(3), np.ones(3))
    window = np.random.default_rng(1).normal(size=(8, 3))
    np.testing.assert_array_equal(r.forecast(window), np.broadcast_to(window[-1, [0, 2]], (4, 2)))


def test_it_is_served_in_the_few_output_directions_its_forecasts_move_in_and_forecasts_as_fitted():
    from streamrnn.engine import linear

    values = ar_process(3000)
    ts = 600.0 * np.arange(3000)  # ten-minute rows: the calendar features move
    r = OnlineRidge(3, [0, 1, 2], 12, 24, values[:600].mean(axis=0), values[:600].std(axis=0), calendar=True)
    examples.learn_frames(r, ["s"], [values], [ts], [3000], 4096)
    w_in, w_out, bias, w_when = r.serving()
    assert w_out is not None and w_in.shape[1] == w_out.shape[0] < r.outputs // 2  # 36 outputs: steps of three targets move together
    assert w_when is not None and w_when.shape == (linear.CALENDAR, r.outputs) and np.abs(w_when).max() > 0
    windows = np.stack([values[i - 24 : i] for i in range(2500, 3000)])
    fitted = r.forecast(windows, ts[2499:2999])  # (n, H, T)
    served = windows[:, -1, None, :] + (
        (r.normalise(windows).reshape(len(windows), -1) @ w_in @ w_out + bias + linear.calendar(ts[2499:2999]) @ w_when).reshape(
            fitted.shape
        )
    )
    change = fitted - windows[:, -1, None, :]
    lost = np.mean((served - fitted) ** 2, axis=0) / np.mean(change**2, axis=0)  # per (step, target), of its own variance
    assert lost.mean() <= 2 * readout.RANK_LOSS, lost
    assert lost.max() > 0  # the directions left out were not nothing


def test_the_penalty_chosen_is_the_grid_s_best_on_the_recent_examples_from_any_start():
    from streamrnn.engine import linear

    bests = set()
    for noise in (0.01, 1.0, 30.0):  # little noise wants a small penalty, much a large one
        rng = np.random.default_rng(7)
        r = OnlineRidge(3, [0], 2, 4, np.zeros(3), np.ones(3), memory=1e15, recent=48)  # no forgetting: the sums are plain
        x = rng.normal(size=(160, r.features)) * np.geomspace(3, 0.03, r.features)  # a spread of directions, as windows have
        y = x @ rng.normal(size=(r.features, r.outputs)) + noise * rng.normal(size=(160, r.outputs))
        r.learn_many(x, y)
        old, recent = slice(0, 112), slice(112, 160)
        gram = x[old].T @ x[old]
        errors = []
        for p in linear._PENALTIES:
            w = np.linalg.solve(gram + p * np.trace(gram) / r.features * np.eye(r.features), x[old].T @ y[old])
            errors.append(np.mean((x[recent] @ w - y[recent]) ** 2))
        best = linear._PENALTIES[int(np.argmin(errors))]
        for start in (float("nan"), linear._PENALTIES[0], linear._PENALTIES[-1]):
            r.penalty = start
            r.solve(choose=True)
            assert r.penalty == best, (noise, start, r.penalty, best, errors)
        bests.add(best)
    assert len(bests) == 3, bests


def test_a_linear_forecast_never_depends_on_a_later_row():
    values = ar_process(600)
    poisoned = values.copy()
    poisoned[400:] = 1e6
    clean = list(protocol.linear_forecasts(values, 6, lookback=16))
    dirty = list(protocol.linear_forecasts(poisoned, 6, lookback=16))
    for i in range(400):  # every forecast made before the poison arrived
        np.testing.assert_array_equal(clean[i], dirty[i])
    assert not np.allclose(clean[420], dirty[420])  # and after it, it is read


def test_scores_are_normalised_by_the_first_fifth_and_pooled_over_steps_and_variables():
    values = np.arange(100.0)[:, None] * np.array([[1.0, 2.0]])  # a ramp: persistence is off by k steps
    scores = protocol.evaluate(values, lambda i: values[i] + np.arange(1, 3)[:, None] * np.array([1.0, 2.0]), 2, lookback=4)
    std = values[:20].std(axis=0)
    want = np.mean([(k * np.array([1.0, 2.0]) / std) ** 2 for k in (1, 2)])
    assert scores["persistence"].mse(2) == pytest.approx(want)
    assert scores["streamrnn"].mse(2) == 0.0  # the exact forecast


def test_replay_reports_the_protocol_beside_persistence_and_the_linear_family(tmp_path, capsys):
    import json

    from streamrnn import cli
    from streamrnn.offline import simulator

    data, report = tmp_path / "sim.csv", tmp_path / "r.json"
    simulator.write_csv(data, 300, 1, seed=4)
    assert (
        cli.main(
            [
                "replay",
                str(data),
                "--stream-column",
                "stream",
                "--protocol",
                "online-tsf",
                "--horizon",
                "4",
                "--quiet",
                "--report",
                str(report),
            ]
        )
        == 0
    )
    table = json.loads(report.read_text())["protocol"]["mse"]
    assert list(table) == ["1"] and set(table["1"]) == {"persistence", "linear", "streamrnn"}
    assert all(v is not None and v > 0 for v in table["1"].values())
    assert "online-tsf protocol" in capsys.readouterr().out
    assert cli.main(["replay", str(data), "--stream-column", "stream", "--protocol", "online-tsf", "--targets", "level"]) == 2


def test_the_linear_contender_learns_each_frame_once_across_snapshots_and_a_restarted_stream_afresh():
    x = ar_process(400)
    ts = np.arange(400.0)
    r = OnlineRidge(3, [0, 2], 4, 8, np.zeros(3), np.ones(3))
    assert examples.learn_frames(r, ["s"], [x[:300]], [ts[:300]], [300], 10_000) == 296  # every frame whose 4 labels arrived
    assert examples.learn_frames(r, ["s"], [x[:300]], [ts[:300]], [300], 10_000) == 0  # the same snapshot again: nothing new
    assert examples.learn_frames(r, ["s"], [x[50:350]], [ts[50:350]], [350], 10_000) == 50  # the ring moved on by 50
    assert examples.learn_frames(r, ["s"], [x[:40]], [ts[:40]], [40], 10_000) == 36  # restarted: its count went back
    assert examples.learn_frames(r, ["s", "t"], [x[:200], x[:200]], [ts[:200], ts[:200]], [200, 200], 64) == 64  # at most max_examples
    assert set(r.absorbed) == {"s", "t"} and r.learnt > 0
    again = ridgeform.from_state(ridgeform.state(r))
    np.testing.assert_array_equal(again.forecast(x[-8:]), r.forecast(x[-8:]))
    assert examples.learn_frames(again, ["t"], [x[:200]], [ts[:200]], [200], 10_000) == 0 and set(again.absorbed) == {"t"}  # 's' gone


def test_the_time_of_day_forecasts_what_a_short_window_cannot_see_coming():
    """A level that steps up and down at fixed hours (a day shift) under noise: from a two-hour
    window the next steps are a guess, from the time of day too they are known."""
    from streamrnn.engine import linear

    rng = np.random.default_rng(3)
    n, ts = 8000, 600.0 * np.arange(8000)
    hour = ts % 86400 / 3600
    level = np.where((hour >= 8) & (hour < 16), 3.0, 0.0)
    values = np.stack([level + 0.3 * rng.normal(size=n), rng.normal(size=n)], axis=1)
    errors = {}
    for with_calendar in (False, True):
        r = OnlineRidge(2, [0], 12, 12, values[:1000].mean(axis=0), values[:1000].std(axis=0), calendar=with_calendar)
        examples.learn_frames(r, ["s"], [values[:6000]], [ts[:6000]], [6000], 8192)
        at = np.arange(6000, n - 12)
        windows = np.stack([values[i - 11 : i + 1] for i in at])
        truth = np.stack([values[i + 1 : i + 13, :1] for i in at])
        errors[with_calendar] = float(np.mean((r.forecast(windows, ts[at]) - truth) ** 2))
    assert errors[True] < 0.7 * errors[False], errors
    assert linear.calendar(np.array([0.0, 43200.0])).round(6).tolist() == [
        [0, 0, 1, 1],
        [0, np.sin(np.pi / 7).round(6), -1, np.cos(np.pi / 7).round(6)],
    ]
