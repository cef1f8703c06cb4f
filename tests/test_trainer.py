from __future__ import annotations

import numpy as np
import torch
from conftest import sine_frames, small_settings

from streamrnn.engine.engine import Engine
from streamrnn.engine.frame import Frame
from streamrnn.engine.model import ModelSpec, build
from streamrnn.engine.snapshot import Snapshot, TrainReport
from streamrnn.learning import judge, trainer


def _snapshot(frames, holdout=0.15) -> Snapshot:
    streams = sorted({s for s, _, _ in frames})
    vals = [np.stack([v for s, _, v in frames if s == name]).astype(np.float32) for name in streams]
    ts = [np.array([t for s, t, _ in frames if s == name]) for name in streams]
    return Snapshot(streams, vals, ts, holdout)


def test_trainer_lowers_the_masked_loss_on_a_sine():
    settings = small_settings()
    spec = ModelSpec.from_settings(settings)
    snap = _snapshot(sine_frames(600, streams=2))
    state, rep = trainer.train(snap, spec, build(spec).state_dict(), settings.trainer, seed=1)
    assert rep.status == "ok", rep.error
    assert rep.val_loss < 0.8 * rep.initial_val_loss, rep


def test_a_target_seen_in_one_frame_of_twenty_still_trains():
    settings = small_settings(features={"targets": ["key"]})
    spec = ModelSpec.from_settings(settings)
    snap = _snapshot(sine_frames(1200, key_every=20))
    state, rep = trainer.train(snap, spec, build(spec).state_dict(), settings.trainer.model_copy(update={"max_epochs": 15}), seed=2)
    assert rep.status == "ok", rep.error
    assert rep.val_loss < 0.8 * rep.initial_val_loss, rep
    candidate = build(spec)
    candidate.load_state_dict(state)
    scale = trainer.change_scale([v.astype(np.float64) for v in snap.values], spec, [None])
    assert judge.holdout_error(candidate, snap, scale) < judge.holdout_error(build(spec), snap, scale)


def test_trainer_learns_on_the_simulator():
    from streamrnn import config
    from streamrnn.offline import simulator

    settings = config.load(None, device="cpu", model={"hidden_size": 32}, trainer={"max_epochs": 8, "max_seconds": 3600.0})
    spec = ModelSpec.from_settings(settings)
    frames = [("r", ts, v[0]) for ts, v in simulator.Reactor(1, seed=5).run(1500)]
    snap = _snapshot(frames)
    state, rep = trainer.train(snap, spec, build(spec).state_dict(), settings.trainer, seed=0)
    assert rep.status == "ok", rep.error
    assert rep.val_loss < 0.9 * rep.initial_val_loss, rep


def _fed_engine(**over) -> Engine:
    engine = Engine(small_settings(trainer={"min_frames": 10**9}, **over))
    for s, ts, v in sine_frames(400, streams=2):
        engine.step([Frame(s, ts, v)])
    return engine


def test_nan_loss_leaves_the_serving_model_untouched(monkeypatch):
    engine = _fed_engine()
    before = engine.state_dict()
    monkeypatch.setattr(trainer, "masked_loss", lambda *a: torch.tensor(float("nan"), requires_grad=True))
    result = judge.in_line(engine)
    assert result.outcome == "failed" and "non-finite" in result.report.error
    assert engine.version == 0 and engine.counts["retrain_failed"] == 1
    for k, v in engine.state_dict().items():
        assert torch.equal(v, before[k])
    assert len(engine.step([Frame("s0", 400.0, np.array([0.1, 0.2, 0.3, np.nan]))])) == 1  # still serving


def test_an_exception_in_training_is_a_failed_report(monkeypatch):
    engine = _fed_engine()

    def boom(*a, **k):
        raise MemoryError("out of memory")

    monkeypatch.setattr(trainer, "prepare", boom)
    result = judge.in_line(engine)
    assert result.outcome == "failed" and "MemoryError" in result.report.error and engine.version == 0


def test_champion_challenger_promotes_a_better_model_and_rewarms():
    engine = _fed_engine()
    result = judge.in_line(engine)
    assert result.outcome == "promoted", result
    assert result.challenger_error < result.champion_error and engine.version == 1
    # re-warmed: the hidden state is that of the new model after the recent frames, not zeros
    assert engine.bank.hidden.abs().sum() > 0
    fc = engine.step([Frame("s0", 400.0, np.array([0.1, 0.2, 0.3, np.nan]))])[0]
    assert fc.version == 1


def test_a_worse_challenger_is_rejected_and_serving_unchanged():
    engine = _fed_engine()
    judge.in_line(engine)  # a decent champion
    champion = engine.state_dict()
    snap = engine.snapshot()
    bad = {k: v.clone() for k, v in champion.items()}
    bad["fc2.bias"] += 3.0  # a constant large change at every step: far worse than the champion
    state, rep = bad, TrainReport(status="ok")
    result = engine.adopt(snap, judge.judge(snap, engine.spec, champion, state, rep, engine.settings.trainer))
    assert result.outcome == "rejected" and result.challenger_error > result.champion_error
    assert engine.version == 1
    for k, v in engine.state_dict().items():
        assert torch.equal(v, champion[k])
