"""What running totals of errors say, per (step, target): the scores of one evaluator, or of several
summed (a shard's partitions, scored as one engine's streams would be)."""

from __future__ import annotations

import math

import numpy as np


def scored(s: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The scores of running totals (``streamrnn.engine.evaluator._TOTALS``, each (H, targets))."""
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
