"""Per-stream ring buffer of the last N frames, in arrays allocated once: constant memory at any uptime.

A missing value is stored as NaN, so the mask is ``isfinite(values)``: one source of truth.
"""

from __future__ import annotations

import numpy as np


class Ring:
    """The last ``size`` frames of one stream: values (size, channels) float32 and ts (size,) float64."""

    __slots__ = ("values", "ts", "count", "size")

    def __init__(self, size: int, channels: int) -> None:
        self.values = np.full((size, channels), np.nan, dtype=np.float32)
        self.ts = np.full(size, np.nan, dtype=np.float64)
        self.count = 0  # frames ever appended
        self.size = size

    def __len__(self) -> int:
        return self.size if self.count > self.size else self.count

    def append(self, ts: float, values: np.ndarray) -> None:
        i = self.count % self.size
        self.values[i] = values
        self.ts[i] = ts
        self.count += 1

    def last(self, n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Copies of the last ``n`` frames (all held if None), oldest first: (ts (n,), values (n, C))."""
        held = len(self)
        n = held if n is None else min(n, held)
        start, end = (self.count - n) % self.size, self.count % self.size or self.size
        if start < end or not n:  # in one piece
            return self.ts[start : start + n].copy(), self.values[start : start + n].copy()
        return np.concatenate([self.ts[start:], self.ts[:end]]), np.concatenate([self.values[start:], self.values[:end]])

    def since(self, ts: float) -> tuple[np.ndarray, np.ndarray]:
        """Copies of the frames newer than ``ts``, oldest first."""
        t, v = self.last()
        keep = t > ts
        return t[keep], v[keep]

    @property
    def nbytes(self) -> int:
        return self.values.nbytes + self.ts.nbytes
