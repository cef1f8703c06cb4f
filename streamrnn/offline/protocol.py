"""The online forecasting protocol of the literature, on any table: ``streamrnn replay --protocol online-tsf``.

Normalise every variable with the mean and deviation of the first 20 % of the rows; at every row,
forecast every variable the next H steps from what has arrived; score the last 75 % of the rows;
report the mean squared error on the normalised scale, averaged over the variables and the steps
1..H, for H = 1, 24, 48 (as published tables do). Three forecasters, in the same run and on the same
rows: persistence (the last value), the linear family alone (:class:`streamrnn.engine.linear.OnlineRidge`
on the last 96 rows, learnt online from delayed labels), and streamrnn's served forecast.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from itertools import repeat

import numpy as np

from streamrnn.config import Settings
from streamrnn.engine.forecast import Forecast
from streamrnn.engine.linear import OnlineRidge
from streamrnn.offline import replay
from streamrnn.offline.replay import Table

HORIZONS = (1, 24, 48)
LOOKBACK = 96
FIT_SHARE, SCORED_SHARE = 0.2, 0.75


class Scores:
    """Squared normalised errors of one forecaster, per (step, variable), over the scored rows."""

    def __init__(self, horizon: int, variables: int, std: np.ndarray) -> None:
        self.sum = np.zeros((horizon, variables))
        self.n = np.zeros((horizon, variables))
        self.std = std

    def add(self, forecast: np.ndarray, truth: np.ndarray) -> None:
        """``forecast`` (H, V) made at a scored row; ``truth`` (H, V) the rows after it, NaN where
        unseen or past the end."""
        err = ((forecast - truth) / self.std) ** 2
        seen = np.isfinite(err)
        self.sum += np.where(seen, err, 0.0)
        self.n += seen

    def mse(self, horizon: int) -> float | None:
        """MSE averaged over the variables and the steps 1..``horizon``."""
        n = self.n[:horizon]
        if not (n > 0).all():
            return None
        return float((self.sum[:horizon] / n).mean())


def normalisation(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and deviation per column of the first 20 % of the rows (NaN ignored; 1 if flat)."""
    head = values[: max(2, int(len(values) * FIT_SHARE))]
    mean = np.nanmean(head, axis=0)
    std = np.nanstd(head, axis=0)
    return np.nan_to_num(mean), np.where(np.isfinite(std) & (std > 0), std, 1.0)


def held(values: np.ndarray) -> np.ndarray:
    """Sample and hold: each NaN replaced by the last value seen before it in its column."""
    out = values.copy()
    for i in range(1, len(out)):
        gap = np.isnan(out[i])
        out[i, gap] = out[i - 1, gap]
    return out


def linear_forecasts(values: np.ndarray, horizon: int, lookback: int = LOOKBACK) -> Iterator[np.ndarray]:
    """The linear family's forecast (horizon, V) at each row of ``values`` (rows, V), in order,
    normalised as the protocol says. At row i it forecasts from the rows up to i, then learns the
    example of row i - horizon, whose labels are complete with row i: nothing it uses came later."""
    rows, v = values.shape
    mean, std = normalisation(values)
    hold = held(values)
    ridge = OnlineRidge(v, list(range(v)), horizon, lookback, mean, std)
    padded = np.concatenate([np.repeat(hold[:1], lookback - 1, axis=0), hold])  # the first windows start with copies of the first row
    features: dict[int, np.ndarray] = {}
    for i in range(rows):
        features[i] = x = ridge.encode(padded[i : i + lookback])
        yield hold[i] + ridge.predict(x) * std
        if i >= horizon:
            j = i - horizon
            ridge.learn(features.pop(j), ridge.changes(hold[j], values[j + 1 : i + 1]))


def evaluate(
    values: np.ndarray, served: Callable[[int], np.ndarray | None], horizon: int, lookback: int = LOOKBACK, family: bool = True
) -> dict[str, Scores]:
    """Score persistence, the linear family (unless not ``family``) and ``served(i)`` (the forecast
    (horizon, V) made at row ``i`` of this one stream, in time order) on the last 75 % of the rows
    of ``values``."""
    rows, v = values.shape
    _, std = normalisation(values)
    hold = held(values)
    scores = {name: Scores(horizon, v, std) for name in ("persistence", "linear", "streamrnn")}
    first = int(rows * (1 - SCORED_SHARE))
    for i, linear in enumerate(linear_forecasts(values, horizon, lookback) if family else repeat(None, rows)):
        if i < first:
            continue
        truth = np.full((horizon, v), np.nan)
        after = values[i + 1 : i + 1 + horizon]
        truth[: len(after)] = after
        scores["persistence"].add(np.broadcast_to(hold[i], (horizon, v)), truth)
        if linear is not None:
            scores["linear"].add(linear, truth)
        fc = served(i)
        if fc is not None:
            scores["streamrnn"].add(fc, truth)
    return scores


def table(scores: dict[str, Scores], horizons: tuple[int, ...] = HORIZONS) -> dict[str, dict[str, float | None]]:
    """{H: {forecaster: MSE}} for the horizons asked (that the run covers)."""
    horizon = next(iter(scores.values())).sum.shape[0]
    return {str(h): {name: s.mse(h) for name, s in scores.items()} for h in horizons if h <= horizon}


def format_table(result: dict[str, dict[str, float | None]]) -> str:
    """The protocol's table: normalised MSE per horizon and forecaster."""
    names = list(next(iter(result.values())))
    lines = [
        "online-tsf protocol: normalised MSE (first 20 % of the rows), last 75 % scored, mean over variables and steps 1..H",
        f"  {'H':>3} " + " ".join(f"{n:>12}" for n in names),
    ]
    for h, row in result.items():
        lines.append(f"  {h:>3} " + " ".join(f"{'-' if row[n] is None else f'{row[n]:.4f}':>12}" for n in names))
    return "\n".join(lines)


def run(data: Table, settings: Settings, **replay_args: object) -> tuple[dict, dict[str, dict[str, float | None]]]:
    """Replay ``data`` (every target forecast ``features.horizon`` steps ahead) and score it by the
    protocol, stream by stream, the scores of all streams pooled. Returns (replay report, table)."""
    served: dict[str, dict[float, np.ndarray]] = {}

    def keep(fc: Forecast) -> None:
        served.setdefault(fc.stream, {})[fc.ts] = fc.values.astype(np.float32)

    report = replay.replay(data, settings, on_forecast=keep, **replay_args)
    horizon, targets = settings.features.horizon, settings.features.targets
    columns = [data.columns.index(t) for t in targets]
    pooled: dict[str, Scores] | None = None
    for stream in dict.fromkeys(data.streams):
        rows = np.flatnonzero(np.asarray(data.streams) == stream)
        rows = rows[np.argsort(data.ts[rows], kind="stable")]
        mine, stamps = served.get(stream, {}), data.ts[rows]
        scores = evaluate(data.values[np.ix_(rows, columns)], lambda i: mine.get(float(stamps[i])), horizon)
        if pooled is None:
            pooled = scores
        else:
            for name, s in scores.items():
                pooled[name].sum += s.sum
                pooled[name].n += s.n
    assert pooled is not None
    return report, table(pooled)
