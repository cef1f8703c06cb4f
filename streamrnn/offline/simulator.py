"""A continuous stirred-tank reactor to develop, test and demonstrate on.

Consecutive exothermic reactions A -> B -> C (Arrhenius rates) in a jacketed tank, with a PI
temperature loop on the coolant and a PI level loop on the outlet. B is the product: its
concentration is the key quality variable, sampled by the lab every ``key_every`` steps. Catalyst
activity decays and the jacket fouls over days, feed conditions take random steps and drift, and
every sensor is noisy. Several streams are several reactors of one design, each a little different.
Seeded and deterministic: the same seed gives the same numbers.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from streamrnn.offline.plant import AUXILIARIES, FEATURES, KEY, PERIOD  # noqa: F401  (the simulator's sensors, re-exported)

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z: event time of step 0

_NOISE = np.array([0.05, 0.15, 0.01, 0.02, 0.1, 0.1, 0.1, 0.004, 0.004, 0.05, 0.008, 0.03, 0.01, 0.006])
_SUBSTEPS = 2


class Reactor:
    """``streams`` reactors stepped together, one frame per ``PERIOD`` seconds of process time."""

    def __init__(self, streams: int = 1, seed: int = 0, key_every: int = 30) -> None:
        if streams < 1:
            raise ValueError("streams must be >= 1")
        if key_every < 1:
            raise ValueError("key_every must be >= 1")
        self.streams, self.key_every = streams, key_every
        self.rng = np.random.default_rng(seed)
        s = streams
        vary = lambda: 1.0 + 0.05 * self.rng.standard_normal(s)
        self.area, self.k1ref, self.k2ref, self.ua = 1.0 * vary(), 0.5 * vary(), 0.05 * vary(), 0.3 * vary()
        self.cat_tau = 10 * 1440 * vary()  # minutes: catalyst activity e-folds in ~10 days
        self.foul_tau = 5 * 1440 * vary()
        # Disturbance variables (mean-reverting, with steps) and set points.
        self.feed_flow_sp = np.full(s, 0.3)  # m3/min
        self.feed_temp = np.full(s, 320.0)  # K
        self.feed_conc = np.full(s, 2.0)
        self.cool_in = np.full(s, 300.0)
        self.temp_sp = np.full(s, 350.0)
        self.level_sp = np.full(s, 1.5)
        # Process state.
        self.level, self.ca, self.cb = np.full(s, 1.5), np.full(s, 0.57), np.full(s, 1.14)
        self.temp, self.tj = np.full(s, 350.0), np.full(s, 341.0)
        self.i_temp, self.i_level = np.zeros(s), np.zeros(s)
        self.minutes = 0.0
        self.step_no = 0
        self.key_phase = self.rng.integers(0, key_every, s)
        for _ in range(360):  # one hour of process time to settle the loops before step 0
            self._advance(PERIOD / 60.0, disturb=False)
        self.minutes = 0.0

    def _flows(self) -> tuple[np.ndarray, np.ndarray]:
        fc = np.clip(0.03 + 0.01 * (self.temp - self.temp_sp) + self.i_temp, 0.0, 0.25)
        fout = np.clip(self.feed_flow_sp + 0.5 * (self.level - self.level_sp) + self.i_level, 0.0, 1.5)
        return fc, fout

    def _advance(self, minutes: float, disturb: bool) -> None:
        s, rng = self.streams, self.rng
        if disturb:
            # Feed conditions: slow random walks pulled back to their means, plus rare steps.
            self.feed_conc += 0.02 * (2.0 - self.feed_conc) * minutes + 0.01 * math.sqrt(minutes) * rng.standard_normal(s)
            self.feed_temp += 0.02 * (320.0 - self.feed_temp) * minutes + 0.1 * math.sqrt(minutes) * rng.standard_normal(s)
            p = minutes / 45.0  # about one step change per 45 minutes per reactor
            hit = rng.random((5, s)) < p
            self.feed_flow_sp = np.where(
                hit[0], np.clip(self.feed_flow_sp * (1 + 0.1 * rng.standard_normal(s)), 0.2, 0.4), self.feed_flow_sp
            )
            self.feed_temp = np.where(hit[1], self.feed_temp + 4.0 * rng.standard_normal(s), self.feed_temp)
            self.feed_conc = np.where(hit[2], np.clip(self.feed_conc * (1 + 0.08 * rng.standard_normal(s)), 1.5, 2.5), self.feed_conc)
            self.temp_sp = np.where(hit[3], np.clip(self.temp_sp + 2.0 * rng.standard_normal(s), 342.0, 358.0), self.temp_sp)
            self.cool_in = np.where(hit[4], np.clip(self.cool_in + 2.0 * rng.standard_normal(s), 292.0, 308.0), self.cool_in)
        dt = minutes / _SUBSTEPS
        for _ in range(_SUBSTEPS):
            activity = np.exp(-self.minutes / self.cat_tau)
            ua = self.ua * (1.0 - 0.3 * (1.0 - np.exp(-self.minutes / self.foul_tau)))
            k1 = self.k1ref * activity * np.exp(-8000.0 * (1.0 / self.temp - 1.0 / 350.0))
            k2 = self.k2ref * np.exp(-10000.0 * (1.0 / self.temp - 1.0 / 350.0))
            fc, fout = self._flows()
            vol = self.area * self.level
            d = self.feed_flow_sp / vol
            dca = d * (self.feed_conc - self.ca) - k1 * self.ca
            dcb = -d * self.cb + k1 * self.ca - k2 * self.cb
            dtemp = d * (self.feed_temp - self.temp) + 30.0 * k1 * self.ca + 10.0 * k2 * self.cb - ua / vol * 1.5 * (self.temp - self.tj)
            dtj = fc / 0.3 * (self.cool_in - self.tj) + 0.5 * (ua / 0.3) * (self.temp - self.tj)
            dlevel = (self.feed_flow_sp - fout) / self.area
            self.ca = np.maximum(self.ca + dt * dca, 0.0)
            self.cb = np.maximum(self.cb + dt * dcb, 0.0)
            self.temp += dt * dtemp
            self.tj += dt * dtj
            self.level = np.clip(self.level + dt * dlevel, 0.2, 3.0)
            self.i_temp = np.clip(self.i_temp + dt * 0.002 * (self.temp - self.temp_sp), -0.03, 0.22)
            self.i_level = np.clip(self.i_level + dt * 0.05 * (self.level - self.level_sp), -0.5, 1.0)
            self.minutes += dt
        self._k2 = k2

    def step(self) -> tuple[float, np.ndarray]:
        """Advance one period; return (event time, values (streams, features)) with NaN where unmeasured."""
        self._advance(PERIOD / 60.0, disturb=True)
        fc, fout = self._flows()
        truth = np.stack(
            [
                self.feed_flow_sp * 60.0,
                self.feed_temp - 273.15,
                self.feed_conc,
                fc * 60.0,
                self.cool_in - 273.15,
                self.tj - 273.15,
                self.temp - 273.15,
                1.2 + 0.4 * np.exp(0.04 * (self.temp - 350.0)) + 0.1 * self.level,
                self.level,
                fout * 60.0,
                self.ca,
                5.0 + 0.8 * self.cb + 0.5 * self.level,
                2.0 * self._k2 * self.cb * self.area * self.level * 60.0,
                self.cb,
            ],
            axis=1,
        )
        values = truth + _NOISE * self.rng.standard_normal(truth.shape)
        values[(self.step_no + self.key_phase) % self.key_every != 0, -1] = np.nan
        ts = T0 + self.step_no * PERIOD
        self.step_no += 1
        return ts, values

    def run(self, steps: int) -> Iterator[tuple[float, np.ndarray]]:
        for _ in range(steps):
            yield self.step()


def stream_names(streams: int) -> list[str]:
    return [f"reactor-{i + 1:02d}" for i in range(streams)]


def write_csv(
    path: str | Path,
    steps: int,
    streams: int = 1,
    seed: int = 0,
    key_every: int = 30,
    inject: Callable[[str, np.ndarray], np.ndarray] | None = None,
) -> int:
    """Write ``steps`` frames of ``streams`` reactors: one row per stream and step, empty where
    unmeasured; ``inject(stream, values)`` (a :class:`streamrnn.offline.faults.Injector`) breaks sensors."""
    names = stream_names(streams)
    rows = 0
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["ts", "stream", *FEATURES])
        for ts, values in Reactor(streams, seed, key_every).run(steps):
            for name, row in zip(names, values):
                row = inject(name, row) if inject else row
                w.writerow([f"{ts:.0f}", name, *("" if math.isnan(v) else f"{v:.6g}" for v in row)])
                rows += 1
    return rows
