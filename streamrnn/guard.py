"""While a sensor of a stream is broken, the stream's other forecasts must prove themselves.

A suspect channel is read as missing, and the model and the linear contender were fitted on frames
where it was there: a target that leans on it (two loads that move together) may then be forecast
worse than by holding its last value, and the gate, weighing months of calm evidence, would not
notice for as long. So from the frame a channel of a stream turns suspect until ``linger`` frames
after the last one is healthy again (an incident), each other target of that stream is served as
held, persistence, unless the forecast the gate chose has beaten persistence on the incident's own
errors: the mean squared error at each of steps 1..``STEPS``, summed, once every step has
``PROOF`` errors scored (a forecast that wins the next few steps but loses the day does not pass).
Nothing else changes: outside incidents the guard is not consulted.
"""

from __future__ import annotations

import numpy as np

STEPS = 24  # steps of each forecast the guard scores (the horizon's, where shorter)
PROOF = 2  # errors scored at every step before a forecast is trusted again
_NONE = np.iinfo(np.int64).max // 2  # frames since the last suspect channel: none yet


class Guard:
    """Per bank row: frames since a channel of the stream was last suspect, the incident's
    forecasts of the last ``STEPS`` frames (steps 1..STEPS) with the values held then, and the
    squared errors of the gate's forecast and of persistence in the incident, per target."""

    _NAMES = ("quiet", "tick", "made", "held", "errors", "count")

    def __init__(self, targets: int, horizon: int, linger: int) -> None:
        self.targets, self.steps, self.linger = targets, min(STEPS, horizon), linger
        k, t = self.steps, targets
        self.quiet, self.tick = np.zeros(0, np.int64), np.zeros(0, np.int64)
        self.made = np.zeros((0, k, k, t), np.float32)  # (rows, slot, step, T): by the frame they were made at, mod k
        self.held = np.zeros((0, k, t), np.float32)
        self.errors, self.count = np.zeros((0, 2, k, t)), np.zeros((0, k, t), np.int64)  # gate's and persistence's, per step

    @property
    def capacity(self) -> int:
        return len(self.quiet)

    def grow(self, capacity: int) -> None:
        extra = capacity - self.capacity
        if extra <= 0:
            return
        k, t = self.steps, self.targets
        self.quiet = np.concatenate([self.quiet, np.full(extra, _NONE)])
        self.tick = np.concatenate([self.tick, np.zeros(extra, np.int64)])
        self.made = np.concatenate([self.made, np.full((extra, k, k, t), np.nan, np.float32)])
        self.held = np.concatenate([self.held, np.full((extra, k, t), np.nan, np.float32)])
        self.errors = np.concatenate([self.errors, np.zeros((extra, 2, k, t))])
        self.count = np.concatenate([self.count, np.zeros((extra, k, t), np.int64)])

    def reset(self, row: int) -> None:
        """A stream's row was freed: no incident."""
        if row < self.capacity:
            self.quiet[row] = _NONE

    def watch(self, rows: np.ndarray, suspect: np.ndarray) -> np.ndarray:
        """Move each row's clock on with this frame (``suspect``: whether a channel of it is, (B,));
        which rows are in an incident. A row whose incident begins starts with no evidence."""
        quiet = np.where(suspect, 0, self.quiet[rows] + 1)
        begins = suspect & (self.quiet[rows] > self.linger)
        if begins.any():
            at = rows[begins]
            self.made[at], self.held[at], self.errors[at], self.count[at] = np.nan, np.nan, 0.0, 0
        self.quiet[rows] = quiet
        return quiet <= self.linger

    def serve(self, rows: np.ndarray, truth: np.ndarray, held: np.ndarray, chosen: np.ndarray) -> np.ndarray:
        """For rows in an incident: score the forecasts their truths (B, T; NaN: none) resolve, keep
        the gate's forecasts ``chosen`` (B, H, T) and the values ``held`` (B, T) now; which targets
        (B, T) to serve as held, as the gate's forecast has not beaten persistence in the incident."""
        k = self.steps
        tick = self.tick[rows]
        steps = np.arange(k)
        slots = (tick[:, None] - steps - 1) % k  # (B, k): the forecast for now made step + 1 frames ago
        fc = self.made[rows[:, None], slots, steps]  # (B, k, T)
        base = self.held[rows[:, None], slots]
        ok = np.isfinite(fc) & np.isfinite(base) & np.isfinite(truth)[:, None]
        self.errors[rows, 0] += np.where(ok, (fc - truth[:, None]) ** 2, 0.0)
        self.errors[rows, 1] += np.where(ok, (base - truth[:, None]) ** 2, 0.0)
        self.count[rows] += ok
        slot = tick % k
        self.made[rows, slot] = chosen[:, :k]
        self.held[rows, slot] = held
        self.tick[rows] = tick + 1
        count = self.count[rows]  # (B, k, T)
        mean = (self.errors[rows] / np.maximum(count, 1)[:, None]).sum(axis=2)  # (B, 2, T): each step's mean, summed
        return (count < PROOF).any(axis=1) | (mean[:, 0] > mean[:, 1])

    def state_dict(self) -> dict[str, np.ndarray]:
        return {f"guard_{n}": getattr(self, n).copy() for n in self._NAMES}

    def load_state(self, st: dict, capacity: int) -> None:
        """Go on from :meth:`state_dict`'s arrays in ``st``; where they are missing or do not fit
        (an older checkpoint), no row is in an incident."""
        got = [st.get(f"guard_{n}") for n in self._NAMES]
        rows = None if got[0] is None else len(got[0])
        fresh = Guard(self.targets, self.steps, self.linger)
        like = [getattr(fresh, n) for n in self._NAMES]
        if rows is not None and all(g is not None and g.shape[1:] == w.shape[1:] and len(g) == rows for g, w in zip(got, like)):
            for n, g, w in zip(self._NAMES, got, like):
                setattr(self, n, np.array(g, dtype=w.dtype))
        else:
            for n, w in zip(self._NAMES, like):
                setattr(self, n, w)
        self.grow(capacity)
