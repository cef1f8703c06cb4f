"""The linear contender: direct multi-step ridge regression on a lookback window, learnt online.

From the last ``lookback`` rows of every channel (as changes from the newest row, plus the newest
row's level and a bias, on the normalised scale) to the next ``horizon`` changes of every target,
in closed form. A row's example is complete, and learnt, only once the ``horizon`` rows after it
have arrived (delayed labels): nothing is learnt from a value before it arrived. The sufficient
statistics (Gram matrix and cross-products) are kept with exponential forgetting, so that the fit
follows a drifting process; the weights are solved again every ``refit`` examples. The ridge
penalty is chosen from a fixed grid (every 8 solves) by the error on the most recent examples,
which the fit being judged has not seen: no penalty is tuned by hand, on any data set.

Sharp where the signal is linear and stationary, it is the contender that recurrent forecasts
must beat (or blend with) per target and step.
"""

from __future__ import annotations

import numpy as np

_PENALTIES = np.logspace(-4, 2, 13)  # times the mean eigenvalue of the Gram matrix


class OnlineRidge:
    """One direct multi-step ridge over ``channels`` inputs for ``targets`` (indices into the
    channels), fitted from the examples of every stream that feeds it."""

    def __init__(self, channels: int, targets: list[int], horizon: int, lookback: int, mean: np.ndarray, std: np.ndarray, refit: int = 24, memory: float | None = None, recent: int | None = None) -> None:
        """``mean``, ``std``: per channel, the normalisation (from data seen before); ``memory``:
        examples after which an example weighs 1/e (default 20 x the features); ``recent``: the
        examples held out to choose the penalty (default 4 x horizon, at least 48)."""
        self.channels, self.targets, self.horizon, self.lookback = channels, np.asarray(targets), horizon, lookback
        self.mean, self.std = np.asarray(mean, float), np.where(np.asarray(std, float) > 0, std, 1.0)
        self.features = lookback * channels + 1
        self.outputs = horizon * len(targets)
        self.decay = float(np.exp(-1.0 / (memory or 20 * self.features)))
        self.recent = recent or max(48, 4 * horizon)
        self.refit = refit
        f, o = self.features, self.outputs
        self.gram, self.cross, self.count = np.zeros((f, f)), np.zeros((f, o)), 0.0  # the older examples, faded
        self._held: list[tuple[np.ndarray, np.ndarray]] = []  # the recent ones, for the penalty
        self.weights = np.zeros((f, o))  # untrained: no change, i.e. persistence
        self.learnt = 0
        self.penalty = float("nan")

    # -- features and targets -----------------------------------------------------------------
    def encode(self, window: np.ndarray) -> np.ndarray:
        """Features of windows (..., lookback, channels) of held values (NaN where never seen):
        (..., features)."""
        z = (window - self.mean) / self.std
        z = np.nan_to_num(z, nan=0.0)
        last = z[..., -1, :]
        changes = z[..., :-1, :] - last[..., None, :]
        flat = changes.reshape(*z.shape[:-2], -1)
        return np.concatenate([flat, last, np.ones((*z.shape[:-2], 1))], axis=-1)

    def changes(self, now: np.ndarray, after: np.ndarray) -> np.ndarray:
        """The normalised changes of the targets from ``now`` (..., channels) to the ``horizon``
        rows ``after`` (..., horizon, channels): (..., outputs); NaN where unseen."""
        t = self.targets
        return ((after[..., t] - now[..., None, t]) / self.std[t]).reshape(*now.shape[:-1], -1)

    # -- learning and forecasting ---------------------------------------------------------------
    def learn(self, x: np.ndarray, y: np.ndarray) -> None:
        """One complete example (features, changes); an unseen change counts as no change."""
        self._held.append((x, np.nan_to_num(y, nan=0.0)))
        self.learnt += 1
        if self.learnt % self.refit == 0:
            self._absorb()
            self.solve(choose=self.learnt % (8 * self.refit) == 0 or self.penalty != self.penalty)

    def _absorb(self) -> None:
        """Move the examples older than the recent ones into the forgetting sums, in one product."""
        n = len(self._held) - self.recent
        if n <= 0:
            return
        old, self._held = self._held[:n], self._held[n:]
        x = np.stack([a for a, _ in old])
        y = np.stack([b for _, b in old])
        w = self.decay ** np.arange(n - 1, -1, -1)  # the newest weighs 1
        fade = self.decay**n
        self.gram = fade * self.gram + (x * w[:, None]).T @ x
        self.cross = fade * self.cross + (x * w[:, None]).T @ y
        self.count = fade * self.count + w.sum()

    def solve(self, choose: bool = True) -> None:
        """New weights from every example. ``choose``: first pick the penalty under which the
        older examples forecast the recent ones best (an eigendecomposition; else the last one)."""
        if self.count < 2 or not self._held:
            return
        rx = np.stack([x for x, _ in self._held])
        ry = np.stack([y for _, y in self._held])
        if choose:
            values, vectors = np.linalg.eigh(self.gram)
            values = np.clip(values, 0.0, None)
            scale = max(values.mean(), 1e-12)
            projected = vectors.T @ self.cross  # (f, o)
            basis = rx @ vectors  # (n, f)
            errors = [float(np.mean((basis @ (projected / (values + p * scale)[:, None]) - ry) ** 2)) for p in _PENALTIES]
            self.penalty = float(_PENALTIES[int(np.argmin(errors))])
        gram = self.gram + rx.T @ rx
        ridge = self.penalty * max(float(np.trace(gram)) / self.features, 1e-12)
        gram[np.diag_indices_from(gram)] += ridge
        try:
            self.weights = np.linalg.solve(gram, self.cross + rx.T @ ry)
        except np.linalg.LinAlgError:
            pass  # singular even so: the weights served stay

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Normalised changes (..., horizon, targets) from features (..., features)."""
        return (x @ self.weights).reshape(*x.shape[:-1], self.horizon, len(self.targets))

    def forecast(self, window: np.ndarray) -> np.ndarray:
        """Forecasts in engineering units (..., horizon, targets) from windows of held values."""
        t = self.targets
        last = window[..., -1, t]
        return last[..., None, :] + self.predict(self.encode(window)) * self.std[t]
