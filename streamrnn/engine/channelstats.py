"""What channel health knows of each stream's channels: per bank row and channel, the statistics its
checks read and move (health.py), kept as one float and one integer block so that a batch's rows are
gathered and put back in one pass each, grown with the bank, and saved in a checkpoint by name."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np


class Stats:
    """Per bank row and channel, the statistics health keeps (rows x channels each, named views of
    one float and one integer block, so that a batch's rows are gathered and put back in one pass
    each): their growth with the bank, a freed row, and their checkpoint form."""

    FLOATS = (
        "raw",  # the last value that arrived, healthy or not: the held value served
        "last",  # the last healthy value
        "low", "high", "mean",  # the healthy envelope, fading, and its centre
        "change",  # typical |change| between healthy values
        "fast",  # recent |change| between values that arrived
        "trend",  # recent change, signed: a ramp moves one way, noise both
        "rate",  # the share of frames with a value of the channel
        "expect",  # the forecast served for the next frame's value (targets); its tick is ``due``
    )  # fmt: skip
    INTS = ("due", "seen", "run", "longest", "state", "calm", "steady", "alive", "gap", "frames", "age")
    _OPTIONAL = ("expect", "due")  # a checkpoint from before them goes on without

    def __init__(self, channels: int) -> None:
        self.channels = channels
        self._floats = np.zeros((len(self.FLOATS), 0, channels))
        self._ints = np.zeros((len(self.INTS), 0, channels), np.int64)
        self._scratch: dict[np.dtype, np.ndarray] = {}

    @property
    def capacity(self) -> int:
        return self._floats.shape[1]

    def _grow(self, capacity: int) -> None:
        extra = capacity - self.capacity
        self._floats = np.concatenate([self._floats, np.full((len(self.FLOATS), extra, self.channels), np.nan)], axis=1)
        self._ints = np.concatenate([self._ints, np.zeros((len(self.INTS), extra, self.channels), np.int64)], axis=1)

    def _fit(self, rows: np.ndarray) -> None:
        if len(rows) and rows.max() >= self.capacity:  # rows new to this engine: nothing known of them
            self._grow(max(int(rows.max()) + 1, 2 * self.capacity))

    def _gather(self, rows: np.ndarray) -> SimpleNamespace:
        """Copies of every statistic of ``rows``, by name, in scratch blocks kept from one call to
        the next (a fresh block of a thousand rows is a megabyte of new pages: a page fault each)."""
        blocks = []
        for block in (self._floats, self._ints):
            shape = (len(block), len(rows), self.channels)
            scratch = self._scratch.get(block.dtype)
            if scratch is None or scratch.size < np.prod(shape):
                scratch = self._scratch[block.dtype] = np.empty(int(np.prod(shape)), block.dtype)
            blocks.append(block.take(rows, axis=1, out=scratch[: np.prod(shape)].reshape(shape)))
        f, i = blocks
        names = {n: f[k] for k, n in enumerate(self.FLOATS)} | {n: i[k] for k, n in enumerate(self.INTS)}
        return SimpleNamespace(_blocks=(f, i), **names)

    def _put(self, rows: np.ndarray, v: SimpleNamespace) -> None:
        """Put back what :meth:`_gather` took, moved on."""
        f, i = v._blocks
        for k, n in enumerate(self.FLOATS):
            f[k] = getattr(v, n)
        for k, n in enumerate(self.INTS):
            i[k] = getattr(v, n)
        self._floats[:, rows], self._ints[:, rows] = f, i

    def reset(self, row: int) -> None:
        """A stream's row was freed: nothing known of its channels."""
        if row >= self.capacity:
            return
        self._floats[:, row] = np.nan
        self._ints[:, row] = 0

    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of every array (the checkpoint's ``health``)."""
        return {name: getattr(self, name).copy() for name in (*self.FLOATS, *self.INTS)}

    def load_state(self, st: dict | None, capacity: int) -> None:
        """Go on from :meth:`state_dict`; where there is none or it does not fit (an older
        checkpoint), every channel starts afresh, unjudged until it has shown ``warmup`` values."""
        names = (*self.FLOATS, *self.INTS)
        rows = np.shape(st["raw"])[0] if st is not None and "raw" in st else -1
        fits = st is not None and all(np.shape(st[n]) == (rows, self.channels) for n in names if n in st)
        if fits and all(n in st for n in names if n not in self._OPTIONAL):
            self._floats = np.stack(
                [np.asarray(st[n], np.float64) if n in st else np.full((rows, self.channels), np.nan) for n in self.FLOATS]
            )
            self._ints = np.stack(
                [np.asarray(st[n], np.int64) if n in st else np.zeros((rows, self.channels), np.int64) for n in self.INTS]
            )
        else:
            self._floats, self._ints = self._floats[:, :0], self._ints[:, :0]
        if capacity > self.capacity:
            self._grow(capacity)


def _view(block: str, k: int) -> property:
    return property(lambda self: getattr(self, block)[k], doc=f"rows x channels (a view of the {block[1:]} block)")


for _k, _n in enumerate(Stats.FLOATS):
    setattr(Stats, _n, _view("_floats", _k))
for _k, _n in enumerate(Stats.INTS):
    setattr(Stats, _n, _view("_ints", _k))
