"""Trust: how far each stream's served forecast may move away from the value it holds, from that
stream's own recent errors.

The gate weighs the contenders on errors pooled over every stream, with a slow memory: months of
calm evidence. A stream whose sensor took a bias or drifts inside its range, or whose inputs lean on
such a sensor, is forecast as the pool would be, and the models pull it back toward the level they
learnt while holding the value would be nearly exact; the gate does not notice for long. So per
stream, step and target, the trust keeps fast, exponentially weighted moments of the served
forecast's move away from the held value, ``m = f - p``, and of the truth's, ``c = y - p``, on
forecasts whose truth has arrived, and serves ``p + k m`` with ``k = <c m> / <m m>`` kept within
[0, 1]: the least-squares share of the move that the truth followed (Bates and Granger's combination
of the forecast with persistence, per stream). ``k`` below one half is exactly where the move made
the forecast worse than holding, ``k`` near one leaves it as it is, and a forecast drawn in keeps
nothing of a move that went the wrong way.

Errors k steps ahead overlap k - 1 steps with their neighbours', so a step's memory grows with it
(``MEMORY + PER_STEP x k`` frames, a half-life): each step then holds about as many independent
errors. The moments are of the forecast as the gate served it, before the trust drew it in, so a
stream drawn to its held value still sees whether the move would have paid. Only errors already
scored enter, one frame of a stream at a time: a stream's factors depend on its own frames alone,
and never on a value that had not arrived when the forecast was made.
"""

from __future__ import annotations

import numpy as np

MEMORY, PER_STEP = 32.0, 4.0  # frames: the half-life of a stream's errors at step k is MEMORY + PER_STEP x k
_MOMENTS = 3  # <c m>, <m m>, and the weight of the evidence (1 once the memory is full)
_ENOUGH = 0.5  # evidence's weight (a half-life's worth) before a factor is drawn from it


class Trust:
    """Per bank row, step and target: the moments of the served forecast's move and of its truth's."""

    def __init__(self, horizon: int, targets: int, enabled: bool = True) -> None:
        self.horizon, self.targets, self.enabled = horizon, targets, enabled
        halflife = MEMORY + PER_STEP * np.arange(1, horizon + 1)
        self._alpha = (1.0 - 0.5 ** (1.0 / halflife))[:, None]  # (H, 1)
        self.moments = np.zeros((0, _MOMENTS, horizon, targets))
        self._k = np.ones((0, horizon, targets))  # the factors, drawn from the moments as they are folded

    def _fit(self, rows: int) -> None:
        if rows > len(self.moments):
            grown = np.zeros((max(rows, 2 * len(self.moments)), *self.moments.shape[1:]))
            grown[: len(self.moments)] = self.moments
            self.moments = grown
            k = np.ones((len(grown), *self._k.shape[1:]))
            k[: len(self._k)] = self._k
            self._k = k

    def reset(self, row: int) -> None:
        """A stream's row was opened or freed: nothing known of its errors."""
        self._fit(row + 1)
        self.moments[row] = 0.0
        self._k[row] = 1.0

    def fold(self, rows: np.ndarray, move: np.ndarray, change: np.ndarray, ok: np.ndarray) -> None:
        """Fold one frame of each of ``rows`` (distinct): the moves (B, H, T) of the forecasts its
        truth scores, the truth's change from the same held values, where both are known (``ok``;
        elsewhere they may be anything, NaN included)."""
        self._fit(int(rows.max()) + 1 if len(rows) else 0)
        moved = []
        with np.errstate(invalid="ignore", over="ignore"):  # in cells that are not ok, and not kept
            for i, x in enumerate((change * move, move * move, 1.0)):  # a moment at a time: a third of the memory
                now = self.moments[rows, i]  # (B, H, T)
                moved.append(np.where(ok, now + self._alpha * (x - now), now))
                self.moments[rows, i] = moved[-1]
        self._k[rows] = _factor(*moved)

    def factor(self, rows: np.ndarray) -> np.ndarray:
        """The share of the served forecast's move to keep, per row, step and target (B, H, T): 1
        until a stream has a half-life of evidence at that step."""
        self._fit(int(rows.max()) + 1 if len(rows) else 0)
        return self._k[rows]

    def draw(self, rows: np.ndarray, held: np.ndarray, served: np.ndarray) -> np.ndarray:
        """The served forecasts (B, H, T) drawn toward the held values (B, T) as far as each
        stream's errors say (as they are, where the trust is off)."""
        if not self.enabled:
            return served
        base = held[:, None, :]
        return (base + self.factor(rows) * (served - base)).astype(served.dtype)

    def state(self) -> dict:
        return {"moments": self.moments.copy()}

    def load_state(self, kept: dict | None) -> None:
        """Go on from :meth:`state`; a checkpoint from before the trust, or of other steps or
        targets, starts it afresh."""
        m = None if kept is None else kept.get("moments")
        ok = m is not None and m.ndim == 4 and m.shape[1:] == self.moments.shape[1:]
        self.moments = np.array(m, np.float64) if ok else np.zeros((0, *self.moments.shape[1:]))
        self._k = _factor(*self.moments.transpose(1, 0, 2, 3))


def _factor(cross: np.ndarray, square: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """The factors (B, H, T) from the moments, each (B, H, T)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        k = np.clip(cross / square, 0.0, 1.0)
    return np.where((weight >= _ENOUGH) & (square > 0) & np.isfinite(k), k, 1.0)
