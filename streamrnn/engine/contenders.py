"""The contenders beside the recurrent model, as the engine serves them: the linear contender read
from each stream's window, and the gate's choice among persistence, the recurrent model, the linear
contender and their combination (see :mod:`streamrnn.engine.gate` for how it chooses)."""

from __future__ import annotations

import logging

import numpy as np

from streamrnn.config import Settings
from streamrnn.engine import gate, ridgeform
from streamrnn.engine.evaluator import Evaluator
from streamrnn.engine.linear import OnlineRidge, calendar, forward_fill
from streamrnn.engine.ring import Ring
from streamrnn.engine.windows import Windows

log = logging.getLogger(__name__)


class Drawn:
    """The gate's weights as drawn from the errors' moments of one version: of the combination and
    of the served forecast (each (regimes, contenders, H, T)), the wild limit, and their mixers."""

    def __init__(self, version: int, mixed: np.ndarray, served: np.ndarray, limit: np.ndarray) -> None:
        self.version, self.mixed, self.served, self.limit = version, mixed, served, limit
        both = (served, mixed) if not np.array_equal(served, mixed) else (served,)  # the served one first
        self.mixers = [(gate.Mixer(w[0]), w) for w in both]


class Contenders:
    """The linear contender (once a retrain has fitted it) with each stream's window, and the gate's
    weights as last drawn from the evaluator's errors."""

    def __init__(self, settings: Settings, channels: int, targets: np.ndarray, horizon: int, evaluator: Evaluator) -> None:
        self.settings, self.channels, self.targets, self.horizon, self.evaluator = settings, channels, targets, horizon, evaluator
        self.linear: OnlineRidge | None = None
        self._windows: Windows | None = None  # what it reads per stream
        self._serving: tuple[np.ndarray, np.ndarray | None, np.ndarray, np.ndarray | None] | None = None  # its weights, as served
        self._drawn: Drawn | None = None

    def reset(self, row: int) -> None:
        """A stream's row was opened or freed: its window starts empty."""
        if self._windows is not None:
            self._windows.reset(row)

    def linear_forecast(self, rows: np.ndarray, held: np.ndarray, base: np.ndarray, stamps: list[float]) -> np.ndarray | None:
        """The linear contender's forecasts (B, H, T) from each stream's window, now that ``held``
        (B, C) of the frames at ``stamps`` joined it; None before its first fit."""
        if self._serving is None or self._windows is None or self.linear is None:
            return None
        self._windows.push(rows, self.linear.normalise(held))
        w_in, w_out, b, w_when = self._serving
        change = self._windows.gather(rows) @ w_in
        if w_out is not None:
            change = change @ w_out
        change += b
        if w_when is not None:
            change += calendar(np.array(stamps)).astype(np.float32) @ w_when
        return base[:, None, :] + change.reshape(len(rows), self.horizon, len(self.targets))

    def serve(
        self, base: np.ndarray, recurrent: np.ndarray, linear: np.ndarray | None, panel: np.ndarray | slice
    ) -> tuple[np.ndarray, np.ndarray]:
        """The gate's forecasts: the served one (B, H, T), and the combination of the contenders
        (served where it has done best) at the forecasts ``panel`` names, for the gate to score;
        each with the gate's wild weights where the linear and the recurrent forecast are unusually
        far apart, its calm ones elsewhere."""
        self.weights()
        drawn = self._drawn
        assert drawn is not None
        wild = gate.wild(linear - recurrent, drawn.limit) if linear is not None else None
        (serve, w), (mix, m) = drawn.mixers[0], drawn.mixers[-1]
        served = serve(base, recurrent, linear, None if wild is None else (np.nonzero(wild), w[1]))
        if len(drawn.mixers) == 1:
            return served, served[panel]
        few = None if linear is None else linear[panel]
        return served, mix(base[panel], recurrent[panel], few, None if wild is None else (np.nonzero(wild[panel]), m[1]))

    def weights(self) -> tuple[tuple[np.ndarray, np.ndarray], np.ndarray]:
        """Per regime (:data:`gate.REGIMES`), contender (:data:`gate.CONTENDERS`), step and target,
        the contender's share of the combination and of the served forecast (each (2, 3, H, T)), and
        the squared disagreement past which a forecast is wild (H, T): from the errors scored so
        far, drawn again whenever they move."""
        ev = self.evaluator
        if self._drawn is None or self._drawn.version != ev.evidence.version:
            mixed, served = gate.weights(ev.evidence.errors, self.settings.gate.warmup)
            limit = gate.threshold(*ev.evidence.spread).astype(np.float32)
            self._drawn = Drawn(ev.evidence.version, mixed.astype(np.float32), served.astype(np.float32), limit)
        return (self._drawn.mixed, self._drawn.served), self._drawn.limit

    def adopt(self, state: dict, rings: dict[int, Ring], capacity: int) -> str | None:
        """Serve a retrain's linear contender from the next step; why not, where it does not fit
        these channels, targets and horizon, or is not finite (the one before stays)."""
        try:
            ridge = ridgeform.from_state(state)
            lin = self.settings.linear
            want = (self.channels, tuple(self.targets), self.horizon, lin.lookback, lin.calendar)
            got = (ridge.channels, tuple(ridge.targets.tolist()), ridge.horizon, ridge.lookback, ridge.calendar)
            if got != want:
                raise ValueError(f"it has (channels, targets, horizon, lookback, calendar) {got}, this engine {want}")
        except (ValueError, KeyError, TypeError) as e:
            return str(e)
        first = self.linear is None
        self.linear, self._serving = ridge, ridge.serving()
        if first or self._windows is None:
            self._windows = self._fill(ridge, rings, capacity)
        return None

    def _fill(self, ridge: OnlineRidge, rings: dict[int, Ring], capacity: int) -> Windows:
        """Every stream's window from its ring, for a contender served for the first time."""
        windows = Windows(ridge.lookback, self.channels, capacity)
        for row, ring in rings.items():
            values = ring.last(4 * ridge.lookback)[1].astype(np.float64)
            if len(values):
                held = forward_fill(values)[-ridge.lookback :]
                for z in ridge.normalise(held):  # oldest first
                    windows.push(np.array([row]), z[None, :])
        return windows

    def state(self) -> dict:
        """The linear contender, its windows, and the gate's weights as last drawn (a restart then
        serves what this run would)."""
        d = self._drawn
        return {
            "linear": ridgeform.state(self.linear) if self.linear is not None else None,
            "windows": self._windows.state() if self._windows is not None else None,
            "gate": None if d is None else {"mixed": d.mixed, "served": d.served, "limit": d.limit},
        }

    def load_state(self, st: dict, rings: dict[int, Ring], capacity: int) -> str | None:
        """Go on from :meth:`state` (the evaluator loaded first); a linear contender made for another
        lookback or feature set is dropped, and why returned (the next retrain fits one afresh)."""
        self.linear, self._serving, self._windows, self._drawn = None, None, None, None
        state, windows, refused = st.get("linear"), st.get("windows"), None
        if state is not None and self.settings.linear.enabled:
            refused = self.adopt(state, rings, capacity)
            if refused is None and windows is not None:
                try:
                    assert self._windows is not None
                    self._windows.load_state(windows)
                except ValueError as e:
                    log.warning("linear windows not restored, filled from the rings instead: %s", e)
        drawn = st.get("gate")
        if drawn is not None and drawn["served"].shape == (len(gate.REGIMES), len(gate.CONTENDERS), self.horizon, len(self.targets)):
            self._drawn = Drawn(self.evaluator.evidence.version, drawn["mixed"].copy(), drawn["served"].copy(), drawn["limit"].copy())
        return refused
