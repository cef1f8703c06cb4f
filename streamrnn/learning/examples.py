"""The linear contender's examples from a snapshot of the rings: which frames' examples are
complete (their ``horizon`` successors arrived) and not learnt before, formed in chunks and learnt
in time order. The retrainer's way of teaching the ridge (:mod:`streamrnn.engine.linear`) from frames."""

from __future__ import annotations

import numpy as np

from streamrnn.engine.linear import OnlineRidge, forward_fill

_CHUNK = 2048  # examples formed at once


def learn_frames(
    ridge: OnlineRidge, streams: list[str], values: list[np.ndarray], ts: list[np.ndarray], counts: list[int], max_examples: int
) -> int:
    """Have ``ridge`` learn the examples of the streams' frames that are complete and not learnt before, then
    solve (choosing the penalty). ``values[i]`` (n, channels) are the last n frames of
    ``streams[i]``, of ``counts[i]`` it ever sent (ring order, NaN where missing), ``ts[i]``
    their times. Of more new examples than ``max_examples``, as many evenly spread over them;
    all in time order, so the recent ones the penalty is chosen on are the newest. Returns how
    many were learnt; a missing value read as held (a suspect spell too: docs/model.md says
    why), a missing truth as forecast (no pull)."""
    h, lb = ridge.horizon, ridge.lookback
    chosen: list[tuple[float, int, int]] = []  # (time, stream, frame) of each new example
    helds = []
    for s, (name, v, stamps, count) in enumerate(zip(streams, values, ts, counts)):
        n = len(v)
        first = count - n  # the global number of the snapshot's first frame
        done = ridge.absorbed.get(name, 0)
        start = max(done, first) if done <= count else first  # a stream restarted since: afresh
        frames = np.arange(start - first, n - h)
        chosen.extend(zip(stamps[frames].tolist(), [s] * len(frames), frames.tolist()))
        helds.append(forward_fill(v))
        ridge.absorbed[name] = max(start, count - h)
    for gone in set(ridge.absorbed) - set(streams):
        del ridge.absorbed[gone]
    if len(chosen) > max_examples:
        chosen = [chosen[i] for i in np.linspace(0, len(chosen) - 1, max_examples).round().astype(int)]
    chosen.sort()
    for at in range(0, len(chosen), _CHUNK):
        part = chosen[at : at + _CHUNK]
        windows = np.stack([_window(helds[s], i, lb) for _, s, i in part])
        after = np.stack([values[s][i + 1 : i + 1 + h] for _, s, i in part])  # NaN where no truth came
        now = np.stack([helds[s][i] for _, s, i in part])
        x, y = ridge.encode(windows, np.array([t for t, _, _ in part])), ridge.changes(now, after)
        ridge.learn_many(x, np.where(np.isnan(y), ridge.predict(x).reshape(len(x), -1), y))  # no truth: no pull
    if chosen:
        ridge.solve(choose=ridge.solves % 8 == 0 or ridge.solves & (ridge.solves - 1) == 0)  # at solves 0, 1, 2, 4, then every 8th
        ridge.solves += 1
    return len(chosen)


def _window(held: np.ndarray, i: int, lookback: int) -> np.ndarray:
    """Rows i - lookback + 1 .. i of ``held``, the first row repeated before the start."""
    lo = i - lookback + 1
    if lo >= 0:
        return held[lo : i + 1]
    return np.concatenate([np.repeat(held[:1], -lo, axis=0), held[: i + 1]])
