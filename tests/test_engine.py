"""The engine's own clock: idleness, and what one stream's timestamps can do to the others."""

from __future__ import annotations

import numpy as np
from conftest import small_settings

from streamrnn.engine.engine import Engine
from streamrnn.engine.frame import Frame


def test_one_stream_far_ahead_in_event_time_does_not_evict_the_others_on_the_wall_clock():
    engine = Engine(small_settings(streams={"idle_timeout": 60.0}))
    v = np.array([1.0, 2.0, 3.0, np.nan])
    engine.step([Frame("a", 1000.0, v)], now=5000.0)
    engine.step([Frame("bogus", 1e10, v)], now=5050.0)  # a gateway whose clock is centuries ahead
    assert set(engine.streams) == {"a", "bogus"}
    engine.step([Frame("bogus", 1e10 + 1, v)], now=5100.0)  # 'a' silent for 100 s of wall time
    assert engine.streams == ["bogus"] and engine.counts["evicted"] == 1
    # a replay has only event time: there, frames' timestamps are the clock
    replay = Engine(small_settings(streams={"idle_timeout": 60.0}))
    replay.step([Frame("a", 1000.0, v)])
    replay.step([Frame("b", 1100.0, v)])
    assert replay.streams == ["b"]


def test_a_forgotten_stream_starts_afresh_with_its_next_frame_and_the_others_are_untouched():
    engine = Engine(small_settings())
    v = np.array([1.0, 2.0, 3.0, np.nan])
    for t in range(5):
        engine.step([Frame("a", 1e10 + t, v), Frame("b", 100.0 + t, v + t)])  # 'a' stamped centuries ahead
    b_hidden = engine.bank.hidden[:, :, engine.bank.rows["b"]].clone()
    assert engine.step([Frame("a", 100.0, v)]).streams == [] and engine.counts["late"] == 1  # blind on its old clock
    assert engine.forget("a") and not engine.forget("never-seen")
    got = engine.step([Frame("a", 100.0, v)])  # on its new clock
    assert got.streams == ["a"] and engine.last_ts("a") == 100.0 and engine.rings[engine.bank.rows["a"]].count == 1
    assert (engine.bank.hidden[:, :, engine.bank.rows["b"]] == b_hidden).all()
    assert engine.counts["forgotten"] == 1


def test_reading_the_live_scores_or_checkpointing_never_moves_the_bands():
    """The daemon reads the scores once a second and checkpoints on the wall clock: neither may score
    queued truths early (that redraws the bands at a moment replay would not)."""
    from conftest import sine_frames

    from streamrnn.daemon import checkpoint

    plain, watched = Engine(small_settings()), Engine(small_settings())
    frames = sine_frames(400, streams=2)
    for i, (s, ts, v) in enumerate(frames):
        a, b = plain.step([Frame(s, ts, v)]), watched.step([Frame(s, ts, v)])
        np.testing.assert_array_equal(a.lower, b.lower)
        watched.evaluator.scores(live=True, flush=False)
        if i % 37 == 0:  # a checkpoint, and a restart from it
            restored = Engine(small_settings())
            restored.load_state(checkpoint.decode(checkpoint.encode({"e": watched.state()}))["e"])
            watched = restored
    assert np.isfinite(a.lower).any()  # bands were drawn, and equal throughout
