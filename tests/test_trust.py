"""Trust: each stream's own errors draw its served forecast toward the held value where its moves
did not pay, and leave it where they did; per stream, from scored errors only, kept in a checkpoint."""

import numpy as np

from streamrnn.engine.evaluator import Evaluator
from streamrnn.engine.trust import Trust

H, T = 4, 2


def _opened(streams: int) -> tuple[Evaluator, np.ndarray]:
    ev, rows = Evaluator(T, H), np.arange(streams)
    for r in rows:
        ev.reset(int(r))
    return ev, rows


def _run(ev: Evaluator, truths: np.ndarray, moves: np.ndarray, rows: np.ndarray, held: float = 0.0) -> np.ndarray:
    """Step ``rows`` through ``truths`` (ticks, B, T), each forecast moving ``moves`` (B, H, T) from
    ``held``; returns the served forecasts the trust drew at each tick (ticks, B, H, T)."""
    base = np.full((len(rows), T), held, np.float32)
    served = []
    for tick, truth in enumerate(truths):
        ticks = np.full(len(rows), tick)
        ev.score(rows, ticks, truth)
        gated = (base[:, None, :] + moves).astype(np.float32)
        drawn = ev.trust.draw(rows, base, gated)
        served.append(drawn)
        ev.record(rows, ticks, ev.bands(drawn), base, gated=gated)
    return np.array(served)


def test_a_stream_whose_moves_go_the_wrong_way_is_drawn_to_its_held_value_and_another_is_left_alone():
    ev, rows = _opened(2)
    rng = np.random.default_rng(0)
    ticks = 400
    moves = np.array([np.full((H, T), 1.0), np.full((H, T), 1.0)], np.float32)
    truths = np.empty((ticks, 2, T), np.float32)
    truths[:, 0] = rng.normal(0.0, 0.3, (ticks, T))  # stream 0 stays where it was: its forecast's move is wrong
    truths[:, 1] = 1.0 + rng.normal(0.0, 0.3, (ticks, T))  # stream 1 goes where its forecast said
    served = _run(ev, truths, moves, rows)
    late = served[-50:]  # long after a half-life of evidence at every step
    assert np.abs(late[:, 0]).max() < 0.35, "the wrong moves are still served"
    assert np.abs(late[:, 1] - 1.0).max() < 0.1, "a forecast whose moves paid was drawn in"
    early = served[:3]
    assert np.abs(early - 1.0).max() < 1e-6, "drawn in before there was evidence"
    # the factor at each step is the least-squares share of the move the truth followed
    k = ev.trust.factor(rows)
    assert (k[0] < 0.3).all() and (k[1] > 0.9).all()


def test_a_drawn_stream_still_sees_whether_its_moves_would_pay_again():
    """The moments are of the gate's forecast before it was drawn in: a stream drawn to its held
    value goes back to its forecast once the truth follows the moves again."""
    ev, rows = _opened(1)
    moves = np.full((1, H, T), 1.0, np.float32)
    truths = np.concatenate([np.zeros((300, 1, T)), np.ones((600, 1, T))]).astype(np.float32)
    served = _run(ev, truths, moves, rows)
    assert np.abs(served[290, 0]).max() < 0.05, "not drawn in while the moves were wrong"
    assert np.abs(served[-1, 0] - 1.0).max() < 0.05, "still drawn in long after the moves paid again"


def test_only_scored_truths_move_the_trust_and_a_suspect_target_teaches_nothing():
    """A forecast whose prediction was blanked (a suspect target, unscored) and a truth that did not
    arrive fold nothing; nothing is drawn from a forecast not yet due."""
    ev, rows = _opened(1)
    base = np.zeros((1, T), np.float32)
    gated = np.ones((1, H, T), np.float32)
    for tick in range(200):
        ticks = np.array([tick])
        ev.score(rows, ticks, np.array([[0.0, np.nan]], np.float32))  # target 1 never observed
        band = ev.bands(gated)
        band[:, :, 0, 0] = np.nan  # target 0 suspect: its prediction blanked, as health does
        ev.record(rows, ticks, band, base, gated=gated)
    assert (ev.trust.moments[0] == 0).all()
    assert (ev.trust.factor(rows) == 1.0).all()


def test_the_trust_is_kept_in_a_checkpoint_and_an_older_one_starts_it_afresh():
    ev, rows = _opened(2)
    rng = np.random.default_rng(1)
    _run(ev, rng.normal(0, 0.3, (200, 2, T)).astype(np.float32), np.ones((2, H, T), np.float32), rows)
    st = ev.state()
    again = Evaluator(T, H)
    again.load_state(st)
    np.testing.assert_array_equal(again.trust.factor(rows), ev.trust.factor(rows))
    assert (again.trust.factor(rows) < 0.5).all()
    older = {k: v for k, v in st.items() if k not in ("trust", "move")}
    fresh = Evaluator(T, H)
    fresh.load_state(older)
    assert (fresh.trust.factor(rows) == 1.0).all()


def test_off_serves_the_gate_s_forecast_as_it_is():
    trust = Trust(H, T, enabled=False)
    served = np.ones((1, H, T), np.float32)
    assert trust.draw(np.array([0]), np.zeros((1, T), np.float32), served) is served
