"""Split-conformal interval bands per (step, target): the ``coverage`` quantile of the most recent
absolute errors of that step and target, pooled over the streams (they share one model).

A quantile of hundreds of errors barely moves with a few more, and drawing it costs more than the
rest of a step: the bands are drawn again once some (step, target) has ``residuals / 50`` new
errors, or gains its first band.
"""

from __future__ import annotations

import math

import numpy as np


class Bands:
    """The recent absolute errors per (step, target) in rings, and the half-widths drawn from them."""

    def __init__(self, horizon: int, targets: int, coverage: float, residuals: int) -> None:
        h, t = horizon, targets
        self.coverage = coverage
        self.res = np.full((h, t, residuals), np.inf)  # the rings of absolute errors
        self.res_n = np.zeros((h, t), dtype=np.int64)  # errors ever added per (step, target)
        self._half: np.ndarray | None = None  # drawn lazily, see half_width
        self._spread = np.zeros((h, 3, t), dtype=np.float32)  # what around() adds to a prediction: 0, -half, +half
        self._new = np.zeros((h, t), dtype=np.int64)  # errors per (step, target) since the bands were drawn
        self._redraw = max(1, residuals // 50)
        self._enough = next(n for n in range(1, residuals + 2) if math.ceil((n + 1) * coverage) <= n or n > residuals)  # errors for a band
        self._shown = np.zeros((h, t), dtype=bool)  # has a band, as last drawn
        self._waiting = True  # some (step, target) has no band yet

    def add(self, ae: np.ndarray, ok: np.ndarray, n: np.ndarray) -> None:
        """The newest absolute errors ``ae`` (B, H, T) where ``ok``, ``n`` (H, T) of them, into each
        (step, target)'s ring in batch order; of more than the ring holds, only the last."""
        size = self.res.shape[2]
        rank = np.cumsum(ok, axis=0, dtype=np.int32)  # of each error in its (step, target), from 1
        kept = np.flatnonzero(ok & (rank > n - size))  # flat (batch, step, target)
        cell = kept % n.size
        self.res.reshape(-1, size)[cell, (self.res_n.ravel()[cell] + rank.ravel()[kept] - 1) % size] = ae.ravel()[kept]
        self.res_n += n
        self._new += n
        if self._new.max() >= self._redraw or (self._waiting and (self._shown != (self.res_n >= self._enough)).any()):
            self._half = None  # drawn again at the next half_width

    def around(self, pred: np.ndarray) -> np.ndarray:
        """Predictions (B, H, T) within their bands: (B, H, 3, T) float32 (as published), the
        prediction, lower and upper side by side; NaN bands where too few errors were seen."""
        self.half_width()
        return pred.astype(np.float32)[:, :, None, :] + self._spread

    def half_width(self) -> np.ndarray:
        """Band half-widths (H, targets); NaN where too few errors were seen for the coverage asked."""
        if self._half is not None:
            return self._half
        size = self.res.shape[2]
        n = np.minimum(self.res_n, size)
        rank = np.ceil((n + 1) * self.coverage).astype(np.int64)  # 1-based, finite-sample conformal
        at = np.clip(rank - 1, 0, size - 1)
        kth = np.unique(at)  # one rank once the residual rings are full: a partition is faster than a sort
        part = np.partition(self.res, kth, axis=2) if len(kth) <= 4 else np.sort(self.res, axis=2)
        q = np.take_along_axis(part, at[..., None], axis=2)[..., 0]
        self._draw(np.where((rank <= n) & np.isfinite(q), q, np.nan))
        self._shown, self._new = self.res_n >= self._enough, np.zeros_like(self._new)
        self._waiting = not self._shown.all()
        return self._half

    def _draw(self, half: np.ndarray) -> None:
        self._half = half
        self._spread[:, 1], self._spread[:, 2] = -half, half

    def state(self) -> dict:
        """The bands as drawn (so that a restart draws them again exactly when this run would)."""
        return {"half": None if self._half is None else self._half.copy(), "new": self._new.copy(), "shown": self._shown.copy()}

    def load_state(self, res: np.ndarray, res_n: np.ndarray, drawn: dict | None) -> None:
        """Go on from the rings and :meth:`state` (None, or one of other steps or targets: drawn anew)."""
        if res.shape != self.res.shape or res_n.shape != self.res_n.shape:
            raise ValueError(f"evaluator state res has shape {res.shape}, this evaluator wants {self.res.shape}")
        self.res, self.res_n = res.copy(), res_n.copy()
        if drawn is not None and drawn["half"] is not None and drawn["half"].shape == self.res_n.shape:
            self._draw(drawn["half"].copy())
            self._new, self._shown = drawn["new"].copy(), drawn["shown"].copy()
            self._waiting = not self._shown.all()
        else:
            self._half = None
