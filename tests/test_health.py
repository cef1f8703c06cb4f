"""Channel health: a broken sensor is suspect at once, a healthy one is left alone, and what the
engine does with a suspect channel (missing for the others, its own forecast held)."""

from __future__ import annotations

import numpy as np
import torch
from conftest import sine_frames, small_settings

from streamrnn import config
from streamrnn.daemon import checkpoint
from streamrnn.engine.engine import Engine
from streamrnn.engine.forecast import document
from streamrnn.engine.frame import Frame
from streamrnn.engine.health import FROZEN, HEALTHY, NOISY, RANGE, SILENT, SPIKE, Health

CFG = config.HealthSettings()


def wave(n: int, seed: int = 0) -> np.ndarray:
    """One channel that moves as a process does: a slow wave with sensor noise."""
    rng = np.random.default_rng(seed)
    return np.sin(np.arange(n) / 25) + 0.05 * rng.standard_normal(n)


def judged(values: np.ndarray, cfg: config.HealthSettings = CFG) -> tuple[np.ndarray, np.ndarray, Health]:
    """Each value's state and the values as the engine reads them, one stream, one channel."""
    h = Health(1, cfg)
    h.reset(0)
    states, clean = np.zeros(len(values), int), np.zeros(len(values))
    for i, x in enumerate(values):
        c, _, _, _ = h.check(np.array([0]), np.array([[x]]))
        states[i], clean[i] = h.state[0, 0], c[0, 0]
    return states, clean, h


def test_a_healthy_wave_is_never_suspect_and_passes_unchanged():
    x = wave(3000)
    states, clean, h = judged(x)
    assert (states == HEALTHY).all() and not h.counts
    np.testing.assert_array_equal(clean, x)


def test_out_of_range_is_suspect_at_once_read_as_missing_and_healthy_again_after_recover_values():
    x = wave(900)
    x[500:700] = -40.0  # a broken loop: tens of spreads below anything seen
    x[550] = x[600] = 0.5  # the true value showing through: the spell goes on
    states, clean, h = judged(x)
    assert (states[:500] == HEALTHY).all()
    assert (states[500:700] != HEALTHY).all() and (states[500:700] == RANGE).mean() > 0.95 and np.isnan(clean[500:700]).all()
    assert (states[700 : 700 + CFG.recover - 1] == RANGE).all() and (states[700 + CFG.recover - 1 :] == HEALTHY).all()
    assert h.counts == {"range": 1}


def test_a_spike_that_the_next_values_show_to_be_a_broken_loop_is_out_of_range_from_then_on():
    x = wave(900)
    x[500] = 2.5  # far beyond the wave's moves, inside its range: a spike, or a step
    x[501:600] = -40.0  # and then out of range: a loop failing, not a spike
    states, _, h = judged(x)
    assert states[500] == SPIKE and (states[501:600] == RANGE).all()
    assert h.counts == {"spike": 1, "range": 1}


def test_a_confirmed_step_moves_the_channel_s_running_mean_by_the_step_and_a_spike_moves_nothing():
    """The model reads each channel as its deviation from a running mean: a step of one sensor,
    alone (a bias, a recalibration, or the process), is read as a new level, not as a deviation
    every other target would follow at once; a spike that comes back moves nothing."""
    h = Health(2, CFG)
    rows, centre = np.array([0]), np.zeros((1, 2))
    x = wave(600)
    for v in x[:500]:
        h.judge(rows, np.array([[v, v]]), centre)
    assert (centre == 0).all()
    last = x[499]
    _, suspect = h.judge(rows, np.array([[last + 3.0, x[500]]]), centre)  # a move of 60 typical changes: a spike, or a step
    assert suspect[0].tolist() == [True, False] and (centre == 0).all()
    h.judge(rows, np.array([[x[501] + 3.0, x[501]]]), centre)  # it stays there: a step, confirmed
    assert centre[0, 0] == np.float64(x[501] + 3.0 - last) and centre[0, 1] == 0
    centre[:] = 0
    h.judge(rows, np.array([[x[502] + 3.0 + 3.0, x[502]]]), centre)  # a spike from the new level ...
    h.judge(rows, np.array([[x[503] + 3.0, x[503]]]), centre)  # ... and back: nothing moves
    assert (centre == 0).all()


def test_a_frozen_value_is_suspect_after_twice_the_longest_healthy_run_and_healthy_once_it_moves():
    x = np.round(wave(1200), 1)  # quantised: runs of a few equal values are normal
    longest = max(len(r) - 1 for r in np.split(x[:600], np.flatnonzero(np.diff(x[:600])) + 1))  # repeats of one value
    x[600:800] = x[599]
    states, clean, _ = judged(x)
    assert (states[:600] == HEALTHY).all()
    first = 600 + np.argmax(states[600:] == FROZEN)
    run_at_first = first - (600 - np.argmax(x[599::-1] != x[599]))  # its repeats by then
    assert run_at_first == max(CFG.frozen * longest, CFG.min_frozen)
    assert (states[first:800] == FROZEN).all() and (states[800 + CFG.recover :] == HEALTHY).all()


def test_frames_repeated_whole_by_a_historian_are_no_frozen_sensor_but_one_channel_frozen_among_moving_ones_is():
    """Loads quantised to different steps freeze at different repeat counts; a frame repeated in
    every value moves none of them on, however long a channel's own run already was."""
    n = 1500
    x = np.stack([np.round(wave(n), 1), np.round(wave(n, seed=1) * 3, 2), wave(n, seed=2)], axis=1)
    x[600:605, 0] = x[599, 0]  # a's own short run, then the whole frame repeats for 40 frames
    x[605:645] = x[604]
    x[1000:1200, 1] = x[999, 1]  # b stuck while a and c move
    h, states = Health(3, CFG), []
    for row in x:
        h.check(np.array([0]), row[None])
        states.append(h.state[0].copy())
    states = np.array(states)
    assert not (states[:1000] == FROZEN).any()  # (the catch-up after the repeats may be a spike)
    assert (states[1000:1200, 1] == FROZEN).any() and (states[1200 + CFG.recover :] == HEALTHY).all()


def test_a_noise_burst_is_suspect_and_a_sensor_that_stays_noisy_is_its_new_normal():
    x = wave(2000)
    rng = np.random.default_rng(3)
    x[800:900] += 2.0 * rng.standard_normal(100)
    x[1200:] += 2.0 * rng.standard_normal(800)
    states, _, _ = judged(x)
    assert (states[:800] == HEALTHY).all()
    assert (states[800:900] != HEALTHY).mean() > 0.8 and (states[800:900] == NOISY).any()
    assert (states[950:1200] == HEALTHY).all()
    assert (states[1200 + CFG.accept_after + 50 :] == HEALTHY).mean() > 0.9  # accepted, not suspect forever


def test_a_level_out_of_range_that_moves_as_the_process_does_is_soon_the_new_level():
    x = wave(1200)
    x[400:] += 30.0  # a recalibration, or a new operating point, far out: the sensor noise goes on
    states, clean, h = judged(x)
    assert (states[400 : 400 + CFG.accept_moving - 1] == RANGE).all()
    assert (states[400 + CFG.accept_moving :] == HEALTHY).all()
    np.testing.assert_array_equal(clean[400 + CFG.accept_moving :], x[400 + CFG.accept_moving :])


def test_a_transmitter_dead_far_out_of_range_stays_suspect_while_it_sits_there():
    x = wave(1200)
    x[400:] = -40.0  # a transmitter that failed sits where it failed: out of range, then frozen
    states, _, _ = judged(x)
    assert (states[400 : 400 + CFG.accept_after] == RANGE).all()
    assert (states[400 + CFG.accept_after + 1 :] == FROZEN).all()


def test_a_sensor_that_goes_silent_is_suspect_after_eight_of_its_values_are_missing_and_a_sampled_one_is_not():
    h = Health(2, CFG)
    x = wave(1500)
    lab = np.where(np.arange(1500) % 30 == 0, wave(1500, seed=1) + 3, np.nan)  # a lab value, one frame in 30
    x[1000:1100] = np.nan
    states = []
    for i in range(1500):
        h.check(np.array([0]), np.array([[x[i], lab[i]]]))
        states.append(h.state[0].copy())
    states = np.array(states)
    assert (states[:1000] == HEALTHY).all() and (states[:, 1] == HEALTHY).all()
    assert (states[1000:1007, 0] == HEALTHY).all() and (states[1008:1100, 0] == SILENT).all()
    assert (states[1100 + CFG.recover :, 0] == HEALTHY).all()


def test_a_channel_that_never_moved_or_has_shown_too_little_is_not_judged():
    flat = np.full(500, 3.0)
    flat[400:] = 90.0
    assert (judged(flat)[0] == HEALTHY).all()
    short = wave(CFG.warmup - 1)
    short[-1] = 1e3
    assert (judged(short)[0] == HEALTHY).all()


def test_the_engine_reads_a_suspect_channel_as_missing_and_serves_its_target_as_held():
    """Channel a (an input and a target) breaks: its forecast is the value it holds, the others are
    forecast as if it were missing (the untrained model is persistence: as if it were anything), and
    the message says so."""
    settings = small_settings(health={"warmup": 32})
    clean, broken, missing = (Engine(settings) for _ in range(3))
    frames = sine_frames(300)
    for i, (s, ts, v) in enumerate(frames):
        bad, gone = v.copy(), v.copy()
        if i >= 250:
            bad[0], gone[0] = -500.0, np.nan
        a, b, m = (e.step([Frame(s, ts, x)]) for e, x in ((clean, v), (broken, bad), (missing, gone)))
    assert b.suspect == [("a",)] and a.suspect == [()]
    assert (b.values[0, :, 0] == -500.0).all()  # a: held
    np.testing.assert_allclose(b.values[0, :, 1], m.values[0, :, 1], rtol=1e-6)  # key: as if a were missing
    doc = document(b[0], 1.0)
    assert doc["suspect"] == ["a"] and doc["targets"]["a"]["suspect"] and not doc["targets"]["key"]["suspect"]
    assert broken.health.counts["range"] == 1 and list(broken.health.suspects()) == [1, 0, 0, 0]
    ring = broken.rings[0]
    assert np.isnan(ring.last(50)[1][:, 0]).all()  # the trainer never learns from it


def test_a_suspect_target_is_read_as_the_forecast_served_for_its_tick_and_nothing_else_is():
    h = Health(3, CFG)
    rows = np.array([0])
    h.expected(rows, np.array([10]), np.array([[1.5, 2.5]]), np.array([0, 1]))  # channels 0 and 1 are targets
    values = np.full((1, 3), np.nan)  # as judged: suspect values missing
    suspect = np.array([[True, False, True]])  # 1 missing but not suspect; 2 suspect but no target
    np.testing.assert_array_equal(h.impute(rows, np.array([11]), values, suspect), [[1.5, np.nan, np.nan]])
    assert np.isnan(h.impute(rows, np.array([12]), values, suspect)).all()  # forecast for another tick: missing


def test_the_engine_reads_a_suspect_target_as_its_own_forecast_and_never_learns_or_scores_it():
    settings = small_settings(health={"warmup": 32})
    engine = Engine(settings)
    torch.nn.init.normal_(engine.model.fc2.bias, std=0.3)  # a model that forecasts changes: no longer persistence
    for i, (s, ts, v) in enumerate(sine_frames(300)):
        if i >= 250:
            v = v.copy()
            v[0] = -500.0
        row = engine.bank.rows.get(s)
        expect = None if row is None else engine.health.expect[row, 0]
        fc = engine.step([Frame(s, ts, v)])
        if i >= 251:  # suspect: read as its forecast, which moves on as the model says
            assert fc.suspect == [("a",)] and engine.bank.held[row, 0] == expect, i
            assert expect != engine.health.last[row, 0]
    assert np.isnan(engine.rings[0].last(50)[1][:, 0]).all()


def test_health_is_checkpointed_and_an_older_checkpoint_starts_it_afresh():
    settings = small_settings(health={"warmup": 32})
    engine = Engine(settings)
    for i, (s, ts, v) in enumerate(sine_frames(200)):
        if i >= 150:
            v = v.copy()
            v[0] = -500.0
        engine.step([Frame(s, ts, v)])
    state = checkpoint.decode(checkpoint.encode({"e": engine.state()}))["e"]
    restored = Engine(settings)
    restored.load_state(state)
    np.testing.assert_array_equal(restored.health.state[: engine.health.capacity], engine.health.state)
    del state["health"]
    older = Engine(settings)
    older.load_state(state)
    assert (older.health.state == HEALTHY).all() and older.health.capacity >= older.bank.capacity


def test_while_a_sensor_of_a_stream_is_broken_every_target_of_that_stream_is_held_and_no_other_stream_s():
    """Channel c (an input, not a target) breaks in stream s0: both of s0's targets are served as
    held until it is healthy again; s1 is forecast as it would be without s0."""
    settings = small_settings(health={"warmup": 32})
    broken, alone = Engine(settings), Engine(settings)
    for i, (s, ts, v) in enumerate(sine_frames(400, streams=2)):
        if s == "s0" and 300 <= i // 2 < 340:
            v = v.copy()
            v[2] = 1e3
        fc = broken.step([Frame(s, ts, v)])
        if s == "s1":
            np.testing.assert_array_equal(fc.values, alone.step([Frame(s, ts, v)]).values)
        elif 300 <= i // 2 <= 340 + settings.health.recover - 2:  # suspect until recovered
            held = broken.health.raw[broken.bank.rows["s0"]].take(broken._ti)
            assert (fc.values[0] == held.astype(np.float32)).all() or np.isnan(held).any(), i
        else:
            assert not broken.health._incident.any(), i  # before, and once it is over: the gate's forecast


def test_in_an_incident_the_other_targets_are_held_only_where_the_served_forecast_is_not_far_better_than_holding():
    """Two streams, two targets (channels 0 and 1), three steps; stream 0's channel 2 (no target)
    is out of range: its targets are held at the steps where the served forecast's skill is below
    ``incident_skill`` or unknown, and stream 1 is untouched; a suspect target is held whatever its skill."""
    h = Health(3, CFG)
    rows = np.array([0, 1])
    for x in wave(200)[:, None] * [1.0, 2.0, 3.0]:
        h.judge(rows, np.stack([x, x + 0.1]), np.zeros((2, 3)))
    values = np.array([[0.2, 0.4, 40.0], [0.2, 0.4, 0.6]])
    for _ in range(CFG.accept_moving + 1):  # an out-of-range level starts an incident once it is no new operating point
        _, suspect = h.judge(rows, values, np.zeros((2, 3)))
    assert h._incident.tolist() == [True, False] and suspect[:, 2].tolist() == [True, False]
    served = np.full((2, 3, 2), 9.0, np.float32)
    skill = np.array([[0.1, 0.9], [0.6, np.nan], [0.5, 0.49]])  # (H, T)
    bad = suspect[:, :2]
    out, _, _ = h.hold(rows, bad, np.array([0, 1]), served, np.zeros((2, 2)), np.zeros((2, 2), bool), lambda: skill)
    held = np.array([0.2, 0.4], np.float32)
    np.testing.assert_array_equal(out[0], np.where(skill >= CFG.incident_skill, 9.0, held))
    assert (out[1] == 9.0).all()
    bad[0, 0] = True  # target 0 itself suspect: held at every step
    out, _, _ = h.hold(rows, bad, np.array([0, 1]), served, np.zeros((2, 2)), np.zeros((2, 2), bool), lambda: skill)
    assert (out[0, :, 0] == held[0]).all() and out[0, 0, 1] == 9.0


def test_a_spike_is_read_as_missing_and_its_target_held_for_that_frame_without_holding_the_stream():
    settings = small_settings(health={"warmup": 32})
    engine = Engine(settings)
    for i, (s, ts, v) in enumerate(sine_frames(300)):
        if i == 250:
            v = v.copy()
            v[0] += 3.0  # a spike of a (about 50 typical changes), within the range seen
        fc = engine.step([Frame(s, ts, v)])
        if i == 250:
            assert fc.suspect == [("a",)] and (fc.values[0, :, 0] == np.float32(v[0])).all()
            assert not engine.health._incident.any()  # a spike starts no incident: key is forecast as it was
    assert engine.health.counts["spike"] == 1


def test_every_channel_frozen_at_once_is_a_repeated_frame_not_a_broken_sensor():
    h = Health(2, CFG)
    x = np.stack([wave(900), wave(900, seed=2) + 5], axis=1)
    x[500:560] = x[499]  # a historian repeating its last frame (the ETTh1 file's fill days)
    x[700:760, 0] = x[699, 0]  # one transmitter stuck
    states = []
    for row in x:
        h.check(np.array([0]), row[None])
        states.append(h.state[0].copy())
    states = np.array(states)
    assert (states[:560] == HEALTHY).all()  # the frame repeated: nothing suspect (the values jump once it ends)
    assert (states[700:760, 0] == FROZEN).any() and (states[700:760, 1] == HEALTHY).all()
