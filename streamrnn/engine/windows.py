"""Every stream's window of normalised held rows, which the engine serves the linear contender
from (see linear.py): each stream's last ``lookback`` rows, one contiguous slice to gather."""

from __future__ import annotations

import numpy as np


class Windows:
    """The last ``lookback`` normalised held rows of every stream (by bank row), to serve the ridge
    from. Each row is written twice, ``lookback`` apart, so that a stream's window is one contiguous
    slice wherever it starts: gathering a batch's windows is one copy of them, nothing more."""

    def __init__(self, lookback: int, channels: int, rows: int = 0) -> None:
        self.lookback, self.channels = lookback, channels
        self.buf = np.zeros((rows, 2 * lookback * channels), dtype=np.float32)
        self.pos = np.zeros(rows, dtype=np.int64)  # per row, where its next row is written
        self.empty = np.ones(rows, dtype=bool)  # its next row fills the window whole
        self._view = self._windows()

    def _windows(self) -> np.ndarray:
        """(rows, lookback + 1, lookback x channels): every window of every row, as a view."""
        span = self.lookback * self.channels
        return np.lib.stride_tricks.sliding_window_view(self.buf, span, axis=1)[:, :: self.channels]

    def _grow(self, rows: int) -> None:
        had = len(self.pos)
        self.buf = np.concatenate([self.buf, np.zeros((rows - had, self.buf.shape[1]), np.float32)])
        self.pos = np.concatenate([self.pos, np.zeros(rows - had, np.int64)])
        self.empty = np.concatenate([self.empty, np.ones(rows - had, bool)])
        self._view = self._windows()

    def reset(self, row: int) -> None:
        """Forget a row's window: its next row fills it whole."""
        if row < len(self.pos):
            self.empty[row] = True

    def push(self, rows: np.ndarray, z: np.ndarray) -> None:
        """Append one normalised row (B, channels) to each of ``rows`` (distinct)."""
        if len(rows) and rows.max() >= len(self.pos):
            self._grow(max(int(rows.max()) + 1, 2 * len(self.pos)))
        lb = self.lookback
        buf = self.buf.reshape(len(self.buf), 2 * lb, self.channels)
        z = z.astype(np.float32)
        p = self.pos[rows]
        buf[rows, p] = z
        buf[rows, p + lb] = z
        self.pos[rows] = (p + 1) % lb
        fresh = self.empty[rows]
        if fresh.any():
            buf[rows[fresh]] = z[fresh][:, None, :]
            self.empty[rows[fresh]] = False

    def gather(self, rows: np.ndarray) -> np.ndarray:
        """The windows of ``rows``, oldest row first, flattened: (B, lookback x channels) float32."""
        return self._view[rows, self.pos[rows]]

    def state(self) -> dict:
        return {"buf": self.buf.copy(), "pos": self.pos.copy(), "empty": self.empty.copy()}

    def load_state(self, st: dict) -> None:
        """Go on from :meth:`state`; raises ValueError if it was made for another lookback or channels."""
        if st["buf"].shape[1:] != self.buf.shape[1:] or not len(st["pos"]) == len(st["empty"]) == len(st["buf"]):
            raise ValueError(f"linear windows of shape {st['buf'].shape} do not fit lookback {self.lookback} x {self.channels} channels")
        self.buf, self.pos, self.empty = st["buf"].astype(np.float32), st["pos"].astype(np.int64), st["empty"].astype(bool)
        self._view = self._windows()
