"""Background retraining in a child process: verdicts come back, failures and hangs are contained."""

import os
import time

import numpy as np
import torch
from conftest import sine_frames, small_settings

from streamrnn import trainer
from streamrnn.engine import Engine, Frame
from streamrnn.retrainer import Retrainer


def fed(n=300, **over):
    engine = Engine(small_settings(**over))
    for s, ts, v in sine_frames(n, streams=2):
        engine.step([Frame(s, ts, v)])
    return engine


def wait(r: Retrainer, timeout=60.0):
    deadline = time.monotonic() + timeout
    while (done := r.poll()) is None:
        assert time.monotonic() < deadline, "no verdict"
        time.sleep(0.05)
    return done


def champion(engine):
    return {k: v.numpy() for k, v in engine.state_dict().items()}


def test_the_child_gives_the_same_verdict_as_training_in_line():
    engine = fed()
    snap = engine.snapshot()
    r = Retrainer(engine.settings.trainer)
    r.start(snap, engine.spec, champion(engine), seed=1)
    assert r.busy
    assert os.sched_getscheduler(r.job.process.pid) == os.SCHED_IDLE  # from its start: serving comes first
    _, verdict, seconds = wait(r)
    inline = trainer.retrain(snap, engine.spec, engine.state_dict(), engine.settings.trainer, seed=1)
    assert verdict.outcome == inline.outcome == "promoted" and seconds > 0 and not r.busy
    # the same fit (same seed, no time limit hit); only float rounding differs with the thread count
    assert abs(verdict.challenger_error - inline.challenger_error) < 1e-4
    for k in inline.state:
        np.testing.assert_allclose(verdict.state[k], inline.state[k], rtol=1e-3, atol=1e-5)


def test_a_hung_trainer_is_killed_at_its_deadline_and_serving_goes_on():
    engine = fed(trainer={"deadline": 1.0, "max_epochs": 10**6, "patience": 10**6, "max_steps": 10**9, "max_seconds": 600.0})
    r = Retrainer(engine.settings.trainer)
    r.start(engine.snapshot(), engine.spec, champion(engine), seed=1)
    pid = r.job.process.pid
    _, verdict, seconds = wait(r)
    assert verdict.outcome == "failed" and "deadline" in verdict.report.error and 1.0 <= seconds < 10
    result = engine.adopt(engine.snapshot(), verdict)
    assert result.outcome == "failed" and engine.version == 0 and engine.counts["retrain_failed"] == 1
    try:
        os.kill(pid, 0)
        raise AssertionError("the trainer process is still alive")
    except ProcessLookupError:
        pass


def test_adopting_a_verdict_advances_each_stream_over_the_frames_that_came_after_the_snapshot():
    engine = fed()
    snap = engine.snapshot()
    verdict = trainer.retrain(snap, engine.spec, engine.state_dict(), engine.settings.trainer, seed=1)
    assert verdict.serve == "challenger"
    later = sine_frames(303, streams=2)[600:]  # 3 more frames per stream after the snapshot
    for s, ts, v in later:
        engine.step([Frame(s, ts, v)])
    engine.adopt(snap, verdict)
    assert engine.version == 1
    model = engine.model
    for stream, i in (("s0", 0), ("s1", 1)):
        row = engine.bank.rows[stream]
        recent = engine.rings[row].last(engine.settings.trainer.rewarm)[1]
        start = torch.as_tensor(verdict.hidden[:, :, i : i + 1])
        want = trainer.warm(model, [recent], engine.settings.trainer.rewarm, start, feed=[3])
        torch.testing.assert_close(engine.bank.hidden[:, :, row : row + 1], want)
        assert not torch.equal(want, start)  # the three frames moved it


def test_a_verdict_that_does_not_fit_or_is_not_finite_is_a_failure_and_serving_is_untouched():
    engine = fed()
    snap = engine.snapshot()
    good = trainer.retrain(snap, engine.spec, engine.state_dict(), engine.settings.trainer, seed=1)
    assert good.serve == "challenger"
    before = engine.state_dict()
    hidden = engine.bank.hidden.clone()
    some = next(iter(good.state))

    def spoiled(**change):
        return trainer.Verdict(good.outcome, trainer.TrainReport(status="ok"), serve=good.serve, state={**good.state, **change.get("state", {})}, hidden=change.get("hidden", good.hidden))

    cases = {
        "not finite": spoiled(state={some: np.full_like(good.state[some], np.nan)}),
        "do not fit": spoiled(state={some: good.state[some][..., :1]}),
        "hidden states": spoiled(hidden=np.full_like(good.hidden, np.inf)),
    }
    for n, (words, verdict) in enumerate(cases.items(), start=1):
        result = engine.adopt(snap, verdict)
        assert result.outcome == "failed" and words in result.report.error, result.report.error
        assert engine.version == 0 and engine.counts["retrain_failed"] == n
        for k, v in engine.state_dict().items():
            assert torch.equal(v, before[k])
        assert torch.equal(engine.bank.hidden, hidden)
    forecasts = engine.step([Frame("s0", 10_000.0, np.array([0.1, 0.2, 0.3, np.nan]))])
    assert len(forecasts) == 1 and np.isfinite(forecasts[0].values[:, 0]).all()  # target a; the key waits for a sample
    assert engine.adopt(snap, good).outcome == "promoted" and engine.version == 1  # the good one still fits
