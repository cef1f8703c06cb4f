from __future__ import annotations

import numpy as np
from conftest import sine_frames, small_settings

from streamrnn.engine.engine import Engine
from streamrnn.engine.evaluator import Evaluator
from streamrnn.engine.frame import Frame


def test_a_forecast_is_scored_only_when_its_frame_arrives():
    ev = Evaluator(targets=1, horizon=3)
    ev.reset(0)
    band = ev.bands(np.array([[[1.0], [2.0], [3.0]]]))  # no errors seen yet: no band
    assert band.shape == (1, 3, 3, 1) and np.isnan(band[:, :, 1:]).all()
    ev.record(np.array([0]), np.array([10]), band, base=np.array([[0.0]]))
    assert ev.scores()["n"].sum() == 0
    ev.score(np.array([0]), np.array([11]), np.array([[1.5]]))  # step 1 of the forecast made at 10
    s = ev.scores()
    assert s["n"][:, 0].tolist() == [1, 0, 0]
    assert s["mse"][0, 0] == 0.25 and s["persistence_mse"][0, 0] == 2.25
    ev.score(np.array([0]), np.array([13]), np.array([[np.nan]]))  # unobserved: nothing scored
    assert ev.scores()["n"].sum() == 1


def test_an_empty_slot_scores_nothing_at_the_first_ticks():
    """A slot with no forecast says tick -1: the truth of tick 0 (whose step 1 would have been made
    at tick -1) finds nothing to score in it, in a row opened fresh or reused."""
    ev = Evaluator(targets=1, horizon=3)
    for row in (0, 1, 40):  # 40: the arrays grown past the first rows
        ev.reset(row)
    ev.record(np.array([1]), np.array([0]), ev.bands(np.ones((1, 3, 1))), np.ones((1, 1)))
    ev.reset(1)  # reused: its forecast of tick 0 is forgotten
    rows = np.array([0, 1, 40])
    for tick in range(3):
        ev.score(rows, np.full(3, tick), np.full((3, 1), 5.0))
    assert ev.scores()["n"].sum() == 0


def _run(frames, engine, upto):
    for s, ts, v in frames[:upto]:
        engine.step([Frame(s, ts, v)])
    return engine.evaluator.scores()


def test_poisoned_future_does_not_change_scores_until_it_arrives():
    clean = sine_frames(300)
    for poison, health in ((np.nan, True), (1e12, False), (1e12, True)):
        dirty = [(s, ts, v if ts < 200 else np.full_like(v, poison)) for s, ts, v in clean]
        settings = small_settings(health={"enabled": health})
        a, b = Engine(settings), Engine(settings)
        sa, sb = _run(clean, a, 200), _run(dirty, b, 200)
        for key in ("mse", "persistence_mse", "n", "coverage"):
            np.testing.assert_array_equal(sa[key], sb[key])
        # retraining on the same past gives the same models too
        assert a.version == b.version
        b.step([Frame(*dirty[200][:2], dirty[200][2])])
        after = b.evaluator.scores()
        if np.isnan(poison):  # nothing observed, nothing scored
            np.testing.assert_array_equal(after["n"], sb["n"])
        elif health:  # a (judged) broken sensor's value is not scored
            np.testing.assert_array_equal(after["n"][:, 0], sb["n"][:, 0])
        else:
            assert after["mse"][0, 0] > 1e20  # the huge value is scored once it has arrived


def test_bands_cover_near_nominal_on_stationary_noise():
    rng = np.random.default_rng(1)
    ev = Evaluator(targets=1, horizon=1, coverage=0.9, residuals=400)
    ev.reset(0)
    n = 4000
    for t in range(n):
        if t:
            ev.score(np.array([0]), np.array([t]), np.array([[rng.standard_normal()]]))
        ev.record(np.array([0]), np.array([t]), ev.bands(np.zeros((1, 1, 1))), np.zeros((1, 1)))
    cov = ev.scores()["coverage"][0, 0]
    assert 0.87 < cov < 0.93, cov
    half = ev.conformal.half_width()
    assert np.isfinite(half).all()
    pred = rng.standard_normal((5, 1, 1))
    band = ev.bands(pred)
    p32, h32 = pred.astype(np.float32), half.astype(np.float32)  # as published
    assert band.dtype == np.float32
    np.testing.assert_array_equal(band[:, :, 0], p32)
    np.testing.assert_array_equal(band[:, :, 1], p32 - h32)
    np.testing.assert_array_equal(band[:, :, 2], p32 + h32)
    again = Evaluator(targets=1, horizon=1, coverage=0.9, residuals=400)
    again.load_state(ev.state())  # the bands as drawn come back with the checkpoint
    np.testing.assert_array_equal(again.bands(pred), band)


def _feed(ev: Evaluator, steps, eager: bool, start: bool = True) -> None:
    """Score then record each step, as the engine does (after opening the streams' rows, unless it
    goes on); ``eager`` scores every step at once."""
    for row in range(3 if start else 0):
        ev.reset(row)
    for rows, ticks, truth, pred in steps:
        ev.score(rows, ticks, truth)
        if eager:
            ev.flush()
        ev.record(rows, ticks, ev.bands(pred), truth)


def _steps(seed: int, n: int, streams: int = 3, horizon: int = 4):
    """Steps of a few streams that skip ticks now and then, some by more than the scoring lag."""
    rng = np.random.default_rng(seed)
    tick, out = np.zeros(streams, dtype=np.int64), []
    for _ in range(n):
        rows = np.sort(rng.choice(streams, size=rng.integers(1, streams + 1), replace=False))
        tick[rows] += rng.choice([1, 1, 1, 2, 5, 13, 40], size=len(rows))
        truth = rng.normal(size=(len(rows), 2))
        truth[rng.random(truth.shape) < 0.2] = np.nan
        out.append((rows, tick[rows].copy(), truth, rng.normal(size=(len(rows), horizon, 2))))
    return out


def test_scoring_that_waits_counts_every_forecast_as_scoring_at_once_does():
    """Queued truths are scored in one pass later; every forecast is still scored once, against the
    same truth, and the residuals are the same errors in the same order, whatever the ticks skipped."""
    steps = _steps(0, 600)
    now, later = Evaluator(2, 4, residuals=50), Evaluator(2, 4, residuals=50)
    _feed(now, steps, eager=True)
    _feed(later, steps, eager=False)
    a, b = now.scores(), later.scores()
    assert a["n"].sum() > 1000
    np.testing.assert_array_equal(a["n"], b["n"])
    for key in ("mse", "mae", "persistence_mse", "persistence_mae"):
        np.testing.assert_allclose(a[key], b[key], rtol=1e-12)
    np.testing.assert_array_equal(now.conformal.res, later.conformal.res)


def test_pending_forecasts_saved_with_other_slots_are_scored_after_a_load():
    """A checkpoint written when forecasts were kept in H+1 slots loads into this layout, and the
    forecasts it holds are scored by the truths that come after."""
    steps = _steps(1, 200, horizon=4)
    ref, saved = Evaluator(2, 4), Evaluator(2, 4)
    _feed(ref, steps[:150], eager=False)
    _feed(saved, steps[:150], eager=False)
    st = saved.state()
    old = st["tick"].shape[1]
    st["tick"] = np.where(st["tick"] >= 0, st["tick"], -(2**40))  # keep only the newest H+1 per row
    newest = st["tick"].max(axis=1, keepdims=True)
    keep = st["tick"] > newest - 5
    r, s = np.nonzero(keep)
    narrow = {
        "tick": np.full((len(keep), 5), -1),
        "fc": np.full((len(keep), 5, *st["fc"].shape[2:]), np.nan),
        "base": np.full((len(keep), 5, 2), np.nan),
    }
    narrow["tick"][r, st["tick"][r, s] % 5] = st["tick"][r, s]
    narrow["fc"][r, st["tick"][r, s] % 5] = st["fc"][r, s]
    narrow["base"][r, st["tick"][r, s] % 5] = st["base"][r, s]
    assert old > 5 and keep.sum() > 3
    loaded = Evaluator(2, 4)
    loaded.load_state({**st, **narrow})
    _feed(ref, steps[150:], eager=False, start=False)
    _feed(loaded, steps[150:], eager=False, start=False)
    assert loaded.scores()["n"].sum() > st["total"]["n"].sum()
    np.testing.assert_array_equal(ref.scores()["n"], loaded.scores()["n"])
    np.testing.assert_allclose(ref.scores()["mse"], loaded.scores()["mse"], rtol=1e-12)


def test_pending_forecasts_saved_with_their_lower_and_upper_bands_load():
    """Checkpoints of before the half-width was kept (the prediction with its lower and upper band,
    side by side or apart) go on exactly as this layout does: the same forecasts scored, the same
    truths inside their bands."""
    steps = _steps(2, 200, horizon=4)
    ref = Evaluator(2, 4)
    _feed(ref, steps[:150], eager=False)
    st = ref.state()
    pred, half = st["fc"][:, :, :, 0], st["fc"][:, :, :, 1]
    apart = {k: v for k, v in st.items() if k != "fc"} | {"pred": pred, "lo": pred - half, "hi": pred + half}
    side = {**st, "fc": np.stack([pred, pred - half, pred + half], axis=3)}
    assert np.isfinite(half).sum() > 10
    loaded = []
    for old in (apart, side):
        ev = Evaluator(2, 4)
        ev.load_state(old)
        _feed(ev, steps[150:], eager=False, start=False)
        loaded.append(ev.scores())
    _feed(ref, steps[150:], eager=False, start=False)
    want = ref.scores()
    assert want["n"].sum() > st["total"]["n"].sum()
    for got in loaded:
        for key in ("n", "coverage"):
            np.testing.assert_array_equal(got[key], want[key])
        np.testing.assert_allclose(got["mse"], want["mse"], rtol=1e-6)


def test_the_residual_ring_keeps_the_newest_errors_in_arrival_order():
    ev = Evaluator(targets=1, horizon=1, residuals=10)
    rows = np.arange(25)
    for row in rows:
        ev.reset(row)
    seen = []
    for tick, some, scale in ((1, 25, 1.0), (2, 25, 100.0), (3, 7, 1000.0), (4, 3, 5000.0)):  # more than the ring holds, then fewer
        ev.record(rows[:some], np.full(some, tick - 1), np.zeros((some, 1, 3, 1)), np.zeros((some, 1)))
        truth = (rows[:some] + scale)[:, None].astype(float)
        truth[::4] = np.nan  # not observed: not an error
        ev.score(rows[:some], np.full(some, tick), truth)
        ev.flush()
        seen += [abs(x) for x in truth[:, 0] if x == x]
        assert sorted(ev.conformal.res[0, 0]) == sorted(seen[-10:])
    assert ev.conformal.res_n[0, 0] == len(seen)


def test_past_64_streams_the_contenders_of_a_turning_panel_feed_the_gate():
    """With more streams than the gate needs, only a panel of them keeps its contenders' forecasts,
    each stream taking its turn; the gate's errors are those of the right forecasts: the linear
    contender, 0.1 off the truth, persistence, the last value of a white noise, and the recurrent
    one, 1.0 off, come out in that order by their mean squares."""
    rng = np.random.default_rng(7)
    n, horizon = 300, 4
    ev = Evaluator(targets=2, horizon=horizon, contenders=3)
    rows = np.arange(n)
    for row in rows:
        ev.reset(row)
    x = rng.normal(size=(500 + horizon, n, 2))  # the truths, tick by tick
    seen: set[int] = set()
    for tick in range(500):
        ev.score(rows, np.full(n, tick), x[tick])
        ahead = np.swapaxes(x[tick + 1 : tick + 1 + horizon], 0, 1)  # (B, H, T): what is coming
        panel = ev.pending.panel(rows, np.full(n, tick))
        assert isinstance(panel, np.ndarray) and 0 < len(panel) <= 64
        seen.update(panel.tolist())
        linear, recurrent = ahead + 0.1 * rng.normal(size=ahead.shape), ahead + rng.normal(size=ahead.shape)
        band = ev.bands(ahead + 0.5 * rng.normal(size=ahead.shape))
        ev.record(rows, np.full(n, tick), band, x[tick], (recurrent[panel], linear[panel], linear[panel]), panel)
    assert seen == set(range(n))  # every stream took its turn
    count = ev.evidence.errors.count.sum(axis=0)
    assert (count > 1000).all() and (count < 500 * 64).all()
    mse = np.diagonal(ev.evidence.errors.second[0], axis1=-2, axis2=-1) / ev.evidence.errors.weight[0][..., None]  # (H, T, K + 1)
    np.testing.assert_allclose(mse[..., 0], 2.0, rtol=0.25)  # persistence: two unit noises apart
    np.testing.assert_allclose(mse[..., 1], 1.0, rtol=0.25)
    np.testing.assert_allclose(mse[..., 2], 0.01, rtol=0.25)


def test_up_to_64_streams_every_forecast_keeps_its_contenders():
    ev = Evaluator(targets=1, horizon=2, contenders=3)
    for row in range(64):
        ev.reset(row)
    assert ev.pending.panel(np.arange(64), np.zeros(64, int)) == slice(None)
    ev.reset(64)
    assert len(ev.pending.panel(np.arange(65), np.zeros(65, int))) < 65


def test_the_gate_is_drawn_again_as_its_first_errors_double_then_every_tenth_of_its_memory():
    """A new contender's first errors reach the gate within a few passes (each time they have
    doubled), not a tenth of the gate's memory later; once the evidence is mature, a draw waits for
    a tenth of its memory (50 errors here) of new errors."""
    rng = np.random.default_rng(9)
    ev = Evaluator(targets=1, horizon=2, contenders=3, gate_memory=500)
    ev.reset(0)
    versions = []
    for tick in range(2000):
        x = rng.normal(size=(1, 1))
        ev.score(np.array([0]), np.array([tick]), x)
        fc = np.full((1, 2, 1), 0.5)
        ev.record(np.array([0]), np.array([tick]), ev.bands(fc), x[0:1], (fc, fc * 2, fc))
        versions.append((int(ev.evidence.errors.count[:, 0, 0].sum()), ev.evidence.version))
    young = max(v for n, v in versions if n < 50)
    assert young >= 3  # drawn at about 8, 16 and 32 errors: before the 50 of a tenth of the memory
    later = versions[1999][1] - versions[999][1]  # a thousand errors at step 1
    assert 12 <= later <= 22, later
