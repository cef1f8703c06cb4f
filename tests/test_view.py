"""The demo's view: every line fits an 80-column terminal, numbers keep their width, the chart
draws the past, the forecast and its band where they belong, and the status says why."""

import math

import pytest

from streamrnn.tools import view


def doc(now: float, h: int, version: int = 3, band: float | None = 0.05) -> dict:
    values = [now + 0.01 * k for k in range(1, h + 1)]
    lower = [None if band is None else v - band for v in values]
    upper = [None if band is None else v + band for v in values]
    target = {"now": now, "values": values, "lower": lower, "upper": upper, "skill": 0.123}
    return {"stream": "reactor-01", "ts": 1.0, "model": {"kind": "gru", "version": version}, "targets": {"product_conc": target}}


@pytest.mark.parametrize("x", [0.4123456, -1234567.0, 1e-9, 101325.123, math.nan, None, 7.0])
def test_numbers_keep_their_width(x) -> None:
    assert len(view.number(x)) == 8


@pytest.mark.parametrize("horizon", [1, 10, 48, 500])
def test_charts_fit_and_draw_past_forecast_and_band(horizon: int) -> None:
    s = view.Stream("a-very-long-stream-name-indeed")
    s.take(doc(-1234567.0, horizon), "product_conc")  # numbers as wide as they come
    for i in range(200):
        s.take(doc(1.0 + 0.001 * i, horizon), "product_conc")
    lines = view.chart(s, "product_conc")
    assert all(len(line) < 80 for line in lines), [len(line) for line in lines]
    rows = [line for line in lines if "┤" in line]
    assert len(rows) == view.ROWS
    assert sum(line.count("•") for line in rows) == len(rows[0].split("┤")[1].split("│")[0])  # a point per past column
    assert sum(line.count("*") for line in rows) == min(horizon, view.FUTURE)  # a forecast per step drawn
    assert any("░" in line for line in rows)
    assert lines[-1].rstrip().endswith(f"+{horizon}")


def test_a_rising_forecast_is_drawn_rising_and_nan_is_left_out() -> None:
    s = view.Stream("s")
    s.take(doc(0.0, 10, band=None), "product_conc")
    s.take({**doc(math.nan, 10), "targets": {"product_conc": {**doc(0.0, 10)["targets"]["product_conc"], "now": None}}}, "product_conc")
    rows = [line.split("┤")[1] for line in view.chart(s, "product_conc") if "┤" in line]
    stars = [(r, line.index("*")) for r, line in enumerate(rows) if "*" in line]
    assert stars[0][1] > stars[-1][1]  # the top row holds the latest steps: rising
    assert sum(line.count("•") for line in rows) == 1  # the None was not drawn


def test_the_status_says_what_the_model_is_doing() -> None:
    m = {"streamrnn_model_version": 0, "streamrnn_streams_active": 3, "streamrnn_ring_frames": 300, "streamrnn_retrain_running": 0}
    assert "warming up, 100 of 256 frames" in view.status(m, None, 256)[0]
    assert "training" in view.status({**m, "streamrnn_retrain_running": 1}, None, 256)[0]
    held = {f'streamrnn_holdout_error{{model="{k}"}}': v for k, v in (("challenger", 0.91), ("champion", 0.9), ("persistence", 1.0))}
    rejected = view.status({**m, **held}, "rejected", 256)
    assert "rejected" in rejected[0] and "challenger 0.910, champion 0.900, persistence 1.000" in rejected[1]
    assert "model v4 serves, promoted" in view.status({**m, **held, "streamrnn_model_version": 4}, "promoted", 256)[0]
    assert view.status(None, None, 256) == ["status: starting (the daemon loads its model)"]
    for last in (None, "rejected", "promoted", "failed"):
        for running in (0, 1):
            for version in (0, 12):
                state = view.status({**m, **held, "streamrnn_retrain_running": running, "streamrnn_model_version": version}, last, 256)
                assert all(len(line) < 80 for line in state), state
