"""The gate's evidence, as scoring gathers it: per regime, step and target, the moments of the errors
of persistence, the contenders and their combination (:class:`streamrnn.engine.gate.Errors`), the linear and
recurrent forecasts' typical disagreement (what makes a forecast wild), and a version that moves
whenever the gate should draw its weights again."""

from __future__ import annotations

import numpy as np

from streamrnn.engine import gate

PASSES = 4  # scoring passes at least between two draws of the gate's weights


class Evidence:
    """Errors folded with exponential forgetting: one weighs 1/e after ``memory`` of its (step,
    target)'s."""

    def __init__(self, horizon: int, targets: int, memory: int) -> None:
        self.errors = gate.Errors.zeros(horizon, targets)
        self.spread = np.zeros((2, horizon, targets))  # the squared disagreement, clipped, and its weight
        self.version = 0  # moves whenever the gate should draw its weights again
        self._decay = 1.0 - 1.0 / memory
        self._redraw = max(1, memory // 10)  # errors (per step and target, at most) between draws
        self._new = 0  # errors (per step and target, at most) since the last draw
        self._passes = 0  # scoring passes since the last draw
        self._drawn = 0.0  # errors (per step and target, at most) folded as of the last draw

    def fold(self, err: np.ndarray, ok: np.ndarray) -> None:
        """Fold the errors (B, H, K, T) of persistence and the contenders, where the served forecast
        was scored (``ok``) and every contender had a forecast."""
        ok = ok & np.isfinite(err).all(axis=2)
        if not ok.any():
            return
        err = np.nan_to_num(err.astype(np.float64).transpose(1, 3, 0, 2))  # (H, T, B, K): each (step, target)'s errors together
        ok = ok.transpose(1, 2, 0)
        apart = err[..., gate.LINEAR] - err[..., gate.RECURRENT]
        limit = gate.threshold(*self.spread)[..., None]
        wild = gate.wild(apart, limit) & ok
        n = ok.sum(axis=-1)
        fade = self._decay**n
        self.spread *= fade
        self.spread[0] += np.where(ok, np.minimum(apart * apart, limit), 0.0).sum(axis=-1)
        self.spread[1] += n
        self.errors.fold(0, err, ok & ~wild, self._decay)
        some = np.flatnonzero(wild.any(axis=(0, 1)))  # the few forecasts with a wild step
        if len(some):
            self.errors.fold(1, err[:, :, some], wild[:, :, some], self._decay)
        self._new += int(n.max())
        self._passes += 1
        seen = float(self.errors.count.sum(axis=0).max())
        # worth drawing again: a tenth of its memory is new, or, while the evidence is young (a new
        # contender's first errors), it has doubled since the last draw
        if (self._new >= self._redraw and self._passes >= PASSES) or seen >= 2 * self._drawn:
            self._new = self._passes = 0
            self._drawn = seen
            self.version += 1

    def state(self) -> dict:
        return {**self.errors.state(), "spread": self.spread.copy(), "new": self._new, "passes": self._passes, "drawn": self._drawn}

    def load_state(self, kept: dict) -> None:
        """Go on from :meth:`state` (older checkpoints: the parts they lack start afresh); the
        version moves, so that the gate draws again."""
        self._new, self._passes = int(kept.get("new", 0)), int(kept.get("passes", 0))
        self.errors = gate.Errors.from_state(kept, self.errors)
        self._drawn = float(kept.get("drawn", self.errors.count.sum(axis=0).max()))  # older checkpoints: as of now
        spread = kept.get("spread")
        self.spread = spread.copy() if spread is not None and spread.shape == self.spread.shape else np.zeros_like(self.spread)
        self.version += 1
