"""Scores forecasts when their truth arrives, never earlier, and draws the interval bands.

A forecast for step k made at tick n waits, per stream, until the frame of tick n + k comes; only a
value observed in that frame scores it. Per target and step: MSE and MAE of the model and of the
persistence forecast (the last observed value when the forecast was made), skill
``1 - MSE_model / MSE_persistence``, and the realised coverage of the bands. The bands are
split-conformal: the ``coverage`` quantile of the recent absolute errors of that target and step,
pooled over the streams (they share one model).
"""

from __future__ import annotations

import math

import numpy as np

_TOTALS = ("n", "se", "se_p", "ae", "ae_p", "n_band", "hit")
_ARRAYS = ("tick", "pred", "lo", "hi", "base", "res", "res_n")  # kept in a checkpoint


class Evaluator:
    def __init__(self, targets: int, horizon: int, coverage: float = 0.9, residuals: int = 500, live_window: int = 1000) -> None:
        self.targets, self.horizon, self.coverage = targets, horizon, coverage
        h, t = horizon, targets
        self._slots = h + 1
        # Pending forecasts per stream row, in slots by tick modulo H+1.
        self._tick = np.zeros((0, self._slots), dtype=np.int64)
        self._pred = np.zeros((0, self._slots, h, t))
        self._lo = np.zeros((0, self._slots, h, t))
        self._hi = np.zeros((0, self._slots, h, t))
        self._base = np.zeros((0, self._slots, t))
        # Running totals since start, and exponentially weighted ones for the live view.
        self.total = {k: np.zeros((h, t)) for k in _TOTALS}
        self.live = {k: np.zeros((h, t)) for k in _TOTALS}
        self._decay = 1.0 - 1.0 / live_window
        # Recent absolute errors per (step, target) for the bands.
        self._res = np.full((h, t, residuals), np.inf)
        self._res_n = np.zeros((h, t), dtype=np.int64)
        self._half: np.ndarray | None = None
        self._ks = np.arange(1, h + 1)

    # -- per-stream pending forecasts -------------------------------------------------------
    def _ensure(self, row: int) -> None:
        if row < len(self._tick):
            return
        extra = max(row + 1, 2 * len(self._tick)) - len(self._tick)
        grow = lambda a, fill: np.concatenate([a, np.full((extra, *a.shape[1:]), fill, a.dtype)])  # noqa: E731
        self._tick = grow(self._tick, -1)
        self._pred, self._lo, self._hi = grow(self._pred, np.nan), grow(self._lo, np.nan), grow(self._hi, np.nan)
        self._base = grow(self._base, np.nan)

    def reset(self, row: int) -> None:
        """Forget a stream's pending forecasts (its row is reused or its state was replaced)."""
        self._ensure(row)
        self._tick[row] = -1

    def score(self, row: int, tick: int, truth: np.ndarray) -> None:
        """Score what was forecast for ``tick`` against ``truth`` (targets,), NaN where not observed."""
        self._ensure(row)
        made = tick - self._ks  # (H,) ticks at which a forecast for this tick was made
        slots = made % self._slots
        valid = self._tick[row, slots] == made  # (H,)
        if not valid.any():
            return
        k = np.nonzero(valid)[0]
        s = slots[k]
        pred = self._pred[row, s, k]  # (K, T): step k+1 of the forecast made k+1 ticks ago
        base = self._base[row, s]  # (K, T)
        ok = np.isfinite(truth) & np.isfinite(pred) & np.isfinite(base)
        if not ok.any():
            return
        err = np.where(ok, pred - truth, 0.0)
        err_p = np.where(ok, base - truth, 0.0)
        lo, hi = self._lo[row, s, k], self._hi[row, s, k]
        banded = ok & np.isfinite(lo)
        hit = banded & (lo <= truth) & (truth <= hi)
        add = {"n": ok, "se": err**2, "se_p": err_p**2, "ae": np.abs(err), "ae_p": np.abs(err_p), "n_band": banded, "hit": hit}
        for name, v in add.items():
            self.total[name][k] += v
            lv = self.live[name]
            lv[k] = np.where(ok, lv[k] * self._decay + v, lv[k])
        kk, tt = np.nonzero(ok)
        ks = k[kk]
        self._res[ks, tt, self._res_n[ks, tt] % self._res.shape[2]] = np.abs(err[kk, tt])
        self._res_n[ks, tt] += 1
        self._half = None

    def record(self, row: int, tick: int, pred: np.ndarray, lower: np.ndarray, upper: np.ndarray, base: np.ndarray) -> None:
        """Keep a forecast made at ``tick``: pred/lower/upper (H, targets), base (targets,) = persistence."""
        self._ensure(row)
        s = tick % self._slots
        self._tick[row, s] = tick
        self._pred[row, s], self._lo[row, s], self._hi[row, s], self._base[row, s] = pred, lower, upper, base

    # -- checkpoints ------------------------------------------------------------------------
    def state(self) -> dict:
        """Copies of the pending forecasts, the totals and the residuals."""
        out = {name: getattr(self, f"_{name}").copy() for name in _ARRAYS}
        out["total"] = {k: v.copy() for k, v in self.total.items()}
        out["live"] = {k: v.copy() for k, v in self.live.items()}
        return out

    def load_state(self, st: dict) -> None:
        """Go on from ``state()``; raises ValueError if it was made for other targets, steps or residuals."""
        for name in _ARRAYS:
            have, got = getattr(self, f"_{name}").shape, st[name].shape
            if got[1:] != have[1:] or (name in ("res", "res_n") and got != have):
                raise ValueError(f"evaluator state {name} has shape {got}, this evaluator wants {have}")
        for name in _ARRAYS:
            setattr(self, f"_{name}", st[name].copy())
        self.total = {k: st["total"][k].copy() for k in _TOTALS}
        self.live = {k: st["live"][k].copy() for k in _TOTALS}
        self._half = None

    # -- bands and scores -------------------------------------------------------------------
    def half_width(self) -> np.ndarray:
        """Band half-widths (H, targets); NaN where too few errors were seen for the coverage asked."""
        if self._half is None:
            n = np.minimum(self._res_n, self._res.shape[2])
            rank = np.ceil((n + 1) * self.coverage).astype(np.int64)  # 1-based, finite-sample conformal
            at = np.clip(rank - 1, 0, self._res.shape[2] - 1)
            kth = np.unique(at)  # one rank once the residual rings are full: a partition is 3x a sort's speed
            part = np.partition(self._res, kth, axis=2) if len(kth) <= 4 else np.sort(self._res, axis=2)
            q = np.take_along_axis(part, at[..., None], axis=2)[..., 0]
            self._half = np.where((rank <= n) & np.isfinite(q), q, np.nan)
        return self._half

    def scores(self, live: bool = False) -> dict[str, np.ndarray]:
        """Per (step, target): mse, mae, persistence_mse, persistence_mae, skill, coverage, n."""
        s = self.live if live else self.total
        with np.errstate(invalid="ignore", divide="ignore"):
            n = s["n"]
            out = {
                "n": n.copy(),
                "mse": s["se"] / n,
                "mae": s["ae"] / n,
                "persistence_mse": s["se_p"] / n,
                "persistence_mae": s["ae_p"] / n,
                "coverage": s["hit"] / s["n_band"],
            }
            out["skill"] = 1.0 - s["se"] / s["se_p"]
        return out


def finite_or_none(x: float) -> float | None:
    """JSON has no NaN: unknown numbers become null."""
    return float(x) if math.isfinite(x) else None
