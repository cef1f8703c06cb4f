"""The linear contender: direct multi-step ridge regression on a lookback window, learnt online.

From the last ``lookback`` rows of every channel (as changes from the newest row, plus the newest
row's level and a bias, on the normalised scale), and optionally the time of day and of the week
of the newest row (:func:`calendar`: plants follow the sun and the shifts), to the next
``horizon`` changes of every target, in closed form. A row's example is complete, and learnt, only
once the ``horizon`` rows after it have arrived (delayed labels): nothing is learnt from a value
before it arrived. The sufficient statistics (Gram matrix and cross-products) are kept with
exponential forgetting, so that the fit follows a drifting process; the weights are solved again
every ``refit`` examples. The ridge penalty is chosen from a fixed grid (every 8 solves) by the
error on the most recent examples, which the fit being judged has not seen (a walk along the grid
from the last choice): no penalty is tuned by hand, on any data set.

Sharp where the signal is linear and stationary, it is the contender that recurrent forecasts
must beat (or blend with) per target and step.
"""

from __future__ import annotations

import numpy as np

from streamrnn.engine import readout

_PENALTIES = np.logspace(-4, 2, 13)  # times the mean eigenvalue of the Gram matrix
CALENDAR = 4  # calendar features: the first harmonics of the day and of the week
_CYCLES = np.array([86400.0, 7 * 86400.0])  # a day and a week, in seconds


class OnlineRidge:
    """One direct multi-step ridge over ``channels`` inputs for ``targets`` (indices into the
    channels), fitted from the examples of every stream that feeds it."""

    def __init__(
        self,
        channels: int,
        targets: list[int],
        horizon: int,
        lookback: int,
        mean: np.ndarray,
        std: np.ndarray,
        refit: int = 24,
        memory: float | None = None,
        recent: int | None = None,
        calendar: bool = False,
    ) -> None:
        """``mean``, ``std``: per channel, the normalisation (from data seen before); ``memory``:
        examples after which an example weighs 1/e (default 20 x the features); ``recent``: the
        examples held out to choose the penalty (default 4 x horizon, at least 48); ``calendar``:
        the newest row's time of day and of the week as inputs too (its ``ts``, unix seconds)."""
        self.channels, self.targets, self.horizon, self.lookback = channels, np.asarray(targets), horizon, lookback
        self.mean, self.std = np.asarray(mean, float), np.where(np.asarray(std, float) > 0, std, 1.0)
        self.calendar = calendar
        self.features = lookback * channels + (CALENDAR if calendar else 0) + 1
        self.outputs = horizon * len(targets)
        self.decay = float(np.exp(-1.0 / (memory or 20 * self.features)))
        self.recent = recent or max(48, 4 * horizon)
        self.refit = refit
        f, o = self.features, self.outputs
        self.gram, self.cross, self.count = np.zeros((f, f)), np.zeros((f, o)), 0.0  # the older examples, faded
        self.newest: list[tuple[np.ndarray, np.ndarray]] = []  # the recent ones, for the penalty
        self.weights = np.zeros((f, o))  # untrained: no change, i.e. persistence
        self.factors: tuple[np.ndarray, ...] | None = (
            None  # the weights' output directions as drawn where they are solved; () to serve them whole
        )
        self.learnt = 0
        self.penalty = float("nan")
        self.absorbed: dict[str, int] = {}  # per stream, the frames whose examples were learnt (streamrnn.learning.examples)
        self.solves = 0  # by streamrnn.learning.examples

    # -- features and targets -----------------------------------------------------------------
    def encode(self, window: np.ndarray, ts: np.ndarray | float | None = None) -> np.ndarray:
        """Features of windows (..., lookback, channels) of held values (NaN where never seen),
        whose newest rows came at ``ts`` (..., ), needed with ``calendar``: (..., features)."""
        z = (window - self.mean) / self.std
        z = np.nan_to_num(z, nan=0.0)
        last = z[..., -1, :]
        changes = z[..., :-1, :] - last[..., None, :]
        flat = changes.reshape(*z.shape[:-2], -1)
        when = (calendar(np.broadcast_to(np.asarray(ts, float), z.shape[:-2])),) if self.calendar else ()
        return np.concatenate([flat, last, *when, np.ones((*z.shape[:-2], 1))], axis=-1)

    def changes(self, now: np.ndarray, after: np.ndarray) -> np.ndarray:
        """The normalised changes of the targets from ``now`` (..., channels) to the ``horizon``
        rows ``after`` (..., horizon, channels): (..., outputs); NaN where unseen."""
        t = self.targets
        return ((after[..., t] - now[..., None, t]) / self.std[t]).reshape(*now.shape[:-1], -1)

    # -- learning and forecasting ---------------------------------------------------------------
    def learn(self, x: np.ndarray, y: np.ndarray) -> None:
        """One complete example (features, changes); an unseen change counts as no change. Solved
        every ``refit`` examples for :meth:`predict` (the protocol's online family)."""
        self.newest.append((x, np.nan_to_num(y, nan=0.0)))
        self.learnt += 1
        if self.learnt % self.refit == 0:
            self._absorb()
            self.solve(choose=self.learnt % (8 * self.refit) == 0 or self.penalty != self.penalty, directions=False)

    def learn_many(self, x: np.ndarray, y: np.ndarray) -> None:
        """Complete examples (n, features), (n, outputs), oldest first, without solving: the
        retrainer's way, in chunks, then one :meth:`solve`."""
        y = np.nan_to_num(y, nan=0.0)
        self.newest.extend(zip(x, y))
        self.learnt += len(x)
        self._absorb()
        self.newest = [(a.copy(), b.copy()) for a, b in self.newest]  # not views that keep the chunk

    def _absorb(self) -> None:
        """Move the examples older than the recent ones into the forgetting sums, in one product."""
        n = len(self.newest) - self.recent
        if n <= 0:
            return
        old, self.newest = self.newest[:n], self.newest[n:]
        x = np.stack([a for a, _ in old])
        y = np.stack([b for _, b in old])
        w = self.decay ** np.arange(n - 1, -1, -1)  # the newest weighs 1
        fade = self.decay**n
        self.gram = fade * self.gram + (x * w[:, None]).T @ x
        self.cross = fade * self.cross + (x * w[:, None]).T @ y
        self.count = fade * self.count + w.sum()

    def solve(self, choose: bool = True, directions: bool = True) -> None:
        """New weights from every example. ``choose``: first pick the penalty under which the
        older examples forecast the recent ones best (else the last one); ``directions``: draw the
        output directions it is served in (:meth:`serving`) now, else when first served."""
        if self.count < 2 or not self.newest:
            return
        rx = np.stack([x for x, _ in self.newest])
        ry = np.stack([y for _, y in self.newest])
        if choose or self.penalty != self.penalty:  # never chosen yet: now
            self.penalty = self._choose(rx, ry)
        gram = self.gram + rx.T @ rx
        ridge = self.penalty * max(float(np.trace(gram)) / self.features, 1e-12)
        gram[np.diag_indices_from(gram)] += ridge
        try:
            self.weights = np.linalg.solve(gram, self.cross + rx.T @ ry)
        except np.linalg.LinAlgError:
            return  # singular even so: the weights served stay
        self.factors = (self._directions() or ()) if directions else None  # here (the trainer's process), not where it is served

    def _choose(self, rx: np.ndarray, ry: np.ndarray) -> float:
        """The penalty of the grid under which the older examples forecast the recent ones (rx, ry)
        best: a walk downhill from the last one chosen (the grid's middle at first), one solve per
        penalty tried, so a few where the choice barely moves. Each solve costs a small part of
        the eigendecomposition that would try the whole grid at once, which on wide inputs (many
        channels times the lookback) would cost more than every other part of a fit."""
        scale = max(float(np.trace(self.gram)) / self.features, 1e-12)  # the mean eigenvalue
        errors: dict[int, float] = {}

        def error(i: int) -> float:
            if i not in errors:
                gram = self.gram.copy()
                gram[np.diag_indices_from(gram)] += _PENALTIES[i] * scale
                try:
                    errors[i] = float(np.mean((rx @ np.linalg.solve(gram, self.cross) - ry) ** 2))
                except np.linalg.LinAlgError:
                    errors[i] = np.inf
            return errors[i]

        last = np.flatnonzero(_PENALTIES == self.penalty)
        i = int(last[0]) if len(last) else len(_PENALTIES) // 2
        while True:
            best = min((j for j in (i - 1, i, i + 1) if 0 <= j < len(_PENALTIES)), key=lambda j: (error(j), j != i))
            if best == i:
                return float(_PENALTIES[i])
            i = best

    # -- serving ------------------------------------------------------------------------------
    def serving(self) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, np.ndarray | None]:
        """The weights as the engine serves them (:func:`streamrnn.engine.readout.serving`)."""
        factors = self.factors if self.factors is not None else self._directions() or ()
        scale = np.tile(self.std[self.targets], self.horizon)  # outputs are (step, target), target fastest
        return readout.serving(self.weights, factors, self.lookback, self.channels, scale, self.calendar)

    def _directions(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The output directions to serve through (:func:`streamrnn.engine.readout.directions`), from the
        examples learnt, the bias served whole."""
        f = self.features - 1
        gram = self.gram[:f, :f]
        if self.newest:
            x = np.stack([a[:f] for a, _ in self.newest])
            gram = gram + x.T @ x
        return readout.directions(self.weights[:f], gram)

    def normalise(self, held: np.ndarray) -> np.ndarray:
        """Held values (..., channels) on this ridge's scale, 0 (the mean) where never seen."""
        z = (held - self.mean) / self.std
        z[np.isnan(z)] = 0.0
        return z

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Normalised changes (..., horizon, targets) from features (..., features)."""
        return (x @ self.weights).reshape(*x.shape[:-1], self.horizon, len(self.targets))

    def forecast(self, window: np.ndarray, ts: np.ndarray | float | None = None) -> np.ndarray:
        """Forecasts in engineering units (..., horizon, targets) from windows of held values
        (whose newest rows came at ``ts``, with ``calendar``)."""
        t = self.targets
        last = window[..., -1, t]
        return last[..., None, :] + self.predict(self.encode(window, ts)) * self.std[t]


def calendar(ts: np.ndarray) -> np.ndarray:
    """The time of day and of the week of unix times ``ts`` (...,), as the sine and cosine of
    each: (..., CALENDAR). UTC: a plant's offset from it shifts each cycle's phase, which a linear
    model on both the sine and the cosine absorbs."""
    phase = (np.asarray(ts, float)[..., None] % _CYCLES) * (2 * np.pi / _CYCLES)
    return np.concatenate([np.sin(phase), np.cos(phase)], axis=-1)  # sin day, sin week, cos day, cos week


def forward_fill(values: np.ndarray) -> np.ndarray:
    """Sample and hold down the rows (n, channels): each NaN becomes the last value before it (NaN
    where there is none)."""
    seen = np.isfinite(values)
    last = np.maximum.accumulate(np.where(seen, np.arange(len(values))[:, None], 0), axis=0)
    out = np.take_along_axis(values, last, axis=0)
    out[~seen & ~np.isfinite(out)] = np.nan
    return out
