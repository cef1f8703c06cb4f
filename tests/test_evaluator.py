from __future__ import annotations

import numpy as np

from conftest import sine_frames, small_settings
from streamrnn.engine import Engine, Frame
from streamrnn.evaluator import Evaluator


def test_a_forecast_is_scored_only_when_its_frame_arrives():
    ev = Evaluator(targets=1, horizon=3)
    ev.record(np.array([0]), np.array([10]), pred=np.array([[[1.0], [2.0], [3.0]]]), lower=np.full((1, 3, 1), np.nan), upper=np.full((1, 3, 1), np.nan), base=np.array([[0.0]]))
    assert ev.scores()["n"].sum() == 0
    ev.score(np.array([0]), np.array([11]), np.array([[1.5]]))  # step 1 of the forecast made at 10
    s = ev.scores()
    assert s["n"][:, 0].tolist() == [1, 0, 0]
    assert s["mse"][0, 0] == 0.25 and s["persistence_mse"][0, 0] == 2.25
    ev.score(np.array([0]), np.array([13]), np.array([[np.nan]]))  # unobserved: nothing scored
    assert ev.scores()["n"].sum() == 1


def _run(frames, engine, upto):
    for s, ts, v in frames[:upto]:
        engine.step([Frame(s, ts, v)])
    return engine.evaluator.scores()


def test_poisoned_future_does_not_change_scores_until_it_arrives():
    clean = sine_frames(300)
    for poison in (np.nan, 1e12):
        dirty = [(s, ts, v if ts < 200 else np.full_like(v, poison)) for s, ts, v in clean]
        a, b = Engine(small_settings()), Engine(small_settings())
        sa, sb = _run(clean, a, 200), _run(dirty, b, 200)
        for key in ("mse", "persistence_mse", "n", "coverage"):
            np.testing.assert_array_equal(sa[key], sb[key])
        # retraining on the same past gives the same models too
        assert a.version == b.version
        b.step([Frame(*dirty[200][:2], dirty[200][2])])
        after = b.evaluator.scores()
        if np.isnan(poison):
            np.testing.assert_array_equal(after["n"], sb["n"])  # nothing observed, nothing scored
        else:
            assert after["mse"][0, 0] > 1e20  # the huge value is scored once it has arrived


def test_bands_cover_near_nominal_on_stationary_noise():
    rng = np.random.default_rng(1)
    ev = Evaluator(targets=1, horizon=1, coverage=0.9, residuals=400)
    n = 4000
    for t in range(n):
        if t:
            ev.score(np.array([0]), np.array([t]), np.array([[rng.standard_normal()]]))
        half = ev.half_width()
        ev.record(np.array([0]), np.array([t]), np.zeros((1, 1, 1)), -half[None], half[None], np.zeros((1, 1)))
    cov = ev.scores()["coverage"][0, 0]
    assert 0.87 < cov < 0.93, cov
    assert np.isfinite(ev.half_width()).all()
