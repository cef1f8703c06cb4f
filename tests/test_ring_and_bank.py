from __future__ import annotations

import tracemalloc

import numpy as np
from conftest import small_settings

from streamrnn.engine.engine import Engine
from streamrnn.engine.frame import Frame
from streamrnn.engine.ring import Ring


def test_ring_keeps_the_last_n_in_order():
    r = Ring(8, 2)
    for t in range(20):
        r.append(float(t), np.array([t, -t], dtype=np.float32))
    ts, v = r.last()
    assert list(ts) == list(range(12, 20)) and list(v[:, 0]) == list(range(12, 20))
    ts, _ = r.last(3)
    assert list(ts) == [17, 18, 19]
    assert list(r.since(17.0)[0]) == [18, 19]


def test_ring_last_n_is_the_newest_n_as_copies_at_every_fill_and_wrap():
    for size in (1, 2, 5):
        r, seen = Ring(size, 1), []
        for t in range(3 * size + 2):
            for n in (None, 0, 1, 2, size, size + 1):
                ts, v = r.last(n)
                want = seen[len(seen) - min(len(seen), size if n is None else min(n, size)) :]
                assert list(ts) == want and list(v[:, 0]) == want, (size, t, n)
                if len(ts):
                    ts[0] = v[0, 0] = -1.0  # copies: the ring is untouched
            r.append(float(t), np.array([t], dtype=np.float32))
            seen.append(float(t))
        assert -1.0 not in r.ts and -1.0 not in r.values


def test_ring_memory_is_constant_over_ten_times_its_capacity():
    r = Ring(1000, 14)
    row = np.ones(14)
    for t in range(1000):
        r.append(float(t), row)
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for t in range(1000, 11_000):
        r.append(float(t), row)
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    grown = sum(s.size_diff for s in after.compare_to(before, "filename") if "ring.py" in str(s.traceback))
    assert grown < 1024  # a counter's int object, not the frames
    assert r.nbytes == 1000 * 14 * 4 + 1000 * 8 and len(r) == 1000 and r.count == 11_000


def test_engine_memory_is_constant_once_rings_are_full():
    engine = Engine(small_settings(ring={"size": 200}, trainer={"min_frames": 10**9}))
    v = np.array([1.0, 2.0, 3.0, np.nan])
    for t in range(400):
        engine.step([Frame("s", float(t), v)])
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for t in range(400, 2400):
        engine.step([Frame("s", float(t), v)])
    grown = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert grown < 64 * 1024, grown


def test_stream_cap_holds_and_idle_streams_are_evicted():
    engine = Engine(small_settings(streams={"max_streams": 3, "idle_timeout": 10.0}))
    v = np.array([1.0, 2.0, 3.0, np.nan])
    out = engine.step([Frame(f"s{i}", 0.0, v) for i in range(5)])
    assert sorted(f.stream for f in out) == ["s0", "s1", "s2"]
    assert engine.counts["refused"] == 2 and len(engine.streams) == 3
    # s0 keeps talking; the others go quiet and are evicted, which frees room for new streams
    for t in range(1, 30):
        engine.step([Frame("s0", float(t), v)])
    assert engine.streams == ["s0"] and engine.counts["evicted"] == 2
    out = engine.step([Frame("s9", 30.0, v), Frame("s8", 30.0, v)])
    assert {f.stream for f in out} == {"s9", "s8"}
    assert len(engine.streams) <= 3


def test_late_and_duplicate_frames_are_dropped():
    engine = Engine(small_settings())
    v = np.array([1.0, 2.0, 3.0, np.nan])
    assert len(engine.step([Frame("s", 5.0, v)])) == 1
    assert len(engine.step([Frame("s", 5.0, v)])) == 0 and len(engine.step([Frame("s", 4.0, v)])) == 0
    assert engine.counts["late"] == 2


def test_hidden_state_is_never_part_of_a_graph():
    engine = Engine(small_settings())
    for t in range(5):
        engine.step([Frame("s", float(t), np.array([1.0, 2.0, 3.0, 4.0]))])
    assert not engine.bank.hidden.requires_grad and engine.bank.hidden.grad_fn is None


def test_held_values_and_means_over_a_run_of_frames_go_on_from_where_the_bank_was():
    """``fill`` and ``centres`` from the values held and means at some frame give what the bank holds
    after each later frame: what catching a state up over missed frames relies on."""
    from streamrnn.engine.bank import centres, fill

    engine = Engine(small_settings())
    rng = np.random.default_rng(4)
    frames = rng.normal(size=(30, len(engine.channels)))
    frames[rng.random(frames.shape) < 0.4] = np.nan  # sparse, some channels silent for a while
    frames[:5, 0] = np.nan  # a channel first seen later
    row, seen = None, []
    for t, v in enumerate(frames):
        engine.step([Frame("s", 10.0 * t, v)])
        row = engine.bank.rows["s"]
        seen.append((engine.bank.held[row].copy(), engine.bank.centre[row].copy()))
    alpha = engine.bank.alpha
    for at in (0, 3, 17):
        held0, centre0 = seen[at]
        later = frames[at + 1 :]
        np.testing.assert_array_equal(fill(later, held0), [h for h, _ in seen[at + 1 :]])
        np.testing.assert_allclose(centres(later, alpha, centre0, held0), [c for _, c in seen[at + 1 :]], rtol=1e-12)
    np.testing.assert_allclose(centres(frames, alpha), [c for _, c in seen], rtol=1e-12)  # from nothing seen
