import random

import numpy as np
import pytest

from streamrnn.intake.frames import Assembler
from streamrnn.intake.payload import Reading, Rejected

P = 10.0
T0 = 1767225600.0  # a tick


def asm(**kw):
    base = dict(channels=3, period=P, lateness=P / 2, max_hold=P, idle_close=2.0, max_streams=10, forget_after=3600.0)
    return Assembler(**{**base, **kw})


def grid(ticks, streams=("s",), channels=3):
    """Readings on the grid: value = 100 * tick + channel."""
    return [Reading(s, c, T0 + k * P, 100.0 * k + c) for k in range(ticks) for s in streams for c in range(channels)]


def expire(a, wall):
    """Close every tick of the streams quiet for idle_close at ``wall``, as the daemon's loop does."""
    return [f for name, last in a.due(wall) for f in a.close(name, last)]


def pending(a):
    return sum(len(st.pending) for st in a.streams.values())


def run(a, readings, wall=0.0):
    frames = []
    for r in readings:
        frames += a.add(r, wall)
    return frames + expire(a, wall + 10.0)


def test_one_frame_per_tick_in_order_and_the_last_closes_by_the_wall_clock():
    a = asm()
    frames = []
    for r in grid(5):
        frames += a.add(r, 0.0)
    assert [f.ts for f in frames] == [T0 + k * P for k in range(4)]  # tick 4 waits for later readings
    assert expire(a, 1.0) == []  # not quiet long enough
    last = expire(a, 2.5)
    assert [f.ts for f in last] == [T0 + 4 * P]
    for k, f in enumerate(frames + last):
        np.testing.assert_array_equal(f.values, [100.0 * k, 100.0 * k + 1, 100.0 * k + 2])


def test_shuffled_arrivals_within_the_lateness_give_the_same_frames():
    readings = grid(50, streams=("a", "b"))
    want = run(asm(lateness=2 * P), readings)
    rng = random.Random(3)
    jittered = sorted(readings, key=lambda r: r.ts + rng.uniform(0, 1.9 * P))  # out of order by < lateness
    got = run(asm(lateness=2 * P), jittered)
    key = lambda f: (f.stream, f.ts)
    assert sorted(map(key, got)) == sorted(map(key, want)) and len(got) == 100
    by = {key(f): f.values for f in want}
    for f in got:
        np.testing.assert_array_equal(f.values, by[key(f)])


def test_a_late_reading_is_counted_and_not_folded_in():
    a = asm()
    frames = run(a, grid(3))
    late = a.add(Reading("s", 0, T0 + P, -1.0), 20.0)  # tick 1 closed long ago
    assert late == [] and a.counts["late"] == 1
    assert all(f.values[0] != -1.0 for f in frames)


def test_sample_and_hold_up_to_max_hold_then_missing():
    a = asm(max_hold=3 * P)
    readings = [Reading("s", 0, T0, 1.0)] + [Reading("s", 1, T0 + k * P, float(k)) for k in range(6)]
    frames = run(a, readings)
    assert len(frames) == 6
    held = [f.values[0] for f in frames]
    assert held[:3] == [1.0, 1.0, 1.0] and all(np.isnan(held[3:]))  # age 0, 10, 20 held; 30 is too old
    assert all(np.isnan(f.values[2]) for f in frames)  # never seen


def test_default_hold_puts_a_rare_sample_in_its_own_tick_only():
    a = asm()
    readings = grid(6, channels=2) + [Reading("s", 2, T0 + 2 * P, 7.0)]
    frames = run(a, sorted(readings, key=lambda r: r.ts))
    keys = [f.values[2] for f in frames]
    assert keys[2] == 7.0 and np.isnan(np.delete(keys, 2)).all()


def test_off_grid_readings_go_to_the_next_tick():
    a = asm()
    frames = run(a, [Reading("s", 0, T0 + 3.0, 1.0), Reading("s", 0, T0 + 7.0, 2.0), Reading("s", 0, T0 + 12.0, 3.0)])
    assert [(f.ts, f.values[0]) for f in frames] == [(T0 + P, 2.0), (T0 + 2 * P, 3.0)]  # the newest before the tick


def test_a_gap_yields_no_empty_frames():
    a = asm()
    frames = run(a, [Reading("s", 0, T0, 1.0), Reading("s", 0, T0 + 10_000 * P, 2.0)])
    assert [f.ts for f in frames] == [T0, T0 + 10_000 * P]


def test_streams_are_capped_and_flush_closes_everything():
    a = asm(max_streams=2)
    a.add(Reading("a", 0, T0, 1.0), 0.0)
    a.add(Reading("b", 0, T0, 1.0), 0.0)
    with pytest.raises(Rejected) as e:
        a.add(Reading("c", 0, T0, 1.0), 0.0)
    assert e.value.reason == "capacity"
    assert sorted(f.stream for f in a.flush()) == ["a", "b"]
    assert pending(a) == 0


def test_a_quiet_stream_is_closed_once_then_forgotten_and_a_new_reading_brings_it_back():
    a = asm(forget_after=60.0)
    a.add(Reading("s", 0, T0, 1.0), 0.0)
    a.add(Reading("t", 0, T0, 1.0), 1.5)
    assert a.due(1.9) == []
    assert a.due(2.0) == [("s", a.tick(T0))]  # "t" has been quiet for 0.5 s only
    a.close("s", a.tick(T0))
    assert a.due(3.0) == [] and a.due(3.5) == [("t", a.tick(T0))]  # each named once per silence
    a.close("t", a.tick(T0))
    assert a.due(59.0) == [] and set(a.streams) == {"s", "t"}
    a.add(Reading("t", 0, T0 + P, 2.0), 30.0)  # heard again: quiet from 30 s
    assert a.due(60.5) == [("t", a.tick(T0 + P))] and set(a.streams) == {"t"}  # "s" forgotten
    a.close("t", a.tick(T0 + P))
    assert a.due(90.5) == [] and a.streams == {}


class _ScanAll(Assembler):
    """The wall-clock check as it was: every stream, every call."""

    def due(self, wall, everything=False):
        out = []
        for name, st in list(self.streams.items()):
            quiet = wall - st.wall
            if st.pending and (everything or quiet >= self.idle_close):
                out.append((name, self.tick(st.watermark)))
            elif not st.pending and quiet > self.forget_after:
                del self.streams[name]
        return out


def test_the_wall_clock_check_walks_the_least_recently_heard_and_closes_as_a_scan_of_every_stream_would():
    rng = random.Random(7)
    kw = dict(channels=3, period=P, lateness=P / 2, max_hold=P, idle_close=2.0, max_streams=50, forget_after=8.0)
    new, old = Assembler(**kw), _ScanAll(**kw)
    wall, tick = 0.0, {f"s{i}": 0 for i in range(30)}
    named = 0
    for _ in range(3000):
        wall += rng.expovariate(4.0)
        if rng.random() < 0.7:  # a reading from a few busy streams or, rarely, from any
            s = f"s{rng.randrange(5)}" if rng.random() < 0.8 else f"s{rng.randrange(30)}"
            tick[s] += rng.choice((0, 0, 1, 1, 2))
            r = Reading(s, rng.randrange(3), T0 + tick[s] * P + rng.uniform(-P, 0), rng.random())
            assert sorted_frames(new.add(r, wall)) == sorted_frames(old.add(r, wall))
        else:
            got, want = new.due(wall), old.due(wall)
            assert sorted(got) == sorted(want)
            named += len(got)
            for s, last in got:
                assert sorted_frames(new.close(s, last)) == sorted_frames(old.close(s, last))
            assert set(new.streams) == set(old.streams)
    assert named > 50 and len(old.streams) < 30  # quiet streams were closed, and some forgotten


def sorted_frames(frames):
    return sorted((f.stream, f.ts, tuple(np.nan_to_num(f.values, nan=-9.0))) for f in frames)


def test_a_stream_whose_readings_stay_late_with_its_clock_running_starts_afresh_on_its_new_clock():
    dropped = []
    a = asm(resync_after=30.0, on_drop=dropped.append)
    future = T0 + 10**9  # pushed far ahead once (or its clock jumped back since)
    run(a, [Reading("s", 0, future, 1.0)])
    frames, wall = [], 100.0
    for k in range(10):  # the true clock: every reading late
        wall += 10.0
        frames += a.add(Reading("s", 0, T0 + k * P, float(k)), wall)
    assert a.counts["late"] == 3 and a.counts["resynced"] == 1 and dropped == ["s"]
    frames += expire(a, wall + 5.0)
    assert [f.ts for f in frames] == [T0 + k * P for k in range(3, 10)]  # from the reading that restarted it on
    assert a.counts["late"] == 3  # and nothing since


def test_a_frozen_clock_is_refused_as_late_not_restarted_and_its_readings_are_bounded():
    a = asm(max_pending=50, max_open=20.0, resync_after=30.0)
    frames, wall = [], 0.0
    for i in range(1000):  # a stream that never pauses, its sensors' timestamps stuck
        wall += 0.1
        frames += a.add(Reading("s", i % 3, T0, float(i)), wall)
        frames += expire(a, wall)
        assert len(a.streams["s"].pending) <= 50
    assert [f.ts for f in frames] == [T0]  # its one tick closed once it stayed open max_open seconds
    assert a.counts["stuck"] == 1 and a.counts["overflow"] > 0 and a.counts["late"] > 700
    assert a.counts["resynced"] == 0 and pending(a) == 0


def test_a_busy_stream_closing_ticks_by_event_time_is_never_closed_as_stuck():
    a = asm(max_open=5.0)
    frames = []
    for k, r in enumerate(grid(200)):
        frames += a.add(r, k * 0.5)  # a tick every 1.5 s of wall time, for 300 s
        frames += expire(a, k * 0.5)
    assert len(frames) == 199 and a.counts["stuck"] == 0


def test_at_the_cap_a_new_stream_displaces_the_probationer_heard_least_recently_never_an_established_stream():
    dropped = []
    a = asm(max_streams=3, probation=3, on_drop=dropped.append)
    run(a, grid(4, streams=("real",)))  # established: 4 frames
    a.add(Reading("ph1", 0, T0, 1.0), 1.0)
    a.add(Reading("ph2", 0, T0, 1.0), 2.0)
    a.add(Reading("ph1", 1, T0, 1.0), 3.0)  # heard again: ph2 is now the least recently heard
    a.add(Reading("new", 0, T0, 1.0), 4.0)
    assert set(a.streams) == {"real", "ph1", "new"} and dropped == ["ph2"] and a.counts["displaced"] == 1
    run(a, grid(3, streams=("ph1",)), wall=5.0)
    run(a, grid(3, streams=("new",)), wall=5.0)  # all three established now
    with pytest.raises(Rejected) as e:
        a.add(Reading("one-more", 0, T0, 1.0), 20.0)
    assert e.value.reason == "capacity" and set(a.streams) == {"real", "ph1", "new"}


def test_probation_and_the_pending_bound_survive_a_checkpoint():
    a = asm(max_streams=2, probation=2)
    run(a, grid(3, streams=("real",)))
    a.add(Reading("ph", 0, T0, 1.0), 1.0)
    b = asm(max_streams=2, probation=2)
    b.load_state(a.state(), wall=100.0)
    b.add(Reading("new", 0, T0, 1.0), 101.0)  # displaces the probationer, not the established stream
    assert set(b.streams) == {"real", "new"}
