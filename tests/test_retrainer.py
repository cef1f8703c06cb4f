"""Background retraining in a child process: verdicts come back, failures and hangs are contained."""

import multiprocessing
import os
import pickle
import signal
import subprocess
import threading
import time

import numpy as np
import pytest
import torch
from conftest import sine_frames, small_settings

from streamrnn.engine import bank
from streamrnn.engine.engine import Engine
from streamrnn.engine.frame import Frame
from streamrnn.engine.snapshot import Snapshot, TrainReport, Verdict
from streamrnn.learning import judge
from streamrnn.learning.retrainer import Retrainer, _recv, _send


def fed(n=300, **over):
    engine = Engine(small_settings(**over))
    for s, ts, v in sine_frames(n, streams=2):
        engine.step([Frame(s, ts, v)])
    return engine


def wait(r: Retrainer, timeout=300.0):
    """The verdict: a deadline that a loaded machine (an interpreter and torch to start) still meets."""
    deadline = time.monotonic() + timeout
    while (done := r.poll()) is None:
        assert time.monotonic() < deadline, "no verdict"
        time.sleep(0.05)
    return done


def gone(pid: int, timeout: float = 30.0) -> bool:
    """The process has ended and been reaped (the retrainer reaps off the engine's thread)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def launched(r: Retrainer) -> int:
    """The child's pid, once the job's thread has started it."""
    deadline = time.monotonic() + 30
    while r.job is not None and r.job.process is None and r.job.verdict is None:
        assert time.monotonic() < deadline, "the child never started"
        time.sleep(0.01)
    assert r.job is not None and r.job.process is not None
    return r.job.process.pid


def champion(engine):
    return {k: v.numpy() for k, v in engine.state_dict().items()}


@pytest.mark.parametrize("streams", [0, 1, 40])
def test_a_snapshot_reaches_the_trainer_whole_in_a_few_buffers_however_many_streams(streams):
    """Over a real pipe, as the trainer gets it: every stream's frames (NaN included), times, counts,
    held values and means come back equal, in two buffers of frames however many streams there are."""
    rng = np.random.default_rng(streams)
    lengths = rng.integers(1, 30, size=streams)
    values = [rng.normal(size=(n, 3)).astype(np.float32) for n in lengths]
    for v in values:
        v[0, 1] = np.nan
    snap = Snapshot(
        [f"s{i}" for i in range(streams)],
        values,
        [rng.normal(size=n) for n in lengths],
        0.2,
        [int(n) + 5 for n in lengths],
        rng.normal(size=(streams, 3)),
        rng.normal(size=(streams, 3)),
    )
    buffers = []
    pickle.dumps(snap, protocol=5, buffer_callback=buffers.append)
    assert len(buffers) <= 6
    a, b = multiprocessing.Pipe()
    threading.Thread(target=_send, args=(a, (snap, "rest"))).start()
    got, rest = _recv(b)
    assert rest == "rest" and got.streams == snap.streams and got.counts == snap.counts and got.holdout_fraction == 0.2
    assert len(got.values) == len(got.ts) == streams
    for g, w in zip(got.values + got.ts, snap.values + snap.ts):
        np.testing.assert_array_equal(g, w)
        assert g.dtype == w.dtype and g.flags.writeable
    np.testing.assert_array_equal(got.held, snap.held)
    np.testing.assert_array_equal(got.centre, snap.centre)


@pytest.mark.parametrize("priority, policy, nice", [("idle", os.SCHED_IDLE, 0), ("low", os.SCHED_OTHER, 19), ("normal", os.SCHED_OTHER, 0)])
def test_the_trainer_runs_at_the_priority_configured(priority, policy, nice):
    from streamrnn.learning.retrainer import _background

    child = subprocess.Popen(["sleep", "30"])
    try:
        _background(child.pid, priority)
        assert os.sched_getscheduler(child.pid) == policy and os.getpriority(os.PRIO_PROCESS, child.pid) == nice
    finally:
        child.kill()
        child.wait()


def test_the_child_gives_the_same_verdict_as_training_in_line():
    engine = fed()
    snap = engine.snapshot()
    r = Retrainer(engine.settings.trainer)
    r.start(snap, engine.spec, champion(engine), seed=1)
    assert r.busy
    pid = launched(r)
    assert os.sched_getscheduler(pid) == os.SCHED_OTHER  # trainer.priority "normal", as the tests run it
    _, verdict, seconds = wait(r)
    assert gone(pid)
    inline = judge.retrain(snap, engine.spec, engine.state_dict(), engine.settings.trainer, seed=1)
    assert verdict.outcome == inline.outcome == "promoted" and seconds > 0 and not r.busy
    # the same fit (same seed, no time limit hit); only float rounding differs with the thread count
    assert abs(verdict.challenger_error - inline.challenger_error) < 1e-4
    for k in inline.state:
        np.testing.assert_allclose(verdict.state[k], inline.state[k], rtol=1e-3, atol=1e-5)


def test_a_hung_trainer_is_killed_at_its_deadline_and_serving_goes_on():
    engine = fed(trainer={"deadline": 1.0, "max_epochs": 10**6, "patience": 10**6, "max_steps": 10**9, "max_seconds": 600.0})
    r = Retrainer(engine.settings.trainer)
    r.start(engine.snapshot(), engine.spec, champion(engine), seed=1)
    pid = launched(r)
    _, verdict, seconds = wait(r)
    assert verdict.outcome == "failed" and "deadline" in verdict.report.error and 1.0 <= seconds < 10
    result = engine.adopt(engine.snapshot(), verdict)
    assert result.outcome == "failed" and engine.version == 0 and engine.counts["retrain_failed"] == 1
    assert gone(pid)


def test_a_trainer_that_dies_is_a_failed_verdict_naming_its_exit_code_and_is_reaped():
    """As when the kernel's OOM killer picks it: the pipe closes, the verdict says so."""
    engine = fed(trainer={"max_epochs": 10**6, "patience": 10**6, "max_steps": 10**9, "max_seconds": 600.0})
    r = Retrainer(engine.settings.trainer)
    r.start(engine.snapshot(), engine.spec, champion(engine), seed=1)
    pid = launched(r)
    time.sleep(0.5)
    os.kill(pid, signal.SIGKILL)
    _, verdict, seconds = wait(r)
    assert verdict.outcome == "failed" and "exit code -9" in verdict.report.error, verdict.report.error
    assert gone(pid) and not r.busy


def test_a_trainer_that_cannot_start_is_a_failed_verdict_and_the_next_one_starts(monkeypatch):
    """Out of processes or memory at fork: the retrain fails, serving and later retrains go on."""
    engine = fed()
    r = Retrainer(engine.settings.trainer)
    real = r.ctx

    class NoFork:
        def Pipe(self):
            return real.Pipe()

        def Process(self, **kw):
            p = real.Process(**kw)
            p.start = lambda: (_ for _ in ()).throw(BlockingIOError(11, "Resource temporarily unavailable"))
            return p

    r.ctx = NoFork()
    r.start(engine.snapshot(), engine.spec, champion(engine), seed=1)
    _, verdict, _ = wait(r)
    assert verdict.outcome == "failed" and "could not start" in verdict.report.error and "BlockingIOError" in verdict.report.error
    r.ctx = real
    r.start(engine.snapshot(), engine.spec, champion(engine), seed=1)
    assert wait(r)[1].outcome == "promoted"


def test_adopting_a_verdict_is_as_if_its_model_had_served_since_the_snapshot():
    """Each stream goes on from the verdict's state at the snapshot, stepped over the frames that came
    after it exactly as serving steps them (held values and running means as they were then); a
    stream new since the snapshot is warmed from blank over its recent frames."""
    engine = fed(gate={"trust": False})  # the model as if it had served: not the trust, which kept the old one's moves
    snap = engine.snapshot()
    verdict = judge.retrain(snap, engine.spec, engine.state_dict(), engine.settings.trainer, seed=1)
    assert verdict.serve == "challenger"
    # the twin: this engine as it was at the snapshot, serving the verdict's model from there on
    st = engine.state()
    st["weights"] = verdict.state
    for stream, i in zip(snap.streams, range(len(snap.streams))):
        st["bank"]["hidden"][:, :, st["bank"]["rows"][stream]] = verdict.hidden[:, :, i]
    twin = Engine(engine.settings)
    twin.load_state(st)
    later = sine_frames(303, streams=2)[600:]  # 3 more frames per stream after the snapshot
    for s, ts, v in later:
        engine.step([Frame(s, ts, v)])
        twin.step([Frame(s, ts, v)])
    new = [Frame("s2", ts, v) for _, ts, v in sine_frames(40, seed=3)]  # a stream the snapshot lacks
    for f in new:
        engine.step([f])
    engine.adopt(snap, verdict)
    assert engine.version == 1
    for stream in ("s0", "s1"):
        row = engine.bank.rows[stream]
        torch.testing.assert_close(
            engine.bank.hidden[:, :, row], twin.bank.hidden[:, :, twin.bank.rows[stream]]
        )  # up to float rounding: a batch of 2 here, of 1 there
        assert not torch.equal(
            engine.bank.hidden[:, :, row], torch.as_tensor(verdict.hidden[:, :, snap.streams.index(stream)])
        )  # the frames moved it
    recent = engine.rings[engine.bank.rows["s2"]].last()[1]
    torch.testing.assert_close(
        engine.bank.hidden[:, :, engine.bank.rows["s2"] : engine.bank.rows["s2"] + 1],
        bank.warm(engine.model, [recent], engine.settings.trainer.rewarm),
    )
    nxt = [Frame(s, ts + 3.0, v) for s, ts, v in later[-2:]]
    np.testing.assert_allclose(engine.step(nxt).values, twin.step(nxt).values, rtol=1e-5, atol=1e-6)  # and so are the next forecasts


@pytest.mark.parametrize("budget,turns", [(2, 4), (1, 8)])
def test_adopting_on_a_budget_serves_the_old_model_until_the_new_one_is_level_then_as_if_at_once(budget, turns):
    """With a budget the catch-up runs over later turns, the old model serving meanwhile, frames that
    arrive meanwhile included; once level, the states are those of adopting at once.

    Turns, in rounds: s0 and s1 are 3 frames behind at the verdict, 6 in all. Budget 2: s0 2 frames;
    one more frame each arrives (s0 2 behind, s1 4); s0 2, s1 2, s1 2 (the round's end); a new
    round finds none behind: level, swapped. Budget 1: a frame a turn, 1 + 7 of them, then none."""
    engine = fed(gate={"trust": False})  # the model as if it had served: not the trust, which kept the old one's moves
    snap = engine.snapshot()
    verdict = judge.retrain(snap, engine.spec, engine.state_dict(), engine.settings.trainer, seed=1)
    frames = sine_frames(310, streams=2)
    for s, ts, v in frames[600:606]:  # 3 frames per stream since the snapshot
        engine.step([Frame(s, ts, v)])
    twin = Engine(engine.settings)
    twin.load_state(engine.state())
    old = twin.model

    result = twin.adopt(snap, verdict, at_once=False)  # 2 streams behind by 3
    assert twin.adopting and twin.model is old and twin.version == 0 and result.version == 1
    engine.adopt(snap, verdict)
    assert not engine.adopting and engine.version == 1
    assert not twin.catch_up(budget) and twin.adopting
    arrivals = [*frames[606:608], *[("s2", ts, v) for _, ts, v in sine_frames(5, seed=3)]]  # and a stream new since
    for s, ts, v in arrivals:
        for e in (engine, twin):
            e.step([Frame(s, ts, v)])
    assert twin.model is old  # served the arrivals
    took = 1
    while not twin.catch_up(budget):
        took += 1
    assert took == turns and twin.version == 1 and twin.model is not old  # the rest, and the frames that came meanwhile
    for stream in ("s0", "s1", "s2"):
        torch.testing.assert_close(twin.bank.hidden[:, :, twin.bank.rows[stream]], engine.bank.hidden[:, :, engine.bank.rows[stream]])
    nxt = [Frame(s, ts + 3.0, v) for s, ts, v in frames[606:608]]
    np.testing.assert_allclose(twin.step(nxt).values, engine.step(nxt).values, rtol=1e-5, atol=1e-6)


def test_a_catch_up_left_half_done_by_a_budget_finishes_at_once_when_asked():
    """As at shutdown, or when the next verdict comes: what a budget left is stepped in one go."""
    engine = fed()
    snap = engine.snapshot()
    verdict = judge.retrain(snap, engine.spec, engine.state_dict(), engine.settings.trainer, seed=1)
    for s, ts, v in sine_frames(310, streams=2)[600:606]:
        engine.step([Frame(s, ts, v)])
    twin = Engine(engine.settings)
    twin.load_state(engine.state())
    engine.adopt(snap, verdict)
    twin.adopt(snap, verdict, at_once=False)
    assert not twin.catch_up(1) and twin.adopting  # one frame of six, the round under way
    assert twin.catch_up() and not twin.adopting and twin.version == 1
    for stream in ("s0", "s1"):
        torch.testing.assert_close(twin.bank.hidden[:, :, twin.bank.rows[stream]], engine.bank.hidden[:, :, engine.bank.rows[stream]])


def test_a_verdict_that_does_not_fit_or_is_not_finite_is_a_failure_and_serving_is_untouched():
    engine = fed()
    snap = engine.snapshot()
    good = judge.retrain(snap, engine.spec, engine.state_dict(), engine.settings.trainer, seed=1)
    assert good.serve == "challenger"
    before = engine.state_dict()
    hidden = engine.bank.hidden.clone()
    some = next(iter(good.state))

    def spoiled(**change):
        return Verdict(
            good.outcome,
            TrainReport(status="ok"),
            serve=good.serve,
            state={**good.state, **change.get("state", {})},
            hidden=change.get("hidden", good.hidden),
        )

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
    # s0 went idle, was evicted and came back since the snapshot: a new stream, warmed, not the old one's state
    assert engine.streams == ["s0"]
    recent = engine.rings[engine.bank.rows["s0"]].last()[1]
    torch.testing.assert_close(
        engine.bank.hidden[:, :, engine.bank.rows["s0"]][:, :, None], bank.warm(engine.model, [recent], engine.settings.trainer.rewarm)
    )
