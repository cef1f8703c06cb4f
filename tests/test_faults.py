"""Fault injection: one spec format, each kind doing what a broken instrument does, deterministic by seed."""

from __future__ import annotations

import math

import numpy as np
import pytest

from streamrnn.offline import faults

CHANNELS = ("x", "y")


def series(n: int = 600, seed: int = 1) -> np.ndarray:
    """Two channels: x a slow wave with noise (spread about 0.7), y noise around 5."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    return np.stack([np.sin(t / 30) + 0.1 * rng.standard_normal(n), 5 + rng.standard_normal(n)], axis=1)


def injected(spec: str, values: np.ndarray, seed: int = 0, stream: str = "s") -> np.ndarray:
    inject = faults.Injector(faults.parse(spec), CHANNELS, seed)
    return np.array([inject(stream, v) for v in values])


def test_the_spec_reads_kind_channel_onset_length_size_and_stream():
    got = faults.parse("range:x@100+50*40/reactor-01, stuck:y@7")
    assert got == [faults.Fault("range", "x", 100, 50, 40.0, "reactor-01"), faults.Fault("stuck", "y", 7, faults.LENGTH, 0.0)]
    assert str(got[0]) == "range:x@100+50*40/reactor-01" and faults.parse(str(got[0])) == got[:1]
    for bad, says in [("melt:x@1", "not one of"), ("range:x", "expected KIND"), ("range:x@1+0", "length >= 1"), ("", "no fault")]:
        with pytest.raises(ValueError, match=says):
            faults.parse(bad)
    with pytest.raises(ValueError, match="not columns: \\['z'\\]"):
        faults.Injector(faults.parse("bias:z@1"), CHANNELS)


@pytest.mark.parametrize("kind", faults.KINDS)
def test_each_kind_changes_only_its_channel_inside_its_window_and_repeats_by_seed(kind):
    clean = series()
    a, b = injected(f"{kind}:x@300+100", clean), injected(f"{kind}:x@300+100", clean)
    np.testing.assert_array_equal(a, b)  # deterministic
    inside = slice(300, 400)
    np.testing.assert_array_equal(a[:300], clean[:300])
    np.testing.assert_array_equal(a[400:], clean[400:])
    np.testing.assert_array_equal(a[:, 1], clean[:, 1])
    assert not np.array_equal(a[inside, 0], clean[inside, 0], equal_nan=True)


def test_the_kinds_do_what_broken_instruments_do():
    clean = series()
    spread = clean[:300, 0].std(ddof=1)
    lo, hi = clean[:300, 0].min(), clean[:300, 0].max()
    w = slice(300, 400)
    stuck = injected("stuck:x@300+100", clean)
    assert (stuck[w, 0] == clean[299, 0]).all()
    far = injected("range:x@300+100*30", clean)[w, 0]
    beyond = (far < lo - 10 * spread) | (far > hi + 10 * spread)
    assert 0.9 < beyond.mean() < 1.0  # held far out, the true value showing through now and then
    assert np.isclose(np.abs(far[beyond] - np.where(far[beyond] < lo, lo, hi)).max(), 30 * spread)
    spikes = injected("spike:x@300+100*10", clean)[w, 0] - clean[w, 0]
    assert 0 < (spikes != 0).sum() < 20 and np.allclose(np.abs(spikes[spikes != 0]), 10 * spread)
    bias = injected("bias:x@300+100*3", clean)[w, 0] - clean[w, 0]
    assert np.allclose(np.abs(bias), 3 * spread) and len(set(np.sign(bias))) == 1
    drift = np.abs(injected("drift:x@300+100*5", clean)[w, 0] - clean[w, 0])
    assert (np.diff(drift) > 0).all() and np.isclose(drift[-1], 5 * spread)
    assert np.isnan(injected("dropout:x@300+100", clean)[w, 0]).all()
    noise = injected("noise:x@300+100*2", clean)[w, 0] - clean[w, 0]
    assert 1.5 * spread < noise.std() < 2.5 * spread


def test_unmeasured_values_stay_unmeasured_and_a_stream_filter_holds():
    clean = series()
    clean[::5, 0] = np.nan  # a sampled instrument
    got = injected("bias:x@300+100*3", clean)
    np.testing.assert_array_equal(np.isnan(got[:, 0]), np.isnan(clean[:, 0]))
    other = injected("bias:x@300+100*3/reactor-02", clean, stream="reactor-01")
    np.testing.assert_array_equal(other, clean)


def test_a_table_is_faulted_per_stream_in_time_order():
    clean = series(400)
    rows = np.concatenate([clean, clean])  # two streams, interleaved in the file
    streams = ["a", "b"] * 400
    ts = np.repeat(np.arange(400.0), 2)
    values = np.empty_like(rows)
    values[0::2], values[1::2] = clean, clean
    out = faults.Injector(faults.parse("stuck:y@100+50/b"), CHANNELS).table(streams, ts, values, [0, 1])
    np.testing.assert_array_equal(out[0::2], clean)
    assert (out[1::2][100:150, 1] == clean[99, 1]).all() and math.isfinite(out[1, 1])
