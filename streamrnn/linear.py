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

from streamrnn import readout

_PENALTIES = np.logspace(-4, 2, 13)  # times the mean eigenvalue of the Gram matrix
CALENDAR = 4  # calendar features: the first harmonics of the day and of the week
_CYCLES = np.array([86400.0, 7 * 86400.0])  # a day and a week, in seconds
_CHUNK = 2048  # examples formed at once when learning from frames


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
        self._held: list[tuple[np.ndarray, np.ndarray]] = []  # the recent ones, for the penalty
        self.weights = np.zeros((f, o))  # untrained: no change, i.e. persistence
        self.factors: tuple[np.ndarray, ...] | None = (
            None  # the weights' output directions as drawn where they are solved; () to serve them whole
        )
        self.learnt = 0
        self.penalty = float("nan")
        self.absorbed: dict[str, int] = {}  # per stream, the frames whose examples were learnt (learn_frames)
        self.solves = 0  # by learn_frames

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
        self._held.append((x, np.nan_to_num(y, nan=0.0)))
        self.learnt += 1
        if self.learnt % self.refit == 0:
            self._absorb()
            self.solve(choose=self.learnt % (8 * self.refit) == 0 or self.penalty != self.penalty, directions=False)

    def learn_many(self, x: np.ndarray, y: np.ndarray) -> None:
        """Complete examples (n, features), (n, outputs), oldest first, without solving: the
        retrainer's way, in chunks, then one :meth:`solve`."""
        y = np.nan_to_num(y, nan=0.0)
        self._held.extend(zip(x, y))
        self.learnt += len(x)
        self._absorb()
        self._held = [(a.copy(), b.copy()) for a, b in self._held]  # not views that keep the chunk

    def learn_frames(self, streams: list[str], values: list[np.ndarray], ts: list[np.ndarray], counts: list[int], max_examples: int) -> int:
        """Learn the examples of the streams' frames that are complete and not learnt before, then
        solve (choosing the penalty). ``values[i]`` (n, channels) are the last n frames of
        ``streams[i]``, of ``counts[i]`` it ever sent (ring order, NaN where missing), ``ts[i]``
        their times. Of more new examples than ``max_examples``, as many evenly spread over them;
        all in time order, so the recent ones the penalty is chosen on are the newest. Returns how
        many were learnt; a missing value read as held (a suspect spell too: docs/model.md says
        why), a missing truth as forecast (no pull)."""
        h, lb = self.horizon, self.lookback
        chosen: list[tuple[float, int, int]] = []  # (time, stream, frame) of each new example
        helds = []
        for s, (name, v, stamps, count) in enumerate(zip(streams, values, ts, counts)):
            n = len(v)
            first = count - n  # the global number of the snapshot's first frame
            done = self.absorbed.get(name, 0)
            start = max(done, first) if done <= count else first  # a stream restarted since: afresh
            frames = np.arange(start - first, n - h)
            chosen.extend(zip(stamps[frames].tolist(), [s] * len(frames), frames.tolist()))
            helds.append(forward_fill(v))
            self.absorbed[name] = max(start, count - h)
        for gone in set(self.absorbed) - set(streams):
            del self.absorbed[gone]
        if len(chosen) > max_examples:
            chosen = [chosen[i] for i in np.linspace(0, len(chosen) - 1, max_examples).round().astype(int)]
        chosen.sort()
        for at in range(0, len(chosen), _CHUNK):
            part = chosen[at : at + _CHUNK]
            windows = np.stack([_window(helds[s], i, lb) for _, s, i in part])
            after = np.stack([values[s][i + 1 : i + 1 + h] for _, s, i in part])  # NaN where no truth came
            now = np.stack([helds[s][i] for _, s, i in part])
            x, y = self.encode(windows, np.array([t for t, _, _ in part])), self.changes(now, after)
            self.learn_many(x, np.where(np.isnan(y), self.predict(x).reshape(len(x), -1), y))  # no truth: no pull
        if chosen:
            self.solve(choose=self.solves % 8 == 0 or self.solves & (self.solves - 1) == 0)  # at solves 0, 1, 2, 4, then every 8th
            self.solves += 1
        return len(chosen)

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

    def solve(self, choose: bool = True, directions: bool = True) -> None:
        """New weights from every example. ``choose``: first pick the penalty under which the
        older examples forecast the recent ones best (else the last one); ``directions``: draw the
        output directions it is served in (:meth:`serving`) now, else when first served."""
        if self.count < 2 or not self._held:
            return
        rx = np.stack([x for x, _ in self._held])
        ry = np.stack([y for _, y in self._held])
        if choose or self.penalty != self.penalty:  # never chosen yet: now
            self.penalty = self._choose(rx, ry)
        gram = self.gram + rx.T @ rx
        ridge = self.penalty * max(float(np.trace(gram)) / self.features, 1e-12)
        gram[np.diag_indices_from(gram)] += ridge
        try:
            self.weights = np.linalg.solve(gram, self.cross + rx.T @ ry)
        except np.linalg.LinAlgError:
            return  # singular even so: the weights served stay
        self.factors = (readout.directions(self) or ()) if directions else None  # here (the trainer's process), not where it is served

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

    # -- moving and serving ----------------------------------------------------------------------
    def state(self) -> dict:
        """Plain arrays and numbers: what crosses to the trainer and back, and into checkpoints."""
        held = self._held
        f, o = self.features, self.outputs
        return {
            "shape": np.array([self.channels, self.horizon, self.lookback, self.refit]),
            "targets": self.targets.copy(),
            "calendar": self.calendar,
            "mean": self.mean.copy(),
            "std": self.std.copy(),
            "decay": self.decay,
            "recent": self.recent,
            "gram": self.gram.copy(),
            "cross": self.cross.copy(),
            "count": self.count,
            "weights": self.weights.copy(),
            "held_x": np.stack([a for a, _ in held]) if held else np.zeros((0, f)),
            "held_y": np.stack([b for _, b in held]) if held else np.zeros((0, o)),
            "learnt": self.learnt,
            "penalty": self.penalty,
            "absorbed": dict(self.absorbed),
            "solves": self.solves,
            "factors": None if self.factors is None else [a.copy() for a in self.factors],  # [] to serve whole
        }

    @classmethod
    def from_state(cls, st: dict) -> OnlineRidge:
        """The ridge :meth:`state` describes; raises ValueError where its parts do not fit together."""
        channels, horizon, lookback, refit = (int(v) for v in st["shape"])
        r = cls(
            channels,
            [int(t) for t in st["targets"]],
            horizon,
            lookback,
            st["mean"],
            st["std"],
            refit=refit,
            recent=int(st["recent"]),
            calendar=bool(st.get("calendar", False)),
        )
        f, o = r.features, r.outputs
        shapes = {"gram": (f, f), "cross": (f, o), "weights": (f, o)}
        for name, want in shapes.items():
            if np.shape(st[name]) != want:
                raise ValueError(f"linear state {name} has shape {np.shape(st[name])}, wants {want}")
        if np.shape(st["held_x"])[1:] != (f,) or np.shape(st["held_y"])[1:] != (o,) or len(st["held_x"]) != len(st["held_y"]):
            raise ValueError("linear state's recent examples do not fit its features and outputs")
        if not all(np.isfinite(st[name]).all() for name in ("gram", "cross", "weights", "mean", "std")):
            raise ValueError("linear state is not finite")
        r.decay, r.count, r.learnt, r.penalty = float(st["decay"]), float(st["count"]), int(st["learnt"]), float(st["penalty"])
        r.gram, r.cross, r.weights = np.array(st["gram"], float), np.array(st["cross"], float), np.array(st["weights"], float)
        r._held = list(zip(np.asarray(st["held_x"], float), np.asarray(st["held_y"], float)))
        r.absorbed = {str(k): int(v) for k, v in st["absorbed"].items()}
        r.solves = int(st["solves"])
        factors = st.get("factors")  # older states: drawn when first served
        if factors is not None and len(factors) == 0:
            r.factors = ()
        elif factors is not None and len(factors) == 2:
            left, right = (np.asarray(a, float) for a in factors)
            if (
                left.ndim == right.ndim == 2
                and left.shape[0] == right.shape[1] == o
                and left.shape[1] == right.shape[0]
                and np.isfinite(left).all()
                and np.isfinite(right).all()
            ):
                r.factors = (left, right)
        return r

    def serving(self) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, np.ndarray | None]:
        """The weights as the engine serves them (:func:`streamrnn.readout.serving`)."""
        return readout.serving(self)

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


def _window(held: np.ndarray, i: int, lookback: int) -> np.ndarray:
    """Rows i - lookback + 1 .. i of ``held``, the first row repeated before the start."""
    lo = i - lookback + 1
    if lo >= 0:
        return held[lo : i + 1]
    return np.concatenate([np.repeat(held[:1], -lo, axis=0), held[: i + 1]])
