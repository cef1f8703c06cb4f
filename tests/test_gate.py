"""The gate: which contender is served, per target and step, judged only on errors already scored."""

from __future__ import annotations

import numpy as np
from conftest import sine_frames, small_settings

from streamrnn.engine import gate
from streamrnn.engine.engine import Engine
from streamrnn.engine.frame import Frame
from streamrnn.learning import judge


def moments_of(errors: np.ndarray) -> np.ndarray:
    """Second moments (H=1, T=1, K, K) of errors (n, K)."""
    return (errors.T @ errors)[None, None]


def errors_of(*steps: np.ndarray, count: float | None = None) -> gate.Errors:
    """The gate's evidence (one regime, one target) from the errors (n, K + 1) of each step, with
    every error weighed as one; ``count``: the errors scored per step, if not n."""
    e = gate.Errors.zeros(len(steps), 1)
    for h, err in enumerate(steps):
        e.second[0, h, 0], e.fourth[0, h, 0] = err.T @ err, (err * err).T @ (err * err)
        e.weight[0, h, 0] = e.weight2[0, h, 0] = len(err)
        e.count[0, h, 0] = len(err) if count is None else count
    return e


def test_the_combination_is_never_worse_than_the_best_contender_on_the_errors_it_was_drawn_from():
    rng = np.random.default_rng(0)
    for trial in range(50):
        common = rng.normal(size=(400, 1)) * rng.uniform(0, 3)
        errors = common + rng.normal(size=(400, 3)) * rng.uniform(0.1, 2, size=3) + rng.normal(size=3) * rng.uniform(0, 1)
        w = gate._weights(moments_of(errors), np.array([[True]]))[:, 0, 0]
        assert (w >= -1e-12).all() and abs(w.sum() - 1) < 1e-9, w
        combined = ((errors @ w) ** 2).mean()
        assert combined <= (errors**2).mean(axis=0).min() * (1 + 1e-6), (trial, w)


def test_a_mixer_copies_a_contender_a_cell_has_whole_and_weighs_the_rest_and_the_wild_forecasts_by_their_own_weights():
    rng = np.random.default_rng(5)
    b, h, t = 7, 3, 4
    base, recurrent, linear = rng.normal(size=(b, t)), rng.normal(size=(b, h, t)), rng.normal(size=(b, h, t))
    calm = rng.dirichlet(np.ones(3), size=(h, t)).transpose(2, 0, 1)  # (K, H, T), blends
    calm[:, 0, :3] = np.eye(3)  # step 1: the first three targets one contender's each
    linear[:, 0, 1] = np.inf  # a contender not chosen does not leak into a chosen one's copy
    wild_w = np.zeros_like(calm)
    wild_w[0] = 1.0  # wild: persistence
    wild = rng.uniform(size=(b, h, t)) < 0.3
    out = gate.Mixer(calm)(base, recurrent, linear, (np.nonzero(wild), wild_w))
    sources = (np.broadcast_to(base[:, None, :], (b, h, t)), recurrent, linear)
    for i in range(b):
        for k in range(h):
            for j in range(t):
                w = (wild_w if wild[i, k, j] else calm)[:, k, j]
                want = sources[int(np.argmax(w))][i, k, j] if w.max() == 1 else sum(w[c] * s[i, k, j] for c, s in enumerate(sources))
                assert out[i, k, j] == want, (i, k, j)
    np.testing.assert_array_equal(out[:, 0, 2][~wild[:, 0, 2]], linear[:, 0, 2][~wild[:, 0, 2]])


def test_before_warmup_the_recurrent_model_serves_alone_and_after_it_the_best_that_beat_persistence():
    rng = np.random.default_rng(1)
    errors = rng.normal(size=(400, 4)) * np.array([1.0, 2.0, 0.5, 1.5])  # the linear family best, by far
    _, served = gate.weights(errors_of(errors, count=10), warmup=50)
    np.testing.assert_array_equal(served[0, :, 0, 0], [0, 1, 0])  # too few errors: the recurrent model
    _, served = gate.weights(errors_of(errors), warmup=50)
    np.testing.assert_array_equal(served[0, :, 0, 0], [0, 0, 1])
    errors[:, 3] *= 0.1  # now the combination did best: it is served
    mixed, served = gate.weights(errors_of(errors), warmup=50)
    np.testing.assert_array_equal(served, mixed)


def test_a_lead_within_chance_keeps_persistence_and_the_same_lead_over_many_errors_does_not():
    rng = np.random.default_rng(2)

    def draw(n: int) -> np.ndarray:  # independent errors whose mean squares are exactly these
        e = rng.normal(size=(n, 4))
        return e / np.sqrt((e * e).mean(axis=0)) * np.sqrt([1.0, 1.1, 0.9, 1.1])  # the linear family 10 % ahead

    _, served = gate.weights(errors_of(draw(100)), warmup=50)
    np.testing.assert_array_equal(served[0, :, 0, 0], [1, 0, 0])
    _, served = gate.weights(errors_of(draw(20000)), warmup=50)
    np.testing.assert_array_equal(served[0, :, 0, 0], [0, 0, 1])


def test_errors_far_ahead_need_as_many_more_to_count_and_thin_steps_borrow_from_their_target():
    """An error k steps ahead shares k - 1 steps with the forecasts made just before and after it:
    a step counts only one in k of its errors, and one with too few is judged on its target's
    errors pooled over the steps."""
    rng = np.random.default_rng(3)
    near = rng.normal(size=(400, 4)) * np.array([1.0, 3.0, 0.3, 3.0])  # the linear family best
    far = rng.normal(size=(400, 4)) * np.array([1.0, 3.0, 1.2, 3.0])  # persistence best, not by much
    steps = (near, near, far, far)
    _, served = gate.weights(errors_of(*steps, count=10), warmup=50)
    np.testing.assert_array_equal(served[0, gate.RECURRENT, :, 0], [1, 1, 1, 1])  # nowhere enough
    # 120 errors: steps 1 and 2 have 120 / k >= 50 errors' worth of their own, steps 3 and 4 not:
    # the pooled errors, mostly those of the nearer steps, choose the linear family for them too
    _, served = gate.weights(errors_of(*steps, count=120), warmup=50)
    np.testing.assert_array_equal(served[0, gate.LINEAR, :, 0], [1, 1, 1, 1])
    _, served = gate.weights(errors_of(*steps, count=400), warmup=50)  # now every step has its own
    np.testing.assert_array_equal(served[0, gate.LINEAR, :, 0], [1, 1, 0, 0])
    np.testing.assert_array_equal(served[0, gate.PERSISTENCE, :, 0], [0, 0, 1, 1])


def gate_run(frames: list, settings) -> tuple[list, list]:
    engine = Engine(settings)
    forecasts, choices = [], []
    for s, ts, v in frames:
        forecasts.append(engine.step([Frame(s, ts, v)]))
        if engine.linear_due:
            judge.linear_in_line(engine)
        elif engine.retrain_due:
            judge.in_line(engine)
        choices.append(engine.gate_weights()[0][1].copy())
    return forecasts, choices


def test_the_gate_chooses_only_on_values_that_had_arrived():
    """Values poisoned from frame P on change no choice and no forecast made before P."""
    settings = small_settings(gate={"warmup": 5, "memory": 50}, linear={"lookback": 8, "refit_every": 16})
    frames = sine_frames(600)
    poison = 450
    dirty = [(s, ts, (v * 1e3 + 7.0) if i >= poison else v) for i, (s, ts, v) in enumerate(frames)]
    clean_fc, clean_gate = gate_run(frames, settings)
    dirty_fc, dirty_gate = gate_run(dirty, settings)
    recurrent_alone = np.zeros_like(clean_gate[0])
    recurrent_alone[:, gate.RECURRENT] = 1.0
    assert any(not np.array_equal(w, recurrent_alone) for w in clean_gate[:poison]), "the gate never chose"
    for i in range(poison):
        np.testing.assert_array_equal(clean_gate[i], dirty_gate[i])
        np.testing.assert_array_equal(clean_fc[i].values, dirty_fc[i].values)
    assert any(not np.array_equal(a, b) for a, b in zip(clean_gate[poison:], dirty_gate[poison:]))  # and it reads them once they arrive


def test_a_target_with_too_few_errors_of_its_own_goes_by_its_regime():
    """A rarely measured target (a lab value) borrows the choice of its regime's other targets."""
    rng = np.random.default_rng(4)
    e = gate.Errors.zeros(1, 3)
    for t, n in enumerate((400, 400, 20)):  # the third target: 20 errors, below the warmup
        err = rng.normal(size=(n, 4)) * np.array([1.0, 3.0, 0.4, 3.0])  # the linear family best
        e.second[0, 0, t], e.fourth[0, 0, t] = err.T @ err, (err * err).T @ (err * err)
        e.weight[0, 0, t] = e.weight2[0, 0, t] = e.count[0, 0, t] = n
    _, served = gate.weights(e, warmup=50)
    np.testing.assert_array_equal(served[0, gate.LINEAR, 0], [1, 1, 1])
    e.count[0, 0] = 10  # now not even all three together have enough: the recurrent model everywhere
    _, served = gate.weights(e, warmup=50)
    np.testing.assert_array_equal(served[0, gate.RECURRENT, 0], [1, 1, 1])


def test_a_step_whose_errors_have_faded_goes_by_its_target_however_many_it_has_seen():
    """After a long run a far step has seen thousands of errors, but within the gate's memory only a
    few dozen effective ones, one in k of them news: it is judged on its target's steps pooled."""
    rng = np.random.default_rng(6)
    near = rng.normal(size=(400, 4)) * np.array([1.0, 3.0, 0.3, 3.0])  # the linear family best
    far = rng.normal(size=(400, 4)) * np.array([1.0, 3.0, 1.2, 3.0])  # persistence best, not by much
    e = errors_of(near, far)
    _, served = gate.weights(e, warmup=50)
    np.testing.assert_array_equal(served[0, :, 1, 0], [1, 0, 0])  # 200 effective errors of its own: persistence
    e.count[:] = 100_000  # a long run, with weights of a memory of 100 errors: 100 / 2 effective at step 2
    scale = 100 / 400
    e.second[0, 1] *= scale
    e.fourth[0, 1] *= scale
    e.weight[0, 1] = 100.0
    e.weight2[0, 1] = 100.0
    _, served = gate.weights(e, warmup=60)
    np.testing.assert_array_equal(served[0, :, 1, 0], [0, 0, 1])  # its target's: the linear family


def test_a_step_with_little_evidence_of_its_own_is_weighed_toward_its_target():
    """The combination of a step with a few dozen effective errors lies between the one its own
    errors alone would draw and its target's, nearer its own the more errors it has."""
    rng = np.random.default_rng(8)
    near = rng.normal(size=(4000, 4)) * np.array([1.0, 3.0, 0.5, 3.0])
    odd = rng.normal(size=(120, 4)) * np.array([1.0, 0.8, 1.5, 3.0])  # the recurrent model best here
    mixed, _ = gate.weights(errors_of(near, odd), warmup=50)
    alone = gate._weights(moments_of(odd), np.array([[True]]))[:, 0, 0]
    assert alone[gate.RECURRENT] > 0.5 > alone[gate.LINEAR]
    got = mixed[0, :, 1, 0]
    assert mixed[0, gate.LINEAR, 0, 0] > got[gate.LINEAR] > alone[gate.LINEAR]
    more, _ = gate.weights(errors_of(near, np.tile(odd, (4, 1))), warmup=50)
    assert got[gate.RECURRENT] < more[0, gate.RECURRENT, 1, 0] < alone[gate.RECURRENT] + 1e-9
